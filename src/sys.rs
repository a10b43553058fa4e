//! The few operating-system calls std does not offer: signalling process groups, the file
//! creation mask, waking a blocked `accept`, the open-file limit, group lookup, a directory's
//! inode flags, swapping two paths and syncing a file system (publishing), and taking over the
//! sockets systemd passes (read by the `sd-notify` crate).
//!
//! This is the only module with `unsafe`; each block says why it is sound.
//!
//! Hand-written over `libc` rather than through a wrapper crate such as `nix`: each call is a
//! few lines, and a wrapper would bring a large dependency for them. The group lookup grows
//! its buffer on `ERANGE` as `nix`'s does, so a group with many members is found, not
//! reported missing.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Signals a build's process group may receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Sends `signal` to every process in group `pgid`. A group that no longer exists is not an
/// error: the goal (nothing left running) is already met.
pub fn signal_group(pgid: i32, signal: Signal) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal a group id below 2",
        ));
    }
    // SAFETY: killpg takes plain integers and touches no memory of ours; pgid > 1 rules out
    // signalling our own group (0) or every process we may signal (-1 / 1).
    let rc = unsafe { libc::killpg(pgid, signal.number()) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Sends `signal` to one process; a process that is gone already is not an error.
pub fn signal_process(pid: i32, signal: Signal) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill takes plain integers; pid > 1 addresses exactly one process.
    unsafe {
        libc::kill(pid, signal.number());
    }
}

/// Whether a live process (not a zombie) is still in group `pgid`. Zombies are dead already,
/// and the orphans among them wait for whichever init adopted them to reap them (in some
/// containers never): counting them would hold a stop for the whole grace period.
pub fn group_exists(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::killpg(pgid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .any(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the command name (which may contain spaces): state, ppid, pgrp, …
            let mut rest = stat
                .rsplit_once(')')
                .map_or("", |(_, r)| r)
                .split_whitespace();
            let state = rest.next();
            let pgrp = rest.nth(1).and_then(|g| g.parse::<i32>().ok());
            pgrp == Some(pgid) && state != Some("Z")
        })
}

/// Runs `f` with the file creation mask set to `mask`, so that a socket is born with the right
/// mode instead of being narrowed after the fact. Call it before other threads create files:
/// the mask is process-wide.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps an integer in the process's file-system context.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let out = f();
    // SAFETY: as above; this restores the previous mask.
    unsafe {
        libc::umask(old);
    }
    out
}

/// Wakes a thread blocked in `accept` on `listener` and makes the socket refuse new
/// connections; the descriptor itself is closed when its owner drops it.
pub fn shutdown_listener(listener: &impl AsRawFd) {
    // SAFETY: shutdown on a descriptor we own; on a listening socket Linux wakes accept(2).
    unsafe {
        libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Makes a child about to be spawned die with the thread that spawns it: before `exec`, the
/// child asks the kernel for SIGKILL when its parent thread ends, then exits at once if the
/// parent (`std::process::id()` of the spawner, read before the fork) is already gone. A child
/// forked just before the daemon is SIGKILLed can then not run on after a restart's orphan
/// scan. Only async-signal-safe calls run between fork and exec.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // getppid and _exit, which are async-signal-safe and allocate nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(127);
            }
            Ok(())
        });
    }
}

/// Gives a child about to be spawned the file mode creation mask `mask`; the daemon's own
/// stays as it is.
pub fn set_child_umask(cmd: &mut std::process::Command, mask: u32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls umask,
    // which is async-signal-safe, allocates nothing and cannot fail.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
}

