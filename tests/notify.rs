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
    let notify = "echo \"$DEPLOYHOOK_JOB_ID\" >> \"$OUT/sent\"; echo \"$DEPLOYHOOK_NOTIFY_EVENT\" > \"$OUT/event\"";
    // States are names in any case.
    let (s, out) = notifying("nrecov", notify, "[\"recovered\"]");
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
    assert_eq!(read(&out.join("event")).trim(), "RECOVERED");
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
    // Counters move right after the commit that the job shows.
    let counter = |d: &Daemon, name: &str, value: f64| {
        assert!(
            wait_until(T, || metric(d, name) == value),
            "{name} is not {value}"
        )
    };
    counter(&s.daemon, "deployhook_notification_failures_total", 1.0);
    let log = s.daemon.job_log(&id);
    assert!(log.contains("webhook said 500"), "{log}");
    let failed = "notification failed: the notify command exited with status 7; next attempt in ";
    let wait: u64 = log
        .split(failed)
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{log}"));
    assert!((4..=5).contains(&wait), "about 5 s: {log}");

    // The retry is due about 5 s later; a crash meanwhile does not lose it.
    s.daemon.kill9();
    s.daemon.restart();
    let job = wait_notification(&s.daemon, &id, "sent", T);
    assert_eq!(job["notification"]["attempts"], 2);
    assert_eq!(job["notification"]["lastError"], Value::Null);
    assert_eq!(read(&out.join("sent")).trim(), id);
    assert_eq!(metric(&s.daemon, "deployhook_notifications_pending"), 0.0);
    counter(&s.daemon, "deployhook_notifications_sent_total", 1.0);
    let log = s.daemon.job_log(&id);
    assert!(log.contains("notification (READY), attempt 2"), "{log}");
    let page = http(s.daemon.status, "GET", &format!("/job/{id}"), &[], b"").text();
    assert!(
        page.contains("<tr><th>Notification</th><td>sent (2 attempts)</td></tr>"),
        "{page}"
    );
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

/// One request a stand-in webhook received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    head: String,
    body: String,
}

