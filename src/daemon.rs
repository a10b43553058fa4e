//! `deployhook serve`: wires the threads together, recovers open jobs, and handles signals.
//!
//! Start-up order matters: the admin socket is bound before any other thread exists (its mode
//! comes from the process-wide umask), open jobs are handed to the scheduler before the hook
//! listener accepts its first trigger, and the ready line is logged only once every listener is
//! bound and the journal is open.
//!
//! Threads: `journal-writer`, `scheduler`, `build-N` (the pool), `janitor`, `pruner`,
//! `http-public` (one event loop for every hook connection), `http-status` (accept) with its
//! connection threads, `admin`, and the main
//! thread, which waits for signals: SIGHUP reloads the config, SIGTERM / SIGINT shut down.

use crate::admin::{self, Admin};
use crate::build::{self, Context};
use crate::config::{self, Config, ConfigError};
use crate::http::event_loop::Listener;
use crate::http::limits::Limits;
use crate::http::status::StatusHandler;
use crate::http::trigger::TriggerHandler;
use crate::http::waiters::Waiters;
use crate::http::workers::Pool;
use crate::job::QueuedJob;
use crate::journal::{JobState, Journal, JournalError, Op, Outcome};
use crate::metrics::Metrics;
use crate::notify;
use crate::scheduler::{self, Event};
use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often retention runs; while a run finds more than one op may remove, it goes on at once.
const PRUNE_EVERY: Duration = Duration::from_millis(500);
/// Threads that answer the status listener's requests (its connections live on one event loop).
const STATUS_THREADS: usize = 4;
/// Extra time, past the kill grace, that shutdown waits for build threads.
const SHUTDOWN_SLACK: Duration = Duration::from_millis(1500);

