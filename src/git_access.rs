//! How git reaches a project's repository: the SSH key and host keys, the credential-store
//! file, and the secrets of the job that must never reach its log.
//!
//! [`GitAccess::prepare`] runs at each job start and reads the project's files again, so a
//! rotated key or token needs no reload, and a file gone meanwhile fails that job naming it.
//! Everything is handed to git through its environment, never on a command line:
//! - `ssh_key`: `GIT_SSH_COMMAND` runs `ssh -i KEY -o IdentitiesOnly=yes -o BatchMode=yes
//!   -F /dev/null` (no agent, no user config), host keys checked against `state_dir/known_hosts`
//!   with trust on first use (`accept-new`), or against the project's pinned `known_hosts`
//!   (`StrictHostKeyChecking=yes`). A key trusted on first use is named in the job log.
//! - `git_credentials`: the credential helpers are reset (`credential.helper=`) and one is set
//!   that answers `get` from the file with `git credential-store`. It ignores `store` and
//!   `erase`: git erases a credential after an authentication failure, which would empty the
//!   operator's file on a passing 401.
//!
//! After a failed git command, [`GitAccess::explain`] turns its last output lines into the
//! job's error: a changed or unknown host key says which file to fix, else git's last `fatal:`.

use crate::config::{Config, Project};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The name of the trust-on-first-use host key file in `state_dir`.
pub const KNOWN_HOSTS: &str = "known_hosts";
/// How many output lines of a command are kept to explain its failure.
const RECENT_LINES: usize = 40;
/// Longest line kept for an explanation; git's messages are far shorter.
const RECENT_LINE_BYTES: usize = 1024;

/// A project file that cannot be read at job start.
#[derive(Debug)]
pub struct AccessError {
    /// The config key naming the file (`ssh_key`, `env_file`, …).
    pub key: &'static str,
    pub path: PathBuf,
    pub error: String,
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot read the project's {} file {}: {}",
            self.key,
            self.path.display(),
            self.error
        )
    }
}

impl std::error::Error for AccessError {}

/// Host keys the job's ssh checks against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostKeys {
    /// ssh's own defaults (no `ssh_key` nor `known_hosts` configured).
    Default,
    /// `state_dir/known_hosts`, a new host's key added on first use.
    TrustOnFirstUse(PathBuf),
    /// The project's own file; an unknown or different key fails.
    Pinned(PathBuf),
}

/// What one job's git commands need to reach the repository.
#[derive(Debug)]
pub struct GitAccess {
    /// Variables added to every git command's environment.
    pub env: Vec<(String, String)>,
    /// Variables added to the build's environment (the env file's).
    pub build_env: Vec<(String, String)>,
    /// Values to mask in the job's log and error.
    pub secrets: Vec<String>,
    host_keys: HostKeys,
}

impl GitAccess {
    /// Reads the project's key, credential and env files afresh.
    pub fn prepare(config: &Config, project: &Project) -> Result<GitAccess, AccessError> {
        for (key, path) in project.secret_files() {
            if let Err(e) = std::fs::File::open(path) {
                return Err(AccessError {
                    key,
                    path: path.to_path_buf(),
                    error: e.to_string(),
                });
            }
        }
        let mut secrets: Vec<String> = crate::redact::url_password(&project.repo)
            .map(str::to_string)
            .into_iter()
            .collect();
        let build_env = match &project.env_file {
            Some(path) => crate::env_file::read(path).map_err(|e| AccessError {
                key: "env_file",
                path: path.clone(),
                error: match e {
                    crate::env_file::EnvFileError::Read { error, .. } => error.to_string(),
                    other => other.to_string(),
                },
            })?,
            None => Vec::new(),
        };
        secrets.extend(build_env.iter().map(|(_, v)| v.clone()));

        let host_keys = match (&project.known_hosts, &project.ssh_key) {
            (Some(pinned), _) => HostKeys::Pinned(pinned.clone()),
            (None, Some(_)) => HostKeys::TrustOnFirstUse(config.state_dir.join(KNOWN_HOSTS)),
            (None, None) => HostKeys::Default,
        };
        let mut env = vec![(
            "GIT_SSH_COMMAND".to_string(),
            ssh_command(project.ssh_key.as_deref(), &host_keys),
        )];
        if let Some(file) = &project.git_credentials {
            env.extend(git_config(&[
                ("credential.helper", String::new()),
                ("credential.helper", credential_helper(file)),
            ]));
        }
        Ok(GitAccess {
            env,
            build_env,
            secrets,
            host_keys,
        })
    }

