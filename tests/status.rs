//! The read-only status listener: JSON API, logs (tail, live follow), metrics, the HTML pages,
//! retention, the `jobs` / `logs` commands, and no secret anywhere.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn get(d: &Daemon, path: &str) -> Response {
    http(d.status, "GET", path, &[], b"")
}

#[test]
fn no_endpoint_header_or_log_line_ever_shows_a_secret() {
    let dir = TempDir::new("snosecret");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "echo built")],
    );
    let d = Daemon::start(&config);
    let mut secrets = Vec::new();
    let mut jobs = Vec::new();
    for branch in ["main", "main", "other"] {
        let (_, path) = d.create_hook_unverified("site", branch);
        secrets.push(path.rsplit('/').next().unwrap().to_string());
        jobs.push(d.trigger(&path));
    }
    d.wait_state(&jobs[0], "READY", T);
    d.wait_state(&jobs[2], "ERROR", T);
    let mut pages = vec![
        "/".to_string(),
        "/status".into(),
        "/jobs".into(),
        "/hooks".into(),
        "/metrics".into(),
    ];
    for id in &jobs {
        pages.extend([
            format!("/jobs/{id}"),
            format!("/jobs/{id}/log"),
            format!("/job/{id}"),
            format!("/jobs/{id}/log?follow=1"),
        ]);
    }
    for page in &pages {
        for method in ["GET", "HEAD"] {
            let r = http(d.status, method, page, &[], b"");
            assert_eq!(r.status, 200, "{method} {page}");
            let mut all = r.text();
            for (k, v) in &r.headers {
                all.push_str(&format!("{k}: {v}\n"));
            }
            for s in &secrets {
                assert!(!all.contains(s.as_str()), "{method} {page} shows a secret");
            }
        }
    }
    let log = d.log_text();
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "the daemon log shows a secret");
    }
}

#[test]
fn only_get_and_head_are_served() {
    let s = setup("smethods", "true", &[("a", "1")], "");
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = http(s.daemon.status, method, "/status", &[], b"");
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
        assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    }
    let head = http(s.daemon.status, "HEAD", "/status", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("Content-Length").is_some());
}

#[test]
fn status_reports_workers_queue_counts_and_journal_size() {
    let s = setup("sstatus", "true", &[("a", "1")], "workers = 3");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", T);
    // The worker counts itself idle just after it records the job's end.
    assert!(wait_until(T, || get(&s.daemon, "/status").json()
        ["workers"]["busy"]
        == 0));
    let v = get(&s.daemon, "/status").json();
    assert_eq!(
        keys(&v),
        [
            "version",
            "uptimeSecs",
            "workers",
            "queueDepth",
            "jobs",
            "journalBytes"
        ]
    );
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["workers"]["total"], 3);
    assert_eq!(v["workers"]["busy"], 0);
    assert_eq!(v["queueDepth"], 0);
    assert_eq!(
        keys(&v["jobs"]),
        ["PENDING", "BUILDING", "READY", "ERROR", "CANCELED"]
    );
    assert_eq!(v["jobs"]["READY"], 1);
    assert!(v["journalBytes"].as_u64().unwrap() > 0);
}

