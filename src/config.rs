//! The configuration file: TOML parsed with serde, then checked and resolved into [`Config`].
//!
//! Invariants of a [`Config`] once built: addresses parse, paths are absolute (relative ones
//! resolved against the config file's folder), every number is within its documented range,
//! and at least one project exists. Any problem becomes one [`ConfigError`] that names the file,
//! the line and the dotted key, so `check-config` and a refused SIGHUP reload say the same thing.
//! Locations come from toml's spans: values the checks may refuse are [`Spanned`], and an error
//! toml itself reports (syntax, type, unknown key) is placed by finding its span among the keys
//! and values of the parsed document, so keys are named as written and no error text is parsed.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

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
const MAX_PROJECT_NAME: usize = 64;

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
    pub env: BTreeMap<String, String>,
    /// Private key for git over SSH, used alone (`ssh_key`).
    pub ssh_key: Option<PathBuf>,
    /// Pinned host keys (`known_hosts`); without it, `state_dir/known_hosts` on first use.
    pub known_hosts: Option<PathBuf>,
    /// git credential-store file, git's only credential helper (`git_credentials`).
    pub git_credentials: Option<PathBuf>,
    /// `KEY=VALUE` secrets for the build, masked in its log (`env_file`).
    pub env_file: Option<PathBuf>,
}

impl Project {
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
    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join(crate::journal::FILE_NAME)
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
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

/// The file as written. Every value that a later check may refuse keeps its place in the file
/// ([`Spanned`]), so that the error names its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    status_listen: Option<Spanned<String>>,
    admin_socket: Option<PathBuf>,
    admin_group: Option<Spanned<String>>,
    state_dir: Option<PathBuf>,
    public_url: Option<Spanned<String>>,
    workers: Option<Spanned<Whole>>,
    kill_grace_secs: Option<Spanned<Whole>>,
    keep_jobs: Option<Spanned<Whole>>,
    max_log_bytes: Option<Spanned<Whole>>,
    #[serde(default)]
    projects: BTreeMap<Spanned<String>, RawProject>,
}

/// A `[projects.NAME]` table as written; `repo` and `build` are required, which the checker
/// (not serde) enforces so that the error can name the key and the table's line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    repo: Option<Spanned<String>>,
    build: Option<Spanned<String>>,
    timeout_secs: Option<Spanned<Whole>>,
    env: Option<Spanned<BTreeMap<String, String>>>,
    ssh_key: Option<Spanned<String>>,
    known_hosts: Option<Spanned<String>>,
    git_credentials: Option<Spanned<String>>,
    env_file: Option<Spanned<String>>,
}

/// A whole number (0 or more) in the file. Its own deserializer so that a wrong value is
/// refused as "expected a whole number", not as serde's "expected u64" / "expected usize".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Whole(u64);

impl Whole {
    fn get(self) -> u64 {
        self.0
    }

    /// As a count; past `usize` (never on 64-bit targets) it saturates.
    fn count(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Whole;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Whole, E> {
                u64::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_u64(Visitor)
    }
}

/// Parses config text; `path` is used for messages and to resolve relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(path, text, Files::Read)
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

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted path, as written in the file, of the key at byte `offset` or of the key whose
/// value holds it: toml reports unknown keys at the key, wrong values at the value.
fn key_path(table: &DeTable<'_>, offset: usize) -> Option<Vec<String>> {
    for (key, value) in table {
        let name = || key.get_ref().to_string();
        if key.span().contains(&offset) {
            return Some(vec![name()]);
        }
        let inner = match value.get_ref() {
            DeValue::Table(t) => key_path(t, offset),
            DeValue::Array(items) => items
                .iter()
                .find_map(|item| key_path(item.get_ref().as_table()?, offset)),
            _ => None,
        };
        if let Some(mut path) = inner {
            path.insert(0, name());
            return Some(path);
        }
        if value.span().contains(&offset) {
            return Some(vec![name()]);
        }
    }
    None
}

/// Semantic checks on a syntactically valid file.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    files: Files,
}

