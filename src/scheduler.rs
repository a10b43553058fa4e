//! The scheduler: which job runs next, on which build thread, and which build must stop.
//!
//! [`Plan`] is the pure rule book (no threads, no I/O), so it can be checked step by step
//! against a model: jobs run in the order they were queued, at most one build per project,
//! at most `workers` builds at once, and a job superseded by a newer trigger of its hook is
//! dropped from the queue or, when it is building, stopped.
//!
//! The scheduler thread ([`run`]) owns the plan and all in-memory job state. It learns about
//! new and superseded jobs from the journal writer (after each commit, in commit order) and
//! about finished builds from the build threads, and hands jobs to the build pool over a
//! channel. Nothing else mutates scheduling state. What a commit means for it is
//! [`Event::after_commit`]; what it starts from after a restart is [`recover`].

use crate::job::{Control, QueuedJob, StopReason};
use crate::journal::{JobState, Journal, JournalError, Op, Outcome};
use crate::metrics::Metrics;
use crate::supervise;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// What the plan asks the scheduler thread to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start(QueuedJob),
    /// Stop the running build of this job: a newer trigger superseded it.
    Stop(String),
    /// Stop the running build of this job: an operator canceled it.
    Cancel(String),
}

/// The scheduling rules, without threads.
#[derive(Debug)]
pub struct Plan {
    workers: usize,
    pending: VecDeque<QueuedJob>,
    /// Running job id -> its project.
    running: HashMap<String, String>,
    busy_projects: HashSet<String>,
    draining: bool,
}

impl Plan {
    pub fn new(workers: usize) -> Plan {
        Plan {
            workers,
            pending: VecDeque::new(),
            running: HashMap::new(),
            busy_projects: HashSet::new(),
            draining: false,
        }
    }

    /// A job was committed; `superseded` is the job of the same hook it canceled.
    pub fn queued(&mut self, job: QueuedJob, superseded: Option<&str>) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(old) = superseded {
            self.pending.retain(|j| j.id != old);
            if self.running.contains_key(old) {
                actions.push(Action::Stop(old.to_string()));
            }
        }
        self.pending.push_back(job);
        self.dispatch(&mut actions);
        actions
    }

    /// An operator canceled `job_id` (already CANCELED in the journal): it leaves the queue,
    /// or its build is stopped as a superseded one is.
    pub fn canceled(&mut self, job_id: &str) -> Vec<Action> {
        self.pending.retain(|j| j.id != job_id);
        if self.running.contains_key(job_id) {
            return vec![Action::Cancel(job_id.to_string())];
        }
        Vec::new()
    }

    /// A build thread is done with `job_id` (whatever the outcome).
    pub fn finished(&mut self, job_id: &str) -> Vec<Action> {
        if let Some(project) = self.running.remove(job_id) {
            self.busy_projects.remove(&project);
        }
        let mut actions = Vec::new();
        self.dispatch(&mut actions);
        actions
    }

    /// Stop starting jobs (shutdown); queued ones stay in the journal for the next start.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Time has passed: starts what debounce held back and is now due.
    pub fn tick(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.dispatch(&mut actions);
        actions
    }

    /// When the next debounced job becomes due (Unix ms, after `now`), if one waits. A job
    /// already due but held back (its project busy, every build thread taken, a shutdown) is
    /// not one: it starts on the event that frees its way, so the scheduler does not spin.
    pub fn next_due(&self, now: u64) -> Option<u64> {
        self.pending
            .iter()
            .filter_map(|j| j.not_before)
            .filter(|&t| t > now)
            .min()
    }

    fn dispatch(&mut self, actions: &mut Vec<Action>) {
        let now = crate::clock::now_ms();
        while !self.draining && self.running.len() < self.workers {
            let Some(pos) = self.pending.iter().position(|j| {
                !self.busy_projects.contains(&j.project) && j.not_before.is_none_or(|t| t <= now)
            }) else {
                break;
            };
            let Some(job) = self.pending.remove(pos) else {
                break;
            };
            self.busy_projects.insert(job.project.clone());
            self.running.insert(job.id.clone(), job.project.clone());
            actions.push(Action::Start(job));
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether the plan still holds this job, queued or running.
    pub fn holds(&self, job_id: &str) -> bool {
        self.running.contains_key(job_id) || self.pending.iter().any(|j| j.id == job_id)
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }
}

/// Messages to the scheduler thread.
#[derive(Debug)]
pub enum Event {
    Queued {
        job: QueuedJob,
        superseded: Option<String>,
    },
    Finished {
        job_id: String,
    },
    /// An operator canceled this job (the journal says CANCELED already).
    Canceled {
        job_id: String,
    },
    /// Stop every running build (they start over after the restart) and start nothing new.
    Shutdown,
    /// Answered at once: proves the scheduler thread still runs (watchdog).
    Ping(Sender<()>),
    /// A debounced job may have become due (sent by the scheduler's own wait).
    Tick,
}

impl Event {
    /// What a journal commit means for the scheduler: a trigger queues its job, and drops or
    /// stops the job of the same hook it superseded; no other change concerns scheduling (a
    /// build's own start and end reach the scheduler from its build thread).
    pub fn after_commit(outcome: &Outcome) -> Option<Event> {
        match outcome {
            Outcome::Triggered { row, superseded } => Some(Event::Queued {
                job: QueuedJob::from_row(row, false),
                superseded: superseded.as_ref().map(|(id, _)| id.clone()),
            }),
            Outcome::Canceled { row, .. } => Some(Event::Canceled {
                job_id: row.job.id.clone(),
            }),
            _ => None,
        }
    }
}

/// Recovery at start-up: the open jobs of the journal, in the order they were queued, to be
/// handed to the scheduler before the first trigger. A job found BUILDING was interrupted by a
/// stop or a crash: it is put back to PENDING and starts over from scratch (`restarted`).
/// Processes it left behind must be killed first (the daemon does, at start).
pub fn recover(journal: &Journal) -> Result<Vec<QueuedJob>, JournalError> {
    let open = journal.open_jobs()?;
    let mut jobs = Vec::with_capacity(open.len());
    for row in &open {
        let interrupted = row.job.state == JobState::Building;
        if interrupted {
            journal.submit(Op::Requeue {
                job_id: row.job.id.clone(),
            })?;
            log::info!(
                "job={} hook={} was interrupted; it starts over",
                row.job.id,
                row.job.hook_id
            );
        }
        jobs.push(QueuedJob::from_row(row, interrupted));
    }
    Ok(jobs)
}

/// The stop switches of the builds running now. If the scheduler thread dies, its builds are
/// stopped as at a shutdown (they start over after the restart) instead of running unwatched.
#[derive(Default)]
struct Running(HashMap<String, Arc<Control>>);

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for control in self.0.values() {
                control.stop(StopReason::Shutdown);
            }
        }
    }
}

