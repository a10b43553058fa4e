//! Hook URLs: creation, the trigger contract, identical 404s, 405s, revocation, and secrets that
//! never reach the journal, the logs or the listings.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn get_and_post_answer_201_with_exactly_the_job() {
    let s = setup("t201", "true", &[("a", "1")], "");
    for method in ["GET", "POST"] {
        let resp = http(s.daemon.public, method, &s.path, &[], b"");
        assert_eq!(resp.status, 201, "{method}: {}", resp.text());
        let body = resp.text();
        assert!(body.starts_with("{\"job\":{\"id\":\""), "{body}");
        let v = resp.json();
        let job = v["job"].as_object().unwrap();
        assert_eq!(keys(&v["job"]), ["id", "state", "createdAt"]);
        assert_eq!(job["state"], "PENDING");
        let id = job["id"].as_str().unwrap();
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(job["createdAt"].as_u64().unwrap() > 1_600_000_000_000);
        // The first 7 characters are createdAt in base 62 (0-9A-Za-z), so ids sort by time.
        let time = id[..7].bytes().fold(0u64, |n, b| {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'A'..=b'Z' => b - b'A' + 10,
                _ => b - b'a' + 36,
            };
            n * 62 + u64::from(digit)
        });
        assert_eq!(time, job["createdAt"].as_u64().unwrap(), "{id}");
        assert_eq!(resp.header("Content-Type"), Some("application/json"));
        assert_eq!(resp.header("Cache-Control"), Some("no-store"));
        assert_eq!(resp.header("Referrer-Policy"), Some("no-referrer"));
        // Acknowledged means durable: the status side sees it at once.
        assert_eq!(s.daemon.job(id)["hookId"], s.hook.as_str());
    }
}

#[test]
fn a_body_and_a_query_string_are_ignored() {
    let s = setup("tbody", "true", &[("a", "1")], "");
    let resp = http(
        s.daemon.public,
        "POST",
        &s.path,
        &[("Content-Type", "application/json")],
        br#"{"ref":"x"}"#,
    );
    assert_eq!(resp.status, 201);
    let resp = http(
        s.daemon.public,
        "POST",
        &format!("{}?buildCache=false", s.path),
        &[],
        b"",
    );
    assert_eq!(resp.status, 201);
}

#[test]
fn every_failed_lookup_gets_the_same_404() {
    let (_dir, _repo, d) = start_projects("t404", &[("site", "true"), ("blog", "true")], "");
    let (hook, path) = d.create_hook("site", "main");
    let secret = path.rsplit('/').next().unwrap().to_string();
    let unknown = http(
        d.public,
        "POST",
        "/v1/integrations/deploy/site/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &[],
        b"",
    );
    let malformed = http(
        d.public,
        "POST",
        "/v1/integrations/deploy/site/short",
        &[],
        b"",
    );
    let wrong_project = http(
        d.public,
        "POST",
        &format!("/v1/integrations/deploy/blog/{secret}"),
        &[],
        b"",
    );
    let out = d.cli(&["hooks", "revoke", &hook]);
    assert!(out.status.success());
    let revoked = http(d.public, "POST", &path, &[], b"");
    let reference = unknown.body.clone();
    for r in [&unknown, &malformed, &wrong_project, &revoked] {
        assert_eq!(r.status, 404);
        assert_eq!(r.body, reference, "byte-identical bodies");
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
    }
    assert_eq!(unknown.json()["error"]["code"], "not_found");
    // The operator's log says why each was refused, and never shows the secret.
    let refusals = |d: &Daemon| -> Vec<String> {
        d.log_text()
            .lines()
            .filter(|l| l.contains("trigger refused"))
            .map(|l| l.split("status=").nth(1).unwrap_or("").to_string())
            .collect()
    };
    let mut d = d;
    let got = refusals(&d);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[0].starts_with("404 (unknown secret)"), "{got:?}");
    assert!(got[1].starts_with("404 (unknown secret)"), "{got:?}");
    assert!(
        got[2].starts_with(&format!(
            "404 (project mismatch for {hook}: the URL names `blog`)"
        )),
        "{got:?}"
    );
    assert!(
        got[3].starts_with(&format!("404 (revoked hook {hook})")),
        "{got:?}"
    );
    assert!(!d.log_text().contains(&secret));
    // The journal remembers a revoked secret across a crash and restart.
    d.kill9();
    d.restart();
    assert_eq!(http(d.public, "POST", &path, &[], b"").body, reference);
    let got = refusals(&d);
    assert!(
        got.last()
            .unwrap()
            .starts_with(&format!("404 (revoked hook {hook})")),
        "{got:?}"
    );
}

