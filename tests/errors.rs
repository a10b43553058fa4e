//! Errors a new user meets, each run through the real binary: what the message says and which
//! exit status goes with it. Every message here once pointed the wrong way.

mod common;

use common::*;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn is_root() -> bool {
    id("-u") == "0"
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `deployhook ARGS --config CONFIG`, without `$DEPLOYHOOK_CONFIG`.
fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("DEPLOYHOOK_CONFIG")
        .output()
        .unwrap()
}

/// The CLI run by a user that `closed` (the admin socket or its folder) refuses: as root, the
/// CLI runs as `nobody`; otherwise `closed` is made mode 0 for the call.
fn cli_refused(config: &Path, closed: &Path, args: &[&str]) -> Output {
    if is_root() {
        return Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("DEPLOYHOOK_CONFIG")
            .output()
            .unwrap();
    }
    let mode = std::fs::metadata(closed).unwrap().permissions().mode();
    std::fs::set_permissions(closed, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = cli(config, args);
    std::fs::set_permissions(closed, std::fs::Permissions::from_mode(mode)).unwrap();
    out
}

fn site_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    write_config(dir, extra, &[ProjectSpec::new("site", dir, "true")])
}

#[test]
fn a_user_the_admin_socket_refuses_is_told_the_daemon_runs_and_who_may_use_it() {
    // As root the socket is the daemon's (root's) and `nobody` is refused; as a user, the
    // socket is given to the user's own group and then closed.
    let group = if is_root() {
        "root".to_string()
    } else {
        id("-gn")
    };
    for admin_group in [None, Some(group.as_str())] {
        let dir = TempDir::new("forbidden");
        let extra = admin_group.map_or(String::new(), |g| format!("admin_group = \"{g}\""));
        let config = site_config(dir.path(), &extra);
        let _daemon = Daemon::start(&config);
        let socket = dir.path().join("admin.sock");
        let access = match admin_group {
            Some(g) => format!("access needs root or membership of group `{g}` (admin_group)"),
            None => "access needs root or the daemon's own user; set admin_group in the config \
                     to let a group in"
                .to_string(),
        };
        for args in [
            vec!["hooks", "list"],
            vec!["hooks", "revoke", "hook_AAAAAAAAAAAA"],
        ] {
            let out = cli_refused(&config, &socket, &args);
            assert_eq!(
                stderr(&out),
                format!(
                    "deployhook: a deployhook daemon is running, but you may not open its admin \
                     socket {} (Permission denied); {access}\n",
                    socket.display()
                ),
                "{args:?}"
            );
            assert_eq!(out.status.code(), Some(77), "{args:?}");
        }
    }
}

#[test]
fn a_closed_socket_folder_is_named() {
    let dir = TempDir::new("forbiddendir");
    let config = site_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "admin_socket = \"admin.sock\"",
            "admin_socket = \"run/admin.sock\"",
        ),
    )
    .unwrap();
    let folder = dir.path().join("run");
    std::fs::create_dir(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _daemon = Daemon::start(&config);
    let out = cli_refused(&config, &folder, &["hooks", "list"]);
    assert_eq!(
        stderr(&out),
        format!(
            "deployhook: you may not enter {}, the folder of the deployhook admin socket {} \
             (Permission denied); access needs root, or a folder that lets you through (mode \
             0755: the socket's own mode still decides who may use it)\n",
            folder.display(),
            folder.join("admin.sock").display()
        )
    );
    assert_eq!(out.status.code(), Some(77));
}

