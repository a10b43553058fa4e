//! `deployhook demo`: a ready-to-try daemon on an example project, with nothing to install but
//! git. It makes a small git repository whose build "deploys" a page into a folder, writes a
//! config next to it, starts the daemon, creates a hook, and prints the curl line that
//! triggers it and where to watch the job.

use crate::admin::protocol::{Created, Request};
use crate::config;
use crate::daemon::{self, DaemonError};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BUILD_SCRIPT: &str = r#"#!/bin/sh
# The example build: what a static site's `make deploy` would do.
set -eu
echo "building $DEPLOYHOOK_PROJECT at commit $DEPLOYHOOK_COMMIT (job $DEPLOYHOOK_JOB_ID)"
for step in "fetching dependencies" "rendering pages" "optimising images"; do
  echo "  $step..."
  sleep 1
done
mkdir -p "$DEPLOY_DIR"
cp index.html "$DEPLOY_DIR/index.html"
echo "deployed to $DEPLOY_DIR"
"#;

const INDEX: &str = "<!DOCTYPE html>\n<title>example</title>\n<h1>Hello from deployhook</h1>\n";

/// The demo config; `{…}` fields are filled in at start.
const CONFIG: &str = r#"# deployhook demo configuration (generated)
listen = "{listen}"
status_listen = "{status}"
admin_socket = "admin.sock"
state_dir = "state"
workers = 2
kill_grace_secs = 3

[projects.example]
repo = "example-site"
build = "sh build.sh"
timeout_secs = 120
env = { DEPLOY_DIR = "{deploy}" }
"#;

/// `preferred` if it is free, else a free port picked by the kernel.
fn free_addr(preferred: &str) -> Result<SocketAddr, DaemonError> {
    let fallback = || TcpListener::bind("127.0.0.1:0");
    let listener = TcpListener::bind(preferred)
        .or_else(|_| fallback())
        .map_err(|e| DaemonError::Startup(format!("no free port on 127.0.0.1: {e}")))?;
    listener
        .local_addr()
        .map_err(|e| DaemonError::Startup(e.to_string()))
}

fn git(dir: &Path, args: &[&str]) -> Result<(), DaemonError> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "deployhook demo")
        .env("GIT_AUTHOR_EMAIL", "demo@localhost")
        .env("GIT_COMMITTER_NAME", "deployhook demo")
        .env("GIT_COMMITTER_EMAIL", "demo@localhost")
        .output()
        .map_err(|e| DaemonError::Startup(format!("the demo needs git on PATH: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DaemonError::Startup(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn write(path: &Path, text: &str) -> Result<(), DaemonError> {
    std::fs::write(path, text)
        .map_err(|e| DaemonError::Startup(format!("cannot write {}: {e}", path.display())))
}

fn make_example(dir: &Path) -> Result<PathBuf, DaemonError> {
    let repo = dir.join("example-site");
    std::fs::create_dir_all(&repo)
        .map_err(|e| DaemonError::Startup(format!("cannot create {}: {e}", repo.display())))?;
    write(&repo.join("build.sh"), BUILD_SCRIPT)?;
    write(&repo.join("index.html"), INDEX)?;
    git(&repo, &["init", "--quiet", "--initial-branch=main"])?;
    // An identity of the repository's own, so that the printed "change the site" command
    // commits for a user who never configured git.
    git(&repo, &["config", "user.name", "deployhook demo"])?;
    git(&repo, &["config", "user.email", "demo@localhost"])?;
    git(&repo, &["add", "."])?;
    git(&repo, &["commit", "--quiet", "-m", "example site"])?;
    Ok(repo)
}

pub fn run() -> Result<(), DaemonError> {
    let dir = std::env::temp_dir().join(format!("deployhook-demo-{}", std::process::id()));
    let repo = make_example(&dir)?;
    let listen = free_addr("127.0.0.1:8080")?;
    let status = free_addr("127.0.0.1:8081")?;
    let status = if status == listen {
        free_addr("127.0.0.1:0")?
    } else {
        status
    };
    let deploy = dir.join("public");
    let text = CONFIG
        .replace("{listen}", &listen.to_string())
        .replace("{status}", &status.to_string())
        .replace("{deploy}", &deploy.to_string_lossy());
    let config_path = dir.join("deployhook.toml");
    write(&config_path, &text)?;
    let config = config::load(&config_path).map_err(DaemonError::Config)?;
    let socket = config.admin_socket.clone();

    let announce = std::thread::Builder::new()
        .name("demo".into())
        .spawn(move || announce(&socket, status, &repo, &deploy, &config_path));
    if let Err(e) = announce {
        return Err(DaemonError::Startup(format!(
            "cannot start the demo thread: {e}"
        )));
    }
    let result = daemon::run(config);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Waits for the daemon, creates the demo hook and prints how to use it.
fn announce(socket: &Path, status: SocketAddr, repo: &Path, deploy: &Path, config: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let req = Request::Create {
        project: "example".into(),
        name: "demo hook".into(),
        branch: "main".into(),
        verify: true,
    };
    let Created { hook, url } = loop {
        match crate::client::admin(socket, &req) {
            Ok(a) => break a,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                log::error!("demo: cannot create the example hook: {e}");
                return;
            }
        }
    };
    let hook = hook.id;
    let (repo, deploy, config) = (repo.display(), deploy.display(), config.display());
    let lines = [
        String::new(),
        "deployhook demo is running (Ctrl-C stops it and deletes its files).".into(),
        String::new(),
        "  Trigger a deploy of the example site:".into(),
        format!("    curl -X POST {url}"),
        String::new(),
        "  Watch it:".into(),
        format!("    dashboard    http://{status}/"),
        format!("    its jobs     curl 'http://{status}/jobs?hook={hook}'"),
        format!("    a live log   curl -N 'http://{status}/jobs/JOB_ID/log?follow=1'  (JOB_ID: from the trigger's answer)"),
        String::new(),
        "  Change the site, then trigger again:".into(),
        format!("    cd {repo} && echo '<p>changed</p>' >> index.html && git commit -qam change"),
        String::new(),
        format!("  The build copies index.html to {deploy}/. Config: {config}"),
    ];
    println!("{}", lines.join("\n"));
}