/// A stand-in for Slack, Discord and ntfy: answers every request 200 and keeps it.
fn webhook_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            keep.lock().unwrap().push(Received {
                path,
                head,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (addr, seen)
}

/// The `notify = '''…'''` lines of the README's notification recipes, in order.
fn readme_recipes() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("\nRecipes (").expect("the README's recipes");
    let end = start + readme[start..].find("\n### ").unwrap();
    readme[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("notify = '''")?.strip_suffix("'''"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_recipes_post_what_they_promise() {
    if std::process::Command::new("jq")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip_unless_ci("jq is not installed (the recipes build their JSON with it)");
    }
    let recipes = readme_recipes();
    assert_eq!(recipes.len(), 4, "Slack, Discord, ntfy, email: {recipes:?}");
    let dir = TempDir::new("nrecipes");
    let (addr, seen) = webhook_server();
    // A sendmail stand-in that keeps the message it is given.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mail = dir.path().join("mail");
    let sendmail = bin.join("sendmail");
    std::fs::write(
        &sendmail,
        format!(
            "#!/bin/sh\necho \"args: $*\" > {0}\ncat >> {0}\n",
            mail.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &sendmail,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let names = ["slack", "discord", "ntfy", "email"];
    let specs: Vec<ProjectSpec> = names
        .iter()
        .zip(&recipes)
        .map(|(name, recipe)| {
            let mut p = ProjectSpec::new(name, &repo.path, "echo failing on purpose; exit 4");
            p.env = vec![
                ("SLACK_WEBHOOK_URL".into(), format!("http://{addr}/slack")),
                (
                    "DISCORD_WEBHOOK_URL".into(),
                    format!("http://{addr}/discord"),
                ),
                ("NTFY_URL".into(), format!("http://{addr}/ntfy-topic")),
                ("MAIL_TO".into(), "ops@example.com".into()),
            ];
            p.extra = format!("notify = '''{recipe}'''");
            p
        })
        .collect();
    let config = write_config(dir.path(), "workers = 4", &specs);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Daemon::start_with_env(&config, &[("PATH", &path)]);
    let mut jobs = Vec::new();
    for name in names {
        let (_, hook_path) = d.create_hook(name, "main");
        jobs.push(d.trigger(&hook_path));
    }
    for id in &jobs {
        d.wait_state(id, "ERROR", T);
        wait_notification(&d, id, "sent", T);
    }
    let seen = seen.lock().unwrap().clone();
    let got = |path: &str| {
        seen.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing posted to {path}: {seen:?}"))
            .clone()
    };
    let expected = |project: &str, id: &str| {
        format!("{project} (main): ERROR build exited with status 4 job {id}")
    };
    for (name, key, id) in [
        ("slack", "text", &jobs[0]),
        ("discord", "content", &jobs[1]),
    ] {
        let r = got(&format!("/{name}"));
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{r:?}"
        );
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body[key], expected(name, id), "{r:?}");
    }
    let ntfy = got("/ntfy-topic");
    assert!(ntfy.head.contains("Title: ntfy ERROR"), "{ntfy:?}");
    assert_eq!(
        ntfy.body,
        format!("build exited with status 4 (job {})", jobs[2])
    );
    let message = read(&mail);
    assert!(
        message.starts_with("args: -t\nTo: ops@example.com\n"),
        "{message}"
    );
    assert!(
        message.contains("Subject: deploy of email: ERROR build exited with status 4\n\n"),
        "{message}"
    );
    let json_start = message.find("\n\n").unwrap();
    let body: Value = serde_json::from_str(&message[json_start..]).unwrap();
    assert_eq!(body["job"]["id"], jobs[3].as_str());
}

#[test]
fn a_hanging_command_is_stopped_after_30_seconds_and_tried_again() {
    if !slow_tests_enabled() {
        return;
    }
    let notify = "echo run >> \"$OUT/runs\"; exec sleep 613";
    let (s, out) = notifying("nhang", notify, "[\"READY\"]");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", T);
    let mut job = Value::Null;
    let timed_out = wait_until(Duration::from_secs(60), || {
        job = s.daemon.job(&id);
        job["notification"]["attempts"] == 1
    });
    assert!(timed_out, "{job}");
    assert_eq!(job["notification"]["state"], "pending");
    assert_eq!(
        job["notification"]["lastError"],
        "the notify command timed out after 30 s"
    );
    let gone = wait_until(Duration::from_secs(10), || {
        let ps = std::process::Command::new("pgrep")
            .args(["-f", "sleep 613"])
            .output()
            .unwrap();
        ps.stdout.is_empty()
    });
    assert!(gone, "the timed-out command is still running");
    assert_eq!(read(&out.join("runs")).lines().count(), 1);
    // And it is tried again about 5 s later.
    assert!(wait_until(Duration::from_secs(20), || read(
        &out.join("runs")
    )
    .lines()
    .count()
        == 2));
}

#[test]
fn a_reload_without_notify_gives_up_what_is_pending_and_says_why() {
    let (s, _out) = notifying("nreload", "exit 1", "[\"READY\"]");
    let d = &s.daemon;
    let id = d.trigger(&s.path);
    d.wait_state(&id, "READY", T);
    let mut job = Value::Null;
    assert!(
        wait_until(T, || {
            job = d.job(&id);
            job["notification"]["attempts"] == 1
        }),
        "{job}"
    );
    let text = std::fs::read_to_string(&d.config).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("notify")).collect();
    std::fs::write(&d.config, kept.join("\n")).unwrap();
    d.signal("HUP");
    assert!(d.wait_log("config reloaded", T), "{}", d.log_text());
    let job = wait_notification(d, &id, "failed", T);
    assert_eq!(job["notification"]["attempts"], 2);
    let why = job["notification"]["lastError"].as_str().unwrap();
    assert!(why.contains("no longer has a `notify` command"), "{why}");
    assert!(d.job_log(&id).contains(why), "{}", d.job_log(&id));
    assert_eq!(metric(d, "deployhook_notifications_pending"), 0.0);
    assert!(wait_until(T, || metric(
        d,
        "deployhook_notifications_given_up_total"
    ) == 1.0));
    // Jobs that end now notify nothing.
    let next = d.trigger(&s.path);
    d.wait_state(&next, "READY", T);
    assert_eq!(d.job(&next)["notification"], Value::Null);
}

#[test]
fn a_clean_stop_lets_a_running_command_finish_so_it_is_sent_once() {
    let notify = "sleep 1; echo \"$DEPLOYHOOK_JOB_ID\" >> \"$OUT/sent\"";
    let (mut s, out) = notifying("nstop", notify, "[\"READY\"]");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", T);
    assert!(wait_until(T, || s
        .daemon
        .job_log(&id)
        .contains("notification (READY), attempt 1")));
    s.daemon.signal("TERM");
    assert_eq!(s.daemon.wait_exit(T), Some(0), "{}", s.daemon.log_text());
    assert_eq!(read(&out.join("sent")).trim(), id);
    s.daemon.restart();
    let job = wait_notification(&s.daemon, &id, "sent", T);
    assert_eq!(job["notification"]["attempts"], 1);
    assert_eq!(metric(&s.daemon, "deployhook_notifications_pending"), 0.0);
    assert_eq!(read(&out.join("sent")).lines().count(), 1, "sent twice");
}

#[test]
fn stopping_a_canceled_build_leaves_its_notification_and_its_log_whole() {
    let dir = TempDir::new("ncancel");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let notify = "sleep 0.5; echo \"$DEPLOYHOOK_JOB_ID\" >> \"$OUT/sent\"";
    let lines = format!(
        "env = {{ OUT = {} }}\nnotify = {}\nnotify_on = [\"CANCELED\"]",
        toml_str(&out.to_string_lossy()),
        toml_str(notify)
    );
    // The build ignores SIGTERM, so that its stop takes the kill grace and ends with the
    // search for the job's escaped processes, while the notification runs.
    let build = "trap '' TERM; sleep 30";
    let s = setup_project(dir, build, &[("a", "1")], "", &lines, Daemon::start);
    let d = &s.daemon;
    let id = d.trigger(&s.path);
    d.wait_state(&id, "BUILDING", T);
    let out_cli = d.cli(&["jobs", "cancel", &id]);
    assert!(out_cli.status.success(), "{out_cli:?}");
    let job = wait_notification(d, &id, "sent", T);
    assert_eq!(
        job["notification"],
        serde_json::json!({"state": "sent", "attempts": 1, "lastError": null}),
        "the build's stop killed the notify command"
    );
    assert_eq!(read(&out.join("sent")).trim(), id);
    // Both threads wrote to the job's log; neither overwrote the other.
    assert!(wait_until(T, || d
        .job_log(&id)
        .contains("[deployhook] CANCELED after")));
    let log = d.job_log(&id);
    assert!(
        log.contains("[deployhook] notification (CANCELED), attempt 1: $ sh -c"),
        "{log}"
    );
    assert!(log.contains("[deployhook] notification sent\n"), "{log}");
}
