//! What a target folder no longer needs: releases beyond `keep` (oldest first, in job order,
//! never the one `current` names), what an interrupted publish left behind (partial copies,
//! temporary links), a release replaced or taken back. Everything is *retired* here: renamed in
//! one step to `to/.removed-…`, out of every reader's and rollback's sight. Deleting a retired
//! tree can take seconds, so it is never done here (under the target's lock, on a build thread
//! or the admin thread): [`retired`] lists them for the caller to hand to the janitor.

use super::{current, CURRENT, RELEASES};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The name prefix of a retired tree in `to`.
const RETIRED: &str = ".removed-";

/// Renames `path` (in `to`) to a fresh `to/.removed-…` name; a path already gone is fine.
pub(super) fn retire(to: &Path, path: &Path) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map_or_else(
        || "tree".into(),
        |n| n.to_string_lossy().trim_start_matches('.').to_string(),
    );
    let fresh = format!(
        "{RETIRED}{name}-{}-{}",
        crate::clock::now_ms(),
        NEXT.fetch_add(1, Relaxed)
    );
    match fs::rename(path, to.join(fresh)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Retires the partial copies and temporary links a crash or a stop left, but `ours`, the copy
/// being published; returns how many it found.
pub(super) fn leftovers(to: &Path, ours: &Path) -> io::Result<usize> {
    let mut found = 0;
    let releases = to.join(RELEASES);
    for entry in fs::read_dir(&releases)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') && name.ends_with(".partial") && path != ours {
            retire(to, &path)?;
            found += 1;
        }
    }
    let temp_link = format!(".{CURRENT}.");
    for entry in fs::read_dir(to)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&temp_link) && name.ends_with(".tmp") {
            fs::remove_file(&path)?;
            found += 1;
        }
    }
    Ok(found)
}

/// Retires the releases past the newest `keep`, oldest first, sparing the one `current` names
/// wherever it is. Returns their job ids.
pub(super) fn beyond_keep(to: &Path, keep: usize) -> io::Result<Vec<String>> {
    let live = current::live(to)?.map(|l| l.job_id);
    let mut gone = Vec::new();
    for job in current::releases(to)?.into_iter().skip(keep).rev() {
        if live.as_deref() != Some(job.as_str()) {
            retire(to, &to.join(RELEASES).join(&job))?;
            gone.push(job);
        }
    }
    Ok(gone)
}

/// The retired trees in `to`, to be deleted.
pub(super) fn retired(to: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(to)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(RETIRED))
        {
            out.push(path);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::Dir;

    #[test]
    fn keeps_the_newest_and_the_live_one_and_deletes_nothing_itself() {
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
        assert_eq!(beyond_keep(&to, 2).unwrap(), jobs[1..4]);
        assert_eq!(
            current::releases(&to).unwrap(),
            [jobs[5].clone(), jobs[4].clone(), jobs[0].clone()]
        );
        // The partial copy and three releases wait, renamed, for the janitor.
        let retired = retired(&to).unwrap();
        assert_eq!(retired.len(), 4, "{retired:?}");
        assert!(retired.iter().all(|p| p.is_dir()));
        retire(&to, &to.join("no-such-thing")).unwrap();
    }
}
