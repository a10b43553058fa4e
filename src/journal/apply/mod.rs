//! Applying a batch of ops to the tables, in the writer's transaction: the only code that
//! changes the journal's tables, so the only place that keeps its invariants.
//!
//! - A job's state only moves forward: PENDING -> BUILDING -> READY | ERROR | CANCELED, with one
//!   exception, [`Op::Requeue`] (BUILDING -> PENDING at shutdown). Terminal states never change.
//! - A hook has at most one open (PENDING or BUILDING) job: a trigger cancels the previous one
//!   in the same transaction that creates the new job ("newest wins"). `OPEN_BY_HOOK` holds it,
//!   so start-up reads only open jobs, whatever the history.
//! - Every job is indexed by sequence number, by hook and by project, so listings are range
//!   scans; the per-state and per-hook counters move with every change they count.
//! - An op sees the changes of the ops before it in its batch.

mod hooks;
mod notifications;

use super::error::JournalError;
use super::ops::{Op, Outcome};
use super::records::{Hook, Job, JobRow, JobState, NotificationState, NotifyOn};
use super::schema::{
    decode_job, encode, COUNTERS, HOOKS, HOOK_JOB_COUNTS, HOOK_SECRETS, JOBS, JOBS_BY_HOOK,
    JOBS_BY_PROJECT, JOBS_BY_SEQ, NOTIFY_POLICY, OPEN_BY_HOOK, OUTBOX, REVOKED_SECRETS, SEQ,
    WAL_SEQ,
};
use crate::secret::SecretHash;
use redb::{ReadableTable, Table, WriteTransaction};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Most jobs one prune op removes, so retention never makes one huge transaction.
pub const MAX_PRUNE_PER_OP: usize = 256;

/// Applies `ops` in `txn`, one after the other, and marks the transaction as holding batch
/// `seq` of the write-ahead log if any op changed something.
pub(super) fn apply_batch<'a>(
    txn: &WriteTransaction,
    ops: impl Iterator<Item = &'a Op>,
    seq: u64,
) -> Result<Vec<Outcome>, JournalError> {
    let mut tables = Tables::open(txn)?;
    let outcomes = ops
        .map(|op| tables.apply(op))
        .collect::<Result<Vec<_>, _>>()?;
    if outcomes.iter().any(Outcome::changes) {
        tables.counters.insert(WAL_SEQ, seq)?;
    }
    tables.flush()?;
    Ok(outcomes)
}

/// Every table, opened once per write transaction.
struct Tables<'t> {
    hooks: Table<'t, &'static str, &'static [u8]>,
    secrets: Table<'t, &'static [u8], &'static str>,
    /// Secrets of revoked hooks, kept for the log's reasons only.
    revoked: Table<'t, &'static [u8], &'static str>,
    jobs: Table<'t, &'static str, &'static [u8]>,
    by_seq: Table<'t, u64, &'static str>,
    by_hook: Table<'t, (&'static str, u64), &'static str>,
    by_project: Table<'t, (&'static str, u64), &'static str>,
    open: Table<'t, &'static str, &'static str>,
    hook_counts: Table<'t, &'static str, u64>,
    counters: Table<'t, &'static str, u64>,
    /// Each project's notification policy, and the notifications due.
    notify_policy: Table<'t, &'static str, &'static [u8]>,
    outbox: Table<'t, &'static str, u64>,
    /// Policies read in this batch, by project.
    policy_cache: HashMap<String, NotifyOn>,
    /// Job rows and counters changed by this batch, written once by [`Tables::flush`] instead
    /// of a read and a write per op.
    unflushed: BatchChanges,
    /// Hooks looked up in this batch, by secret hash; a revocation removes its entry.
    hook_cache: HashMap<SecretHash, Arc<Hook>>,
}

