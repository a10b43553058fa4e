//! Job status for the caller, on the hook URL: `GET …/{secret}/jobs/{id}` and its long poll
//! (`?wait=N`), held by the event loop without a thread per caller.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// A build that waits until the file `go` appears in the folder the test made.
fn gated(tag: &str) -> (Setup, std::path::PathBuf) {
    let dir = TempDir::new(tag);
    let gate = dir.path().join("go");
    let build = format!("while [ ! -f '{}' ]; do sleep 0.05; done", gate.display());
    (
        setup_in(dir, &build, &[("a", "1")], "", Daemon::start),
        gate,
    )
}

fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    http(addr, "GET", path, &[], b"")
}

/// The daemon's count of callers holding a long poll.
fn waiting_callers(s: &Setup) -> u64 {
    let metrics = get(s.daemon.status, "/metrics").text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("deployhook_waiting_callers "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn the_201_says_where_the_job_is_and_it_answers_like_the_status_listener() {
    let s = setup("cstatus", "true", &[("a", "1")], "");
    let r = http(s.daemon.public, "POST", &s.path, &[], b"");
    assert_eq!(r.status, 201);
    let id = r.json()["job"]["id"].as_str().unwrap().to_string();
    let location = r.header("Location").unwrap().to_string();
    assert_eq!(location, format!("{}/jobs/{id}", s.path));
    s.daemon.wait_state(&id, "READY", T);
    let mine = get(s.daemon.public, &location);
    assert_eq!(mine.status, 200);
    assert_eq!(mine.header("Access-Control-Allow-Origin"), Some("*"));
    let theirs = get(s.daemon.status, &format!("/jobs/{id}"));
    assert_eq!(mine.json(), theirs.json());
    assert_eq!(mine.json()["job"]["state"], "READY");
}

#[test]
fn other_hooks_jobs_and_unknown_secrets_get_the_same_404() {
    let s = setup("cforeign", "true", &[("a", "1")], "");
    let (_, other_path) = s.daemon.create_hook("site", "main");
    let other_id = s.daemon.trigger(&other_path);
    let unknown = format!(
        "/v1/integrations/deploy/site/{}/jobs/{other_id}",
        "A".repeat(32)
    );
    let reference = get(s.daemon.public, &unknown);
    assert_eq!(reference.status, 404);
    for path in [
        format!("{}/jobs/{other_id}", s.path),
        format!("{}/jobs/{}", s.path, "B".repeat(20)),
        format!("{}/jobs/nope", s.path),
    ] {
        let r = get(s.daemon.public, &path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body, reference.body, "{path}");
    }
    // The other hook's own URL does see it.
    assert_eq!(
        get(s.daemon.public, &format!("{other_path}/jobs/{other_id}")).status,
        200
    );
}

#[test]
fn wait_must_be_one_to_sixty_seconds() {
    let s = setup("cwait400", "true", &[("a", "1")], "");
    let id = s.daemon.trigger(&s.path);
    for bad in ["0", "61", "abc", "-1", ""] {
        let r = get(s.daemon.public, &format!("{}/jobs/{id}?wait={bad}", s.path));
        assert_eq!(r.status, 400, "wait={bad}");
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    let r = http(
        s.daemon.public,
        "POST",
        &format!("{}/jobs/{id}", s.path),
        &[],
        b"",
    );
    assert_eq!(r.status, 405);
}

#[test]
fn a_long_poll_answers_when_the_job_ends() {
    let (s, gate) = gated("clong");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "BUILDING", T);
    let (addr, path) = (s.daemon.public, format!("{}/jobs/{id}?wait=60", s.path));
    let waiting = std::thread::spawn(move || get(addr, &path));
    // Held while the job builds: once the daemon counts it waiting, let the job end.
    assert!(wait_until(T, || waiting_callers(&s) == 1));
    assert!(!waiting.is_finished());
    std::fs::write(&gate, "").unwrap();
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["job"]["state"], "READY");
}

#[test]
fn a_long_poll_ends_with_the_job_state_at_its_deadline_or_when_superseded() {
    let (s, gate) = gated("cdeadline");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "BUILDING", T);
    let t0 = Instant::now();
    let r = get(s.daemon.public, &format!("{}/jobs/{id}?wait=1", s.path));
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(r.json()["job"]["state"], "BUILDING");
    let (addr, path) = (s.daemon.public, format!("{}/jobs/{id}?wait=60", s.path));
    let waiting = std::thread::spawn(move || get(addr, &path));
    assert!(wait_until(T, || waiting_callers(&s) == 1));
    let newer = s.daemon.trigger(&s.path);
    let r = waiting.join().unwrap();
    assert_eq!(r.json()["job"]["state"], "CANCELED");
    assert_eq!(r.json()["job"]["canceledBy"], newer.as_str());
    // An operator's cancel answers the waiting callers too, at once.
    s.daemon.wait_state(&newer, "BUILDING", T);
    let (addr, path) = (s.daemon.public, format!("{}/jobs/{newer}?wait=60", s.path));
    let waiting = std::thread::spawn(move || get(addr, &path));
    assert!(wait_until(T, || waiting_callers(&s) == 1));
    assert!(s.daemon.cli(&["jobs", "cancel", &newer]).status.success());
    let r = waiting.join().unwrap();
    assert_eq!(r.json()["job"]["state"], "CANCELED");
    assert_eq!(r.json()["job"]["error"], "canceled by operator");
    std::fs::write(&gate, "").unwrap();
}

#[test]
fn two_hundred_waiting_callers_hold_no_threads() {
    let (s, gate) = gated("cthreads");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "BUILDING", T);
    let pid = s.daemon.pid();
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default())
            .map(|n| n.trim().to_string())
            // The running build's log pump comes and goes with the build, not the callers.
            .filter(|n| n != "build-log")
            .collect();
        names.sort();
        names
    };
    let threads = || names().len();
    let before = threads();
    let req = format!(
        "GET {}/jobs/{id}?wait=60 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        s.path
    );
    let callers: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut c = TcpStream::connect(s.daemon.public).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect();
    // Each caller is held without a thread of its own.
    assert!(wait_until(T, || waiting_callers(&s) == 200));
    assert!(threads() <= before, "{:?}, {before} before", names());
    std::fs::write(&gate, "").unwrap();
    for mut c in callers {
        c.set_read_timeout(Some(T)).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut out).unwrap();
        let r = parse_response(&out, false);
        assert_eq!(r.json()["job"]["state"], "READY");
    }
}
