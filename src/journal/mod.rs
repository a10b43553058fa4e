//! The journal: the single source of truth, kept in one redb file and its write-ahead log
//! ([`wal`], `journal.wal` beside it). This is the only module that knows redb exists.
//!
//! Threads: one writer thread ([`Writer::run`]) owns every write. Request threads and build
//! threads [`Journal::submit`] an [`Op`] and wait for its [`Outcome`] (the hook listener's event
//! loop gets it through [`Journal::submit_then`]); the writer takes every op waiting in its
//! channel, applies them all in one write transaction, makes that batch durable with one sync
//! (group commit), then answers each waiter and hands the committed outcomes to a callback (the
//! scheduler): nothing is answered or scheduled before it would survive a power cut. The sync
//! is usually of the batch's record in the write-ahead log, with the redb commit itself not
//! durable; every [`wal::CHECKPOINT_EVERY`] a batch is committed to redb durably instead and
//! the log starts over. Opening the journal replays the log records redb does not hold.
//! Readers use read transactions and never block the writer.
//!
//! After a failed commit (disk full, I/O error) redb refuses every later write until the file is
//! reopened, so the writer closes and reopens it before its next batch (at most once per
//! [`REOPEN_EVERY`]); ops that arrive while it cannot are refused, never acknowledged.
//!
//! Invariants kept by the writer:
//! - A job's state only moves forward: PENDING -> BUILDING -> READY | ERROR | CANCELED, with one
//!   exception, [`Op::Requeue`] (BUILDING -> PENDING at shutdown). Terminal states never change.
//! - A hook has at most one open (PENDING or BUILDING) job: a trigger cancels the previous one
//!   in the same transaction that creates the new job ("newest wins"). `OPEN_BY_HOOK` holds it,
//!   so start-up reads only open jobs, whatever the history.
//! - Every job is indexed by sequence number, by hook and by project, so listings are range
//!   scans.

mod wal;

pub use wal::LogFile;
use wal::Wal;

use crate::secret::SecretHash;
use crossbeam_channel::{Receiver, Sender};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

const HOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("hooks");
const HOOK_SECRETS: TableDefinition<&[u8], &str> = TableDefinition::new("hook_secrets");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const JOBS_BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("jobs_by_seq");
const JOBS_BY_HOOK: TableDefinition<(&str, u64), &str> = TableDefinition::new("jobs_by_hook");
const JOBS_BY_PROJECT: TableDefinition<(&str, u64), &str> = TableDefinition::new("jobs_by_project");
const OPEN_BY_HOOK: TableDefinition<&str, &str> = TableDefinition::new("open_by_hook");
/// Per-hook number of stored jobs, for retention.
const HOOK_JOB_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("hook_job_counts");
/// `seq` (last sequence number), `state.<STATE>` (jobs per state) and `wal_seq` (the last
/// batch the database holds, see [`wal`]).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The journal's file name inside `state_dir`.
pub const FILE_NAME: &str = "journal.redb";
/// The extension of its write-ahead log, beside it (`journal.wal`).
pub const LOG_EXTENSION: &str = "wal";
/// The `COUNTERS` key of the last batch the database holds (its write-ahead log record number).
const WAL_SEQ: &str = "wal_seq";

/// Least time between two attempts to reopen a failed journal.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for readers to let go of a failed database before it is reopened.
const READERS_DRAIN: Duration = Duration::from_secs(2);

/// Most ops one commit takes; more wait for the next commit.
const MAX_BATCH: usize = 4096;
/// Most jobs one prune op removes, so retention never makes one huge transaction.
pub const MAX_PRUNE_PER_OP: usize = 256;
/// Most index entries one listing scans when a filter skips rows.
const MAX_LIST_SCAN: usize = 20_000;

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

    fn counter_key(self) -> &'static str {
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

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HookRow {
    secret_sha256: String,
    hook: Hook,
}

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
    /// Changes nothing: proves the writer thread still answers (watchdog).
    Probe,
    /// Commits its batch to redb durably, so that the database file alone holds everything
    /// (at shutdown: a backup of the stopped daemon's `journal.redb` is then complete).
    Checkpoint,
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
    Started(JobRow),
    CommitSet,
    Finished(JobRow),
    Requeued,
    Pruned(Vec<String>),
    Checkpointed,
    /// The hook, job or secret does not exist (or does not match).
    NotFound,
    /// The job is in a state the op does not apply to (e.g. canceled before it started).
    NotApplicable,
}