/// Raises the soft open-file limit to the hard one, so that the connection limits, not the
/// default 1024 descriptors, decide how many clients are served.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives on our stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        unsafe {
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `FS_TOPDIR_FL` from linux/fs.h: "top of a directory hierarchy".
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Marks `dir` as the top of directory hierarchies, where the file system supports it (ext2/3/4),
/// so that each directory made in it starts in a block group of its own choosing (the Orlov
/// allocator) instead of next to its siblings. Returns whether the flag is set.
///
/// Why: a build tree is removed (5,000 files, say) shortly before the next one is checked out
/// in the same folder. ext4 without a journal will not reuse an inode it freed seconds ago, and
/// scans past each of them while allocating, so creating the next tree next to the last one
/// costs seconds of CPU in the kernel (measured 1.4 s against 0.08 s for 5,000 files).
pub fn spread_new_directories(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir) else {
        return false;
    };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int (the kernel's type for it, whatever the ioctl
    // number's declared size) into `flags`, which lives on our stack; the fd is open.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return false;
    }
    if flags & FS_TOPDIR_FL != 0 {
        return true;
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`; the fd is open.
    unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) == 0 }
}

/// Swaps two paths in one step (renameat2 with RENAME_EXCHANGE): each name holds the other's
/// file or folder afterwards, and at no moment is either name missing. Used to replace a live
/// release in place, so that a reader of `current` always finds a whole one.
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    let a = path_cstring(a)?;
    let b = path_cstring(b)?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call; AT_FDCWD makes them
    // relative to the working folder, as rename(2) would.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// fsync(2) of a folder: the names it holds (a rename into it) survive a power cut.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes every dirty page of the file system holding `file` to disk (syncfs(2)): one call
/// instead of an fsync per file for a release of thousands of files.
pub fn sync_file_system(file: &std::fs::File) -> io::Result<()> {
    // SAFETY: syncfs takes an open descriptor, which `file` keeps open during the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// The first buffer a group lookup gets: what glibc's `sysconf(_SC_GETGR_R_SIZE_MAX)`
/// suggests, enough for groups of a few hundred members.
const GROUP_BUFFER_START: usize = 16 * 1024;
/// The largest buffer a group lookup grows to (tens of thousands of members).
const GROUP_BUFFER_MAX: usize = 16 * 1024 * 1024;

/// The numeric id of a group name, from the system's group database: `Ok(None)` when there is
/// no such group. A group whose entry (its member list above all) does not fit the first
/// buffer is looked up again with a larger one, not reported missing.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    group_id_from(name, GROUP_BUFFER_START)
}

fn group_id_from(name: &str, first_buffer: usize) -> io::Result<Option<u32>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None); // a name with a NUL byte names no group
    };
    let mut grp: libc::group = unsafe_zeroed_group();
    grow_until_fits(first_buffer, |buf| {
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: getgrnam_r writes only into `grp` and `buf`, whose sizes we pass, and sets
        // `result` to null or to `&mut grp`; `cname` is NUL-terminated.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 => Ok((!result.is_null()).then_some(grp.gr_gid)),
            // getgrnam_r(3): these too mean "no such group" on some systems.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Ok(None),
            errno => Err(errno),
        }
    })
}

/// Calls `lookup` with a buffer that doubles, from `first` bytes up to [`GROUP_BUFFER_MAX`],
/// for as long as it answers `ERANGE` (the entry does not fit); any other errno is an error.
fn grow_until_fits<T>(
    first: usize,
    mut lookup: impl FnMut(&mut [libc::c_char]) -> Result<T, libc::c_int>,
) -> io::Result<T> {
    let mut len = first.clamp(1, GROUP_BUFFER_MAX);
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        match lookup(&mut buf) {
            Ok(found) => return Ok(found),
            Err(libc::ERANGE) if len < GROUP_BUFFER_MAX => len = (len * 2).min(GROUP_BUFFER_MAX),
            Err(libc::ERANGE) => {
                return Err(io::Error::other(format!(
                    "the group entry is larger than {GROUP_BUFFER_MAX} bytes"
                )))
            }
            Err(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

fn unsafe_zeroed_group() -> libc::group {
    // SAFETY: libc::group is a plain C struct of pointers and integers; all-zero is a valid
    // (empty) value that getgrnam_r overwrites.
    unsafe { std::mem::zeroed() }
}

/// Changes the group of `path` (owner unchanged).
pub fn chown_group(path: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// Listening sockets passed by systemd (socket activation): `LISTEN_FDS` descriptors from 3 on,
/// if `LISTEN_PID` names this process, read by the `sd-notify` crate (which also marks them
/// close-on-exec and checks that each is open). The variables are removed so no child sees
/// them; the crate's own `listen_fds_and_unset_env` is `unsafe` for that reason, so call this
/// before any other thread starts (the environment is process-wide).
pub fn take_listen_fds() -> Vec<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let fds = sd_notify::listen_fds();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    match fds {
        Ok(fds) => fds
            // SAFETY: systemd passes these descriptors to this process (LISTEN_PID matched),
            // sd-notify checked that each is open, and nothing else in the process owns them;
            // each is taken exactly once.
            .map(|fd| unsafe { std::net::TcpListener::from_raw_fd(fd) })
            .collect(),
        Err(e) => {
            log::warn!("ignoring the sockets passed by systemd: {e}");
            Vec::new()
        }
    }
}

/// Every process (other than this one) whose environment sets `name`, with the value. Builds
/// carry their job id in the environment, so this finds the processes of a build even when
/// they left its process group (`setsid`, double fork) or outlived a crashed daemon.
pub fn processes_with_env_var(name: &str) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let prefix = format!("{name}=");
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let value = env
                .split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(prefix.as_bytes()))?;
            Some((pid, String::from_utf8_lossy(value).into_owned()))
        })
        .collect()
}

/// Process ids of every process whose environment holds exactly `name=value`.
pub fn processes_with_env(name: &str, value: &str) -> Vec<i32> {
    processes_with_env_var(name)
        .into_iter()
        .filter(|(_, v)| v == value)
        .map(|(pid, _)| pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// Says on stderr (written directly: libtest captures only `eprintln!`) and in the file
    /// `$DEPLOYHOOK_SKIPPED` names that the calling test checked nothing, as `tests/common`'s
    /// `skip_unless_ci` does; under `CI` it fails instead.
    fn skip_unless_ci(reason: &str) {
        use std::io::Write;
        let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(!in_ci, "this test must run in CI, but: {reason}");
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_string();
        let line = format!("SKIPPED deployhook::{test}: {reason}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        if let Some(path) = std::env::var_os("DEPLOYHOOK_SKIPPED") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("the skip file opens");
            file.write_all(line.as_bytes())
                .expect("the skip is recorded");
        }
    }

    #[test]
    fn the_top_directory_flag_is_set_where_the_file_system_has_it() {
        let dir = std::env::temp_dir().join(format!("deployhook-topdir-{}", std::process::id()));
        let probe = dir.join("probe");
        std::fs::create_dir_all(&probe).unwrap();
        let set = spread_new_directories(&dir);
        // e2fsprogs judges independently: whether the file system can hold the flag at all
        // (tmpfs reads inode flags but refuses this one), and whether it is set.
        let chattr = Command::new("chattr").arg("+T").arg(&probe).output();
        let lsattr = Command::new("lsattr").arg("-d").arg(&dir).output();
        std::fs::remove_dir_all(&dir).unwrap();
        let (Ok(chattr), Ok(lsattr)) = (chattr, lsattr) else {
            skip_unless_ci("no chattr or lsattr (e2fsprogs) to compare with (.ci/run installs it)");
            return;
        };
        assert_eq!(
            set,
            chattr.status.success(),
            "chattr: {}",
            String::from_utf8_lossy(&chattr.stderr)
        );
        if set {
            let attrs = String::from_utf8_lossy(&lsattr.stdout);
            let attrs = attrs.split_whitespace().next().unwrap_or("");
            assert!(attrs.contains('T'), "{attrs}");
        }
    }

    #[test]
    fn a_group_is_signalled_whole_and_then_gone() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        assert!(group_exists(pgid));
        signal_group(pgid, Signal::Kill).unwrap();
        child.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while group_exists(pgid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!group_exists(pgid));
        // Signalling a vanished group is fine.
        signal_group(pgid, Signal::Term).unwrap();
        assert!(signal_group(0, Signal::Term).is_err());
    }

    #[test]
    fn processes_are_found_by_environment() {
        let mut child = Command::new("sleep")
            .arg("30")
            .env("DEPLOYHOOK_TEST_MARK", std::process::id().to_string())
            .spawn()
            .unwrap();
        // spawn returns once the child is inside execve; its new environment shows in /proc only
        // when execve has finished setting up the stack, a moment later.
        let mark = std::process::id().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = processes_with_env("DEPLOYHOOK_TEST_MARK", &mark);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = processes_with_env("DEPLOYHOOK_TEST_MARK", &mark);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found, vec![child.id() as i32]);
    }

    #[test]
    fn root_group_exists() {
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("no-such-group-deployhook").unwrap(), None);
        assert_eq!(group_id("nul\0inside").unwrap(), None);
    }

    #[test]
    fn a_group_that_does_not_fit_the_first_buffer_is_looked_up_again() {
        // A one-byte buffer cannot hold even root's entry: getgrnam_r says ERANGE until the
        // buffer has grown enough, as it would for a group with thousands of members.
        assert_eq!(group_id_from("root", 1).unwrap(), Some(0));
        assert_eq!(group_id_from("no-such-group-deployhook", 1).unwrap(), None);
    }

    #[test]
    fn the_lookup_buffer_doubles_on_erange_and_stops_at_the_cap() {
        let mut sizes = Vec::new();
        let found = grow_until_fits(100, |buf| {
            sizes.push(buf.len());
            if buf.len() < 1000 {
                Err(libc::ERANGE)
            } else {
                Ok(buf.len())
            }
        });
        assert_eq!(found.unwrap(), 1600);
        assert_eq!(sizes, [100, 200, 400, 800, 1600]);

        let mut calls = 0;
        let never = grow_until_fits(GROUP_BUFFER_MAX / 2, |_| -> Result<(), _> {
            calls += 1;
            Err(libc::ERANGE)
        });
        assert!(never.is_err());
        assert_eq!(calls, 2);

        let other = grow_until_fits(100, |_| -> Result<(), _> { Err(libc::EIO) });
        assert_eq!(other.unwrap_err().raw_os_error(), Some(libc::EIO));
    }
}
