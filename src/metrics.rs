//! Process-wide counters and histograms, updated lock-free by the threads that observe the
//! events and rendered in the Prometheus text format by the status listener.

use crate::journal::{JobState, NotificationState, Outcome};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Outcome labels of `deployhook_triggers_total`.
#[derive(Clone, Copy, Debug)]
pub enum TriggerResult {
    Accepted,
    NotFound,
    Unavailable,
}

impl TriggerResult {
    const ALL: [TriggerResult; 3] = [
        TriggerResult::Accepted,
        TriggerResult::NotFound,
        TriggerResult::Unavailable,
    ];
    fn label(self) -> &'static str {
        match self {
            TriggerResult::Accepted => "accepted",
            TriggerResult::NotFound => "not_found",
            TriggerResult::Unavailable => "unavailable",
        }
    }
}

/// A histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const BUILD_BOUNDS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
const COMMIT_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct Metrics {
    triggers: [AtomicU64; 3],
    jobs_entered: [AtomicU64; 5],
    /// Notification attempts recorded: sent, failed (to be retried), given up.
    notifications: [AtomicU64; 3],
    pub queue_depth: AtomicU64,
    /// Callers holding a long poll on a hook URL (`?wait=N`).
    pub waiting_callers: AtomicU64,
    pub workers_busy: AtomicU64,
    pub workers_total: AtomicU64,
    /// Journal commits that wrote something, and the ops they wrote.
    pub commits: AtomicU64,
    pub committed_ops: AtomicU64,
    /// Retention passes started (each looks for finished jobs past `keep_jobs`).
    pub retention_passes: AtomicU64,
    /// Rollbacks done (`deployhook rollback`), all projects.
    pub rollbacks: AtomicU64,
    pub build_duration: Histogram,
    pub commit_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            triggers: Default::default(),
            jobs_entered: Default::default(),
            notifications: Default::default(),
            queue_depth: AtomicU64::new(0),
            waiting_callers: AtomicU64::new(0),
            workers_busy: AtomicU64::new(0),
            workers_total: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            committed_ops: AtomicU64::new(0),
            retention_passes: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            build_duration: Histogram::new(BUILD_BOUNDS),
            commit_duration: Histogram::new(COMMIT_BOUNDS),
        }
    }
}

fn state_index(state: JobState) -> usize {
    JobState::ALL.iter().position(|&s| s == state).unwrap_or(0)
}

impl Metrics {
    pub fn trigger(&self, result: TriggerResult) {
        self.triggers[result as usize].fetch_add(1, Relaxed);
    }

    /// A number that changes whenever a job changes state, its notification is attempted, or
    /// a rollback changes what is live (live pages watch it).
    pub fn changes(&self) -> u64 {
        let count = |counters: &[AtomicU64]| counters.iter().map(|n| n.load(Relaxed)).sum::<u64>();
        count(&self.jobs_entered) + count(&self.notifications) + self.rollbacks.load(Relaxed)
    }

    /// A job entered `state` (created as PENDING, started, or finished).
    pub fn job_entered(&self, state: JobState) {
        self.jobs_entered[state_index(state)].fetch_add(1, Relaxed);
    }