impl Outcome {
    /// Whether the op changed the journal (so its batch is committed and logged).
    fn changes(&self) -> bool {
        !matches!(self, Outcome::NotFound | Outcome::NotApplicable)
    }
}

/// The journal cannot take writes (disk full, I/O error, the writer is gone) or could not be
/// read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalError(pub String);

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal unavailable: {}", self.0)
    }
}

impl std::error::Error for JournalError {}

impl From<redb::Error> for JournalError {
    fn from(e: redb::Error) -> Self {
        JournalError(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for JournalError {
            fn from(e: $t) -> Self { JournalError::from(redb::Error::from(e)) }
        }
    )*};
}
from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

impl From<serde_json::Error> for JournalError {
    fn from(e: serde_json::Error) -> Self {
        JournalError(format!("corrupt record: {e}"))
    }
}

/// Where the writer puts one op's result for the thread waiting on it. A mutex and condvar
/// rather than a channel: a channel's receiver spins and yields before it sleeps, and with
/// dozens of request threads waiting on commits that yielding starves the writer of CPU.
#[derive(Default)]
struct ReplySlot {
    value: Mutex<Option<Result<Outcome, JournalError>>>,
    ready: Condvar,
}

impl ReplySlot {
    fn put(&self, value: Result<Outcome, JournalError>) {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        self.ready.notify_one();
    }

    fn take(&self) -> Result<Outcome, JournalError> {
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

/// Who hears an op's result: a thread waiting in [`Journal::submit`], or a callback run on the
/// writer thread right after the commit ([`Journal::submit_then`]).
enum ReplyTo {
    Waiter(Arc<ReplySlot>),
    Callback(Box<dyn FnOnce(Result<Outcome, JournalError>) + Send>),
}

impl ReplyTo {
    fn put(self, value: Result<Outcome, JournalError>) {
        match self {
            ReplyTo::Waiter(slot) => slot.put(value),
            ReplyTo::Callback(call) => call(value),
        }
    }
}

struct Pending {
    op: Op,
    reply: ReplyTo,
}

/// Figures the writer reports after each commit.
pub struct CommitStats {
    pub ops: usize,
    pub seconds: f64,
    pub ok: bool,
}

/// The open database, replaced by the writer when it has to be reopened (`None` meanwhile).
type Slot = Arc<RwLock<Option<Arc<Database>>>>;

/// Secret hash -> (hook id, project) of every hook, as committed: the request threads' check
/// that a secret exists, without a read transaction per trigger. The writer updates it after a
/// commit that creates or revokes a hook, before anyone hears of that commit.
type SecretIndex = Arc<RwLock<std::collections::HashMap<SecretHash, (String, String)>>>;

/// The shared handle: submit ops to the writer, read with read transactions.
#[derive(Clone)]
pub struct Journal {
    db: Slot,
    secrets: SecretIndex,
    /// The file, unless the journal lives on a custom storage backend (tests).
    path: Option<PathBuf>,
    tx: Sender<Pending>,
}

/// The writer side, to be run on its own thread.
pub struct Writer {
    db: Slot,
    secrets: SecretIndex,
    path: Option<PathBuf>,
    wal: Wal,
    rx: Receiver<Pending>,
    /// Set after a failed commit: the database must be reopened before the next write.
    broken: bool,
    last_reopen: Option<Instant>,
}

/// redb's page cache; its default may grow to 1 GiB, more than a small daemon should hold.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(CACHE_BYTES);
    b
}

/// Opens the journal file, creating it atomically when it does not exist: redb writes a new
/// file's magic number last, so a crash while creating it would leave a file that is not a
/// database. A new journal is made complete under a temporary name, synced, then renamed.
fn open_database(path: &Path) -> Result<Database, JournalError> {
    if !path.exists() {
        let fresh = path.with_extension("new");
        let _ = std::fs::remove_file(&fresh);
        let db = builder().create(&fresh)?;
        create_tables(&db)?;
        drop(db);
        std::fs::rename(&fresh, path)
            .map_err(|e| JournalError(format!("cannot create the journal: {e}")))?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
    }
    Ok(builder().create(path)?)
}

/// Every hook's secret hash, hook id and project, from the hooks table.
fn load_secrets(
    db: &Database,
) -> Result<std::collections::HashMap<SecretHash, (String, String)>, JournalError> {
    let txn = db.begin_read()?;
    let hooks = txn.open_table(HOOKS)?;
    let mut out = std::collections::HashMap::new();
    for entry in hooks.iter()? {
        let (_, raw) = entry?;
        let row: HookRow = serde_json::from_slice(raw.value())?;
        if let Some(secret) = unhex(&row.secret_sha256) {
            out.insert(secret, (row.hook.id, row.hook.project));
        }
    }
    Ok(out)
}

/// Makes sure every table exists, so read transactions never meet a missing one.
fn create_tables(db: &Database) -> Result<(), JournalError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(HOOKS)?;
        txn.open_table(HOOK_SECRETS)?;
        txn.open_table(JOBS)?;
        txn.open_table(JOBS_BY_SEQ)?;
        txn.open_table(JOBS_BY_HOOK)?;
        txn.open_table(JOBS_BY_PROJECT)?;
        txn.open_table(OPEN_BY_HOOK)?;
        txn.open_table(HOOK_JOB_COUNTS)?;
        txn.open_table(COUNTERS)?;
    }
    txn.commit()?;
    Ok(())
}

