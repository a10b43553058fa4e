//! The `current` symlink and the list of releases: what is live, since when, which releases are
//! kept, switching `current` atomically, and the choice a rollback makes.
//!
//! `current` holds a relative target, `releases/{job}`, so the folder can be moved or mounted
//! elsewhere. It is switched by making a new link under a temporary name and renaming it over
//! `current` (rename(2) replaces the name in one step), then syncing the folder.

use super::{RollbackError, CURRENT, RELEASES};
use crate::secret::is_job_id;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::UNIX_EPOCH;

/// The release `current` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub job_id: String,
    /// When `current` was switched to it (Unix ms): the link's own modification time.
    pub since: u64,
}

/// What `current` names now, if it is a link to a release that is there (a release removed
/// by hand leaves nothing live).
pub fn live(to: &Path) -> io::Result<Option<Live>> {
    let link = to.join(CURRENT);
    let target = match fs::read_link(&link) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(job_id) = release_of(&target) else {
        return Ok(None);
    };
    if !to.join(&target).is_dir() {
        return Ok(None);
    }
    let since = fs::symlink_metadata(&link)?
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Some(Live { job_id, since }))
}

/// The job id in a link target `releases/{job}`.
fn release_of(target: &Path) -> Option<String> {
    let rest = target.strip_prefix(RELEASES).ok()?;
    let name = rest.to_str()?;
    is_job_id(name).then(|| name.to_string())
}

/// The releases kept in `to`, newest first (job ids sort by creation time). Partial copies
/// (dot names) are not releases.
pub fn releases(to: &Path) -> io::Result<Vec<String>> {
    let dir = to.join(RELEASES);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str().filter(|n| is_job_id(n)) {
            if entry.file_type()?.is_dir() {
                out.push(name.to_string());
            }
        }
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    Ok(out)
}

/// Points `current` at `releases/{job_id}` in one step and makes the change durable.
pub(super) fn switch(to: &Path, job_id: &str) -> io::Result<()> {
    point(to, job_id)?;
    crate::sys::sync_dir(to)
}

/// Points `current` at `releases/{job_id}` in one step: a new link under a temporary name,
/// renamed over `current`. Durable once `to` is synced.
pub(super) fn point(to: &Path, job_id: &str) -> io::Result<()> {
    let temp = to.join(format!(".{CURRENT}.{job_id}.tmp"));
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    symlink(Path::new(RELEASES).join(job_id), &temp)?;
    fs::rename(&temp, to.join(CURRENT)).inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })
}

/// The release a rollback goes to: `job`'s, or without one the newest kept release older than
/// the live one; of the releases of jobs that ended READY (`ready`), never the live one.
pub(super) fn rollback_choice(
    to: &Path,
    job: Option<&str>,
    ready: &dyn Fn(&str) -> bool,
) -> Result<String, RollbackError> {
    let all = releases(to).map_err(|cause| RollbackError::Io {
        path: to.join(RELEASES),
        cause,
    })?;
    let live = live(to).map_err(|cause| RollbackError::Io {
        path: to.join(CURRENT),
        cause,
    })?;
    let live_id = live.as_ref().map(|l| l.job_id.as_str());
    let (kept, not_ready): (Vec<String>, Vec<String>) = all
        .into_iter()
        .partition(|k| Some(k.as_str()) == live_id || ready(k));
    if let Some(job) = job {
        let job = job.to_string();
        return if Some(job.as_str()) == live_id {
            Err(RollbackError::AlreadyLive { job })
        } else if kept.contains(&job) {
            Ok(job)
        } else if not_ready.contains(&job) {
            Err(RollbackError::NotReady { job, kept })
        } else {
            Err(RollbackError::ReleaseGone { job, kept })
        };
    }
    let Some(live) = live else {
        // Nothing live (a release removed by hand): the newest kept one is the way back.
        return match kept.first() {
            Some(newest) => Ok(newest.clone()),
            None => Err(RollbackError::NothingLive { kept }),
        };
    };
    match kept.iter().find(|k| **k < live.job_id) {
        Some(older) => Ok(older.clone()),
        None => Err(RollbackError::NoOlderRelease {
            live: live.job_id,
            kept,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::Dir;

    #[test]
    fn a_switch_replaces_the_link_and_live_reads_it_back() {
        let guard = Dir::new();
        let to = guard.path().to_path_buf();
        let (a, b) = ("0000001aaaaaaaaaaaaa", "0000002bbbbbbbbbbbbb");
        for job in [a, b] {
            fs::create_dir_all(to.join(RELEASES).join(job)).unwrap();
        }
        fs::create_dir_all(to.join(RELEASES).join(format!(".{b}.partial"))).unwrap();
        assert_eq!(live(&to).unwrap(), None);
        switch(&to, a).unwrap();
        assert_eq!(live(&to).unwrap().unwrap().job_id, a);
        switch(&to, b).unwrap();
        assert_eq!(
            fs::read_link(to.join(CURRENT)).unwrap(),
            Path::new("releases").join(b)
        );
        assert_eq!(releases(&to).unwrap(), [b, a]);
        assert_eq!(rollback_choice(&to, None, &|_| true).unwrap(), a);
        switch(&to, a).unwrap();
        assert!(matches!(
            rollback_choice(&to, None, &|_| true),
            Err(RollbackError::NoOlderRelease { .. })
        ));
        assert!(matches!(
            rollback_choice(&to, Some("0000003ccccccccccccc"), &|_| true),
            Err(RollbackError::ReleaseGone { .. })
        ));
        // The live release is no place to go; a job that did not end READY neither.
        assert!(matches!(
            rollback_choice(&to, Some(a), &|_| true),
            Err(RollbackError::AlreadyLive { .. })
        ));
        switch(&to, b).unwrap();
        let only_b_ready = |job: &str| job == b;
        assert!(matches!(
            rollback_choice(&to, Some(a), &only_b_ready),
            Err(RollbackError::NotReady { .. })
        ));
        assert!(matches!(
            rollback_choice(&to, None, &only_b_ready),
            Err(RollbackError::NoOlderRelease { .. })
        ));
        // A live release removed by hand: nothing is live, and a rollback goes to the newest
        // kept one.
        let c = "0000003ccccccccccccc";
        fs::create_dir_all(to.join(RELEASES).join(c)).unwrap();
        switch(&to, c).unwrap();
        fs::remove_dir(to.join(RELEASES).join(c)).unwrap();
        assert_eq!(live(&to).unwrap(), None);
        assert_eq!(rollback_choice(&to, None, &|_| true).unwrap(), b);
        let leftovers = fs::read_dir(&to)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
