//! Core threads, and what their death means.
//!
//! Each core thread of the daemon (`journal-writer`, `scheduler`, `build-N`, `pruner`,
//! `notifier`, `admin`, `watchdog`, `http-public`, `http-status`) carries a part of the service
//! that no other thread does: if one ends while the daemon is not stopping, the process still
//! looks alive but no longer works (triggers refused, jobs never started). [`spawn_core`]
//! makes such a death fatal. It logs `thread NAME died (panic: MSG)` or `thread NAME ended
//! unexpectedly`, stops the watchdog pings ([`healthy`] turns false), and wakes the main
//! thread, which stops the daemon as at SIGTERM and exits with status [`EXIT_SOFTWARE`], so
//! that systemd restarts it.
//!
//! Why the main thread and not `process::exit` in the dying thread: the orderly stop is the
//! path SIGTERM takes every day. It stops the listeners, stops running builds within the kill
//! grace (they start over after the restart) and folds the write-ahead log into the journal;
//! exiting at once would leave build process groups running unwatched. A stop that cannot
//! finish (a wedged lock, say) is covered by a backstop: a thread started at the death exits
//! the process with the same status once the bound given to [`arm`] has passed.
//!
//! Only a panic that leaves the thread's function is a death: one caught inside it (a listener
//! that isolates a request) is not. Threads that serve one request or connection (the status
//! listener's workers and log streams, `admin-conn`) are not core threads: a panic there costs
//! that request. When several core threads end, the
//! first panic is the cause: a panicking thread closes channels as it unwinds, which may end
//! another thread (the build threads, when the scheduler dies) before it has reported.
//!
//! Until [`arm`] is called (unit tests, benchmarks) `spawn_core` is a plain named spawn.
//!
//! Fault injection, for tests only: `DEPLOYHOOK_FAULT_PANIC=NAME` makes the core thread NAME
//! panic as it starts; `DEPLOYHOOK_FAULT_PANIC=NAME:N` makes it panic at its Nth event (N from
//! 1), for the threads that have events ([`fault_point`]): the scheduler once it has handed out
//! a queued job, a build thread as it takes a job, the journal writer after a commit, the
//! pruner, the notifier and the watchdog at each round. The variable is read once, by [`arm`].

use std::any::Any;
use std::cell::Cell;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Exit status of a daemon that lost a core thread (sysexits.h EX_SOFTWARE).
pub const EXIT_SOFTWARE: u8 = 70;
/// The fault-injection variable (tests only; see the module doc).
pub const FAULT_VAR: &str = "DEPLOYHOOK_FAULT_PANIC";

/// Where a core thread may be made to panic by [`FAULT_VAR`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// As the thread starts (`NAME`).
    Start,
    /// At one of its events (`NAME:N` counts them).
    Event,
}

/// A fault to inject: which thread, and where.
#[derive(Debug, PartialEq, Eq)]
struct Fault {
    thread: String,
    /// `None`: at start; `Some(n)`: at the nth event.
    event: Option<u32>,
}

impl Fault {
    fn parse(value: &str) -> Option<Fault> {
        let (thread, event) = match value.split_once(':') {
            Some((thread, n)) => (thread, Some(n.parse().ok().filter(|&n| n >= 1)?)),
            None => (value, None),
        };
        (!thread.is_empty()).then(|| Fault {
            thread: thread.to_string(),
            event,
        })
    }
}

/// What [`arm`] set up.
struct Armed {
    /// Wakes the main thread after a death.
    wake: Box<dyn Fn() + Send + Sync>,
    /// How long the main thread has to stop before the backstop exits the process.
    backstop: Duration,
    fault: Option<Fault>,
}

static ARMED: OnceLock<Armed> = OnceLock::new();
/// Set when the daemon starts stopping: from then on core threads end as they should.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// The core thread whose death stops the daemon.
static DIED: Mutex<Option<Death>> = Mutex::new(None);

/// A core thread that died, and how.
struct Death {
    thread: String,
    /// It panicked, rather than returned.
    panicked: bool,
}

