//! A build's processes do not outlive a daemon killed with `kill -9`: the build's top process
//! dies with the daemon's build thread (the kernel's parent-death signal, set before `exec`),
//! so a child forked just before the kill cannot run on after the restart's orphan scan.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn a_builds_top_process_dies_with_a_killed_daemon() {
    let dir = TempDir::new("orphan");
    let marker = dir.path().join("top.pid");
    // The build's shell writes its pid, then waits on a child.
    let build = format!("echo $$ > '{}'; sleep 300", marker.display());
    let mut s = setup_in(dir, &build, &[("a", "1")], "", Daemon::start);
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "BUILDING", T);
    assert!(wait_until(T, || std::fs::read_to_string(&marker)
        .is_ok_and(|p| p.ends_with('\n'))));
    let top: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(top));
    s.daemon.kill9();
    // No restart: the kernel ends it, not the next daemon's orphan scan.
    assert!(
        wait_until(T, || !pid_alive(top)),
        "the build's shell {top} outlived the killed daemon"
    );
    // The restart still finds and kills what the shell left (its `sleep`), and builds again.
    s.daemon.restart();
    s.daemon.wait_state(&id, "BUILDING", T);
}
