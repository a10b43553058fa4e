//! The README's quickstart: `deployhook demo` starts a daemon on an example project with a ready
//! hook and prints the curl line and where to watch; following them deploys the example site.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One demo at a time: each takes the default ports when they are free.
static ONE_DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running demo, and the lock that keeps the other tests' demo from starting meanwhile.
type Running = (std::sync::MutexGuard<'static, ()>, std::process::Child);

/// Starts `deployhook demo` and reads what it prints, up to its last line (`Config: …`).
fn start_demo() -> (Running, Vec<String>) {
    let one = ONE_DEMO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        lines.push(line.trim().to_string());
        if line.trim().starts_with("Config: ") {
            break;
        }
    }
    ((one, child), lines)
}

/// SIGTERM to the demo; its exit status.
fn stop_demo((_one, mut child): Running) -> Option<i32> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap().code()
}

#[test]
fn the_demo_prints_a_working_curl_line_and_deploys() {
    let (child, lines) = start_demo();
    let (mut curl, mut dashboard, mut deploy_dir) = (None, None, None);
    for t in &lines {
        if let Some(url) = t.strip_prefix("curl -X POST ") {
            curl = Some(url.to_string());
        } else if let Some(url) = t.strip_prefix("dashboard") {
            dashboard = Some(url.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("Each build is published to ") {
            deploy_dir = Some(rest.split("/releases/").next().unwrap().to_string());
        }
    }
    let (curl, dashboard, deploy_dir) = (
        curl.expect("a curl line"),
        dashboard.expect("a dashboard URL"),
        deploy_dir.expect("the deploy folder"),
    );
    let url = curl.strip_prefix("http://").unwrap();
    let (addr, path) = url.split_at(url.find('/').unwrap());
    let resp = http(addr.parse().unwrap(), "POST", path, &[], b"");
    assert_eq!(resp.status, 201);
    let job = resp.json()["job"]["id"].as_str().unwrap().to_string();
    let status: std::net::SocketAddr = dashboard
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let ready = wait_until(Duration::from_secs(60), || {
        http(status, "GET", &format!("/jobs/{job}"), &[], b"").json()["job"]["state"] == "READY"
    });
    assert!(
        ready,
        "the demo job did not deploy: {}",
        http(status, "GET", &format!("/jobs/{job}/log"), &[], b"").text()
    );
    let page = std::fs::read_to_string(format!("{deploy_dir}/current/index.html")).unwrap();
    assert!(page.contains("Hello from deployhook"));
    let live = std::fs::read_link(format!("{deploy_dir}/current")).unwrap();
    assert_eq!(live, std::path::Path::new("releases").join(&job));
    let demo_dir = std::path::Path::new(&deploy_dir).parent().unwrap();
    let notes = demo_dir.join("notifications.txt");
    let noted = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&notes).is_ok_and(|t| t.contains("READY example"))
    });
    assert!(noted, "no notification in {}", notes.display());
    assert!(http(status, "GET", "/", &[], b"").text().contains(&job));

    assert_eq!(stop_demo(child), Some(0));
    assert!(!demo_dir.exists(), "the demo left {}", demo_dir.display());
}

#[test]
fn the_demos_change_command_works_without_a_git_identity() {
    let (child, lines) = start_demo();
    let command = lines
        .iter()
        .position(|l| l.contains("Change the site, then trigger again:"))
        .and_then(|i| lines.get(i + 1))
        .cloned();
    let command = command.expect("the demo prints how to change the site");
    let home = TempDir::new("nohome");
    let git_env = |cmd: &mut Command| {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            // No identity guessed from the host name either, on any machine.
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "user.useConfigOnly")
            .env("GIT_CONFIG_VALUE_0", "true");
    };
    let mut change = Command::new("sh");
    change.args(["-c", &command]);
    git_env(&mut change);
    let done = change.output().unwrap();
    let repo = command
        .strip_prefix("cd ")
        .and_then(|rest| rest.split(" && ").next())
        .unwrap()
        .to_string();
    let mut log = Command::new("git");
    log.args(["-C", &repo, "log", "-1", "--format=%s"]);
    git_env(&mut log);
    let subject = String::from_utf8_lossy(&log.output().unwrap().stdout).into_owned();

    assert_eq!(stop_demo(child), Some(0));
    assert!(
        done.status.success(),
        "`{command}`: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(subject.trim(), "change");
}
