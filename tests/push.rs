//! Git hosts' push webhooks pointed at a hook URL: GitHub, Gitea, Forgejo, Gogs and GitLab, each
//! with its own headers and a payload in its documented shape (`tests/payloads/`, with `BRANCH`
//! standing for the pushed branch). Only a push to the hook's branch builds.

mod common;

use common::*;
use std::path::Path;

/// A payload sample with `BRANCH` replaced.
fn payload(name: &str, branch: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/payloads")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("BRANCH", branch)
        .into_bytes()
}

fn headers(host: &str, event: &str) -> Vec<(String, String)> {
    let h = |k: &str| (k.to_string(), event.to_string());
    let delivery = |k: &str| {
        (
            k.to_string(),
            "f6266f16-1bf3-46a5-9ea4-602e06ead473".to_string(),
        )
    };
    let mut list = vec![("Content-Type".to_string(), "application/json".to_string())];
    match host {
        "github" => list.extend([h("X-GitHub-Event"), delivery("X-GitHub-Delivery")]),
        // Gitea, Forgejo and Gogs also send GitHub's (and Gogs') headers.
        "gitea" => list.extend([h("X-GitHub-Event"), h("X-Gogs-Event"), h("X-Gitea-Event")]),
        "forgejo" => list.extend([
            h("X-GitHub-Event"),
            h("X-Gogs-Event"),
            h("X-Gitea-Event"),
            h("X-Forgejo-Event"),
        ]),
        "gogs" => list.extend([h("X-Gogs-Event"), delivery("X-Gogs-Delivery")]),
        "gitlab" => list.extend([h("X-Gitlab-Event"), ("X-Gitlab-Token".into(), "t".into())]),
        _ => unreachable!(),
    }
    list
}

fn post(s: &Setup, host: &str, event: &str, body: &[u8]) -> Response {
    post_to(s, &s.path, host, event, body)
}

/// A host's event POSTed to `path` (a hook path, or a bogus one).
fn post_to(s: &Setup, path: &str, host: &str, event: &str, body: &[u8]) -> Response {
    let list = headers(host, event);
    let refs: Vec<(&str, &str)> = list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    http(s.daemon.public, "POST", path, &refs, body)
}

fn jobs(s: &Setup) -> usize {
    s.daemon.jobs_of(&s.hook)
}

#[test]
fn a_push_to_the_hooks_branch_builds_and_everything_else_is_skipped() {
    let s = setup("pevents", "true", &[("a", "1")], "");
    let builds = [
        ("github", "push", "github_push.json"),
        ("gitea", "push", "gitea_push.json"),
        ("forgejo", "push", "gitea_push.json"),
        ("gogs", "push", "gogs_push.json"),
        ("gitlab", "Push Hook", "gitlab_push.json"),
    ];
    for (host, event, file) in builds {
        let r = post(&s, host, event, &payload(file, "main"));
        assert_eq!(r.status, 201, "{host} push to main: {}", r.text());
        assert_eq!(r.json()["job"]["state"], "PENDING");
    }
    let skips = [
        ("github", "ping", "github_ping.json", "main", "ping"),
        (
            "github",
            "push",
            "github_push.json",
            "dev",
            "refs/heads/dev",
        ),
        (
            "github",
            "push",
            "github_delete_push.json",
            "main",
            "deleted",
        ),
        ("gitea", "push", "gitea_push.json", "dev", "refs/heads/dev"),
        (
            "gitea",
            "delete",
            "gitea_delete.json",
            "main",
            "Gitea event `delete`",
        ),
        (
            "forgejo",
            "create",
            "gitea_delete.json",
            "main",
            "Forgejo event `create`",
        ),
        (
            "gogs",
            "push",
            "gogs_push.json",
            "feature/x",
            "refs/heads/feature/x",
        ),
        (
            "gitlab",
            "Push Hook",
            "gitlab_push.json",
            "dev",
            "refs/heads/dev",
        ),
        (
            "gitlab",
            "Push Hook",
            "gitlab_delete_push.json",
            "main",
            "deleted",
        ),
        (
            "gitlab",
            "Tag Push Hook",
            "gitlab_tag_push.json",
            "main",
            "tag",
        ),
        (
            "github",
            "issues",
            "github_ping.json",
            "main",
            "GitHub event `issues`",
        ),
    ];
    for (host, event, file, branch, why) in skips {
        let r = post(&s, host, event, &payload(file, branch));
        assert_eq!(r.status, 200, "{host} {event} {branch}: {}", r.text());
        let skipped = r.json()["skipped"].as_str().unwrap_or("").to_string();
        assert!(skipped.contains(why), "{host} {event} {branch}: {skipped}");
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    }
    assert_eq!(ping_answer(&s), "ping");
    assert_eq!(
        jobs(&s),
        builds.len(),
        "a job for each push to main, none for the rest"
    );
    // An event on an unknown secret is the same 404 as any trigger.
    let bogus = format!("/v1/integrations/deploy/site/{}", "A".repeat(32));
    let r = post_to(
        &s,
        &bogus,
        "github",
        "push",
        &payload("github_push.json", "main"),
    );
    assert_eq!(r.status, 404);
}

