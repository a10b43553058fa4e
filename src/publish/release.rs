//! Copying a build's output folder into a new release folder. A file whose content and mode
//! equal the previous release's file at the same path becomes a hard link to it; every other
//! file is copied. Contents are compared byte for byte, sizes and modes first (builds write
//! every file anew, so modification times say nothing). Symbolic links are copied as links,
//! never followed; folders get their source's mode once everything inside them is written.
//!
//! Threads: the folder tree is made by the calling thread; files are then placed by it and a
//! few scoped helpers (`publish-copy-N`) taking the next file from a shared counter.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Bytes compared at a time.
const COMPARE_CHUNK: usize = 64 * 1024;
/// Threads placing files at most (the calling one included).
const MAX_THREADS: usize = 4;
/// Files a thread places between two looks at whether the job was stopped.
const STOP_CHECK_EVERY: usize = 64;
/// Permission bits a file or folder keeps (setuid, setgid and sticky included).
const MODE_BITS: u32 = 0o7777;

/// What one copy did, for the job log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// Files hard-linked to the previous release's (same content and mode).
    pub linked: usize,
    /// Files copied (new, changed, or with another mode).
    pub copied: usize,
    /// Bytes of the copied files.
    pub bytes_copied: u64,
    pub folders: usize,
    pub symlinks: usize,
    /// Entries that are neither files, folders nor links (sockets, FIFOs, devices): left out.
    pub skipped: usize,
}

impl CopyStats {
    fn add(&mut self, other: CopyStats) {
        self.linked += other.linked;
        self.copied += other.copied;
        self.bytes_copied += other.bytes_copied;
    }
}

/// Why a copy did not finish.
#[derive(Debug)]
pub enum CopyError {
    /// The job was stopped (superseded, canceled, daemon shutdown) while copying.
    Stopped,
    /// A file, link or folder could not be read or written.
    Io { path: PathBuf, cause: io::Error },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |cause| CopyError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The source tree, walked: folders (relative path and mode, parents before children) and
/// files to place.
#[derive(Default)]
struct Tree {
    folders: Vec<(PathBuf, u32)>,
    files: Vec<PathBuf>,
    symlinks: usize,
    skipped: usize,
}

/// Copies the tree at `src` to the new folder `dst` (which must not exist), hard-linking files
/// unchanged since `prev`, the release `current` names, and leaving out the entries of `src`
/// itself named in `leave_out`. `stopped` is asked now and then; once it says yes, the copy
/// ends with [`CopyError::Stopped`] (the caller removes `dst`).
pub(super) fn copy_release(
    src: &Path,
    dst: &Path,
    prev: Option<&Path>,
    leave_out: &[&str],
    stopped: &(dyn Fn() -> bool + Sync),
) -> Result<CopyStats, CopyError> {
    let root_mode = fs::metadata(src).map_err(at(src))?.mode() & MODE_BITS;
    new_folder(dst).map_err(at(dst))?;
    let tree = walk(src, dst, leave_out)?;
    let mut stats = place_files(src, dst, prev, &tree.files, stopped)?;
    for (rel, mode) in tree.folders.iter().rev() {
        let path = dst.join(rel);
        fs::set_permissions(&path, Permissions::from_mode(*mode)).map_err(at(&path))?;
    }
    fs::set_permissions(dst, Permissions::from_mode(root_mode)).map_err(at(dst))?;
    stats.folders = tree.folders.len();
    stats.symlinks = tree.symlinks;
    stats.skipped = tree.skipped;
    Ok(stats)
}

/// A folder only its owner may enter and write until its real mode is set, last.
fn new_folder(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(path)
}

/// Makes the folders and links of `src` under `dst`, and lists its files.
fn walk(src: &Path, dst: &Path, leave_out: &[&str]) -> Result<Tree, CopyError> {
    let mut tree = Tree::default();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let from = src.join(&rel);
        for entry in fs::read_dir(&from).map_err(at(&from))? {
            let entry = entry.map_err(at(&from))?;
            let top = rel.as_os_str().is_empty();
            if top && leave_out.iter().any(|name| entry.file_name() == *name) {
                continue;
            }
            let child = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(at(&entry.path()))?;
            if kind.is_dir() {
                let mode = entry.metadata().map_err(at(&entry.path()))?.mode() & MODE_BITS;
                let made = dst.join(&child);
                new_folder(&made).map_err(at(&made))?;
                tree.folders.push((child.clone(), mode));
                pending.push(child);
            } else if kind.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(at(&entry.path()))?;
                let made = dst.join(&child);
                symlink(&target, &made).map_err(at(&made))?;
                tree.symlinks += 1;
            } else if kind.is_file() {
                tree.files.push(child);
            } else {
                tree.skipped += 1;
            }
        }
    }
    Ok(tree)
}

