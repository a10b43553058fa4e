//! Build threads: one job at a time each, from a fresh directory to a terminal state.
//!
//! A job's steps: mark it BUILDING, clone the branch head into `builds/{job}.{attempt}`, record
//! the commit, run `sh -c "$build"` there, record the outcome, hand the directory to the
//! janitor. Every child (git included) runs in its own process group with output piped into the
//! job's log through a size cap; the environment is cleared down to what DESIGN.md lists.
//!
//! Stopping a build (newer trigger, timeout, daemon shutdown) goes through [`Control`]: SIGTERM
//! to the group at once, SIGKILL after `kill_grace` and not before, even if the top process
//! exited early. A stopped build's processes that left the group are found by the
//! `DEPLOYHOOK_JOB_ID` in their environment and killed too.

use crate::config::{Config, Project};
use crate::git_access::{GitAccess, RecentLines};
use crate::journal::{JobState, Journal, Op, Outcome};
use crate::metrics::Metrics;
use crate::redact;
use crate::scheduler::{Assignment, Event, QueuedJob};
use crate::sys::{self, Signal};
/// For the benchmarks, which time cancellation and checkouts with them.
pub use crate::sys::{group_exists, spread_new_directories};
use crossbeam_channel::{Receiver, Sender};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// How often a build thread looks at its child, its deadline and its stop flag.
const POLL: Duration = Duration::from_millis(5);
/// How long to wait for a log pipe to close after its processes are gone (a process that
/// escaped the group may hold it open).
const PIPE_DRAIN: Duration = Duration::from_secs(2);
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long a build thread keeps retrying a journal write that fails (disk full) before it
/// gives up; a job whose outcome could not be written is retried after the next restart.
const RECORD_PATIENCE: Duration = Duration::from_secs(600);

/// Why a build is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Superseded,
    Timeout,
    Shutdown,
}

#[derive(Default)]
struct ControlState {
    reason: Option<StopReason>,
    pgid: Option<i32>,
}

/// The stop switch of one job, shared by the scheduler and the build thread. The mutex makes
/// "stop requested" and "process group started" meet exactly once, whichever comes first.
#[derive(Default)]
pub struct Control {
    state: Mutex<ControlState>,
}

impl Control {
    /// Requests a stop; the first reason wins. SIGTERM goes to the running group at once.
    pub fn stop(&self, reason: StopReason) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.reason.is_none() {
            st.reason = Some(reason);
            if let Some(pgid) = st.pgid {
                let _ = sys::signal_group(pgid, Signal::Term);
            }
        }
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reason
    }

    /// Registers a freshly spawned group; if a stop was already requested it is signalled now.
    fn attach(&self, pgid: i32) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.pgid = Some(pgid);
        if st.reason.is_some() {
            let _ = sys::signal_group(pgid, Signal::Term);
        }
    }

    fn detach(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pgid = None;
    }
}

/// What every build thread shares.
#[derive(Clone)]
pub struct Context {
    pub journal: Journal,
    pub config: Arc<RwLock<Arc<Config>>>,
    pub metrics: Arc<Metrics>,
    pub scheduler: Sender<Event>,
    pub janitor: Sender<PathBuf>,
}

/// A build thread: runs assignments until the pool channel closes.
pub fn worker(ctx: Context, pool: Receiver<Assignment>) {
    for Assignment { job, control } in pool {
        ctx.metrics.workers_busy.fetch_add(1, Relaxed);
        run_job(&ctx, &job, &control);
        ctx.metrics.workers_busy.fetch_sub(1, Relaxed);
        let _ = ctx.scheduler.send(Event::Finished {
            job_id: job.id.clone(),
        });
    }
}

/// The job's log file: deployhook's own lines always, build output up to the cap; every line
/// masked on its way in ([`redact::Masker`]).
struct Log {
    file: Option<File>,
    written: u64,
    cap: u64,
    truncated: bool,
    masker: redact::Masker,
    /// The last lines of the running command's output, for its error message.
    recent: RecentLines,
}

type SharedLog = Arc<Mutex<Log>>;

