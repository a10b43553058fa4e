//! Builds: fresh checkout of the branch head, recorded commit, the build environment, logs,
//! failures, timeouts, and directories removed whatever the outcome.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn builds_empty(d: &Daemon) -> bool {
    wait_until(Duration::from_secs(10), || {
        std::fs::read_dir(d.state_dir().join("builds"))
            .map(|mut e| e.next().is_none())
            .unwrap_or(false)
    })
}

#[test]
fn a_job_builds_the_branch_head_and_records_the_commit() {
    let s = setup(
        "bready",
        "cat version.txt && test \"$(cat version.txt)\" = two",
        &[("version.txt", "one")],
        "",
    );
    let head = s.repo.commit(&[("version.txt", "two")], "second");
    let id = s.daemon.trigger(&s.path);
    let job = s.daemon.wait_state(&id, "READY", T);
    assert_eq!(job["commit"], head.as_str());
    assert_eq!(job["exitCode"], 0);
    assert_eq!(job["error"], serde_json::Value::Null);
    assert!(job["startedAt"].as_u64().unwrap() >= job["createdAt"].as_u64().unwrap());
    assert!(job["finishedAt"].as_u64().unwrap() >= job["startedAt"].as_u64().unwrap());
    assert_eq!(keys(&job), JOB_KEYS);
    let log = s.daemon.job_log(&id);
    for needle in [
        "[deployhook] $ git clone",
        &format!("[deployhook] commit {head}"),
        "[deployhook] $ sh -c",
        "\ntwo",
        "[deployhook] build exited with status 0",
        "[deployhook] READY after",
    ] {
        assert!(log.contains(needle), "{needle:?} not in log:\n{log}");
    }
    assert!(builds_empty(&s.daemon));
}

#[test]
fn the_build_sees_only_the_documented_environment() {
    let dir = TempDir::new("benv");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let mut p = ProjectSpec::new(
        "site",
        &repo.path,
        "env | sort > \"$OUT\"; pwd >> \"$OUT\"; ls -a >> \"$OUT\"",
    );
    let out = dir.path().join("env.txt");
    p.env = vec![
        ("OUT".into(), out.to_string_lossy().into()),
        ("NODE_ENV".into(), "production".into()),
    ];
    let config = write_config(dir.path(), "", &[p]);
    let d = Daemon::start_with_env(
        &config,
        &[
            ("LEAKY_TOKEN", "s3cr3t"),
            ("NOTIFY_SOCKET", "@nowhere"),
            ("LISTEN_FDS", "0"),
            ("LISTEN_PID", "1"),
            ("LISTEN_FDNAMES", "x"),
            ("WATCHDOG_USEC", "60000000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let (hook, path) = d.create_hook("site", "main");
    let id = d.trigger(&path);
    d.wait_state(&id, "READY", T);
    let env = std::fs::read_to_string(&out).unwrap();
    let names: Vec<&str> = env
        .lines()
        .take_while(|l| l.contains('='))
        .map(|l| l.split('=').next().unwrap())
        .collect();
    for expected in [
        "PATH",
        "HOME",
        "LANG",
        "NODE_ENV",
        "OUT",
        "DEPLOYHOOK_JOB_ID",
        "DEPLOYHOOK_HOOK_ID",
        "DEPLOYHOOK_HOOK_NAME",
        "DEPLOYHOOK_PROJECT",
        "DEPLOYHOOK_BRANCH",
        "DEPLOYHOOK_COMMIT",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for leaked in [
        "LEAKY_TOKEN",
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "RUST_LOG",
    ] {
        assert!(!names.contains(&leaked), "{leaked} leaked into the build");
    }
    assert!(env.contains(&format!("DEPLOYHOOK_JOB_ID={id}\n")));
    assert!(env.contains(&format!("DEPLOYHOOK_HOOK_ID={hook}\n")));
    assert!(env.contains("DEPLOYHOOK_BRANCH=main\n"));
    assert!(env.contains(&format!("DEPLOYHOOK_COMMIT={}\n", repo.head())));
    // A fresh checkout under state_dir/builds, with the repository's files.
    let cwd = env.lines().find(|l| l.starts_with('/')).unwrap();
    assert!(
        cwd.starts_with(&d.state_dir().join("builds").to_string_lossy().into_owned()),
        "{cwd}"
    );
    assert!(env.lines().any(|l| l == "a"));
}

#[test]
fn a_failing_build_is_error_with_its_exit_code() {
    let s = setup("bfail", "echo about to fail; exit 3", &[("a", "1")], "");
    let id = s.daemon.trigger(&s.path);
    let job = s.daemon.wait_state(&id, "ERROR", T);
    assert_eq!(job["exitCode"], 3);
    assert_eq!(job["error"], "build exited with status 3");
    assert!(s.daemon.job_log(&id).contains("about to fail"));
    assert!(builds_empty(&s.daemon));
}

#[test]
fn a_build_past_its_timeout_is_stopped_and_error() {
    let dir = TempDir::new("btimeout");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let pidfile = dir.path().join("child.pid");
    let mut p = ProjectSpec::new(
        "site",
        &repo.path,
        &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
    );
    p.timeout_secs = 1;
    let config = write_config(dir.path(), "", &[p]);
    let d = Daemon::start(&config);
    let (_, path) = d.create_hook("site", "main");
    let id = d.trigger(&path);
    let job = d.wait_state(&id, "ERROR", T);
    assert_eq!(job["error"], "timed out after 1 s (timeout_secs)");
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!pid_alive(child), "the build's background process survived");
    assert!(builds_empty(&d));
}

#[test]
fn clone_failures_are_error_with_gits_message_in_the_log() {
    let dir = TempDir::new("bclone");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "",
        &[
            ProjectSpec::new("site", &repo.path, "true"),
            ProjectSpec::new("gone", &dir.path().join("missing"), "true"),
        ],
    );
    let d = Daemon::start(&config);
    let (_, missing_branch) = d.create_hook_unverified("site", "no-such-branch");
    let (_, missing_repo) = d.create_hook_unverified("gone", "main");
    let a = d.trigger(&missing_branch);
    let b = d.trigger(&missing_repo);
    for id in [&a, &b] {
        let job = d.wait_state(id, "ERROR", T);
        assert!(
            job["error"]
                .as_str()
                .unwrap()
                .starts_with("git fetch failed"),
            "{job}"
        );
        assert_eq!(job["commit"], serde_json::Value::Null);
    }
    assert!(
        d.job_log(&a)
            .contains("couldn't find remote ref refs/heads/no-such-branch"),
        "{}",
        d.job_log(&a)
    );
    assert!(
        d.job_log(&b)
            .contains("does not appear to be a git repository"),
        "{}",
        d.job_log(&b)
    );
    assert!(builds_empty(&d));
}

#[test]
fn git_never_prompts() {
    let dir = TempDir::new("bprompt");
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new(
            "site",
            std::path::Path::new("http://127.0.0.1:9/private.git"),
            "true",
        )],
    );
    let d = Daemon::start(&config);
    let (_, path) = d.create_hook_unverified("site", "main");
    let id = d.trigger(&path);
    d.wait_state(&id, "ERROR", T);
}