/// Places every file, on up to [`MAX_THREADS`] threads; the first error stops them all.
fn place_files(
    src: &Path,
    dst: &Path,
    prev: Option<&Path>,
    files: &[PathBuf],
    stopped: &(dyn Fn() -> bool + Sync),
) -> Result<CopyStats, CopyError> {
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let work = || -> Result<CopyStats, CopyError> {
        let mut stats = CopyStats::default();
        let mut buffers = (vec![0u8; COMPARE_CHUNK], vec![0u8; COMPARE_CHUNK]);
        let mut done = 0;
        loop {
            if abort.load(Relaxed) {
                return Ok(stats);
            }
            done += 1;
            if done % STOP_CHECK_EVERY == 0 && stopped() {
                abort.store(true, Relaxed);
                return Err(CopyError::Stopped);
            }
            let Some(rel) = files.get(next.fetch_add(1, Relaxed)) else {
                return Ok(stats);
            };
            match place(src, dst, prev, rel, &mut buffers) {
                Ok(Placed::Linked) => stats.linked += 1,
                Ok(Placed::Copied(bytes)) => {
                    stats.copied += 1;
                    stats.bytes_copied += bytes;
                }
                Err(e) => {
                    abort.store(true, Relaxed);
                    return Err(e);
                }
            }
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(files.len().div_ceil(STOP_CHECK_EVERY).max(1));
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("publish-copy-{i}"))
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        // The calling thread works too, so a refused spawn only makes the copy slower.
        let mut total = work()?;
        for helper in helpers {
            let stats = helper.join().unwrap_or_else(|_| {
                Err(CopyError::Io {
                    path: dst.to_path_buf(),
                    cause: io::Error::other("a copy thread panicked"),
                })
            })?;
            total.add(stats);
        }
        if stopped() {
            return Err(CopyError::Stopped);
        }
        Ok(total)
    })
}

enum Placed {
    Linked,
    Copied(u64),
}

/// Links or copies one file (`rel`, relative to the roots).
fn place(
    src: &Path,
    dst: &Path,
    prev: Option<&Path>,
    rel: &Path,
    buffers: &mut (Vec<u8>, Vec<u8>),
) -> Result<Placed, CopyError> {
    let from = src.join(rel);
    let to = dst.join(rel);
    if let Some(old) = prev.map(|p| p.join(rel)) {
        let new_meta = fs::symlink_metadata(&from).map_err(at(&from))?;
        let alike = fs::symlink_metadata(&old).is_ok_and(|m| {
            m.is_file()
                && m.len() == new_meta.len()
                && m.mode() & MODE_BITS == new_meta.mode() & MODE_BITS
        });
        // An unreadable previous file, or one at its link limit, is simply copied anew.
        if alike
            && same_content(&from, &old, buffers).map_err(at(&from))?
            && fs::hard_link(&old, &to).is_ok()
        {
            return Ok(Placed::Linked);
        }
    }
    // std's copy gives the new file the source's permission bits.
    let bytes = fs::copy(&from, &to).map_err(at(&to))?;
    Ok(Placed::Copied(bytes))
}

