//! The configuration file: TOML parsed with serde, then checked and resolved into [`Config`].
//!
//! Invariants of a [`Config`] once built: addresses parse, paths are absolute (relative ones
//! resolved against the config file's folder), every number is within its documented range,
//! and at least one project exists. Any problem becomes one [`ConfigError`] that names the file,
//! the line and the dotted key, so `check-config` and a refused SIGHUP reload say the same thing.
//! Locations come from toml's spans: values the checks may refuse are [`Spanned`], and an error
//! toml itself reports (syntax, type, unknown key) is placed by finding its span among the keys
//! and values of the parsed document, so keys are named as written and no error text is parsed.

mod check;
mod raw;
#[cfg(test)]
mod tests;

use crate::journal::NotifyOn;
use check::Checker;
use raw::RawConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::DeTable;

pub const ENV_CONFIG: &str = "DEPLOYHOOK_CONFIG";
pub const DEFAULT_PATH: &str = "/etc/deployhook/deployhook.toml";

const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
const DEFAULT_STATUS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8081));
const DEFAULT_ADMIN_SOCKET: &str = "/run/deployhook/admin.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/deployhook";
const DEFAULT_WORKERS: usize = 2;
const MAX_WORKERS: usize = 256;
const DEFAULT_KILL_GRACE_SECS: u64 = 10;
const MAX_KILL_GRACE_SECS: u64 = 3600;
const DEFAULT_KEEP_JOBS: usize = 200;
const DEFAULT_MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
const MIN_MAX_LOG_BYTES: u64 = 1024;
const DEFAULT_TIMEOUT_SECS: u64 = 900;
const MAX_DEBOUNCE_SECS: u64 = 86_400;
const MAX_PROJECT_NAME: usize = 64;
const DEFAULT_PUBLISH_KEEP: usize = 5;

/// The whole daemon configuration, checked and with paths resolved.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from (for messages and reloads).
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub status_listen: SocketAddr,
    pub admin_socket: PathBuf,
    /// When set, the admin socket is made 0660 and owned by this group.
    pub admin_group: Option<String>,
    pub state_dir: PathBuf,
    /// Base of printed hook URLs, without a trailing slash.
    pub public_url: String,
    pub workers: usize,
    pub kill_grace: Duration,
    pub keep_jobs: usize,
    pub max_log_bytes: u64,
    pub projects: BTreeMap<String, Project>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    /// Anything `git clone` accepts; a local path is absolute.
    pub repo: String,
    pub build: String,
    pub timeout: Duration,
    /// A job waits this long after its trigger before it may start (`debounce_secs`); a newer
    /// trigger of the hook supersedes it meanwhile, so a burst builds once, after the last.
    pub debounce: Duration,
    pub env: BTreeMap<String, String>,
    /// Private key for git over SSH, used alone (`ssh_key`).
    pub ssh_key: Option<PathBuf>,
    /// Pinned host keys (`known_hosts`); without it, `state_dir/known_hosts` on first use.
    pub known_hosts: Option<PathBuf>,
    /// git credential-store file, git's only credential helper (`git_credentials`).
    pub git_credentials: Option<PathBuf>,
    /// `KEY=VALUE` secrets for the build, masked in its log (`env_file`).
    pub env_file: Option<PathBuf>,
    /// Run by `sh -c` when a job ends in a state of `notify_on` (`notify`).
    pub notify: Option<String>,
    /// The end states that notify (`["ERROR"]` unless given).
    pub notify_on: NotifyOn,
    /// Where a successful build's output is published (`publish`), if anywhere.
    pub publish: Option<Publish>,
}

/// `publish = { dir, to, keep }`: after a successful build, `dir` of the checkout becomes
/// `to/releases/{job}` and `to/current` points at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// The build's output folder, relative to the checkout, without `..`.
    pub dir: PathBuf,
    /// The target folder (absolute): `releases/`, `current` and the lock file live here.
    pub to: PathBuf,
    /// Releases kept (at least 1); the one `current` points to is never removed.
    pub keep: usize,
}

impl Project {
    /// When a job triggered at `now` (Unix ms) may start: `None` without debounce.
    pub fn not_before(&self, now: u64) -> Option<u64> {
        (!self.debounce.is_zero()).then(|| now + self.debounce.as_millis() as u64)
    }

