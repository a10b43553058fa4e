//! Fault injection: the daemon killed with SIGKILL at random moments while triggers arrive and
//! builds run and notify.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One trigger on a fresh connection; `None` when the daemon did not acknowledge it.
fn try_trigger(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("POST {path} HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    if !raw.starts_with(b"HTTP/1.1 201") {
        return None;
    }
    parse_response(&raw, false).json()["job"]["id"]
        .as_str()
        .map(str::to_string)
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kill_9_loop_loses_nothing_and_never_overlaps_builds() {
    let dir = TempDir::new("fkill");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let record = dir.path().join("record");
    let notes = dir.path().join("notes");
    let locks = dir.path().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    // The whole build holds a lock on its project's file; a second build of the project while
    // one is alive (an orphan of a killed daemon included) fails to take it and says so.
    let build = "exec 9>\"$LOCKS/$DEPLOYHOOK_PROJECT\"; if ! flock -n 9; then echo \"OVERLAP $DEPLOYHOOK_PROJECT $DEPLOYHOOK_JOB_ID\" >> \"$REC\"; exit 1; fi; sleep 1.5; echo \"done $DEPLOYHOOK_JOB_ID\" >> \"$REC\"";
    // p3 builds at once, so that many of its jobs end READY and notify while the kills come.
    let specs: Vec<ProjectSpec> = (0..4)
        .map(|i| {
            let build = if i == 3 { "true" } else { build };
            let mut p = ProjectSpec::new(&format!("p{i}"), &repo.path, build);
            p.env = vec![
                ("LOCKS".into(), locks.to_string_lossy().into()),
                ("REC".into(), record.to_string_lossy().into()),
                ("NOTES".into(), notes.to_string_lossy().into()),
            ];
            // Every READY or ERROR job notifies (CANCELED ones must not); the command takes a
            // moment after it has written, so that a kill then makes it run again.
            p.extra = "notify = 'echo \"$DEPLOYHOOK_JOB_ID $DEPLOYHOOK_JOB_STATE\" >> \"$NOTES\"; sleep 0.3'\nnotify_on = [\"READY\", \"ERROR\"]".into();
            p
        })
        .collect();
    let config = write_config(dir.path(), "workers = 4", &specs);
    let mut d = Daemon::start(&config);
    let hooks: Vec<(String, String)> = (0..4)
        .map(|i| d.create_hook(&format!("p{i}"), "main"))
        .collect();
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    let mut acked: Vec<String> = Vec::new();

    for _ in 0..20 {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = hooks
            .iter()
            .enumerate()
            .map(|(i, (_, path))| {
                let (addr, path, stop) = (d.public, path.clone(), stop.clone());
                // p3's triggers are spaced so that its quick builds finish and notify.
                let pause = Duration::from_millis(if i == 3 { 150 } else { 20 });
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        match try_trigger(addr, &path) {
                            Some(id) => ids.push(id),
                            None => break,
                        }
                        std::thread::sleep(pause);
                    }
                    ids
                })
            })
            .collect();
        // A burst of triggers, then a random pause (so that builds are caught at every stage:
        // fetching, building, finishing), then the kill.
        std::thread::sleep(Duration::from_millis(50 + rng.below(300)));
        if rng.below(2) == 0 {
            stop.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(rng.below(1200)));
        }
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            acked.extend(c.join().unwrap());
        }
        d.restart();
    }

    // Every acknowledged job exists and reaches a terminal state.
    for id in &acked {
        let ok = wait_until(Duration::from_secs(60), || {
            let job = d.job(id);
            matches!(job["state"].as_str(), Some("READY" | "ERROR" | "CANCELED"))
        });
        assert!(ok, "job {id} never finished: {}", d.job(id));
    }
    // The newest job of each hook ends READY.
    for (hook, _) in &hooks {
        let listing = http(
            d.status,
            "GET",
            &format!("/jobs?hook={hook}&limit=1"),
            &[],
            b"",
        )
        .json();
        let newest = listing["jobs"][0]["id"].as_str().unwrap().to_string();
        d.wait_state(&newest, "READY", Duration::from_secs(60));
    }
    // Every notification due was delivered at least once, and none for a state not listed.
    let mut ended = Vec::new();
    for id in &acked {
        let ok = wait_until(Duration::from_secs(60), || {
            let job = d.job(id);
            match job["state"].as_str() {
                Some("CANCELED") => job["notification"].is_null(),
                _ => job["notification"]["state"] == "sent",
            }
        });
        let job = d.job(id);
        assert!(ok, "job {id}: its notification is not settled: {job}");
        if job["state"] != "CANCELED" {
            ended.push((id.clone(), job["state"].as_str().unwrap().to_string()));
        }
    }
    assert!(
        !ended.is_empty(),
        "no acknowledged job ended READY or ERROR"
    );
    let delivered = std::fs::read_to_string(&notes).unwrap_or_default();
    for (id, state) in &ended {
        let line = format!("{id} {state}");
        assert!(
            delivered.lines().any(|l| l == line),
            "the notification of {id} ({state}) was never delivered"
        );
    }
    assert!(
        !delivered.contains("CANCELED"),
        "a CANCELED job notified:\n{delivered}"
    );
    // Jobs whose 201 a kill cut off are in the journal too and notify as well, maybe last.
    assert!(
        wait_until(Duration::from_secs(60), || metric(
            &d,
            "deployhook_notifications_pending"
        ) == 0.0),
        "notifications still pending"
    );
    let repeats: usize = ended
        .iter()
        .map(|(id, state)| {
            let line = format!("{id} {state}");
            delivered.lines().filter(|l| *l == line).count() - 1
        })
        .sum();
    let text = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(
        !text.contains("OVERLAP"),
        "two builds of one project ran at once:\n{text}"
    );
    assert!(
        acked.len() >= 20,
        "too few triggers were acknowledged: {}",
        acked.len()
    );
    eprintln!(
        "kill -9 loop: 20 cycles, {} acknowledged triggers, all accounted for; {} notifications \
         delivered ({repeats} again after a kill)",
        acked.len(),
        ended.len()
    );
}