/// Whether two files hold the same bytes. An error opening or reading the old file counts as
/// a difference (it is copied anew); one on the new file is the caller's error.
fn same_content(new: &Path, old: &Path, buffers: &mut (Vec<u8>, Vec<u8>)) -> io::Result<bool> {
    let mut a = File::open(new)?;
    let Ok(mut b) = File::open(old) else {
        return Ok(false);
    };
    let (ba, bb) = buffers;
    loop {
        let n = read_full(&mut a, ba)?;
        let Ok(m) = read_full(&mut b, bb) else {
            return Ok(false);
        };
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n < ba.len() {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::Dir;

    fn write(root: &Path, rel: &str, text: &str, mode: u32) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
    }

    fn never() -> bool {
        false
    }

    #[test]
    fn unchanged_files_are_links_and_everything_else_a_copy() {
        let guard = Dir::new();
        let dir = guard.path();
        let (src, one, two) = (dir.join("src"), dir.join("one"), dir.join("two"));
        write(&src, "same.txt", "same", 0o644);
        write(&src, "sub/changed.txt", "old", 0o644);
        write(&src, "moded.sh", "#!/bin/sh", 0o644);
        symlink("same.txt", src.join("link")).unwrap();
        symlink("/etc/passwd", src.join("outside")).unwrap();
        fs::set_permissions(src.join("sub"), Permissions::from_mode(0o750)).unwrap();
        let first = copy_release(&src, &one, None, &[], &never).unwrap();
        assert_eq!((first.copied, first.linked, first.symlinks), (3, 0, 2));

        write(&src, "sub/changed.txt", "new", 0o644);
        write(&src, "moded.sh", "#!/bin/sh", 0o755);
        write(&src, "added.txt", "added", 0o600);
        let second = copy_release(&src, &two, Some(&one), &["sub"], &never).unwrap();
        assert_eq!((second.copied, second.linked), (2, 1), "{second:?}");
        assert!(!two.join("sub").exists(), "left out");
        let two = dir.join("three");
        let second = copy_release(&src, &two, Some(&one), &[], &never).unwrap();
        assert_eq!((second.copied, second.linked), (3, 1), "{second:?}");
        let ino = |p: PathBuf| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(one.join("same.txt")), ino(two.join("same.txt")));
        assert_ne!(ino(one.join("moded.sh")), ino(two.join("moded.sh")));
        assert_eq!(
            fs::read_to_string(two.join("sub/changed.txt")).unwrap(),
            "new"
        );
        assert_eq!(
            fs::read_to_string(one.join("sub/changed.txt")).unwrap(),
            "old"
        );
        let mode = |p: PathBuf| fs::symlink_metadata(p).unwrap().mode() & MODE_BITS;
        assert_eq!(mode(two.join("moded.sh")), 0o755);
        assert_eq!(mode(two.join("added.txt")), 0o600);
        assert_eq!(mode(two.join("sub")), 0o750);
        assert_eq!(
            fs::read_link(two.join("outside")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(fs::symlink_metadata(two.join("link")).unwrap().is_symlink());
    }

    #[test]
    fn a_stop_ends_the_copy() {
        let guard = Dir::new();
        let dir = guard.path();
        let src = dir.join("src");
        for i in 0..200 {
            write(&src, &format!("f{i}"), "x", 0o644);
        }
        let err = copy_release(&src, &dir.join("dst"), None, &[], &|| true).unwrap_err();
        assert!(matches!(err, CopyError::Stopped), "{err:?}");
    }

    #[test]
    fn long_files_are_compared_to_the_end() {
        let guard = Dir::new();
        let dir = guard.path();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let mut text = vec![b'x'; COMPARE_CHUNK * 2 + 10];
        fs::write(&a, &text).unwrap();
        *text.last_mut().unwrap() = b'y';
        fs::write(&b, &text).unwrap();
        let mut buffers = (vec![0; COMPARE_CHUNK], vec![0; COMPARE_CHUNK]);
        assert!(!same_content(&a, &b, &mut buffers).unwrap());
        assert!(same_content(&a, &a, &mut buffers).unwrap());
    }
}