/// A job handed to a build thread, with the handle that stops it.
pub struct Assignment {
    pub job: QueuedJob,
    pub control: Arc<Control>,
}

/// Runs the scheduler until every event sender is gone. If it panics, the builds it started are
/// stopped as at a shutdown (see `Running`).
pub fn run(
    events: Receiver<Event>,
    pool: Sender<Assignment>,
    workers: usize,
    metrics: Arc<Metrics>,
) {
    let mut plan = Plan::new(workers);
    // Dropped at shutdown, so build threads end once their current job has stopped.
    let mut pool = Some(pool);
    let mut controls = Running::default();
    loop {
        // Wait for the next event, or until a debounced job becomes due.
        let now = crate::clock::now_ms();
        let event = match plan.next_due(now) {
            None => events.recv().ok(),
            Some(due) => {
                let wait = due - now;
                match events.recv_timeout(Duration::from_millis(wait)) {
                    Ok(event) => Some(event),
                    Err(RecvTimeoutError::Timeout) => Some(Event::Tick),
                    Err(RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some(event) = event else {
            break;
        };
        let queued = matches!(event, Event::Queued { .. });
        let actions = match event {
            Event::Tick => plan.tick(),
            Event::Queued { job, superseded } => plan.queued(job, superseded.as_deref()),
            Event::Finished { job_id } => {
                controls.0.remove(&job_id);
                plan.finished(&job_id)
            }
            Event::Canceled { job_id } => plan.canceled(&job_id),
            Event::Shutdown => {
                plan.drain();
                pool = None;
                for control in controls.0.values() {
                    control.stop(StopReason::Shutdown);
                }
                Vec::new()
            }
            Event::Ping(answer) => {
                let _ = answer.send(());
                Vec::new()
            }
        };
        for action in actions {
            match action {
                Action::Start(job) => {
                    let control = Arc::new(Control::default());
                    controls.0.insert(job.id.clone(), control.clone());
                    let sent = match &pool {
                        Some(p) => p.send(Assignment { job, control }).is_ok(),
                        None => false,
                    };
                    if !sent {
                        log::error!("build pool is gone; no more jobs can start");
                    }
                }
                Action::Stop(job_id) => {
                    if let Some(control) = controls.0.get(&job_id) {
                        log::info!("stopping job={job_id}: superseded by a newer trigger");
                        control.stop(StopReason::Superseded);
                    }
                }
                Action::Cancel(job_id) => {
                    if let Some(control) = controls.0.get(&job_id) {
                        log::info!("stopping job={job_id}: canceled by operator");
                        control.stop(StopReason::Canceled);
                    }
                }
            }
        }
        metrics
            .queue_depth
            .store(plan.pending_len() as u64, Relaxed);
        if queued {
            supervise::fault_point(supervise::At::Event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, hook: &str, project: &str) -> QueuedJob {
        QueuedJob {
            id: id.into(),
            hook_id: hook.into(),
            hook_name: hook.into(),
            project: project.into(),
            branch: "main".into(),
            restarted: false,
            not_before: None,
        }
    }

    fn started(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(j) => Some(j.id.as_str()),
                Action::Stop(_) | Action::Cancel(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_debounced_job_waits_for_its_time() {
        let mut p = Plan::new(2);
        let later = crate::clock::now_ms() + 60_000;
        let mut held = job("d", "h1", "p");
        held.not_before = Some(later);
        assert!(p.queued(held, None).is_empty());
        assert_eq!(p.next_due(crate::clock::now_ms()), Some(later));
        assert!(p.tick().is_empty());
        // Another project's job is not held up by it.
        assert_eq!(started(&p.queued(job("x", "h2", "q"), None)), ["x"]);
        let mut due = job("e", "h3", "r");
        due.not_before = Some(crate::clock::now_ms() - 1);
        assert_eq!(started(&p.queued(due, None)), ["e"]);
    }

    #[test]
    fn a_due_job_held_back_by_a_busy_project_is_no_reason_to_wake() {
        let mut p = Plan::new(2);
        assert_eq!(started(&p.queued(job("a", "p1", "p"), None)), ["a"]);
        let now = crate::clock::now_ms();
        let mut due = job("b", "p2", "p");
        due.not_before = Some(now - 1);
        assert!(p.queued(due, None).is_empty(), "project p is building");
        // Waking at once would find nothing to start, again and again.
        assert_eq!(p.next_due(now), None);
        assert_eq!(started(&p.finished("a")), ["b"]);
    }

    #[test]
    fn a_canceled_job_leaves_the_queue_or_has_its_build_stopped() {
        let mut p = Plan::new(1);
        assert_eq!(started(&p.queued(job("a", "h1", "p"), None)), ["a"]);
        assert!(p.queued(job("b", "h2", "p"), None).is_empty());
        assert!(p.canceled("b").is_empty());
        assert!(!p.holds("b"));
        assert_eq!(p.canceled("a"), vec![Action::Cancel("a".into())]);
        assert!(p.canceled("gone").is_empty());
    }

    #[test]
    fn one_build_per_project_and_parallel_projects() {
        let mut p = Plan::new(2);
        assert_eq!(started(&p.queued(job("a1", "ha", "A"), None)), ["a1"]);
        assert!(started(&p.queued(job("a2", "hb", "A"), None)).is_empty());
        assert_eq!(started(&p.queued(job("b1", "hc", "B"), None)), ["b1"]);
        assert!(started(&p.queued(job("c1", "hd", "C"), None)).is_empty());
        // A finishes: the next A job is older than C's, but the worker goes to the first
        // runnable job in queue order, which is a2.
        assert_eq!(started(&p.finished("a1")), ["a2"]);
        assert_eq!(started(&p.finished("b1")), ["c1"]);
        assert_eq!(p.running_len(), 2);
    }

    #[test]
    fn superseding_a_pending_job_drops_it_and_a_running_one_is_stopped() {
        let mut p = Plan::new(1);
        p.queued(job("x1", "h", "A"), None);
        p.queued(job("y1", "g", "B"), None);
        assert_eq!(p.pending_len(), 1);
        let actions = p.queued(job("y2", "g", "B"), Some("y1"));
        assert!(actions.is_empty());
        assert_eq!(p.pending_len(), 1);
        let actions = p.queued(job("x2", "h", "A"), Some("x1"));
        assert_eq!(actions, vec![Action::Stop("x1".into())]);
        assert_eq!(started(&p.finished("x1")), ["y2"]);
        assert_eq!(started(&p.finished("y2")), ["x2"]);
    }

    #[test]
    fn draining_starts_nothing() {
        let mut p = Plan::new(1);
        p.queued(job("a", "h", "A"), None);
        p.queued(job("b", "g", "B"), None);
        p.drain();
        assert!(p.finished("a").is_empty());
        assert_eq!(p.pending_len(), 1);
    }
}
