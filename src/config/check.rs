//! The checks of a syntactically valid config file: addresses, ranges, paths and files, each
//! refusal a [`ConfigError`] naming the file, the line and the key.

use super::raw::{key_path, line_of, RawConfig, RawProject, RawPublish, Whole};
use super::*;
use toml::de::DeTable;
use toml::Spanned;

/// Semantic checks on a syntactically valid file.
pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) files: Files,
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
    pub(super) fn toml_error(&self, doc: &DeTable<'_>, err: &toml::de::Error) -> ConfigError {
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

    pub(super) fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
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
        let state_dir = base.join(raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()));
        let mut projects = BTreeMap::new();
        let mut targets: Vec<(PathBuf, String)> = Vec::new();
        for (name, p) in raw.projects {
            let publish_at = p.publish.as_ref().map(|v| v.span().start);
            let project = self.project(&base, name, p)?;
            if let (Some(publish), Some(at)) = (&project.publish, publish_at) {
                self.apart_from_state(&project.name, publish, at, &state_dir)?;
                self.distinct_target(&project.name, publish, at, &targets)?;
                targets.push((publish.to.clone(), project.name.clone()));
            }
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
            state_dir,
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
        let debounce_secs = self
            .whole(
                &key("debounce_secs"),
                raw.debounce_secs,
                |n| n <= MAX_DEBOUNCE_SECS,
                &format!("must be at most {MAX_DEBOUNCE_SECS} (a day)"),
            )?
            .map_or(0, Whole::get);
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
        let (notify, notify_on) = self.notification(&table, raw.notify, raw.notify_on)?;
        let publish = match raw.publish {
            Some(p) => Some(self.publish(base, &key("publish"), p)?),
            None => None,
        };
        Ok(Project {
            repo: resolve_repo(base, &repo),
            name,
            build,
            timeout: Duration::from_secs(timeout_secs),
            debounce: Duration::from_secs(debounce_secs),
            env,
            ssh_key: file("ssh_key", raw.ssh_key)?,
            known_hosts: file("known_hosts", raw.known_hosts)?,
            git_credentials: file("git_credentials", raw.git_credentials)?,
            env_file,
            notify,
            notify_on,
            publish,
        })
    }

    /// `notify` and `notify_on` of the project table `table`: the command, and the end states
    /// it runs for (`["ERROR"]` unless given). A `notify_on` without `notify` would do nothing,
    /// so it is refused.
    fn notification(
        &self,
        table: &str,
        command: Option<Spanned<String>>,
        states: Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Result<(Option<String>, NotifyOn), ConfigError> {
        let key = |k: &str| format!("{table}.{k}");
        let choices = NotifyOn::NAMES.join(", ");
        let command = match command {
            Some(c) if c.get_ref().trim().is_empty() => {
                return Err(self.error(&key("notify"), c.span().start, "must not be empty"))
            }
            Some(c) => c.into_inner(),
            None => match states {
                Some(s) => {
                    return Err(self.error(
                        &key("notify_on"),
                        s.span().start,
                        concat!(
                            "needs `notify`, the command to run (for example ",
                            "notify = \"curl -fsS -d @- https://ntfy.sh/my-topic\")"
                        ),
                    ))
                }
                None => return Ok((None, NotifyOn::default())),
            },
        };
        let mut on = NotifyOn::default();
        match states {
            None => {
                on.add("ERROR");
            }
            Some(list) => {
                if list.get_ref().is_empty() {
                    let message = format!("must list at least one of {choices}");
                    return Err(self.error(&key("notify_on"), list.span().start, message));
                }
                for state in list.into_inner() {
                    if !on.add(state.get_ref()) {
                        let message = format!(
                            "`{}` is not a state to notify on; use any of {choices}",
                            state.get_ref()
                        );
                        return Err(self.error(&key("notify_on"), state.span().start, message));
                    }
                }
            }
        }
        Ok((Some(command), on))
    }

    /// `publish = { dir, to, keep }`: `dir` a relative path inside the checkout, `to` a folder
    /// (relative ones against the config folder) that is not the file system's root, `keep` 1
    /// or more.
    fn publish(
        &self,
        base: &Path,
        key: &str,
        raw: Spanned<RawPublish>,
    ) -> Result<Publish, ConfigError> {
        let at = raw.span().start;
        let raw = raw.into_inner();
        let sub = |k: &str| format!("{key}.{k}");
        let required = |value: Option<Spanned<String>>, k: &str, example: &str| match value {
            None => Err(self.error(
                &sub(k),
                at,
                format!("missing; publish needs `{k}`, for example {k} = \"{example}\""),
            )),
            Some(v) if v.get_ref().trim().is_empty() => {
                Err(self.error(&sub(k), v.span().start, "must not be empty"))
            }
            Some(v) => Ok((v.span().start, PathBuf::from(v.into_inner()))),
        };
        let (dir_at, dir) = required(raw.dir, "dir", "public")?;
        let inside = dir.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if !inside {
            return Err(self.error(
                &sub("dir"),
                dir_at,
                "must be a folder inside the checkout: a relative path without `..`",
            ));
        }
        let (to_at, to) = required(raw.to, "to", "/srv/www/site")?;
        let to = base.join(to);
        if to.parent().is_none() {
            return Err(self.error(
                &sub("to"),
                to_at,
                "must be a folder of its own, not the root of the file system",
            ));
        }
        let keep = self
            .whole(&sub("keep"), raw.keep, |n| n >= 1, "must be at least 1")?
            .map_or(DEFAULT_PUBLISH_KEEP, Whole::count);
        Ok(Publish { dir, to, keep })
    }

    /// Refuses a publish target that another project publishes to, or one inside the other:
    /// their releases would be pruned and switched by each other.
    /// A publish folder apart from `state_dir`: the web server must not serve the journal or
    /// the builds, and a release must not land where the janitor removes build folders.
    fn apart_from_state(
        &self,
        project: &str,
        publish: &Publish,
        at: usize,
        state_dir: &Path,
    ) -> Result<(), ConfigError> {
        if publish.to.starts_with(state_dir) || state_dir.starts_with(&publish.to) {
            return Err(self.error(
                &format!("projects.{project}.publish.to"),
                at,
                format!(
                    "`{}` overlaps state_dir `{}`, which holds deployhook's journal and builds; \
                     choose a folder outside it, such as /srv/www/{project}",
                    publish.to.display(),
                    state_dir.display()
                ),
            ));
        }
        Ok(())
    }

    fn distinct_target(
        &self,
        project: &str,
        publish: &Publish,
        at: usize,
        earlier: &[(PathBuf, String)],
    ) -> Result<(), ConfigError> {
        for (to, other) in earlier {
            if publish.to.starts_with(to) || to.starts_with(&publish.to) {
                return Err(self.error(
                    &format!("projects.{project}.publish.to"),
                    at,
                    format!(
                        "`{}` overlaps `projects.{other}.publish.to` = `{}`; each project \
                         needs a publish folder of its own",
                        publish.to.display(),
                        to.display()
                    ),
                ));
            }
        }
        Ok(())
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
pub(super) fn may_collide(a: SocketAddr, b: SocketAddr) -> bool {
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

/// A local path is made absolute against the config folder; URLs and `host:path` stay as
/// written.
pub(super) fn resolve_repo(base: &Path, repo: &str) -> String {
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