fn death() -> MutexGuard<'static, Option<Death>> {
    DIED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes core-thread deaths fatal from now on: `wake` is called once a core thread dies (the
/// main thread then stops the daemon); if the process still runs `backstop` later, it exits.
/// Reads [`FAULT_VAR`]. Called once, before any core thread starts; later calls change nothing.
pub fn arm(backstop: Duration, wake: impl Fn() + Send + Sync + 'static) {
    let fault = std::env::var(FAULT_VAR).ok().and_then(|v| {
        let fault = Fault::parse(&v);
        match &fault {
            Some(_) => log::warn!("{FAULT_VAR}={v}: a core thread will panic (tests only)"),
            None => log::warn!("{FAULT_VAR}={v} is not NAME or NAME:N; ignored"),
        }
        fault
    });
    let _ = ARMED.set(Armed {
        wake: Box::new(wake),
        backstop,
        fault,
    });
}

/// The daemon is stopping: core threads that end from now on do so as asked.
pub fn stopping() {
    STOPPING.store(true, SeqCst);
}

/// No core thread has died: the watchdog may tell systemd the daemon is well.
pub fn healthy() -> bool {
    death().is_none()
}

/// The core thread whose death stopped the daemon, if one died: the first that panicked, else
/// the first that ended.
pub fn died() -> Option<String> {
    death().as_ref().map(|d| d.thread.clone())
}

thread_local! {
    /// Events this thread has passed through [`fault_point`].
    static EVENTS: Cell<u32> = const { Cell::new(0) };
}

/// Panics if [`FAULT_VAR`] names the calling thread at this point (tests only; see the module
/// doc). Core threads call it at start ([`At::Start`]) and at each of their events.
pub fn fault_point(at: At) {
    let Some(fault) = ARMED.get().and_then(|a| a.fault.as_ref()) else {
        return;
    };
    if std::thread::current().name() != Some(fault.thread.as_str()) {
        return;
    }
    let hit = match at {
        At::Start => fault.event.is_none(),
        At::Event => {
            let n = EVENTS.with(|c| {
                c.set(c.get() + 1);
                c.get()
            });
            fault.event == Some(n)
        }
    };
    if hit {
        panic!("fault injected by {FAULT_VAR}");
    }
}

/// Starts a core thread named `name` running `f`; if it panics or returns while the daemon is
/// not stopping, the daemon stops and exits with [`EXIT_SOFTWARE`] (see the module doc).
pub fn spawn_core<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    let owned = name.to_string();
    std::thread::Builder::new()
        .name(owned.clone())
        .spawn(move || {
            let Some(armed) = ARMED.get() else {
                return f();
            };
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                fault_point(At::Start);
                f()
            }));
            match &result {
                Err(payload) => {
                    // A panic is a bug whenever it comes, during a stop too.
                    log::error!(
                        "thread {owned} died (panic: {}); the daemon stops",
                        panic_message(payload.as_ref())
                    );
                    report_death(owned, true, armed);
                }
                Ok(_) if !STOPPING.load(SeqCst) && healthy() => {
                    log::error!("thread {owned} ended unexpectedly; the daemon stops");
                    report_death(owned, false, armed);
                }
                // Ended as asked, or because another core thread's death closed its channels.
                Ok(_) => {}
            }
            match result {
                Ok(value) => value,
                Err(payload) => panic::resume_unwind(payload),
            }
        })
}

/// Marks the daemon unhealthy, wakes the main thread, and starts the backstop. A panic takes
/// the place of an earlier plain ending: a panicking thread may close the channels that end
/// others while its panic is still being printed, before it reports.
fn report_death(thread: String, panicked: bool, armed: &'static Armed) {
    {
        let mut death = death();
        match &*death {
            None => {}
            Some(first) if panicked && !first.panicked => {}
            Some(_) => return, // this death is already being handled
        }
        let first = death.is_none();
        *death = Some(Death { thread, panicked });
        if !first {
            return;
        }
    }
    (armed.wake)();
    let backstop = armed.backstop;
    let started = std::thread::Builder::new()
        .name("backstop".into())
        .spawn(move || {
            std::thread::sleep(backstop);
            log::error!(
                "the daemon did not stop within {backstop:?} of losing a core thread; exiting now"
            );
            std::process::exit(i32::from(EXIT_SOFTWARE));
        });
    if let Err(e) = started {
        log::error!("cannot start the backstop thread ({e}); exiting now");
        std::process::exit(i32::from(EXIT_SOFTWARE));
    }
}

/// The text of a panic, as `panic!` was given it.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a non-text payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_values_name_a_thread_and_a_point() {
        let fault = |thread: &str, event| {
            Some(Fault {
                thread: thread.into(),
                event,
            })
        };
        assert_eq!(Fault::parse("scheduler"), fault("scheduler", None));
        assert_eq!(Fault::parse("build-0:1"), fault("build-0", Some(1)));
        assert_eq!(Fault::parse("scheduler:12"), fault("scheduler", Some(12)));
        assert_eq!(Fault::parse("scheduler:0"), None);
        assert_eq!(Fault::parse("scheduler:later"), None);
        assert_eq!(Fault::parse(""), None);
        assert_eq!(Fault::parse(":1"), None);
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        let text = panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(text.as_ref()), "plain");
        let formatted = panic::catch_unwind(|| panic!("job {}", 7)).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), "job 7");
    }

    #[test]
    fn unarmed_core_threads_are_plain_named_threads() {
        let handle = spawn_core("core-test", || {
            std::thread::current().name().map(String::from)
        })
        .unwrap();
        assert_eq!(handle.join().unwrap().as_deref(), Some("core-test"));
        assert!(healthy());
    }
}
