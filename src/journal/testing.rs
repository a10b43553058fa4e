//! What the journal's unit tests share: a temporary directory, a journal with its writer
//! running, and the ops they submit.

use super::{Hook, Journal, Op, Outcome};
use crate::secret::hash_secret;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A temporary directory, removed when dropped.
pub struct Dir(PathBuf);

impl Dir {
    pub fn new() -> Dir {
        let p = std::env::temp_dir().join(format!(
            "deployhook-journal-{}-{}",
            std::process::id(),
            crate::secret::random_base62(8).unwrap()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A journal in a new directory, its writer running.
pub fn journal() -> (Dir, Journal) {
    let dir = Dir::new();
    let (journal, writer) = Journal::open(&dir.path().join("j.redb")).unwrap();
    std::thread::spawn(move || writer.run(|_| {}, |_| {}));
    (dir, journal)
}

/// A journal whose batches go to the write-ahead log only (no checkpoint for an hour).
pub fn logged_journal(dir: &Path) -> Journal {
    let (j, mut writer) = Journal::open(&dir.join("j.redb")).unwrap();
    writer.set_checkpoints(u64::MAX, Duration::from_secs(3600));
    std::thread::spawn(move || writer.run(|_| {}, |_| {}));
    j
}

pub fn hook(j: &Journal, id: &str, secret: &str) {
    assert_eq!(j.submit(hook_op(id, secret)).unwrap(), Outcome::HookCreated);
}

pub fn trigger(j: &Journal, secret: &str, job: &str) -> Outcome {
    j.submit(trigger_op(secret, job)).unwrap()
}

pub fn trigger_op(secret: &str, job: &str) -> Op {
    Op::Trigger {
        secret: hash_secret(secret),
        project: "site".into(),
        job_id: job.into(),
        now: 5,
        not_before: None,
    }
}

pub fn hook_op(id: &str, secret: &str) -> Op {
    Op::CreateHook {
        hook: Hook {
            id: id.into(),
            name: "n".into(),
            project: "site".into(),
            branch: "main".into(),
            created_at: 1,
            last_triggered_at: None,
        },
        secret: hash_secret(secret),
    }
}

/// The ids of the open (PENDING or BUILDING) jobs.
pub fn open_ids(j: &Journal) -> Vec<String> {
    j.open_jobs()
        .unwrap()
        .into_iter()
        .map(|r| r.job.id)
        .collect()
}
