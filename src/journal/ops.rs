//! What can be asked of the journal's writer ([`Op`]), what it answers once the op is
//! committed ([`Outcome`]), and the figures it reports after each commit ([`CommitStats`]).
//! The rules each op follows are in [`super::apply`].

use super::records::{Hook, JobRow, JobState, NotifyOn};
use crate::secret::SecretHash;
use serde::{Deserialize, Serialize};

/// A change to the journal, applied by the writer thread (and kept in the write-ahead log as
/// JSON until a durable commit holds it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// Create a PENDING job for the hook with this secret, if it exists and belongs to
    /// `project`; cancel the hook's previous open job.
    Trigger {
        secret: SecretHash,
        project: String,
        job_id: String,
        now: u64,
        /// Debounce: when the job may start (absent in log records written before it existed).
        #[serde(default)]
        not_before: Option<u64>,
    },
    CreateHook {
        hook: Hook,
        secret: SecretHash,
    },
    RevokeHook {
        id: String,
    },
    /// PENDING -> BUILDING.
    Start {
        job_id: String,
        now: u64,
    },
    SetCommit {
        job_id: String,
        commit: String,
    },
    /// BUILDING -> a terminal state.
    Finish {
        job_id: String,
        state: JobState,
        exit_code: Option<i32>,
        error: Option<String>,
        now: u64,
    },
    /// BUILDING -> PENDING: the build was stopped by a shutdown and starts over later.
    Requeue {
        job_id: String,
    },
    /// Remove the oldest finished jobs of every hook that has more than `keep`.
    Prune {
        keep: usize,
    },
    /// An operator's trigger (`hooks trigger`): as [`Op::Trigger`], for the hook with this id.
    TriggerHook {
        hook_id: String,
        job_id: String,
        now: u64,
        #[serde(default)]
        not_before: Option<u64>,
    },
    /// Gives a hook a new secret; the old one is refused from this commit on.
    RotateSecret {
        id: String,
        secret: SecretHash,
    },
    /// An operator's cancel (`jobs cancel`): PENDING or BUILDING -> CANCELED.
    Cancel {
        job_id: String,
        now: u64,
    },
    /// Replaces every project's notification policy (at start and after a reload): jobs that
    /// end from this commit on notify by it.
    SetNotifyPolicy {
        projects: Vec<(String, NotifyOn)>,
    },
    /// The outcome of one run of a job's `notify` command.
    Notified {
        job_id: String,
        attempt: Attempt,
    },
    /// Changes nothing: proves the writer thread still answers (watchdog).
    Probe,
    /// Commits its batch to redb durably, so that the database file alone holds everything
    /// (at shutdown: a backup of the stopped daemon's `journal.redb` is then complete).
    Checkpoint,
}

/// How one run of a `notify` command went, and what comes next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attempt {
    /// It exited 0: the notification is sent.
    Sent,
    /// It failed; it runs again at `retry_at` (Unix ms), or never (`None`: given up).
    Failed {
        error: String,
        retry_at: Option<u64>,
    },
}

/// What an op did, once committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Triggered {
        row: JobRow,
        /// The open job this trigger canceled, and whether it was building.
        superseded: Option<(String, JobState)>,
    },
    HookCreated,
    HookRevoked,
    /// The hook's secret was replaced; `old` is refused from now on.
    SecretRotated {
        old: SecretHash,
    },
    /// An operator canceled the job, which was in state `from`.
    Canceled {
        row: JobRow,
        from: JobState,
    },
    Started(JobRow),
    CommitSet,
    Finished(JobRow),
    Requeued,
    NotifyPolicySet,
    /// A notification attempt was recorded; the job as it now stands (`None`: the job was
    /// gone, and its stray outbox row was removed).
    Notified(Option<JobRow>),
    Pruned(Vec<String>),
    Checkpointed,
    /// The hook, job or secret does not exist (or does not match).
    NotFound,
    /// The job is in a state the op does not apply to (e.g. canceled before it started).
    NotApplicable,
}

impl Outcome {
    /// Whether the op changed the journal (so its batch is committed and logged).
    pub(super) fn changes(&self) -> bool {
        match self {
            // A retention pass that finds nothing to remove is NotApplicable.
            Outcome::NotFound | Outcome::NotApplicable => false,
            _ => true,
        }
    }
}

/// Figures the writer reports after each commit.
pub struct CommitStats {
    /// Ops that changed the journal (none: nothing was written, the transaction was dropped).
    pub wrote: usize,
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_empty_retention_passes_change_nothing() {
        assert!(!Outcome::NotFound.changes());
        assert!(!Outcome::NotApplicable.changes());
        assert!(Outcome::HookCreated.changes());
        assert!(Outcome::Checkpointed.changes());
        assert!(Outcome::Pruned(vec!["J1".into()]).changes());
    }

    #[test]
    fn ops_round_trip_through_their_log_encoding() {
        let op = Op::Finish {
            job_id: "J1".into(),
            state: JobState::Error,
            exit_code: Some(2),
            error: Some("build failed".into()),
            now: 7,
        };
        let back: Op = serde_json::from_slice(&serde_json::to_vec(&op).unwrap()).unwrap();
        assert!(matches!(
            back,
            Op::Finish {
                state: JobState::Error,
                exit_code: Some(2),
                now: 7,
                ..
            }
        ));
    }
}
