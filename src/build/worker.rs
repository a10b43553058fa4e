//! A build thread's work: one job at a time, from a fresh directory to a terminal state.
//!
//! A job's steps: mark it BUILDING, check out the branch head into `builds/{job}.{attempt}`,
//! record the commit, run `sh -c "$build"` there, record the outcome ([`Verdict`]), hand the
//! directory to the janitor. A job stopped by a newer trigger is already CANCELED in the
//! journal; one stopped by a daemon shutdown is put back to PENDING.

use super::checkout::{checkout, head_commit, CheckoutFailed, Steps};
use super::job_log::{mask, say, Log, SharedLog};
use super::process::{describe, run_step, Step};
use crate::clock::now_ms;
use crate::config::{Config, Project, Publish};
use crate::git_access::GitAccess;
use crate::job::{Control, QueuedJob, StopReason};
use crate::journal::Journal;
use crate::journal::{JobState, Op, Outcome};
use crate::metrics::Metrics;
use crate::publish::{self, PublishError, Published};
use crate::scheduler::{Assignment, Event};
use crate::supervise::{self, At};
use crossbeam_channel::{Receiver, Sender};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The file mode creation mask of a publishing project's checkout and build: what they write
/// is readable by the web server that serves the release (the daemon's own mask, 0077 under
/// the systemd unit, would make every file of a committed site 0600). A build that wants
/// less begins with its own `umask`.
const PUBLISH_UMASK: u32 = 0o022;
/// How long a build thread keeps retrying a journal write that fails (disk full) before it
/// gives up; a job whose outcome could not be written is retried after the next restart.
const RECORD_PATIENCE: Duration = Duration::from_secs(600);

/// What every build thread shares.
#[derive(Clone)]
pub struct Context {
    pub journal: Journal,
    /// The running configuration; a reload swaps it for jobs that start afterwards.
    pub config: Arc<RwLock<Arc<Config>>>,
    pub metrics: Arc<Metrics>,
    /// Where a build thread says it is done with a job.
    pub scheduler: Sender<Event>,
    /// Where finished build directories go to be deleted in the background.
    pub janitor: Sender<PathBuf>,
}

/// A build thread: runs assignments until the pool channel closes.
pub fn worker(ctx: Context, pool: Receiver<Assignment>) {
    for Assignment { job, control } in pool {
        supervise::fault_point(At::Event);
        ctx.metrics.workers_busy.fetch_add(1, Relaxed);
        run_job(&ctx, &job, &control);
        ctx.metrics.workers_busy.fetch_sub(1, Relaxed);
        let _ = ctx.scheduler.send(Event::Finished {
            job_id: job.id.clone(),
        });
    }
}

/// Final word on a job, to be written to the journal.
struct Verdict {
    state: JobState,
    exit_code: Option<i32>,
    error: Option<String>,
    /// The release this job made live, to be put back should the journal refuse READY.
    published: Option<(Publish, Published)>,
}

impl Verdict {
    fn error(message: impl Into<String>) -> Verdict {
        Verdict {
            state: JobState::Error,
            exit_code: None,
            error: Some(message.into()),
            published: None,
        }
    }
}

/// A publish stops with its job: the job's stop switch is the publish's gate, and the job's
/// `timeout_secs` covers the publish too (past it the job is stopped as timed out).
struct PublishGate<'a> {
    control: &'a Control,
    deadline: Instant,
}

impl publish::Gate for PublishGate<'_> {
    fn stopped(&self) -> bool {
        if Instant::now() >= self.deadline {
            self.control.stop(StopReason::Timeout);
        }
        self.control.reason().is_some()
    }

    fn unless_stopped(
        &self,
        switch: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Option<std::io::Result<()>> {
        self.control.unless_stopped(switch)
    }
}

