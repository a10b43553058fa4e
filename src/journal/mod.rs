//! The journal: the single source of truth, kept in one redb file and its write-ahead log
//! (`wal`, `journal.wal` beside it). This is the only module that knows redb exists.
//!
//! Threads: one writer thread ([`Writer::run`], in `writer`) owns every write. Request
//! threads and build threads [`Journal::submit`] an [`Op`] and wait for its [`Outcome`] (the
//! hook listener's event loop gets it through [`Journal::submit_then`]); the writer applies
//! every op waiting in its channel in one transaction and makes the batch durable with one sync
//! (group commit) before anyone hears of it. Readers (`reads`) use read transactions and
//! never block the writer.
//!
//! One role per file:
//! - `records`: jobs, states, hooks and their stored rows;
//! - `ops`: what the writer is asked ([`Op`]) and answers ([`Outcome`]);
//! - `error`: [`JournalError`], and [`ReadError`] for failed reads;
//! - `schema`: the tables, opening or creating the file;
//! - `reads`: read queries and [`JobFilter`];
//! - `writer`: the writer thread, its reply slots, group commit, log replay and reopening;
//! - `apply`: applying a batch to the tables, the one place that keeps the journal's
//!   invariants (states only move forward, one open job per hook, every job indexed);
//! - `wal`: the write-ahead log's records and checkpoints.
//!
//! This file holds the shared handle, [`Journal`].

mod apply;
mod error;
mod ops;
mod reads;
mod records;
mod schema;
#[cfg(test)]
pub(crate) mod testing;
mod wal;
mod writer;

pub use apply::MAX_PRUNE_PER_OP;
pub use error::{JournalError, ReadError};
pub use ops::{Attempt, Op, Outcome};
pub use reads::{JobFilter, MAX_LIST_LIMIT};
pub use records::{Hook, Job, JobRow, JobState, Notification, NotificationState, NotifyOn};
#[doc(hidden)]
pub use wal::fuzz_decode;
pub use wal::LogFile;
pub use writer::Writer;

use crate::secret::SecretHash;
use crossbeam_channel::Sender;
use redb::Database;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use wal::Wal;
use writer::{ReplySlot, ReplyTo, Submission};

/// The journal's file name inside `state_dir`.
pub const FILE_NAME: &str = "journal.redb";
/// The extension of its write-ahead log, beside it (`journal.wal`).
pub const LOG_EXTENSION: &str = "wal";

/// The open database, replaced by the writer when it has to be reopened (`None` meanwhile).
type Slot = Arc<RwLock<Option<Arc<Database>>>>;

/// Secret hash -> hook of every hook, as committed (revoked ones marked): the request threads'
/// check that a secret exists, without a read transaction per trigger. The writer updates it
/// after a commit that creates or revokes a hook, before anyone hears of that commit.
type SecretIndex = Arc<RwLock<HashMap<SecretHash, SecretEntry>>>;

/// What the index knows of one secret.
#[derive(Clone, Debug)]
pub(crate) struct SecretEntry {
    hook: String,
    /// The hook's project and branch (empty for a revoked hook loaded at open: not needed).
    project: String,
    branch: String,
    revoked: bool,
}

/// Why a secret does or does not name a live hook of a project: the answer is the same `404`
/// for every refusal, but the operator's log says which it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretLookup {
    Live(String),
    /// The secret was a hook's, which has been revoked (or its secret rotated).
    Revoked(String),
    /// The hook exists but belongs to another project than the URL names.
    OtherProject(String),
    Unknown,
}

/// The shared handle: submit ops to the writer, read with read transactions.
#[derive(Clone)]
pub struct Journal {
    db: Slot,
    secrets: SecretIndex,
    /// The file, unless the journal lives on a custom storage backend (tests).
    path: Option<PathBuf>,
    tx: Sender<Submission>,
}

/// The database in `slot`, unless the writer is reopening it.
fn current(slot: &Slot) -> Result<Arc<Database>, JournalError> {
    slot.read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or(JournalError::Reopening)
}

