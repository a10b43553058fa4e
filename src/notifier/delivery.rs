//! One attempt at a job's notification: `sh -c "$notify"` with the job JSON (`{"job":{…}}`)
//! on stdin and the job's facts in `DEPLOYHOOK_*` variables, in the environment builds get
//! (cleared, then PATH/HOME/LANG, the project's `env` and `env_file`), in a process group of
//! its own, stopped after [`TIMEOUT`]. The attempt and its output go to the job's log, its
//! outcome to the journal.

use super::backoff;
use crate::build::{
    base_env, describe, mask, run_step, say, Log, SharedLog, Step, NOTIFICATION_MARK,
};
use crate::clock::now_ms;
use crate::config::{Config, Project};
use crate::git_access::GitAccess;
use crate::job::{Control, StopReason};
use crate::journal::{Attempt, Job, JobFilter, JobRow, JobState, Journal, Op};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a `notify` command may run.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How an attempt went, to be recorded.
pub(super) enum Attempted {
    /// The command ran (or could not, for a reason that is its outcome).
    Ran(Attempt),
    /// The daemon is stopping; nothing is to be recorded and the notification stays due.
    Stopped,
    /// The job could not be read from the journal; nothing ran.
    Unreadable,
}

/// Runs the notification of job `job_id` once; the caller records the outcome.
pub(super) fn attempt(
    journal: &Journal,
    config: &Config,
    job_id: &str,
    control: &Control,
) -> Attempted {
    let row = match journal.job(job_id) {
        Ok(Some(row)) => row,
        // Retention keeps a job while its notification is due; a stray outbox row goes.
        Ok(None) => return Attempted::Ran(give_up("the job no longer exists")),
        Err(e) => {
            log::error!("notification of job={job_id}: {e}");
            return Attempted::Unreadable;
        }
    };
    let attempts = row.job.notification.as_ref().map_or(0, |n| n.attempts) + 1;
    let log: SharedLog = Arc::new(Mutex::new(Log::open(
        &config.job_log(job_id),
        config.max_log_bytes,
        true,
    )));
    let Some((project, command)) = config
        .projects
        .get(&row.job.project)
        .and_then(|p| Some((p, p.notify.as_deref()?)))
    else {
        let why = format!(
            "project `{}` no longer has a `notify` command; the notification is dropped",
            row.job.project
        );
        say(&log, &format!("notification: {why}"));
        log::warn!("job={job_id} notification: {why}");
        return Attempted::Ran(give_up(&why));
    };
    let outcome = match run(
        journal,
        config,
        (project, command),
        &row,
        attempts,
        control,
        &log,
    ) {
        Ok(()) => Attempt::Sent,
        Err(Failure::Stopped) => {
            say(
                &log,
                "notification stopped by daemon shutdown; it runs again after the restart",
            );
            return Attempted::Stopped;
        }
        Err(Failure::Failed(error)) => {
            let ended = row.job.finished_at.unwrap_or_else(now_ms);
            Attempt::Failed {
                error: mask(&log, &error),
                retry_at: backoff::retry_at(ended, attempts, now_ms()),
            }
        }
    };
    report(&log, &row.job, attempts, &outcome);
    Attempted::Ran(outcome)
}

/// Why a run did not succeed.
enum Failure {
    Failed(String),
    Stopped,
}

/// Runs the command once, to its end or its timeout.
fn run(
    journal: &Journal,
    config: &Config,
    (project, command): (&Project, &str),
    row: &JobRow,
    attempts: u32,
    control: &Control,
    log: &SharedLog,
) -> Result<(), Failure> {
    // The env file's variables and every value to mask, read as a build reads them.
    let access = GitAccess::prepare(config, project).map_err(|e| Failure::Failed(e.to_string()))?;
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .masker
        .hide(access.secrets.iter().map(String::as_str));
    say(
        log,
        &format!(
            "notification ({}), attempt {attempts}: $ sh -c {command:?}",
            row.job.state.as_str()
        ),
    );
    let input = job_input(config, &row.job)
        .map_err(|e| Failure::Failed(format!("cannot write the job JSON for stdin: {e}")))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .envs(base_env(config))
        .envs(&project.env)
        .envs(access.build_env.iter().cloned())
        .envs(job_variables(row))
        .env("DEPLOYHOOK_NOTIFY_EVENT", event(journal, row))
        .env(NOTIFICATION_MARK, "1")
        .current_dir(&config.state_dir);
    let deadline = Instant::now() + TIMEOUT;
    match run_step(
        cmd,
        input,
        log,
        control,
        &row.job.id,
        deadline,
        config.kill_grace,
    ) {
        Step::Exited(status) if status.success() => Ok(()),
        Step::Exited(status) => Err(Failure::Failed(format!(
            "the notify command {}",
            describe(status)
        ))),
        Step::SpawnFailed(e) => Err(Failure::Failed(format!("cannot run sh: {e}"))),
        Step::Stopped(StopReason::Timeout) => Err(Failure::Failed(format!(
            "the notify command timed out after {} s",
            TIMEOUT.as_secs()
        ))),
        Step::Stopped(_) => Err(Failure::Stopped),
    }
}

