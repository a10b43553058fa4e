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
