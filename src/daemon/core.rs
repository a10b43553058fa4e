//! The daemon's core: the journal and its writer, recovery, the scheduler, the build pool, the
//! pruner, the notifier and the janitor; started before the front (so open jobs reach the
//! scheduler before the first trigger can) and stopped after it.

use super::error::DaemonError;
use crate::build::{self, Context};
use crate::config::Config;
use crate::http::waiters::Waiters;
use crate::journal::{Journal, Op, Outcome, Writer};
use crate::metrics::Metrics;
use crate::notifier;
use crate::scheduler::{self, Event};
use crate::supervise::{self, spawn_core, At};
use crate::{janitor, sys};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Extra time, past the kill grace, that shutdown waits for build threads.
pub(super) const SHUTDOWN_SLACK: Duration = Duration::from_millis(1500);
/// How often retention runs; while a run finds more than one op may remove, it goes on at once.
const PRUNE_EVERY: Duration = Duration::from_millis(500);

/// The daemon's inside: the journal, the scheduler, the build pool, the pruner, the janitor.
pub(super) struct Core {
    pub(super) journal: Journal,
    /// The running configuration; a reload swaps it.
    pub(super) config: Arc<RwLock<Arc<Config>>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) events: Sender<Event>,
    /// Callers holding a long poll on a hook URL; the commit callback answers them.
    pub(super) waiters: Arc<Waiters>,
    /// The notifier thread, to stop it.
    notifier: notifier::Handle,
    /// Never sent on: it reports Disconnected once the last build thread has ended.
    builds_gone: Receiver<()>,
    /// Open jobs found at start.
    pub(super) recovered: usize,
}

impl Core {
    /// Starts the core in the order the module doc gives; the front starts after it.
    pub(super) fn start(config: &Config) -> Result<Core, DaemonError> {
        let to_janitor = start_janitor()?;
        prepare_state(config, &to_janitor)?;
        let metrics = Arc::new(Metrics::default());
        metrics.workers_total.store(config.workers as u64, Relaxed);
        let (events, events_rx) = crossbeam_channel::unbounded();
        let path = config.journal_path();
        let (journal, writer) =
            Journal::open(&path).map_err(|source| DaemonError::Journal { path, source })?;
        let waiters = Arc::new(Waiters::new(
            journal.clone(),
            metrics.clone(),
            crate::http::trigger::job_reply,
        ));
        let shared = Arc::new(RwLock::new(Arc::new(config.clone())));
        let notifier = notifier::start(journal.clone(), shared.clone())
            .map_err(DaemonError::thread("notifier"))?;
        let commit = after_commit(
            events.clone(),
            to_janitor.clone(),
            config.logs_dir(),
            metrics.clone(),
            (waiters.clone(), notifier.wake()),
        );
        start_writer(writer, commit, metrics.clone())?;
        set_notify_policy(&journal, config);
        let recovered = recover(&journal, &events)?;
        let ctx = Context {
            journal: journal.clone(),
            config: shared.clone(),
            metrics: metrics.clone(),
            scheduler: events.clone(),
            janitor: to_janitor,
        };
        let builds_gone = start_builds(config.workers, events_rx, ctx)?;
        let (j, s, m) = (journal.clone(), shared.clone(), metrics.clone());
        spawn_core("pruner", move || prune_forever(&j, &s, &m))
            .map_err(DaemonError::thread("pruner"))?;
        Ok(Core {
            journal,
            config: shared,
            metrics,
            events,
            waiters,
            notifier,
            builds_gone,
            recovered,
        })
    }

    /// Stops every running build (it starts over after the restart), waits for the build threads
    /// up to the kill grace and a little more, then folds the write-ahead log into the journal,
    /// so that a copy of the stopped daemon's journal.redb is the whole journal.
    pub(super) fn stop(self) {
        let _ = self.events.send(Event::Shutdown);
        let grace = self
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .kill_grace;
        let deadline = Instant::now() + grace + SHUTDOWN_SLACK;
        match self.builds_gone.recv_deadline(deadline) {
            Err(RecvTimeoutError::Disconnected) => {}
            Ok(()) | Err(RecvTimeoutError::Timeout) => {
                log::warn!("build threads still busy after the kill grace; stopping anyway")
            }
        }
        // A running notify command may finish within the same bound.
        self.notifier.stop_by(deadline);
        if let Err(e) = self.journal.submit(Op::Checkpoint) {
            log::warn!(
                "final journal checkpoint failed ({e}); the write-ahead log keeps the last triggers"
            );
        }
    }
}

/// The janitor thread, and where to send it what to remove.
fn start_janitor() -> Result<Sender<PathBuf>, DaemonError> {
    let (to_janitor, paths) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("janitor".into())
        .spawn(move || janitor::run(paths))
        .map_err(DaemonError::thread("janitor"))?;
    Ok(to_janitor)
}