/// What the notification is about: the job's state, or `RECOVERED` for a READY job whose
/// hook's previous build (canceled jobs aside) ended in ERROR.
fn event(journal: &Journal, row: &JobRow) -> &'static str {
    if row.job.state != JobState::Ready {
        return row.job.state.as_str();
    }
    let earlier = JobFilter {
        hook: Some(row.job.hook_id.clone()),
        before: Some(row.seq),
        limit: 100,
        ..JobFilter::default()
    };
    let previous = journal.list_jobs(&earlier).ok().and_then(|(rows, _)| {
        rows.into_iter()
            .map(|r| r.job.state)
            .find(|s| matches!(s, JobState::Ready | JobState::Error))
    });
    match previous {
        Some(JobState::Error) => "RECOVERED",
        _ => "READY",
    }
}

/// The `DEPLOYHOOK_*` variables of a notification; a value that is null is left unset.
fn job_variables(row: &JobRow) -> Vec<(&'static str, String)> {
    let job = &row.job;
    let known = [
        ("DEPLOYHOOK_JOB_ID", Some(job.id.clone())),
        ("DEPLOYHOOK_JOB_STATE", Some(job.state.as_str().to_string())),
        ("DEPLOYHOOK_PROJECT", Some(job.project.clone())),
        ("DEPLOYHOOK_HOOK_NAME", Some(row.hook_name.clone())),
        ("DEPLOYHOOK_BRANCH", Some(job.branch.clone())),
        ("DEPLOYHOOK_COMMIT", job.commit.clone()),
        ("DEPLOYHOOK_JOB_ERROR", job.error.clone()),
    ];
    known
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect()
}

/// The job JSON, `{"job":{…}}` as `GET /jobs/{id}` shows it, as a file to read from: written
/// under `state_dir` (mode 0600), opened, and removed at once.
fn job_input(config: &Config, job: &Job) -> std::io::Result<Stdio> {
    let path = config.state_dir.join(".notify-input.json");
    let json = serde_json::to_vec(&serde_json::json!({ "job": job }))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    out.write_all(&json)?;
    let file = File::open(&path);
    let _ = std::fs::remove_file(&path);
    Ok(Stdio::from(file?))
}

fn give_up(why: &str) -> Attempt {
    Attempt::Failed {
        error: why.to_string(),
        retry_at: None,
    }
}

/// The attempt's outcome in the job log and the daemon log.
fn report(log: &SharedLog, job: &Job, attempts: u32, outcome: &Attempt) {
    let line = match outcome {
        Attempt::Sent => "notification sent".to_string(),
        Attempt::Failed {
            error,
            retry_at: Some(at),
        } => format!(
            "notification failed: {error}; next attempt in {} s",
            at.saturating_sub(now_ms()).div_ceil(1000)
        ),
        Attempt::Failed {
            error,
            retry_at: None,
        } => format!(
            "notification failed: {error}; given up after {attempts} attempts (a day of retries)"
        ),
    };
    say(log, &line);
    match outcome {
        Attempt::Sent => log::info!("job={} project={} {line}", job.id, job.project),
        Attempt::Failed { .. } => log::warn!("job={} project={} {line}", job.id, job.project),
    }
}

/// Records an attempt's outcome; `false` when the journal refused it (the caller keeps the
/// outcome and tries the record again, without running the command again).
pub(super) fn record(journal: &Journal, job_id: &str, attempt: &Attempt) -> bool {
    let op = Op::Notified {
        job_id: job_id.to_string(),
        attempt: attempt.clone(),
    };
    match journal.submit(op) {
        Ok(_) => true,
        Err(e) => {
            log::error!("notification of job={job_id} not recorded ({e}); trying the record again");
            false
        }
    }
}
