//! The command line: version, config validation and its exit status, and `hooks` without a
//! running daemon.

mod common;

use common::*;
use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DEPLOYHOOK_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn version_is_printed() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("deployhook {}", env!("CARGO_PKG_VERSION"))
    );
}

fn check(text: &str) -> (i32, String) {
    let dir = TempDir::new("check");
    let path = dir.path().join("deployhook.toml");
    std::fs::write(&path, text).unwrap();
    let out = run(&["check-config", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE");
    (out.status.code().unwrap(), stderr)
}

const GOOD: &str = "[projects.site]\nrepo = \"/srv/site.git\"\nbuild = \"make\"\n";

#[test]
fn a_valid_config_passes() {
    let (code, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn problems_name_file_line_and_key_with_status_78() {
    let cases = [
        (
            format!("{GOOD}timeout_sec = 5\n"),
            "FILE:4: key `projects.site.timeout_sec`",
        ),
        (format!("workers = \"2\"\n{GOOD}"), "FILE:1: key `workers`"),
        (
            "[projects.site]\nbuild = \"make\"\n".to_string(),
            "key `projects.site.repo`",
        ),
        (
            format!("listen = \"localhost\"\n{GOOD}"),
            "FILE:1: key `listen`",
        ),
        (
            format!("kill_grace_secs = -1\n{GOOD}"),
            "FILE:1: key `kill_grace_secs`",
        ),
        (format!("{GOOD}[[broken\n"), "FILE:4"),
        ("".to_string(), "key `projects`"),
    ];
    for (text, expected) in cases {
        let (code, stderr) = check(&text);
        assert_eq!(code, 78, "{text}");
        assert!(
            stderr.contains(expected),
            "for {text:?} expected {expected:?} in {stderr:?}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "one clear message: {stderr}"
        );
    }
}

#[test]
fn an_unreadable_config_is_a_config_error() {
    let out = run(&["check-config", "--config", "/nonexistent/deployhook.toml"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/deployhook.toml: cannot read")
    );
}

#[test]
fn the_config_path_comes_from_the_environment() {
    let dir = TempDir::new("envcfg");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, GOOD).unwrap();
    let out = Command::new(BIN)
        .args(["check-config"])
        .env("DEPLOYHOOK_CONFIG", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_with_a_bad_config_exits_78() {
    let dir = TempDir::new("badserve");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "nonsense = 1\n").unwrap();
    let out = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn hooks_without_a_daemon_say_so() {
    let dir = TempDir::new("nodaemon");
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", dir.path(), "true")],
    );
    for args in [
        vec!["hooks", "list"],
        vec![
            "hooks",
            "create",
            "--project",
            "site",
            "--name",
            "x",
            "--branch",
            "main",
        ],
        vec!["hooks", "revoke", "hook_AAAAAAAAAAAA"],
    ] {
        let mut full = args.clone();
        full.extend(["--config", config.to_str().unwrap()]);
        let out = run(&full);
        assert_eq!(out.status.code(), Some(69), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no deployhook daemon is running"),
            "{stderr}"
        );
    }
}
