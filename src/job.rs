//! A job on its way through the daemon: what the scheduler queues and a build thread runs
//! ([`QueuedJob`]), and the switch that stops its build ([`Control`], [`StopReason`]).
//!
//! The scheduler and the build threads both hold these; neither owns them, so they live here and
//! dependencies run one way: job <- scheduler <- build.

use crate::journal::JobRow;
use crate::sys::{self, Signal};
use std::sync::{Mutex, PoisonError};

/// A job as the scheduler and the build threads see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: String,
    pub hook_id: String,
    pub hook_name: String,
    pub project: String,
    pub branch: String,
    /// A build of this job was started before and interrupted (daemon stop or crash).
    pub restarted: bool,
    /// Debounce: not to start before this time (Unix ms).
    pub not_before: Option<u64>,
}

impl QueuedJob {
    /// The scheduler's view of a stored job.
    pub fn from_row(row: &JobRow, restarted: bool) -> QueuedJob {
        QueuedJob {
            id: row.job.id.clone(),
            hook_id: row.job.hook_id.clone(),
            hook_name: row.hook_name.clone(),
            project: row.job.project.clone(),
            branch: row.job.branch.clone(),
            restarted,
            not_before: row.job.not_before,
        }
    }
}

/// Why a build is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A newer trigger of the same hook canceled the job.
    Superseded,
    /// An operator canceled the job (`jobs cancel`).
    Canceled,
    /// The build ran past its project's `timeout_secs`.
    Timeout,
    /// The daemon is stopping; the job starts over after the restart.
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

    /// Runs `f` unless a stop was requested; a stop requested meanwhile waits until `f` is done,
    /// so an action that must not follow a stop (switching a published release live) never
    /// does. `None` when the job was stopped.
    pub fn unless_stopped<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.reason.is_some() {
            return None;
        }
        let out = f();
        drop(st);
        Some(out)
    }

    /// Registers a freshly spawned group; if a stop was already requested it is signalled now.
    pub(crate) fn attach(&self, pgid: i32) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.pgid = Some(pgid);
        if st.reason.is_some() {
            let _ = sys::signal_group(pgid, Signal::Term);
        }
    }

    /// The group has ended: later stops signal nothing.
    pub(crate) fn detach(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pgid = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Command;

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
