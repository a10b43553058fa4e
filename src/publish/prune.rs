//! Removing what a target folder no longer needs: releases beyond `keep` (oldest first, in job
//! order, never the one `current` names) and what an interrupted publish left behind (partial
//! copies, temporary links). Called with the target's lock held.

use super::{current, CURRENT, RELEASES};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Removes partial release copies and temporary links a crash or a stop left, but `ours`, the
/// copy being published; returns how many it found.
pub(super) fn leftovers(to: &Path, ours: &Path) -> io::Result<usize> {
    let mut found = 0;
    let releases = to.join(RELEASES);
    for entry in fs::read_dir(&releases)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".partial") && entry.path() != ours {
            remove_any(&entry.path())?;
            found += 1;
        }
    }
    let temp_link = format!(".{CURRENT}.");
    for entry in fs::read_dir(to)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&temp_link) && name.ends_with(".tmp") {
            fs::remove_file(entry.path())?;
            found += 1;
        } else if name.starts_with(RETIRED) {
            // Retired, and not deleted before a crash or a stop.
            remove_any(&entry.path())?;
            found += 1;
        }
    }
    Ok(found)
}

/// The prefix of a release retired by [`beyond_keep`], in `to`, until it is deleted.
pub(super) const RETIRED: &str = ".removed-";

/// Retires the releases past the newest `keep`, oldest first, sparing the one `current` names
/// wherever it is: each is renamed to `to/.removed-{job}` (one step: it is no release any
/// more), for the caller to delete off the build's path. Returns the job ids and the paths.
pub(super) fn beyond_keep(to: &Path, keep: usize) -> io::Result<Vec<(String, PathBuf)>> {
    let live = current::live(to)?.map(|l| l.job_id);
    let mut retired = Vec::new();
    for job in current::releases(to)?.into_iter().skip(keep).rev() {
        if live.as_deref() == Some(job.as_str()) {
            continue;
        }
        let gone = to.join(format!("{RETIRED}{job}"));
        remove_any(&gone)?;
        fs::rename(to.join(RELEASES).join(&job), &gone)?;
        retired.push((job, gone));
    }
    Ok(retired)
}

/// Removes a folder tree, first giving back write access to folders a build made read-only
/// (their mode is copied into the release), or a single file.
pub(super) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_up(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

/// Gives the owner write and search rights on every folder of a tree.
fn open_up(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode() | 0o700;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    for entry in fs::read_dir(path)? {
        open_up(&entry?.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::Dir;

    #[test]
    fn keeps_the_newest_and_the_live_one() {
        let guard = Dir::new();
        let to = guard.path().to_path_buf();
        let jobs: Vec<String> = (1..=6).map(|i| format!("000000{i}aaaaaaaaaaaaa")).collect();
        for job in &jobs {
            fs::create_dir_all(to.join(RELEASES).join(job)).unwrap();
        }
        fs::create_dir_all(to.join(RELEASES).join(".x.partial/sub")).unwrap();
        std::os::unix::fs::symlink("releases/x", to.join(".current.x.tmp")).unwrap();
        current::switch(&to, &jobs[0]).unwrap();
        let ours = to.join(RELEASES).join(".y.partial");
        fs::create_dir_all(&ours).unwrap();
        assert_eq!(leftovers(&to, &ours).unwrap(), 2);
        assert!(ours.is_dir());
        fs::remove_dir(&ours).unwrap();
        let retired = beyond_keep(&to, 2).unwrap();
        let ids: Vec<&str> = retired.iter().map(|(job, _)| job.as_str()).collect();
        assert_eq!(ids, jobs[1..4]);
        assert!(
            retired.iter().all(|(_, path)| path.is_dir()),
            "renamed, not yet deleted"
        );
        assert_eq!(
            leftovers(&to, &ours).unwrap(),
            3,
            "what a crash left is removed"
        );
        assert_eq!(
            current::releases(&to).unwrap(),
            [jobs[5].clone(), jobs[4].clone(), jobs[0].clone()]
        );
    }
}
