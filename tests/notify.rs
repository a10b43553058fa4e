//! Notifications (`notify`, `notify_on`): the command runs once per listed end state with the
//! job JSON on stdin and the job's facts in its environment; a failure is retried with
//! backoff, across a kill -9 and restart, until it succeeds; every attempt is in the job log,
//! the job JSON and `/metrics`.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A project whose build fails once a file `broken` is committed, with `notify` lines.
fn notifying(tag: &str, notify: &str, notify_on: &str) -> (Setup, std::path::PathBuf) {
    let dir = TempDir::new(tag);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(dir.path().join("secrets.env"), "TOKEN=s3cr3t-token-value\n").unwrap();
    let lines = format!(
        "env = {{ OUT = {} }}\nenv_file = \"secrets.env\"\nnotify = {}\nnotify_on = {notify_on}",
        toml_str(&out.to_string_lossy()),
        toml_str(notify)
    );
    let build = "if [ -f broken ]; then echo oops; exit 3; fi";
    let s = setup_project(dir, build, &[("a", "1")], "", &lines, Daemon::start);
    (s, out)
}

/// Waits until the job's notification is `state`; returns the job.
fn wait_notification(d: &Daemon, id: &str, state: &str, timeout: Duration) -> Value {
    let mut job = Value::Null;
    let ok = wait_until(timeout, || {
        job = d.job(id);
        job["notification"]["state"] == state
    });
    assert!(
        ok,
        "notification of {id} is not {state}: {job}\nlog:\n{}",
        d.job_log(id)
    );
    job
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn listed_end_states_run_the_command_with_the_job_on_stdin_and_in_its_environment() {
    let notify = "cat > \"$OUT/$DEPLOYHOOK_JOB_ID.json\"; env | grep '^DEPLOYHOOK_' | sort > \"$OUT/$DEPLOYHOOK_JOB_ID.env\"; echo \"posting with $TOKEN\"";
    let (s, out) = notifying("nrun", notify, "[\"READY\", \"ERROR\"]");
    let d = &s.daemon;

    let ready = d.trigger(&s.path);
    d.wait_state(&ready, "READY", T);
    let job = wait_notification(d, &ready, "sent", T);
    assert_eq!(
        job["notification"],
        serde_json::json!({"state": "sent", "attempts": 1, "lastError": null})
    );
    let stdin: Value = serde_json::from_str(&read(&out.join(format!("{ready}.json")))).unwrap();
    assert_eq!(stdin["job"]["id"], ready.as_str());
    assert_eq!(stdin["job"]["state"], "READY");
    assert_eq!(stdin["job"]["commit"], s.repo.head().as_str());
    let env = read(&out.join(format!("{ready}.env")));
    for line in [
        format!("DEPLOYHOOK_JOB_ID={ready}"),
        "DEPLOYHOOK_JOB_STATE=READY".into(),
        "DEPLOYHOOK_PROJECT=site".into(),
        "DEPLOYHOOK_BRANCH=main".into(),
        format!("DEPLOYHOOK_COMMIT={}", s.repo.head()),
    ] {
        assert!(env.lines().any(|l| l == line), "no {line} in:\n{env}");
    }
    assert!(env.contains("DEPLOYHOOK_HOOK_NAME="), "{env}");
    assert!(
        !env.contains("DEPLOYHOOK_JOB_ERROR"),
        "a null error is left unset:\n{env}"
    );
    let log = d.job_log(&ready);
    assert!(log.contains("notification (READY), attempt 1"), "{log}");
    assert!(log.contains("notification sent"), "{log}");
    assert!(
        log.contains("posting with ***"),
        "the env_file secret is masked:\n{log}"
    );
    assert!(!log.contains("s3cr3t-token-value"), "{log}");

    s.repo.commit(&[("broken", "1")], "break the build");
    let failed = d.trigger(&s.path);
    d.wait_state(&failed, "ERROR", T);
    wait_notification(d, &failed, "sent", T);
    let env = read(&out.join(format!("{failed}.env")));
    assert!(env.contains("DEPLOYHOOK_JOB_STATE=ERROR"), "{env}");
    assert!(
        env.contains("DEPLOYHOOK_JOB_ERROR=build exited with status 3"),
        "{env}"
    );
    assert_eq!(metric(d, "deployhook_notifications_pending"), 0.0);
}

#[test]
fn only_a_recovery_notifies_when_recovered_is_listed() {
    let notify = "echo \"$DEPLOYHOOK_JOB_ID\" >> \"$OUT/sent\"";
    let (s, out) = notifying("nrecov", notify, "[\"RECOVERED\"]");
    let d = &s.daemon;
    let first = d.trigger(&s.path);
    d.wait_state(&first, "READY", T);
    s.repo.commit(&[("broken", "1")], "break");
    let broken = d.trigger(&s.path);
    d.wait_state(&broken, "ERROR", T);
    let head = s.repo.head();
    git(&s.repo.path, &["rm", "-q", "broken"]);
    git(&s.repo.path, &["commit", "-qm", "fix"]);
    assert_ne!(head, s.repo.head());
    let fixed = d.trigger(&s.path);
    d.wait_state(&fixed, "READY", T);
    let again = d.trigger(&s.path);
    d.wait_state(&again, "READY", T);
    wait_notification(d, &fixed, "sent", T);
    for id in [&first, &broken, &again] {
        assert_eq!(d.job(id)["notification"], Value::Null, "{id}");
    }
    assert_eq!(
        read(&out.join("sent")).trim(),
        fixed,
        "only the recovery notified"
    );
}

#[test]
fn a_failing_command_is_retried_across_a_kill_9_until_it_succeeds() {
    // Fails on its first run, succeeds on the next.
    let notify = "if [ ! -f \"$OUT/once\" ]; then touch \"$OUT/once\"; echo 'webhook said 500' >&2; exit 7; fi; echo \"$DEPLOYHOOK_JOB_ID\" >> \"$OUT/sent\"";
    let (mut s, out) = notifying("nretry", notify, "[\"READY\"]");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", T);
    let mut job = Value::Null;
    let failed_once = wait_until(T, || {
        job = s.daemon.job(&id);
        job["notification"]["attempts"] == 1
    });
    assert!(failed_once, "{job}");
    assert_eq!(job["notification"]["state"], "pending");
    let error = job["notification"]["lastError"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(error, "the notify command exited with status 7");
    assert_eq!(metric(&s.daemon, "deployhook_notifications_pending"), 1.0);
    let log = s.daemon.job_log(&id);
    assert!(log.contains("webhook said 500"), "{log}");
    assert!(
        log.contains(
            "notification failed: the notify command exited with status 7; next attempt in 5 s"
        ),
        "{log}"
    );

    // The retry is due about 5 s later; a crash meanwhile does not lose it.
    s.daemon.kill9();
    s.daemon.restart();
    let job = wait_notification(&s.daemon, &id, "sent", T);
    assert_eq!(job["notification"]["attempts"], 2);
    assert_eq!(job["notification"]["lastError"], Value::Null);
    assert_eq!(read(&out.join("sent")).trim(), id);
    assert_eq!(metric(&s.daemon, "deployhook_notifications_pending"), 0.0);
    let log = s.daemon.job_log(&id);
    assert!(log.contains("notification (READY), attempt 2"), "{log}");
}

#[test]
fn without_notify_jobs_have_no_notification_and_a_bad_notify_on_is_refused() {
    let s = setup("nnone", "true", &[("a", "1")], "");
    let id = s.daemon.trigger(&s.path);
    let job = s.daemon.wait_state(&id, "READY", T);
    assert_eq!(job["notification"], Value::Null);
    assert_eq!(metric(&s.daemon, "deployhook_notifications_pending"), 0.0);

    let config = s.dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[projects.site]\nrepo = \"/tmp/x\"\nbuild = \"true\"\nnotify = \"true\"\nnotify_on = [\"FAILURE\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .env_remove("DEPLOYHOOK_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("bad.toml:5: key `projects.site.notify_on`"),
        "{text}"
    );
    assert!(
        text.contains("use any of READY, ERROR, CANCELED, RECOVERED"),
        "{text}"
    );
}