impl Log {
    fn open(path: &Path, cap: u64, append: bool) -> Log {
        let file = OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(path);
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                log::warn!("cannot open log {}: {e}", path.display());
                None
            }
        };
        let written = if append {
            std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        Log {
            file,
            written,
            cap,
            truncated: false,
            masker: redact::Masker::default(),
            recent: RecentLines::default(),
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        if let Some(f) = &mut self.file {
            if f.write_all(bytes).is_ok() {
                self.written += bytes.len() as u64;
            }
        }
    }

    fn line(&mut self, text: &str) {
        let text = self.masker.text(text);
        self.raw(format!("[deployhook] {text}\n").as_bytes());
    }

    /// A chunk of a command's output, written line by line once masked.
    fn output(&mut self, bytes: &[u8]) {
        let mut masker = std::mem::take(&mut self.masker);
        masker.push(bytes, |line| self.masked_output(line));
        self.masker = masker;
    }

    /// The end of a command's output: its last line, even without a newline.
    fn end_of_output(&mut self) {
        let mut masker = std::mem::take(&mut self.masker);
        masker.finish(|line| self.masked_output(line));
        self.masker = masker;
    }

    fn masked_output(&mut self, bytes: &[u8]) {
        self.recent.push(bytes);
        if self.truncated {
            return;
        }
        let room = self.cap.saturating_sub(self.written) as usize;
        if bytes.len() <= room {
            self.raw(bytes);
        } else {
            self.raw(&bytes[..room]);
            self.truncated = true;
            let cap = self.cap;
            self.raw(b"\n");
            self.line(&format!(
                "log truncated: it reached max_log_bytes ({cap} bytes); further output is dropped, the build goes on"
            ));
        }
    }
}

/// `text` with the job's secrets masked, as its log shows them.
fn mask(log: &SharedLog, text: &str) -> String {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .masker
        .text(text)
        .into_owned()
}

fn say(log: &SharedLog, text: &str) {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .line(text);
}

/// How one step (clone or build) ended.
enum Step {
    Exited(ExitStatus),
    Stopped(StopReason),
    SpawnFailed(io::Error),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Final word on a job, to be written to the journal.
struct Verdict {
    state: JobState,
    exit_code: Option<i32>,
    error: Option<String>,
}

impl Verdict {
    fn error(message: impl Into<String>) -> Verdict {
        Verdict {
            state: JobState::Error,
            exit_code: None,
            error: Some(message.into()),
        }
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
    let log_path = config.logs_dir().join(format!("{}.log", job.id));
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
        Some(mut v) => {
            v.error = v.error.map(|e| mask(&log, &e));
            let status = v.error.as_deref().unwrap_or("ok");
            say(
                &log,
                &format!("{} after {elapsed:.2} s: {status}", v.state.as_str()),
            );
            let finish = Op::Finish {
                job_id: job.id.clone(),
                state: v.state,
                exit_code: v.exit_code,
                error: v.error,
                now: now_ms(),
            };
            if let Some(Outcome::Finished(_)) = record(ctx, finish, control) {
                ctx.metrics.build_duration.observe(elapsed);
                log::info!(
                    "job={} hook={} {} in {elapsed:.2} s",
                    job.id,
                    job.hook_id,
                    v.state.as_str()
                );
            }
        }
        None => {
            match control.reason() {
                Some(StopReason::Shutdown) => {
                    say(
                        &log,
                        "stopped by daemon shutdown; the job starts over after the restart",
                    );
                    if let Err(e) = ctx.journal.submit(Op::Requeue {
                        job_id: job.id.clone(),
                    }) {
                        log::error!("job={} not requeued ({e}); it restarts anyway", job.id);
                    }
                }
                _ => {
                    say(&log, &format!("CANCELED after {elapsed:.2} s: superseded by a newer trigger of this hook"));
                    log::info!(
                        "job={} hook={} canceled while building",
                        job.id,
                        job.hook_id
                    );
                }
            }
        }
    }
}

/// What every git or build step of one job shares.
struct Steps<'a> {
    log: &'a SharedLog,
    control: &'a Control,
    job_id: &'a str,
    deadline: Instant,
    grace: Duration,
    env: &'a [(String, String)],
    access: &'a GitAccess,
}

impl Steps<'_> {
    /// Runs `git ARGS` in `cwd` as a step of the job, logged as `$ git …`.
    fn git(&self, cwd: &Path, args: &[&std::ffi::OsStr]) -> Step {
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
        run_step(
            cmd,
            self.log,
            self.control,
            self.job_id,
            self.deadline,
            self.grace,
        )
    }
}

