//! Why the daemon could not start, or why it ended badly: one variant per cause, with the
//! address, path or thread it concerns and the error underneath.

use crate::admin::BindError;
use crate::config::ConfigError;
use crate::journal::JournalError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the daemon could not start, or why it ended badly.
#[derive(Debug)]
pub enum DaemonError {
    /// The config file is missing or invalid.
    Config(ConfigError),
    /// The signal handlers could not be installed.
    Signals(io::Error),
    /// The admin socket could not be bound; the error names the socket or the group.
    AdminSocket(BindError),
    /// A TCP listener could not be bound; `what` is its config key.
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// A folder under `state_dir` could not be made or moved aside.
    StateDir { path: PathBuf, source: io::Error },
    /// The journal could not be opened (or its write-ahead log replayed).
    Journal { path: PathBuf, source: JournalError },
    /// The open jobs could not be read back or requeued at start.
    Recovery(JournalError),
    /// A thread could not be started.
    Thread { name: String, source: io::Error },
    /// A listener's thread or event loop could not be started.
    Listener {
        what: &'static str,
        source: io::Error,
    },
    /// A core thread died or ended while the daemon ran; it stopped so that it is restarted.
    ThreadDied { name: String },
}

impl DaemonError {
    /// The error for a thread named `name` that could not be started.
    pub(super) fn thread(name: &str) -> impl FnOnce(io::Error) -> DaemonError + '_ {
        move |source| DaemonError::Thread {
            name: name.to_string(),
            source,
        }
    }
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Config(e) => write!(f, "{e}"),
            DaemonError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            DaemonError::AdminSocket(e) => write!(f, "{e}"),
            DaemonError::Bind { what, addr, source } => {
                write!(f, "cannot listen on {addr} ({what}): {source}")
            }
            DaemonError::StateDir { path, source } => {
                write!(f, "cannot prepare {}: {source}", path.display())
            }
            DaemonError::Journal { path, source } => {
                write!(f, "cannot open the journal {}: {source}", path.display())
            }
            DaemonError::Recovery(e) => write!(f, "cannot read open jobs: {e}"),
            DaemonError::Thread { name, source } => {
                write!(f, "cannot start thread {name}: {source}")
            }
            DaemonError::Listener { what, source } => {
                write!(f, "cannot start the {what} listener: {source}")
            }
            DaemonError::ThreadDied { name } => {
                write!(
                    f,
                    "thread {name} died; stopped so that the daemon is restarted"
                )
            }
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::Config(e) => Some(e),
            DaemonError::Signals(source)
            | DaemonError::Bind { source, .. }
            | DaemonError::StateDir { source, .. }
            | DaemonError::Thread { source, .. }
            | DaemonError::Listener { source, .. } => Some(source),
            DaemonError::AdminSocket(e) => Some(e),
            DaemonError::Journal { source, .. } => Some(source),
            DaemonError::Recovery(e) => Some(e),
            DaemonError::ThreadDied { .. } => None,
        }
    }
}
