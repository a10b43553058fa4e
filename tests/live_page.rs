//! The status page in a real browser: headless Chromium, driven by playwright-core
//! (`tests/browser/live.cjs`), watches a job move PENDING -> BUILDING -> READY on an open
//! dashboard and its log lines arrive on an open job page, without a reload. `.ci/run` installs
//! Chromium and playwright-core (into `target/browser`); elsewhere, without them, the test says
//! it was skipped.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `.ci/run` installs playwright-core (`npm install --prefix target/browser`).
fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser/node_modules")
}

fn have(program: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_job_moves_through_its_states_and_its_log_streams_on_open_pages() {
    let browser = ["chromium", "chromium-browser"].into_iter().find_map(have);
    let ready = browser.is_some()
        && have("node").is_some()
        && node_modules().join("playwright-core").is_dir();
    if !ready {
        skip_unless_ci(
            "needs chromium, node and `npm install --prefix target/browser playwright-core` \
             (.ci/run installs them)",
        );
        return;
    }
    let dir = TempDir::new("livepage");
    let gates = dir.path().join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    let build = format!(
        "echo first line of the build; while [ ! -f '{}'/$DEPLOYHOOK_JOB_ID ]; do sleep 0.05; done; echo last line of the build",
        gates.display()
    );
    let s = setup_in(dir, &build, &[("a", "1")], "", Daemon::start);
    let (_, second) = s.daemon.create_hook("site", "main");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/live.cjs");
    let out = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", node_modules())
        .env("CHROMIUM", browser.unwrap())
        .env("STATUS", format!("http://{}", s.daemon.status))
        .env("HOOK_A", format!("http://{}{}", s.daemon.public, s.path))
        .env("HOOK_B", format!("http://{}{second}", s.daemon.public))
        .env("GATES", &gates)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "pending shown",
        "building shown",
        "log streamed",
        "ready shown",
        "job page ready",
        "no reload",
        "chart shown",
    ] {
        assert!(text.contains(step), "missing `{step}` in:\n{text}");
    }
    eprintln!("{}", text.lines().next().unwrap_or(""));
}