/// What a batch changed and has not written to the tables yet.
#[derive(Default)]
struct BatchChanges {
    /// Job rows changed by this batch, by id.
    rows: BTreeMap<String, JobRow>,
    /// Change of each per-state counter, by its `COUNTERS` key.
    states: HashMap<&'static str, i64>,
    /// The last job sequence number given out.
    seq: Option<u64>,
    /// Jobs added per hook, for retention's counts.
    hook_jobs: HashMap<String, u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, JournalError> {
        Ok(Tables {
            hooks: txn.open_table(HOOKS)?,
            secrets: txn.open_table(HOOK_SECRETS)?,
            revoked: txn.open_table(REVOKED_SECRETS)?,
            jobs: txn.open_table(JOBS)?,
            by_seq: txn.open_table(JOBS_BY_SEQ)?,
            by_hook: txn.open_table(JOBS_BY_HOOK)?,
            by_project: txn.open_table(JOBS_BY_PROJECT)?,
            open: txn.open_table(OPEN_BY_HOOK)?,
            hook_counts: txn.open_table(HOOK_JOB_COUNTS)?,
            counters: txn.open_table(COUNTERS)?,
            notify_policy: txn.open_table(NOTIFY_POLICY)?,
            outbox: txn.open_table(OUTBOX)?,
            policy_cache: HashMap::new(),
            unflushed: BatchChanges::default(),
            hook_cache: HashMap::new(),
        })
    }

    /// Writes the batch's job rows and counter changes; call before the commit (and before
    /// reading counters or scanning rows).
    fn flush(&mut self) -> Result<(), JournalError> {
        let changes = std::mem::take(&mut self.unflushed);
        for (id, row) in &changes.rows {
            let bytes = encode("a job row", row)?;
            self.jobs.insert(id.as_str(), bytes.as_slice())?;
        }
        for (key, delta) in changes.states {
            let old = self.counters.get(key)?.map_or(0, |v| v.value());
            self.counters
                .insert(key, old.saturating_add_signed(delta))?;
        }
        if let Some(seq) = changes.seq {
            self.counters.insert(SEQ, seq)?;
        }
        for (hook, added) in changes.hook_jobs {
            let old = self
                .hook_counts
                .get(hook.as_str())?
                .map_or(0, |v| v.value());
            self.hook_counts.insert(hook.as_str(), old + added)?;
        }
        Ok(())
    }

    fn next_seq(&mut self) -> Result<u64, JournalError> {
        let last = match self.unflushed.seq {
            Some(s) => s,
            None => self.counters.get(SEQ)?.map_or(0, |v| v.value()),
        };
        self.unflushed.seq = Some(last + 1);
        Ok(last + 1)
    }

    fn apply(&mut self, op: &Op) -> Result<Outcome, JournalError> {
        match op {
            Op::Trigger {
                secret,
                project,
                job_id,
                now,
                not_before,
            } => self.trigger(secret, project, job_id, (*now, *not_before)),
            Op::TriggerHook {
                hook_id,
                job_id,
                now,
                not_before,
            } => match self.hook_by_id(hook_id)? {
                Some(hook) => self.trigger_hook(hook, job_id, (*now, *not_before)),
                None => Ok(Outcome::NotFound),
            },
            Op::RotateSecret { id, secret } => self.rotate_secret(id, secret),
            Op::Cancel { job_id, now } => self.update_job(job_id, |row| {
                let from = row.job.state;
                if from.is_terminal() {
                    return None;
                }
                row.job.state = JobState::Canceled;
                row.job.canceled_by = None;
                row.job.error = Some("canceled by operator".into());
                row.job.finished_at = Some(*now);
                Some(move |row| Outcome::Canceled { row, from })
            }),
            Op::CreateHook { hook, secret } => self.create_hook(hook, secret),
            Op::RevokeHook { id } => self.revoke_hook(id),
            Op::Start { job_id, now } => self.update_job(job_id, |row| {
                if row.job.state != JobState::Pending {
                    return None;
                }
                row.job.state = JobState::Building;
                row.job.started_at = Some(*now);
                row.job.commit = None;
                row.attempts += 1;
                Some(Outcome::Started)
            }),
            Op::SetCommit { job_id, commit } => self.update_job(job_id, |row| {
                if row.job.state != JobState::Building {
                    return None;
                }
                row.job.commit = Some(commit.clone());
                Some(|_| Outcome::CommitSet)
            }),
            Op::Finish {
                job_id,
                state,
                exit_code,
                error,
                now,
            } => self.update_job(job_id, |row| {
                if row.job.state != JobState::Building || !state.is_terminal() {
                    return None;
                }
                row.job.state = *state;
                row.job.exit_code = *exit_code;
                row.job.error = error.clone();
                row.job.finished_at = Some(*now);
                Some(Outcome::Finished)
            }),
            Op::Requeue { job_id } => self.update_job(job_id, |row| {
                if row.job.state != JobState::Building {
                    return None;
                }
                row.job.state = JobState::Pending;
                row.job.started_at = None;
                row.job.commit = None;
                Some(|_| Outcome::Requeued)
            }),
            Op::Prune { keep } => self.prune(*keep),
            Op::SetNotifyPolicy { projects } => self.set_notify_policy(projects),
            Op::Notified { job_id, attempt } => self.notified(job_id, attempt),
            Op::Probe => Ok(Outcome::NotApplicable),
            Op::Checkpoint => Ok(Outcome::Checkpointed),
        }
    }