    /// Counts the job states a journal commit entered.
    pub fn after_commit(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Triggered { superseded, .. } => {
                self.job_entered(JobState::Pending);
                if superseded.is_some() {
                    self.job_entered(JobState::Canceled);
                }
            }
            Outcome::Started(_) => self.job_entered(JobState::Building),
            Outcome::Finished(row) => self.job_entered(row.job.state),
            Outcome::Canceled { .. } => self.job_entered(JobState::Canceled),
            Outcome::Notified(Some(row)) => {
                if let Some(n) = &row.job.notification {
                    let index = match n.state {
                        NotificationState::Sent => 0,
                        NotificationState::Pending => 1,
                        NotificationState::Failed => 2,
                    };
                    self.notifications[index].fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
    }

    pub fn commit(&self, ops: usize, seconds: f64) {
        self.commits.fetch_add(1, Relaxed);
        self.committed_ops.fetch_add(ops as u64, Relaxed);
        self.commit_duration.observe(seconds);
    }

    /// The Prometheus text exposition; `journal_bytes` and `notifications_pending` are read
    /// from the journal by the caller.
    pub fn render(&self, journal_bytes: u64, notifications_pending: u64) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP deployhook_triggers_total Hook URL requests by result.\n");
        out.push_str("# TYPE deployhook_triggers_total counter\n");
        for r in TriggerResult::ALL {
            let n = self.triggers[r as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "deployhook_triggers_total{{result=\"{}\"}} {n}",
                r.label()
            );
        }
        out.push_str("# HELP deployhook_jobs_total Jobs that entered each state.\n");
        out.push_str("# TYPE deployhook_jobs_total counter\n");
        for s in JobState::ALL {
            let n = self.jobs_entered[state_index(s)].load(Relaxed);
            let _ = writeln!(out, "deployhook_jobs_total{{state=\"{}\"}} {n}", s.as_str());
        }
        let scalars = [
            (
                "deployhook_queue_depth",
                "gauge",
                "Jobs waiting for a build thread.",
                self.queue_depth.load(Relaxed),
            ),
            (
                "deployhook_waiting_callers",
                "gauge",
                "Callers holding a long poll for a job's end on a hook URL.",
                self.waiting_callers.load(Relaxed),
            ),
            (
                "deployhook_workers_busy",
                "gauge",
                "Build threads running a job.",
                self.workers_busy.load(Relaxed),
            ),
            (
                "deployhook_workers",
                "gauge",
                "Build threads configured.",
                self.workers_total.load(Relaxed),
            ),
            (
                "deployhook_journal_bytes",
                "gauge",
                "Bytes the journal takes on disk (database and write-ahead log).",
                journal_bytes,
            ),
            (
                "deployhook_notifications_pending",
                "gauge",
                "Notifications not yet sent: due, or waiting to be tried again.",
                notifications_pending,
            ),
            (
                "deployhook_journal_commits_total",
                "counter",
                "Journal commits that wrote something.",
                self.commits.load(Relaxed),
            ),
            (
                "deployhook_journal_ops_total",
                "counter",
                "Journal operations that changed it (ops / commits = batch size).",
                self.committed_ops.load(Relaxed),
            ),
            (
                "deployhook_notifications_sent_total",
                "counter",
                "Notifications whose command exited 0.",
                self.notifications[0].load(Relaxed),
            ),
            (
                "deployhook_notification_failures_total",
                "counter",
                "Runs of a notify command that failed and are to be retried.",
                self.notifications[1].load(Relaxed),
            ),
            (
                "deployhook_notifications_given_up_total",
                "counter",
                "Notifications given up: a day of failed retries, or no notify command any more.",
                self.notifications[2].load(Relaxed),
            ),
            (
                "deployhook_retention_passes_total",
                "counter",
                "Retention passes (finished jobs past keep_jobs removed), every 0.5 s.",
                self.retention_passes.load(Relaxed),
            ),
            (
                "deployhook_rollbacks_total",
                "counter",
                "Rollbacks of a project's live release (deployhook rollback) since start.",
                self.rollbacks.load(Relaxed),
            ),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        self.build_duration.render(
            &mut out,
            "deployhook_build_duration_seconds",
            "Wall time of finished builds, clone included.",
        );
        self.commit_duration.render(
            &mut out,
            "deployhook_journal_commit_seconds",
            "Time of one journal group commit, fsync included.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.commit(3, 0.0007);
        m.commit(1, 0.3);
        let text = m.render(42, 0);
        assert!(text.contains("deployhook_journal_commit_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("deployhook_journal_commit_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("deployhook_journal_commit_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("deployhook_journal_ops_total 4\n"));
        assert!(text.contains("deployhook_journal_bytes 42\n"));
    }
}
