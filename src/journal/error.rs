//! The journal's errors. [`JournalError`] says what went wrong and names the table, row or file
//! it concerns; [`ReadError`] is a failed read query, a type of its own so that a caller cannot
//! answer a failed read as if a write had been refused. redb's errors are sorted into these
//! variants here and go no further.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// An underlying error, shared: a failed batch answers each of its ops with the same error.
pub type Source = Arc<dyn StdError + Send + Sync>;

/// Why the journal could not do what it was asked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum JournalError {
    /// The disk under the database failed (I/O error, disk full): a write that met it was not
    /// made durable and was refused; the writer reopens the database before its next batch.
    Io { source: Source },
    /// The write-ahead log could not be opened, read, written or synced (`action`): a batch
    /// that met it was refused.
    LogFile {
        /// The log's path, unless the journal lives on a custom backend (tests).
        path: Option<PathBuf>,
        action: &'static str,
        source: Arc<io::Error>,
    },
    /// A new journal file could not be put in place at `path`.
    Create {
        path: PathBuf,
        source: Arc<io::Error>,
    },
    /// The stored row `key` of `table` cannot be decoded: the file was damaged, or written by
    /// an incompatible version.
    Corrupt {
        table: &'static str,
        key: String,
        detail: String,
    },
    /// A record could not be encoded (a bug: records are plain data).
    Encode { what: &'static str, detail: String },
    /// A batch's record is larger than the write-ahead log's format allows (4 GiB).
    BatchTooLarge { bytes: usize },
    /// A write failed a moment ago; the database is closed until the writer has reopened it.
    Reopening,
    /// A write failed and this journal, on a custom storage backend, cannot be reopened.
    CannotReopen,
    /// The writer thread has stopped: the daemon is shutting down, or the thread died.
    Stopped,
    /// The database refused for another reason: a damaged file, a format it cannot read,
    /// another process holding it, or a bug.
    Storage { source: Source },
}

impl JournalError {
    /// Whether the same request may succeed later without an operator's help (the disk may
    /// free up, a reopen completes): what a client is told to do about a failed request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            JournalError::Io { .. } | JournalError::LogFile { .. } | JournalError::Reopening
        )
    }
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io { source } => write!(
                f,
                "I/O error on the journal's disk: {source}; nothing that met it was \
                 acknowledged. Free disk space or check the disk; writes resume by themselves"
            ),
            JournalError::LogFile {
                path,
                action,
                source,
            } => {
                write!(f, "cannot {action} the journal's write-ahead log")?;
                if let Some(path) = path {
                    write!(f, " {}", path.display())?;
                }
                write!(
                    f,
                    ": {source}; nothing that met it was acknowledged. Check the disk (full? \
                     read-only?); writes resume by themselves"
                )
            }
            JournalError::Create { path, source } => write!(
                f,
                "cannot create the journal {}: {source}. Check that state_dir is writable",
                path.display()
            ),
            JournalError::Corrupt { table, key, detail } => write!(
                f,
                "the journal's {table} row {key:?} cannot be decoded ({detail}). The file is \
                 damaged or was written by an incompatible version; restore it from a backup"
            ),
            JournalError::Encode { what, detail } => {
                write!(
                    f,
                    "cannot encode {what} for the journal ({detail}); this is a bug"
                )
            }
            JournalError::BatchTooLarge { bytes } => write!(
                f,
                "a batch of {bytes} bytes is too large for the journal's write-ahead log; it \
                 was refused"
            ),
            JournalError::Reopening => write!(
                f,
                "the journal is being reopened after a failed write; retry in a few seconds"
            ),
            JournalError::CannotReopen => write!(
                f,
                "a write failed and this journal cannot be reopened; restart the daemon"
            ),
            JournalError::Stopped => write!(
                f,
                "the journal writer has stopped (the daemon is shutting down); nothing more is \
                 recorded"
            ),
            JournalError::Storage { source } => write!(
                f,
                "the journal's database refused the operation: {source}. If this persists \
                 after a restart, restore the journal from a backup"
            ),
        }
    }
}

impl StdError for JournalError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            JournalError::Io { source } | JournalError::Storage { source } => Some(&**source),
            JournalError::LogFile { source, .. } | JournalError::Create { source, .. } => {
                Some(&**source)
            }
            _ => None,
        }
    }
}

impl From<redb::Error> for JournalError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(source) => JournalError::Io {
                source: Arc::new(source),
            },
            redb::Error::Backend(source) => JournalError::Io {
                source: Arc::from(source),
            },
            // redb refuses every use of a database after an I/O error until it is reopened.
            redb::Error::PreviousIo => JournalError::Reopening,
            other => JournalError::Storage {
                source: Arc::new(other),
            },
        }
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
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// A read query failed; nothing was being written.
#[derive(Debug, Clone)]
pub struct ReadError {
    /// What was being read, e.g. "the job listing".
    pub query: &'static str,
    /// Why it failed.
    pub cause: JournalError,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot read {} from the journal: {}",
            self.query, self.cause
        )
    }
}

impl StdError for ReadError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.cause)
    }
}

/// For callers that read and write under one error type (start-up recovery).
impl From<ReadError> for JournalError {
    fn from(e: ReadError) -> Self {
        e.cause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_errors_are_sorted_by_what_an_operator_can_do() {
        let disk = io::Error::new(io::ErrorKind::StorageFull, "No space left on device");
        let io = JournalError::from(redb::Error::Io(disk));
        assert!(matches!(io, JournalError::Io { .. }));
        assert!(io.is_transient());
        assert!(io.to_string().contains("No space left on device"));
        let previous = JournalError::from(redb::StorageError::PreviousIo);
        assert!(matches!(previous, JournalError::Reopening));
        let damaged = JournalError::from(redb::Error::Corrupted("bad page".into()));
        assert!(matches!(damaged, JournalError::Storage { .. }));
        assert!(!damaged.is_transient());
        assert!(StdError::source(&damaged).is_some());
    }

    #[test]
    fn messages_name_what_failed_and_what_to_do() {
        let corrupt = JournalError::Corrupt {
            table: "jobs",
            key: "J1".into(),
            detail: "expected value".into(),
        };
        let read = ReadError {
            query: "the job listing",
            cause: corrupt,
        };
        let text = read.to_string();
        assert!(text.starts_with("cannot read the job listing from the journal: "));
        assert!(text.contains("jobs row \"J1\""));
        assert!(text.contains("restore it from a backup"));
        let log = JournalError::LogFile {
            path: Some("/state/journal.wal".into()),
            action: "sync",
            source: Arc::new(io::Error::other("EIO")),
        };
        assert!(log
            .to_string()
            .starts_with("cannot sync the journal's write-ahead log /state/journal.wal: EIO"));
    }
}
