//! Notifications: the `notifier` thread runs each project's `notify` command for the jobs whose
//! end its `notify_on` lists, until the command exits 0.
//!
//! What is due lives in the journal's outbox, written in the same commit as the job's end
//! (see `journal/apply/notifications.rs`), so a notification survives any crash: the thread
//! reads the outbox at start, after each commit that may have added to it, and when the next
//! retry is due. An attempt is recorded only after the command ended, so a crash during it
//! means it runs again after the restart: delivery is at least once, and exactly once when
//! nothing crashes. Hence also: an outcome the journal refuses (disk full) is kept here and
//! only its record is tried again, never the command; and a daemon stop lets a running command
//! finish within the stop's bound before it is killed.
//!
//! - `delivery.rs`: one attempt (the command, its input and environment, its log lines);
//! - `backoff.rs`: when a failed attempt is tried again, and when it is given up.

mod backoff;
mod delivery;

use crate::clock::now_ms;
use crate::config::Config;
use crate::job::{Control, StopReason};
use crate::journal::Attempt;
use crate::journal::{Journal, Outcome};
use crate::supervise::{self, At};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Longest sleep with nothing due: the outbox is read again at least this often anyway.
const IDLE: Duration = Duration::from_secs(3600);
/// Pause after the journal could not be read or written, before trying again.
const JOURNAL_PAUSE: Duration = Duration::from_secs(5);

/// How the notifier is stopped: [`Stop::stop`] lets no attempt start after it; [`Stop::kill`]
/// stops a running command too (its notification stays due and runs again after the restart).
#[derive(Default)]
struct Stop {
    stopping: AtomicBool,
    running: Mutex<Option<Arc<Control>>>,
}

impl Stop {
    fn stop(&self) {
        self.stopping.store(true, SeqCst);
    }