fn run_job(ctx: &Context, job: &QueuedJob, control: &Control) {
    if control.reason().is_some() {
        return;
    }
    let config = ctx
        .config
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let start = Op::Start {
        job_id: job.id.clone(),
        now: now_ms(),
    };
    let row = match record(ctx, start, control) {
        Some(Outcome::Started(row)) => row,
        _ => return, // canceled before it could start, or left PENDING for the next start
    };
    let started = Instant::now();
    let log_path = config.job_log(&job.id);
    let log: SharedLog = Arc::new(Mutex::new(Log::open(
        &log_path,
        config.max_log_bytes,
        row.attempts > 1,
    )));
    if row.attempts > 1 {
        say(&log, &format!("restarting from scratch (attempt {}): the previous attempt was interrupted by a daemon stop or crash", row.attempts));
    }
    say(
        &log,
        &format!(
            "job {} of hook {} ({}), project {}, branch {}",
            job.id, job.hook_id, job.hook_name, job.project, job.branch
        ),
    );
    log::info!(
        "job={} hook={} project={} building (attempt {})",
        job.id,
        job.hook_id,
        job.project,
        row.attempts
    );

    let dir = config
        .builds_dir()
        .join(format!("{}.{}", job.id, row.attempts));
    let verdict = match config.projects.get(&job.project) {
        None => Some(Verdict::error(format!(
            "project `{}` is no longer configured",
            job.project
        ))),
        Some(project) => build_in(ctx, &config, project, job, control, &dir, &log),
    };
    let elapsed = started.elapsed().as_secs_f64();
    if dir.exists() {
        let _ = ctx.janitor.send(dir);
    }
    match verdict {
        Some(v) => record_verdict(ctx, job, control, &log, v, elapsed),
        None => record_stop(ctx, job, control, &log, elapsed),
    }
}

/// Writes a job's terminal state, after the line that ends its log.
fn record_verdict(
    ctx: &Context,
    job: &QueuedJob,
    control: &Control,
    log: &SharedLog,
    mut v: Verdict,
    elapsed: f64,
) {
    v.error = v.error.map(|e| mask(log, &e));
    let status = v.error.as_deref().unwrap_or("ok");
    say(
        log,
        &format!("{} after {elapsed:.2} s: {status}", v.state.as_str()),
    );
    let finish = Op::Finish {
        job_id: job.id.clone(),
        state: v.state,
        exit_code: v.exit_code,
        error: v.error,
        now: now_ms(),
    };
    match record(ctx, finish, control) {
        Some(Outcome::Finished(_)) => {
            // READY is in the journal: releases past `keep` may go now.
            if let Some((spec, _)) = &v.published {
                let janitor = &ctx.janitor;
                let mut delete = |path| drop(janitor.send(path));
                if let Some(line) = publish::settle(spec, &mut delete) {
                    say(log, &line);
                }
            }
            ctx.metrics.build_duration.observe(elapsed);
            log::info!(
                "job={} hook={} {} in {elapsed:.2} s",
                job.id,
                job.hook_id,
                v.state.as_str()
            );
        }
        // Canceled in the journal while it published: its release must not stay live.
        Some(_) => {
            if let Some((spec, published)) = &v.published {
                let undone = publish::undo(spec, published)
                    .unwrap_or_else(|e| format!("could not put current back: {e}"));
                say(log, &format!("canceled while publishing: {undone}"));
                log::warn!("job={} canceled while publishing: {undone}", job.id);
            }
        }
        None => {}
    }
}

/// A stopped build without a verdict: a shutdown puts the job back to PENDING; a newer trigger
/// has already made it CANCELED in the journal.
fn record_stop(ctx: &Context, job: &QueuedJob, control: &Control, log: &SharedLog, elapsed: f64) {
    if control.reason() == Some(StopReason::Shutdown) {
        say(
            log,
            "stopped by daemon shutdown; the job starts over after the restart",
        );
        if let Err(e) = ctx.journal.submit(Op::Requeue {
            job_id: job.id.clone(),
        }) {
            log::error!("job={} not requeued ({e}); it restarts anyway", job.id);
        }
    } else {
        let why = match control.reason() {
            Some(StopReason::Canceled) => "canceled by operator",
            _ => "superseded by a newer trigger of this hook",
        };
        say(log, &format!("CANCELED after {elapsed:.2} s: {why}"));
        log::info!(
            "job={} hook={} canceled while building",
            job.id,
            job.hook_id
        );
    }
}

