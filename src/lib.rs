//! deployhook as a library: the modules behind the `deployhook` binary. Two are public: [`cli`],
//! which the binary calls, and [`harness`], what benchmarks, fuzz targets and the journal and
//! scheduler tests drive directly. DESIGN.md holds the architecture.
//!
//! `unsafe` is refused everywhere but in `sys`, the one small module for what std lacks, where
//! every block carries a `SAFETY` comment.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod admin;
mod args;
mod build;
pub mod cli;
mod client;
mod clock;
mod config;
mod daemon;
mod demo;
mod env_file;
mod git_access;
pub mod harness;
mod http;
mod janitor;
mod job;
mod journal;
mod logging;
mod metrics;
mod notifier;
mod publish;
mod redact;
mod scheduler;
mod secret;
mod supervise;
/// Thin wrappers over what std lacks (process groups, umask, file-system flags, rlimits).
#[allow(unsafe_code)]
mod sys;
mod systemd;
mod timefmt;
mod words;