#[test]
fn logs_are_capped_and_the_build_goes_on() {
    let s = setup(
        "bcap",
        "head -c 5000 /dev/zero | tr '\\0' x; echo; echo \"after-$((40 + 2))\"",
        &[("a", "1")],
        "max_log_bytes = 2048",
    );
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", T);
    let log = s.daemon.job_log(&id);
    assert!(log.contains("log truncated"), "{log}");
    assert!(!log.contains("after-42"));
    assert!(log.contains("[deployhook] READY after"));
    assert!(log.len() < 2048 + 1024, "{}", log.len());
}

#[test]
fn a_damaged_mirror_is_rebuilt_and_stale_locks_are_cleared() {
    let s = setup("bmirror", "cat a", &[("a", "first")], "");
    let first = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&first, "READY", T);
    let mirror = s.daemon.state_dir().join("mirrors/site.git");
    assert!(mirror.join("HEAD").exists());
    // A git killed mid-fetch leaves locks; a broken disk loses objects.
    std::fs::write(mirror.join("refs/heads/main.lock"), "").unwrap();
    std::fs::write(mirror.join("shallow.lock"), "").unwrap();
    let second = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&second, "READY", T);
    std::fs::remove_dir_all(mirror.join("objects")).unwrap();
    std::fs::create_dir_all(mirror.join("objects")).unwrap();
    let head = s.repo.commit(&[("a", "second\n")], "second");
    let third = s.daemon.trigger(&s.path);
    let job = s.daemon.wait_state(&third, "READY", T);
    assert_eq!(job["commit"], head.as_str());
    assert!(s.daemon.job_log(&third).contains("\nsecond\n"));
}

/// The commit is in the journal before the build command runs: the build asks the status
/// listener for its own job and finds it BUILDING with the commit set.
#[test]
fn the_commit_is_recorded_before_the_build_runs() {
    let dir = TempDir::new("bcommit");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let out = dir.path().join("job.json");
    let build = format!(
        "curl -fsS \"http://$STATUS/jobs/$DEPLOYHOOK_JOB_ID\" > {}",
        out.display()
    );
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, &build)],
    );
    let d = Daemon::start(&config);
    // The status address is known once bound: hand it to builds through a reload.
    let mut p = ProjectSpec::new("site", &repo.path, &build);
    p.env = vec![("STATUS".into(), d.status.to_string())];
    write_config(dir.path(), "", &[p]);
    d.signal("HUP");
    assert!(d.wait_log("config reloaded", Duration::from_secs(5)));
    let (_, path) = d.create_hook("site", "main");
    let id = d.trigger(&path);
    d.wait_state(&id, "READY", T);
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(seen["job"]["state"], "BUILDING");
    assert_eq!(seen["job"]["commit"], repo.head().as_str());
}

#[test]
fn the_builds_folder_is_flagged_as_a_top_directory_where_the_file_system_has_the_flag() {
    let s = setup("btopdir", "true", &[("a", "1")], "");
    let builds = s.daemon.state_dir().join("builds");
    // Whether this file system can hold the flag at all (tmpfs reads inode flags but refuses
    // this one), asked of chattr on a folder beside it.
    let probe = s.dir.path().join("probe");
    std::fs::create_dir(&probe).unwrap();
    let chattr = std::process::Command::new("chattr")
        .arg("+T")
        .arg(&probe)
        .output();
    let lsattr = std::process::Command::new("lsattr")
        .arg("-d")
        .arg(&builds)
        .output();
    let (Ok(chattr), Ok(out)) = (chattr, lsattr) else {
        skip_unless_ci(
            "no chattr or lsattr (e2fsprogs) to read the flag with (.ci/run installs it)",
        );
        return;
    };
    if !chattr.status.success() {
        // A file system without the flag (tmpfs, overlayfs): deployhook goes on without.
        skip(&format!(
            "{} cannot hold the flag: {}",
            probe.display(),
            String::from_utf8_lossy(&chattr.stderr).trim()
        ));
        return;
    }
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let attrs = text.split_whitespace().next().unwrap_or("");
    assert!(attrs.contains('T'), "{attrs}");
}
