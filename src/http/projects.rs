//! What each configured project's recent jobs say: its last job, when it last succeeded and
//! failed, how many builds in a row have failed, and the durations of its last builds. Read
//! from the journal on each request (newest jobs first, a bounded number of them), so the view
//! and the per-project metrics need no state of their own and restarts do not reset them.
//! For a project that publishes, what is live and which releases are kept are read from its
//! target folder (`current` and `releases/`), the commit from the live job's row.

use crate::config::Publish;
use crate::journal::{JobFilter, JobRow, JobState, Journal, ReadError};
use crate::publish;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Builds shown in a project's duration chart.
pub const CHART_BUILDS: usize = 30;
/// Jobs read per project at most (retention keeps `keep_jobs` per hook anyway).
const MAX_JOBS_READ: usize = 2_000;
const PAGE: usize = 500;

/// One project's recent history.
#[derive(Debug, Default)]
pub struct Summary {
    pub name: String,
    /// The newest job, whatever its state.
    pub last_job: Option<JobRow>,
    pub last_success_at: Option<u64>,
    pub last_failure_at: Option<u64>,
    /// `ERROR` builds since the last `READY` one (canceled jobs do not count either way).
    pub consecutive_failures: u64,
    /// The last finished builds, newest first: state and seconds.
    pub builds: Vec<(JobState, f64)>,
    /// The release `current` names, for a project that publishes.
    pub live: Option<LiveRelease>,
    /// The releases kept, newest first (empty without `publish`).
    pub releases: Vec<String>,
    /// Whether the project has `publish` (its card then says what is live).
    pub publishes: bool,
}

/// The live release of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRelease {
    pub job_id: String,
    /// The job's commit, while the journal still has the job.
    pub commit: Option<String>,
    /// When `current` was switched to it (Unix ms).
    pub since: u64,
}

impl Summary {
    /// Kept releases newer than the live one: more than 0 after a rollback.
    pub fn newer_than_live(&self) -> Option<usize> {
        let live = self.live.as_ref()?;
        Some(self.releases.iter().filter(|r| **r > live.job_id).count())
    }
}

pub fn summarize(
    journal: &Journal,
    project: &str,
    publish: Option<&Publish>,
) -> Result<Summary, ReadError> {
    let mut summary = Summary {
        name: project.to_string(),
        ..Summary::default()
    };
    summary.publishes = publish.is_some();
    if let Some(spec) = publish {
        // An unreadable target shows as nothing published; the job logs say why.
        summary.releases = publish::releases(&spec.to).unwrap_or_default();
        if let Ok(Some(live)) = publish::live(&spec.to) {
            summary.live = Some(LiveRelease {
                commit: journal.job(&live.job_id)?.and_then(|r| r.job.commit),
                job_id: live.job_id,
                since: live.since,
            });
        }
    }
    let mut filter = JobFilter {
        project: Some(project.to_string()),
        limit: PAGE,
        ..JobFilter::default()
    };
    let mut read = 0;
    let mut streak_open = true;
    loop {
        let (rows, next) = journal.list_jobs(&filter)?;
        read += rows.len();
        for row in rows {
            summary.note(&row, &mut streak_open);
            if summary.last_job.is_none() {
                summary.last_job = Some(row);
            }
        }
        let done = summary.last_success_at.is_some()
            && summary.last_failure_at.is_some()
            && summary.builds.len() >= CHART_BUILDS;
        match next {
            Some(cursor) if !done && read < MAX_JOBS_READ => filter.before = Some(cursor),
            _ => return Ok(summary),
        }
    }
}

impl Summary {
    /// Counts one job, visited newest first.
    fn note(&mut self, row: &JobRow, streak_open: &mut bool) {
        let job = &row.job;
        let finished = job.finished_at;
        match job.state {
            JobState::Ready => {
                self.last_success_at = self.last_success_at.or(finished);
                *streak_open = false;
            }
            JobState::Error => {
                self.last_failure_at = self.last_failure_at.or(finished);
                if *streak_open {
                    self.consecutive_failures += 1;
                }
            }
            _ => {}
        }
        if let (Some(start), Some(end)) = (job.started_at, finished) {
            if self.builds.len() < CHART_BUILDS {
                self.builds
                    .push((job.state, end.saturating_sub(start) as f64 / 1000.0));
            }
        }
    }

    /// The project as `GET /projects` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "live": self.live.as_ref().map(|l| json!({
                "jobId": l.job_id,
                "commit": l.commit,
                "since": l.since,
            })),
            "releases": self.releases,
            "lastJob": self.last_job.as_ref().map(|r| json!({
                "id": r.job.id,
                "state": r.job.state.as_str(),
                "finishedAt": r.job.finished_at,
            })),
            "lastSuccessAt": self.last_success_at,
            "lastFailureAt": self.last_failure_at,
            "consecutiveFailures": self.consecutive_failures,
        })
    }
}

/// One per-project gauge's value, if the project has one.
type Gauge = fn(&Summary) -> Option<f64>;

/// The per-project lines of `/metrics`, in the Prometheus text format.
pub fn metrics(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let series: [(&str, &str, Gauge); 5] = [
        (
            "deployhook_project_last_success_timestamp_seconds",
            "When the project's last READY build finished (Unix seconds).",
            |s| s.last_success_at.map(|t| t as f64 / 1000.0),
        ),
        (
            "deployhook_project_last_failure_timestamp_seconds",
            "When the project's last ERROR build finished (Unix seconds).",
            |s| s.last_failure_at.map(|t| t as f64 / 1000.0),
        ),
        (
            "deployhook_project_consecutive_failures",
            "ERROR builds of the project since its last READY one.",
            |s| Some(s.consecutive_failures as f64),
        ),
        (
            "deployhook_project_live_release_timestamp_seconds",
            "When current was switched to the project's live release (Unix seconds).",
            |s| s.live.as_ref().map(|l| l.since as f64 / 1000.0),
        ),
        (
            "deployhook_project_releases_newer_than_live",
            "Kept releases newer than the live one: above 0 after a rollback.",
            |s| s.newer_than_live().map(|n| n as f64),
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in summaries {
            if let Some(v) = value(s) {
                let _ = writeln!(out, "{name}{{project=\"{}\"}} {v}", s.name);
            }
        }
    }
    out
}