/// Starts the journal's writer thread, which calls `commit` after each commit.
fn start_writer(
    writer: Writer,
    commit: impl FnMut(&Outcome) + Send + 'static,
    metrics: Arc<Metrics>,
) -> Result<(), DaemonError> {
    spawn_core("journal-writer", move || {
        writer.run(commit, move |s| {
            // Only commits that wrote something count (an idle retention pass does not).
            if s.wrote > 0 {
                metrics.commit(s.wrote, s.seconds)
            }
        })
    })
    .map_err(DaemonError::thread("journal-writer"))?;
    Ok(())
}

/// Tells the journal which end states of which projects notify, from `config` (at start and
/// after a reload); jobs that end afterwards follow it. A journal that cannot take the write
/// (disk full) keeps the policy it had, which is said in the log.
pub(super) fn set_notify_policy(journal: &Journal, config: &Config) {
    let op = Op::SetNotifyPolicy {
        projects: config.notify_policy(),
    };
    if let Err(e) = journal.submit(op) {
        log::error!(
            "notify settings not applied ({e}); jobs notify as the previous configuration said \
             until the next reload (SIGHUP) or restart"
        );
    }
}

/// Hands the open jobs to the scheduler (not running yet: they wait in its channel) after
/// killing what their interrupted builds left behind. Returns how many there were.
fn recover(journal: &Journal, events: &Sender<Event>) -> Result<usize, DaemonError> {
    build::reap_orphans(journal);
    let open = scheduler::recover(journal).map_err(DaemonError::Recovery)?;
    let recovered = open.len();
    for job in open {
        let _ = events.send(Event::Queued {
            job,
            superseded: None,
        });
    }
    Ok(recovered)
}

/// Starts the scheduler and the pool of build threads it hands jobs to. The receiver returned
/// disconnects once the last build thread has ended: each holds a sender that nothing sends on.
fn start_builds(
    workers: usize,
    events: Receiver<Event>,
    ctx: Context,
) -> Result<Receiver<()>, DaemonError> {
    let (pool, jobs) = crossbeam_channel::unbounded();
    let metrics = ctx.metrics.clone();
    spawn_core("scheduler", move || {
        scheduler::run(events, pool, workers, metrics)
    })
    .map_err(DaemonError::thread("scheduler"))?;
    let (alive, builds_gone) = crossbeam_channel::bounded::<()>(0);
    for i in 0..workers {
        let (ctx, jobs, alive) = (ctx.clone(), jobs.clone(), alive.clone());
        let name = format!("build-{i}");
        spawn_core(&name, move || {
            let _alive = alive;
            build::worker(ctx, jobs)
        })
        .map_err(|source| DaemonError::Thread { name, source })?;
    }
    Ok(builds_gone)
}

/// Creates the state folders; build directories left by a previous run are moved aside at once
/// and deleted in the background.
fn prepare_state(config: &Config, janitor: &Sender<PathBuf>) -> Result<(), DaemonError> {
    let state_dir = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DaemonError::StateDir { path, source }
    };
    for dir in [&config.state_dir, &config.logs_dir()] {
        std::fs::create_dir_all(dir).map_err(state_dir(dir))?;
    }
    let builds = config.builds_dir();
    if builds.exists() {
        let stale = config
            .state_dir
            .join(format!("builds.stale-{}", crate::clock::now_ms()));
        std::fs::rename(&builds, &stale).map_err(state_dir(&builds))?;
    }
    std::fs::create_dir_all(&builds).map_err(state_dir(&builds))?;
    if !sys::spread_new_directories(&builds) {
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

/// Retention: removes each hook's finished jobs past `keep_jobs` (their logs go to the
/// janitor through the commit callback), in bounded steps so triggers never wait long.
fn prune_forever(journal: &Journal, shared: &RwLock<Arc<Config>>, metrics: &Metrics) {
    loop {
        std::thread::sleep(PRUNE_EVERY);
        metrics.retention_passes.fetch_add(1, Relaxed);
        supervise::fault_point(At::Event);
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

/// What the journal writer tells the rest of the daemon after each commit (on its thread).
fn after_commit(
    events: Sender<Event>,
    janitor: Sender<PathBuf>,
    logs: PathBuf,
    metrics: Arc<Metrics>,
    (waiters, notifier): (Arc<Waiters>, notifier::Wake),
) -> impl FnMut(&Outcome) {
    move |outcome| {
        supervise::fault_point(At::Event);
        metrics.after_commit(outcome);
        notifier.after_commit(outcome);
        if let Some(event) = Event::after_commit(outcome) {
            let _ = events.send(event);
        }
        match outcome {
            // Callers waiting on the hook URL for a job's end are answered.
            Outcome::Triggered {
                superseded: Some((id, _)),
                ..
            } => waiters.ended(id),
            Outcome::Finished(row) | Outcome::Canceled { row, .. } => waiters.ended(&row.job.id),
            Outcome::Pruned(ids) => {
                for id in ids {
                    let _ = janitor.send(Config::job_log_in(&logs, id));
                }
            }
            _ => {}
        }
    }
}
