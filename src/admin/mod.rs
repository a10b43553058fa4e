//! The admin socket: a Unix socket where `deployhook hooks …` creates, lists and revokes hooks.
//! It is a JSON-lines service, not HTTP; [`protocol`] holds the wire format the CLI shares.
//!
//! Access control is the socket file's mode: 0600 (the daemon's user), or 0660 with the
//! configured `admin_group`. A new hook's secret exists in clear only in the answer to
//! `create`; the journal keeps its SHA-256. Threads: `admin` accepts, one short-lived
//! `admin-conn` thread per connection answers.

mod operator;
pub mod protocol;
mod rollback;

use crate::clock::now_ms;
use crate::config::Config;
use crate::journal::{Hook, Journal, JournalError, Op, Outcome, ReadError};
use crate::secret::{self, RandomError};
use protocol::{Answer, Created, Hooks, Request, Revoked};
use serde::Serialize;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HOOK_NAME: usize = 100;

/// Why a request was refused; its text is what the CLI prints.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminError {
    /// The request line could not be read from the socket.
    Read(io::Error),
    /// The line is not a request this daemon knows.
    Malformed(serde_json::Error),
    /// `create` named a project the config does not have.
    UnknownProject { project: String, known: Vec<String> },
    /// A hook name that is empty (once trimmed) or longer than [`MAX_HOOK_NAME`] characters.
    HookNameLength,
    /// A hook name with control characters (a newline, a tab, an escape sequence).
    HookNameControl,
    /// A branch name git refuses (or an option in disguise).
    BadBranch(String),
    /// git could not be run to check a branch name.
    Git(io::Error),
    /// `revoke` was given something that is not shaped like a hook id.
    NotAHookId(String),
    /// No hook has this id (it never existed or was revoked already).
    NoSuchHook(String),
    /// `cancel` was given something that is not shaped like a job id.
    NotAJobId(String),
    /// No job has this id (it never existed or was pruned).
    NoSuchJob(String),
    /// `cancel` named a job that has ended already.
    JobEnded { job: String, state: &'static str },
    /// `create` named a branch the repository does not have.
    NoSuchBranch { repo: String, branch: String },
    /// `create` could not ask the repository whether the branch exists.
    BranchUnchecked { repo: String, why: String },
    /// The operating system gave no random bytes for a hook id or secret.
    Random(RandomError),
    /// The journal did not take the write; nothing changed.
    Journal(JournalError),
    /// The journal could not be read.
    JournalRead(ReadError),
    /// `rollback` named a project that does not publish (no `publish` in its table).
    NotPublished { project: String },
    /// `rollback` found no release to go to, or could not switch to it.
    Rollback(crate::publish::RollbackError),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Read(e) => write!(f, "cannot read the request: {e}"),
            AdminError::Malformed(e) => write!(f, "malformed request: {e}"),
            AdminError::UnknownProject { project, known } => write!(
                f,
                "unknown project `{project}`; configured: {}",
                known.join(", ")
            ),
            AdminError::HookNameLength => {
                write!(f, "a hook name is 1 to {MAX_HOOK_NAME} characters")
            }
            AdminError::HookNameControl => {
                write!(f, "a hook name must not contain control characters")
            }
            AdminError::BadBranch(branch) => write!(f, "`{branch}` is not a valid branch name"),
            AdminError::Git(e) => write!(f, "cannot run git to check the branch name: {e}"),
            AdminError::NotAHookId(id) => {
                write!(
                    f,
                    "`{id}` is not a hook id (hook_ and 12 letters or digits)"
                )
            }
            AdminError::NoSuchHook(id) => write!(f, "no hook with id {id}"),
            AdminError::NotAJobId(id) => {
                write!(f, "`{id}` is not a job id (20 letters or digits)")
            }
            AdminError::NoSuchJob(id) => write!(f, "no job with id {id}"),
            AdminError::JobEnded { job, state } => write!(
                f,
                "job {job} is {state} already; only PENDING or BUILDING jobs can be canceled"
            ),
            AdminError::NoSuchBranch { repo, branch } => write!(
                f,
                "the repository {repo} has no branch `{branch}` (git ls-remote); push it first, \
                 or pass --no-verify to create the hook anyway"
            ),
            AdminError::BranchUnchecked { repo, why } => write!(
                f,
                "cannot check the branch in {repo}: {why}; fix the repository's access, or pass \
                 --no-verify to create the hook anyway"
            ),
            AdminError::Random(e) => write!(f, "{e}"),
            AdminError::Journal(e) => write!(f, "{e}"),
            AdminError::JournalRead(e) => write!(f, "{e}"),
            AdminError::NotPublished { project } => write!(
                f,
                "project `{project}` does not publish releases (no `publish` in its table), so \
                 there is nothing to roll back"
            ),
            AdminError::Rollback(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<JournalError> for AdminError {
    fn from(e: JournalError) -> Self {
        AdminError::Journal(e)
    }
}

impl From<ReadError> for AdminError {
    fn from(e: ReadError) -> Self {
        AdminError::JournalRead(e)
    }
}

impl From<RandomError> for AdminError {
    fn from(e: RandomError) -> Self {
        AdminError::Random(e)
    }
}

pub struct Admin {
    pub journal: Journal,
    pub config: Arc<RwLock<Arc<Config>>>,
    /// Counts rollbacks, which also tells open status pages to refresh.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Why the admin socket could not be set up at start; its text names the socket and, for a
/// group problem, `admin_group`.
#[derive(Debug)]
#[non_exhaustive]
pub enum BindError {
    /// The socket's folder does not exist and could not be made.
    Folder { dir: PathBuf, cause: io::Error },
    /// A daemon already answers on the socket.
    InUse { socket: PathBuf },
    /// A socket file left by an earlier daemon could not be removed.
    Stale { socket: PathBuf, cause: io::Error },
    /// The group database could not be read to find `admin_group`.
    GroupLookup { group: String, cause: io::Error },
    /// `admin_group` names no group on this system.
    NoSuchGroup { group: String },
    /// bind(2) refused the socket path.
    Bind { socket: PathBuf, cause: io::Error },
    /// The socket could not be given to `admin_group` (chown(2) refused).
    Group {
        socket: PathBuf,
        group: String,
        cause: io::Error,
    },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Folder { dir, cause } => write!(
                f,
                "cannot create {}, the admin socket's folder: {cause}",
                dir.display()
            ),
            BindError::InUse { socket } => write!(
                f,
                "another deployhook daemon is listening on the admin socket {}",
                socket.display()
            ),
            BindError::Stale { socket, cause } => write!(
                f,
                "cannot remove the stale admin socket {}: {cause}",
                socket.display()
            ),
            BindError::GroupLookup { group, cause } => {
                write!(f, "cannot look up group `{group}` (admin_group): {cause}")
            }
            BindError::NoSuchGroup { group } => write!(
                f,
                "there is no group `{group}` (admin_group); create it or remove the setting"
            ),
            BindError::Bind { socket, cause } => {
                write!(
                    f,
                    "cannot bind the admin socket {}: {cause}",
                    socket.display()
                )?;
                if cause.kind() == io::ErrorKind::PermissionDenied {
                    if let Some(dir) = socket.parent() {
                        write!(
                            f,
                            "; the daemon's user needs write access to {}",
                            dir.display()
                        )?;
                    }
                }
                Ok(())
            }
            BindError::Group {
                socket,
                group,
                cause,
            } => {
                write!(
                    f,
                    "cannot give the admin socket {} to group `{group}` (admin_group): {cause}",
                    socket.display()
                )?;
                match cause.raw_os_error() {
                    Some(libc::EPERM) => write!(
                        f,
                        "; the daemon must run as root or as a member of that group"
                    ),
                    // chown(2) to a group the user namespace does not map.
                    Some(libc::EINVAL) => write!(
                        f,
                        "; the group does not exist in the daemon's user namespace (systemd's \
                         PrivateUsers=yes maps only root and the service's own user and group)"
                    ),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for BindError {}

/// Binds the socket with the right mode from the start (mask set around `bind`), replacing a
/// stale socket file left by a crash. Call before other threads start: the mask is process-wide.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|cause| BindError::Folder {
            dir: dir.to_path_buf(),
            cause,
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse {
                socket: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(|cause| BindError::Stale {
            socket: path.to_path_buf(),
            cause,
        })?;
    }
    let gid = match group {
        Some(name) => {
            let found = crate::sys::group_id(name).map_err(|cause| BindError::GroupLookup {
                group: name.to_string(),
                cause,
            })?;
            Some(found.ok_or_else(|| BindError::NoSuchGroup {
                group: name.to_string(),
            })?)
        }
        None => None,
    };
    let mask = if gid.is_some() { 0o117 } else { 0o177 };
    let listener = crate::sys::with_umask(mask, || UnixListener::bind(path)).map_err(|cause| {
        BindError::Bind {
            socket: path.to_path_buf(),
            cause,
        }
    })?;
    if let (Some(gid), Some(name)) = (gid, group) {
        if let Err(cause) = crate::sys::chown_group(path, gid) {
            // The file would outlive the failed start and look like a stale socket.
            let _ = std::fs::remove_file(path);
            return Err(BindError::Group {
                socket: path.to_path_buf(),
                group: name.to_string(),
                cause,
            });
        }
    }
    Ok(listener)
}

/// A result as its answer line.
fn line<T: Serialize>(result: Result<T, AdminError>) -> String {
    match result {
        Ok(done) => Answer::Done(done).to_line(),
        Err(e) => refusal(&e),
    }
}

/// A refusal's line, the same whatever the request was.
fn refusal(e: &AdminError) -> String {
    Answer::<()>::Refused(e.to_string()).to_line()
}

impl Admin {
    /// Serves the socket until it is shut down; one short-lived thread per connection.
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                // The daemon shut the socket down (it is stopping): accept says EINVAL from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => {
                    log::warn!("admin socket accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let admin = self.clone();
            let spawned = std::thread::Builder::new()
                .name("admin-conn".into())
                .spawn(move || admin.connection(stream));
            if let Err(e) = spawned {
                log::warn!("cannot start an admin thread: {e}");
            }
        }
    }

    fn connection(&self, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let mut text = String::new();
        let read = BufReader::new((&stream).take(protocol::MAX_LINE_BYTES)).read_line(&mut text);
        let request = read
            .map_err(AdminError::Read)
            .and_then(|_| serde_json::from_str::<Request>(&text).map_err(AdminError::Malformed));
        let out = match request {
            Ok(req) => self.answer(req),
            Err(e) => refusal(&e),
        };
        let _ = (&stream).write_all(out.as_bytes());
    }

    /// The answer line to one request.
    fn answer(&self, req: Request) -> String {
        match req {
            Request::Create {
                project,
                name,
                branch,
                verify,
            } => line(self.create(project, name, branch, verify)),
            Request::List => line(self.list()),
            Request::Revoke { id } => line(self.revoke(id)),
            Request::Trigger { id } => line(self.trigger(id)),
            Request::Rotate { id } => line(self.rotate(id)),
            Request::Cancel { job } => line(self.cancel(job)),
            Request::Rollback { project, job } => line(self.rollback(project, job)),
        }
    }

    /// The configuration the daemon runs with now.
    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn create(
        &self,
        project: String,
        name: String,
        branch: String,
        verify: bool,
    ) -> Result<Created, AdminError> {
        let config = self.config();
        let spec = known_project(&config, project.clone())?;
        let name = check_hook_name(&name)?;
        check_branch(&branch)?;
        if verify {
            operator::verify_branch(&config, spec, &branch)?;
        }
        let id = secret::new_hook_id()?;
        let clear = secret::new_secret()?;
        let hook = Hook {
            id: id.clone(),
            name,
            project: project.clone(),
            branch: branch.clone(),
            created_at: now_ms(),
            last_triggered_at: None,
        };
        self.journal.submit(Op::CreateHook {
            hook: hook.clone(),
            secret: secret::hash_secret(&clear),
        })?;
        log::info!("hook created hook={id} project={project} branch={branch}");
        Ok(Created {
            hook,
            url: config.hook_url(&project, &clear),
        })
    }

    fn list(&self) -> Result<Hooks, AdminError> {
        Ok(Hooks {
            hooks: self.journal.hooks()?,
        })
    }

    fn revoke(&self, id: String) -> Result<Revoked, AdminError> {
        if !secret::is_hook_id(&id) {
            return Err(AdminError::NotAHookId(id));
        }
        match self.journal.submit(Op::RevokeHook { id: id.clone() })? {
            Outcome::HookRevoked => {
                log::info!("hook revoked hook={id}");
                Ok(Revoked { revoked: id })
            }
            _ => Err(AdminError::NoSuchHook(id)),
        }
    }
}

/// The configured project `name`, or the refusal that lists the known ones.
fn known_project(config: &Config, name: String) -> Result<&crate::config::Project, AdminError> {
    config
        .projects
        .get(&name)
        .ok_or_else(|| AdminError::UnknownProject {
            project: name,
            known: config.projects.keys().cloned().collect(),
        })
}

/// A hook name as stored: trimmed, 1 to [`MAX_HOOK_NAME`] characters, no control characters.
pub fn check_hook_name(name: &str) -> Result<String, AdminError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_HOOK_NAME {
        return Err(AdminError::HookNameLength);
    }
    if name.chars().any(char::is_control) {
        return Err(AdminError::HookNameControl);
    }
    Ok(name.to_string())
}

/// A branch name git accepts (`git check-ref-format --branch`), not an option in disguise.
pub fn check_branch(branch: &str) -> Result<(), AdminError> {
    let refused = || AdminError::BadBranch(branch.to_string());
    if branch.is_empty()
        || branch.starts_with('-')
        || branch.len() > 255
        || branch.contains('@') && branch.contains('{')
    {
        return Err(refused());
    }
    let status = Command::new("git")
        .args(["check-ref-format", "--branch", branch])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(AdminError::Git)?;
    if status.success() {
        Ok(())
    } else {
        Err(refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_checked_by_git() {
        assert!(check_branch("main").is_ok());
        assert!(check_branch("release/2.0").is_ok());
        for bad in ["", "-x", "a..b", "a b", "x.lock", "@{-1}", "a~1", "end/"] {
            assert!(
                matches!(check_branch(bad), Err(AdminError::BadBranch(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hook_names_are_trimmed_and_bounded() {
        assert_eq!(check_hook_name("  site  ").unwrap(), "site");
        assert!(check_hook_name(&"é".repeat(MAX_HOOK_NAME)).is_ok());
        for bad in ["".to_string(), "   ".into(), "x".repeat(MAX_HOOK_NAME + 1)] {
            assert!(
                matches!(check_hook_name(&bad), Err(AdminError::HookNameLength)),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_hook_name("a\tb"),
            Err(AdminError::HookNameControl)
        ));
    }

    #[test]
    fn refusals_carry_the_error_text() {
        let out = refusal(&AdminError::NoSuchHook("hook_AAAAAAAAAAAA".into()));
        assert_eq!(
            out,
            "{\"ok\":false,\"error\":\"no hook with id hook_AAAAAAAAAAAA\"}\n"
        );
    }
}