#[test]
fn a_failed_group_change_names_admin_group_and_why() {
    let dir = TempDir::new("chgrp");
    let config = site_config(dir.path(), "admin_group = \"root\"");
    let mut serve = if is_root() {
        // `nobody` may bind in the folder but not give the socket to group root.
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        cmd
    } else if id("-G").split(' ').any(|g| g == "0") {
        skip("this user is in group root, so the change would succeed");
        return;
    } else {
        Command::new(BIN)
    };
    let out = serve
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let socket = dir.path().join("admin.sock");
    let expected = format!(
        "cannot give the admin socket {} to group `root` (admin_group): Operation not permitted \
         (os error 1); the daemon must run as root or as a member of that group",
        socket.display()
    );
    assert_eq!(text.matches(&expected).count(), 1, "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(!socket.exists(), "the failed start left its socket behind");
}

const SITE: &str = "[projects.site]\nrepo = \"/srv/site.git\"\nbuild = \"true\"\n";

#[test]
fn check_config_finds_what_would_stop_serve() {
    let dir = TempDir::new("checkserve");
    let config = dir.path().join("deployhook.toml");
    let cases = [
        (
            "admin_group = \"dh-no-such-group\"\n",
            ":1: key `admin_group`: there is no group `dh-no-such-group` on this system; create \
             it (groupadd dh-no-such-group) or remove the setting",
        ),
        (
            "listen = \"127.0.0.1:9\"\nstatus_listen = \"127.0.0.1:9\"\n",
            ":2: key `status_listen`: `127.0.0.1:9` is also the address of `listen`; each \
             listener needs its own address (port 0 picks a free one)",
        ),
        (
            "listen = \"127.0.0.1:9\"\nstatus_listen = \"0.0.0.0:9\"\n",
            ":2: key `status_listen`: `0.0.0.0:9` and `listen` = `127.0.0.1:9` share the port; \
             each listener needs its own address (port 0 picks a free one)",
        ),
        (
            "listen = \"127.0.0.1:8081\"\n",
            ":1: key `listen`: `127.0.0.1:8081` is also the address of `status_listen`; each \
             listener needs its own address (port 0 picks a free one)",
        ),
    ];
    for (settings, expected) in cases {
        std::fs::write(&config, format!("{settings}{SITE}")).unwrap();
        let message = format!("{}{expected}", config.display());
        let out = cli(&config, &["check-config"]);
        assert_eq!(
            stderr(&out),
            format!("deployhook: {message}\n"),
            "{settings}"
        );
        assert_eq!(out.status.code(), Some(78), "{settings}");
        // `serve` refuses it the same way, before binding anything, in one log line.
        let out = cli(&config, &["serve"]);
        let text = stderr(&out);
        assert!(text.ends_with(&format!(" {message}\n")), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(out.status.code(), Some(78), "{settings}");
    }
}

#[test]
fn bad_arguments_exit_2_before_anything_is_asked() {
    let dir = TempDir::new("badargs");
    let config = site_config(dir.path(), "");
    let create = |project: &str, name: &str, branch: &str| {
        vec![
            "hooks".to_string(),
            "create".into(),
            "--project".into(),
            project.into(),
            "--name".into(),
            name.into(),
            "--branch".into(),
            branch.into(),
        ]
    };
    let owned = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let cases = [
        (
            owned(&["jobs", "--state", "bogus"]),
            "must be PENDING, BUILDING, READY, ERROR or CANCELED",
        ),
        (
            owned(&["jobs", "--limit", "0"]),
            "must be a whole number from 1 to 500",
        ),
        (
            owned(&["jobs", "--limit", "501"]),
            "must be a whole number from 1 to 500",
        ),
        (owned(&["jobs", "--hook", "nope"]), "not a hook id"),
        (owned(&["jobs", "--project", "a b"]), "not a project name"),
        (owned(&["logs", "../status"]), "not a job id"),
        (owned(&["hooks", "revoke", "nope"]), "not a hook id"),
        (
            create("site", "", "main"),
            "a hook name is 1 to 100 characters",
        ),
        (
            create("site", "a\tb", "main"),
            "must not contain control characters",
        ),
        (
            create("site", "x", "a..b"),
            "`a..b` is not a valid branch name",
        ),
        (create("../x", "x", "main"), "not a project name"),
        (
            create("blog", "x", "main"),
            &format!(
                "unknown project `blog`; {} configures: site",
                config.display()
            ),
        ),
        (owned(&["jobs", "--bogus"]), "unexpected argument"),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli(&config, &args);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(expected), "{args:?}: {text}");
    }
    // Good values get past the checks (and find no daemon); a state may be in any case.
    for args in [
        vec!["jobs", "--state", "ready", "--limit", "500"],
        vec!["logs", "AAAAAAAAAAAAAAAAAAAA"],
        vec!["hooks", "revoke", "hook_AAAAAAAAAAAA"],
    ] {
        let out = cli(&config, &args);
        assert_eq!(out.status.code(), Some(69), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn serve_reports_a_start_up_error_once() {
    let dir = TempDir::new("serveonce");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = site_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"{addr}\"\n"),
            1,
        ),
    )
    .unwrap();
    let needle = format!("cannot listen on {addr} (listen): ");
    for (log, prefix) in [("info", " ERROR "), ("off", "deployhook: ")] {
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", log)
            .output()
            .unwrap();
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&needle)).collect();
        assert_eq!(lines.len(), 1, "RUST_LOG={log}: {text}");
        assert!(lines[0].contains(&format!("{prefix}{needle}")), "{text}");
    }
}

