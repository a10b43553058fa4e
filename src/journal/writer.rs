//! The writer thread, the journal's only writer: it takes every [`Submission`] waiting in its
//! channel, applies them all in one write transaction ([`super::apply`]), makes that batch
//! durable with one sync (group commit), then answers each submitter through its reply slot and
//! hands the committed outcomes on. Nothing is answered or scheduled before it would survive a
//! power cut.
//!
//! The sync is usually of the batch's record in the write-ahead log ([`super::wal`]), with the
//! redb commit itself not durable; every [`super::wal::CHECKPOINT_EVERY`] a batch is committed
//! to redb durably instead and the log starts over. Opening the journal replays the log records
//! redb does not hold ([`replay_log`]).
//!
//! After a failed commit (disk full, I/O error) redb refuses every later write until the file is
//! reopened, so the writer closes and reopens it before its next batch (at most once per
//! [`REOPEN_EVERY`]); ops that arrive while it cannot are refused, never acknowledged.

use super::apply::apply_batch;
use super::error::JournalError;
use super::ops::{CommitStats, Op, Outcome};
use super::schema::{open_database, COUNTERS, WAL_SEQ};
use super::wal::{self, Wal};
use super::{current, SecretEntry, SecretIndex, Slot};
use crossbeam_channel::Receiver;
use redb::{Database, ReadableDatabase};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Least time between two attempts to reopen a failed journal.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for readers to let go of a failed database before it is reopened.
const READERS_DRAIN: Duration = Duration::from_secs(2);
/// Most ops one commit takes; more wait for the next commit.
const MAX_BATCH: usize = 4096;

/// Where the writer puts one op's result for the thread waiting on it. A mutex and condvar
/// rather than a channel: a channel's receiver spins and yields before it sleeps, and with
/// dozens of request threads waiting on commits that yielding starves the writer of CPU.
#[derive(Default)]
pub(super) struct ReplySlot {
    value: Mutex<Option<Result<Outcome, JournalError>>>,
    ready: Condvar,
}

impl ReplySlot {
    fn put(&self, value: Result<Outcome, JournalError>) {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        self.ready.notify_one();
    }

