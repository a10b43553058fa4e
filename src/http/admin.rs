//! The admin socket: a Unix socket where `deployhook hooks …` creates, lists and revokes hooks.
//!
//! Access control is the socket file's mode: 0600 (the daemon's user), or 0660 with the
//! configured `admin_group`. The protocol is one JSON request line and one JSON answer line
//! per connection. A new hook's secret exists in clear only in the answer to `create`; the
//! journal keeps its SHA-256.

use crate::build::now_ms;
use crate::config::Config;
use crate::journal::{Hook, Journal, Op, Outcome};
use crate::secret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HOOK_NAME: usize = 100;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum AdminRequest {
    Create {
        project: String,
        name: String,
        branch: String,
    },
    List,
    Revoke {
        id: String,
    },
}

pub struct Admin {
    pub journal: Journal,
    pub config: Arc<RwLock<Arc<Config>>>,
}

/// Binds the socket with the right mode from the start (mask set around `bind`), replacing a
/// stale socket file left by a crash. Call before other threads start: the mask is process-wide.
pub fn bind(path: &Path, group: Option<&str>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another daemon is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let gid = match group {
        Some(name) => {
            let found = crate::sys::group_id(name).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot look up admin_group `{name}`: {e}"))
            })?;
            Some(found.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("admin_group `{name}` does not exist"),
                )
            })?)
        }
        None => None,
    };
    let mask = if gid.is_some() { 0o117 } else { 0o177 };
    let listener = crate::sys::with_umask(mask, || UnixListener::bind(path))?;
    if let Some(gid) = gid {
        crate::sys::chown_group(path, gid)?;
    }
    Ok(listener)
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
        let mut line = String::new();
        let read = BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line);
        let answer = match read {
            Ok(_) => match serde_json::from_str::<AdminRequest>(&line) {
                Ok(req) => self.answer(req),
                Err(e) => failure(format!("malformed request: {e}")),
            },
            Err(e) => failure(format!("cannot read the request: {e}")),
        };
        let mut out = answer.to_string();
        out.push('\n');
        let _ = (&stream).write_all(out.as_bytes());
    }

    fn answer(&self, req: AdminRequest) -> Value {
        let result = match req {
            AdminRequest::Create {
                project,
                name,
                branch,
            } => self.create(project, name, branch),
            AdminRequest::List => self
                .journal
                .hooks()
                .map(|hooks| json!({"ok": true, "hooks": hooks}))
                .map_err(|e| e.to_string()),
            AdminRequest::Revoke { id } => self.revoke(&id),
        };
        result.unwrap_or_else(failure)
    }

    fn create(&self, project: String, name: String, branch: String) -> Result<Value, String> {
        let config = self
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !config.projects.contains_key(&project) {
            let known: Vec<&str> = config.projects.keys().map(String::as_str).collect();
            return Err(format!(
                "unknown project `{project}`; configured: {}",
                known.join(", ")
            ));
        }
        let name = name.trim().to_string();
        if name.is_empty() || name.chars().count() > MAX_HOOK_NAME {
            return Err(format!("a hook name is 1 to {MAX_HOOK_NAME} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("a hook name must not contain control characters".into());
        }
        check_branch(&branch)?;
        let id = secret::new_hook_id().map_err(|e| e.to_string())?;
        let clear = secret::new_secret().map_err(|e| e.to_string())?;
        let hook = Hook {
            id: id.clone(),
            name,
            project: project.clone(),
            branch: branch.clone(),
            created_at: now_ms(),
            last_triggered_at: None,
        };
        self.journal
            .submit(Op::CreateHook {
                hook: hook.clone(),
                secret: secret::hash_secret(&clear),
            })
            .map_err(|e| e.to_string())?;
        log::info!("hook created hook={id} project={project} branch={branch}");
        Ok(json!({"ok": true, "hook": hook, "url": config.hook_url(&project, &clear)}))
    }

    fn revoke(&self, id: &str) -> Result<Value, String> {
        if !secret::is_hook_id(id) {
            return Err(format!(
                "`{id}` is not a hook id (hook_ and 12 letters or digits)"
            ));
        }
        match self.journal.submit(Op::RevokeHook { id: id.to_string() }) {
            Ok(Outcome::HookRevoked) => {
                log::info!("hook revoked hook={id}");
                Ok(json!({"ok": true, "revoked": id}))
            }
            Ok(_) => Err(format!("no hook with id {id}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn failure(message: String) -> Value {
    json!({"ok": false, "error": message})
}

/// A branch name git accepts (`git check-ref-format --branch`), not an option in disguise.
pub fn check_branch(branch: &str) -> Result<(), String> {
    let refused = || format!("`{branch}` is not a valid branch name");
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
        .map_err(|e| format!("cannot run git to check the branch name: {e}"))?;
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
            assert!(check_branch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_wire_format() {
        let r: AdminRequest =
            serde_json::from_str(r#"{"op":"create","project":"p","name":"n","branch":"b"}"#)
                .unwrap();
        assert_eq!(
            r,
            AdminRequest::Create {
                project: "p".into(),
                name: "n".into(),
                branch: "b".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&AdminRequest::List).unwrap(),
            r#"{"op":"list"}"#
        );
    }
}