    /// The git environment for a look at the repository that must not change what is
    /// trusted (`hooks create`'s branch check): a host key met for the first time is accepted
    /// into a copy of the trust-on-first-use file in `scratch`, so that the first job still
    /// trusts it and writes its fingerprint to its log.
    pub fn probe_env(&self, project: &Project, scratch: &Path) -> Vec<(String, String)> {
        let HostKeys::TrustOnFirstUse(file) = &self.host_keys else {
            return self.env.clone();
        };
        let copy = scratch.join(KNOWN_HOSTS);
        let _ = std::fs::copy(file, &copy);
        let ssh = ssh_command(project.ssh_key.as_deref(), &HostKeys::TrustOnFirstUse(copy));
        self.env
            .iter()
            .map(|(k, v)| match k.as_str() {
                "GIT_SSH_COMMAND" => (k.clone(), ssh.clone()),
                _ => (k.clone(), v.clone()),
            })
            .collect()
    }

    /// The trust-on-first-use file's lines now, to find what a fetch added.
    pub fn known_hosts_before(&self) -> HashSet<String> {
        match &self.host_keys {
            HostKeys::TrustOnFirstUse(file) => read_lines(file).into_iter().collect(),
            _ => HashSet::new(),
        }
    }

    /// Lines for the job log about host keys trusted since `before`: one per new key, with its
    /// fingerprint (`ssh-keygen -lf`).
    pub fn newly_trusted(&self, before: &HashSet<String>) -> Vec<String> {
        let HostKeys::TrustOnFirstUse(file) = &self.host_keys else {
            return Vec::new();
        };
        let added: Vec<String> = read_lines(file)
            .into_iter()
            .filter(|l| !l.trim().is_empty() && !before.contains(l))
            .collect();
        if added.is_empty() {
            return Vec::new();
        }
        let fingerprints = fingerprints(&added).unwrap_or_else(|e| vec![format!("({e})")]);
        fingerprints
            .into_iter()
            .map(|f| {
                format!(
                    "trusted a new SSH host key on first use, added to {}: {f}",
                    file.display()
                )
            })
            .collect()
    }

    /// Why a git command failed, from its last output lines (already masked).
    pub fn explain(&self, recent: &RecentLines) -> Option<String> {
        let changed = recent.contains("REMOTE HOST IDENTIFICATION HAS CHANGED");
        let unknown = recent.contains("you have requested strict checking")
            || recent.contains("Host key verification failed");
        match &self.host_keys {
            HostKeys::TrustOnFirstUse(file) if changed => Some(format!(
                "the SSH host key of the repository's server changed since it was first trusted \
                 ({}); if the change is expected, remove the host's line from that file \
                 (ssh-keygen -R {} -f {}) and trigger again",
                file.display(),
                recent.changed_host().as_deref().unwrap_or("HOST"),
                file.display()
            )),
            HostKeys::Pinned(file) if changed || unknown => Some(format!(
                "the SSH host key of the repository's server does not match the pinned \
                 known_hosts file {}; update that file if the change is expected",
                file.display()
            )),
            _ => recent.last_starting_with("fatal:"),
        }
    }
}

/// `GIT_CONFIG_COUNT`-style variables: the same as `git -c KEY=VALUE`, out of the command line.
fn git_config(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env = vec![("GIT_CONFIG_COUNT".to_string(), pairs.len().to_string())];
    for (i, (key, value)) in pairs.iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), key.to_string()));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), value.clone()));
    }
    env
}

/// A credential helper that answers `get` from a credential-store file and nothing else.
fn credential_helper(file: &Path) -> String {
    format!(
        "!f() {{ test \"$1\" = get || exit 0; exec git credential-store --file={} get; }}; f",
        shell_quote(&file.to_string_lossy())
    )
}

/// The ssh command line git runs, as `GIT_SSH_COMMAND` (a shell snippet).
fn ssh_command(key: Option<&Path>, host_keys: &HostKeys) -> String {
    let mut cmd = String::from("ssh -o BatchMode=yes");
    if let Some(key) = key {
        cmd.push_str(&format!(
            " -i {} -o IdentitiesOnly=yes -o IdentityAgent=none",
            shell_quote(&key.to_string_lossy())
        ));
    }
    let (file, strict) = match host_keys {
        HostKeys::Default => return cmd,
        HostKeys::TrustOnFirstUse(file) => (file, "accept-new"),
        HostKeys::Pinned(file) => (file, "yes"),
    };
    cmd.push_str(&format!(
        " -F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
         -o StrictHostKeyChecking={strict} -o HashKnownHosts=no",
        shell_quote(&file.to_string_lossy())
    ));
    cmd
}

