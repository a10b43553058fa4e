//! The daemon's front: the hook listener, the status listener and the admin socket, started on
//! the sockets [`claim`](super::claim) bound, once the core runs; stopped first.

use super::core::Core;
use super::error::DaemonError;
use crate::admin::Admin;
use crate::http::event_loop::Listener;
use crate::http::limits::Limits;
use crate::http::status::StatusHandler;
use crate::http::trigger::TriggerHandler;
use crate::http::workers::Pool;
use crate::supervise::spawn_core;
use crate::sys;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

/// Threads that answer the status listener's requests (its connections live on one event loop).
const STATUS_THREADS: usize = 4;

/// The daemon's outside: the hook and status listeners and the admin socket.
pub(super) struct Front {
    pub(super) public: Listener,
    pub(super) status: Listener,
    /// A second handle on the admin socket, to wake its accept at stop.
    admin: UnixListener,
    admin_path: PathBuf,
}

impl Front {
    pub(super) fn start(
        core: &Core,
        public: TcpListener,
        status: TcpListener,
        admin: UnixListener,
        started: Instant,
    ) -> Result<Front, DaemonError> {
        let public = Listener::start(
            public,
            "http-public",
            Arc::new(TriggerHandler {
                journal: core.journal.clone(),
                metrics: core.metrics.clone(),
                waiters: core.waiters.clone(),
                config: core.config.clone(),
            }),
            Limits::DEFAULT,
        )
        .map_err(|source| DaemonError::Listener {
            what: "hook",
            source,
        })?;
        let status_handler = Arc::new(StatusHandler {
            journal: core.journal.clone(),
            metrics: core.metrics.clone(),
            config: core.config.clone(),
            started,
        });
        let status_pool = Pool::start(
            "http-status-worker",
            STATUS_THREADS,
            Arc::new(move |req| status_handler.handle(req)),
        )
        .map_err(DaemonError::thread("http-status-worker"))?;
        let status = Listener::start(
            status,
            "http-status",
            Arc::new(status_pool),
            Limits::DEFAULT,
        )
        .map_err(|source| DaemonError::Listener {
            what: "status",
            source,
        })?;
        let admin_path = core
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .admin_socket
            .clone();
        let handle = admin.try_clone().map_err(|source| DaemonError::Listener {
            what: "admin",
            source,
        })?;
        let service = Arc::new(Admin {
            journal: core.journal.clone(),
            config: core.config.clone(),
            metrics: core.metrics.clone(),
        });
        spawn_core("admin", move || service.serve(admin)).map_err(DaemonError::thread("admin"))?;
        Ok(Front {
            public,
            status,
            admin: handle,
            admin_path,
        })
    }

    /// Stops accepting anything new; requests in progress finish on their own.
    pub(super) fn stop(mut self) {
        self.public.stop();
        self.status.stop();
        sys::shutdown_listener(&self.admin);
        let _ = std::fs::remove_file(&self.admin_path);
    }
}
