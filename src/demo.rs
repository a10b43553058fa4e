//! `deployhook demo`: a ready-to-try daemon on an example project, with nothing to install but
//! git. It makes a small git repository whose build renders a page into `public/`, writes a
//! config next to it (published as releases of a `site` folder, each result noted in a file by
//! the project's `notify` command), starts the daemon, creates a hook, and prints the curl line
//! that triggers it, where to watch the job, and how to roll back.

use crate::admin::protocol::{Created, Request};
use crate::config::{self, Config};
use crate::daemon::{self, DaemonError};
use std::fmt;
use std::io;
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
mkdir -p public
cp index.html public/index.html
echo "built public/; deployhook publishes it next"
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
publish = { dir = "public", to = "{deploy}", keep = 3 }
notify = '''echo "$DEPLOYHOOK_JOB_STATE $DEPLOYHOOK_PROJECT ${DEPLOYHOOK_COMMIT:-} job $DEPLOYHOOK_JOB_ID" >> "{notes}"'''
notify_on = ["READY", "ERROR"]
"#;

/// Why the demo could not run.
#[derive(Debug)]
pub enum DemoError {
    /// A file or folder of the demo could not be made.
    Files { path: PathBuf, source: io::Error },
    /// No free port on 127.0.0.1.
    NoPort(io::Error),
    /// git could not be run (the demo needs it on PATH).
    NoGit(io::Error),
    /// A git command making the example repository failed; `stderr` is what git said.
    Git { args: String, stderr: String },
    /// The announcing thread could not be started.
    Thread(io::Error),
    /// The daemon itself failed.
    Daemon(DaemonError),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Files { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            DemoError::NoPort(e) => write!(f, "no free port on 127.0.0.1: {e}"),
            DemoError::NoGit(e) => write!(f, "the demo needs git on PATH: {e}"),
            DemoError::Git { args, stderr } => write!(f, "git {args} failed: {stderr}"),
            DemoError::Thread(e) => write!(f, "cannot start the demo thread: {e}"),
            DemoError::Daemon(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DemoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DemoError::Files { source, .. } => Some(source),
            DemoError::NoPort(e) | DemoError::NoGit(e) | DemoError::Thread(e) => Some(e),
            DemoError::Git { .. } => None,
            DemoError::Daemon(e) => Some(e),
        }
    }
}

/// `preferred` if it is free, else a free port picked by the kernel.
fn free_addr(preferred: &str) -> Result<SocketAddr, DemoError> {
    let fallback = || TcpListener::bind("127.0.0.1:0");
    let listener = TcpListener::bind(preferred)
        .or_else(|_| fallback())
        .map_err(DemoError::NoPort)?;
    listener.local_addr().map_err(DemoError::NoPort)
}

fn git(dir: &Path, args: &[&str]) -> Result<(), DemoError> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "deployhook demo")
        .env("GIT_AUTHOR_EMAIL", "demo@localhost")
        .env("GIT_COMMITTER_NAME", "deployhook demo")
        .env("GIT_COMMITTER_EMAIL", "demo@localhost")
        .output()
        .map_err(DemoError::NoGit)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DemoError::Git {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|source| DemoError::Files {
        path: path.to_path_buf(),
        source,
    })
}

fn make_example(dir: &Path) -> Result<PathBuf, DemoError> {
    let repo = dir.join("example-site");
    std::fs::create_dir_all(&repo).map_err(|source| DemoError::Files {
        path: repo.clone(),
        source,
    })?;
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

/// Runs the demo until Ctrl-C, then deletes its files. The daemon claims process-wide state
/// (environment, umask, signals) before the announcing thread starts: until then the process
/// has no thread but this one.
pub fn run() -> Result<(), DemoError> {
    let dir = std::env::temp_dir().join(format!("deployhook-demo-{}", std::process::id()));
    let result = prepare(&dir).and_then(|(config, announce)| {
        let claim = daemon::claim(&config).map_err(DemoError::Daemon)?;
        std::thread::Builder::new()
            .name("demo".into())
            .spawn(announce)
            .map_err(DemoError::Thread)?;
        daemon::run(config, claim).map_err(DemoError::Daemon)
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Makes the example repository and the config in `dir`; returns the config and the work of
/// the announcing thread.
fn prepare(dir: &Path) -> Result<(Config, impl FnOnce() + Send + 'static), DemoError> {
    let repo = make_example(dir)?;
    let listen = free_addr("127.0.0.1:8080")?;
    let status = free_addr("127.0.0.1:8081")?;
    let status = if status == listen {
        free_addr("127.0.0.1:0")?
    } else {
        status
    };
    let deploy = dir.join("site");
    let notes = dir.join("notifications.txt");
    let text = CONFIG
        .replace("{listen}", &listen.to_string())
        .replace("{status}", &status.to_string())
        .replace("{deploy}", &deploy.to_string_lossy())
        .replace("{notes}", &notes.to_string_lossy());
    let config_path = dir.join("deployhook.toml");
    write(&config_path, &text)?;
    let config =
        config::load(&config_path).map_err(|e| DemoError::Daemon(DaemonError::Config(e)))?;
    let socket = config.admin_socket.clone();
    Ok((config, move || {
        announce(&socket, status, &repo, (&deploy, &notes), &config_path)
    }))
}

/// This program's path, for command lines to copy (`cargo run` puts no `deployhook` on PATH).
fn program() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "deployhook".into())
}

/// Waits for the daemon, creates the demo hook and prints how to use it.
fn announce(
    socket: &Path,
    status: SocketAddr,
    repo: &Path,
    (deploy, notes): (&Path, &Path),
    config: &Path,
) {
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
    let notes = notes.display();
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
        format!("  Each build is published to {deploy}/releases/JOB_ID/; {deploy}/current is the live one."),
        "  Roll back to the release before it (no rebuild):".into(),
        format!("    {} rollback example --config {config}", program()),
        String::new(),
        format!("  Each result is also noted in {notes} (the project's notify command)."),
        format!("  Config: {config}"),
    ];
    println!("{}", lines.join("\n"));
}
