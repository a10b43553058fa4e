//! Debounce (`debounce_secs`): a burst of triggers builds once, after the last, and a job's
//! `notBefore` is kept in the journal across a crash and restart.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn debounced(tag: &str, secs: u64) -> Setup {
    let line = format!("debounce_secs = {secs}");
    setup_project(
        TempDir::new(tag),
        "true",
        &[("a", "1")],
        "",
        &line,
        Daemon::start,
    )
}

#[test]
fn a_burst_of_triggers_builds_once_after_the_last() {
    let s = debounced("dburst", 1);
    let ids: Vec<String> = (0..5).map(|_| s.daemon.trigger(&s.path)).collect();
    let last = s.daemon.wait_state(ids.last().unwrap(), "READY", T);
    let not_before = last["notBefore"].as_u64().unwrap();
    assert_eq!(not_before, last["createdAt"].as_u64().unwrap() + 1000);
    assert!(last["startedAt"].as_u64().unwrap() >= not_before);
    for (id, newer) in ids.iter().zip(&ids[1..]) {
        let job = s.daemon.job(id);
        assert_eq!(job["state"], "CANCELED", "{id}");
        assert_eq!(job["canceledBy"], newer.as_str());
        assert_eq!(
            job["startedAt"],
            Value::Null,
            "a superseded job never built"
        );
    }
    // Without debounce, notBefore is null.
    let plain = setup("dplain", "true", &[("a", "1")], "");
    let id = plain.daemon.trigger(&plain.path);
    assert_eq!(
        plain.daemon.wait_state(&id, "READY", T)["notBefore"],
        Value::Null
    );
}

#[test]
fn a_restart_inside_the_window_keeps_the_deadline() {
    let mut s = debounced("drestart", 3);
    let id = s.daemon.trigger(&s.path);
    let not_before = s.daemon.job(&id)["notBefore"].as_u64().unwrap();
    assert_eq!(s.daemon.job(&id)["state"], "PENDING");
    s.daemon.kill9();
    let restarted_at = now_ms();
    s.daemon.restart();
    let job = s.daemon.wait_state(&id, "READY", T);
    let started = job["startedAt"].as_u64().unwrap();
    assert!(
        started >= not_before,
        "started {started} before {not_before}"
    );
    // Not debounced again from the restart: it starts at the journaled deadline.
    assert!(
        started < restarted_at + 3000,
        "started {started}: the window restarted at {restarted_at}"
    );
}
