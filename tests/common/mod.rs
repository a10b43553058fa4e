//! Fixture for integration tests: temp dirs, real git repositories, and the real `deployhook`
//! binary started on ephemeral loopback ports, stopped by PID when the test ends.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_deployhook");

/// The keys of a hook object, in DESIGN.md's order (`/hooks`, `hooks list --json`).
pub const HOOK_KEYS: [&str; 6] = [
    "id",
    "name",
    "project",
    "branch",
    "createdAt",
    "lastTriggeredAt",
];

/// The keys of a job object, in DESIGN.md's order (`/jobs`, `/jobs/{id}`).
pub const JOB_KEYS: [&str; 14] = [
    "id",
    "hookId",
    "project",
    "branch",
    "state",
    "createdAt",
    "startedAt",
    "finishedAt",
    "commit",
    "exitCode",
    "error",
    "canceledBy",
    "notBefore",
    "notification",
];

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("dh-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    /// A directory on tmpfs where there is one (/dev/shm), for tests that make many commits and
    /// do not test durability itself.
    pub fn in_memory(tag: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return TempDir::new(tag);
        }
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = shm.join(format!("dh-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@localhost")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@localhost")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A git repository with a `main` branch holding `files`.
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    pub fn new(dir: &Path, name: &str, files: &[(&str, &str)]) -> Repo {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        git(&path, &["init", "-q", "--initial-branch=main"]);
        let repo = Repo { path };
        repo.commit(files, "initial");
        repo
    }

    /// Writes `files` and commits them on the current branch; returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, text) in files {
            let p = self.path.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(p, text).unwrap();
        }
        git(&self.path, &["add", "-A"]);
        git(
            &self.path,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.path, &["rev-parse", "HEAD"])
    }
}

/// One project of a test config.
pub struct ProjectSpec {
    pub name: String,
    pub repo: PathBuf,
    pub build: String,
    pub timeout_secs: u64,
    pub env: Vec<(String, String)>,
    /// More `key = value` lines of the project's table.
    pub extra: String,
}

impl ProjectSpec {
    pub fn new(name: &str, repo: &Path, build: &str) -> ProjectSpec {
        ProjectSpec {
            name: name.into(),
            repo: repo.to_path_buf(),
            build: build.into(),
            timeout_secs: 60,
            env: Vec::new(),
            extra: String::new(),
        }
    }
}

pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Writes a config for `projects` in `dir`; `extra` goes at the top level.
pub fn write_config(dir: &Path, extra: &str, projects: &[ProjectSpec]) -> PathBuf {
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nstatus_listen = \"127.0.0.1:0\"\nadmin_socket = \"admin.sock\"\nstate_dir = \"state\"\nkill_grace_secs = 2\n{extra}\n"
    );
    for p in projects {
        text.push_str(&format!(
            "\n[projects.{}]\nrepo = {}\nbuild = {}\ntimeout_secs = {}\n",
            p.name,
            toml_str(&p.repo.to_string_lossy()),
            toml_str(&p.build),
            p.timeout_secs
        ));
        if !p.env.is_empty() {
            let pairs: Vec<String> = p
                .env
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_str(v)))
                .collect();
            text.push_str(&format!("env = {{ {} }}\n", pairs.join(", ")));
        }
        if !p.extra.is_empty() {
            text.push_str(&format!("{}\n", p.extra));
        }
    }
    let path = dir.join("deployhook.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Sets `kill_grace_secs` in a config [`write_config`] wrote. A grace period far longer than any
/// stop or start on a busy machine lets a test tell "did not wait for it" from "waited" without
/// timing anything closely.
pub fn set_kill_grace(config: &Path, secs: u64) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("kill_grace_secs = 2\n"), "{text}");
    let text = text.replace(
        "kill_grace_secs = 2\n",
        &format!("kill_grace_secs = {secs}\n"),
    );
    std::fs::write(config, text).unwrap();
}

/// A running `deployhook serve`.
pub struct Daemon {
    pub config: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
    pub public: SocketAddr,
    pub status: SocketAddr,
    /// Every stderr line of every run of this daemon.
    pub log: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
    /// Where stderr goes instead of a pipe read by this process (benchmarks: a pipe reader
    /// would compete with the daemon for the CPU).
    log_file: Option<PathBuf>,
    /// The daemon's file mode creation mask, if not this process's (the systemd unit's 0077).
    pub umask: Option<u32>,
}

