//! A build's child processes: each step (git or `sh -c`) runs in a process group of its own
//! with its output piped into the job's log, until it exits, its deadline passes or its
//! [`Control`] asks it to stop.
//!
//! Stopping is SIGTERM to the group at once, SIGKILL after the kill grace and not before, even
//! if the top process exited early. Processes that left the group are found by the
//! `DEPLOYHOOK_JOB_ID` in their environment and killed too; at start-up, those left by a
//! previous daemon are killed the same way ([`reap_orphans`]).

use super::job_log::{say, SharedLog};
use crate::job::{Control, StopReason};
use crate::journal::Journal;
use crate::sys::{self, Signal};
use crossbeam_channel::Receiver;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// Set in a notify command's environment. A notify command carries its job's
/// `DEPLOYHOOK_JOB_ID` too, and may run while the job's build is being stopped (a CANCELED
/// notification): the mark keeps the build's stop from killing it, and the reverse.
pub(crate) const NOTIFICATION_MARK: &str = "DEPLOYHOOK_NOTIFICATION";

/// How often a build thread looks at its child, its deadline and its stop flag.
const POLL: Duration = Duration::from_millis(5);
/// How long to wait for a log pipe to close after its processes are gone (a process that
/// escaped the group may hold it open).
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// How one step (clone or build) ended.
pub(crate) enum Step {
    Exited(ExitStatus),
    Stopped(StopReason),
    SpawnFailed(io::Error),
}

/// An exit status in words, for the job log and the job's `error`.
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended".to_string(),
    }
}

/// Runs one command in its own process group, `input` as its stdin and its output into the log,
/// until it exits, its deadline passes or a stop is requested.
pub(crate) fn run_step(
    mut cmd: Command,
    input: Stdio,
    log: &SharedLog,
    control: &Control,
    job_id: &str,
    deadline: Instant,
    grace: Duration,
) -> Step {
    let notification = cmd.get_envs().any(|(name, _)| name == NOTIFICATION_MARK);
    let (reader, writer) = match io::pipe() {
        Ok(p) => p,
        Err(e) => return Step::SpawnFailed(e),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Step::SpawnFailed(e),
    };
    cmd.stdin(input)
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
    let ours = Ours {
        job_id,
        notification,
    };

    let result = loop {
        if let Some(reason) = control.reason() {
            terminate(&mut child, pgid, &ours, grace);
            break Step::Stopped(reason);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Step::Exited(status),
            Ok(None) => {}
            Err(e) => {
                terminate(&mut child, pgid, &ours, grace);
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
        terminate(&mut child, pgid, &ours, grace);
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

/// The processes a step may leave behind: those carrying its job's id, of its kind (a build's
/// or a notification's).
struct Ours<'a> {
    job_id: &'a str,
    notification: bool,
}

/// After SIGTERM (already sent): wait for the whole group to be gone, up to `grace`; then
/// SIGKILL the group and every process of ours that left it.
fn terminate(child: &mut Child, pgid: i32, ours: &Ours, grace: Duration) {
    let _ = sys::signal_group(pgid, Signal::Term);
    let t0 = Instant::now();
    let mut reaped = false;
    while t0.elapsed() < grace {
        if !reaped {
            reaped = matches!(child.try_wait(), Ok(Some(_)));
        }
        if reaped && !sys::group_exists(pgid) {
            kill_by_job_id(ours);
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = sys::signal_group(pgid, Signal::Kill);
    kill_by_job_id(ours);
    let _ = child.wait();
}

/// SIGKILLs every process whose environment carries this job's id and is of our kind (they
/// escaped the group).
fn kill_by_job_id(ours: &Ours) {
    let marked: Vec<i32> = sys::processes_with_env_var(NOTIFICATION_MARK)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    for pid in sys::processes_with_env("DEPLOYHOOK_JOB_ID", ours.job_id) {
        if marked.contains(&pid) == ours.notification {
            sys::signal_process(pid, Signal::Kill);
        }
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