impl Checker<'_> {
    /// An error about `key` (dotted), written at byte `at` of the file.
    fn error(&self, key: &str, at: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: Some(line_of(self.text, at)),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// An error toml found (syntax, a wrong type, an unknown key), located by its span.
    fn toml_error(&self, doc: &DeTable<'_>, err: &toml::de::Error) -> ConfigError {
        let span = err.span();
        ConfigError {
            path: self.path.to_path_buf(),
            line: span.as_ref().map(|s| line_of(self.text, s.start)),
            key: span
                .and_then(|s| key_path(doc, s.start))
                .map(|path| path.join(".")),
            message: err.message().trim().to_string(),
        }
    }

    fn base_dir(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
    }

    /// An address setting and where it is written (`None` when it is the default).
    fn addr(
        &self,
        key: &str,
        value: Option<Spanned<String>>,
        default: SocketAddr,
    ) -> Result<(SocketAddr, Option<usize>), ConfigError> {
        let Some(value) = value else {
            return Ok((default, None));
        };
        let at = value.span().start;
        let addr = value.get_ref().parse().map_err(|_| {
            self.error(
                key,
                at,
                format!(
                    "`{}` is not an address like 127.0.0.1:8080 or [::1]:8080",
                    value.get_ref()
                ),
            )
        })?;
        Ok((addr, Some(at)))
    }

    /// Refuses two listeners that would fight over one port. `listeners` are (key, address,
    /// where it is written, `None` for a default); the error is placed at a key that is written
    /// in the file, the later one when both are.
    fn distinct_listeners(
        &self,
        listeners: &[(&str, SocketAddr, Option<usize>)],
    ) -> Result<(), ConfigError> {
        for (i, later) in listeners.iter().enumerate() {
            for earlier in &listeners[..i] {
                if !may_collide(later.1, earlier.1) {
                    continue;
                }
                let ((key, addr, at), (other_key, other, _)) = match (later.2, earlier.2) {
                    (Some(_), _) => (later, earlier),
                    (None, Some(_)) => (earlier, later),
                    (None, None) => continue, // the defaults differ
                };
                let clash = if addr == other {
                    format!("`{addr}` is also the address of `{other_key}`")
                } else {
                    format!("`{addr}` and `{other_key}` = `{other}` share the port")
                };
                return Err(self.error(
                    key,
                    at.unwrap_or(0),
                    format!(
                        "{clash}; each listener needs its own address (port 0 picks a free one)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `admin_group` as written, if the system has such a group: a missing group would only
    /// show when `serve` binds the admin socket.
    fn admin_group(&self, value: Option<Spanned<String>>) -> Result<Option<String>, ConfigError> {
        let Some(group) = value else {
            return Ok(None);
        };
        let at = group.span().start;
        let name = group.into_inner();
        if name.is_empty() {
            return Err(self.error("admin_group", at, "must not be empty"));
        }
        match crate::sys::group_id(&name) {
            Ok(Some(_)) => Ok(Some(name)),
            Ok(None) => Err(self.error(
                "admin_group",
                at,
                format!("there is no group `{name}` on this system; create it (groupadd {name}) or remove the setting"),
            )),
            Err(e) => Err(self.error(
                "admin_group",
                at,
                format!("cannot look up group `{name}`: {e}"),
            )),
        }
    }

    /// A whole-number setting as written, if it is; refused with `rule` unless `valid`.
    fn whole(
        &self,
        key: &str,
        value: Option<Spanned<Whole>>,
        valid: impl Fn(u64) -> bool,
        rule: &str,
    ) -> Result<Option<Whole>, ConfigError> {
        match value {
            Some(v) if !valid(v.get_ref().get()) => Err(self.error(key, v.span().start, rule)),
            v => Ok(v.map(Spanned::into_inner)),
        }
    }

    fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let base = self.base_dir();
        let (listen, listen_at) = self.addr("listen", raw.listen, DEFAULT_LISTEN)?;
        let (status_listen, status_at) =
            self.addr("status_listen", raw.status_listen, DEFAULT_STATUS_LISTEN)?;
        self.distinct_listeners(&[
            ("listen", listen, listen_at),
            ("status_listen", status_listen, status_at),
        ])?;
        let workers = self
            .whole(
                "workers",
                raw.workers,
                |n| (1..=MAX_WORKERS as u64).contains(&n),
                &format!("must be 1 to {MAX_WORKERS}"),
            )?
            .map_or(DEFAULT_WORKERS, Whole::count);
        let kill_grace_secs = self
            .whole(
                "kill_grace_secs",
                raw.kill_grace_secs,
                |n| n <= MAX_KILL_GRACE_SECS,
                &format!("must be at most {MAX_KILL_GRACE_SECS}"),
            )?
            .map_or(DEFAULT_KILL_GRACE_SECS, Whole::get);
        let keep_jobs = self
            .whole("keep_jobs", raw.keep_jobs, |n| n >= 1, "must be at least 1")?
            .map_or(DEFAULT_KEEP_JOBS, Whole::count);
        let max_log_bytes = self
            .whole(
                "max_log_bytes",
                raw.max_log_bytes,
                |n| n >= MIN_MAX_LOG_BYTES,
                &format!("must be at least {MIN_MAX_LOG_BYTES}"),
            )?
            .map_or(DEFAULT_MAX_LOG_BYTES, Whole::get);
        let public_url = match raw.public_url {
            Some(url)
                if url.get_ref().starts_with("http://")
                    || url.get_ref().starts_with("https://") =>
            {
                url.get_ref().trim_end_matches('/').to_string()
            }
            Some(url) => {
                return Err(self.error(
                    "public_url",
                    url.span().start,
                    "must start with http:// or https://",
                ))
            }
            None => format!("http://{listen}"),
        };
        let admin_group = self.admin_group(raw.admin_group)?;
        if raw.projects.is_empty() {
            return Err(ConfigError {
                path: self.path.to_path_buf(),
                line: None,
                key: Some("projects".into()),
                message: "no project is configured; add a [projects.NAME] table".into(),
            });
        }
        let mut projects = BTreeMap::new();
        for (name, p) in raw.projects {
            let project = self.project(&base, name, p)?;
            projects.insert(project.name.clone(), project);
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            listen,
            status_listen,
            admin_socket: base.join(
                raw.admin_socket
                    .unwrap_or_else(|| DEFAULT_ADMIN_SOCKET.into()),
            ),
            admin_group,
            state_dir: base.join(raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into())),
            public_url,
            workers,
            kill_grace: Duration::from_secs(kill_grace_secs),
            keep_jobs,
            max_log_bytes,
            projects,
        })
    }

    fn project(
        &self,
        base: &Path,
        name: Spanned<String>,
        raw: RawProject,
    ) -> Result<Project, ConfigError> {
        // Where the project's table starts: its name in `[projects.NAME]`.
        let at = name.span().start;
        let name = name.into_inner();
        let table = format!("projects.{name}");
        let key = |k: &str| format!("{table}.{k}");
        if !is_project_name(&name) {
            return Err(self.error(
                &table,
                at,
                format!(
                    "a project name is 1 to {MAX_PROJECT_NAME} of [A-Za-z0-9._-], starting with a letter or digit"
                ),
            ));
        }
        let required = |value: Option<Spanned<String>>, k: &str| match value {
            None => Err(self.error(&key(k), at, "missing; every project needs one")),
            Some(v) if v.get_ref().trim().is_empty() => {
                Err(self.error(&key(k), v.span().start, "must not be empty"))
            }
            Some(v) => Ok(v.into_inner()),
        };
        let repo = required(raw.repo, "repo")?;
        let build = required(raw.build, "build")?;
        let timeout_secs = self
            .whole(
                &key("timeout_secs"),
                raw.timeout_secs,
                |n| n >= 1,
                "must be at least 1",
            )?
            .map_or(DEFAULT_TIMEOUT_SECS, Whole::get);
        let (env, env_at) = match raw.env {
            Some(env) => (env.get_ref().clone(), env.span().start),
            None => (BTreeMap::new(), at),
        };
        let env_error = |message: String| self.error(&key("env"), env_at, message);
        for name in env.keys() {
            crate::env_file::is_user_variable(name).map_err(env_error)?;
        }
        if env.values().any(|v| v.contains('\0')) {
            return Err(env_error("values must not contain NUL".into()));
        }
        let file = |k: &str, value| self.secret_file(base, &key(k), value);
        let env_file = file("env_file", raw.env_file)?;
        Ok(Project {
            repo: resolve_repo(base, &repo),
            name,
            build,
            timeout: Duration::from_secs(timeout_secs),
            env,
            ssh_key: file("ssh_key", raw.ssh_key)?,
            known_hosts: file("known_hosts", raw.known_hosts)?,
            git_credentials: file("git_credentials", raw.git_credentials)?,
            env_file,
        })
    }

    /// A key, credential or env file: resolved against the config folder, and refused unless
    /// it is a file deployhook can read now (an env file must also parse).
    fn secret_file(
        &self,
        base: &Path,
        key: &str,
        value: Option<Spanned<String>>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let at = value.span().start;
        if value.get_ref().is_empty() {
            return Err(self.error(key, at, "must not be empty"));
        }
        let path = base.join(value.get_ref());
        if self.files == Files::Skip {
            return Ok(Some(path));
        }
        let readable = std::fs::File::open(&path)
            .and_then(|f| f.metadata())
            .and_then(|m| match m.is_file() {
                true => Ok(()),
                false => Err(std::io::Error::other("not a regular file")),
            });
        if let Err(e) = readable {
            return Err(self.error(key, at, format!("cannot read {}: {e}", path.display())));
        }
        if key.ends_with(".env_file") {
            crate::env_file::read(&path).map_err(|e| self.error(key, at, e.to_string()))?;
        }
        Ok(Some(path))
    }
}

/// Whether two listening addresses can fight over one port. Port 0 asks for any free port, so
/// it never collides. A wildcard address takes its port on every address it covers: `0.0.0.0`
/// all of IPv4 (and `[::]`'s port), `[::]` everything, since Linux makes it dual-stack by
/// default.
fn may_collide(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (canonical(a.ip()), canonical(b.ip()));
    let covers = |wild: IpAddr, other: IpAddr| match wild {
        IpAddr::V4(v4) => v4.is_unspecified() && (other.is_ipv4() || other.is_unspecified()),
        IpAddr::V6(v6) => v6.is_unspecified(),
    };
    a == b || covers(a, b) || covers(b, a)
}

pub fn is_project_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROJECT_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A local path is made absolute against the config folder; URLs and `host:path` stay as
/// written.
fn resolve_repo(base: &Path, repo: &str) -> String {
    let is_url = repo.contains("://");
    let is_scp_like = repo
        .find(':')
        .is_some_and(|colon| !repo[..colon].contains('/'));
    if is_url || is_scp_like || Path::new(repo).is_absolute() {
        repo.to_string()
    } else {
        base.join(repo).to_string_lossy().into_owned()
    }
}

/// The packaged example config, which must stay valid.
#[cfg(test)]
const EXAMPLE: &str = include_str!("../packaging/deployhook.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/dh/deployhook.toml"), text)
    }

    const MINIMAL: &str = "[projects.site]\nrepo = \"site.git\"\nbuild = \"make\"\n";

    #[test]
    fn defaults_fill_everything_but_projects() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.status_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/deployhook"));
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        assert_eq!(c.workers, 2);
        assert_eq!(c.kill_grace, Duration::from_secs(10));
        assert_eq!(c.keep_jobs, 200);
        assert_eq!(c.max_log_bytes, 10 * 1024 * 1024);
        let p = &c.projects["site"];
        assert_eq!(p.repo, "/etc/dh/site.git");
        assert_eq!(p.timeout, Duration::from_secs(900));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let c = parse_str(&format!(
            "state_dir = \"state\"\nadmin_socket = \"run/a.sock\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/dh/state"));
        assert_eq!(c.admin_socket, PathBuf::from("/etc/dh/run/a.sock"));
    }

    #[test]
    fn remote_repos_are_left_alone() {
        assert_eq!(
            resolve_repo(Path::new("/b"), "https://h/x.git"),
            "https://h/x.git"
        );
        assert_eq!(
            resolve_repo(Path::new("/b"), "git@h:me/x.git"),
            "git@h:me/x.git"
        );
        assert_eq!(resolve_repo(Path::new("/b"), "/srv/x.git"), "/srv/x.git");
        assert_eq!(resolve_repo(Path::new("/b"), "./x:y"), "/b/./x:y");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse_str(&format!("{MINIMAL}buidl = \"x\"\n")).unwrap_err();
        assert_eq!(err.line, Some(4));
        assert_eq!(err.key.as_deref(), Some("projects.site.buidl"));
        assert!(
            err.to_string()
                .starts_with("/etc/dh/deployhook.toml:4: key `projects.site.buidl`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse_str(&format!("workers = \"two\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(err.line, Some(1));
        assert_eq!(err.key.as_deref(), Some("workers"));
    }

    #[test]
    fn missing_field_names_the_key() {
        let err = parse_str("[projects.site]\nrepo = \"x\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("projects.site.build"), "{err}");
        assert!(err.line.is_some());
    }

    #[test]
    fn semantic_errors_are_located() {
        let err = parse_str(&format!("listen = \"nowhere\"\n{MINIMAL}")).unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(1), Some("listen")));
        let err = parse_str("[projects.site]\nrepo = \"x\"\nbuild = \"m\"\ntimeout_secs = 0\n")
            .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("projects.site.timeout_secs"))
        );
        let err = parse_str("[projects.\"a b\"]\nrepo = \"x\"\nbuild = \"m\"\n").unwrap_err();
        assert_eq!(err.line, Some(1));
        let err = parse_str("workers = 1\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("projects"));
    }

    #[test]
    fn a_misspelt_table_is_named_as_written() {
        // `[project.site]` (singular) is an unknown top-level key `project`, not
        // `project.site.project`.
        let err = parse_str("workers = 1\n\n[project.site]\nrepo = \"x\"\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("project")));
        assert!(
            err.to_string()
                .starts_with("/etc/dh/deployhook.toml:3: key `project`: unknown field `project`"),
            "{err}"
        );
    }

    #[test]
    fn numbers_are_asked_for_as_whole_numbers() {
        for (text, key) in [
            ("workers = \"two\"\n", "workers"),
            ("keep_jobs = 1.5\n", "keep_jobs"),
            ("kill_grace_secs = -1\n", "kill_grace_secs"),
            ("max_log_bytes = true\n", "max_log_bytes"),
        ] {
            let err = parse_str(&format!("{text}{MINIMAL}")).unwrap_err();
            assert_eq!((err.line, err.key.as_deref()), (Some(1), Some(key)));
            assert!(err.message.ends_with("expected a whole number"), "{err}");
            assert!(!err.message.contains("u64") && !err.message.contains("usize"));
        }
        let err = parse_str("[projects.site]\nrepo = \"x\"\nbuild = \"m\"\ntimeout_secs = -5\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/dh/deployhook.toml:4: key `projects.site.timeout_secs`: \
             invalid value: integer `-5`, expected a whole number"
        );
    }

    #[test]
    fn keys_inside_inline_tables_are_named_in_full() {
        let err = parse_str("[projects.site]\nrepo = \"x\"\nbuild = \"m\"\nenv = { A = 1 }\n")
            .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("projects.site.env.A"))
        );
        let err =
            parse_str("[projects]\nsite = { repo = \"x\", build = \"m\", bad = 1 }\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(2), Some("projects.site.bad"))
        );
    }

    #[test]
    fn a_missing_required_key_points_at_its_table() {
        let err = parse_str("workers = 1\n[projects.site]\nbuild = \"m\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/dh/deployhook.toml:2: key `projects.site.repo`: missing; every project needs one"
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse_str(&format!("{MINIMAL}[[broken\n")).unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("]]"), "{err}");
        let err = parse_str("workers = \n").unwrap_err();
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn values_with_a_problem_are_located_by_their_span() {
        let err = parse_str(&format!("\n\nworkers = 0\n{MINIMAL}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/dh/deployhook.toml:3: key `workers`: must be 1 to 256"
        );
        let text = "# comment\n[projects.site]\nrepo = \"x\"\nbuild = \"m\"\n\
                    env = { \"DEPLOYHOOK_X\" = \"1\" }\n";
        let err = parse_str(text).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(5), Some("projects.site.env"))
        );
        let err = parse_str(&format!(
            "{MINIMAL}[projects.other]\nrepo = \"x\"\nbuild = \" \"\n"
        ))
        .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(6), Some("projects.other.build"))
        );
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let err = parse_str(&format!(
            "listen = \"127.0.0.1:9000\"\nstatus_listen = \"127.0.0.1:9000\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/dh/deployhook.toml:2: key `status_listen`: `127.0.0.1:9000` is also the \
             address of `listen`; each listener needs its own address (port 0 picks a free one)"
        );
        // Against a default, the error is placed at the key that is written.
        let err = parse_str(&format!("\nlisten = \"127.0.0.1:8081\"\n{MINIMAL}")).unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(2), Some("listen")));
        let err = parse_str(&format!(
            "listen = \"0.0.0.0:9000\"\nstatus_listen = \"127.0.0.1:9000\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert!(err.message.contains("share the port"), "{err}");
        for (listen, status) in [
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("127.0.0.1:9000", "127.0.0.2:9000"),
            ("127.0.0.1:9000", "127.0.0.1:9001"),
            ("0.0.0.0:9000", "[::1]:9000"),
        ] {
            let text = format!("listen = \"{listen}\"\nstatus_listen = \"{status}\"\n{MINIMAL}");
            assert!(parse_str(&text).is_ok(), "{listen} {status}");
        }
    }

    #[test]
    fn listeners_that_share_a_port_are_found() {
        let collide = |a: &str, b: &str| may_collide(a.parse().unwrap(), b.parse().unwrap());
        assert!(collide("127.0.0.1:80", "127.0.0.1:80"));
        assert!(collide("0.0.0.0:80", "10.0.0.1:80"));
        assert!(collide("[::]:80", "127.0.0.1:80"));
        assert!(collide("[::]:80", "0.0.0.0:80"));
        assert!(collide("[::ffff:127.0.0.1]:80", "127.0.0.1:80"));
        assert!(!collide("0.0.0.0:80", "[::1]:80"));
        assert!(!collide("0.0.0.0:0", "0.0.0.0:0"));
        assert!(!collide("[::1]:80", "[::2]:80"));
    }

    #[test]
    fn an_admin_group_must_exist() {
        let c = parse_str(&format!("admin_group = \"root\"\n{MINIMAL}")).unwrap();
        assert_eq!(c.admin_group.as_deref(), Some("root"));
        let err = parse_str(&format!("admin_group = \"dh-no-such-group\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/dh/deployhook.toml:1: key `admin_group`: there is no group `dh-no-such-group` \
             on this system; create it (groupadd dh-no-such-group) or remove the setting"
        );
    }

    #[test]
    fn secret_files_must_be_readable_and_are_named_with_their_key() {
        let dir = std::env::temp_dir().join(format!("dh-config-secrets-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::write(dir.join("keys/site"), "key").unwrap();
        std::fs::write(dir.join("site.env"), "TOKEN=abcd\n").unwrap();
        let path = dir.join("deployhook.toml");
        let text = "[projects.site]\nrepo = \"git@h:s.git\"\nbuild = \"m\"\n\
                    ssh_key = \"keys/site\"\nenv_file = \"site.env\"\n";
        let c = parse(&path, text).unwrap();
        let p = &c.projects["site"];
        assert_eq!(p.ssh_key.as_deref(), Some(dir.join("keys/site").as_path()));
        assert_eq!(p.env_file.as_deref(), Some(dir.join("site.env").as_path()));
        for (line, key) in [
            ("git_credentials = \"secrets/gone\"", "git_credentials"),
            ("known_hosts = \"keys\"", "known_hosts"),
        ] {
            let err = parse(&path, &format!("{text}{line}\n")).unwrap_err();
            assert_eq!(err.line, Some(6), "{err}");
            assert_eq!(err.key.as_deref(), Some(&*format!("projects.site.{key}")));
            assert!(err.message.starts_with("cannot read /"), "{err}");
        }
        std::fs::write(dir.join("site.env"), "not a variable\n").unwrap();
        let err = parse(&path, text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("projects.site.env_file"));
        assert!(
            err.message.ends_with("site.env:1: expected KEY=VALUE"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_password_in_the_repo_url_is_warned_about_and_hidden() {
        let c = parse_str("[projects.site]\nrepo = \"https://u:TOK3N@h/s.git\"\nbuild = \"m\"\n")
            .unwrap();
        let warnings = c.projects["site"].warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("https://u:***@h/s.git"),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("git_credentials") && !warnings[0].contains("TOK3N"));
        assert!(parse_str(MINIMAL).unwrap().projects["site"]
            .warnings()
            .is_empty());
    }

    #[test]
    fn a_reload_takes_projects_and_keeps_what_needs_a_restart() {
        let mut running = parse_str(&format!("listen = \"127.0.0.1:0\"\n{MINIMAL}")).unwrap();
        // As at start with port 0: the bound address and the URL that follows it.
        running.listen = "127.0.0.1:4242".parse().unwrap();
        running.public_url = "http://127.0.0.1:4242".into();
        let text = "listen = \"127.0.0.1:0\"\nworkers = 7\nstate_dir = \"/elsewhere\"\nkill_grace_secs = 3\n\
             [projects.blog]\nrepo = \"blog.git\"\nbuild = \"make\"\n";
        let new = parse_str(text).unwrap();
        assert_eq!(
            running.restart_needed(&new),
            ["listen", "state_dir", "workers"]
        );
        let merged = Config::reloaded(&running, new.clone());
        assert_eq!(merged.listen, running.listen);
        assert_eq!(merged.public_url, "http://127.0.0.1:4242");
        assert_eq!(merged.workers, running.workers);
        assert_eq!(merged.state_dir, running.state_dir);
        assert_eq!(merged.kill_grace, Duration::from_secs(3));
        assert_eq!(merged.projects, new.projects);
        assert!(merged.restart_needed(&running).is_empty());

        let explicit = parse_str(&format!(
            "public_url = \"https://deploy.example\"\n{MINIMAL}"
        ));
        let merged = Config::reloaded(&running, explicit.unwrap());
        assert_eq!(merged.public_url, "https://deploy.example");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = parse_str(EXAMPLE).unwrap();
        assert!(!c.projects.is_empty());
    }
}
