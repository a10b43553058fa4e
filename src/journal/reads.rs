//! Read queries: a job, the hooks, the open jobs, counts per state, the notification outbox,
//! and filtered listings ([`JobFilter`]). Each runs in its own read transaction, so readers
//! never block the writer and always see whole batches; a failure is a [`ReadError`] naming
//! the query.

use super::error::{JournalError, ReadError};
use super::records::{Hook, JobRow, JobState};
use super::schema::{
    decode_hook, decode_job, COUNTERS, HOOKS, JOBS, JOBS_BY_HOOK, JOBS_BY_PROJECT, JOBS_BY_SEQ,
    OPEN_BY_HOOK, OUTBOX,
};
use super::{current, Journal};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

/// Most index entries one listing scans when a filter skips rows.
const MAX_LIST_SCAN: usize = 20_000;

/// The most jobs one listing returns (`limit`, the status listener's and the CLI's).
pub const MAX_LIST_LIMIT: usize = 500;

/// A listing request; `limit` is already validated (1 to [`MAX_LIST_LIMIT`]).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub hook: Option<String>,
    pub project: Option<String>,
    pub state: Option<JobState>,
    pub limit: usize,
    /// Only jobs with a smaller sequence number (the cursor of the previous page).
    pub before: Option<u64>,
}

impl JobFilter {
    fn matches(&self, row: &JobRow) -> bool {
        self.hook.as_ref().is_none_or(|h| *h == row.job.hook_id)
            && self.project.as_ref().is_none_or(|p| *p == row.job.project)
            && self.state.is_none_or(|s| s == row.job.state)
    }
}

impl Journal {
    /// Runs `body` in a read transaction; a failure is a [`ReadError`] about `query`.
    fn query<T>(
        &self,
        query: &'static str,
        body: impl FnOnce(&ReadTransaction) -> Result<T, JournalError>,
    ) -> Result<T, ReadError> {
        let run = || {
            // The transaction, not this reference, keeps what it reads alive: the writer may
            // replace the database meanwhile (see `Writer::reopen`).
            let txn = current(&self.db)?.begin_read()?;
            body(&txn)
        };
        run().map_err(|cause| ReadError { query, cause })
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, ReadError> {
        self.query("a job", |txn| {
            let jobs = txn.open_table(JOBS)?;
            Ok(match jobs.get(id)? {
                Some(raw) => Some(decode_job(id, raw.value())?),
                None => None,
            })
        })
    }

    pub fn hooks(&self) -> Result<Vec<Hook>, ReadError> {
        self.query("the hooks", |txn| {
            let hooks = txn.open_table(HOOKS)?;
            let by_hook = txn.open_table(JOBS_BY_HOOK)?;
            let jobs = txn.open_table(JOBS)?;
            let mut out = Vec::new();
            for entry in hooks.iter()? {
                let (key, raw) = entry?;
                let mut hook = decode_hook(key.value(), raw.value())?.hook;
                // The last trigger is the newest job's creation: retention keeps at least one
                // job per hook (keep_jobs >= 1), and every trigger makes a job.
                let id = hook.id.as_str();
                if let Some(newest) = by_hook.range((id, 0)..=(id, u64::MAX))?.next_back() {
                    let job_id = newest?.1;
                    if let Some(raw) = jobs.get(job_id.value())? {
                        let row = decode_job(job_id.value(), raw.value())?;
                        hook.last_triggered_at = Some(row.job.created_at);
                    }
                }
                out.push(hook);
            }
            out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(out)
        })
    }

    /// Every open job, oldest first: what the scheduler rebuilds its queue from at start-up.
    pub fn open_jobs(&self) -> Result<Vec<JobRow>, ReadError> {
        self.query("the open jobs", |txn| {
            let open = txn.open_table(OPEN_BY_HOOK)?;
            let jobs = txn.open_table(JOBS)?;
            let mut out = Vec::new();
            for entry in open.iter()? {
                let (_, job_id) = entry?;
                if let Some(raw) = jobs.get(job_id.value())? {
                    out.push(decode_job(job_id.value(), raw.value())?);
                }
            }
            out.sort_by_key(|r| r.seq);
            Ok(out)
        })
    }

    /// Number of jobs per state.
    pub fn state_counts(&self) -> Result<Vec<(JobState, u64)>, ReadError> {
        self.query("the job counts", |txn| {
            let counters = txn.open_table(COUNTERS)?;
            JobState::ALL
                .into_iter()
                .map(|s| Ok((s, counters.get(s.counter_key())?.map_or(0, |v| v.value()))))
                .collect()
        })
    }

    /// The notifications not yet sent or given up: job id and when each is next due (Unix ms),
    /// soonest first.
    pub fn outbox(&self) -> Result<Vec<(String, u64)>, ReadError> {
        self.query("the notification outbox", |txn| {
            let outbox = txn.open_table(OUTBOX)?;
            let mut out = Vec::new();
            for entry in outbox.iter()? {
                let (id, due) = entry?;
                out.push((id.value().to_string(), due.value()));
            }
            out.sort_by_key(|(id, due)| (*due, id.clone()));
            Ok(out)
        })
    }

    /// How many notifications are waiting to be sent.
    pub fn notifications_pending(&self) -> Result<u64, ReadError> {
        self.query("the notification outbox", |txn| {
            Ok(txn.open_table(OUTBOX)?.len()?)
        })
    }

    /// Jobs newest first, filtered, from the index that fits the filter best. Returns the rows
    /// and the cursor to pass as `before` for the next page, if there may be one.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<(Vec<JobRow>, Option<u64>), ReadError> {
        self.query("a job listing", |txn| list(txn, filter))
    }
}

