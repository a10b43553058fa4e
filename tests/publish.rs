//! Publishing and rollback with the real daemon: releases under `publish.to/releases/{job}`,
//! `current` switched atomically, unchanged files hard-linked, `keep` honoured, failed publishes
//! leaving `current` alone, `deployhook rollback`, the views that show what is live, and a
//! reader process that must never see a torn release while the daemon is killed mid-publish.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// `publish = …` for a project's table.
fn publish_line(to: &Path, keep: usize) -> String {
    format!(
        "publish = {{ dir = \"public\", to = {}, keep = {keep} }}",
        toml_str(&to.to_string_lossy())
    )
}

fn live_target(to: &Path) -> PathBuf {
    std::fs::read_link(to.join("current")).expect("current is a link")
}

fn ino(path: PathBuf) -> u64 {
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

fn projects(d: &Daemon) -> Value {
    http(d.status, "GET", "/projects", &[], b"").json()["projects"].clone()
}

fn metrics(d: &Daemon) -> String {
    http(d.status, "GET", "/metrics", &[], b"").text()
}

/// The status page's event stream, read up to its first line of data.
fn events(d: &Daemon) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(d.status).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    write!(stream, "GET /events HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    assert!(read_until(&mut reader, "retry:"), "no event stream");
    reader
}

/// Reads lines until one contains `needle`; false at the end of the stream.
fn read_until(reader: &mut BufReader<TcpStream>, needle: &str) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if line.contains(needle) => return true,
            Ok(_) => {}
        }
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn releases_link_unchanged_files_keep_is_honoured_and_rollback_steps_back() {
    let dir = TempDir::new("publish");
    let to = dir.path().join("www");
    let files = [
        ("site/index.html", "v1"),
        ("site/css/site.css", "body{}"),
        ("site/run.sh", "#!/bin/sh\n"),
    ];
    let mut s = setup_project(
        dir,
        "cp -R site public",
        &files,
        "",
        &publish_line(&to, 2),
        Daemon::start,
    );
    let d = &s.daemon;
    let j1 = d.trigger(&s.path);
    d.wait_state(&j1, "READY", T);
    assert_eq!(live_target(&to), Path::new("releases").join(&j1));
    let rel = |job: &str, file: &str| to.join("releases").join(job).join(file);
    assert_eq!(
        std::fs::read_to_string(to.join("current/index.html")).unwrap(),
        "v1"
    );
    let log = d.job_log(&j1);
    assert!(log.contains("publish: current -> releases/"), "{log}");
    // Folders deployhook makes are open to the web server, whatever the daemon's umask.
    for folder in [to.clone(), to.join("releases")] {
        let mode = std::fs::metadata(&folder).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755, "{}", folder.display());
    }

    // A changed file and a changed mode are copies; the untouched file is the same inode.
    s.repo.commit(&[("site/index.html", "v2")], "v2");
    let script = s.repo.path.join("site/run.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let head = s.repo.commit(&[], "executable");
    let j2 = d.trigger(&s.path);
    d.wait_state(&j2, "READY", T);
    assert_eq!(ino(rel(&j1, "css/site.css")), ino(rel(&j2, "css/site.css")));
    assert_ne!(ino(rel(&j1, "index.html")), ino(rel(&j2, "index.html")));
    assert_ne!(ino(rel(&j1, "run.sh")), ino(rel(&j2, "run.sh")));
    let mode = std::fs::metadata(rel(&j2, "run.sh")).unwrap().mode() & 0o777;
    assert_eq!(
        mode & 0o100,
        0o100,
        "run.sh lost its executable bit: {mode:o}"
    );
    assert_eq!(
        std::fs::read_to_string(rel(&j1, "index.html")).unwrap(),
        "v1"
    );
    assert!(
        d.job_log(&j2).contains("1 file hard-linked"),
        "{}",
        d.job_log(&j2)
    );

    // keep = 2: a third release removes the first, once its READY is in the journal.
    let j3 = d.trigger(&s.path);
    d.wait_state(&j3, "READY", T);
    assert!(wait_until(T, || !to.join("releases").join(&j1).exists()));
    assert!(
        d.job_log(&j3).contains("3 files hard-linked"),
        "{}",
        d.job_log(&j3)
    );

    let site = &projects(d)[0];
    assert_eq!(site["live"]["jobId"], j3.as_str());
    assert_eq!(site["live"]["commit"], head.as_str());
    let since = site["live"]["since"].as_u64().unwrap();
    assert!(since <= now_ms() && since + 120_000 > now_ms(), "{since}");
    assert_eq!(site["releases"], json!([j3, j2]));
    let text = metrics(d);
    assert!(
        text.contains("deployhook_project_releases_newer_than_live{project=\"site\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("deployhook_project_live_release_timestamp_seconds{project=\"site\"} "));

    // Rollback steps back one release (an open status page hears of it); there is nothing
    // older after that.
    let mut page_events = events(d);
    let out = d.cli(&["rollback", "site"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(read_until(&mut page_events, "event: change"));
    assert!(
        stdout(&out).contains(&format!("current -> releases/{j2}")),
        "{}",
        stdout(&out)
    );
    assert_eq!(live_target(&to), Path::new("releases").join(&j2));
    assert!(d.wait_log(
        &format!("rollback project=site current -> releases/{j2}"),
        T
    ));
    let out = d.cli(&["rollback", "site"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no release older than the live one"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["rollback", "site", &j1]);
    assert_eq!(out.status.code(), Some(1));
    let why = stderr(&out);
    assert!(why.contains("was removed") && why.contains(&j3), "{why}");
    let out = d.cli(&["rollback", "site", &j2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already the live one"),
        "{}",
        stderr(&out)
    );

    // What is live is read from the folder and the journal: a restart changes nothing.
    s.daemon.kill9();
    s.daemon.restart();
    let d = &s.daemon;
    let site = &projects(d)[0];
    assert_eq!(site["live"]["jobId"], j2.as_str());
    let text = metrics(d);
    assert!(
        text.contains("deployhook_project_releases_newer_than_live{project=\"site\"} 1\n"),
        "{text}"
    );
    // The counter is the process's own (since start); the gauge above is what lasts.
    assert!(text.contains("deployhook_rollbacks_total 0\n"), "{text}");
    let page = http(d.status, "GET", "/", &[], b"").text();
    assert!(
        page.contains(&format!("Live: <a href=\"/job/{j2}\">")),
        "{page}"
    );
    assert!(
        page.contains("Rolled back:</strong> 1 newer release kept"),
        "{page}"
    );

    // Roll forward by job id; a failed build afterwards prunes nothing and leaves current.
    let out = d.cli(&["rollback", "site", &j3, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer, json!({"project": "site", "from": j2, "to": j3}));
    let out = d.cli(&["rollback", "site", &j2]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = metrics(d);
    assert!(text.contains("deployhook_rollbacks_total 2\n"), "{text}");
    git(&s.repo.path, &["rm", "-q", "-r", "site"]);
    s.repo.commit(&[], "no site: the build fails");
    let j4 = d.trigger(&s.path);
    d.wait_state(&j4, "ERROR", T);
    assert_eq!(live_target(&to), Path::new("releases").join(&j2));
    assert_eq!(projects(d)[0]["releases"], json!([j3, j2]));

    // The next successful publish is live again, and prunes the release that is no longer.
    s.repo.commit(&files, "site again");
    let j5 = d.trigger(&s.path);
    d.wait_state(&j5, "READY", T);
    assert_eq!(live_target(&to), Path::new("releases").join(&j5));
    assert_eq!(projects(d)[0]["releases"], json!([j5, j3]));
}

#[test]
fn a_failed_publish_is_an_error_and_current_stays() {
    let dir = TempDir::new("publish-fail");
    let to = dir.path().join("www");
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(&blocked).unwrap();
    // A regular file where the releases folder must be: refused for root too.
    std::fs::write(blocked.join("releases"), "not a folder").unwrap();
    let repo = Repo::new(dir.path(), "repo", &[("site/index.html", "v1")]);
    let mut site = ProjectSpec::new("site", &repo.path, "[ -f nopublish ] || cp -R site public");
    site.extra = publish_line(&to, 3);
    let mut stuck = ProjectSpec::new("stuck", &repo.path, "cp -R site public");
    stuck.extra = publish_line(&blocked, 3);
    let plain = ProjectSpec::new("plain", &repo.path, "true");
    let config = write_config(dir.path(), "", &[site, stuck, plain]);
    let d = Daemon::start(&config);
    let (_, site_hook) = d.create_hook("site", "main");
    let (_, stuck_hook) = d.create_hook("stuck", "main");

    let out = d.cli(&["rollback", "site"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing is live yet"),
        "{}",
        stderr(&out)
    );
    assert!(!to.exists(), "a refused rollback makes no folders");

    let j1 = d.trigger(&site_hook);
    d.wait_state(&j1, "READY", T);
    repo.commit(&[("nopublish", "")], "the build writes nothing");
    let j2 = d.trigger(&site_hook);
    let job = d.wait_state(&j2, "ERROR", T);
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("no folder `public`") && error.contains("publish.dir"),
        "{error}"
    );
    assert_eq!(job["exitCode"], 0);
    assert_eq!(live_target(&to), Path::new("releases").join(&j1));
    assert_eq!(projects(&d)[1]["releases"], json!([j1]));

    let j3 = d.trigger(&stuck_hook);
    let job = d.wait_state(&j3, "ERROR", T);
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("publish failed") && error.contains("blocked"),
        "{error}"
    );
    assert!(!blocked.join("current").exists());
    assert!(
        d.job_log(&j3).contains("publish failed"),
        "{}",
        d.job_log(&j3)
    );

    // Refusals: an unknown project, a project that does not publish, a malformed job id.
    let out = d.cli(&["rollback", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown project `nosuch`"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["rollback", "plain"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not publish"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["rollback", "site", "not-a-job"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let plain = &projects(&d)[0];
    assert_eq!(plain["name"], "plain");
    assert_eq!(plain["live"], Value::Null);
    assert_eq!(plain["releases"], json!([]));
}

/// Files in the test site: enough that a publish takes a while, so kills land inside it.
const SITE_FILES: usize = 1500;

/// The paths and contents of a site of [`SITE_FILES`] files in 20 folders under `site/`.
fn big_site() -> Vec<(String, String)> {
    (0..SITE_FILES)
        .map(|i| (format!("site/d{}/f{i}.txt", i % 20), format!("file {i}\n")))
        .collect()
}

#[test]
fn a_job_superseded_while_publishing_never_goes_live() {
    let dir = TempDir::new("publish-supersede");
    let to = dir.path().join("www");
    let site = big_site();
    let files: Vec<(&str, &str)> = site.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let build = "cp -R site public && echo \"$DEPLOYHOOK_JOB_ID\" > public/job";
    let s = setup_project(dir, build, &files, "", &publish_line(&to, 3), Daemon::start);
    let d = &s.daemon;
    let first = d.trigger(&s.path);
    d.wait_state(&first, "READY", T);
    // A newer trigger lands while the older job copies its release. The race is the point: a
    // publish that wins it is simply READY; one that loses must leave current alone.
    let mut stopped = 0;
    for _ in 0..5 {
        let old = d.trigger(&s.path);
        assert!(wait_until(T, || d
            .job_log(&old)
            .contains("publish: public ->")));
        let new = d.trigger(&s.path);
        d.wait_state(&new, "READY", T);
        let job = d.job(&old);
        assert_eq!(live_target(&to), Path::new("releases").join(&new));
        let live_job = std::fs::read_to_string(to.join("current/job")).unwrap();
        assert_eq!(live_job.trim(), new);
        if job["state"] == "CANCELED" {
            let log = d.job_log(&old);
            let undone = "canceled while publishing: current -> releases/";
            assert!(
                log.contains("publish: stopped; current is unchanged") || log.contains(undone),
                "{log}"
            );
            stopped += 1;
        }
    }
    assert!(stopped > 0, "no trigger landed inside a publish in 5 tries");
    eprintln!("superseded inside a publish: {stopped} of 5");
}

#[test]
fn a_reader_never_sees_a_torn_release_while_the_daemon_is_killed() {
    let dir = TempDir::new("publish-reader");
    let to = dir.path().join("www");
    let site = big_site();
    let files: Vec<(&str, &str)> = site.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    // Every release differs in a few files (the job id, a random one) and shares the rest.
    let build = "cp -R site public && echo \"$DEPLOYHOOK_JOB_ID\" > public/job \
        && head -c 4096 /dev/urandom > public/d0/random \
        && (cd public && find . -type f | sort | xargs sha256sum > ../MANIFEST) \
        && mv MANIFEST public/MANIFEST";
    let mut s = setup_project(dir, build, &files, "", &publish_line(&to, 3), Daemon::start);
    let first = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&first, "READY", T);

    let stop = s.dir.path().join("stop-reader");
    let report = s.dir.path().join("reader.json");
    let mut reader = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/publish_reader.py"))
        .args([&to, &stop, &report])
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 runs the reader");

    let mut kills = 0;
    let mut jobs = vec![first];
    for cycle in 0..12u64 {
        let job = s.daemon.trigger(&s.path);
        jobs.push(job.clone());
        if cycle % 4 == 3 {
            // Some jobs are left to finish: publishes keep happening between the kills.
            s.daemon.wait_state(&job, "READY", T);
            continue;
        }
        // Kill inside the publish: once the log says it began, after a varying delay (the
        // copy, the switch, the prune or the journal's READY).
        let d = &s.daemon;
        assert!(
            wait_until(T, || d.job_log(&job).contains("publish: public ->")),
            "{}",
            d.job_log(&job)
        );
        std::thread::sleep(Duration::from_millis(cycle * 37 % 250));
        s.daemon.kill9();
        kills += 1;
        s.daemon.restart();
        if cycle % 2 == 1 {
            // The interrupted job starts over and publishes its release itself.
            s.daemon.wait_state(&job, "READY", T);
        }
    }
    let last = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&last, "READY", T);
    std::fs::write(&stop, "").unwrap();
    assert!(reader.wait().unwrap().success());
    let result: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let checks = result["checks"].as_u64().unwrap();
    // The reader kept reading through every kill, not just once.
    assert!(
        checks >= kills,
        "{checks} checks for {kills} kills: {result}"
    );
    assert_eq!(result["failures"], json!([]), "{result}");
    assert_eq!(live_target(&to), Path::new("releases").join(&last));
    let kept = std::fs::read_dir(to.join("releases")).unwrap().count();
    assert!(kept <= 4, "keep = 3, and at most one leftover copy: {kept}");
    let replaced = jobs
        .iter()
        .filter(|j| {
            s.daemon
                .job_log(j)
                .contains("its release is replaced in one step")
        })
        .count();
    eprintln!(
        "reader: {checks} whole-release checks, 0 failures, {kills} kills mid-publish, \
         {replaced} live releases of interrupted jobs replaced"
    );
}

#[test]
fn a_release_is_readable_by_the_web_server_under_the_units_umask() {
    // The unit runs the daemon with UMask=0077; a site committed to the repository (checked out
    // by git) and files the build writes must still reach the release readable by others.
    let dir = TempDir::new("pumask");
    // Two levels that do not exist yet: both are made for the web server to pass through.
    let to = dir.path().join("srv/www");
    let repo = Repo::new(
        dir.path(),
        "repo",
        &[("public/index.html", "<h1>committed</h1>")],
    );
    let mut spec = ProjectSpec::new("site", &repo.path, "echo built > public/built.txt");
    spec.extra = publish_line(&to, 3);
    let config = write_config(dir.path(), "", &[spec]);
    let d = Daemon::start_with_umask(&config, 0o077);
    let (_, path) = d.create_hook("site", "main");
    let id = d.trigger(&path);
    d.wait_state(&id, "READY", T);
    let release = to.join("releases").join(&id);
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(release.join("index.html")), 0o644, "committed file");
    assert_eq!(
        mode(release.join("built.txt")),
        0o644,
        "file the build wrote"
    );
    assert_eq!(mode(release.clone()), 0o755, "release folder");
    assert_eq!(mode(to.join("releases")), 0o755);
    assert_eq!(mode(to.clone()), 0o755);
    assert_eq!(mode(dir.path().join("srv")), 0o755);
}