impl Journal {
    /// Opens (or creates) the journal file and makes sure every table exists.
    pub fn open(path: &Path) -> Result<(Journal, Writer), JournalError> {
        let fresh = !path.exists();
        let log_path = path.with_extension(LOG_EXTENSION);
        let log = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&log_path)
                .map_err(|e| JournalError(format!("cannot open {}: {e}", log_path.display())))?
        };
        if fresh {
            // A log left beside a journal that was removed belongs to that journal.
            log.set_len(0)
                .map_err(|e| JournalError(format!("cannot reset {}: {e}", log_path.display())))?;
        }
        Journal::with_database(
            open_database(path)?,
            Box::new(log),
            Some(path.to_path_buf()),
        )
    }

    /// A journal on a custom storage backend and log file (fault-injection tests simulate power
    /// loss with them). It cannot be reopened after a failed write.
    pub fn open_with_backends(
        backend: impl redb::StorageBackend,
        log: impl LogFile,
    ) -> Result<(Journal, Writer), JournalError> {
        let db = builder().create_with_backend(backend)?;
        Journal::with_database(db, Box::new(log), None)
    }

    fn with_database(
        db: Database,
        log: Box<dyn LogFile>,
        path: Option<PathBuf>,
    ) -> Result<(Journal, Writer), JournalError> {
        create_tables(&db)?;
        let mut wal = Wal::new(log);
        replay_log(&db, &mut wal)?;
        let secrets: SecretIndex = Arc::new(RwLock::new(load_secrets(&db)?));
        let db = Arc::new(db);
        let (tx, rx) = crossbeam_channel::unbounded();
        let slot: Slot = Arc::new(RwLock::new(Some(db)));
        Ok((
            Journal {
                db: slot.clone(),
                secrets: secrets.clone(),
                path: path.clone(),
                tx,
            },
            Writer {
                db: slot,
                secrets,
                path,
                wal,
                rx,
                broken: false,
                last_reopen: None,
            },
        ))
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
        if let Err(unsent) = self.tx.send(Pending { op, reply }) {
            let error = JournalError("the journal writer has stopped".into());
            unsent.into_inner().reply.put(Err(error));
        }
    }

    /// Bytes the journal takes on disk: the database file and its write-ahead log.
    pub fn file_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        self.path
            .as_ref()
            .map_or(0, |p| size(p) + size(&p.with_extension(LOG_EXTENSION)))
    }

    fn read(&self) -> Result<ReadTransaction, JournalError> {
        let db = current(&self.db)?;
        Ok(db.begin_read()?)
    }

    /// Whether a hook with this secret exists and belongs to `project` (an in-memory pre-check
    /// that keeps guessed secrets away from the writer; the writer checks again).
    pub fn secret_matches(&self, secret: &SecretHash, project: &str) -> bool {
        self.hook_for_secret(secret, project).is_some()
    }

    /// The id of the live hook behind `secret`, if it is of `project`.
    pub fn hook_for_secret(&self, secret: &SecretHash, project: &str) -> Option<String> {
        let secrets = self.secrets.read().unwrap_or_else(PoisonError::into_inner);
        secrets
            .get(secret)
            .filter(|(_, p)| p == project)
            .map(|(hook, _)| hook.clone())
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, JournalError> {
        let txn = self.read()?;
        let jobs = txn.open_table(JOBS)?;
        Ok(match jobs.get(id)? {
            Some(raw) => Some(serde_json::from_slice(raw.value())?),
            None => None,
        })
    }

    pub fn hooks(&self) -> Result<Vec<Hook>, JournalError> {
        let txn = self.read()?;
        let hooks = txn.open_table(HOOKS)?;
        let by_hook = txn.open_table(JOBS_BY_HOOK)?;
        let jobs = txn.open_table(JOBS)?;
        let mut out = Vec::new();
        for entry in hooks.iter()? {
            let (_, raw) = entry?;
            let mut hook = serde_json::from_slice::<HookRow>(raw.value())?.hook;
            // The last trigger is the newest job's creation: retention keeps at least one job
            // per hook (keep_jobs >= 1), and every trigger makes a job.
            let id = hook.id.as_str();
            if let Some(newest) = by_hook.range((id, 0)..=(id, u64::MAX))?.next_back() {
                if let Some(raw) = jobs.get(newest?.1.value())? {
                    let row: JobRow = serde_json::from_slice(raw.value())?;
                    hook.last_triggered_at = Some(row.job.created_at);
                }
            }
            out.push(hook);
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Every open job, oldest first: what the scheduler rebuilds its queue from at start-up.
    pub fn open_jobs(&self) -> Result<Vec<JobRow>, JournalError> {
        let txn = self.read()?;
        let open = txn.open_table(OPEN_BY_HOOK)?;
        let jobs = txn.open_table(JOBS)?;
        let mut out = Vec::new();
        for entry in open.iter()? {
            let (_, job_id) = entry?;
            if let Some(raw) = jobs.get(job_id.value())? {
                out.push(serde_json::from_slice::<JobRow>(raw.value())?);
            }
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// Number of jobs per state.
    pub fn state_counts(&self) -> Result<Vec<(JobState, u64)>, JournalError> {
        let txn = self.read()?;
        let counters = txn.open_table(COUNTERS)?;
        JobState::ALL
            .into_iter()
            .map(|s| Ok((s, counters.get(s.counter_key())?.map_or(0, |v| v.value()))))
            .collect()
    }

    /// Jobs newest first, filtered, from the index that fits the filter best. Returns the rows
    /// and the cursor to pass as `before` for the next page, if there may be one.
    pub fn list_jobs(
        &self,
        filter: &JobFilter,
    ) -> Result<(Vec<JobRow>, Option<u64>), JournalError> {
        let txn = self.read()?;
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
                let row: JobRow = serde_json::from_slice(raw.value())?;
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
}

/// A listing request; `limit` is already validated.
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

fn current(slot: &Slot) -> Result<Arc<Database>, JournalError> {
    slot.read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| JournalError("the journal is being reopened after an I/O error".into()))
}

impl Writer {
    /// Closes and reopens the database after a failed commit. Readers hold the database only
    /// for one read, so they are waited for briefly; the file must be closed before it can be
    /// opened again.
    fn reopen(&mut self) -> Result<(), JournalError> {
        if self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return Err(JournalError(
                "a previous write failed; retrying shortly".into(),
            ));
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
        let path = self
            .path
            .as_ref()
            .ok_or_else(|| JournalError("this journal cannot be reopened".into()))?;
        let db = open_database(path)?;
        replay_log(&db, &mut self.wal)?;
        *slot = Some(Arc::new(db));
        self.broken = false;
        log::info!("journal reopened after a failed write; accepting writes again");
        Ok(())
    }

    /// Runs until every [`Journal`] handle is dropped. `on_commit` sees every committed outcome,
    /// in commit order; `on_stats` sees each commit's figures.
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
                ops: batch.len(),
                seconds: started.elapsed().as_secs_f64(),
                ok: result.is_ok(),
            });
            match result {
                Ok(outcomes) => {
                    self.note_hook_changes(&batch, &outcomes);
                    for (pending, outcome) in batch.into_iter().zip(outcomes) {
                        on_commit(&outcome);
                        pending.reply.put(Ok(outcome));
                    }
                }
                Err(err) => {
                    log::error!("journal commit failed, {} ops refused: {err}", batch.len());
                    for pending in batch {
                        pending.reply.put(Err(err.clone()));
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

    /// Brings the secret index in line with the hooks a committed batch created or revoked.
    fn note_hook_changes(&self, batch: &[Pending], outcomes: &[Outcome]) {
        for (pending, outcome) in batch.iter().zip(outcomes) {
            match (&pending.op, outcome) {
                (Op::CreateHook { hook, secret }, Outcome::HookCreated) => {
                    self.secrets
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(*secret, (hook.id.clone(), hook.project.clone()));
                }
                (Op::RevokeHook { id }, Outcome::HookRevoked) => {
                    self.secrets
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .retain(|_, (hook, _)| hook != id);
                }
                _ => {}
            }
        }
    }

    fn commit_batch(&mut self, batch: &[Pending]) -> Result<Vec<Outcome>, JournalError> {
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
    fn try_commit(&mut self, batch: &[Pending]) -> Result<Vec<Outcome>, JournalError> {
        let db = current(&self.db)?;
        let mut txn = db.begin_write()?;
        let seq = self.wal.seq + 1;
        let outcomes = apply_batch(&txn, batch.iter().map(|p| &p.op), seq)?;
        if !outcomes.iter().any(Outcome::changes) {
            txn.abort()?;
            return Ok(outcomes);
        }
        let asked = batch.iter().any(|p| matches!(p.op, Op::Checkpoint));
        if asked || self.wal.checkpoint_due() {
            txn.commit()?;
            self.wal.checkpointed(seq);
            return Ok(outcomes);
        }
        let ops: Vec<&Op> = batch
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.changes())
            .map(|(pending, _)| &pending.op)
            .collect();
        let record = wal::encode(seq, &ops)?;
        self.wal.write(&record)?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| JournalError(e.to_string()))?;
        if let Err(e) = txn.commit() {
            self.wal.unwrite();
            return Err(e.into());
        }
        self.wal.seq = seq;
        self.wal.sync(record.len())?;
        Ok(outcomes)
    }
}

/// Applies `ops` in `txn`, one after the other, and marks the transaction as holding batch
/// `seq` of the write-ahead log if any op changed something.
fn apply_batch<'a>(
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

/// Applies the log records the database does not hold yet (see [`wal`]) in one durable commit;
/// the log then starts over. Returns how many batches it applied.
fn replay_log(db: &Database, wal: &mut Wal) -> Result<usize, JournalError> {
    let bytes = wal
        .read_all()
        .map_err(|e| JournalError(format!("cannot read the journal log: {e}")))?;
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

/// Every table, opened once per write transaction.
struct Tables<'t> {
    hooks: Table<'t, &'static str, &'static [u8]>,
    secrets: Table<'t, &'static [u8], &'static str>,
    jobs: Table<'t, &'static str, &'static [u8]>,
    by_seq: Table<'t, u64, &'static str>,
    by_hook: Table<'t, (&'static str, u64), &'static str>,
    by_project: Table<'t, (&'static str, u64), &'static str>,
    open: Table<'t, &'static str, &'static str>,
    hook_counts: Table<'t, &'static str, u64>,
    counters: Table<'t, &'static str, u64>,
    /// Job rows and counters changed by this batch, written once by [`Tables::flush`] instead
    /// of a read and a write per op.
    pending: BatchChanges,
    /// Hooks looked up in this batch, by secret hash; a revocation removes its entry.
    hook_cache: std::collections::HashMap<SecretHash, Arc<Hook>>,
}

#[derive(Default)]
struct BatchChanges {
    /// Job rows changed by this batch, by id.
    rows: std::collections::BTreeMap<String, JobRow>,
    states: std::collections::HashMap<&'static str, i64>,
    seq: Option<u64>,
    hook_jobs: std::collections::HashMap<String, u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, JournalError> {
        Ok(Tables {
            hooks: txn.open_table(HOOKS)?,
            secrets: txn.open_table(HOOK_SECRETS)?,
            jobs: txn.open_table(JOBS)?,
            by_seq: txn.open_table(JOBS_BY_SEQ)?,
            by_hook: txn.open_table(JOBS_BY_HOOK)?,
            by_project: txn.open_table(JOBS_BY_PROJECT)?,
            open: txn.open_table(OPEN_BY_HOOK)?,
            hook_counts: txn.open_table(HOOK_JOB_COUNTS)?,
            counters: txn.open_table(COUNTERS)?,
            pending: BatchChanges::default(),
            hook_cache: std::collections::HashMap::new(),
        })
    }

    /// Writes the batch's job rows and counter changes; call before the commit (and before
    /// reading counters or scanning rows).
    fn flush(&mut self) -> Result<(), JournalError> {
        let pending = std::mem::take(&mut self.pending);
        for (id, row) in &pending.rows {
            let bytes = serde_json::to_vec(row)?;
            self.jobs.insert(id.as_str(), bytes.as_slice())?;
        }
        for (key, delta) in pending.states {
            let old = self.counters.get(key)?.map_or(0, |v| v.value());
            self.counters
                .insert(key, old.saturating_add_signed(delta))?;
        }
        if let Some(seq) = pending.seq {
            self.counters.insert("seq", seq)?;
        }
        for (hook, added) in pending.hook_jobs {
            let old = self
                .hook_counts
                .get(hook.as_str())?
                .map_or(0, |v| v.value());
            self.hook_counts.insert(hook.as_str(), old + added)?;
        }
        Ok(())
    }

    fn next_seq(&mut self) -> Result<u64, JournalError> {
        let last = match self.pending.seq {
            Some(s) => s,
            None => self.counters.get("seq")?.map_or(0, |v| v.value()),
        };
        self.pending.seq = Some(last + 1);
        Ok(last + 1)
    }

    fn apply(&mut self, op: &Op) -> Result<Outcome, JournalError> {
        match op {
            Op::Trigger {
                secret,
                project,
                job_id,
                now,
            } => self.trigger(secret, project, job_id, *now),
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
                Some(Outcome::Started(row.clone()))
            }),
            Op::SetCommit { job_id, commit } => self.update_job(job_id, |row| {
                if row.job.state != JobState::Building {
                    return None;
                }
                row.job.commit = Some(commit.clone());
                Some(Outcome::CommitSet)
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
                Some(Outcome::Finished(row.clone()))
            }),
            Op::Requeue { job_id } => self.update_job(job_id, |row| {
                if row.job.state != JobState::Building {
                    return None;
                }
                row.job.state = JobState::Pending;
                row.job.started_at = None;
                row.job.commit = None;
                Some(Outcome::Requeued)
            }),
            Op::Prune { keep } => self.prune(*keep),
            Op::Probe => Ok(Outcome::NotApplicable),
            Op::Checkpoint => Ok(Outcome::Checkpointed),
        }
    }

    fn get_job(&self, id: &str) -> Result<Option<JobRow>, JournalError> {
        if let Some(row) = self.pending.rows.get(id) {
            return Ok(Some(row.clone()));
        }
        Ok(match self.jobs.get(id)? {
            Some(raw) => Some(serde_json::from_slice(raw.value())?),
            None => None,
        })
    }

    /// Stores a row at the end of the batch ([`Tables::flush`]): a trigger rewrites the job it
    /// supersedes, which is often the one the previous trigger of the same batch created, so
    /// each row is encoded and written once, in its final state, in id order.
    fn put_job(&mut self, row: JobRow) {
        self.pending.rows.insert(row.job.id.clone(), row);
    }

    fn bump(&mut self, key: &'static str, delta: i64) {
        *self.pending.states.entry(key).or_default() += delta;
    }

    /// Records a state change in the per-state counters and the open-job index.
    fn account(&mut self, row: &JobRow, from: Option<JobState>) -> Result<(), JournalError> {
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
        }
        Ok(())
    }

    /// Applies `change` to a stored job; `None` from it means "not applicable".
    fn update_job(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut JobRow) -> Option<Outcome>,
    ) -> Result<Outcome, JournalError> {
        let Some(mut row) = self.get_job(id)? else {
            return Ok(Outcome::NotFound);
        };
        let from = row.job.state;
        let Some(outcome) = change(&mut row) else {
            return Ok(Outcome::NotApplicable);
        };
        self.account(&row, Some(from))?;
        self.put_job(row);
        Ok(outcome)
    }

    /// The hook behind a secret; found hooks are remembered for the rest of the batch, which
    /// often holds many triggers of one hook.
    fn hook_by_secret(&mut self, secret: &SecretHash) -> Result<Option<Arc<Hook>>, JournalError> {
        if let Some(hook) = self.hook_cache.get(secret) {
            return Ok(Some(hook.clone()));
        }
        let Some(id) = self.secrets.get(&secret[..])? else {
            return Ok(None);
        };
        let Some(raw) = self.hooks.get(id.value())? else {
            return Ok(None);
        };
        let hook = Arc::new(serde_json::from_slice::<HookRow>(raw.value())?.hook);
        self.hook_cache.insert(*secret, hook.clone());
        Ok(Some(hook))
    }

    fn trigger(
        &mut self,
        secret: &SecretHash,
        project: &str,
        job_id: &str,
        now: u64,
    ) -> Result<Outcome, JournalError> {
        let Some(hook) = self.hook_by_secret(secret)? else {
            return Ok(Outcome::NotFound);
        };
        if hook.project != project {
            return Ok(Outcome::NotFound);
        }
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
                    self.account(&prev, Some(from))?;
                    self.put_job(prev);
                    superseded = Some((prev_id, from));
                }
            }
        }
        let seq = self.next_seq()?;
        let row = JobRow {
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
            },
        };
        self.account(&row, None)?;
        self.put_job(row.clone());
        self.by_seq.insert(seq, job_id)?;
        self.by_hook.insert((hook_id.as_str(), seq), job_id)?;
        self.by_project.insert((project, seq), job_id)?;
        self.open.insert(hook_id.as_str(), job_id)?;
        *self.pending.hook_jobs.entry(hook_id).or_default() += 1;
        Ok(Outcome::Triggered { row, superseded })
    }

    fn create_hook(&mut self, hook: &Hook, secret: &SecretHash) -> Result<Outcome, JournalError> {
        let row = HookRow {
            secret_sha256: hex(secret),
            hook: hook.clone(),
        };
        let bytes = serde_json::to_vec(&row)?;
        self.hooks.insert(hook.id.as_str(), bytes.as_slice())?;
        self.secrets.insert(&secret[..], hook.id.as_str())?;
        Ok(Outcome::HookCreated)
    }

    fn revoke_hook(&mut self, id: &str) -> Result<Outcome, JournalError> {
        let Some(raw) = self.hooks.remove(id)? else {
            return Ok(Outcome::NotFound);
        };
        let row: HookRow = serde_json::from_slice(raw.value())?;
        drop(raw);
        if let Some(secret) = unhex(&row.secret_sha256) {
            self.secrets.remove(&secret[..])?;
        }
        self.hook_cache.retain(|_, hook| hook.id != id);
        Ok(Outcome::HookRevoked)
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
                if !row.job.state.is_terminal() {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<SecretHash> {
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

    fn journal() -> (tempdir::Dir, Journal) {
        let dir = tempdir::Dir::new();
        let (journal, writer) = Journal::open(&dir.path().join("j.redb")).unwrap();
        std::thread::spawn(move || writer.run(|_| {}, |_| {}));
        (dir, journal)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "deployhook-journal-{}-{}",
                    std::process::id(),
                    crate::secret::random_base62(8).unwrap()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn hook(j: &Journal, id: &str, secret: &str) {
        assert_eq!(j.submit(hook_op(id, secret)).unwrap(), Outcome::HookCreated);
    }

    /// Applies `ops` as one batch, the way the writer thread does (one transaction).
    fn one_batch(w: &mut Writer, ops: Vec<Op>) -> Vec<Outcome> {
        let batch: Vec<Pending> = ops
            .into_iter()
            .map(|op| Pending {
                op,
                reply: ReplyTo::Waiter(Arc::new(ReplySlot::default())),
            })
            .collect();
        w.try_commit(&batch).unwrap()
    }

    fn trigger_op(secret: &str, job: &str) -> Op {
        Op::Trigger {
            secret: hash_secret(secret),
            project: "site".into(),
            job_id: job.into(),
            now: 5,
        }
    }

    fn hook_op(id: &str, secret: &str) -> Op {
        Op::CreateHook {
            hook: Hook {
                id: id.into(),
                name: "n".into(),
                project: "site".into(),
                branch: "main".into(),
                created_at: 1,
                last_triggered_at: None,
            },
            secret: hash_secret(secret),
        }
    }

    #[test]
    fn one_batch_sees_its_own_jobs_and_revocations() {
        let dir = tempdir::Dir::new();
        let (j, mut w) = Journal::open(&dir.path().join("j.redb")).unwrap();
        let out = one_batch(
            &mut w,
            vec![
                hook_op("hook_a", "s1"),
                trigger_op("s1", "J1"),
                trigger_op("s1", "J2"),
                Op::RevokeHook {
                    id: "hook_a".into(),
                },
                trigger_op("s1", "J3"),
            ],
        );
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
        let dir = tempdir::Dir::new();
        let (j, mut w) = Journal::open(&dir.path().join("j.redb")).unwrap();
        let total = 2 * MAX_PRUNE_PER_OP + 100;
        let mut ops = vec![hook_op("hook_a", "s1")];
        ops.extend((0..total).map(|i| trigger_op("s1", &format!("J{i:05}"))));
        one_batch(&mut w, ops);
        let mut steps = Vec::new();
        loop {
            match one_batch(&mut w, vec![Op::Prune { keep: 10 }]).remove(0) {
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

    /// The ids of the open (PENDING or BUILDING) jobs.
    fn open_ids(j: &Journal) -> Vec<String> {
        j.open_jobs()
            .unwrap()
            .into_iter()
            .map(|r| r.job.id)
            .collect()
    }

    fn trigger(j: &Journal, secret: &str, job: &str) -> Outcome {
        j.submit(trigger_op(secret, job)).unwrap()
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
    fn wrong_project_and_revoked_secret_are_not_found() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        let out = j
            .submit(Op::Trigger {
                secret: hash_secret("s1"),
                project: "other".into(),
                job_id: "J1".into(),
                now: 1,
            })
            .unwrap();
        assert_eq!(out, Outcome::NotFound);
        assert!(j.secret_matches(&hash_secret("s1"), "site"));
        assert_eq!(
            j.submit(Op::RevokeHook {
                id: "hook_a".into()
            })
            .unwrap(),
            Outcome::HookRevoked
        );
        assert_eq!(trigger(&j, "s1", "J2"), Outcome::NotFound);
        assert!(!j.secret_matches(&hash_secret("s1"), "site"));
        assert_eq!(
            j.submit(Op::RevokeHook {
                id: "hook_a".into()
            })
            .unwrap(),
            Outcome::NotFound
        );
    }

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
    fn a_half_created_journal_is_made_again() {
        let d = tempdir::Dir::new();
        let path = d.path().join("j.redb");
        // What a crash during creation leaves: the temporary file, never the journal itself.
        std::fs::write(path.with_extension("new"), vec![0u8; 4096]).unwrap();
        let (j, writer) = Journal::open(&path).unwrap();
        std::thread::spawn(move || writer.run(|_| {}, |_| {}));
        hook(&j, "hook_a", "s1");
        assert!(!path.with_extension("new").exists());
    }

    /// A journal whose batches go to the write-ahead log only (no checkpoint for an hour).
    fn logged_journal(dir: &Path) -> Journal {
        let (j, mut writer) = Journal::open(&dir.join("j.redb")).unwrap();
        writer.set_checkpoints(u64::MAX, Duration::from_secs(3600));
        std::thread::spawn(move || writer.run(|_| {}, |_| {}));
        j
    }

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
        let live = tempdir::Dir::new();
        let j = logged_journal(live.path());
        hook(&j, "hook_a", "s1");
        let ids: Vec<String> = (0..40).map(|n| format!("J{n:02}")).collect();
        for id in &ids {
            assert!(matches!(trigger(&j, "s1", id), Outcome::Triggered { .. }));
        }
        // Without its log the database holds none of it: the log is what made it durable.
        let bare = tempdir::Dir::new();
        copy_files(live.path(), bare.path(), false);
        let (b, _w) = Journal::open(&bare.path().join("j.redb")).unwrap();
        assert!(b.job("J39").unwrap().is_none());
        assert!(b.hooks().unwrap().is_empty());
        // With it, every acknowledged op is back, in order: the newest job is the open one.
        let copy = tempdir::Dir::new();
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
        let live = tempdir::Dir::new();
        let j = logged_journal(live.path());
        hook(&j, "hook_a", "s1");
        trigger(&j, "s1", "J1");
        let copy = tempdir::Dir::new();
        copy_files(live.path(), copy.path(), true);
        std::fs::remove_file(copy.path().join("j.redb")).unwrap();
        let (c, _w) = Journal::open(&copy.path().join("j.redb")).unwrap();
        assert!(c.hooks().unwrap().is_empty());
        assert!(c.job("J1").unwrap().is_none());
    }

    #[test]
    fn secrets_are_stored_only_as_hashes() {
        let d = tempdir::Dir::new();
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
        drop(j);
        assert_eq!(unhex(&hex(&hash_secret(secret))), Some(hash_secret(secret)));
    }
}