/// `s` single-quoted for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn read_lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `ssh-keygen -lf -` over known_hosts lines: `BITS SHA256:… HOST (TYPE)` each.
fn fingerprints(lines: &[String]) -> std::io::Result<Vec<String>> {
    let mut child = Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{}\n", lines.join("\n")).as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The last lines a command wrote, bounded in count and length.
#[derive(Default, Debug)]
pub struct RecentLines(VecDeque<String>);

impl RecentLines {
    /// Records one line of output (a trailing newline is dropped).
    pub fn push(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = &line[..line.len().min(RECENT_LINE_BYTES)];
        if self.0.len() == RECENT_LINES {
            self.0.pop_front();
        }
        self.0.push_back(String::from_utf8_lossy(line).into_owned());
    }

    /// Forgets everything: a new command starts.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    fn contains(&self, needle: &str) -> bool {
        self.0.iter().any(|l| l.contains(needle))
    }

    /// The host ssh named in `Host key for HOST has changed …`, quoted for a shell.
    fn changed_host(&self) -> Option<String> {
        self.0.iter().find_map(|l| {
            let rest = l.split_once("Host key for ")?.1;
            let host = rest.split_once(" has changed")?.0;
            Some(shell_quote(host))
        })
    }

    fn last_starting_with(&self, prefix: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.trim_end().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssh_command_quotes_paths_and_names_its_host_keys() {
        let key = Path::new("/etc/deployhook/keys/it's site");
        let tofu = HostKeys::TrustOnFirstUse(PathBuf::from("/var/lib/deployhook/known_hosts"));
        assert_eq!(
            ssh_command(Some(key), &tofu),
            "ssh -o BatchMode=yes -i '/etc/deployhook/keys/it'\\''s site' -o IdentitiesOnly=yes \
             -o IdentityAgent=none -F /dev/null -o UserKnownHostsFile='/var/lib/deployhook/known_hosts' \
             -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=accept-new -o HashKnownHosts=no"
        );
        let pinned = HostKeys::Pinned(PathBuf::from("/k/known_hosts"));
        assert!(ssh_command(None, &pinned).contains("-o StrictHostKeyChecking=yes"));
        assert_eq!(
            ssh_command(None, &HostKeys::Default),
            "ssh -o BatchMode=yes"
        );
    }

    #[test]
    fn the_credential_helper_only_answers_get() {
        let helper = credential_helper(Path::new("/etc/deployhook/secrets/a b.cred"));
        assert!(helper.starts_with('!'));
        assert!(helper.contains("--file='/etc/deployhook/secrets/a b.cred' get"));
        for action in ["store", "erase"] {
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!("{} \"$@\"", &helper[1..]))
                .arg("helper")
                .arg(action)
                .stdin(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    #[test]
    fn a_failure_is_explained_by_git_s_last_fatal_line() {
        let access = GitAccess {
            env: Vec::new(),
            build_env: Vec::new(),
            secrets: Vec::new(),
            host_keys: HostKeys::Default,
        };
        let mut recent = RecentLines::default();
        recent.push(b"fatal: first\n");
        recent.push(b"fatal: repository 'http://u:***@h/x.git/' not found\r\n");
        recent.push(b"remote: trailing noise\n");
        assert_eq!(
            access.explain(&recent).as_deref(),
            Some("fatal: repository 'http://u:***@h/x.git/' not found")
        );
        recent.clear();
        assert_eq!(access.explain(&recent), None);
    }

    #[test]
    fn a_changed_host_key_names_the_file_to_fix() {
        let mut recent = RecentLines::default();
        recent.push(b"@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n");
        recent.push(
            b"Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.\n",
        );
        recent.push(b"Host key verification failed.\n");
        recent.push(b"fatal: Could not read from remote repository.\n");
        let access = |host_keys| GitAccess {
            env: Vec::new(),
            build_env: Vec::new(),
            secrets: Vec::new(),
            host_keys,
        };
        let tofu = access(HostKeys::TrustOnFirstUse("/s/known_hosts".into()));
        let why = tofu.explain(&recent).unwrap();
        assert!(
            why.contains("changed")
                && why.contains("ssh-keygen -R '[127.0.0.1]:2222' -f /s/known_hosts"),
            "{why}"
        );
        let pinned = access(HostKeys::Pinned("/k/hosts".into()));
        assert!(pinned
            .explain(&recent)
            .unwrap()
            .contains("pinned known_hosts file /k/hosts"));
    }

    #[test]
    fn recent_lines_are_bounded() {
        let mut recent = RecentLines::default();
        for i in 0..100 {
            recent.push(format!("line {i}\n").as_bytes());
        }
        recent.push(&vec![b'x'; 5000]);
        assert_eq!(recent.0.len(), RECENT_LINES);
        assert_eq!(recent.0.back().unwrap().len(), RECENT_LINE_BYTES);
        assert_eq!(recent.0.front().unwrap(), "line 61");
    }
}