impl Daemon {
    /// A daemon started with the file mode creation mask `mask`, as `UMask=` would give it.
    pub fn start_with_umask(config: &Path, mask: u32) -> Daemon {
        Daemon::start_inner(config, &[], None, Some(mask))
    }

    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    /// A daemon whose stderr goes to `daemon.log` beside its config, read only on demand.
    pub fn start_logging_to_file(config: &Path) -> Daemon {
        Daemon::start_inner(config, &[], Some(config.with_file_name("daemon.log")), None)
    }

    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_inner(config, env, None, None)
    }

    fn start_inner(
        config: &Path,
        env: &[(&str, &str)],
        log_file: Option<PathBuf>,
        umask: Option<u32>,
    ) -> Daemon {
        let mut d = Daemon {
            config: config.to_path_buf(),
            dir: config.parent().unwrap().to_path_buf(),
            child: None,
            public: "127.0.0.1:1".parse().unwrap(),
            status: "127.0.0.1:1".parse().unwrap(),
            log: Arc::new(Mutex::new(Vec::new())),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log_file,
            umask,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let child = if let Some(path) = &self.log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            let child = cmd.stderr(file).spawn().expect("daemon starts");
            let (path, log) = (path.clone(), self.log.clone());
            let seen = std::fs::metadata(&path).map_or(0, |m| m.len()) as usize;
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    if let Some(line) = text
                        .get(seen..)
                        .and_then(|t| t.lines().find(|l| l.contains(" ready public=")))
                    {
                        log.lock().unwrap().push(line.to_string());
                        let _ = tx.send(line.to_string());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            child
        } else {
            let mut child = cmd.stderr(Stdio::piped()).spawn().expect("daemon starts");
            let stderr = child.stderr.take().unwrap();
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let ready = line.contains(" ready public=");
                    log.lock().unwrap().push(line.clone());
                    if ready {
                        let _ = tx.send(line);
                    }
                }
            });
            child
        };
        let pid = child.id();
        self.child = Some(child);
        let ready = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("daemon {pid} not ready:\n{}", self.log_text()));
        let field = |name: &str| -> SocketAddr {
            let start = ready.find(&format!("{name}=")).unwrap() + name.len() + 1;
            ready[start..].split(' ').next().unwrap().parse().unwrap()
        };
        self.public = field("public");
        self.status = field("status");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        match &self.log_file {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => self.log.lock().unwrap().join("\n"),
        }
    }

    /// Waits until the daemon's stderr has a line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_text().contains(needle))
    }

    /// Sends a signal by PID.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        self.spawn();
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// `deployhook hooks create` with these fields (and `--json` when asked), as run by a user.
    pub fn hooks_create(
        &self,
        project: &str,
        name: &str,
        branch: &str,
        json: bool,
    ) -> std::process::Output {
        self.hooks_create_args(project, name, branch, if json { &["--json"] } else { &[] })
    }

    /// `deployhook hooks create` with these fields and `extra` arguments.
    fn hooks_create_args(
        &self,
        project: &str,
        name: &str,
        branch: &str,
        extra: &[&str],
    ) -> std::process::Output {
        let mut args = vec![
            "hooks",
            "create",
            "--project",
            project,
            "--name",
            name,
            "--branch",
            branch,
        ];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// Creates a hook; returns (hook id, URL path).
    pub fn create_hook(&self, project: &str, branch: &str) -> (String, String) {
        self.create_hook_with(project, branch, &[])
    }

    /// A hook whose branch is not checked against the repository (`--no-verify`): for tests of
    /// what a build does with a missing branch or an unreachable repository.
    pub fn create_hook_unverified(&self, project: &str, branch: &str) -> (String, String) {
        self.create_hook_with(project, branch, &["--no-verify"])
    }

    fn create_hook_with(&self, project: &str, branch: &str, extra: &[&str]) -> (String, String) {
        let name = format!("{project} {branch}");
        let out = self.hooks_create_args(project, &name, branch, &[&["--json"], extra].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let url = v["url"].as_str().unwrap().to_string();
        let path = url
            .strip_prefix(&format!("http://{}", self.public))
            .unwrap_or_else(|| panic!("url {url} on {}", self.public))
            .to_string();
        (v["hook"]["id"].as_str().unwrap().to_string(), path)
    }

    /// POSTs to a hook path; returns the job id.
    pub fn trigger(&self, path: &str) -> String {
        let resp = http(self.public, "POST", path, &[], b"");
        assert_eq!(resp.status, 201, "{}", resp.text());
        resp.json()["job"]["id"].as_str().unwrap().to_string()
    }

    pub fn job(&self, id: &str) -> Value {
        let resp = http(self.status, "GET", &format!("/jobs/{id}"), &[], b"");
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()["job"].clone()
    }

    /// How many jobs the status listener lists for the hook (at most its default page, 50).
    pub fn jobs_of(&self, hook: &str) -> usize {
        let listing = http(self.status, "GET", &format!("/jobs?hook={hook}"), &[], b"");
        listing.json()["jobs"].as_array().unwrap().len()
    }

    pub fn job_log(&self, id: &str) -> String {
        http(self.status, "GET", &format!("/jobs/{id}/log"), &[], b"").text()
    }

    /// Waits until the job is in `state`; panics with the job and the log otherwise.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(timeout, || {
            last = self.job(id);
            last["state"] == state
        });
        assert!(
            ok,
            "job {id} is not {state}: {last}\nlog:\n{}\ndaemon:\n{}",
            self.job_log(id),
            self.log_text()
        );
        last
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state_dir().join(deployhook::harness::FILE_NAME)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Says that the calling test did not check what it is about, and why (the caller returns right
/// after), where a reader sees it: on stderr, written directly (libtest captures `eprintln!` of a
/// passing test, not writes to the stderr handle), and as a line appended to the file
/// `$DEPLOYHOOK_SKIPPED` names, when set (`.ci/run` prints that file as its summary). The test
/// itself still shows `ok`: libtest has no verdict for a skip decided at run time.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    let line = format!("SKIPPED {}::{test}: {reason}\n", env!("CARGO_CRATE_NAME"));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("DEPLOYHOOK_SKIPPED") {
        // One write of one short line to a file opened for appending: lines of tests running
        // at once do not interleave.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        match file {
            Ok(mut file) => {
                let _ = file.write_all(line.as_bytes());
            }
            Err(e) => panic!("cannot record the skip in {}: {e}", path.to_string_lossy()),
        }
    }
}

