//! `deployhook serve`: wires the threads together, stops them, and handles signals. The rules
//! it applies live with their owners: recovery in the scheduler, what a commit means in
//! [`Event::after_commit`], the reload merge in [`Config::reloaded`].
//!
//! A daemon's life, in [`run`]'s order:
//! 1. [`claim`] process-wide state while no other thread exists: sockets passed by systemd and
//!    the watchdog settings (read, then removed from the environment), the open-file limit,
//!    signal handlers, the admin socket (bound under a process-wide umask) and the TCP
//!    listeners; core-thread deaths are made fatal ([`supervise::arm`]).
//! 2. Start the core: janitor, state folders, journal and its writer, recovery (open jobs go
//!    to the scheduler before the first trigger can), scheduler, build pool, pruner, and the
//!    notifier (with the journal's writer: what a commit adds to the outbox wakes it).
//! 3. Start the front: hook listener, status listener, admin socket. Then log the ready line,
//!    tell systemd, and start the watchdog.
//! 4. Wait for a stop: SIGTERM or SIGINT, or the death of a core thread. SIGHUP reloads.
//! 5. Stop the front: nothing new comes in.
//! 6. Stop the core: running builds are stopped (they start over after the restart), the main
//!    thread waits for the last build thread to end (a channel that closes then), and the
//!    write-ahead log is folded into the journal.
//!
//! Files: this one holds the life above and the signals; `core.rs` starts and stops the core,
//! `front.rs` the front; `error.rs` says what can go wrong.
//!
//! Threads: `journal-writer`, `scheduler`, `build-N` (the pool), `pruner`, `notifier` (runs
//! `notify` commands), `http-public` (one
//! event loop for every hook connection), `http-status` (accept) with its connection threads,
//! `admin`, `watchdog` (all core threads: see [`supervise`]), `janitor`, and the main thread,
//! which waits for signals.

mod core;
mod error;
mod front;

pub use error::DaemonError;

use self::core::{Core, SHUTDOWN_SLACK};
use self::front::Front;
use crate::admin;
use crate::config::{self, Config};
use crate::journal::{Journal, Op};
use crate::scheduler::Event;
use crate::supervise::{self, spawn_core, At};
use crate::{sys, systemd};
use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

/// Extra time, past the shutdown's own bound, before a daemon that lost a core thread is
/// exited by force (see [`supervise`]).
const BACKSTOP_SLACK: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(config_path: &Path) -> Result<(), DaemonError> {
    let config = config::load(config_path).map_err(DaemonError::Config)?;
    log_warnings(&config);
    let claim = claim(&config)?;
    run(config, claim)
}

/// Logs what the config allows but advises against (a password in a repo URL).
fn log_warnings(config: &Config) {
    for warning in config.projects.values().flat_map(config::Project::warnings) {
        log::warn!("{}: {warning}", config.path.display());
    }
}

/// What the daemon takes of the process before any thread exists.
pub struct Claim {
    /// SIGTERM, SIGINT and SIGHUP, delivered to the main thread's loop.
    signals: Signals,
    /// The admin socket, bound with its mode.
    admin: UnixListener,
    /// The hook listener's socket (`listen`), passed by systemd or bound here.
    public: TcpListener,
    /// The status listener's socket (`status_listen`).
    status: TcpListener,
    /// How often systemd wants a watchdog ping, if it does.
    watchdog: Option<Duration>,
}

/// Claims process-wide state (see the module doc, step 1). Must run while the calling thread is
/// the process's only one: it reads and changes the environment and the umask.
pub fn claim(config: &Config) -> Result<Claim, DaemonError> {
    let mut inherited = sys::take_listen_fds();
    let watchdog = systemd::watchdog_interval();
    sys::raise_nofile_limit();
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(DaemonError::Signals)?;
    let wake_main = signals.handle();
    supervise::arm(
        config.kill_grace + SHUTDOWN_SLACK + BACKSTOP_SLACK,
        move || wake_main.close(),
    );
    let admin = admin::bind(&config.admin_socket, config.admin_group.as_deref())
        .map_err(DaemonError::AdminSocket)?;
    let public = listener_for(config.listen, "listen", &mut inherited)?;
    let status = listener_for(config.status_listen, "status_listen", &mut inherited)?;
    for extra in &inherited {
        log::warn!(
            "ignoring a socket passed by systemd for {}: it matches neither listen nor status_listen",
            extra.local_addr().map_or_else(|_| "?".into(), |a| a.to_string())
        );
    }
    Ok(Claim {
        signals,
        admin,
        public,
        status,
        watchdog,
    })
}

