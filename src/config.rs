//! The configuration file: TOML parsed with serde, then checked and resolved into [`Config`].
//!
//! Invariants of a [`Config`] once built: addresses parse, paths are absolute (relative ones
//! resolved against the config file's folder), every number is within its documented range,
//! and at least one project exists. Any problem becomes one [`ConfigError`] that names the file,
//! the line and the dotted key, so `check-config` and a refused SIGHUP reload say the same thing.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const ENV_CONFIG: &str = "DEPLOYHOOK_CONFIG";
pub const DEFAULT_PATH: &str = "/etc/deployhook/deployhook.toml";

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:8081";
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

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read the file: {e}"),
    })?;
    parse(path, &text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    status_listen: Option<String>,
    admin_socket: Option<PathBuf>,
    admin_group: Option<String>,
    state_dir: Option<PathBuf>,
    public_url: Option<String>,
    workers: Option<usize>,
    kill_grace_secs: Option<u64>,
    keep_jobs: Option<usize>,
    max_log_bytes: Option<u64>,
    #[serde(default)]
    projects: BTreeMap<String, RawProject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    repo: String,
    build: String,
    timeout_secs: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Parses config text; `path` is used for messages and to resolve relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
    Checker { path, text }.check(raw)
}

fn syntax_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim().to_string();
    let (line, key) = match err.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            (Some(line), key_at(text, line, &message))
        }
        None => (None, None),
    };
    ConfigError {
        path: path.to_path_buf(),
        line,
        key,
        message,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key an error at `line` is about: the table in force at that line plus the key
/// written on it, or the field a "missing field `x`" message names.
fn key_at(text: &str, line: usize, message: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines
        .get(line.checked_sub(1)?)
        .copied()
        .unwrap_or("")
        .trim();
    let header = |l: &str| -> Option<String> {
        let l = l.trim();
        let inner = l.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim_matches(['[', ' ']).replace(['"', ' '], ""))
    };
    let table = if here.starts_with('[') {
        header(here)
    } else {
        lines[..line - 1].iter().rev().find_map(|l| header(l))
    };
    let own = if let Some(field) = backticked_after(message, "missing field") {
        Some(field)
    } else if let Some(field) = backticked_after(message, "unknown field") {
        Some(field)
    } else if !here.starts_with('[') {
        here.split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
    } else {
        None
    };
    match (table, own) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.split(prefix).nth(1)?;
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(rest[start..start + len].to_string())
}

/// Semantic checks on a syntactically valid file.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn error(&self, table: &str, key: &str, message: impl Into<String>) -> ConfigError {
        let dotted = if table.is_empty() {
            key.to_string()
        } else {
            format!("{table}.{key}")
        };
        ConfigError {
            path: self.path.to_path_buf(),
            line: find_key_line(self.text, table, key),
            key: Some(dotted),
            message: message.into(),
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

    fn addr(
        &self,
        key: &str,
        value: Option<String>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let value = value.unwrap_or_else(|| default.to_string());
        value.parse().map_err(|_| {
            self.error(
                "",
                key,
                format!("`{value}` is not an address like 127.0.0.1:8080 or [::1]:8080"),
            )
        })
    }

    fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let base = self.base_dir();
        let listen = self.addr("listen", raw.listen, DEFAULT_LISTEN)?;
        let status_listen = self.addr("status_listen", raw.status_listen, DEFAULT_STATUS_LISTEN)?;
        let workers = raw.workers.unwrap_or(DEFAULT_WORKERS);
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(self.error("", "workers", format!("must be 1 to {MAX_WORKERS}")));
        }
        let kill_grace_secs = raw.kill_grace_secs.unwrap_or(DEFAULT_KILL_GRACE_SECS);
        if kill_grace_secs > MAX_KILL_GRACE_SECS {
            return Err(self.error(
                "",
                "kill_grace_secs",
                format!("must be at most {MAX_KILL_GRACE_SECS}"),
            ));
        }
        let keep_jobs = raw.keep_jobs.unwrap_or(DEFAULT_KEEP_JOBS);
        if keep_jobs == 0 {
            return Err(self.error("", "keep_jobs", "must be at least 1"));
        }
        let max_log_bytes = raw.max_log_bytes.unwrap_or(DEFAULT_MAX_LOG_BYTES);
        if max_log_bytes < MIN_MAX_LOG_BYTES {
            return Err(self.error(
                "",
                "max_log_bytes",
                format!("must be at least {MIN_MAX_LOG_BYTES}"),
            ));
        }
        let public_url = match raw.public_url {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                url.trim_end_matches('/').to_string()
            }
            Some(_) => {
                return Err(self.error("", "public_url", "must start with http:// or https://"))
            }
            None => format!("http://{listen}"),
        };
        if let Some(group) = &raw.admin_group {
            if group.is_empty() {
                return Err(self.error("", "admin_group", "must not be empty"));
            }
        }
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
            admin_group: raw.admin_group,
            state_dir: base.join(raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into())),
            public_url,
            workers,
            kill_grace: Duration::from_secs(kill_grace_secs),
            keep_jobs,
            max_log_bytes,
            projects,
        })
    }

    fn project(&self, base: &Path, name: String, raw: RawProject) -> Result<Project, ConfigError> {
        let table = format!("projects.{name}");
        if !is_project_name(&name) {
            return Err(ConfigError {
                path: self.path.to_path_buf(),
                line: find_table_line(self.text, &table),
                key: Some(table),
                message: format!(
                    "a project name is 1 to {MAX_PROJECT_NAME} of [A-Za-z0-9._-], starting with a letter or digit"
                ),
            });
        }
        if raw.repo.trim().is_empty() {
            return Err(self.error(&table, "repo", "must not be empty"));
        }
        if raw.build.trim().is_empty() {
            return Err(self.error(&table, "build", "must not be empty"));
        }
        let timeout_secs = raw.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs == 0 {
            return Err(self.error(&table, "timeout_secs", "must be at least 1"));
        }
        for key in raw.env.keys() {
            let valid = !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !key.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(self.error(
                    &table,
                    "env",
                    format!("`{key}` is not a valid variable name"),
                ));
            }
            if key.starts_with("DEPLOYHOOK_") {
                return Err(self.error(
                    &table,
                    "env",
                    format!("`{key}`: DEPLOYHOOK_* variables are set by deployhook"),
                ));
            }
        }
        if raw.env.values().any(|v| v.contains('\0')) {
            return Err(self.error(&table, "env", "values must not contain NUL"));
        }
        Ok(Project {
            repo: resolve_repo(base, &raw.repo),
            name,
            build: raw.build,
            timeout: Duration::from_secs(timeout_secs),
            env: raw.env,
        })
    }
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

/// A table name as written in a header, without brackets, quotes and spaces.
fn normalize_table(name: &str) -> String {
    name.trim_matches(['[', ']', ' '])
        .replace(['"', '\'', ' '], "")
}

/// Line of `[table]` in the text, if written as a header.
fn find_table_line(text: &str, table: &str) -> Option<usize> {
    let wanted = normalize_table(table);
    text.lines()
        .position(|l| {
            let l = l.trim();
            l.starts_with('[') && normalize_table(l) == wanted
        })
        .map(|i| i + 1)
}

/// Line where `key = …` is written inside `table` ("" for the top level).
fn find_key_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            current = normalize_table(l);
            continue;
        }
        if current == normalize_table(table) {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
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
    fn the_shipped_example_is_valid() {
        let c = parse_str(EXAMPLE).unwrap();
        assert!(!c.projects.is_empty());
    }
}
