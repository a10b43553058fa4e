//! A job's checkout: the project's bare mirror under `state_dir/mirrors/` is brought up to date
//! with `git fetch`, then cloned with `--shared` into the job's fresh directory (objects are
//! borrowed from the mirror, the working tree is new). Only git objects are reused between
//! jobs, never build output.
//!
//! One build at a time per project means nothing else touches a mirror meanwhile: lock files
//! found before a step were left by a killed git and are removed. A mirror that is damaged is
//! replaced once per job. Every git runs as a step of the job ([`run_step`]).

use super::job_log::{say, SharedLog};
use super::process::{describe, run_step, Step};
use crate::config::{Config, Project};
use crate::git_access::GitAccess;
use crate::janitor;
use crate::job::{Control, QueuedJob, StopReason};
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// Why a checkout did not produce a tree.
pub(super) enum CheckoutFailed {
    /// A git step failed; the message is the job's `error`.
    Failed(String),
    /// The job was stopped while git ran.
    Stopped(StopReason),
}

/// What every git step of one job shares.
pub(super) struct Steps<'a> {
    pub log: &'a SharedLog,
    pub control: &'a Control,
    pub job_id: &'a str,
    pub deadline: Instant,
    pub grace: Duration,
    /// The cleared environment's base (PATH, HOME, LANG).
    pub env: &'a [(String, String)],
    /// How git reaches the repository (key, known hosts, credentials).
    pub access: &'a GitAccess,
    /// The file mode creation mask of each step, if not the daemon's.
    pub umask: Option<u32>,
}

impl Steps<'_> {
    /// Runs `git ARGS` in `cwd` as a step of the job, logged as `$ git …`.
    fn git(&self, cwd: &Path, args: &[&OsStr]) -> Step {
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        say(self.log, &format!("$ git {}", shown.join(" ")));
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recent
            .clear();
        let mut cmd = Command::new("git");
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().cloned())
            .envs(self.access.env.iter().cloned())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("DEPLOYHOOK_JOB_ID", self.job_id)
            .current_dir(cwd);
        if let Some(mask) = self.umask {
            crate::sys::set_child_umask(&mut cmd, mask);
        }
        run_step(
            cmd,
            Stdio::null(),
            self.log,
            self.control,
            self.job_id,
            self.deadline,
            self.grace,
        )
    }
}

/// `Ok` when a git step succeeded, else why the checkout ends there. The error carries git's
/// own reason ([`GitAccess::explain`]) when its output gave one.
fn git_ok(step: Step, what: &str, steps: &Steps) -> Result<(), CheckoutFailed> {
    match step {
        Step::Exited(status) if status.success() => Ok(()),
        Step::Exited(status) => {
            let log = steps.log.lock().unwrap_or_else(PoisonError::into_inner);
            let why = match steps.access.explain(&log.recent) {
                Some(why) => format!(": {why}"),
                None => String::new(),
            };
            Err(CheckoutFailed::Failed(format!(
                "{what} failed ({}){why}; see the log",
                describe(status)
            )))
        }
        Step::SpawnFailed(e) => Err(CheckoutFailed::Failed(format!("cannot run git: {e}"))),
        Step::Stopped(reason) => Err(CheckoutFailed::Stopped(reason)),
    }
}

/// Lock files a killed git leaves behind; with one build per project nothing else uses the
/// mirror, so any found before a step is stale.
fn remove_stale_locks(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_stale_locks(&path);
        } else if path.extension().is_some_and(|e| e == "lock") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Puts a fresh checkout of the branch head in `dir`, through the project's mirror.
pub(super) fn checkout(
    config: &Config,
    project: &Project,
    job: &QueuedJob,
    dir: &Path,
    steps: &Steps,
) -> Result<(), CheckoutFailed> {
    let _writing = janitor::hold_off();
    let mirror = config.mirrors_dir().join(format!("{}.git", project.name));
    let branch_ref = format!("+refs/heads/{b}:refs/heads/{b}", b = job.branch);
    for attempt in 0..2 {
        if !mirror.join("HEAD").exists() {
            let _ = std::fs::remove_dir_all(&mirror);
            if let Err(e) = std::fs::create_dir_all(&mirror) {
                return Err(CheckoutFailed::Failed(format!(
                    "cannot create {}: {e}",
                    mirror.display()
                )));
            }
            let init = steps.git(
                &mirror,
                &["init".as_ref(), "--quiet".as_ref(), "--bare".as_ref()],
            );
            git_ok(init, "git init of the mirror", steps)?;
        }
        remove_stale_locks(&mirror);
        let known_hosts = steps.access.known_hosts_before();
        let fetch = steps.git(
            &mirror,
            &[
                "-c".as_ref(),
                "gc.auto=0".as_ref(),
                "fetch".as_ref(),
                "--no-tags".as_ref(),
                "--prune".as_ref(),
                "--".as_ref(),
                project.repo.as_ref(),
                branch_ref.as_ref(),
            ],
        );
        for line in steps.access.newly_trusted(&known_hosts) {
            say(steps.log, &line);
        }
        match git_ok(fetch, "git fetch", steps) {
            Ok(()) => break,
            Err(CheckoutFailed::Failed(_)) if attempt == 0 && mirror_is_damaged(&mirror, steps) => {
                say(
                    steps.log,
                    "the mirror looks damaged; fetching again into a new one",
                );
                let _ = std::fs::remove_dir_all(&mirror);
            }
            Err(e) => return Err(e),
        }
    }
    let clone = steps.git(
        &config.builds_dir(),
        &[
            "clone".as_ref(),
            "--quiet".as_ref(),
            "--shared".as_ref(),
            "--no-tags".as_ref(),
            "--single-branch".as_ref(),
            "--branch".as_ref(),
            job.branch.as_ref(),
            "--".as_ref(),
            mirror.as_os_str(),
            dir.as_os_str(),
        ],
    );
    git_ok(clone, "git clone", steps)
}

/// Whether the mirror itself is broken (as opposed to the remote or the branch being wrong).
fn mirror_is_damaged(mirror: &Path, steps: &Steps) -> bool {
    let mut fsck = local_git(steps.env, mirror);
    fsck.args(["fsck", "--connectivity-only", "--no-dangling"])
        .stdout(Stdio::null());
    !fsck.status().is_ok_and(|s| s.success())
}

/// A git command on a local repository in `dir`, quiet, in the job's cleared environment, dying
/// with the daemon.
fn local_git(env: &[(String, String)], dir: &Path) -> Command {
    let mut git = Command::new("git");
    git.current_dir(dir)
        .env_clear()
        .envs(env.iter().cloned())
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    crate::sys::die_with_parent(&mut git);
    git
}

/// The commit checked out in `dir`.
pub(super) fn head_commit(env: &[(String, String)], dir: &Path) -> io::Result<String> {
    let out = local_git(env, dir).args(["rev-parse", "HEAD"]).output()?;
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && sha.len() >= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha)
    } else {
        Err(io::Error::other("git rev-parse HEAD gave no commit"))
    }
}