#[test]
fn other_methods_get_405_before_the_secret_is_looked_at() {
    let s = setup("t405", "true", &[("a", "1")], "");
    let fake = "/v1/integrations/deploy/site/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for method in ["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
        for path in [s.path.as_str(), fake] {
            let r = http(s.daemon.public, method, path, &[], b"");
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("Allow"), Some("GET, POST"));
            if method != "HEAD" {
                assert_eq!(r.json()["error"]["code"], "method_not_allowed");
            }
        }
    }
}

#[test]
fn a_revoked_hook_is_dead_at_once_and_gone_from_the_list() {
    let s = setup("trevoke", "true", &[("a", "1")], "");
    s.daemon.trigger(&s.path);
    let out = s.daemon.cli(&["hooks", "revoke", &s.hook]);
    assert!(out.status.success());
    assert_eq!(http(s.daemon.public, "POST", &s.path, &[], b"").status, 404);
    let out = s.daemon.cli(&["hooks", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hooks"].as_array().unwrap().len(), 0);
    let again = s.daemon.cli(&["hooks", "revoke", &s.hook]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no hook with id"));
}

#[test]
fn hooks_list_shows_the_hook_fields_and_never_a_secret() {
    // keep_jobs = 2: the last trigger time survives retention and is the newest job's, not the
    // oldest kept one's.
    let s = setup("tlist", "true", &[("a", "1")], "keep_jobs = 2");
    let secret = s.path.rsplit('/').next().unwrap().to_string();
    let list = || {
        let out = s.daemon.cli(&["hooks", "list", "--json"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before: serde_json::Value = serde_json::from_str(&list()).unwrap();
    assert_eq!(
        before["hooks"][0]["lastTriggeredAt"],
        serde_json::Value::Null
    );
    let mut created = 0;
    for _ in 0..3 {
        let id = s.daemon.trigger(&s.path);
        created = s.daemon.job(&id)["createdAt"].as_u64().unwrap();
        // The next job is created in a later millisecond, so that the times differ.
        assert!(wait_until(Duration::from_secs(1), || now_ms() > created));
    }
    let listing = format!("/jobs?hook={}", s.hook);
    assert!(wait_until(Duration::from_secs(10), || {
        http(s.daemon.status, "GET", &listing, &[], b"").json()["jobs"]
            .as_array()
            .unwrap()
            .len()
            == 2
    }));
    let text = list();
    assert!(!text.contains(&secret));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hook = &v["hooks"][0];
    assert_eq!(keys(hook), HOOK_KEYS);
    assert_eq!(hook["id"], s.hook.as_str());
    assert_eq!(hook["lastTriggeredAt"].as_u64(), Some(created));
    let table = s.daemon.cli(&["hooks", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&s.hook) && !table.contains(&secret));
}

#[test]
fn the_secret_is_stored_only_as_a_hash_and_never_logged() {
    let s = setup("tsecret", "true", &[("a", "1")], "");
    let secret = s.path.rsplit('/').next().unwrap().to_string();
    let job = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&job, "READY", Duration::from_secs(30));
    assert!(s.daemon.wait_log(
        &format!("trigger hook={} job={job} status=201", s.hook),
        Duration::from_secs(5)
    ));
    assert!(!s.daemon.log_text().contains(&secret));
    let journal = s.daemon.journal_path();
    let log_file = journal.with_extension(deployhook::harness::LOG_EXTENSION);
    for file in [journal, log_file] {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{}",
            file.display()
        );
    }
    let log =
        std::fs::read_to_string(s.daemon.state_dir().join(format!("logs/{job}.log"))).unwrap();
    assert!(!log.contains(&secret));
}

#[test]
fn creating_a_hook_checks_project_branch_and_name() {
    let s = setup("tcreate", "true", &[("a", "1")], "");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--project", "nope", "--name", "x", "--branch", "main"],
            "unknown project `nope`",
        ),
        (
            &["--project", "site", "--name", "x", "--branch", "bad..name"],
            "not a valid branch name",
        ),
        (
            &["--project", "site", "--name", "x", "--branch=-rf"],
            "not a valid branch name",
        ),
        (
            &["--project", "site", "--name", "", "--branch", "main"],
            "1 to 100 characters",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["hooks", "create"];
        full.extend_from_slice(args);
        let out = s.daemon.cli(&full);
        assert_eq!(out.status.code(), Some(2), "a bad argument: {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let long = "n".repeat(101);
    let out = s.daemon.hooks_create("site", &long, "main", false);
    assert_eq!(out.status.code(), Some(2));
    // The plain form prints the URL alone on stdout.
    let out = s.daemon.hooks_create("site", "CMS", "main", false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.starts_with(&format!(
        "http://{}/v1/integrations/deploy/site/",
        s.daemon.public
    )));
}

#[test]
fn the_admin_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup("tsock", "true", &[("a", "1")], "");
    let mode = std::fs::metadata(s.dir.path().join("admin.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_admin_socket_can_be_shared_with_a_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // The user's own primary group: a daemon may give its socket to a group it belongs to
    // (root to any), so this runs for any user.
    let id = |flag: &str| {
        let out = std::process::Command::new("id").arg(flag).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (group, gid) = (id("-gn"), id("-g"));
    let s = setup(
        "tsockgrp",
        "true",
        &[("a", "1")],
        &format!("admin_group = \"{group}\""),
    );
    let meta = std::fs::metadata(s.dir.path().join("admin.sock")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid().to_string(), gid);
}

/// Group commit: triggers arriving together share journal commits (one fsync per batch).
#[test]
fn concurrent_triggers_share_journal_commits() {
    let s = setup("tgroup", "true", &[("a", "1")], "");
    let metric = |name: &str| metric(&s.daemon, name);
    let (c0, o0) = (
        metric("deployhook_journal_commits_total"),
        metric("deployhook_journal_ops_total"),
    );
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let (addr, path) = (s.daemon.public, s.path.clone());
            std::thread::spawn(move || {
                for _ in 0..10 {
                    assert_eq!(http(addr, "POST", &path, &[], b"").status, 201);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (commits, ops) = (
        metric("deployhook_journal_commits_total") - c0,
        metric("deployhook_journal_ops_total") - o0,
    );
    assert!(ops >= 320.0, "{ops} ops for 320 triggers");
    assert!(
        ops / commits > 1.5,
        "{ops} ops in {commits} commits: no batching"
    );
}

#[test]
fn an_idle_daemon_commits_nothing() {
    let s = setup("tidle", "true", &[("a", "1")], "");
    let metric = |name: &str| metric(&s.daemon, name) as u64;
    let (commits, passes) = (
        metric("deployhook_journal_commits_total"),
        metric("deployhook_retention_passes_total"),
    );
    // Retention runs twice a second; four passes over an idle journal write nothing.
    assert!(wait_until(Duration::from_secs(10), || metric(
        "deployhook_retention_passes_total"
    ) >= passes + 4));
    assert_eq!(metric("deployhook_journal_commits_total"), commits);
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", Duration::from_secs(30));
    assert!(metric("deployhook_journal_commits_total") > commits);
}