/// The verdict of a failed git step, or `Some(None)` when the job was stopped meanwhile.
/// The error carries git's own reason ([`GitAccess::explain`]) when its output gave one.
fn git_failure(
    step: Step,
    what: &str,
    project: &Project,
    steps: &Steps,
) -> Option<Option<Verdict>> {
    match step {
        Step::Exited(status) if status.success() => None,
        Step::Exited(status) => {
            let log = steps.log.lock().unwrap_or_else(PoisonError::into_inner);
            let why = match steps.access.explain(&log.recent) {
                Some(why) => format!(": {why}"),
                None => String::new(),
            };
            Some(Some(Verdict::error(format!(
                "{what} failed ({}){why}; see the log",
                describe(status)
            ))))
        }
        Step::SpawnFailed(e) => Some(Some(Verdict::error(format!("cannot run git: {e}")))),
        Step::Stopped(reason) => Some(stopped(reason, project)),
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

/// Puts a fresh checkout of the branch head in `dir`: the project's bare mirror is brought up
/// to date with `git fetch`, then cloned with `--shared` (objects are borrowed from the mirror,
/// the working tree is new). Only git objects are reused between jobs, never build output.
/// Returns `Some(verdict)` when the job ends here (`Some(None)`: stopped).
fn checkout(
    config: &Config,
    project: &Project,
    job: &QueuedJob,
    dir: &Path,
    steps: &Steps,
) -> Option<Option<Verdict>> {
    let _running = CheckoutRunning::start();
    let mirror = config.mirrors_dir().join(format!("{}.git", project.name));
    let branch_ref = format!("+refs/heads/{b}:refs/heads/{b}", b = job.branch);
    for attempt in 0..2 {
        if !mirror.join("HEAD").exists() {
            let _ = std::fs::remove_dir_all(&mirror);
            if let Err(e) = std::fs::create_dir_all(&mirror) {
                return Some(Some(Verdict::error(format!(
                    "cannot create {}: {e}",
                    mirror.display()
                ))));
            }
            let init = steps.git(
                &mirror,
                &["init".as_ref(), "--quiet".as_ref(), "--bare".as_ref()],
            );
            if let Some(v) = git_failure(init, "git init of the mirror", project, steps) {
                return Some(v);
            }
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
        match git_failure(fetch, "git fetch", project, steps) {
            None => break,
            Some(Some(_)) if attempt == 0 && mirror_is_damaged(&mirror, steps) => {
                say(
                    steps.log,
                    "the mirror looks damaged; fetching again into a new one",
                );
                let _ = std::fs::remove_dir_all(&mirror);
            }
            Some(v) => return Some(v),
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
    git_failure(clone, "git clone", project, steps)
}

/// Whether the mirror itself is broken (as opposed to the remote or the branch being wrong).
fn mirror_is_damaged(mirror: &Path, steps: &Steps) -> bool {
    let status = Command::new("git")
        .args(["fsck", "--connectivity-only", "--no-dangling"])
        .current_dir(mirror)
        .env_clear()
        .envs(steps.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    !status.is_ok_and(|s| s.success())
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
    };
    if let Some(verdict) = checkout(config, project, job, dir, &steps) {
        return verdict;
    }

    let commit = match head_commit(dir) {
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
    let step = run_step(build, log, control, &job.id, deadline, grace);
    match step {
        Step::Exited(status) => {
            say(log, &format!("build {}", describe(status)));
            if status.success() {
                Some(Verdict {
                    state: JobState::Ready,
                    exit_code: Some(0),
                    error: None,
                })
            } else {
                Some(Verdict {
                    state: JobState::Error,
                    exit_code: status.code(),
                    error: Some(format!("build {}", describe(status))),
                })
            }
        }
        Step::SpawnFailed(e) => Some(Verdict::error(format!("cannot run sh: {e}"))),
        Step::Stopped(reason) => stopped(reason, project),
    }
}

fn stopped(reason: StopReason, project: &Project) -> Option<Verdict> {
    match reason {
        StopReason::Timeout => Some(Verdict::error(format!(
            "timed out after {} s (timeout_secs)",
            project.timeout.as_secs()
        ))),
        StopReason::Superseded | StopReason::Shutdown => None,
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended".to_string(),
    }
}

/// PATH, HOME and LANG, taken from the daemon's environment with safe fallbacks.
fn base_env(config: &Config) -> Vec<(String, String)> {
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

fn head_commit(dir: &Path) -> io::Result<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && sha.len() >= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha)
    } else {
        Err(io::Error::other("git rev-parse HEAD gave no commit"))
    }
}

/// Runs one command in its own process group, output into the log, until it exits, its
/// deadline passes or a stop is requested.
fn run_step(
    mut cmd: Command,
    log: &SharedLog,
    control: &Control,
    job_id: &str,
    deadline: Instant,
    grace: Duration,
) -> Step {
    let (reader, writer) = match io::pipe() {
        Ok(p) => p,
        Err(e) => return Step::SpawnFailed(e),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Step::SpawnFailed(e),
    };
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    sys::die_with_parent(&mut cmd);
    let spawned = cmd.spawn();
    drop(cmd); // closes our copies of the pipe's write end
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Step::SpawnFailed(e),
    };
    let pump = start_pump(reader, log.clone());
    let pgid = child.id() as i32;
    control.attach(pgid);

    let result = loop {
        if let Some(reason) = control.reason() {
            terminate(&mut child, pgid, job_id, grace);
            break Step::Stopped(reason);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Step::Exited(status),
            Ok(None) => {}
            Err(e) => {
                terminate(&mut child, pgid, job_id, grace);
                break Step::SpawnFailed(e);
            }
        }
        if Instant::now() >= deadline {
            control.stop(StopReason::Timeout);
            continue;
        }
        std::thread::sleep(POLL);
    };
    if matches!(result, Step::Exited(_)) && sys::group_exists(pgid) {
        say(
            log,
            "the command left processes running in its group; stopping them",
        );
        let _ = sys::signal_group(pgid, Signal::Term);
        terminate(&mut child, pgid, job_id, grace);
    }
    control.detach();
    let _ = pump.recv_timeout(PIPE_DRAIN);
    result
}

/// Copies a pipe into the log on its own thread; the receiver hears when the pipe closed.
fn start_pump(mut reader: io::PipeReader, log: SharedLog) -> Receiver<()> {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("build-log".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => log
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .output(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .end_of_output();
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        log::error!("cannot start a log thread: {e}");
    }
    done_rx
}

/// After SIGTERM (already sent): wait for the whole group to be gone, up to `grace`; then
/// SIGKILL the group and every process carrying this job's id.
fn terminate(child: &mut Child, pgid: i32, job_id: &str, grace: Duration) {
    let _ = sys::signal_group(pgid, Signal::Term);
    let t0 = Instant::now();
    let mut reaped = false;
    while t0.elapsed() < grace {
        if !reaped {
            reaped = matches!(child.try_wait(), Ok(Some(_)));
        }
        if reaped && !sys::group_exists(pgid) {
            kill_by_job_id(job_id);
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = sys::signal_group(pgid, Signal::Kill);
    kill_by_job_id(job_id);
    let _ = child.wait();
}

/// SIGKILLs every process whose environment carries this job's id (they escaped the group).
pub fn kill_by_job_id(job_id: &str) {
    for pid in sys::processes_with_env("DEPLOYHOOK_JOB_ID", job_id) {
        sys::signal_process(pid, Signal::Kill);
    }
}

/// At start-up: SIGKILLs every process left by a previous daemon of this journal, found by a
/// `DEPLOYHOOK_JOB_ID` that names one of its jobs (whatever that job's state: a crash may have
/// come after a job was canceled and before its build was stopped). Returns how many.
pub fn reap_orphans(journal: &Journal) -> usize {
    let mut reaped = 0;
    for (pid, job_id) in sys::processes_with_env_var("DEPLOYHOOK_JOB_ID") {
        if crate::secret::is_job_id(&job_id) && matches!(journal.job(&job_id), Ok(Some(_))) {
            log::warn!("killing process {pid} left by job={job_id} of a previous run");
            sys::signal_process(pid, Signal::Kill);
            reaped += 1;
        }
    }
    reaped
}

/// Checkouts running now. Deleting a finished tree while another is being written slows the
/// checkout several times over on some file systems, so the janitor waits for this to be 0.
static CHECKOUTS: AtomicUsize = AtomicUsize::new(0);

/// Counts one running checkout while alive.
struct CheckoutRunning;

impl CheckoutRunning {
    fn start() -> CheckoutRunning {
        CHECKOUTS.fetch_add(1, Relaxed);
        CheckoutRunning
    }
}

impl Drop for CheckoutRunning {
    fn drop(&mut self) {
        CHECKOUTS.fetch_sub(1, Relaxed);
    }
}

fn wait_for_no_checkout() {
    while CHECKOUTS.load(Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a tree entry by entry, pausing whenever a checkout runs; links are not followed.
fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for (i, entry) in std::fs::read_dir(path)?.enumerate() {
            if i % 64 == 0 {
                wait_for_no_checkout();
            }
            remove_tree(&entry?.path())?;
        }
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Removes finished build directories and pruned logs off the critical path of builds and
/// triggers: in the background, and never while a checkout is writing its tree.
pub fn janitor(paths: Receiver<PathBuf>) {
    for path in paths {
        wait_for_no_checkout();
        if let Err(e) = remove_tree(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_caps_output_but_keeps_own_lines() {
        let dir = std::env::temp_dir().join(format!("deployhook-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.log");
        let mut log = Log::open(&path, 1024, false);
        log.line("start");
        log.output(&[b'x'; 2000]);
        log.output(b"more");
        // Output is written by whole lines: the last one when its command's output ends.
        log.end_of_output();
        log.line("end");
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.starts_with("[deployhook] start\n"));
        let run = text.lines().nth(1).unwrap();
        assert!(run.bytes().all(|b| b == b'x'));
        assert_eq!(run.len(), 1024 - "[deployhook] start\n".len());
        assert!(text.contains("log truncated"));
        assert!(!text.contains("more"));
        assert!(text.ends_with("[deployhook] end\n"));
    }

    #[test]
    fn control_signals_a_group_attached_after_the_stop() {
        let c = Control::default();
        c.stop(StopReason::Superseded);
        c.stop(StopReason::Timeout);
        assert_eq!(c.reason(), Some(StopReason::Superseded));
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        c.attach(child.id() as i32);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }
}
