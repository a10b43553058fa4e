//! The journal's tables and how rows are stored in them; opening or creating the database file;
//! loading the hooks' secret hashes at open.
//!
//! Rows are JSON ([`JobRow`], [`HookRow`]); every job is indexed by sequence number, by hook and
//! by project (`(key, seq) -> id`, so listings are range scans), and `OPEN_BY_HOOK` holds each
//! hook's open job so that start-up reads only open jobs, whatever the history.

use super::error::JournalError;
use super::records::{unhex, HookRow, JobRow};
use super::SecretEntry;
use crate::secret::SecretHash;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

const HOOKS_NAME: &str = "hooks";
const JOBS_NAME: &str = "jobs";

pub(super) const HOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new(HOOKS_NAME);
pub(super) const HOOK_SECRETS: TableDefinition<&[u8], &str> = TableDefinition::new("hook_secrets");
/// Secrets of revoked hooks (SHA-256 -> hook id): only so that the log can say why a trigger
/// was refused ("revoked hook hook_…" rather than "unknown secret"). Never accepted.
pub(super) const REVOKED_SECRETS: TableDefinition<&[u8], &str> =
    TableDefinition::new("revoked_secrets");
pub(super) const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new(JOBS_NAME);
pub(super) const JOBS_BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("jobs_by_seq");
pub(super) const JOBS_BY_HOOK: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("jobs_by_hook");
pub(super) const JOBS_BY_PROJECT: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("jobs_by_project");
pub(super) const OPEN_BY_HOOK: TableDefinition<&str, &str> = TableDefinition::new("open_by_hook");
/// Per-hook number of stored jobs, for retention.
pub(super) const HOOK_JOB_COUNTS: TableDefinition<&str, u64> =
    TableDefinition::new("hook_job_counts");
/// Each project's [`NotifyOn`](super::records::NotifyOn) (JSON), as last set from the config;
/// a project without a `notify` command has no row.
pub(super) const NOTIFY_POLICY: TableDefinition<&str, &[u8]> =
    TableDefinition::new("notify_policy");
/// The outbox: job id -> when its notification is next due (Unix ms). A row is added in the
/// commit that ends the job and removed in the one that records the notification sent or
/// given up.
pub(super) const OUTBOX: TableDefinition<&str, u64> = TableDefinition::new("outbox");
/// `seq` (last sequence number), `state.<STATE>` (jobs per state) and `wal_seq` (the last
/// batch the database holds, see [`super::wal`]).
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The `COUNTERS` key of the last batch the database holds (its write-ahead log record number).
pub(super) const WAL_SEQ: &str = "wal_seq";
/// The `COUNTERS` key of the last job sequence number.
pub(super) const SEQ: &str = "seq";

/// redb's page cache; its default may grow to 1 GiB, more than a small daemon should hold.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

pub(super) fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(CACHE_BYTES);
    b
}

/// Opens the journal file, creating it atomically when it does not exist: redb writes a new
/// file's magic number last, so a crash while creating it would leave a file that is not a
/// database. A new journal is made complete under a temporary name, synced, then renamed.
pub(super) fn open_database(path: &Path) -> Result<Database, JournalError> {
    if !path.exists() {
        let fresh = path.with_extension("new");
        let _ = std::fs::remove_file(&fresh);
        let db = builder().create(&fresh)?;
        create_tables(&db)?;
        drop(db);
        std::fs::rename(&fresh, path).map_err(|e| JournalError::Create {
            path: path.to_path_buf(),
            source: Arc::new(e),
        })?;
        if let Some(dir) = path.parent() {
            let _ = crate::sys::sync_dir(dir);
        }
    }
    Ok(builder().create(path)?)
}

/// Makes sure every table exists, so read transactions never meet a missing one.
pub(super) fn create_tables(db: &Database) -> Result<(), JournalError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(HOOKS)?;
        txn.open_table(HOOK_SECRETS)?;
        txn.open_table(REVOKED_SECRETS)?;
        txn.open_table(JOBS)?;
        txn.open_table(JOBS_BY_SEQ)?;
        txn.open_table(JOBS_BY_HOOK)?;
        txn.open_table(JOBS_BY_PROJECT)?;
        txn.open_table(OPEN_BY_HOOK)?;
        txn.open_table(HOOK_JOB_COUNTS)?;
        txn.open_table(COUNTERS)?;
        txn.open_table(NOTIFY_POLICY)?;
        txn.open_table(OUTBOX)?;
    }
    txn.commit()?;
    Ok(())
}

/// Every hook's secret hash, with its hook id and project, from the hooks table.
pub(super) fn load_secrets(
    db: &Database,
) -> Result<HashMap<SecretHash, SecretEntry>, JournalError> {
    let txn = db.begin_read()?;
    let hooks = txn.open_table(HOOKS)?;
    let mut out = HashMap::new();
    for entry in hooks.iter()? {
        let (id, raw) = entry?;
        let row = decode_hook(id.value(), raw.value())?;
        if let Some(secret) = unhex(&row.secret_sha256) {
            out.insert(
                secret,
                SecretEntry {
                    hook: row.hook.id,
                    project: row.hook.project,
                    branch: row.hook.branch,
                    revoked: false,
                },
            );
        }
    }
    // A journal made before revoked secrets were kept has no such table: nothing to load.
    if let Ok(revoked) = txn.open_table(REVOKED_SECRETS) {
        for entry in revoked.iter()? {
            let (secret, hook) = entry?;
            if let Ok(secret) = SecretHash::try_from(secret.value()) {
                out.entry(secret).or_insert(SecretEntry {
                    hook: hook.value().to_string(),
                    project: String::new(),
                    branch: String::new(),
                    revoked: true,
                });
            }
        }
    }
    Ok(out)
}

/// A JSON row stored under `key` in `table`; one that does not decode is named by both.
pub(super) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    raw: &[u8],
) -> Result<T, JournalError> {
    serde_json::from_slice(raw).map_err(|e| JournalError::Corrupt {
        table,
        key: key.to_string(),
        detail: e.to_string(),
    })
}

/// The job row stored under `id` in `JOBS`.
pub(super) fn decode_job(id: &str, raw: &[u8]) -> Result<JobRow, JournalError> {
    decode(JOBS_NAME, id, raw)
}

/// The hook row stored under `id` in `HOOKS`.
pub(super) fn decode_hook(id: &str, raw: &[u8]) -> Result<HookRow, JournalError> {
    decode(HOOKS_NAME, id, raw)
}

/// A row (or log record) as stored; `what` names it should encoding ever fail.
pub(super) fn encode(what: &'static str, value: &impl Serialize) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(value).map_err(|e| JournalError::Encode {
        what,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::{hook, Dir};
    use crate::journal::Journal;

    #[test]
    fn a_half_created_journal_is_made_again() {
        let d = Dir::new();
        let path = d.path().join("j.redb");
        // What a crash during creation leaves: the temporary file, never the journal itself.
        std::fs::write(path.with_extension("new"), vec![0u8; 4096]).unwrap();
        let (j, writer) = Journal::open(&path).unwrap();
        std::thread::spawn(move || writer.run(|_| {}, |_| {}));
        hook(&j, "hook_a", "s1");
        assert!(!path.with_extension("new").exists());
    }

    #[test]
    fn an_undecodable_row_names_its_table_and_key() {
        match decode_job("J1", b"{\"seq\":") {
            Err(JournalError::Corrupt { table, key, .. }) => {
                assert_eq!((table, key.as_str()), ("jobs", "J1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_hook("hook_a", b"[]"),
            Err(JournalError::Corrupt { table: "hooks", .. })
        ));
    }
}
