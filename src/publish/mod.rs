//! Publishing a build's output as an immutable release, switching what is live, and rolling
//! back. A target folder `to` (the project's `publish.to`) holds:
//!
//! - `releases/{job}/`: one complete release per published job; job ids sort by creation time,
//!   so name order is job order. A release is never changed once it has its name;
//! - `current`: a symlink to `releases/{job}`, switched in one step (a new link renamed over it);
//! - `releases/.{job}.partial/`: a release being copied, never pointed at; what a crash or a stop
//!   left is retired by the next publish;
//! - `.removed-…/`: trees retired (releases past `keep`, leftovers, a release taken back),
//!   renamed in one step and deleted by the janitor after a READY publish ([`settle`]): deleting
//!   a big tree takes seconds, which neither the lock nor a build may wait for;
//! - `.deployhook.lock`: locked (flock) by whoever names, switches or retires releases, a build
//!   thread publishing or the admin thread rolling back, so those steps of publishes and
//!   rollbacks never interleave, not even across processes. The copy into a job's own partial
//!   folder runs outside the lock, so a rollback never waits for a copy.
//!
//! Invariants: once `current` exists it names a complete release, at every instant; pruning
//! never removes the release `current` names; a stopped job never switches `current`.
//!
//! - `release.rs`: the copy into a new release, hard-linking files unchanged since the live one;
//! - `current.rs`: reading and switching `current`, the kept releases, a rollback's choice;
//! - `prune.rs`: retiring releases beyond `keep` and leftovers of interrupted publishes;
//! - `error.rs`: why a publish or a rollback failed, and what the operator can do about it.

mod current;
mod error;
mod prune;
mod release;

pub use current::{live, releases};
pub use error::{PublishError, RollbackError, Step};
pub use release::CopyStats;

use crate::config::Publish;
use crate::words::plural;
use release::CopyError;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

const CURRENT: &str = "current";
const RELEASES: &str = "releases";
const LOCK_FILE: &str = ".deployhook.lock";

/// The job being published, as the publish sees it: whether it has been stopped, and a way to
/// switch `current` that no stop can overtake.
pub trait Gate: Sync {
    /// Whether the job has been stopped (superseded, canceled, daemon shutdown).
    fn stopped(&self) -> bool;
    /// Runs `switch` unless the job has been stopped; a stop asked for meanwhile waits until it
    /// is done. `None` when the job was stopped.
    fn unless_stopped(&self, switch: &mut dyn FnMut() -> io::Result<()>) -> Option<io::Result<()>>;
}

/// A publish that switched `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub job_id: String,
    /// The release `current` named before, if any.
    pub previous: Option<String>,
}

/// The exclusive lock on a target folder, held until dropped. Makes the folders first.
fn lock(to: &Path) -> io::Result<File> {
    make_folders(to)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(to.join(LOCK_FILE))?;
    file.lock()?;
    Ok(file)
}