/// Whether the slow tests run: `DEPLOYHOOK_SLOW_TESTS=1` (`.ci/run` sets it). If not, the
/// calling test is reported skipped; it returns at once.
pub fn slow_tests_enabled() -> bool {
    let on = std::env::var_os("DEPLOYHOOK_SLOW_TESTS").is_some_and(|v| v == "1");
    if !on {
        skip("slow; set DEPLOYHOOK_SLOW_TESTS=1 to run it");
    }
    on
}

/// Whether this is a CI run (`CI` set to anything but `false` or empty, as CI services and
/// `.ci/run` do), where everything the tests need is installed and a skip is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// [`skip`], except under CI, where the test must run: there it fails with `reason`.
pub fn skip_unless_ci(reason: &str) {
    assert!(!in_ci(), "this test must run in CI, but: {reason}");
    skip(reason);
}

/// The wall clock in Unix milliseconds, as the daemon stamps jobs.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A parsed HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw, method == "HEAD")
}

/// Parses a whole response (Content-Length or chunked).
pub fn parse_response(raw: &[u8], head: bool) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if head {
        Vec::new()
    } else if chunked {
        let mut out = Vec::new();
        let mut r = BufReader::new(rest);
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).unwrap() == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            out.extend_from_slice(&chunk[..n]);
        }
        out
    } else {
        rest.to_vec()
    };
    Response {
        status,
        headers,
        body,
    }
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether a process exists (zombies count as gone).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// A one-project setup: temp dir, repo, config, running daemon, one hook.
pub struct Setup {
    pub daemon: Daemon,
    pub repo: Repo,
    pub hook: String,
    pub path: String,
    pub dir: TempDir,
}

pub fn setup(tag: &str, build: &str, files: &[(&str, &str)], extra: &str) -> Setup {
    setup_in(TempDir::new(tag), build, files, extra, Daemon::start)
}

/// [`setup`] in a folder the caller made (its build may name files there), with the daemon
/// started by `start` (benchmarks use [`Daemon::start_logging_to_file`], so that no pipe has to
/// be read while they load the daemon).
pub fn setup_in(
    dir: TempDir,
    build: &str,
    files: &[(&str, &str)],
    extra: &str,
    start: fn(&Path) -> Daemon,
) -> Setup {
    setup_project(dir, build, files, extra, "", start)
}

/// [`setup_in`] with more lines in the project's table (`project_extra`).
pub fn setup_project(
    dir: TempDir,
    build: &str,
    files: &[(&str, &str)],
    extra: &str,
    project_extra: &str,
    start: fn(&Path) -> Daemon,
) -> Setup {
    let repo = Repo::new(dir.path(), "repo", files);
    let mut spec = ProjectSpec::new("site", &repo.path, build);
    spec.extra = project_extra.to_string();
    let config = write_config(dir.path(), extra, &[spec]);
    let daemon = start(&config);
    let (hook, path) = daemon.create_hook("site", "main");
    Setup {
        daemon,
        repo,
        hook,
        path,
        dir,
    }
}

/// The keys of a JSON object, in order.
pub fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

/// A daemon over several projects sharing one repository: `(name, build)` pairs.
pub fn start_projects(
    tag: &str,
    projects: &[(&str, &str)],
    extra: &str,
) -> (TempDir, Repo, Daemon) {
    let dir = TempDir::new(tag);
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let specs: Vec<ProjectSpec> = projects
        .iter()
        .map(|(name, build)| ProjectSpec::new(name, &repo.path, build))
        .collect();
    let config = write_config(dir.path(), extra, &specs);
    let daemon = Daemon::start(&config);
    (dir, repo, daemon)
}

/// Raises this process's open-file limit to its hard limit (floods and benchmarks hold more
/// than the usual 1024 sockets).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// One value of the daemon's `/metrics` (a series without labels).
pub fn metric(d: &Daemon, name: &str) -> f64 {
    let text = http(d.status, "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// One keep-alive client POSTing `path` until `until`; returns latencies and statuses.
pub fn keep_alive_posts(
    addr: SocketAddr,
    path: String,
    until: Instant,
) -> (Vec<Duration>, Vec<u16>) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let req = format!("POST {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let (mut lat, mut statuses) = (Vec::new(), Vec::new());
    while Instant::now() < until {
        let t0 = Instant::now();
        writer.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut len = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        lat.push(t0.elapsed());
        statuses.push(status);
    }
    (lat, statuses)
}