    fn get_job(&self, id: &str) -> Result<Option<JobRow>, JournalError> {
        if let Some(row) = self.unflushed.rows.get(id) {
            return Ok(Some(row.clone()));
        }
        Ok(match self.jobs.get(id)? {
            Some(raw) => Some(decode_job(id, raw.value())?),
            None => None,
        })
    }

    /// Stores a row at the end of the batch ([`Tables::flush`]): a trigger rewrites the job it
    /// supersedes, which is often the one the previous trigger of the same batch created, so
    /// each row is encoded and written once, in its final state, in id order.
    fn put_job(&mut self, row: JobRow) {
        self.unflushed.rows.insert(row.job.id.clone(), row);
    }

    fn bump(&mut self, key: &'static str, delta: i64) {
        *self.unflushed.states.entry(key).or_default() += delta;
    }

    /// Records a state change in the per-state counters and the open-job index; a job that
    /// ends gets its notification, if its project's policy lists the state.
    fn account(&mut self, row: &mut JobRow, from: Option<JobState>) -> Result<(), JournalError> {
        let to = row.job.state;
        if from == Some(to) {
            return Ok(());
        }
        if let Some(from) = from {
            self.bump(from.counter_key(), -1);
        }
        self.bump(to.counter_key(), 1);
        if to.is_terminal() {
            let is_open_one = self
                .open
                .get(row.job.hook_id.as_str())?
                .is_some_and(|v| v.value() == row.job.id);
            if is_open_one {
                self.open.remove(row.job.hook_id.as_str())?;
            }
            self.queue_notification(row)?;
        }
        Ok(())
    }