#[test]
fn jobs_are_listed_newest_first_filtered_and_paged() {
    let (_dir, _repo, d) = start_projects("slist", &[("site", "true"), ("blog", "exit 1")], "");
    let (site_hook, site) = d.create_hook("site", "main");
    let (_, blog) = d.create_hook("blog", "main");
    let mut site_jobs = Vec::new();
    for _ in 0..5 {
        let id = d.trigger(&site);
        d.wait_state(&id, "READY", T);
        site_jobs.push(id);
    }
    let blog_job = d.trigger(&blog);
    d.wait_state(&blog_job, "ERROR", T);

    let all = get(&d, "/jobs").json();
    let ids: Vec<&str> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(ids[0], blog_job);
    assert_eq!(ids[1], site_jobs[4]);
    assert_eq!(all["next"], Value::Null);
    assert_eq!(keys(&all["jobs"][0]), JOB_KEYS);

    let by_hook = get(&d, &format!("/jobs?hook={site_hook}&limit=2")).json();
    let page1: Vec<&str> = by_hook["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(page1, [site_jobs[4].as_str(), site_jobs[3].as_str()]);
    let next = by_hook["next"].as_str().expect("a cursor");
    let page2 = get(&d, &format!("/jobs?hook={site_hook}&limit=2&before={next}")).json();
    assert_eq!(page2["jobs"][0]["id"], site_jobs[2].as_str());
    let last = get(
        &d,
        &format!(
            "/jobs?hook={site_hook}&limit=5&before={}",
            page2["next"].as_str().unwrap()
        ),
    )
    .json();
    assert_eq!(last["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(last["next"], Value::Null);

    let errors = get(&d, "/jobs?state=ERROR").json();
    assert_eq!(errors["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(errors["jobs"][0]["id"], blog_job.as_str());
    let blog_only = get(&d, "/jobs?project=blog").json();
    assert_eq!(blog_only["jobs"].as_array().unwrap().len(), 1);
    let none = get(&d, "/jobs?project=blog&state=READY").json();
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);

    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "state=DONE",
        "state=ready",
        "hook=nope",
        "before=x",
        "colour=red",
    ] {
        let r = get(&d, &format!("/jobs?{bad}"));
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    assert_eq!(get(&d, "/jobs?limit=500").status, 200);
    for missing in [
        "/jobs/AAAAAAAAAAAAAAAAAAAA",
        "/jobs/nope",
        "/jobs/AAAAAAAAAAAAAAAAAAAA/log",
        "/job/AAAAAAAAAAAAAAAAAAAA",
        "/nope",
    ] {
        let r = get(&d, missing);
        assert_eq!(r.status, 404, "{missing}");
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    let hooks = get(&d, "/hooks").json();
    assert_eq!(hooks["hooks"].as_array().unwrap().len(), 2);
    assert_eq!(keys(&hooks["hooks"][0]), HOOK_KEYS);
}

#[test]
fn logs_have_a_tail_and_a_live_follow() {
    let s = setup(
        "slogs",
        "echo one; sleep 2; echo two; echo three",
        &[("a", "1")],
        "",
    );
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "BUILDING", T);
    let mut stream = TcpStream::connect(s.daemon.status).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET /jobs/{id}/log?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // "one" arrives while the build is still running.
    while !String::from_utf8_lossy(&got).contains("\none\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(s.daemon.job(&id)["state"], "BUILDING");
    // Then the stream ends by itself when the job does: the last chunk comes (the connection
    // stays open for the next request, so the end of the body is what is waited for).
    while !got.ends_with(b"\r\n0\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the last chunk: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let r = parse_response(&got, false);
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    let text = r.text();
    assert!(text.contains("\ntwo\nthree\n"), "{text}");
    assert!(
        text.trim_end().ends_with("READY after") || text.contains("[deployhook] READY after"),
        "{text}"
    );
    assert_eq!(text, s.daemon.job_log(&id));

    let tail = get(&s.daemon, &format!("/jobs/{id}/log?tail=2")).text();
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail
        .lines()
        .last()
        .unwrap()
        .starts_with("[deployhook] READY after"));
    assert_eq!(
        get(&s.daemon, &format!("/jobs/{id}/log?tail=0")).status,
        400
    );
    assert_eq!(
        get(&s.daemon, &format!("/jobs/{id}/log?follow=maybe")).status,
        400
    );
}

#[test]
fn metrics_use_the_prometheus_text_format() {
    let s = setup("smetrics", "true", &[("a", "1")], "");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", T);
    assert_eq!(
        http(
            s.daemon.public,
            "POST",
            "/v1/integrations/deploy/site/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &[],
            b""
        )
        .status,
        404
    );
    let r = get(&s.daemon, "/metrics");
    assert!(r
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for (name, kind) in [
        ("deployhook_triggers_total", "counter"),
        ("deployhook_jobs_total", "counter"),
        ("deployhook_queue_depth", "gauge"),
        ("deployhook_workers_busy", "gauge"),
        ("deployhook_build_duration_seconds", "histogram"),
        ("deployhook_journal_commit_seconds", "histogram"),
        ("deployhook_journal_bytes", "gauge"),
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
    }
    for line in [
        "deployhook_triggers_total{result=\"accepted\"} 1",
        "deployhook_triggers_total{result=\"not_found\"} 1",
        "deployhook_jobs_total{state=\"PENDING\"} 1",
        "deployhook_jobs_total{state=\"BUILDING\"} 1",
        "deployhook_jobs_total{state=\"READY\"} 1",
        "deployhook_build_duration_seconds_count 1",
        "deployhook_queue_depth 0",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "{line} missing:\n{text}"
        );
    }
    // Every sample line is `name{labels} value` with a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn the_dashboard_lists_jobs_and_escapes_what_it_prints() {
    let s = setup("sdash", "exit 2", &[("a", "1")], "");
    let out = s
        .daemon
        .hooks_create("site", "<script>alert(1)</script>", "main", true);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = v["url"]
        .as_str()
        .unwrap()
        .split(&s.daemon.public.to_string())
        .nth(1)
        .unwrap()
        .to_string();
    let id = s.daemon.trigger(&path);
    s.daemon.wait_state(&id, "ERROR", T);
    let r = get(&s.daemon, "/");
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(r
        .header("Content-Security-Policy")
        .unwrap()
        .contains("default-src 'none'"));
    let html = r.text();
    assert!(html.contains(&format!("href=\"/job/{id}\"")));
    assert!(html.contains("<span class=\"state ERROR\">ERROR</span>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script>"));
    let page = get(&s.daemon, &format!("/job/{id}")).text();
    assert!(page.contains("build exited with status 2"));
    assert!(!page.contains("<script>"));
}

/// Renders the dashboard in headless Chromium and reads the DOM it built. CI installs Debian's
/// chromium; elsewhere the test says it was skipped, unless `CI` is set: there it fails.
#[test]
fn the_dashboard_renders_in_a_real_browser() {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(browser) = browser else {
        skip_unless_ci("no chromium on this machine (.ci/run installs it)");
        return;
    };
    let s = setup("sbrowser", "true", &[("a", "1")], "");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", T);
    let profile = TempDir::new("chromium-profile");
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("http://{}/", s.daemon.status),
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(&format!("id=\"job-{id}\"")),
        "job not in the DOM:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("<span class=\"state READY\">READY</span>"),
        "{dom}"
    );
}

#[test]
fn retention_keeps_the_newest_jobs_per_hook_and_removes_old_logs() {
    let s = setup("sretain", "true", &[("a", "1")], "keep_jobs = 3");
    let mut ids = Vec::new();
    for _ in 0..8 {
        let id = s.daemon.trigger(&s.path);
        s.daemon.wait_state(&id, "READY", T);
        ids.push(id);
    }
    let url = format!("/jobs?hook={}", s.hook);
    assert!(wait_until(Duration::from_secs(10), || get(&s.daemon, &url)
        .json()["jobs"]
        .as_array()
        .unwrap()
        .len()
        == 3));
    let kept: Vec<String> = get(&s.daemon, &url).json()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, [ids[7].clone(), ids[6].clone(), ids[5].clone()]);
    let logs = s.daemon.state_dir().join("logs");
    assert!(wait_until(Duration::from_secs(5), || !logs
        .join(format!("{}.log", ids[0]))
        .exists()));
    assert!(logs.join(format!("{}.log", ids[7])).exists());
    assert_eq!(get(&s.daemon, &format!("/jobs/{}", ids[0])).status, 404);
    assert_eq!(get(&s.daemon, "/status").json()["jobs"]["READY"], 3);
}

#[test]
fn jobs_and_logs_commands_read_the_status_listener() {
    let s = setup("scli", "echo hello from the build", &[("a", "1")], "");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", T);
    // The config says port 0; the commands need the real status address.
    let text = std::fs::read_to_string(&s.daemon.config).unwrap();
    let fixed = text.replace(
        "status_listen = \"127.0.0.1:0\"",
        &format!("status_listen = \"{}\"", s.daemon.status),
    );
    std::fs::write(&s.daemon.config, fixed).unwrap();

    let out = s.daemon.cli(&["jobs", "--hook", &s.hook]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("JOB "), "{table}");
    assert!(table.contains(&id) && table.contains("READY"));
    let out = s.daemon.cli(&["jobs", "--state", "READY", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["jobs"][0]["id"], id.as_str());
    let out = s.daemon.cli(&["jobs", "--state", "bogus"]);
    assert_eq!(out.status.code(), Some(2), "a bad argument");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be PENDING, BUILDING"));

    for args in [
        vec!["logs", id.as_str()],
        vec!["logs", id.as_str(), "--follow"],
    ] {
        let out = s.daemon.cli(&args);
        assert!(out.status.success());
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(log.contains("hello from the build"), "{args:?}: {log}");
    }
    let out = s.daemon.cli(&["logs", "AAAAAAAAAAAAAAAAAAAA"]);
    assert_eq!(out.status.code(), Some(1));
}