/// Makes `to` and the folders above it that are missing (mode 0755) and `to/releases` (`to`'s
/// mode). The modes are set outright, not left to the daemon's umask (0077 under the systemd
/// unit), so that the web server can enter the folders: `to`'s mode is the operator's choice.
fn make_folders(to: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !to.is_dir() {
        let missing: Vec<PathBuf> = to
            .ancestors()
            .take_while(|dir| !dir.exists())
            .map(Path::to_path_buf)
            .collect();
        fs::create_dir_all(to)?;
        for dir in missing.iter().rev() {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        }
    }
    let releases = to.join(RELEASES);
    if !releases.is_dir() {
        fs::create_dir(&releases)?;
        let mode = fs::metadata(to)?.permissions().mode() & 0o7777;
        fs::set_permissions(&releases, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Publishes `checkout/spec.dir` as the release of `job_id` and switches `current` to it,
/// telling the job log each step's outcome through `say`; then removes releases past `keep`.
pub fn publish(
    job_id: &str,
    checkout: &Path,
    spec: &Publish,
    gate: &dyn Gate,
    say: &mut dyn FnMut(&str),
) -> Result<Published, PublishError> {
    let to = spec.to.as_path();
    let io_error = |step: Step, path: &Path| {
        let path = path.to_path_buf();
        move |cause| PublishError::Io {
            step,
            path,
            to: to.to_path_buf(),
            cause,
        }
    };
    let src = output_folder(checkout, &spec.dir, to)?;
    make_folders(to).map_err(io_error(Step::Prepare, to))?;
    let releases_dir = to.join(RELEASES);
    let partial = releases_dir.join(format!(".{job_id}.partial"));
    prune::retire(to, &partial).map_err(io_error(Step::Prepare, &partial))?;
    // The copy runs without the lock, so a rollback meanwhile is not held up by it. Linking to
    // the release live when it began stays right whatever happens next: contents are compared.
    let linked_to = live(to)
        .map_err(io_error(Step::Prepare, &to.join(CURRENT)))?
        .map(|l| l.job_id);
    let prev_dir = linked_to.as_ref().map(|p| releases_dir.join(p));
    // A site that is the repository itself is published without its git folder.
    let whole_checkout = fs::canonicalize(checkout).is_ok_and(|root| root == src);
    let leave_out: &[&str] = if whole_checkout { &[".git"] } else { &[] };
    if whole_checkout {
        say("publish: the output is the whole checkout; its .git folder is left out");
    }
    let copied = release::copy_release(&src, &partial, prev_dir.as_deref(), leave_out, &|| {
        gate.stopped()
    });
    let stats = match copied {
        Ok(stats) => stats,
        Err(e) => {
            let _ = prune::retire(to, &partial);
            return Err(match e {
                CopyError::Stopped => PublishError::Stopped,
                CopyError::Io { path, cause } => io_error(Step::Copy, &path)(cause),
            });
        }
    };
    say(&describe(&stats, linked_to.as_deref()));
    let synced = File::open(&partial).and_then(|f| crate::sys::sync_file_system(&f));
    synced.map_err(io_error(Step::Copy, &partial))?;

    let _lock = lock(to).map_err(io_error(Step::Prepare, to))?;
    let cleared = prune::leftovers(to, &partial).map_err(io_error(Step::Prepare, to))?;
    if cleared > 0 {
        say(&format!(
            "publish: retired {cleared} leftovers of an interrupted publish"
        ));
    }
    // What the switch replaces, read under the lock (a rollback may have moved it).
    let previous = live(to)
        .map_err(io_error(Step::Prepare, &to.join(CURRENT)))?
        .map(|l| l.job_id);

    let fin = releases_dir.join(job_id);
    // A release of this job may be there from an attempt a crash interrupted. If it is live, it
    // is swapped with the new copy in one step (a reader of `current` always finds a whole
    // release); the old copy then has the partial name, and is retired below.
    let replace_live = previous.as_deref() == Some(job_id);
    if replace_live {
        say(concat!(
            "publish: an interrupted attempt of this job made it live; ",
            "its release is replaced in one step"
        ));
    } else {
        if fs::symlink_metadata(&fin).is_ok() {
            prune::retire(to, &fin).map_err(io_error(Step::Switch, &fin))?;
            say(&format!(
                "publish: retired the release an interrupted attempt of {job_id} left"
            ));
        }
        // Whole and durable under its final name, and not live until the switch.
        fs::rename(&partial, &fin)
            .and_then(|()| crate::sys::sync_dir(&releases_dir))
            .map_err(io_error(Step::Switch, &fin))?;
    }
    // Only what a reader of `current` sees happens behind the gate, so no stop overtakes it and
    // a stop waits no longer than two renames.
    let mut switch = || {
        if replace_live {
            crate::sys::rename_exchange(&partial, &fin)?;
        }
        current::point(to, job_id)
    };
    let failed = match gate.unless_stopped(&mut switch) {
        Some(Ok(())) => None,
        Some(Err(cause)) => Some(io_error(Step::Switch, &to.join(CURRENT))(cause)),
        None => Some(PublishError::Stopped),
    };
    if let Some(e) = failed {
        // The new release never went live: retire it (a live release being replaced stays).
        let _ = prune::retire(to, if replace_live { &partial } else { &fin });
        return Err(e);
    }
    if replace_live {
        // The copy the live release had, swapped out.
        let _ = prune::retire(to, &partial);
    }
    let synced = crate::sys::sync_dir(to).and_then(|()| match replace_live {
        true => crate::sys::sync_dir(&releases_dir),
        false => Ok(()),
    });
    if let Err(e) = synced {
        say(&format!(
            "publish: current is switched, but syncing {} failed ({e}): a power cut now \
             could undo the switch",
            to.display()
        ));
    }
    say(&format!("publish: current -> releases/{job_id}"));
    Ok(Published {
        job_id: job_id.to_string(),
        previous,
    })
}

/// The output folder of the build: `checkout/dir`, which must be a folder inside the checkout.
fn output_folder(checkout: &Path, dir: &Path, to: &Path) -> Result<PathBuf, PublishError> {
    let src = checkout.join(dir);
    let real = match fs::canonicalize(&src) {
        Ok(real) => real,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PublishError::MissingOutput {
                dir: dir.to_path_buf(),
            })
        }
        Err(cause) => {
            return Err(PublishError::Io {
                step: Step::Copy,
                path: src,
                to: to.to_path_buf(),
                cause,
            })
        }
    };
    let bad = |why| PublishError::BadOutput {
        dir: dir.to_path_buf(),
        why,
    };
    let inside = fs::canonicalize(checkout).is_ok_and(|root| real.starts_with(root));
    if !inside {
        return Err(bad("leads out of the checkout through a symbolic link"));
    }
    if !real.is_dir() {
        return Err(bad("is not a folder"));
    }
    Ok(real)
}

/// The job log's line about a copy.
fn describe(stats: &CopyStats, previous: Option<&str>) -> String {
    let linked = match previous {
        Some(release) => format!(
            "{} hard-linked to release {release} (unchanged)",
            plural(stats.linked, "file")
        ),
        None => "no earlier release to link to".to_string(),
    };
    let mut line = format!(
        "publish: {linked}, {} copied ({} bytes), {}, {}",
        plural(stats.copied, "file"),
        stats.bytes_copied,
        plural(stats.folders, "folder"),
        plural(stats.symlinks, "symbolic link"),
    );
    if stats.skipped > 0 {
        line.push_str(&format!(
            "; {} left out (sockets, FIFOs, devices)",
            plural(stats.skipped, "special file")
        ));
    }
    line
}

/// Once the job's READY is in the journal: retires the releases past `keep`, oldest first,
/// never the live one. Not before READY, so that [`undo`] still finds the release it would go
/// back to. Each is renamed out of `releases/` at once; `delete` is handed the folders to
/// delete (in the background: a big release takes seconds, which no build should wait for).
/// Returns the line for the job log, if any.
pub fn settle(spec: &Publish, delete: &mut dyn FnMut(PathBuf)) -> Option<String> {
    let to = spec.to.as_path();
    let retired = lock(to).and_then(|_lock| {
        let ids = prune::beyond_keep(to, spec.keep)?;
        // Everything retired so far, by this publish or earlier ones, goes to the janitor.
        Ok((ids, prune::retired(to)?))
    });
    match retired {
        Ok((ids, trees)) => {
            trees.into_iter().for_each(&mut *delete);
            if ids.is_empty() {
                return None;
            }
            Some(format!(
                "publish: removing {} (publish.keep = {}): {}",
                plural(ids.len(), "old release"),
                spec.keep,
                ids.join(", ")
            ))
        }
        Err(e) => Some(format!(
            "publish: could not remove old releases ({e}); they are removed after the next publish"
        )),
    }
}

/// Puts `current` back where it was before `published` switched it, when the journal refused
/// the job's READY (it had been canceled meanwhile): a job that did not end READY is not left
/// live, and its release is retired (renamed to a partial copy, removed by the next publish),
/// so that no rollback can go to it. Goes to the release live before, else the newest one
/// older than the job; with none, `current` stays. Returns what it did, for the job log.
pub fn undo(spec: &Publish, published: &Published) -> io::Result<String> {
    let to = spec.to.as_path();
    let _lock = lock(to)?;
    let job = published.job_id.as_str();
    if live(to)?.map(|l| l.job_id).as_deref() != Some(job) {
        return Ok("current had moved on already".into());
    }
    let kept = releases(to)?;
    let back = published
        .previous
        .as_deref()
        .filter(|p| *p != job && kept.iter().any(|k| k == p))
        .or_else(|| kept.iter().map(String::as_str).find(|k| *k < job));
    let Some(back) = back else {
        return Ok("no earlier release to go back to; current stays".into());
    };
    current::switch(to, back)?;
    // A reader that opened the release a moment ago keeps what it opened through the rename.
    prune::retire(to, &to.join(RELEASES).join(job))?;
    Ok(format!(
        "current -> releases/{back} again; the job's release is retired"
    ))
}

/// A rollback that switched `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The release live before, if any.
    pub from: Option<String>,
    /// The release live now.
    pub to: String,
}

