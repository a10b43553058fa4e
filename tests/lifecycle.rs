//! Crash, stop and reload: nothing acknowledged is lost, interrupted builds start over,
//! SIGTERM stops in time, SIGHUP reloads projects or keeps the old config.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[test]
fn kill_9_loses_no_acknowledged_job_and_interrupted_builds_start_over() {
    let dir = TempDir::new("lkill");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let pidfile = dir.path().join("pid");
    // The first attempt of each job records its pid and hangs; a restarted one finishes.
    let build = format!("if [ -e {p}.$DEPLOYHOOK_JOB_ID ]; then echo second attempt; exit 0; fi; touch {p}.$DEPLOYHOOK_JOB_ID; echo $$ > {p}; sleep 300", p = pidfile.display());
    let mut hooks = Vec::new();
    let projects: Vec<ProjectSpec> = (0..3)
        .map(|i| ProjectSpec::new(&format!("p{i}"), &repo.path, &build))
        .collect();
    let config = write_config(dir.path(), "workers = 3", &projects);
    let mut d = Daemon::start(&config);
    for i in 0..3 {
        hooks.push(d.create_hook(&format!("p{i}"), "main"));
    }
    let building = d.trigger(&hooks[0].1);
    d.wait_state(&building, "BUILDING", T);
    // The shell creates the file before it writes the pid: wait for a whole number.
    let read_pid = || {
        std::fs::read_to_string(&pidfile)
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
    };
    assert!(wait_until(T, || read_pid().is_some()));
    let orphan = read_pid().unwrap();

    // Concurrent triggers, then kill -9 while they are being answered: as soon as a few have
    // been acknowledged, with most of them still to come.
    let addr = d.public;
    let answered = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let path = hooks[1 + t % 2].1.clone();
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for _ in 0..30 {
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        break;
                    };
                    use std::io::{Read, Write};
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    if s.write_all(
                        format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .is_err()
                    {
                        break;
                    }
                    let mut raw = Vec::new();
                    let _ = s.read_to_end(&mut raw);
                    if raw.starts_with(b"HTTP/1.1 201") {
                        let r = parse_response(&raw, false);
                        acked.push(r.json()["job"]["id"].as_str().unwrap().to_string());
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
                acked
            })
        })
        .collect();
    assert!(
        wait_until(T, || answered.load(Ordering::SeqCst) >= 6),
        "no trigger was acknowledged:\n{}",
        d.log_text()
    );
    d.kill9();
    let acked: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acked.len() >= 6,
        "acknowledged before the kill: {}",
        acked.len()
    );
    // A leftover build directory from the killed daemon.
    let builds = d.state_dir().join("builds");
    assert!(std::fs::read_dir(&builds).unwrap().next().is_some());

    d.restart();
    for id in &acked {
        let job = d.job(id);
        assert_ne!(
            job["state"],
            serde_json::Value::Null,
            "acknowledged job {id} lost"
        );
    }
    // The build that was running when the daemon died starts over, after its old process is gone.
    let job = d.wait_state(&building, "READY", T);
    assert_eq!(job["exitCode"], 0);
    assert!(!pid_alive(orphan), "the killed daemon's build kept running");
    let log = d.job_log(&building);
    assert!(log.contains("restarting from scratch (attempt 2)"), "{log}");
    assert!(log.contains("second attempt"));
    // Newest wins survived the crash: per hook, every job but the newest was canceled by the one
    // after it. The newest is open (a first attempt hangs), or READY if it was building when the
    // daemon died and its restart (a second attempt, which exits 0) has already finished.
    for (hook, _) in &hooks[1..] {
        let list = http(
            d.status,
            "GET",
            &format!("/jobs?hook={hook}&limit=500"),
            &[],
            b"",
        )
        .json();
        let jobs = list["jobs"].as_array().unwrap();
        assert!(!jobs.is_empty());
        let newest = &jobs[0];
        match newest["state"].as_str() {
            Some("PENDING" | "BUILDING") => {}
            Some("READY") => {
                let log = d.job_log(newest["id"].as_str().unwrap());
                assert!(log.contains("second attempt"), "{newest}\n{log}");
            }
            _ => panic!("{newest}"),
        }
        for pair in jobs.windows(2) {
            assert_eq!(pair[1]["state"], "CANCELED", "{}", pair[1]);
            assert_eq!(pair[1]["canceledBy"], pair[0]["id"]);
        }
    }
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_dir(d.state_dir())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("builds.stale"))
    }));
}

