//! What the journal stores: jobs and their states, hooks, and the rows that wrap them with what
//! only deployhook needs. Plain data; how rows are laid out in tables is in [`super::schema`].

use crate::secret::SecretHash;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Pending,
    Building,
    Ready,
    Error,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Building,
        JobState::Ready,
        JobState::Error,
        JobState::Canceled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Ready | JobState::Error | JobState::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Building => "BUILDING",
            JobState::Ready => "READY",
            JobState::Error => "ERROR",
            JobState::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The `COUNTERS` key of the number of jobs in this state.
    pub(super) fn counter_key(self) -> &'static str {
        match self {
            JobState::Pending => "state.PENDING",
            JobState::Building => "state.BUILDING",
            JobState::Ready => "state.READY",
            JobState::Error => "state.ERROR",
            JobState::Canceled => "state.CANCELED",
        }
    }
}

/// A job as the API shows it: every key always present, `null` until known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    pub hook_id: String,
    pub project: String,
    pub branch: String,
    pub state: JobState,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub commit: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub canceled_by: Option<String>,
    /// Debounce: the job does not start before this time (`createdAt + debounce_secs`).
    /// Rows written before debounce existed have none.
    #[serde(default)]
    pub not_before: Option<u64>,
    /// The project's `notify` command for this job's end, when its state was listed in
    /// `notify_on` (rows written before notifications existed have none).
    #[serde(default)]
    pub notification: Option<Notification>,
}

/// Where a job's notification stands, as the job JSON shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub state: NotificationState,
    /// Runs of the command so far.
    pub attempts: u32,
    /// Why the last run failed (its exit status, a timeout), `None` once one succeeded.
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationState {
    /// Due, or waiting for its next attempt (it is in the outbox).
    Pending,
    /// The command exited 0.
    Sent,
    /// Every attempt for a day failed, or the project no longer has a `notify` command.
    Failed,
}

/// Which end states of a project's jobs notify (its `notify_on`). The journal keeps each
/// project's, so the commit that ends a job decides, and a replay decides the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyOn {
    pub ready: bool,
    pub error: bool,
    pub canceled: bool,
    /// READY after an ERROR of the same hook (canceled jobs in between do not count).
    pub recovered: bool,
}

impl NotifyOn {
    /// The names `notify_on` accepts.
    pub const NAMES: [&'static str; 4] = ["READY", "ERROR", "CANCELED", "RECOVERED"];

    /// Adds the state named `name` (in any case); `false` if it is not one of [`NotifyOn::NAMES`].
    pub fn add(&mut self, name: &str) -> bool {
        let flag = match name.to_ascii_uppercase().as_str() {
            "READY" => &mut self.ready,
            "ERROR" => &mut self.error,
            "CANCELED" => &mut self.canceled,
            "RECOVERED" => &mut self.recovered,
            _ => return false,
        };
        *flag = true;
        true
    }

    /// Whether a job ending in `state` notifies; `after_error` says whether the hook's
    /// previous build ended in ERROR.
    pub(super) fn wants(self, state: JobState, after_error: bool) -> bool {
        match state {
            JobState::Ready => self.ready || (self.recovered && after_error),
            JobState::Error => self.error,
            JobState::Canceled => self.canceled,
            JobState::Pending | JobState::Building => false,
        }
    }
}

/// A stored job: the API record plus what only deployhook needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRow {
    pub seq: u64,
    pub hook_name: String,
    /// How many times a build was started (more than one after an interruption).
    pub attempts: u32,
    pub job: Job,
}

/// A hook as the API shows it; the secret is never part of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub id: String,
    pub name: String,
    pub project: String,
    pub branch: String,
    pub created_at: u64,
    pub last_triggered_at: Option<u64>,
}

/// A stored hook: the hook and the SHA-256 of its secret, in hex (never the secret itself).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HookRow {
    pub(super) secret_sha256: String,
    pub(super) hook: Hook,
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret hash written by [`hex`]; `None` if `s` is not 64 hex digits.
pub(super) fn unhex(s: &str) -> Option<SecretHash> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::hash_secret;

    #[test]
    fn secret_hashes_round_trip_through_hex() {
        let hash = hash_secret("Zq3Xv9Lm2Pp0Rr7Tt5Uu1Ww8Yy4Aa6Bb");
        assert_eq!(unhex(&hex(&hash)), Some(hash));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex(&"zz".repeat(32)), None);
    }

    #[test]
    fn states_parse_back_from_their_names() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(JobState::parse("pending"), None);
        let terminal: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [JobState::Ready, JobState::Error, JobState::Canceled]
        );
    }
}