#[derive(Debug)]
pub enum DaemonError {
    Config(ConfigError),
    /// Something needed to start could not be had (a port, a directory, the journal).
    Startup(String),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Config(e) => write!(f, "{e}"),
            DaemonError::Startup(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for DaemonError {}

fn startup(what: impl fmt::Display, e: impl fmt::Display) -> DaemonError {
    DaemonError::Startup(format!("{what}: {e}"))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(config_path: &Path) -> Result<(), DaemonError> {
    let config = config::load(config_path).map_err(DaemonError::Config)?;
    log_warnings(&config);
    run(config)
}

/// Logs what the config allows but advises against (a password in a repo URL).
fn log_warnings(config: &Config) {
    for warning in config.projects.values().flat_map(config::Project::warnings) {
        log::warn!("{}: {warning}", config.path.display());
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| startup(format!("cannot start thread {name}"), e))
}

/// Creates the state folders; build directories left by a previous run are moved aside at once
/// and deleted in the background.
fn prepare_state(config: &Config, janitor: &Sender<PathBuf>) -> Result<(), DaemonError> {
    for dir in [&config.state_dir, &config.logs_dir()] {
        std::fs::create_dir_all(dir)
            .map_err(|e| startup(format!("cannot create {}", dir.display()), e))?;
    }
    let builds = config.builds_dir();
    if builds.exists() {
        let stale = config
            .state_dir
            .join(format!("builds.stale-{}", crate::clock::now_ms()));
        std::fs::rename(&builds, &stale)
            .map_err(|e| startup(format!("cannot move aside {}", builds.display()), e))?;
    }
    std::fs::create_dir_all(&builds)
        .map_err(|e| startup(format!("cannot create {}", builds.display()), e))?;
    if !crate::sys::spread_new_directories(&builds) {
        log::debug!(
            "{}: the file system keeps no top-directory flag; build trees are placed by default",
            builds.display()
        );
    }
    if let Ok(entries) = std::fs::read_dir(&config.state_dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("builds.stale-")
            {
                let _ = janitor.send(entry.path());
            }
        }
    }
    Ok(())
}

/// Sends every open job to the scheduler. A job found BUILDING was interrupted by a crash: any
/// of its processes that outlived the old daemon are killed before it starts over.
fn recover(journal: &Journal, events: &Sender<Event>) -> Result<usize, JournalError> {
    build::reap_orphans(journal);
    let open = journal.open_jobs()?;
    for row in &open {
        let interrupted = row.job.state == JobState::Building;
        if interrupted {
            journal.submit(Op::Requeue {
                job_id: row.job.id.clone(),
            })?;
            log::info!(
                "job={} hook={} was interrupted; it starts over",
                row.job.id,
                row.job.hook_id
            );
        }
        let _ = events.send(Event::Queued {
            job: QueuedJob::from_row(row, interrupted),
            superseded: None,
        });
    }
    Ok(open.len())
}

/// Retention: removes each hook's finished jobs past `keep_jobs` (their logs go to the
/// janitor through the commit callback), in bounded steps so triggers never wait long.
fn prune_forever(journal: &Journal, shared: &RwLock<Arc<Config>>, metrics: &Metrics) {
    loop {
        std::thread::sleep(PRUNE_EVERY);
        metrics.retention_passes.fetch_add(1, Relaxed);
        loop {
            let keep = shared
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .keep_jobs;
            match journal.submit(Op::Prune { keep }) {
                Ok(Outcome::Pruned(ids)) if ids.len() >= crate::journal::MAX_PRUNE_PER_OP => {}
                Ok(_) => break,
                Err(e) => {
                    log::warn!("retention skipped: {e}");
                    break;
                }
            }
        }
    }
}

/// What the journal writer tells the rest of the daemon after each commit.
fn on_commit(
    events: Sender<Event>,
    janitor: Sender<PathBuf>,
    logs: PathBuf,
    metrics: Arc<Metrics>,
    waiters: Arc<Waiters>,
) -> impl FnMut(&Outcome) {
    move |outcome| match outcome {
        Outcome::Triggered { row, superseded } => {
            metrics.job_entered(JobState::Pending);
            if let Some((id, _)) = superseded {
                metrics.job_entered(JobState::Canceled);
                waiters.ended(id);
            }
            let _ = events.send(Event::Queued {
                job: QueuedJob::from_row(row, false),
                superseded: superseded.as_ref().map(|(id, _)| id.clone()),
            });
        }
        Outcome::Started(_) => metrics.job_entered(JobState::Building),
        Outcome::Finished(row) => {
            metrics.job_entered(row.job.state);
            waiters.ended(&row.job.id);
        }
        Outcome::Pruned(ids) => {
            for id in ids {
                let _ = janitor.send(logs.join(format!("{id}.log")));
            }
        }
        _ => {}
    }
}

/// The listener for `addr`: a socket systemd passed with that address, else a new one.
fn listener_for(
    addr: std::net::SocketAddr,
    what: &str,
    inherited: &mut Vec<TcpListener>,
) -> Result<TcpListener, DaemonError> {
    if let Some(i) = inherited
        .iter()
        .position(|l| l.local_addr().is_ok_and(|a| a == addr))
    {
        log::info!("{what}: using the socket systemd passed for {addr}");
        return Ok(inherited.swap_remove(i));
    }
    TcpListener::bind(addr).map_err(|e| startup(format!("cannot listen on {addr} ({what})"), e))
}

/// Pings systemd's watchdog every half interval, but only after the journal writer and the
/// scheduler have answered: a wedged daemon stops pinging and systemd restarts it.
fn watchdog(interval: Duration, journal: Journal, events: Sender<Event>) {
    let half = interval / 2;
    loop {
        std::thread::sleep(half);
        // Any answer, even "disk full", shows the writer thread is alive.
        let _ = journal.submit(Op::Probe);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let scheduler_alive = events.send(Event::Ping(tx)).is_ok() && rx.recv_timeout(half).is_ok();
        if scheduler_alive {
            notify::watchdog();
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

pub fn run(mut config: Config) -> Result<(), DaemonError> {
    // First, while no other thread exists: these read and clear process-wide state.
    let mut inherited = crate::sys::take_listen_fds();
    let watchdog_interval = notify::watchdog_interval();
    crate::sys::raise_nofile_limit();
    let started = Instant::now();
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| startup("cannot install signal handlers", e))?;
    let admin_listener = admin::bind(&config.admin_socket, config.admin_group.as_deref())
        .map_err(|e| DaemonError::Startup(e.to_string()))?;
    let (janitor_tx, janitor_rx) = crossbeam_channel::unbounded();
    spawn("janitor", move || crate::janitor::run(janitor_rx))?;
    prepare_state(&config, &janitor_tx)?;
    let journal_path = config.journal_path();
    let (journal, writer) = Journal::open(&journal_path).map_err(|e| {
        startup(
            format!("cannot open the journal {}", journal_path.display()),
            e,
        )
    })?;
    let public_socket = listener_for(config.listen, "listen", &mut inherited)?;
    let status_socket = listener_for(config.status_listen, "status_listen", &mut inherited)?;
    for extra in &inherited {
        log::warn!(
            "ignoring a socket passed by systemd for {}: it matches neither listen nor status_listen",
            extra.local_addr().map_or_else(|_| "?".into(), |a| a.to_string())
        );
    }
    adopt_bound_addresses(&mut config, &public_socket, &status_socket);

    let metrics = Arc::new(Metrics::default());
    metrics.workers_total.store(config.workers as u64, Relaxed);
    let shared = Arc::new(RwLock::new(Arc::new(config.clone())));
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let waiters = Arc::new(Waiters::new(
        journal.clone(),
        metrics.clone(),
        crate::http::trigger::job_reply,
    ));
    let (pool_tx, pool_rx) = crossbeam_channel::unbounded();

    {
        let commit = on_commit(
            events_tx.clone(),
            janitor_tx.clone(),
            config.logs_dir(),
            metrics.clone(),
            waiters.clone(),
        );
        let m = metrics.clone();
        spawn("journal-writer", move || {
            writer.run(commit, move |s| {
                // Only commits that wrote something count (an idle retention pass does not).
                if s.ok && s.wrote > 0 {
                    m.commit(s.wrote, s.seconds)
                }
            })
        })?;
    }
    let recovered =
        recover(&journal, &events_tx).map_err(|e| startup("cannot read open jobs", e))?;
    {
        let m = metrics.clone();
        let workers = config.workers;
        spawn("scheduler", move || {
            scheduler::run(events_rx, pool_tx, workers, m)
        })?;
    }
    let ctx = Context {
        journal: journal.clone(),
        config: shared.clone(),
        metrics: metrics.clone(),
        scheduler: events_tx.clone(),
        janitor: janitor_tx.clone(),
    };
    let mut workers = Vec::new();
    for i in 0..config.workers {
        let (ctx, rx) = (ctx.clone(), pool_rx.clone());
        workers.push(spawn(&format!("build-{i}"), move || {
            build::worker(ctx, rx)
        })?);
    }
    drop(pool_rx);
    {
        let (journal, shared) = (journal.clone(), shared.clone());
        let metrics = metrics.clone();
        spawn("pruner", move || prune_forever(&journal, &shared, &metrics))?;
    }

    let mut public = Listener::start(
        public_socket,
        "http-public",
        Arc::new(TriggerHandler {
            journal: journal.clone(),
            metrics: metrics.clone(),
            waiters,
        }),
        Limits::DEFAULT,
    )
    .map_err(|e| startup("cannot start the hook listener", e))?;
    let status_handler = Arc::new(StatusHandler {
        journal: journal.clone(),
        metrics: metrics.clone(),
        config: shared.clone(),
        started,
    });
    let status_pool = Pool::start(
        "http-status-worker",
        STATUS_THREADS,
        Arc::new(move |req| status_handler.handle(req)),
    )
    .map_err(|e| startup("cannot start the status threads", e))?;
    let mut status = Listener::start(
        status_socket,
        "http-status",
        Arc::new(status_pool),
        Limits::DEFAULT,
    )
    .map_err(|e| startup("cannot start the status listener", e))?;
    let admin = Arc::new(Admin {
        journal: journal.clone(),
        config: shared.clone(),
    });
    let admin_fd = admin_listener
        .try_clone()
        .map_err(|e| startup("admin socket", e))?;
    spawn("admin", move || admin.serve(admin_listener))?;

    log::info!(
        "ready public={} status={} admin={} journal={} workers={} recovered_jobs={recovered}",
        public.local_addr(),
        status.local_addr(),
        config.admin_socket.display(),
        journal_path.display(),
        config.workers,
    );
    notify::ready();
    if let Some(interval) = watchdog_interval {
        let (journal, events) = (journal.clone(), events_tx.clone());
        spawn("watchdog", move || watchdog(interval, journal, events))?;
    }

    wait_for_stop(signals, &config.path, &shared);

    notify::stopping();
    log::info!("shutting down: no new triggers; stopping running builds (they start over after the restart)");
    public.stop();
    status.stop();
    crate::sys::shutdown_listener(&admin_fd);
    let _ = std::fs::remove_file(&config.admin_socket);
    let _ = events_tx.send(Event::Shutdown);
    let grace = shared
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .kill_grace;
    let deadline = Instant::now() + grace + SHUTDOWN_SLACK;
    while workers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Fold the write-ahead log into the database file, so that a copy of the stopped daemon's
    // journal.redb is the whole journal.
    if let Err(e) = journal.submit(Op::Checkpoint) {
        log::warn!(
            "final journal checkpoint failed ({e}); the write-ahead log keeps the last triggers"
        );
    }
    log::info!("stopped");
    Ok(())
}

/// Handles signals until one asks the daemon to stop.
fn wait_for_stop(mut signals: Signals, path: &Path, shared: &RwLock<Arc<Config>>) {
    for signal in signals.forever() {
        match signal {
            SIGHUP => reload(path, shared),
            _ => return,
        }
    }
}

/// Re-reads the config. Projects and per-job settings apply to jobs that start afterwards;
/// listeners, paths and the worker count need a restart. An invalid file changes nothing.
fn reload(path: &Path, shared: &RwLock<Arc<Config>>) {
    notify::reloading();
    match config::load(path) {
        Ok(new) => {
            log_warnings(&new);
            let mut guard = shared.write().unwrap_or_else(PoisonError::into_inner);
            let old = guard.clone();
            let fixed = [
                ("listen", old.listen != new.listen),
                ("status_listen", old.status_listen != new.status_listen),
                ("admin_socket", old.admin_socket != new.admin_socket),
                ("state_dir", old.state_dir != new.state_dir),
                ("workers", old.workers != new.workers),
            ];
            for (key, changed) in fixed {
                if changed {
                    log::warn!("config reload: `{key}` changed; it takes effect after a restart");
                }
            }
            let public_url = if new.public_url == format!("http://{}", new.listen) {
                old.public_url.clone()
            } else {
                new.public_url.clone()
            };
            *guard = Arc::new(Config {
                public_url,
                listen: old.listen,
                status_listen: old.status_listen,
                admin_socket: old.admin_socket.clone(),
                state_dir: old.state_dir.clone(),
                workers: old.workers,
                ..new
            });
            log::info!(
                "config reloaded from {}: {} projects",
                path.display(),
                guard.projects.len()
            );
        }
        Err(e) => log::error!("config reload refused, keeping the running configuration: {e}"),
    }
    notify::ready();
}
