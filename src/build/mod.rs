//! Builds: the pool of build threads that turn a queued job into a terminal state, each build
//! in a fresh directory from a fresh checkout, every child in a process group of its own.
//!
//! - `worker.rs`: a build thread's loop and one job's steps, down to its verdict;
//! - `checkout.rs`: the project's git mirror and the job's `--shared` clone;
//! - `process.rs`: child processes and their groups (run, stop, kill escaped ones, reap orphans);
//! - `job_log.rs`: the job's log file and its size cap.
//!
//! The notifier runs `notify` commands with the same steps, environment and log.
//!
//! Build threads hear of jobs from the scheduler ([`Assignment`](crate::scheduler::Assignment))
//! and tell it when they are done; a build is stopped through its [`Control`](crate::job::Control).

mod checkout;
mod job_log;
mod process;
mod worker;

pub(crate) use job_log::{mask, say, Log, SharedLog};
pub use process::reap_orphans;
pub(crate) use process::{describe, run_step, Step, NOTIFICATION_MARK};
pub(crate) use worker::base_env;
pub use worker::{worker, Context};
