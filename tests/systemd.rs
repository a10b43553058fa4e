//! Life under systemd: the notify protocol (READY, RELOADING, STOPPING, WATCHDOG) on path and
//! abstract sockets, socket activation, and journald-style log lines.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Collects notifications until one contains `needle`.
fn expect(socket: &UnixDatagram, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.contains(needle);
            seen.push(msg);
            if hit {
                return seen;
            }
        }
    }
    panic!("no {needle:?} within {timeout:?}; got {seen:?}");
}

#[test]
fn notify_socket_hears_ready_watchdog_reloading_and_stopping() {
    let dir = TempDir::new("notify");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "true")],
    );
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut d = Daemon::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    expect(&socket, "READY=1", Duration::from_secs(5));
    expect(&socket, "WATCHDOG=1", Duration::from_secs(3));
    expect(&socket, "WATCHDOG=1", Duration::from_secs(3));
    d.signal("HUP");
    let seen = expect(&socket, "READY=1", Duration::from_secs(5));
    assert!(
        seen.iter()
            .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "{seen:?}"
    );
    d.signal("TERM");
    expect(&socket, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn notify_socket_may_be_abstract() {
    let dir = TempDir::new("notifyabs");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "true")],
    );
    let name = format!("deployhook-test-{}", std::process::id());
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let _d = Daemon::start_with_env(&config, &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    expect(&socket, "READY=1", Duration::from_secs(5));
}

/// Starts `deployhook serve` the way systemd's socket activation does: the listening sockets
/// as descriptors 3 and 4, LISTEN_FDS=2 and LISTEN_PID set to the daemon's own pid.
fn spawn_activated(
    config: &std::path::Path,
    fds: &[i32],
) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    use std::os::unix::process::CommandExt;
    // Everything the child runs between fork and exec is prepared here: it must not allocate
    // (another thread may hold the allocator's lock at the fork).
    const MOST: usize = 8;
    assert!(fds.len() <= MOST);
    let mut wanted = [-1; MOST];
    wanted[..fds.len()].copy_from_slice(fds);
    let count = fds.len();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "LISTEN_PID=$$ LISTEN_FDS={} exec \"$0\" serve --config \"$1\"",
            fds.len()
        ),
        BIN,
    ])
    .arg(config)
    .stdin(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: between fork and exec only fcntl and dup2 run, which are async-signal-safe, on
    // arrays on the stack: nothing allocates. The sockets are first copied above 100, so that
    // moving them to 3, 4… cannot overwrite one that is still to be moved; dup2 clears
    // close-on-exec on the copies.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [-1; MOST];
            for (copy, &fd) in high.iter_mut().zip(&wanted[..count]) {
                *copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if *copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..count].iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !line.contains(" ready public=") && Instant::now() < deadline {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("daemon exited before it was ready");
        }
    }
    (child, stderr)
}

#[test]
fn sockets_passed_by_systemd_are_used_and_hold_triggers_across_a_restart() {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("activation");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let status = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, sa) = (public.local_addr().unwrap(), status.local_addr().unwrap());
    let config = dir.path().join("deployhook.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{pa}\"\nstatus_listen = \"{sa}\"\nadmin_socket = \"admin.sock\"\nstate_dir = \"state\"\nkill_grace_secs = 1\n[projects.site]\nrepo = {}\nbuild = \"true\"\n",
            toml_str(&repo.path.to_string_lossy())
        ),
    )
    .unwrap();
    // Passed in the other order: deployhook matches them by address, not position.
    let (mut child, _err) = spawn_activated(&config, &[status.as_raw_fd(), public.as_raw_fd()]);
    let out = Command::new(BIN)
        .args([
            "hooks",
            "create",
            "--project",
            "site",
            "--name",
            "a",
            "--branch",
            "main",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = url
        .strip_prefix(&format!("http://{pa}"))
        .unwrap()
        .to_string();
    assert_eq!(http(pa, "POST", &path, &[], b"").status, 201);
    assert_eq!(http(sa, "GET", "/status", &[], b"").status, 200);

    // Stop the daemon; the sockets stay open (here the test holds them, as systemd would).
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    // A trigger sent while no daemon runs: the kernel completes the connection on the listening
    // socket and holds it, with the request, in the socket's queue.
    let mut waiting = TcpStream::connect_timeout(&pa, Duration::from_secs(5)).unwrap();
    waiting
        .write_all(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let (mut child, _err) = spawn_activated(&config, &[public.as_raw_fd(), status.as_raw_fd()]);
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut raw = Vec::new();
    let _ = waiting.read_to_end(&mut raw);
    assert!(
        raw.starts_with(b"HTTP/1.1 201"),
        "a trigger sent during the restart was lost: {}",
        String::from_utf8_lossy(&raw)
    );
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
}

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("journald");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "true")],
    );
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("ready public=")
    }));
    std::fs::write(&config, "broken =").unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("reload refused")
    }));
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("<6>ready public=")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<3>config reload refused")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");

    // A JOURNAL_STREAM that is not our stderr keeps the human format.
    let s = Daemon::start_with_env(&config_again(&dir, &repo), &[("JOURNAL_STREAM", "1:2")]);
    assert!(
        s.log_text().lines().next().unwrap().starts_with("20"),
        "{}",
        s.log_text()
    );
}

fn config_again(dir: &TempDir, repo: &Repo) -> std::path::PathBuf {
    write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, "true")],
    )
}
