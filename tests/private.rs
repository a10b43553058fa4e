//! Private repositories and secret hygiene, end to end against real servers on loopback that
//! each test starts itself: `git http-backend` behind basic auth (tests/servers/git_http.py)
//! and `sshd` with key-only authentication. Nothing secret may reach any output.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
/// The token every test hides; distinctive, so a grep finds any copy of it.
const TOKEN: &str = "glpat-Zq8uLr4TnVx2Kw7mPc9s";
const USER: &str = "oauth2";

/// A child process killed (by its PID) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare repository `srv/site.git` with a `main` branch holding `files`; returns the work repo.
fn served_repo(dir: &Path, files: &[(&str, &str)]) -> Repo {
    let repo = Repo::new(dir, "work", files);
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    git(dir, &["init", "-q", "--bare", "srv/site.git"]);
    git(&repo.path, &["push", "-q", "../srv/site.git", "main"]);
    repo
}

/// `git http-backend` over `dir/srv` on a loopback port, demanding `USER`/`TOKEN`.
fn git_http(dir: &Path) -> Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/git_http.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(dir.join("srv"))
        .args([USER, TOKEN])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("git_http.py said {line:?}"));
    Server { child, port }
}

fn get(d: &Daemon, path: &str) -> String {
    http(d.status, "GET", path, &[], b"").text()
}

fn cli_text(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli(args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every place a user or an operator can read: job logs, job JSON, pages, CLI, daemon log.
fn every_output(d: &Daemon, jobs: &[&str]) -> Vec<(String, String)> {
    let mut outputs = vec![
        ("GET /jobs".to_string(), get(d, "/jobs")),
        ("GET /".to_string(), get(d, "/")),
        ("GET /hooks".to_string(), get(d, "/hooks")),
        ("hooks list".to_string(), cli_text(d, &["hooks", "list"])),
        (
            "hooks list --json".to_string(),
            cli_text(d, &["hooks", "list", "--json"]),
        ),
        ("jobs".to_string(), cli_text(d, &["jobs"])),
        ("check-config".to_string(), cli_text(d, &["check-config"])),
    ];
    for id in jobs {
        outputs.push((format!("log of {id}"), d.job_log(id)));
        outputs.push((format!("GET /jobs/{id}"), get(d, &format!("/jobs/{id}"))));
        outputs.push((format!("GET /job/{id}"), get(d, &format!("/job/{id}"))));
        outputs.push((format!("logs {id}"), cli_text(d, &["logs", id])));
    }
    outputs.push(("daemon log".to_string(), d.log_text()));
    outputs
}

fn assert_no_token(outputs: &[(String, String)]) {
    for (what, text) in outputs {
        assert!(!text.contains(TOKEN), "the token leaks in {what}:\n{text}");
    }
}

#[test]
fn a_password_in_the_repo_url_works_and_never_shows() {
    let dir = TempDir::new("urlpw");
    served_repo(dir.path(), &[("index.html", "hello")]);
    let server = git_http(dir.path());
    let url = |name: &str| format!("http://{USER}:{TOKEN}@127.0.0.1:{}/{name}", server.port);
    let site = ProjectSpec::new(
        "site",
        Path::new(&url("site.git")),
        &format!("cat index.html; echo mirror of {}", url("elsewhere.git")),
    );
    let gone = ProjectSpec::new("gone", Path::new(&url("missing.git")), "true");
    let config = write_config(dir.path(), "", &[site, gone]);

    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let check_err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{check_err}");
    assert!(
        check_err.contains("projects.site.repo") && check_err.contains("git_credentials"),
        "check-config does not warn: {check_err}"
    );

    let d = Daemon::start(&config);
    assert!(d.wait_log("git_credentials", T), "{}", d.log_text());
    let (_, site_path) = d.create_hook("site", "main");
    let (_, gone_path) = d.create_hook("gone", "main");
    let ok = d.trigger(&site_path);
    let failed = d.trigger(&gone_path);
    d.wait_state(&ok, "READY", T);
    let job = d.wait_state(&failed, "ERROR", T);

    let log = d.job_log(&ok);
    assert!(log.contains("hello"), "{log}");
    assert!(
        log.contains(&format!("http://{USER}:***@127.0.0.1")),
        "{log}"
    );
    assert!(log.contains("mirror of http://oauth2:***@"), "{log}");
    // git's own reason is in the error, not only in the log.
    let error = job["error"].as_str().unwrap();
    assert!(
        error.starts_with("git fetch failed (exited with status 128): fatal: repository '")
            && error.ends_with("/missing.git/' not found; see the log"),
        "{error}"
    );
    assert_no_token(&every_output(&d, &[&ok, &failed]));
}