impl Journal {
    /// Opens (or creates) the journal file and makes sure every table exists.
    pub fn open(path: &Path) -> Result<(Journal, Writer), JournalError> {
        let fresh = !path.exists();
        let log_path = path.with_extension(LOG_EXTENSION);
        let log_error = |action, e| JournalError::LogFile {
            path: Some(log_path.clone()),
            action,
            source: Arc::new(e),
        };
        let log = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&log_path)
                .map_err(|e| log_error("open", e))?
        };
        if fresh {
            // A log left beside a journal that was removed belongs to that journal.
            log.set_len(0).map_err(|e| log_error("reset", e))?;
        }
        Journal::with_database(
            schema::open_database(path)?,
            Wal::new(Box::new(log), Some(log_path.clone())),
            Some(path.to_path_buf()),
        )
    }

    /// A journal on a custom storage backend and log file (fault-injection tests simulate power
    /// loss with them). It cannot be reopened after a failed write.
    pub fn open_with_backends(
        backend: impl redb::StorageBackend,
        log: impl LogFile,
    ) -> Result<(Journal, Writer), JournalError> {
        let db = schema::builder().create_with_backend(backend)?;
        Journal::with_database(db, Wal::new(Box::new(log), None), None)
    }

    fn with_database(
        db: Database,
        mut wal: Wal,
        path: Option<PathBuf>,
    ) -> Result<(Journal, Writer), JournalError> {
        schema::create_tables(&db)?;
        writer::replay_log(&db, &mut wal)?;
        let secrets: SecretIndex = Arc::new(RwLock::new(schema::load_secrets(&db)?));
        let (tx, rx) = crossbeam_channel::unbounded();
        let slot: Slot = Arc::new(RwLock::new(Some(Arc::new(db))));
        let journal = Journal {
            db: slot.clone(),
            secrets: secrets.clone(),
            path: path.clone(),
            tx,
        };
        Ok((journal, Writer::new(slot, secrets, path, wal, rx)))
    }

    /// Sends `op` to the writer and waits until it is committed (or failed).
    pub fn submit(&self, op: Op) -> Result<Outcome, JournalError> {
        let reply = Arc::new(ReplySlot::default());
        self.send(op, ReplyTo::Waiter(reply.clone()));
        reply.take()
    }

    /// Sends `op` to the writer without waiting: `done` runs once with its result, on the
    /// writer thread right after the commit, so it must be quick (hand the result on, never
    /// block). When the writer has stopped, `done` runs at once with that error.
    pub fn submit_then(
        &self,
        op: Op,
        done: impl FnOnce(Result<Outcome, JournalError>) + Send + 'static,
    ) {
        self.send(op, ReplyTo::Callback(Box::new(done)))
    }

    fn send(&self, op: Op, reply: ReplyTo) {
        if let Err(unsent) = self.tx.send(Submission { op, reply }) {
            unsent.into_inner().reply.put(Err(JournalError::Stopped));
        }
    }

    /// Bytes the journal takes on disk: the database file and its write-ahead log.
    pub fn file_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        self.path
            .as_ref()
            .map_or(0, |p| size(p) + size(&p.with_extension(LOG_EXTENSION)))
    }

    /// The branch of the live hook behind `secret`.
    pub fn branch_of(&self, secret: &SecretHash) -> Option<String> {
        let secrets = self.secrets.read().unwrap_or_else(PoisonError::into_inner);
        secrets
            .get(secret)
            .filter(|e| !e.revoked)
            .map(|e| e.branch.clone())
    }

    /// The hook behind `secret`, for a URL naming `project`.
    pub fn lookup_secret(&self, secret: &SecretHash, project: &str) -> SecretLookup {
        let secrets = self.secrets.read().unwrap_or_else(PoisonError::into_inner);
        match secrets.get(secret) {
            None => SecretLookup::Unknown,
            Some(e) if e.revoked => SecretLookup::Revoked(e.hook.clone()),
            Some(e) if e.project != project => SecretLookup::OtherProject(e.hook.clone()),
            Some(e) => SecretLookup::Live(e.hook.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{hook_op, Dir};
    use super::*;

    #[test]
    fn a_submission_after_the_writer_stopped_is_refused_at_once() {
        let dir = Dir::new();
        let (j, writer) = Journal::open(&dir.path().join("j.redb")).unwrap();
        drop(writer);
        assert!(matches!(
            j.submit(hook_op("hook_a", "s1")),
            Err(JournalError::Stopped)
        ));
        let (tx, rx) = crossbeam_channel::bounded(1);
        j.submit_then(Op::Probe, move |result| {
            let _ = tx.send(result);
        });
        assert!(matches!(rx.recv(), Ok(Err(JournalError::Stopped))));
    }
}