/// Submits a job's state change, retrying while the journal cannot take writes (a passing disk
/// full must not lose a build's outcome). Gives up at shutdown or after [`RECORD_PATIENCE`].
fn record(ctx: &Context, op: Op, control: &Control) -> Option<Outcome> {
    let deadline = Instant::now() + RECORD_PATIENCE;
    let mut pause = Duration::from_millis(200);
    loop {
        match ctx.journal.submit(op.clone()) {
            Ok(outcome) => return Some(outcome),
            Err(e)
                if Instant::now() < deadline && control.reason() != Some(StopReason::Shutdown) =>
            {
                log::warn!("{e}; retrying {op:?} in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                log::error!("{e}; giving up on {op:?}");
                return None;
            }
        }
    }
}

/// Clones and builds; `None` when the job was stopped by supersession or shutdown (the journal
/// already says CANCELED, or the job is to be requeued).
fn build_in(
    ctx: &Context,
    config: &Config,
    project: &Project,
    job: &QueuedJob,
    control: &Control,
    dir: &Path,
    log: &SharedLog,
) -> Option<Verdict> {
    let deadline = Instant::now() + project.timeout;
    let grace = config.kill_grace;
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Err(e) = std::fs::create_dir_all(config.builds_dir()) {
        return Some(Verdict::error(format!(
            "cannot create the builds directory: {e}"
        )));
    }
    let base_env = base_env(config);
    let access = match GitAccess::prepare(config, project) {
        Ok(access) => access,
        Err(e) => return Some(Verdict::error(e.to_string())),
    };
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .masker
        .hide(access.secrets.iter().map(String::as_str));

    let steps = Steps {
        log,
        control,
        job_id: &job.id,
        deadline,
        grace,
        env: &base_env,
        access: &access,
        umask: project.publish.as_ref().map(|_| PUBLISH_UMASK),
    };
    match checkout(config, project, job, dir, &steps) {
        Ok(()) => {}
        Err(CheckoutFailed::Failed(message)) => return Some(Verdict::error(message)),
        Err(CheckoutFailed::Stopped(reason)) => return stopped(reason, project),
    }

    let commit = match head_commit(&base_env, dir) {
        Ok(c) => c,
        Err(e) => {
            return Some(Verdict::error(format!(
                "cannot read the checked-out commit: {e}"
            )))
        }
    };
    say(log, &format!("commit {commit}"));
    let set_commit = Op::SetCommit {
        job_id: job.id.clone(),
        commit: commit.clone(),
    };
    if record(ctx, set_commit, control).is_none() {
        return Some(Verdict::error("cannot record the commit in the journal"));
    }

    say(log, &format!("$ sh -c {:?}", project.build));
    let mut build = Command::new("sh");
    build
        .arg("-c")
        .arg(&project.build)
        .env_clear()
        .envs(base_env.iter().cloned())
        .envs(&project.env)
        .envs(access.build_env.iter().cloned())
        .env("DEPLOYHOOK_JOB_ID", &job.id)
        .env("DEPLOYHOOK_HOOK_ID", &job.hook_id)
        .env("DEPLOYHOOK_HOOK_NAME", &job.hook_name)
        .env("DEPLOYHOOK_PROJECT", &job.project)
        .env("DEPLOYHOOK_BRANCH", &job.branch)
        .env("DEPLOYHOOK_COMMIT", &commit)
        .current_dir(dir);
    if project.publish.is_some() {
        crate::sys::set_child_umask(&mut build, PUBLISH_UMASK);
    }
    let step = run_step(build, Stdio::null(), log, control, &job.id, deadline, grace);
    match step {
        Step::Exited(status) => {
            say(log, &format!("build {}", describe(status)));
            if !status.success() {
                return Some(Verdict {
                    state: JobState::Error,
                    exit_code: status.code(),
                    error: Some(format!("build {}", describe(status))),
                    published: None,
                });
            }
            let published = match &project.publish {
                None => None,
                Some(spec) => match publish_output(spec, job, (control, deadline), dir, log) {
                    Ok(published) => Some((spec.clone(), published)),
                    Err(PublishError::Stopped) => {
                        return control.reason().and_then(|r| stopped(r, project))
                    }
                    Err(e) => {
                        return Some(Verdict {
                            exit_code: Some(0),
                            ..Verdict::error(e.to_string())
                        })
                    }
                },
            };
            Some(Verdict {
                state: JobState::Ready,
                exit_code: Some(0),
                error: None,
                published,
            })
        }
        Step::SpawnFailed(e) => Some(Verdict::error(format!("cannot run sh: {e}"))),
        Step::Stopped(reason) => stopped(reason, project),
    }
}

/// Publishes a successful build's output (`publish`), each step's outcome in the job log.
fn publish_output(
    spec: &Publish,
    job: &QueuedJob,
    (control, deadline): (&Control, Instant),
    dir: &Path,
    log: &SharedLog,
) -> Result<Published, PublishError> {
    say(
        log,
        &format!(
            "publish: {} -> {}/releases/{}",
            spec.dir.display(),
            spec.to.display(),
            job.id
        ),
    );
    let started = Instant::now();
    let gate = PublishGate { control, deadline };
    let result = publish::publish(&job.id, dir, spec, &gate, &mut |line| say(log, line));
    match &result {
        Ok(_) => {
            say(
                log,
                &format!("publish: done in {:.2} s", started.elapsed().as_secs_f64()),
            );
            log::info!("job={} published to {}", job.id, spec.to.display());
        }
        Err(PublishError::Stopped) => say(log, "publish: stopped; current is unchanged"),
        Err(e) => say(log, &format!("{e}")),
    }
    result
}

/// The verdict of a stopped job: a timeout is an error; a superseded or shut-down job has none.
fn stopped(reason: StopReason, project: &Project) -> Option<Verdict> {
    match reason {
        StopReason::Timeout => Some(Verdict::error(format!(
            "timed out after {} s (timeout_secs)",
            project.timeout.as_secs()
        ))),
        StopReason::Superseded | StopReason::Canceled | StopReason::Shutdown => None,
    }
}

/// PATH, HOME and LANG, taken from the daemon's environment with safe fallbacks.
pub(crate) fn base_env(config: &Config) -> Vec<(String, String)> {
    let get = |k: &str, fallback: &str| std::env::var(k).unwrap_or_else(|_| fallback.to_string());
    vec![
        ("PATH".into(), get("PATH", DEFAULT_PATH)),
        (
            "HOME".into(),
            get("HOME", &config.state_dir.to_string_lossy()),
        ),
        ("LANG".into(), get("LANG", "C.UTF-8")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Gate;

    #[test]
    fn a_publish_past_the_jobs_deadline_stops_as_a_timeout() {
        let control = Control::default();
        let running = PublishGate {
            control: &control,
            deadline: Instant::now() + Duration::from_secs(60),
        };
        assert!(!running.stopped());
        assert_eq!(control.reason(), None);
        let late = PublishGate {
            control: &control,
            deadline: Instant::now(),
        };
        assert!(late.stopped());
        assert_eq!(control.reason(), Some(StopReason::Timeout));
        assert!(
            late.unless_stopped(&mut || Ok(())).is_none(),
            "no switch after it"
        );
    }
}