/// Runs the daemon on what [`claim`] took, until SIGTERM or SIGINT (or a core thread's death).
pub fn run(mut config: Config, claim: Claim) -> Result<(), DaemonError> {
    let Claim {
        mut signals,
        admin,
        public,
        status,
        watchdog,
    } = claim;
    let started = Instant::now();
    adopt_bound_addresses(&mut config, &public, &status);

    let core = Core::start(&config)?;
    let front = Front::start(&core, public, status, admin, started)?;
    log_ready(&config, &core, &front);
    systemd::ready();
    if let Some(interval) = watchdog {
        let (journal, events) = (core.journal.clone(), core.events.clone());
        spawn_core("watchdog", move || watchdog_loop(interval, journal, events))
            .map_err(DaemonError::thread("watchdog"))?;
    }

    wait_for_stop(&mut signals, &config.path, &core);

    supervise::stopping();
    systemd::stopping();
    log::info!("shutting down: no new triggers; stopping running builds (they start over after the restart)");
    front.stop();
    core.stop();
    // Read once every thread has stopped: a death during the stop counts too, and a panicking
    // thread has reported by now even if one whose channel it closed reported first.
    match supervise::died() {
        Some(name) => Err(DaemonError::ThreadDied { name }),
        None => {
            log::info!("stopped");
            Ok(())
        }
    }
}

/// The ready line: where the daemon answers, and what it found at start.
fn log_ready(config: &Config, core: &Core, front: &Front) {
    log::info!(
        "ready public={} status={} admin={} journal={} workers={} recovered_jobs={}",
        front.public.local_addr(),
        front.status.local_addr(),
        config.admin_socket.display(),
        config.journal_path().display(),
        config.workers,
        core.recovered,
    );
}

/// The listener for `addr`: a socket systemd passed with that address, else a new one.
fn listener_for(
    addr: SocketAddr,
    what: &'static str,
    inherited: &mut Vec<TcpListener>,
) -> Result<TcpListener, DaemonError> {
    if let Some(i) = inherited
        .iter()
        .position(|l| l.local_addr().is_ok_and(|a| a == addr))
    {
        log::info!("{what}: using the socket systemd passed for {addr}");
        return Ok(inherited.swap_remove(i));
    }
    TcpListener::bind(addr).map_err(|source| DaemonError::Bind { what, addr, source })
}

/// Pings systemd's watchdog every half interval, but only after the journal writer and the
/// scheduler have answered and while no core thread has died: a wedged or broken daemon stops
/// pinging and systemd restarts it.
fn watchdog_loop(interval: Duration, journal: Journal, events: Sender<Event>) {
    let half = interval / 2;
    loop {
        std::thread::sleep(half);
        supervise::fault_point(At::Event);
        // Any answer, even "disk full", shows the writer thread is alive.
        let _ = journal.submit(Op::Probe);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let scheduler_alive = events.send(Event::Ping(tx)).is_ok() && rx.recv_timeout(half).is_ok();
        if !supervise::healthy() {
            log::error!("watchdog: a core thread died; not pinging systemd");
        } else if scheduler_alive {
            systemd::watchdog();
        } else {
            log::error!("watchdog: the scheduler does not answer; not pinging systemd");
        }
    }
}

/// With port 0 (any free port) the real addresses are only known once bound; the default
/// `public_url` follows the real hook address.
fn adopt_bound_addresses(config: &mut Config, public: &TcpListener, status: &TcpListener) {
    let default_url = format!("http://{}", config.listen);
    if let (Ok(p), Ok(s)) = (public.local_addr(), status.local_addr()) {
        if config.public_url == default_url {
            config.public_url = format!("http://{p}");
        }
        config.listen = p;
        config.status_listen = s;
    }
}

/// Handles signals until one asks the daemon to stop, or a core thread's death closes them.
fn wait_for_stop(signals: &mut Signals, path: &Path, core: &Core) {
    for signal in signals.forever() {
        match signal {
            SIGHUP => reload(path, core),
            _ => return,
        }
    }
}

/// Re-reads the config (see [`Config::reloaded`]). An invalid file changes nothing.
fn reload(path: &Path, core: &Core) {
    systemd::reloading();
    match config::load(path) {
        Ok(new) => {
            log_warnings(&new);
            let mut guard = core.config.write().unwrap_or_else(PoisonError::into_inner);
            for key in guard.restart_needed(&new) {
                log::warn!("config reload: `{key}` changed; it takes effect after a restart");
            }
            *guard = Arc::new(Config::reloaded(&guard, new));
            let running = guard.clone();
            drop(guard);
            core::set_notify_policy(&core.journal, &running);
            log::info!(
                "config reloaded from {}: {} project(s)",
                path.display(),
                running.projects.len()
            );
        }
        Err(e) => log::error!("config reload refused, keeping the running configuration: {e}"),
    }
    systemd::ready();
}