/// Points `current` at `job`'s release, or without one at the newest kept release older than
/// the live one. Only releases of jobs that ended READY (`ready` says which) are candidates: a
/// crash can leave the release of a job that never did.
pub fn rollback(
    spec: &Publish,
    job: Option<&str>,
    ready: &dyn Fn(&str) -> bool,
) -> Result<RolledBack, RollbackError> {
    let to = spec.to.as_path();
    let io_error = |path: PathBuf| move |cause| RollbackError::Io { path, cause };
    // Nothing was ever published here: refuse without making the folders.
    if !to.join(RELEASES).is_dir() {
        return Err(RollbackError::NothingLive { kept: Vec::new() });
    }
    let _lock = lock(to).map_err(io_error(to.to_path_buf()))?;
    let from = live(to)
        .map_err(io_error(to.join(CURRENT)))?
        .map(|l| l.job_id);
    let target = current::rollback_choice(to, job, ready)?;
    current::switch(to, &target).map_err(io_error(to.join(CURRENT)))?;
    Ok(RolledBack { from, to: target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::Dir;

    /// A job nobody stops.
    struct Running;

    impl Gate for Running {
        fn stopped(&self) -> bool {
            false
        }
        fn unless_stopped(
            &self,
            switch: &mut dyn FnMut() -> io::Result<()>,
        ) -> Option<io::Result<()>> {
            Some(switch())
        }
    }

    /// A job stopped just before the switch.
    struct StoppedAtSwitch;

    impl Gate for StoppedAtSwitch {
        fn stopped(&self) -> bool {
            false
        }
        fn unless_stopped(&self, _: &mut dyn FnMut() -> io::Result<()>) -> Option<io::Result<()>> {
            None
        }
    }

    /// A folder with `checkout/public`, and a publish spec to `www` in it.
    fn scratch() -> (Dir, Publish) {
        let dir = Dir::new();
        fs::create_dir_all(dir.path().join("checkout/public")).unwrap();
        let spec = Publish {
            dir: "public".into(),
            to: dir.path().join("www"),
            keep: 5,
        };
        (dir, spec)
    }

    const J1: &str = "0000001aaaaaaaaaaaaa";
    const J2: &str = "0000002bbbbbbbbbbbbb";

    #[test]
    fn a_job_published_again_replaces_its_live_release_in_one_step() {
        let (guard, spec) = scratch();
        let dir = guard.path();
        let checkout = dir.join("checkout");
        let page = |text: &str| fs::write(checkout.join("public/index.html"), text).unwrap();
        page("first attempt");
        let quiet = &mut |_: &str| {};
        publish(J1, &checkout, &spec, &Running, quiet).unwrap();
        // The same job again, as after a crash between the switch and READY.
        page("second attempt");
        let again = publish(J1, &checkout, &spec, &Running, quiet).unwrap();
        assert_eq!(again.previous.as_deref(), Some(J1));
        let live_page = fs::read_to_string(spec.to.join("current/index.html")).unwrap();
        assert_eq!(live_page, "second attempt");
        // The first attempt's copy is retired, whole, for the janitor.
        let retired = prune::retired(&spec.to).unwrap();
        assert_eq!(retired.len(), 1, "{retired:?}");
        assert_eq!(
            fs::read_to_string(retired[0].join("index.html")).unwrap(),
            "first attempt"
        );
        // A stop before the switch leaves current alone, and no partial copy behind.
        let stopped = publish(J2, &checkout, &spec, &StoppedAtSwitch, quiet);
        assert!(matches!(stopped, Err(PublishError::Stopped)), "{stopped:?}");
        assert_eq!(live(&spec.to).unwrap().unwrap().job_id, J1);
        assert_eq!(releases(&spec.to).unwrap(), [J1]);
        assert_eq!(
            prune::retired(&spec.to).unwrap().len(),
            2,
            "J2's copy retired too"
        );
        // The job's release is put back only while it is live, to the one before it.
        publish(J2, &checkout, &spec, &Running, quiet).unwrap();
        let published = Published {
            job_id: J2.into(),
            previous: Some(J1.into()),
        };
        undo(&spec, &published).unwrap();
        assert_eq!(live(&spec.to).unwrap().unwrap().job_id, J1);
        assert_eq!(releases(&spec.to).unwrap(), [J1], "J2's release is retired");
    }

    #[test]
    fn pruning_waits_for_ready_so_a_canceled_publish_finds_its_way_back() {
        let (guard, mut spec) = scratch();
        spec.keep = 1;
        let checkout = guard.path().join("checkout");
        let quiet = &mut |_: &str| {};
        publish(J1, &checkout, &spec, &Running, quiet).unwrap();
        let mut deleted = Vec::new();
        let mut delete = |path: PathBuf| deleted.push(path);
        assert_eq!(
            settle(&spec, &mut delete),
            None,
            "one release, keep = 1: nothing to remove"
        );
        let j2 = publish(J2, &checkout, &spec, &Running, quiet).unwrap();
        // J2 is live and J1 still kept: J2's READY is not in the journal yet.
        assert_eq!(releases(&spec.to).unwrap(), [J2, J1]);
        // The journal canceled J2 instead: current goes back to J1, and J2 can never be
        // rolled back to.
        let said = undo(&spec, &j2).unwrap();
        assert!(said.contains("retired"), "{said}");
        assert_eq!(live(&spec.to).unwrap().unwrap().job_id, J1);
        assert_eq!(releases(&spec.to).unwrap(), [J1]);
        // Had J2 ended READY, settling would have removed J1.
        let j3 = "0000003ccccccccccccc";
        publish(j3, &checkout, &spec, &Running, quiet).unwrap();
        let line = settle(&spec, &mut delete).unwrap();
        assert!(line.contains("removing 1 old release "), "{line}");
        assert_eq!(releases(&spec.to).unwrap(), [j3]);
        // J2's retired release and J1, each handed over for deletion, nothing deleted here.
        assert_eq!(deleted.len(), 2, "{deleted:?}");
        assert!(deleted.iter().all(|p| p.is_dir()));
    }

    /// A job whose copy halts at its first look at the stop switch until let go.
    struct Halting {
        halted: std::sync::atomic::AtomicBool,
        at_halt: std::sync::Barrier,
        let_go: std::sync::Barrier,
    }

    impl Gate for Halting {
        fn stopped(&self) -> bool {
            if !self.halted.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.at_halt.wait();
                self.let_go.wait();
            }
            false
        }
        fn unless_stopped(
            &self,
            switch: &mut dyn FnMut() -> io::Result<()>,
        ) -> Option<io::Result<()>> {
            Some(switch())
        }
    }

    #[test]
    fn a_rollback_does_not_wait_for_a_copy() {
        let (guard, spec) = scratch();
        let dir = guard.path();
        let checkout = dir.join("checkout");
        fs::write(checkout.join("public/index.html"), "site").unwrap();
        let quiet = &mut |_: &str| {};
        publish(J1, &checkout, &spec, &Running, quiet).unwrap();
        publish(J2, &checkout, &spec, &Running, quiet).unwrap();
        let gate = Halting {
            halted: false.into(),
            at_halt: std::sync::Barrier::new(2),
            let_go: std::sync::Barrier::new(2),
        };
        let j3 = "0000003ccccccccccccc";
        std::thread::scope(|scope| {
            let publishing = scope.spawn(|| publish(j3, &checkout, &spec, &gate, &mut |_| {}));
            gate.at_halt.wait();
            // The copy of j3 is under way; the rollback goes through at once. (Were it to wait
            // for the copy, it would answer only once the copy is let go: a failure, no hang.)
            let (tx, rx) = std::sync::mpsc::channel();
            let spec = &spec;
            scope.spawn(move || tx.send(rollback(spec, None, &|_| true)));
            let back = rx.recv_timeout(std::time::Duration::from_secs(30));
            gate.let_go.wait();
            let back = back.expect("the rollback waited for the copy").unwrap();
            assert_eq!((back.from.as_deref(), back.to.as_str()), (Some(J2), J1));
            let published = publishing.join().unwrap().unwrap();
            assert_eq!(published.previous.as_deref(), Some(J1));
        });
        assert_eq!(live(&spec.to).unwrap().unwrap().job_id, j3);
    }

    #[test]
    fn a_whole_checkout_is_published_without_its_git_folder() {
        let (guard, mut spec) = scratch();
        let dir = guard.path();
        let checkout = dir.join("checkout");
        fs::create_dir_all(checkout.join(".git/objects")).unwrap();
        fs::write(checkout.join("index.html"), "site").unwrap();
        spec.dir = ".".into();
        publish(J1, &checkout, &spec, &Running, &mut |_| {}).unwrap();
        let release = spec.to.join(RELEASES).join(J1);
        assert!(release.join("index.html").is_file());
        assert!(release.join("public").is_dir());
        assert!(!release.join(".git").exists());
    }

    #[test]
    fn a_missing_output_folder_is_named() {
        let (guard, mut spec) = scratch();
        let dir = guard.path();
        spec.dir = "dist".into();
        let err = publish(J1, &dir.join("checkout"), &spec, &Running, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("no folder `dist`"), "{err}");
        assert!(live(&spec.to).unwrap().is_none());
    }
}
