//! A dead core thread ends the process: the daemon logs which thread died and why, stops
//! pinging systemd's watchdog, stops its builds and exits with status 70, so that systemd
//! restarts it. Deaths are injected with `DEPLOYHOOK_FAULT_PANIC` (see `src/supervise.rs`).

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const FAULT: &str = "DEPLOYHOOK_FAULT_PANIC";
/// EX_SOFTWARE: the status of a daemon that lost a core thread.
const DIED: i32 = 70;

fn one_project(dir: &TempDir, build: &str) -> std::path::PathBuf {
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, build)],
    )
}

#[test]
fn a_scheduler_panic_ends_the_process_with_status_70() {
    let dir = TempDir::new("sched-panic");
    let config = one_project(&dir, "true");
    let mut d = Daemon::start_with_env(&config, &[(FAULT, "scheduler:1")]);
    let (_, path) = d.create_hook("site", "main");
    // Acknowledged before the scheduler hears of it: the job is durable, and runs after the
    // restart that systemd would make.
    let job = d.trigger(&path);
    assert_died(&mut d, "scheduler");
    let log = d.log_text();
    // The build threads end too once the scheduler is gone; the exit names the cause.
    assert!(
        log.contains("thread scheduler died; stopped so that the daemon is restarted"),
        "{log}"
    );

    let mut d = Daemon::start(&config);
    d.wait_state(&job, "READY", Duration::from_secs(30));
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_journal_writer_panic_ends_the_process() {
    let dir = TempDir::new("writer-panic");
    let config = one_project(&dir, "true");
    // The writer's first op is the notification policy at start; its second the hook's creation.
    let mut d = Daemon::start_with_env(&config, &[(FAULT, "journal-writer:2")]);
    d.hooks_create("site", "hook", "main", false);
    assert_died(&mut d, "journal-writer");
}

/// The daemon exits with [`DIED`], its log naming the thread and its injected panic.
fn assert_died(d: &mut Daemon, thread: &str) {
    assert_eq!(
        d.wait_exit(Duration::from_secs(15)),
        Some(DIED),
        "{}",
        d.log_text()
    );
    let log = d.log_text();
    let died = format!("thread {thread} died (panic: fault injected by {FAULT}");
    assert!(log.contains(&died), "{log}");
}

#[test]
fn a_listener_or_the_notifier_dying_at_start_ends_the_process() {
    for thread in ["http-public", "http-status", "notifier"] {
        let dir = TempDir::new("listener-panic");
        let config = one_project(&dir, "true");
        let mut d = Daemon::start_with_env(&config, &[(FAULT, thread)]);
        assert_died(&mut d, thread);
    }
}

/// Datagrams from the notify socket until `done` says so or `timeout` passes.
fn read_until(
    socket: &UnixDatagram,
    timeout: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let stop = done(&msg);
            seen.push(msg);
            if stop {
                break;
            }
        }
    }
    seen
}

#[test]
fn the_watchdog_stops_once_a_core_thread_died() {
    let dir = TempDir::new("watchdog-death");
    // A build that ignores SIGTERM keeps the dying daemon up for the kill grace (2 s), about
    // twenty watchdog intervals: long enough to see that no ping comes meanwhile.
    let config = one_project(&dir, "trap '' TERM; echo building; sleep 60");
    let notify = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    let mut d = Daemon::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", notify.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            // The second job queued: the first one is building by then.
            (FAULT, "scheduler:2"),
        ],
    );
    let pings = |seen: &[String]| seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    let mut before = 0;
    let seen = read_until(&socket, Duration::from_secs(10), |m| {
        before += usize::from(m.contains("WATCHDOG=1"));
        before >= 2
    });
    assert_eq!(pings(&seen), 2, "{seen:?}");

    let (_, path) = d.create_hook("site", "main");
    let first = d.trigger(&path);
    assert!(
        wait_until(Duration::from_secs(20), || d
            .job_log(&first)
            .contains("building\n")),
        "{}",
        d.job_log(&first)
    );
    d.trigger(&path);
    let seen = read_until(&socket, Duration::from_secs(10), |m| {
        m.contains("STOPPING=1")
    });
    assert!(seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
    let stopping = Instant::now();
    let mut after = Vec::new();
    let mut status = None;
    while status.is_none() && stopping.elapsed() < Duration::from_secs(15) {
        after.extend(read_until(&socket, Duration::from_millis(100), |_| false));
        status = d.wait_exit(Duration::from_millis(20));
    }
    after.extend(read_until(&socket, Duration::from_millis(50), |_| false));
    assert_eq!(status, Some(DIED), "{}", d.log_text());
    assert!(
        stopping.elapsed() >= Duration::from_secs(1),
        "the daemon did not linger in its stop"
    );
    assert_eq!(pings(&after), 0, "pinged after the death: {after:?}");
    assert!(
        d.log_text()
            .contains("watchdog: a core thread died; not pinging systemd"),
        "{}",
        d.log_text()
    );
}