    /// Waits for the writer's answer.
    pub(super) fn take(&self) -> Result<Outcome, JournalError> {
        let mut guard = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(value) = guard.take() {
                return value;
            }
            guard = self
                .ready
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Who hears an op's result: a thread waiting in [`super::Journal::submit`], or a callback run
/// on the writer thread right after the commit ([`super::Journal::submit_then`]).
pub(super) enum ReplyTo {
    Waiter(Arc<ReplySlot>),
    Callback(Box<dyn FnOnce(Result<Outcome, JournalError>) + Send>),
}

impl ReplyTo {
    pub(super) fn put(self, value: Result<Outcome, JournalError>) {
        match self {
            ReplyTo::Waiter(slot) => slot.put(value),
            ReplyTo::Callback(call) => call(value),
        }
    }
}

/// An op submitted to the writer, waiting for its batch, and who hears how it went.
pub(super) struct Submission {
    pub(super) op: Op,
    pub(super) reply: ReplyTo,
}

/// The writer side, to be run on its own thread.
pub struct Writer {
    db: Slot,
    secrets: SecretIndex,
    /// The file, unless the journal lives on a custom storage backend (tests).
    path: Option<PathBuf>,
    wal: Wal,
    rx: Receiver<Submission>,
    /// Set after a failed commit: the database must be reopened before the next write.
    broken: bool,
    last_reopen: Option<Instant>,
}

impl Writer {
    pub(super) fn new(
        db: Slot,
        secrets: SecretIndex,
        path: Option<PathBuf>,
        wal: Wal,
        rx: Receiver<Submission>,
    ) -> Writer {
        Writer {
            db,
            secrets,
            path,
            wal,
            rx,
            broken: false,
            last_reopen: None,
        }
    }

    /// Runs until every [`super::Journal`] handle is dropped. `on_commit` sees every committed
    /// outcome, in commit order; `on_stats` sees each commit's figures.
    pub fn run(
        mut self,
        mut on_commit: impl FnMut(&Outcome),
        mut on_stats: impl FnMut(CommitStats),
    ) {
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let result = self.commit_batch(&batch);
            on_stats(CommitStats {
                wrote: result.as_ref().map_or(0, |outcomes| {
                    outcomes.iter().filter(|o| o.changes()).count()
                }),
                seconds: started.elapsed().as_secs_f64(),
            });
            match result {
                Ok(outcomes) => {
                    self.note_hook_changes(&batch, &outcomes);
                    for (submission, outcome) in batch.into_iter().zip(outcomes) {
                        on_commit(&outcome);
                        submission.reply.put(Ok(outcome));
                    }
                }
                Err(err) => {
                    log::error!("journal commit failed, {} ops refused: {err}", batch.len());
                    for submission in batch {
                        submission.reply.put(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Commits durably to the database every `batches` batches or `every` at least (the others
    /// go through the write-ahead log). For fault tests, which want crash points in both.
    #[doc(hidden)]
    pub fn set_checkpoints(&mut self, batches: u64, every: Duration) {
        self.wal.max_records = batches.max(1);
        self.wal.every = every;
    }

    /// Closes and reopens the database after a failed commit. Readers hold the database only
    /// for one read, so they are waited for briefly; the file must be closed before it can be
    /// opened again.
    fn reopen(&mut self) -> Result<(), JournalError> {
        if self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return Err(JournalError::Reopening);
        }
        self.last_reopen = Some(Instant::now());
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + READERS_DRAIN;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        let path = self.path.as_ref().ok_or(JournalError::CannotReopen)?;
        let db = open_database(path)?;
        replay_log(&db, &mut self.wal)?;
        *slot = Some(Arc::new(db));
        self.broken = false;
        log::info!("journal reopened after a failed write; accepting writes again");
        Ok(())
    }

    /// Brings the secret index in line with the hooks a committed batch created or revoked.
    fn note_hook_changes(&self, batch: &[Submission], outcomes: &[Outcome]) {
        for (submission, outcome) in batch.iter().zip(outcomes) {
            match (&submission.op, outcome) {
                (Op::CreateHook { hook, secret }, Outcome::HookCreated) => {
                    let entry = SecretEntry {
                        hook: hook.id.clone(),
                        project: hook.project.clone(),
                        branch: hook.branch.clone(),
                        revoked: false,
                    };
                    self.secrets
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(*secret, entry);
                }
                (Op::RotateSecret { secret, .. }, Outcome::SecretRotated { old }) => {
                    let mut secrets = self.secrets.write().unwrap_or_else(PoisonError::into_inner);
                    let Some(entry) = secrets.get_mut(old) else {
                        continue;
                    };
                    entry.revoked = true;
                    let live = SecretEntry {
                        revoked: false,
                        ..entry.clone()
                    };
                    secrets.insert(*secret, live);
                }
                (Op::RevokeHook { id }, Outcome::HookRevoked) => {
                    let mut secrets = self.secrets.write().unwrap_or_else(PoisonError::into_inner);
                    for entry in secrets.values_mut().filter(|e| e.hook == *id) {
                        entry.revoked = true;
                    }
                }
                _ => {}
            }
        }
    }

    fn commit_batch(&mut self, batch: &[Submission]) -> Result<Vec<Outcome>, JournalError> {
        if self.broken {
            self.reopen()?;
        }
        let result = self.try_commit(batch);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Applies `batch` in one write transaction. A checkpoint commits it to redb durably; any
    /// other batch is committed to redb without durability and made durable by its record in
    /// the write-ahead log, written before the commit (so a failed record refuses the batch)
    /// and synced after it (so nothing is answered before it would survive a power cut).
    fn try_commit(&mut self, batch: &[Submission]) -> Result<Vec<Outcome>, JournalError> {
        let db = current(&self.db)?;
        let mut txn = db.begin_write()?;
        let seq = self.wal.seq + 1;
        let outcomes = apply_batch(&txn, batch.iter().map(|s| &s.op), seq)?;
        if !outcomes.iter().any(Outcome::changes) {
            txn.abort()?;
            return Ok(outcomes);
        }
        let asked = batch.iter().any(|s| matches!(s.op, Op::Checkpoint));
        if asked || self.wal.checkpoint_due() {
            txn.commit()?;
            self.wal.checkpointed(seq);
            return Ok(outcomes);
        }
        let ops: Vec<&Op> = batch
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.changes())
            .map(|(submission, _)| &submission.op)
            .collect();
        let record = wal::encode(seq, &ops)?;
        self.wal.write(&record)?;
        txn.set_durability(redb::Durability::None)?;
        if let Err(e) = txn.commit() {
            self.wal.unwrite();
            return Err(e.into());
        }
        self.wal.seq = seq;
        self.wal.sync(record.len())?;
        Ok(outcomes)
    }

    /// Applies `ops` as one batch, the way [`Writer::run`] does (one transaction).
    #[cfg(test)]
    pub(super) fn commit_now(&mut self, ops: Vec<Op>) -> Vec<Outcome> {
        let batch: Vec<Submission> = ops
            .into_iter()
            .map(|op| Submission {
                op,
                reply: ReplyTo::Waiter(Arc::new(ReplySlot::default())),
            })
            .collect();
        self.try_commit(&batch).unwrap()
    }
}

/// Applies the log records the database does not hold yet (see [`wal`]) in one durable commit;
/// the log then starts over. Returns how many batches it applied.
pub(super) fn replay_log(db: &Database, wal: &mut Wal) -> Result<usize, JournalError> {
    let bytes = wal.read_all()?;
    let held = {
        let txn = db.begin_read()?;
        let counters = txn.open_table(COUNTERS)?;
        let value = counters.get(WAL_SEQ)?.map_or(0, |v| v.value());
        value
    };
    let records = wal::to_replay(wal::decode(&bytes), held);
    let Some(last) = records.last().map(|(seq, _)| *seq) else {
        wal.checkpointed(held);
        return Ok(0);
    };
    let txn = db.begin_write()?;
    apply_batch(&txn, records.iter().flat_map(|(_, ops)| ops), last)?;
    txn.commit()?;
    wal.checkpointed(last);
    log::info!(
        "journal: replayed {} batches from its write-ahead log",
        records.len()
    );
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::{hook, logged_journal, open_ids, trigger, Dir};
    use crate::journal::Journal;
    use std::path::Path;

    /// Copies the journal's files as they are on disk now, the way a power cut would leave them
    /// (the database is still open: redb's durable state, plus the log).
    fn copy_files(from: &Path, to: &Path, with_log: bool) {
        std::fs::copy(from.join("j.redb"), to.join("j.redb")).unwrap();
        if with_log {
            std::fs::copy(from.join("j.wal"), to.join("j.wal")).unwrap();
        }
    }

    #[test]
    fn batches_held_only_by_the_log_are_replayed_at_open() {
        let live = Dir::new();
        let j = logged_journal(live.path());
        hook(&j, "hook_a", "s1");
        let ids: Vec<String> = (0..40).map(|n| format!("J{n:02}")).collect();
        for id in &ids {
            assert!(matches!(trigger(&j, "s1", id), Outcome::Triggered { .. }));
        }
        // Without its log the database holds none of it: the log is what made it durable.
        let bare = Dir::new();
        copy_files(live.path(), bare.path(), false);
        let (b, _w) = Journal::open(&bare.path().join("j.redb")).unwrap();
        assert!(b.job("J39").unwrap().is_none());
        assert!(b.hooks().unwrap().is_empty());
        // With it, every acknowledged op is back, in order: the newest job is the open one.
        let copy = Dir::new();
        copy_files(live.path(), copy.path(), true);
        let (c, w) = Journal::open(&copy.path().join("j.redb")).unwrap();
        for id in &ids {
            assert!(c.job(id).unwrap().is_some(), "{id} lost");
        }
        assert_eq!(open_ids(&c), ["J39"]);
        // The reopened journal goes on numbering batches after the replayed ones.
        std::thread::spawn(move || w.run(|_| {}, |_| {}));
        assert!(matches!(
            trigger(&c, "s1", "J40"),
            Outcome::Triggered { .. }
        ));
        drop(c);
    }

    #[test]
    fn a_log_beside_a_removed_journal_is_not_replayed_into_a_new_one() {
        let live = Dir::new();
        let j = logged_journal(live.path());
        hook(&j, "hook_a", "s1");
        trigger(&j, "s1", "J1");
        let copy = Dir::new();
        copy_files(live.path(), copy.path(), true);
        std::fs::remove_file(copy.path().join("j.redb")).unwrap();
        let (c, _w) = Journal::open(&copy.path().join("j.redb")).unwrap();
        assert!(c.hooks().unwrap().is_empty());
        assert!(c.job("J1").unwrap().is_none());
    }

    #[test]
    fn secrets_are_stored_only_as_hashes() {
        let d = Dir::new();
        let j = logged_journal(d.path());
        let secret = "Zq3Xv9Lm2Pp0Rr7Tt5Uu1Ww8Yy4Aa6Bb";
        hook(&j, "hook_a", secret);
        trigger(&j, secret, "J1");
        for file in ["j.wal", "j.redb"] {
            let bytes = std::fs::read(d.path().join(file)).unwrap();
            assert!(bytes.len() > 100, "{file} is empty");
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{file}");
        }
    }
}