#[test]
fn sigterm_stops_builds_in_time_and_they_run_after_the_restart() {
    let dir = TempDir::new("lterm");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let marker = dir.path().join("attempts");
    // Ignores SIGTERM so that the grace period is used in full, then SIGKILL ends it. The marker
    // is written once SIGTERM is ignored; the attempt after the restart finds it and succeeds.
    let build = format!(
        "if [ -e {m} ]; then exit 0; fi; trap '' TERM; echo $$ > {m}; sleep 300 & wait; sleep 300",
        m = marker.display()
    );
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, &build)],
    );
    let mut d = Daemon::start(&config);
    let (_, path) = d.create_hook("site", "main");
    let id = d.trigger(&path);
    d.wait_state(&id, "BUILDING", T);
    let mut build_pid = None;
    assert!(wait_until(T, || {
        build_pid = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        build_pid.is_some()
    }));
    let build_pid = build_pid.unwrap();
    let t0 = Instant::now();
    d.signal("TERM");
    // The build would run for 300 s: the daemon exits once it has killed it.
    let code = d.wait_exit(T);
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "{}", d.log_text());
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(build_pid)),
        "the build outlived the daemon"
    );
    // SIGKILL not before the grace period (kill_grace_secs = 2 in test configs).
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(!dir.path().join("admin.sock").exists());
    d.restart();
    let job = d.wait_state(&id, "READY", T);
    assert_eq!(job["canceledBy"], serde_json::Value::Null);
    assert!(d.job_log(&id).contains("stopped by daemon shutdown"));
}

#[test]
fn sigterm_with_nothing_running_exits_at_once() {
    let dir = TempDir::new("lidle");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "true")],
    );
    // Exiting well within the grace period shows that the daemon did not wait for it.
    set_kill_grace(&config, 120);
    let mut d = Daemon::start(&config);
    d.signal("INT");
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0));
    // A clean stop warns about nothing (the admin socket's shutdown is not a failed accept).
    let log = d.log_text();
    assert!(!log.contains(" WARN "), "{log}");
}

#[test]
fn sighup_reloads_projects_and_refuses_an_invalid_config() {
    let dir = TempDir::new("lhup");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "echo build-one")],
    );
    let d = Daemon::start(&config);
    let (_, path) = d.create_hook("site", "main");
    let first = d.trigger(&path);
    d.wait_state(&first, "READY", T);

    write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "echo build-two")],
    );
    d.signal("HUP");
    assert!(d.wait_log("config reloaded", Duration::from_secs(5)));
    let second = d.trigger(&path);
    d.wait_state(&second, "READY", T);
    assert!(d.job_log(&second).contains("\nbuild-two\n"));

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\nbogus_key = 1\n")).unwrap();
    d.signal("HUP");
    assert!(
        d.wait_log("config reload refused", Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    assert!(d.log_text().contains("bogus_key"));
    let third = d.trigger(&path);
    d.wait_state(&third, "READY", T);
    assert!(d.job_log(&third).contains("\nbuild-two\n"));
}

#[test]
fn a_clean_stop_leaves_the_whole_journal_in_journal_redb() {
    let s = setup("lfold", "true", &[("a", "1")], "");
    let mut d = s.daemon;
    let ids: Vec<String> = (0..20).map(|_| d.trigger(&s.path)).collect();
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    // The backup the README describes: journal.redb alone, without its write-ahead log.
    let backup = TempDir::new("lfold-backup");
    let copy = backup.path().join(deployhook::harness::FILE_NAME);
    std::fs::copy(d.journal_path(), &copy).unwrap();
    let (journal, _writer) = deployhook::harness::Journal::open(&copy).unwrap();
    for id in &ids {
        assert!(
            journal.job(id).unwrap().is_some(),
            "job {id} not in journal.redb"
        );
    }
}