    /// What `check-config` and `serve` warn about: valid, but not advisable.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if crate::redact::has_url_password(&self.repo) {
            warnings.push(format!(
                "key `projects.{}.repo`: the URL holds a password ({}); it is hidden in logs, \
                 but git's command line shows it to local users while it runs: prefer \
                 `git_credentials` (a credential-store file read only by deployhook)",
                self.name,
                crate::redact::url_passwords(&self.repo)
            ));
        }
        warnings
    }

    /// The files a project reads at each job start, with their config keys.
    pub fn secret_files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("ssh_key", &self.ssh_key),
            ("known_hosts", &self.known_hosts),
            ("git_credentials", &self.git_credentials),
            ("env_file", &self.env_file),
        ]
        .into_iter()
        .filter_map(|(key, path)| Some((key, path.as_deref()?)))
    }
}

impl Config {
    /// Each project with a `notify` command and the end states it is run for, as the journal
    /// keeps them.
    pub fn notify_policy(&self) -> Vec<(String, NotifyOn)> {
        self.projects
            .values()
            .filter(|p| p.notify.is_some())
            .map(|p| (p.name.clone(), p.notify_on))
            .collect()
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join(crate::journal::FILE_NAME)
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    /// A job's log file, `logs/{job}.log`.
    pub fn job_log(&self, job_id: &str) -> PathBuf {
        Config::job_log_in(&self.logs_dir(), job_id)
    }
    /// A job's log file in the logs folder `logs`.
    pub fn job_log_in(logs: &Path, job_id: &str) -> PathBuf {
        logs.join(format!("{job_id}.log"))
    }
    pub fn builds_dir(&self) -> PathBuf {
        self.state_dir.join("builds")
    }
    /// One bare git mirror per project, refreshed before each checkout.
    pub fn mirrors_dir(&self) -> PathBuf {
        self.state_dir.join("mirrors")
    }
    pub fn hook_url(&self, project: &str, secret: &str) -> String {
        format!(
            "{}/v1/integrations/deploy/{project}/{secret}",
            self.public_url
        )
    }

    /// The keys whose change from `self` to `new` a reload cannot apply: the listeners, the
    /// admin socket, the state folder and the worker count are set up once, at start.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        [
            ("listen", self.listen != new.listen),
            ("status_listen", self.status_listen != new.status_listen),
            ("admin_socket", self.admin_socket != new.admin_socket),
            ("state_dir", self.state_dir != new.state_dir),
            ("workers", self.workers != new.workers),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// The configuration a reload (SIGHUP) puts in place of the running `old` one: projects and
    /// per-job settings come from `new` and apply to jobs that start afterwards; what
    /// [`Config::restart_needed`] names stays as it runs. A `public_url` left to its default
    /// keeps the running one, which follows the address really bound (port 0).
    pub fn reloaded(old: &Config, new: Config) -> Config {
        let public_url = if new.public_url == format!("http://{}", new.listen) {
            old.public_url.clone()
        } else {
            new.public_url.clone()
        };
        Config {
            public_url,
            listen: old.listen,
            status_listen: old.status_listen,
            admin_socket: old.admin_socket.clone(),
            state_dir: old.state_dir.clone(),
            workers: old.workers,
            ..new
        }
    }
}

/// A problem with a config file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    /// Dotted key, e.g. `projects.site.timeout_secs`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The config path to use: the flag, else `$DEPLOYHOOK_CONFIG`, else the system default.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os(ENV_CONFIG) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// Whether loading a config opens the projects' key, credential and env files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Files {
    /// Refuse a file that cannot be read (`serve`, `check-config`, a reload).
    Read,
    /// Leave them alone: the client commands need addresses only, and their user may not be
    /// allowed to read the daemon's secrets.
    Skip,
}

/// Loads the config for the daemon or `check-config`: every file it names must be readable.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, Files::Read)
}

/// Loads the config for a client command (`hooks`, `jobs`, `logs`).
pub fn load_for_client(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, Files::Skip)
}

fn load_with(path: &Path, files: Files) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        key: None,
        message: unreadable(path, &e),
    })?;
    parse_with(path, &text, files)
}

/// Why a config file cannot be read. A missing default file most often means "no config given
/// yet", so the message says how to give one.
fn unreadable(path: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) {
        format!("no config file here; pass --config PATH or set ${ENV_CONFIG}")
    } else {
        format!("cannot read the file: {e}")
    }
}

/// Parses config text; `path` is used for messages and to resolve relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(path, text, Files::Read)
}

pub fn is_project_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROJECT_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_with(path: &Path, text: &str, files: Files) -> Result<Config, ConfigError> {
    let checker = Checker { path, text, files };
    let (doc, errors) = DeTable::parse_recoverable(text);
    if let Some(e) = errors.first() {
        return Err(checker.toml_error(doc.get_ref(), e));
    }
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(doc.clone()))
        .map_err(|e| checker.toml_error(doc.get_ref(), &e))?;
    checker.check(raw)
}
