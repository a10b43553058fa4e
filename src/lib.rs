//! deployhook as a library: the modules behind the `deployhook` binary, public so that
//! benchmarks and fault tests can drive the journal and the scheduler directly. DESIGN.md holds
//! the architecture; `main.rs` only dispatches the command line.

pub mod admin;
pub mod args;
pub mod build;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
mod env_file;
mod git_access;
pub mod http;
pub mod janitor;
pub mod job;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod notify;
mod redact;
pub mod scheduler;
pub mod secret;
pub mod supervise;
/// Thin wrappers over what std lacks (process groups, umask, file-system flags); public for the
/// benchmarks, which time cancellation and checkouts with them.
pub mod sys;
pub mod timefmt;