fn list(
    txn: &ReadTransaction,
    filter: &JobFilter,
) -> Result<(Vec<JobRow>, Option<u64>), JournalError> {
    let jobs = txn.open_table(JOBS)?;
    let before = filter.before.unwrap_or(u64::MAX);
    let mut rows = Vec::new();
    let mut scanned = 0usize;
    let mut last_seq = None;
    let mut exhausted = true;
    let mut visit = |seq: u64, id: &str| -> Result<bool, JournalError> {
        scanned += 1;
        last_seq = Some(seq);
        if let Some(raw) = jobs.get(id)? {
            let row = decode_job(id, raw.value())?;
            if filter.matches(&row) {
                rows.push(row);
            }
        }
        Ok(rows.len() < filter.limit && scanned < MAX_LIST_SCAN)
    };
    // The per-hook and per-project indexes have the same shape: (key, seq) -> id.
    let keyed = match (&filter.hook, &filter.project) {
        (Some(hook), _) => Some((JOBS_BY_HOOK, hook)),
        (None, Some(project)) => Some((JOBS_BY_PROJECT, project)),
        (None, None) => None,
    };
    if let Some((table, wanted)) = keyed {
        let index = txn.open_table(table)?;
        for entry in index
            .range((wanted.as_str(), 0)..(wanted.as_str(), before))?
            .rev()
        {
            let (key, id) = entry?;
            if !visit(key.value().1, id.value())? {
                exhausted = false;
                break;
            }
        }
    } else {
        let index = txn.open_table(JOBS_BY_SEQ)?;
        for entry in index.range(0..before)?.rev() {
            let (seq, id) = entry?;
            if !visit(seq.value(), id.value())? {
                exhausted = false;
                break;
            }
        }
    }
    let next = if exhausted { None } else { last_seq };
    Ok((rows, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::{hook, journal, trigger, Dir};
    use crate::journal::{JournalError, Op, Outcome};

    #[test]
    fn listing_pages_newest_first_and_prune_keeps_the_newest() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        for i in 0..10 {
            trigger(&j, "s1", &format!("J{i:02}"));
        }
        let filter = JobFilter {
            hook: Some("hook_a".into()),
            limit: 4,
            ..Default::default()
        };
        let (page, next) = j.list_jobs(&filter).unwrap();
        let ids: Vec<_> = page.iter().map(|r| r.job.id.as_str()).collect();
        assert_eq!(ids, ["J09", "J08", "J07", "J06"]);
        let (page2, _) = j
            .list_jobs(&JobFilter {
                before: next,
                ..filter.clone()
            })
            .unwrap();
        assert_eq!(page2[0].job.id, "J05");
        let counts = j.state_counts().unwrap();
        assert_eq!(counts[0], (JobState::Pending, 1));
        assert_eq!(counts[4], (JobState::Canceled, 9));

        let Outcome::Pruned(gone) = j.submit(Op::Prune { keep: 3 }).unwrap() else {
            panic!()
        };
        assert_eq!(gone.len(), 7);
        let (all, next) = j
            .list_jobs(&JobFilter {
                limit: 50,
                ..Default::default()
            })
            .unwrap();
        let ids: Vec<_> = all.iter().map(|r| r.job.id.as_str()).collect();
        assert_eq!(ids, ["J09", "J08", "J07"]);
        assert_eq!(next, None);
        assert_eq!(j.state_counts().unwrap()[4], (JobState::Canceled, 2));
    }

    #[test]
    fn a_row_that_cannot_be_decoded_fails_the_read_that_meets_it() {
        let dir = Dir::new();
        let (j, mut w) = Journal::open(&dir.path().join("j.redb")).unwrap();
        w.commit_now(vec![
            crate::journal::testing::hook_op("hook_a", "s1"),
            crate::journal::testing::trigger_op("s1", "J1"),
        ]);
        let db = current(&j.db).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(JOBS)
            .unwrap()
            .insert("J1", &b"{\"seq\":"[..])
            .unwrap();
        txn.commit().unwrap();
        let err = j
            .list_jobs(&JobFilter {
                limit: 10,
                ..JobFilter::default()
            })
            .unwrap_err();
        assert_eq!(err.query, "a job listing");
        assert!(
            matches!(&err.cause, JournalError::Corrupt { table: "jobs", key, .. } if key == "J1"),
            "{err:?}"
        );
        assert!(!err.cause.is_transient());
        assert!(j.job("J1").is_err());
        // Reads that do not meet the row still work.
        assert_eq!(j.job("J2").unwrap(), None);
        assert_eq!(j.state_counts().unwrap()[0], (JobState::Pending, 1));
        drop(db);
    }
}