    fn kill(&self) {
        self.stop();
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

    /// Wakes the notifier now (to see a stop, say).
    fn ring(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// The daemon's hold on the notifier thread: what wakes it, and its stop.
pub struct Handle {
    stop: Arc<Stop>,
    wake: Wake,
    /// Never sent on: it reports Disconnected once the thread has ended.
    gone: Receiver<()>,
}

impl Handle {
    /// Where the commit callback says the outbox may have grown.
    pub fn wake(&self) -> Wake {
        self.wake.clone()
    }

    /// No attempt starts from now; a running command may finish until `deadline`, and is
    /// stopped then (it runs again after the restart).
    pub fn stop_by(&self, deadline: Instant) {
        self.stop.stop();
        // Asleep until its next due time otherwise.
        self.wake.ring();
        if let Ok(()) | Err(RecvTimeoutError::Timeout) = self.gone.recv_deadline(deadline) {
            log::warn!(
                "a notify command is still running; stopping it (it runs again after the restart)"
            );
            self.stop.kill();
        }
    }
}

/// Starts the `notifier` core thread.
pub fn start(journal: Journal, config: Arc<RwLock<Arc<Config>>>) -> std::io::Result<Handle> {
    let stop = Arc::new(Stop::default());
    let (notifier, wake) = Notifier::new(journal, config, stop.clone());
    let (alive, gone) = crossbeam_channel::bounded::<()>(0);
    supervise::spawn_core("notifier", move || {
        let _alive = alive;
        notifier.run()
    })?;
    Ok(Handle { stop, wake, gone })
}

/// What the notifier thread needs.
struct Notifier {
    journal: Journal,
    config: Arc<RwLock<Arc<Config>>>,
    stop: Arc<Stop>,
    wake: Receiver<()>,
    /// Outcomes of commands that ran but that the journal refused to record, by job id.
    unrecorded: HashMap<String, Attempt>,
}

impl Notifier {
    /// The thread's state and the handle that wakes it.
    fn new(
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
            unrecorded: HashMap::new(),
        };
        (notifier, Wake(tx))
    }

    /// The thread: delivers what is due, then sleeps until the next due time or a wake-up.
    fn run(mut self) {
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
    fn deliver_due(&mut self, outbox: Vec<(String, u64)>) -> Option<Duration> {
        let now = now_ms();
        let mut delivered = false;
        for (job_id, due) in outbox {
            if due > now {
                // A clock set back must not put the next look hours away.
                let wait = Duration::from_millis(due - now).min(IDLE);
                return (!delivered).then_some(wait);
            }
            if self.stop.stopping() {
                return None;
            }
            let attempt = match self.unrecorded.remove(&job_id) {
                // The command ran already; only its record is missing.
                Some(attempt) => attempt,
                None => {
                    let config = self
                        .config
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let control = self.stop.begin();
                    match delivery::attempt(&self.journal, &config, &job_id, &control) {
                        delivery::Attempted::Ran(attempt) => attempt,
                        delivery::Attempted::Stopped => return None,
                        delivery::Attempted::Unreadable => return Some(JOURNAL_PAUSE),
                    }
                }
            };
            if !delivery::record(&self.journal, &job_id, &attempt) {
                self.unrecorded.insert(job_id, attempt);
                return Some(JOURNAL_PAUSE);
            }
            delivered = true;
        }
        (!delivered).then_some(IDLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::{hook, journal, Dir};
    use crate::journal::{JobState, NotifyOn, Op};

    /// A job of project `site` that ended ERROR, its notification due, in a journal at `dir`
    /// whose writer has stopped (every write is refused; reads work).
    fn due_in_a_refusing_journal(dir: &Dir) -> (Journal, String) {
        let (first, j) = journal();
        let path = first.path().join("j.redb");
        hook(&j, "hook_a", "s1");
        let mut on = NotifyOn::default();
        on.add("ERROR");
        let ops = [
            Op::SetNotifyPolicy {
                projects: vec![("site".into(), on)],
            },
            crate::journal::testing::trigger_op("s1", "J1"),
            Op::Start {
                job_id: "J1".into(),
                now: 1,
            },
            Op::Finish {
                job_id: "J1".into(),
                state: JobState::Error,
                exit_code: Some(1),
                error: None,
                now: 2,
            },
            Op::Checkpoint,
        ];
        for op in ops {
            j.submit(op).unwrap();
        }
        drop(j);
        // The old writer ends once its last handle is gone; copy the file it left.
        let copy = dir.path().join("j.redb");
        let ok = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            std::fs::copy(&path, &copy).is_ok() && Journal::open(&copy).is_ok()
        });
        assert!(ok);
        let (j, writer) = Journal::open(&copy).unwrap();
        drop(writer);
        (j, "J1".into())
    }

    #[test]
    fn an_outcome_the_journal_refuses_is_kept_and_the_command_is_not_run_again() {
        let dir = Dir::new();
        let (j, id) = due_in_a_refusing_journal(&dir);
        let runs = dir.path().join("runs");
        let text = format!(
            "state_dir = {:?}\n[projects.site]\nrepo = \"/r\"\nbuild = \"true\"\nnotify = \"echo run >> {}\"\n",
            dir.path().join("state"),
            runs.display()
        );
        let config = crate::config::parse(&dir.path().join("c.toml"), &text).unwrap();
        std::fs::create_dir_all(config.logs_dir()).unwrap();
        let shared = Arc::new(RwLock::new(Arc::new(config)));
        let (mut notifier, _wake) = Notifier::new(j.clone(), shared, Arc::default());
        for _ in 0..3 {
            let outbox = j.outbox().unwrap();
            assert_eq!(outbox.len(), 1);
            assert_eq!(notifier.deliver_due(outbox), Some(JOURNAL_PAUSE));
        }
        let ran = std::fs::read_to_string(&runs).unwrap();
        assert_eq!(ran.lines().count(), 1, "the command ran again: {ran}");
        assert!(matches!(notifier.unrecorded.get(&id), Some(Attempt::Sent)));
    }
}