#[test]
fn a_missing_default_config_says_how_to_name_one() {
    let default = Path::new("/etc/deployhook/deployhook.toml");
    if default.exists() {
        skip(&format!("{} exists on this machine", default.display()));
        return;
    }
    for args in [vec!["check-config"], vec!["hooks", "list"], vec!["jobs"]] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("DEPLOYHOOK_CONFIG")
            .output()
            .unwrap();
        assert_eq!(
            stderr(&out),
            "deployhook: /etc/deployhook/deployhook.toml: no config file here; pass --config \
             PATH or set $DEPLOYHOOK_CONFIG\n",
            "{args:?}"
        );
        assert_eq!(out.status.code(), Some(78), "{args:?}");
    }
    // A path that was asked for keeps the plain reason.
    let out = cli(Path::new("/nonexistent/deployhook.toml"), &["check-config"]);
    assert!(
        stderr(&out).contains("cannot read the file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cli_json_ends_with_one_newline() {
    let s = setup("jsonnl", "true", &[("a", "1")], "");
    let id = s.daemon.trigger(&s.path);
    s.daemon.wait_state(&id, "READY", Duration::from_secs(30));
    // The config says port 0; `jobs` needs the real status address.
    let text = std::fs::read_to_string(&s.daemon.config).unwrap();
    std::fs::write(
        &s.daemon.config,
        text.replace(
            "status_listen = \"127.0.0.1:0\"",
            &format!("status_listen = \"{}\"", s.daemon.status),
        ),
    )
    .unwrap();
    for args in [
        vec![
            "hooks",
            "create",
            "--project",
            "site",
            "--name",
            "n",
            "--branch",
            "main",
            "--json",
        ],
        vec!["hooks", "list", "--json"],
        vec!["jobs", "--json"],
    ] {
        let out = s.daemon.cli(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.ends_with('\n') && !text.ends_with("\n\n"),
            "{args:?}: {text:?}"
        );
        assert_eq!(text.lines().count(), 1, "{args:?}: {text:?}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }
}

/// Runs `packaging/debian/postinst configure` with every command it calls replaced by a stub
/// that logs its arguments; returns its output and the calls.
fn postinst(previous_version: &str) -> (Output, String) {
    let dir = TempDir::new("postinst");
    let calls = dir.path().join("calls");
    for stub in [
        "systemd-sysusers",
        "systemd-tmpfiles",
        "getent",
        "adduser",
        "install",
        "chown",
        "chmod",
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "systemctl",
    ] {
        let path = dir.path().join(stub);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{stub} $*\" >> {}\n", calls.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/debian/postinst");
    let out = Command::new("/bin/sh")
        .arg(script)
        .args(["configure", previous_version])
        .env_clear()
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    (out, calls)
}

#[test]
fn postinst_without_systemd_says_the_service_was_not_started() {
    let (out, calls) = postinst("");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    if Path::new("/run/systemd/system").is_dir() {
        // systemd runs here: the service is started and nothing is said.
        assert!(
            calls.contains("deb-systemd-invoke start deployhook.service"),
            "{calls}"
        );
        assert!(!text.contains("not started"), "{text}");
        return;
    }
    assert!(!calls.contains("deb-systemd-invoke"), "{calls}");
    assert_eq!(
        text,
        "deployhook: systemd is not running, so the deployhook service was not started.\n\
         deployhook: after editing /etc/deployhook/deployhook.toml, start the daemon as its user:\n\
         deployhook:   install -d -o deployhook -g deployhook -m 0750 /run/deployhook\n\
         deployhook:   runuser -u deployhook -- deployhook serve --config /etc/deployhook/deployhook.toml\n"
    );
    // An upgrade says the same: nothing restarted the old daemon either.
    let (out, _) = postinst("0.1.0-1");
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
}

#[test]
fn a_group_outside_the_user_namespace_is_explained() {
    // systemd's PrivateUsers=yes runs the daemon in a user namespace like this one.
    let usable = Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !usable {
        skip("no user namespaces here (unshare --user)");
        return;
    }
    let has_daemon_group = Command::new("getent")
        .args(["group", "daemon"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_daemon_group {
        skip("no group `daemon` on this system");
        return;
    }
    let dir = TempDir::new("userns");
    let config = site_config(dir.path(), "admin_group = \"daemon\"");
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", BIN, "serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "cannot give the admin socket {} to group `daemon` (admin_group): Invalid argument \
             (os error 22); the group does not exist in the daemon's user namespace (systemd's \
             PrivateUsers=yes maps only root and the service's own user and group)",
            dir.path().join("admin.sock").display()
        )),
        "{text}"
    );
}

/// The CLI refuses bad values itself (exit 2); the daemon still refuses them from any client.
#[test]
fn the_daemon_checks_what_the_cli_checks() {
    use std::io::{Read, Write};
    let s = setup("admincheck", "true", &[("a", "1")], "");
    let socket = s.daemon.dir.join("admin.sock");
    let cases = [
        (
            r#"{"op":"create","project":"nope","name":"x","branch":"main"}"#,
            "unknown project `nope`; configured: site",
        ),
        (
            r#"{"op":"create","project":"site","name":"x","branch":"bad..name"}"#,
            "`bad..name` is not a valid branch name",
        ),
        (
            r#"{"op":"create","project":"site","name":" ","branch":"main"}"#,
            "a hook name is 1 to 100 characters",
        ),
        (
            r#"{"op":"revoke","id":"nope"}"#,
            "`nope` is not a hook id (hook_ and 12 letters or digits)",
        ),
    ];
    for (request, expected) in cases {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["ok"], false, "{request}: {answer}");
        assert_eq!(v["error"], expected, "{request}");
    }
}
