//! Why a publish or a rollback failed. A publish error's text ends with what to do about it
//! (write access under systemd, a full disk, something in the way); a rollback refusal lists
//! the releases that are kept.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The step of a publish that failed, for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Making or locking the target folder, or clearing leftovers in it.
    Prepare,
    /// Copying the output into the new release.
    Copy,
    /// Naming the release and switching `current`.
    Switch,
}

/// Why a publish failed; `current` is untouched in every case.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The build left no `publish.dir` folder in the checkout.
    MissingOutput { dir: PathBuf },
    /// `publish.dir` is not a folder, or leads out of the checkout through a symbolic link.
    BadOutput { dir: PathBuf, why: &'static str },
    /// The job was stopped during the publish; it has no verdict of its own.
    Stopped,
    /// The file system refused a step.
    Io {
        step: Step,
        path: PathBuf,
        to: PathBuf,
        cause: io::Error,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::MissingOutput { dir } => write!(
                f,
                "publish failed: the build left no folder `{}` in the checkout (publish.dir); \
                 make the build write its output there, or fix publish.dir",
                dir.display()
            ),
            PublishError::BadOutput { dir, why } => {
                write!(f, "publish failed: `{}` (publish.dir) {why}", dir.display())
            }
            PublishError::Stopped => write!(f, "publish stopped: the job was stopped"),
            PublishError::Io {
                step,
                path,
                to,
                cause,
            } => {
                let doing = match step {
                    Step::Prepare => "cannot prepare",
                    Step::Copy => "cannot copy",
                    Step::Switch => "cannot switch `current` at",
                };
                write!(f, "publish failed: {doing} {}: {cause}", path.display())?;
                write!(f, "; {}", advice(to, cause))
            }
        }
    }
}

impl std::error::Error for PublishError {}

/// What to do about a file-system error in the target folder.
fn advice(to: &Path, cause: &io::Error) -> String {
    let to = to.display();
    match cause.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => format!(
            "the daemon's user needs write access to {to}: give it the folder (chown -R \
             deployhook: {to}) and, under systemd, add ReadWritePaths={to} in a drop-in \
             (systemctl edit deployhook; see deploy-target.conf.example)"
        ),
        Some(libc::ENOSPC | libc::EDQUOT) => {
            format!("the disk holding {to} is full: free space there, or lower publish.keep")
        }
        Some(libc::ENOTDIR | libc::EEXIST | libc::EISDIR | libc::EINVAL) => format!(
            "something that is not deployhook's is in the way in {to}: `current` must be a \
             symbolic link and `releases` a folder; move the other thing away"
        ),
        _ => "current is unchanged; the next successful build publishes again".to_string(),
    }
}

/// Why a rollback was refused; `current` is unchanged.
#[derive(Debug)]
#[non_exhaustive]
pub enum RollbackError {
    /// Nothing has been published yet (or `current` is not a release link).
    NothingLive { kept: Vec<String> },
    /// The live release is the oldest one kept.
    NoOlderRelease { live: String, kept: Vec<String> },
    /// The job's release was pruned (or never published).
    ReleaseGone { job: String, kept: Vec<String> },
    /// The job's release is there, but the job did not end READY (a crash came between its
    /// publish and its READY, and it was canceled afterwards).
    NotReady { job: String, kept: Vec<String> },
    /// The job's release is the live one already.
    AlreadyLive { job: String },
    /// The target folder could not be read, locked or switched.
    Io { path: PathBuf, cause: io::Error },
}

fn listing(kept: &[String]) -> String {
    if kept.is_empty() {
        "none".to_string()
    } else {
        kept.join(", ")
    }
}

impl fmt::Display for RollbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackError::NothingLive { kept } => write!(
                f,
                "nothing is live yet: no release has been published (kept releases: {})",
                listing(kept)
            ),
            RollbackError::NoOlderRelease { live, kept } => write!(
                f,
                "no release older than the live one ({live}) is kept; kept releases, newest \
                 first: {}; name one to go to it (rollback PROJECT JOB)",
                listing(kept)
            ),
            RollbackError::ReleaseGone { job, kept } => write!(
                f,
                "job {job} has no release here: it was removed (publish.keep) or never \
                 published; kept releases, newest first: {}",
                listing(kept)
            ),
            RollbackError::NotReady { job, kept } => write!(
                f,
                "job {job} did not end READY, so its release is not one to go back to; kept \
                 releases of READY jobs, newest first: {}",
                listing(kept)
            ),
            RollbackError::AlreadyLive { job } => {
                write!(
                    f,
                    "the release of job {job} is already the live one; nothing to do"
                )
            }
            RollbackError::Io { path, cause } => {
                write!(f, "cannot roll back at {}: {cause}", path.display())
            }
        }
    }
}

impl std::error::Error for RollbackError {}