/// The exact answer to GitHub's ping.
fn ping_answer(s: &Setup) -> String {
    let r = post(s, "github", "ping", &payload("github_ping.json", "main"));
    assert_eq!(r.text(), "{\"skipped\":\"ping\"}\n");
    r.json()["skipped"].as_str().unwrap().to_string()
}

#[test]
fn large_event_bodies_are_read_and_dropped_in_bounded_memory() {
    let s = setup("plarge", "true", &[("a", "1")], "");
    // A push with 20 MiB of commits after its ref, as a big push's payload is.
    let head = br#"{"ref":"refs/heads/main","before":"1","after":"2","commits":["#;
    let commit = br#"{"id":"76ae82fe9b8d2f9c0b6f1e2d3a4b5c6d7e8f9a0b","message":"x"},"#;
    let mut big = head.to_vec();
    while big.len() < 20 << 20 {
        big.extend_from_slice(commit);
    }
    big.extend_from_slice(br#"{"id":"last"}]}"#);
    let before = rss_kib(s.daemon.pid());
    let r = post(&s, "github", "push", &big);
    assert_eq!(r.status, 201, "{}", r.text());
    let grown = rss_kib(s.daemon.pid()).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "RSS grew {grown} KiB reading a 20 MiB body"
    );
    // Past 25 MiB: 413, read and dropped so the client sees it.
    let mut huge = big;
    huge.resize(26 << 20, b' ');
    let r = post(&s, "github", "push", &huge);
    assert_eq!(r.status, 413);
    // Without a live hook's secret, an event gets the plain body limit: no one without a hook
    // URL can make the daemon read or keep more.
    let bogus = format!("/v1/integrations/deploy/site/{}", "A".repeat(32));
    let r = post_to(&s, &bogus, "github", "push", &vec![b' '; 100 * 1024]);
    assert_eq!(r.status, 413);
    // A line break in a pushed ref (valid JSON: an escaped one) cannot forge a log line.
    let forged = br#"{"ref":"refs/heads/x\n<0>forged line","after":"1"}"#;
    let r = post(&s, "github", "push", forged);
    assert_eq!(r.status, 200);
    let skipped = r.json()["skipped"].as_str().unwrap_or_default().to_string();
    assert!(skipped.contains("<0>forged"), "the ref was read: {skipped}");
    assert!(
        s.daemon
            .wait_log("<0>forged", std::time::Duration::from_secs(10)),
        "the ref is in the log, escaped"
    );
    assert!(!s
        .daemon
        .log_text()
        .lines()
        .any(|l| l.starts_with("<0>forged")));
    // Without an event header, a request is a plain trigger with the plain body limit.
    let r = http(
        s.daemon.public,
        "POST",
        &s.path,
        &[],
        &vec![b'x'; 100 * 1024],
    );
    assert_eq!(r.status, 413);
    assert_eq!(jobs(&s), 1);
}
