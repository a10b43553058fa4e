//! Operator commands on the running daemon: `hooks trigger`, `hooks rotate`, `jobs cancel`, and
//! `hooks create` checking the branch with `git ls-remote`.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn create_checks_the_branch_unless_told_not_to() {
    let s = setup("overify", "true", &[("a", "1")], "");
    let out = s.daemon.hooks_create("site", "n", "nope", false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no branch `nope`"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--no-verify"), "{}", stderr(&out));
    let (_, path) = s.daemon.create_hook_unverified("site", "nope");
    assert!(path.starts_with("/v1/integrations/deploy/site/"));
    let out = s.daemon.cli(&["hooks", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The refused create made nothing; the unverified one made one hook, named "site nope".
    assert_eq!(
        stdout(&out).matches("site nope").count(),
        1,
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
}

#[test]
fn create_says_when_the_repository_cannot_be_asked() {
    let dir = TempDir::new("ounreach");
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new(
            "site",
            &dir.path().join("missing"),
            "true",
        )],
    );
    let d = Daemon::start(&config);
    let out = d.hooks_create("site", "n", "main", false);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot check the branch in"), "{err}");
    assert!(err.contains("fatal:"), "{err}");
}

#[test]
fn trigger_queues_a_job_as_the_url_would() {
    let s = setup("otrigger", "true", &[("a", "1")], "");
    let out = s.daemon.cli(&["hooks", "trigger", &s.hook, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(keys(&v["job"]), ["id", "state", "createdAt"]);
    assert_eq!(v["job"]["state"], "PENDING");
    let id = v["job"]["id"].as_str().unwrap().to_string();
    let job = s.daemon.wait_state(&id, "READY", T);
    assert_eq!(job["hookId"], s.hook.as_str());
    let out = s.daemon.cli(&["hooks", "trigger", &s.hook]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim().len(), 20, "prints the job id alone");
    let out = s.daemon.cli(&["hooks", "trigger", "hook_AAAAAAAAAAAA"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no hook with id hook_AAAAAAAAAAAA"));
}

#[test]
fn rotate_prints_a_new_url_and_the_old_one_is_dead_at_once() {
    let s = setup("orotate", "true", &[("a", "1")], "");
    let out = s.daemon.cli(&["hooks", "rotate", &s.hook]);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = stdout(&out).trim().to_string();
    let new_path = url
        .strip_prefix(&format!("http://{}", s.daemon.public))
        .unwrap()
        .to_string();
    assert_ne!(new_path, s.path);
    assert_eq!(http(s.daemon.public, "POST", &s.path, &[], b"").status, 404);
    assert_eq!(
        http(s.daemon.public, "POST", &new_path, &[], b"").status,
        201
    );
    let log = s.daemon.log_text();
    assert!(
        log.contains(&format!("status=404 (revoked hook {})", s.hook)),
        "{log}"
    );
    let secret = new_path.rsplit('/').next().unwrap();
    assert!(!log.contains(secret), "the new secret is never logged");
    // The hook keeps its id, name and jobs.
    let hooks = http(s.daemon.status, "GET", "/hooks", &[], b"").json();
    assert_eq!(hooks["hooks"][0]["id"], s.hook.as_str());
}

#[test]
fn cancel_ends_a_pending_job_and_refuses_a_finished_one() {
    let dir = TempDir::new("ocancel");
    let gate = dir.path().join("go");
    let build = format!("while [ ! -f '{}' ]; do sleep 0.05; done", gate.display());
    let s = setup_in(dir, &build, &[("a", "1")], "workers = 1", Daemon::start);
    let (_, other) = s.daemon.create_hook("site", "main");
    let building = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&building, "BUILDING", T);
    // One build at a time per project: the other hook's job waits, PENDING.
    let pending = s.daemon.trigger(&other);
    assert_eq!(s.daemon.job(&pending)["state"], "PENDING");
    let out = s.daemon.cli(&["jobs", "cancel", &pending, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["job"]["state"], "CANCELED");
    let job = s.daemon.job(&pending);
    assert_eq!(job["state"], "CANCELED");
    assert_eq!(job["canceledBy"], Value::Null);
    assert_eq!(job["error"], "canceled by operator");
    std::fs::write(&gate, "").unwrap();
    s.daemon.wait_state(&building, "READY", T);
    let out = s.daemon.cli(&["jobs", "cancel", &building]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is READY already; only PENDING or BUILDING jobs can be canceled"),
        "{}",
        stderr(&out)
    );
    let out = s.daemon.cli(&["jobs", "cancel", &"A".repeat(20)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no job with id"));
    let out = s.daemon.cli(&["jobs", "cancel", "nope"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed id is a bad argument"
    );
}
#[test]
fn cancel_stops_a_building_job_s_process_group_as_supersession_does() {
    let dir = TempDir::new("ocancelb");
    let marker = dir.path().join("child.pid");
    // The build leaves a grandchild behind in its process group, then waits.
    let build = format!(
        "sh -c 'echo $$ > {m}; exec sleep 300' & sleep 300",
        m = marker.display()
    );
    let s = setup_in(dir, &build, &[("a", "1")], "", Daemon::start);
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "BUILDING", T);
    assert!(wait_until(T, || std::fs::read_to_string(&marker)
        .is_ok_and(|p| !p.trim().is_empty())));
    let pid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid));
    let out = s.daemon.cli(&["jobs", "cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_until(T, || !pid_alive(pid)),
        "the build's process group outlived the cancel"
    );
    let job = s.daemon.job(&id);
    assert_eq!(job["state"], "CANCELED");
    assert_eq!(job["error"], "canceled by operator");
    assert!(wait_until(T, || s.daemon.job_log(&id).contains("CANCELED")));
    // The project builds again afterwards.
    let next = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&next, "BUILDING", T);
}
