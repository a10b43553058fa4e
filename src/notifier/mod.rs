//! Notifications: the `notifier` thread runs each project's `notify` command for the jobs whose
//! end its `notify_on` lists, until the command exits 0.
//!
//! What is due lives in the journal's outbox, written in the same commit as the job's end
//! (see `journal/apply/notifications.rs`), so a notification survives any crash: the thread
//! reads the outbox at start, after each commit that may have added to it, and when the next
//! retry is due. An attempt is recorded only after the command ended, so a crash during it
//! means it runs again after the restart: delivery is at least once, and exactly once when
//! nothing crashes.
//!
//! - `delivery.rs`: one attempt (the command, its input and environment, its log lines);
//! - `backoff.rs`: when a failed attempt is tried again, and when it is given up.

mod backoff;
mod delivery;

use crate::clock::now_ms;
use crate::config::Config;
use crate::job::{Control, StopReason};
use crate::journal::{Journal, Outcome};
use crate::supervise::{self, At};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// Longest sleep with nothing due: the outbox is read again at least this often anyway.
const IDLE: Duration = Duration::from_secs(3600);
/// Pause after the journal could not be read or written, before trying again.
const JOURNAL_PAUSE: Duration = Duration::from_secs(5);

/// How the daemon stops the notifier: no attempt starts after it, and a running command is
/// stopped (its notification stays due and runs again after the restart).
#[derive(Default)]
pub struct Stop {
    stopping: AtomicBool,
    running: Mutex<Option<Arc<Control>>>,
}

impl Stop {
    pub fn stop(&self) {
        self.stopping.store(true, SeqCst);
        if let Some(control) = &*self.running.lock().unwrap_or_else(PoisonError::into_inner) {
            control.stop(StopReason::Shutdown);
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }

    /// A fresh control for the next command, stopped at once if the daemon is stopping.
    fn begin(&self) -> Arc<Control> {
        let control = Arc::new(Control::default());
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(control.clone());
        if self.stopping() {
            control.stop(StopReason::Shutdown);
        }
        control
    }
}

/// Where the commit callback says "the outbox may have grown"; cheap and never blocking.
#[derive(Clone)]
pub struct Wake(Sender<()>);

impl Wake {
    /// After a commit: wakes the notifier when the outcome ended a job (its notification, if
    /// any, is in the outbox now) or changed the policy.
    pub fn after_commit(&self, outcome: &Outcome) {
        let may_notify = match outcome {
            Outcome::Finished(row) | Outcome::Canceled { row, .. } => {
                row.job.notification.is_some()
            }
            Outcome::Triggered { superseded, .. } => superseded.is_some(),
            Outcome::NotifyPolicySet => true,
            _ => false,
        };
        if may_notify {
            self.ring();
        }
    }

    fn ring(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// What the notifier thread needs.
pub struct Notifier {
    pub journal: Journal,
    pub config: Arc<RwLock<Arc<Config>>>,
    pub stop: Arc<Stop>,
    wake: Receiver<()>,
}

impl Notifier {
    /// The thread's state and the handle that wakes it.
    pub fn new(
        journal: Journal,
        config: Arc<RwLock<Arc<Config>>>,
        stop: Arc<Stop>,
    ) -> (Notifier, Wake) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let notifier = Notifier {
            journal,
            config,
            stop,
            wake: rx,
        };
        (notifier, Wake(tx))
    }

    /// The thread: delivers what is due, then sleeps until the next due time or a wake-up.
    pub fn run(self) {
        while !self.stop.stopping() {
            supervise::fault_point(At::Event);
            let pause = match self.journal.outbox() {
                Ok(outbox) => self.deliver_due(outbox),
                Err(e) => {
                    log::error!("notifications: {e}; trying again in {JOURNAL_PAUSE:?}");
                    Some(JOURNAL_PAUSE)
                }
            };
            let Some(pause) = pause else {
                continue;
            };
            match self.wake.recv_timeout(pause) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Runs every notification due now, soonest first; returns how long to sleep before the
    /// next is due, or `None` to read the outbox again at once (something was delivered).
    fn deliver_due(&self, outbox: Vec<(String, u64)>) -> Option<Duration> {
        let now = now_ms();
        let mut delivered = false;
        for (job_id, due) in outbox {
            if due > now {
                return match delivered {
                    true => None,
                    false => Some(Duration::from_millis(due - now)),
                };
            }
            if self.stop.stopping() {
                return None;
            }
            let config = self
                .config
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let control = self.stop.begin();
            match delivery::attempt(&self.journal, &config, &job_id, &control) {
                delivery::Recorded::Yes => delivered = true,
                delivery::Recorded::Stopped => return None,
                delivery::Recorded::No => return Some(JOURNAL_PAUSE),
            }
        }
        (!delivered).then_some(IDLE)
    }
}
