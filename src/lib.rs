//! deployhook as a library: the modules behind the `deployhook` binary, public so that
//! benchmarks and fault tests can drive the journal and the scheduler directly. DESIGN.md holds
//! the architecture; `main.rs` only dispatches the command line.

pub mod admin;
pub mod args;
pub mod build;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
mod env_file;
mod git_access;
pub mod http;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod notify;
mod redact;
pub mod scheduler;
pub mod secret;
mod sys;
pub mod timefmt;
