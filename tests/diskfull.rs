//! A full disk under the journal: triggers are refused with a JSON 503, nothing acknowledged is
//! lost, and once space returns triggers are accepted again without a restart.
//! Needs root (it mounts a 4 MiB tmpfs); elsewhere it says it was skipped. Under CI, which runs
//! as root, a tmpfs that cannot be mounted fails the test instead.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(at.to_path_buf()))
}

/// Fills the filesystem at `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", path.display()))
        .stderr(std::process::Stdio::null())
        .status();
    path
}

#[test]
fn a_full_disk_refuses_triggers_with_503_and_recovers_without_a_restart() {
    if !is_root() {
        skip("mounting a small tmpfs needs root");
        return;
    }
    let dir = TempDir::new("diskfull");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let Some(_mount) = mount_tmpfs(&dir.path().join("state"), "4m") else {
        skip_unless_ci("tmpfs could not be mounted here");
        return;
    };
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "true")],
    );
    let d = Daemon::start(&config);
    let (_, path) = d.create_hook("site", "main");
    let filler = fill(&d.state_dir());

    let mut acked = Vec::new();
    let mut refused = None;
    for _ in 0..5000 {
        let r = http(d.public, "POST", &path, &[], b"");
        match r.status {
            201 => acked.push(r.json()["job"]["id"].as_str().unwrap().to_string()),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("the journal never ran out of space");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "unavailable");
    assert_eq!(refused.header("Retry-After"), Some("5"));
    assert_eq!(http(d.public, "POST", &path, &[], b"").status, 503);

    std::fs::remove_file(&filler).unwrap();
    let mut recovered = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = http(d.public, "POST", &path, &[], b"");
            if r.status == 201 {
                recovered = Some(r.json()["job"]["id"].as_str().unwrap().to_string());
            }
            r.status == 201
        }),
        "triggers still refused after space returned:\n{}",
        d.log_text()
    );
    acked.push(recovered.unwrap());
    for id in &acked {
        assert_ne!(
            d.job(id)["state"],
            serde_json::Value::Null,
            "acknowledged job {id} lost"
        );
    }
    let newest = acked.last().unwrap();
    d.wait_state(newest, "READY", Duration::from_secs(30));
}