    /// Applies `change` to a stored job; `None` from it means "not applicable", else it gives
    /// what makes the outcome from the row as stored (notification included).
    fn update_job<O: FnOnce(JobRow) -> Outcome>(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut JobRow) -> Option<O>,
    ) -> Result<Outcome, JournalError> {
        let Some(mut row) = self.get_job(id)? else {
            return Ok(Outcome::NotFound);
        };
        let from = row.job.state;
        let Some(outcome) = change(&mut row) else {
            return Ok(Outcome::NotApplicable);
        };
        self.account(&mut row, Some(from))?;
        self.put_job(row.clone());
        Ok(outcome(row))
    }

    fn trigger(
        &mut self,
        secret: &SecretHash,
        project: &str,
        job_id: &str,
        times: (u64, Option<u64>),
    ) -> Result<Outcome, JournalError> {
        match self.hook_by_secret(secret)? {
            Some(hook) if hook.project == project => self.trigger_hook(hook, job_id, times),
            _ => Ok(Outcome::NotFound),
        }
    }

    /// A new PENDING job of `hook` (created `now`, not to start before `not_before`); the
    /// hook's open job, if any, is canceled by it.
    fn trigger_hook(
        &mut self,
        hook: Arc<Hook>,
        job_id: &str,
        (now, not_before): (u64, Option<u64>),
    ) -> Result<Outcome, JournalError> {
        let project = hook.project.as_str();
        let hook_id = hook.id.clone();
        // Newest wins: the hook's open job, if any, is canceled by this one.
        let previous = self
            .open
            .get(hook_id.as_str())?
            .map(|v| v.value().to_string());
        let mut superseded = None;
        if let Some(prev_id) = previous {
            if let Some(mut prev) = self.get_job(&prev_id)? {
                let from = prev.job.state;
                if !from.is_terminal() {
                    prev.job.state = JobState::Canceled;
                    prev.job.canceled_by = Some(job_id.to_string());
                    prev.job.finished_at = Some(now);
                    self.account(&mut prev, Some(from))?;
                    self.put_job(prev);
                    superseded = Some((prev_id, from));
                }
            }
        }
        let seq = self.next_seq()?;
        let mut row = JobRow {
            seq,
            hook_name: hook.name.clone(),
            attempts: 0,
            job: Job {
                id: job_id.to_string(),
                hook_id: hook_id.clone(),
                project: project.to_string(),
                branch: hook.branch.clone(),
                state: JobState::Pending,
                created_at: now,
                started_at: None,
                finished_at: None,
                commit: None,
                exit_code: None,
                error: None,
                canceled_by: None,
                not_before,
                notification: None,
            },
        };
        self.account(&mut row, None)?;
        self.put_job(row.clone());
        self.by_seq.insert(seq, job_id)?;
        self.by_hook.insert((hook_id.as_str(), seq), job_id)?;
        self.by_project.insert((project, seq), job_id)?;
        self.open.insert(hook_id.as_str(), job_id)?;
        *self.unflushed.hook_jobs.entry(hook_id).or_default() += 1;
        Ok(Outcome::Triggered { row, superseded })
    }

    fn prune(&mut self, keep: usize) -> Result<Outcome, JournalError> {
        self.flush()?;
        let mut over: Vec<(String, u64)> = Vec::new();
        for entry in self.hook_counts.iter()? {
            let (hook, count) = entry?;
            if count.value() > keep as u64 {
                over.push((hook.value().to_string(), count.value()));
            }
        }
        let mut removed = Vec::new();
        for (hook, count) in over {
            let excess = (count - keep as u64) as usize;
            let budget = excess.min(MAX_PRUNE_PER_OP - removed.len().min(MAX_PRUNE_PER_OP));
            let mut victims = Vec::new();
            for entry in self
                .by_hook
                .range((hook.as_str(), 0)..=(hook.as_str(), u64::MAX))?
            {
                if victims.len() == budget {
                    break;
                }
                let (key, id) = entry?;
                victims.push((key.value().1, id.value().to_string()));
            }
            let mut gone = 0u64;
            for (seq, id) in victims {
                let Some(row) = self.get_job(&id)? else {
                    continue;
                };
                // A job whose notification is still due stays until it is sent or given up.
                let notifying = row
                    .job
                    .notification
                    .as_ref()
                    .is_some_and(|n| n.state == NotificationState::Pending);
                if !row.job.state.is_terminal() || notifying {
                    continue;
                }
                self.jobs.remove(id.as_str())?;
                self.by_seq.remove(seq)?;
                self.by_hook.remove((hook.as_str(), seq))?;
                self.by_project.remove((row.job.project.as_str(), seq))?;
                self.bump(row.job.state.counter_key(), -1);
                gone += 1;
                removed.push(id);
            }
            self.hook_counts.insert(hook.as_str(), count - gone)?;
            if removed.len() >= MAX_PRUNE_PER_OP {
                break;
            }
        }
        if removed.is_empty() {
            Ok(Outcome::NotApplicable)
        } else {
            Ok(Outcome::Pruned(removed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::{hook, hook_op, journal, open_ids, trigger, trigger_op, Dir};
    use crate::journal::{JobFilter, Journal};

    #[test]
    fn one_batch_sees_its_own_jobs_and_revocations() {
        let dir = Dir::new();
        let (j, mut w) = Journal::open(&dir.path().join("j.redb")).unwrap();
        let out = w.commit_now(vec![
            hook_op("hook_a", "s1"),
            trigger_op("s1", "J1"),
            trigger_op("s1", "J2"),
            Op::RevokeHook {
                id: "hook_a".into(),
            },
            trigger_op("s1", "J3"),
        ]);
        assert_eq!(out[0], Outcome::HookCreated);
        assert!(matches!(
            &out[1],
            Outcome::Triggered {
                superseded: None,
                ..
            }
        ));
        // J1 was created by this same batch and not yet written: J2 still finds and cancels it.
        assert!(matches!(
            &out[2],
            Outcome::Triggered { superseded: Some((id, JobState::Pending)), .. } if id == "J1"
        ));
        assert_eq!(out[3], Outcome::HookRevoked);
        // The batch's hook cache forgets a revoked hook at once.
        assert_eq!(out[4], Outcome::NotFound);
        let j1 = j.job("J1").unwrap().unwrap();
        assert_eq!(j1.job.state, JobState::Canceled);
        assert_eq!(j1.job.canceled_by.as_deref(), Some("J2"));
        assert_eq!(j.job("J2").unwrap().unwrap().job.state, JobState::Pending);
        assert_eq!(j.job("J3").unwrap(), None);
        let counts: std::collections::HashMap<_, _> =
            j.state_counts().unwrap().into_iter().collect();
        assert_eq!(counts[&JobState::Canceled], 1);
        assert_eq!(counts[&JobState::Pending], 1);
    }

    #[test]
    fn retention_goes_in_bounded_steps_and_keeps_the_newest() {
        let dir = Dir::new();
        let (j, mut w) = Journal::open(&dir.path().join("j.redb")).unwrap();
        let total = 2 * MAX_PRUNE_PER_OP + 100;
        let mut ops = vec![hook_op("hook_a", "s1")];
        ops.extend((0..total).map(|i| trigger_op("s1", &format!("J{i:05}"))));
        w.commit_now(ops);
        let mut steps = Vec::new();
        loop {
            match w.commit_now(vec![Op::Prune { keep: 10 }]).remove(0) {
                Outcome::Pruned(ids) => steps.push(ids.len()),
                Outcome::NotApplicable => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            steps,
            [
                MAX_PRUNE_PER_OP,
                MAX_PRUNE_PER_OP,
                total - 10 - 2 * MAX_PRUNE_PER_OP
            ]
        );
        let filter = JobFilter {
            hook: Some("hook_a".into()),
            limit: 500,
            ..JobFilter::default()
        };
        let (kept, _) = j.list_jobs(&filter).unwrap();
        assert_eq!(kept.len(), 10);
        assert_eq!(kept[0].job.id, format!("J{:05}", total - 1));
        assert_eq!(kept[0].job.state, JobState::Pending);
    }

    #[test]
    fn newest_trigger_cancels_the_open_job() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        assert!(matches!(
            trigger(&j, "s1", "J1"),
            Outcome::Triggered {
                superseded: None,
                ..
            }
        ));
        let Outcome::Triggered { superseded, .. } = trigger(&j, "s1", "J2") else {
            panic!()
        };
        assert_eq!(superseded, Some(("J1".into(), JobState::Pending)));
        let j1 = j.job("J1").unwrap().unwrap();
        assert_eq!(j1.job.state, JobState::Canceled);
        assert_eq!(j1.job.canceled_by.as_deref(), Some("J2"));
        assert_eq!(open_ids(&j), ["J2"]);
        // Terminal states never change.
        let out = j
            .submit(Op::Finish {
                job_id: "J1".into(),
                state: JobState::Ready,
                exit_code: Some(0),
                error: None,
                now: 9,
            })
            .unwrap();
        assert_eq!(out, Outcome::NotApplicable);
    }

    #[test]
    fn an_operator_triggers_by_hook_id_and_cancels_open_jobs_only() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        let by_id = |job: &str| {
            j.submit(Op::TriggerHook {
                hook_id: "hook_a".into(),
                job_id: job.into(),
                now: 5,
                not_before: None,
            })
            .unwrap()
        };
        assert!(matches!(
            by_id("J1"),
            Outcome::Triggered {
                superseded: None,
                ..
            }
        ));
        let cancel = |job: &str| {
            j.submit(Op::Cancel {
                job_id: job.into(),
                now: 6,
            })
            .unwrap()
        };
        let Outcome::Canceled { row, from } = cancel("J1") else {
            panic!()
        };
        assert_eq!(from, JobState::Pending);
        assert_eq!(row.job.state, JobState::Canceled);
        assert_eq!(row.job.canceled_by, None);
        assert_eq!(row.job.error.as_deref(), Some("canceled by operator"));
        assert!(open_ids(&j).is_empty());
        assert_eq!(cancel("J1"), Outcome::NotApplicable);
        assert_eq!(cancel("J9"), Outcome::NotFound);
        // The next trigger finds no open job to supersede.
        assert!(matches!(
            by_id("J2"),
            Outcome::Triggered {
                superseded: None,
                ..
            }
        ));
        let no_hook = j.submit(Op::TriggerHook {
            hook_id: "hook_b".into(),
            job_id: "J3".into(),
            now: 7,
            not_before: None,
        });
        assert_eq!(no_hook.unwrap(), Outcome::NotFound);
    }
}
