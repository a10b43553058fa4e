//! The operator's commands on the admin socket besides create/list/revoke: trigger a hook,
//! rotate its secret, cancel a job, and check that a new hook's branch exists in the
//! repository (`git ls-remote`).

use super::protocol::{Canceled, NewJob, Rotated, Triggered};
use super::{Admin, AdminError};
use crate::clock::now_ms;
use crate::config::{Config, Project};
use crate::git_access::GitAccess;
use crate::journal::{JobState, Op, Outcome};
use crate::redact;
use crate::secret;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `git ls-remote` may take to answer whether a branch exists.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

impl Admin {
    pub(super) fn trigger(&self, id: String) -> Result<Triggered, AdminError> {
        if !secret::is_hook_id(&id) {
            return Err(AdminError::NotAHookId(id));
        }
        let now = now_ms();
        let job_id = secret::new_job_id(now)?;
        let hook = self.journal.hooks()?.into_iter().find(|h| h.id == id);
        let not_before = hook.and_then(|h| self.config().projects.get(&h.project)?.not_before(now));
        match self.journal.submit(Op::TriggerHook {
            hook_id: id.clone(),
            job_id,
            now,
            not_before,
        })? {
            Outcome::Triggered { row, .. } => {
                log::info!("trigger hook={id} job={} by=operator", row.job.id);
                Ok(Triggered {
                    job: NewJob {
                        id: row.job.id,
                        state: JobState::Pending.as_str().into(),
                        created_at: row.job.created_at,
                    },
                })
            }
            _ => Err(AdminError::NoSuchHook(id)),
        }
    }

    pub(super) fn rotate(&self, id: String) -> Result<Rotated, AdminError> {
        if !secret::is_hook_id(&id) {
            return Err(AdminError::NotAHookId(id));
        }
        let clear = secret::new_secret()?;
        let outcome = self.journal.submit(Op::RotateSecret {
            id: id.clone(),
            secret: secret::hash_secret(&clear),
        })?;
        if !matches!(outcome, Outcome::SecretRotated { .. }) {
            return Err(AdminError::NoSuchHook(id));
        }
        let hook = self
            .journal
            .hooks()?
            .into_iter()
            .find(|h| h.id == id)
            .ok_or_else(|| AdminError::NoSuchHook(id.clone()))?;
        log::info!("hook secret rotated hook={id}; the old URL is refused from now on");
        let config = self.config();
        Ok(Rotated {
            url: config.hook_url(&hook.project, &clear),
            hook,
        })
    }

    pub(super) fn cancel(&self, job: String) -> Result<Canceled, AdminError> {
        if !secret::is_job_id(&job) {
            return Err(AdminError::NotAJobId(job));
        }
        match self.journal.submit(Op::Cancel {
            job_id: job.clone(),
            now: now_ms(),
        })? {
            Outcome::Canceled { row, from } => {
                log::info!(
                    "job={} hook={} canceled by operator (was {})",
                    row.job.id,
                    row.job.hook_id,
                    from.as_str()
                );
                Ok(Canceled { job: row.job })
            }
            Outcome::NotApplicable => {
                let state = self
                    .journal
                    .job(&job)?
                    .map_or("finished", |r| r.job.state.as_str());
                Err(AdminError::JobEnded { job, state })
            }
            _ => Err(AdminError::NoSuchJob(job)),
        }
    }
}

/// Whether `branch` exists in the project's repository, asked with `git ls-remote` in the
/// same cleared environment and with the same access (key, credentials, host keys) as a
/// build's git steps, so a private repository is reached and nothing prompts for a password.
pub(super) fn verify_branch(
    config: &Config,
    project: &Project,
    branch: &str,
) -> Result<(), AdminError> {
    let repo = redact::url_passwords(&project.repo).into_owned();
    let fail = |why: String| AdminError::BranchUnchecked {
        repo: repo.clone(),
        why: redact::url_passwords(&why).into_owned(),
    };
    let access = GitAccess::prepare(config, project).map_err(|e| fail(e.to_string()))?;
    let scratch = Scratch::new(&config.state_dir).map_err(AdminError::Git)?;
    let mut child = Command::new("git")
        .args(["ls-remote", "--exit-code", "--heads", "--", &project.repo])
        .arg(format!("refs/heads/{branch}"))
        .env_clear()
        .envs(crate::build::base_env(config))
        .env("GIT_TERMINAL_PROMPT", "0")
        .envs(access.probe_env(project, &scratch.0))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(AdminError::Git)?;
    let deadline = Instant::now() + LS_REMOTE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(AdminError::Git)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "git ls-remote did not answer within {} s",
                LS_REMOTE_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    match status.code() {
        Some(0) => Ok(()),
        // --exit-code: the repository answered, and has no such branch.
        Some(2) => Err(AdminError::NoSuchBranch {
            repo: repo.clone(),
            branch: branch.to_string(),
        }),
        _ => {
            let last = stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("fatal:"))
                .or_else(|| stderr.lines().last())
                .unwrap_or("git ls-remote failed")
                .to_string();
            Err(fail(last))
        }
    }
}

/// A folder of its own for one branch check, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(state_dir: &Path) -> io::Result<Scratch> {
        let dir = state_dir.join(format!(
            "ls-remote.{}",
            secret::new_hook_id().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
