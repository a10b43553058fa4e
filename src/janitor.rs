//! The janitor thread: removes finished build directories, stale build trees of a previous run,
//! pruned job logs and retired releases, off the critical path of builds and triggers.
//!
//! Deleting a tree while a checkout writes another slows that checkout several times over on
//! some file systems, so the janitor holds off while any [`hold_off`] guard lives (checkouts
//! take one), pausing every 64 entries to look.

use crossbeam_channel::Receiver;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Guards alive now: while above 0, the janitor deletes nothing.
static HOLDING_OFF: AtomicUsize = AtomicUsize::new(0);

/// While the returned guard lives, the janitor removes nothing.
pub fn hold_off() -> HoldOff {
    HOLDING_OFF.fetch_add(1, Relaxed);
    HoldOff(())
}

/// Keeps the janitor waiting until dropped; see [`hold_off`].
pub struct HoldOff(());

impl Drop for HoldOff {
    fn drop(&mut self) {
        HOLDING_OFF.fetch_sub(1, Relaxed);
    }
}

fn wait_until_clear() {
    while HOLDING_OFF.load(Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a tree entry by entry, holding off whenever asked; links are not followed. A folder
/// a build made read-only (a Go module cache, a copied release) is given back its owner's
/// rights first.
fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700))?;
        }
        for (i, entry) in std::fs::read_dir(path)?.enumerate() {
            if i % 64 == 0 {
                wait_until_clear();
            }
            remove_tree(&entry?.path())?;
        }
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// The janitor thread: removes each path it is sent, until every sender is gone.
pub fn run(paths: Receiver<PathBuf>) {
    for path in paths {
        wait_until_clear();
        if let Err(e) = remove_tree(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}
