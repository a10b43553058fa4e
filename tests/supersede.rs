//! Newest wins per hook; one build at a time per project; projects in parallel.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A build that starts a background grandchild, records both pids, and waits a long time unless
/// `FAST` exists in the checkout.
const SLOW_BUILD: &str = "test -e FAST && exit 0; (sleep 300; echo never) & echo \"$$ $!\" >> \"$PIDS\"; echo started; sleep 300";

fn pids(path: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn a_new_trigger_cancels_the_running_build_and_its_whole_process_group() {
    let dir = TempDir::new("ssuper");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let pidfile = dir.path().join("pids");
    let mut p = ProjectSpec::new("site", &repo.path, SLOW_BUILD);
    p.env = vec![("PIDS".into(), pidfile.to_string_lossy().into())];
    let config = write_config(dir.path(), "", &[p]);
    set_kill_grace(&config, 120);
    let d = Daemon::start(&config);
    let (_, path) = d.create_hook("site", "main");
    let first = d.trigger(&path);
    d.wait_state(&first, "BUILDING", T);
    assert!(
        wait_until(T, || pids(&pidfile).len() == 2),
        "build did not start"
    );
    let before = pids(&pidfile);
    assert!(before.iter().all(|&p| pid_alive(p)));

    repo.commit(&[("FAST", "")], "fast");
    let second = d.trigger(&path);
    let job = d.wait_state(&first, "CANCELED", Duration::from_secs(5));
    assert_eq!(job["canceledBy"], second.as_str());
    assert!(
        wait_until(Duration::from_secs(5), || before
            .iter()
            .all(|&p| !pid_alive(p))),
        "processes survived: {before:?}"
    );
    let done = d.wait_state(&second, "READY", T);
    assert_eq!(done["commit"], repo.head().as_str());
    // The old build died on SIGTERM: the next one starts without waiting out the 120 s grace
    // (the killed background process stays a zombie where init does not reap orphans).
    let waited = done["startedAt"].as_u64().unwrap() - done["createdAt"].as_u64().unwrap();
    assert!(
        waited < 60_000,
        "the superseding build waited {waited} ms to start"
    );
    assert!(d.job_log(&first).contains("superseded by a newer trigger"));
}

#[test]
fn queued_jobs_of_a_hook_are_canceled_at_once_and_only_the_newest_runs() {
    let dir = TempDir::new("squeue");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let pidfile = dir.path().join("pids");
    let mut blocker = ProjectSpec::new("slow", &repo.path, SLOW_BUILD);
    blocker.env = vec![("PIDS".into(), pidfile.to_string_lossy().into())];
    let quick = ProjectSpec::new("site", &repo.path, "true");
    let config = write_config(dir.path(), "workers = 1", &[blocker, quick]);
    let d = Daemon::start(&config);
    let (_, slow) = d.create_hook("slow", "main");
    let (_, site) = d.create_hook("site", "main");
    let blocking = d.trigger(&slow);
    d.wait_state(&blocking, "BUILDING", T);
    let a = d.trigger(&site);
    let b = d.trigger(&site);
    let c = d.trigger(&site);
    // Canceled as part of the trigger that superseded them, before any build thread is free.
    let ja = d.job(&a);
    assert_eq!(ja["state"], "CANCELED");
    assert_eq!(ja["canceledBy"], b.as_str());
    assert_eq!(d.job(&b)["canceledBy"], c.as_str());
    assert_eq!(ja["startedAt"], serde_json::Value::Null);
    assert_eq!(d.job(&c)["state"], "PENDING");
    // Free the worker: supersede the blocker with a fast build.
    repo.commit(&[("FAST", "")], "fast");
    let unblock = d.trigger(&slow);
    d.wait_state(&c, "READY", T);
    d.wait_state(&unblock, "READY", T);
    assert_eq!(d.job(&b)["state"], "CANCELED");
}

#[test]
fn one_build_per_project_and_different_projects_in_parallel() {
    let dir = TempDir::new("sparallel");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let record = dir.path().join("record");
    // Each build appends "start NAME time" and "end NAME time" lines. In between it waits (30 s
    // at most) until a build of the other project has started: running in parallel, the two
    // projects' builds overlap whatever the machine's speed; run one after the other, the first
    // waits in vain and the spans show it. The second it then holds on gives two builds of one
    // project, were they wrongly run together, the time to overlap.
    let build = "echo \"start $DEPLOYHOOK_PROJECT $DEPLOYHOOK_HOOK_ID $(date +%s%N)\" >> \"$REC\"; touch \"$REC.$DEPLOYHOOK_PROJECT\"; i=0; while [ ! -e \"$REC.$OTHER\" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; sleep 1; echo \"end $DEPLOYHOOK_PROJECT $DEPLOYHOOK_HOOK_ID $(date +%s%N)\" >> \"$REC\"";
    let rec = ("REC".to_string(), record.to_string_lossy().into_owned());
    let mut a = ProjectSpec::new("alpha", &repo.path, build);
    a.env = vec![rec.clone(), ("OTHER".into(), "beta".into())];
    let mut b = ProjectSpec::new("beta", &repo.path, build);
    b.env = vec![rec, ("OTHER".into(), "alpha".into())];
    let config = write_config(dir.path(), "workers = 4", &[a, b]);
    let d = Daemon::start(&config);
    let (_, a1) = d.create_hook("alpha", "main");
    let (_, a2) = d.create_hook("alpha", "main");
    let (_, b1) = d.create_hook("beta", "main");
    let jobs = [d.trigger(&a1), d.trigger(&a2), d.trigger(&b1)];
    for j in &jobs {
        d.wait_state(j, "READY", Duration::from_secs(60));
    }
    let text = std::fs::read_to_string(&record).unwrap();
    let mut spans: Vec<(String, u128, u128)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("start")) {
        let f: Vec<&str> = line.split(' ').collect();
        let end = text
            .lines()
            .find(|l| l.starts_with(&format!("end {} {}", f[1], f[2])))
            .unwrap();
        spans.push((
            f[1].to_string(),
            f[3].parse().unwrap(),
            end.split(' ').nth(3).unwrap().parse().unwrap(),
        ));
    }
    assert_eq!(spans.len(), 3);
    let overlaps = |x: &(String, u128, u128), y: &(String, u128, u128)| x.1 < y.2 && y.1 < x.2;
    let alpha: Vec<_> = spans.iter().filter(|s| s.0 == "alpha").collect();
    assert!(
        !overlaps(alpha[0], alpha[1]),
        "two alpha builds overlapped: {spans:?}"
    );
    let beta = spans.iter().find(|s| s.0 == "beta").unwrap();
    assert!(
        alpha.iter().any(|a| overlaps(a, beta)),
        "projects did not build in parallel: {spans:?}"
    );
}
