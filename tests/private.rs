//! Private repositories and secret hygiene, end to end against real servers on loopback that
//! each test starts itself: `git http-backend` behind basic auth (tests/servers/git_http.py)
//! and `sshd` with key-only authentication. Nothing secret may reach any output.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
/// The token every test hides; distinctive, so a grep finds any copy of it.
const TOKEN: &str = "glpat-Zq8uLr4TnVx2Kw7mPc9s";
const USER: &str = "oauth2";

/// A child process killed (by its PID) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare repository `srv/site.git` with a `main` branch holding `files`; returns the work repo.
fn served_repo(dir: &Path, files: &[(&str, &str)]) -> Repo {
    let repo = Repo::new(dir, "work", files);
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    git(dir, &["init", "-q", "--bare", "srv/site.git"]);
    git(&repo.path, &["push", "-q", "../srv/site.git", "main"]);
    repo
}

/// `git http-backend` over `dir/srv` on a loopback port, demanding `USER`/`TOKEN`.
fn git_http(dir: &Path) -> Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/git_http.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(dir.join("srv"))
        .args([USER, TOKEN])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("git_http.py said {line:?}"));
    Server { child, port }
}

fn get(d: &Daemon, path: &str) -> String {
    http(d.status, "GET", path, &[], b"").text()
}

fn cli_text(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli(args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every place a user or an operator can read: job logs, job JSON, pages, CLI, daemon log.
fn every_output(d: &Daemon, jobs: &[&str]) -> Vec<(String, String)> {
    let mut outputs = vec![
        ("GET /jobs".to_string(), get(d, "/jobs")),
        ("GET /".to_string(), get(d, "/")),
        ("GET /hooks".to_string(), get(d, "/hooks")),
        ("hooks list".to_string(), cli_text(d, &["hooks", "list"])),
        (
            "hooks list --json".to_string(),
            cli_text(d, &["hooks", "list", "--json"]),
        ),
        ("jobs".to_string(), cli_text(d, &["jobs"])),
        ("check-config".to_string(), cli_text(d, &["check-config"])),
    ];
    for id in jobs {
        outputs.push((format!("log of {id}"), d.job_log(id)));
        outputs.push((format!("GET /jobs/{id}"), get(d, &format!("/jobs/{id}"))));
        outputs.push((format!("GET /job/{id}"), get(d, &format!("/job/{id}"))));
        outputs.push((format!("logs {id}"), cli_text(d, &["logs", id])));
    }
    outputs.push(("daemon log".to_string(), d.log_text()));
    outputs
}

fn assert_no_token(outputs: &[(String, String)]) {
    for (what, text) in outputs {
        assert!(!text.contains(TOKEN), "the token leaks in {what}:\n{text}");
    }
}

#[test]
fn a_password_in_the_repo_url_works_and_never_shows() {
    let dir = TempDir::new("urlpw");
    served_repo(dir.path(), &[("index.html", "hello")]);
    let server = git_http(dir.path());
    let url = |name: &str| format!("http://{USER}:{TOKEN}@127.0.0.1:{}/{name}", server.port);
    let site = ProjectSpec::new(
        "site",
        Path::new(&url("site.git")),
        &format!("cat index.html; echo mirror of {}", url("elsewhere.git")),
    );
    let gone = ProjectSpec::new("gone", Path::new(&url("missing.git")), "true");
    let config = write_config(dir.path(), "", &[site, gone]);

    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let check_err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{check_err}");
    assert!(
        check_err.contains("projects.site.repo") && check_err.contains("git_credentials"),
        "check-config does not warn: {check_err}"
    );

    let d = Daemon::start(&config);
    assert!(d.wait_log("git_credentials", T), "{}", d.log_text());
    let (_, site_path) = d.create_hook("site", "main");
    let (_, gone_path) = d.create_hook_unverified("gone", "main");
    let ok = d.trigger(&site_path);
    let failed = d.trigger(&gone_path);
    d.wait_state(&ok, "READY", T);
    let job = d.wait_state(&failed, "ERROR", T);

    let log = d.job_log(&ok);
    assert!(log.contains("hello"), "{log}");
    assert!(
        log.contains(&format!("http://{USER}:***@127.0.0.1")),
        "{log}"
    );
    assert!(log.contains("mirror of http://oauth2:***@"), "{log}");
    // git's own reason is in the error, not only in the log.
    let error = job["error"].as_str().unwrap();
    assert!(
        error.starts_with("git fetch failed (exited with status 128): fatal: repository '")
            && error.ends_with("/missing.git/' not found; see the log"),
        "{error}"
    );
    assert_no_token(&every_output(&d, &[&ok, &failed]));
}

/// Appends `lines` to the `[projects.NAME]` table that [`write_config`] wrote last for `name`.
fn add_to_project(config: &Path, name: &str, lines: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let header = format!("[projects.{name}]\n");
    let at = text.find(&header).unwrap() + header.len();
    let text = format!("{}{lines}\n{}", &text[..at], &text[at..]);
    std::fs::write(config, text).unwrap();
}

fn write_file(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_git_credentials_file_is_git_s_only_helper_and_stays_as_written() {
    let dir = TempDir::new("gitcred");
    served_repo(dir.path(), &[("index.html", "private")]);
    let server = git_http(dir.path());
    let url = format!("http://127.0.0.1:{}/site.git", server.port);
    let good = format!("http://{USER}:{TOKEN}@127.0.0.1:{}\n", server.port);
    let wrong = format!("http://{USER}:not-the-token@127.0.0.1:{}\n", server.port);
    write_file(&dir.path().join("secrets/site.git-credentials"), &good);
    write_file(&dir.path().join("secrets/wrong.git-credentials"), &wrong);
    let specs = ["site", "wrong", "none"]
        .map(|name| ProjectSpec::new(name, Path::new(&url), "cat index.html"));
    let config = write_config(dir.path(), "", &specs);
    add_to_project(
        &config,
        "site",
        "git_credentials = \"secrets/site.git-credentials\"",
    );
    add_to_project(
        &config,
        "wrong",
        "git_credentials = \"secrets/wrong.git-credentials\"",
    );

    let d = Daemon::start(&config);
    let jobs: Vec<String> = ["site", "wrong", "none"]
        .iter()
        .map(|p| d.trigger(&d.create_hook_unverified(p, "main").1))
        .collect();
    d.wait_state(&jobs[0], "READY", T);
    assert!(d.job_log(&jobs[0]).contains("private"));
    for failed in &jobs[1..] {
        let job = d.wait_state(failed, "ERROR", T);
        let error = job["error"].as_str().unwrap();
        assert!(
            error.starts_with("git fetch failed (exited with status 128): fatal:"),
            "{error}"
        );
    }
    // hooks create asks the repository with the same access as a build: the wrong token is
    // refused there too, and the right one lets it check the branch.
    let out = d.hooks_create("wrong", "w", "main", false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot check the branch in") && err.contains("Authentication failed"),
        "{err}"
    );
    assert!(d.hooks_create("site", "s", "main", false).status.success());
    // git rejects a credential that failed; the file must not lose it.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/wrong.git-credentials")).unwrap(),
        wrong
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/site.git-credentials")).unwrap(),
        good
    );
    let ids: Vec<&str> = jobs.iter().map(String::as_str).collect();
    assert_no_token(&every_output(&d, &ids));

    // Read again at each job start: once gone, the job fails naming the file.
    let file = dir.path().join("secrets/site.git-credentials");
    std::fs::remove_file(&file).unwrap();
    let (_, path) = d.create_hook_unverified("site", "main");
    let gone = d.trigger(&path);
    let job = d.wait_state(&gone, "ERROR", T);
    assert_eq!(
        job["error"].as_str().unwrap(),
        format!(
            "cannot read the project's git_credentials file {}: No such file or directory (os error 2)",
            file.display()
        )
    );
}

#[test]
fn env_file_values_reach_the_build_and_are_masked_in_its_log() {
    let dir = TempDir::new("envfile");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let out = dir.path().join("seen.txt");
    let build = format!(
        "echo \"token is $API_TOKEN and pin $PIN\"; printf 'half %s' \"$API_TOKEN\"; \
         printf '%s' \"$API_TOKEN\" > {}",
        out.display()
    );
    let config = write_config(
        dir.path(),
        "",
        &[ProjectSpec::new("site", &repo.path, &build)],
    );
    write_file(
        &dir.path().join("secrets/site.env"),
        &format!("# build secrets\n\nAPI_TOKEN={TOKEN}\nPIN=123\n"),
    );
    add_to_project(&config, "site", "env_file = \"secrets/site.env\"");

    let d = Daemon::start(&config);
    let (_, path) = d.create_hook("site", "main");
    let id = d.trigger(&path);
    d.wait_state(&id, "READY", T);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), TOKEN);
    let log = d.job_log(&id);
    assert!(log.contains("\ntoken is *** and pin 123\n"), "{log}");
    // The last line has no newline: it is masked too.
    assert!(log.contains("\nhalf ***"), "{log}");
    assert_no_token(&every_output(&d, &[&id]));

    // Read again at each job start.
    let env = dir.path().join("secrets/site.env");
    std::fs::remove_file(&env).unwrap();
    let id = d.trigger(&path);
    let job = d.wait_state(&id, "ERROR", T);
    let error = job["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "cannot read the project's env_file file {}:",
            env.display()
        )),
        "{error}"
    );
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().unwrap().stdout == b"0\n"
}

#[test]
fn a_missing_or_unreadable_secret_file_is_refused_by_check_config_and_serve() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("secretgone");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    // Root reads any file: the unreadable case is checked when the tests run unprivileged.
    let locked = dir.path().join("secrets/locked.env");
    write_file(&locked, "A=b\n");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cases = vec![
        ("ssh_key", "keys/site"),
        ("known_hosts", "keys/known_hosts"),
        ("git_credentials", "secrets/site.git-credentials"),
        ("env_file", "secrets/site.env"),
    ];
    if !is_root() {
        cases.push(("env_file", "secrets/locked.env"));
    }
    for (key, file) in cases {
        let config = write_config(
            dir.path(),
            "",
            &[ProjectSpec::new("site", &repo.path, "true")],
        );
        add_to_project(&config, "site", &format!("{key} = \"{file}\""));
        let full = dir.path().join(file);
        for command in ["check-config", "serve"] {
            let out = Command::new(BIN)
                .args([command, "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{command} {key}: {stderr}");
            assert!(
                stderr.contains(&format!("key `projects.site.{key}`"))
                    && stderr.contains(&format!("cannot read {}", full.display())),
                "{command} {key}: {stderr}"
            );
        }
    }
}

/// `sshd` on a loopback port with its own host key, key-only logins for the current user.
struct Sshd {
    server: Option<Server>,
    dir: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, host_key: &Path, port: Option<u16>) -> Sshd {
        // As root, sshd insists on its privilege separation directory.
        if is_root() {
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        for _ in 0..5 {
            let port = port.unwrap_or_else(|| {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().port()
            });
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                     PubkeyAuthentication yes\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\nPidFile none\n",
                    host_key.display(),
                    dir.join("authorized_keys").display()
                ),
            )
            .unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sshd runs (Debian package openssh-server)");
            let stderr = child.stderr.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            let server = Server { child, port };
            let mut said = Vec::new();
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
                if line.contains("Server listening on") {
                    std::thread::spawn(move || for _ in rx {});
                    return Sshd {
                        server: Some(server),
                        dir: dir.to_path_buf(),
                    };
                }
                said.push(line);
            }
            eprintln!("sshd on port {port} did not start: {said:?}");
        }
        panic!("sshd does not start");
    }

    fn port(&self) -> u16 {
        self.server.as_ref().unwrap().port
    }

    /// Stops sshd and starts it again on the same port with another host key.
    fn restart_with(&mut self, host_key: &Path) {
        let port = self.port();
        self.server = None;
        *self = Sshd::start(&self.dir.clone(), host_key, Some(port));
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// `[127.0.0.1]:PORT TYPE KEY`, a known_hosts line for a host key.
fn known_hosts_line(host_key: &Path, port: u16) -> String {
    let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let mut fields = public.split_whitespace();
    let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
    format!("[127.0.0.1]:{port} {kind} {key}\n")
}

fn fingerprint(host_key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-f"])
        .arg(host_key.with_extension("pub"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn an_ssh_key_reaches_a_real_sshd_trusting_its_host_key_on_first_use() {
    let dir = TempDir::new("sshkey");
    let repo = served_repo(dir.path(), &[("index.html", "over ssh")]);
    let sshd_dir = dir.path().join("sshd");
    std::fs::create_dir_all(&sshd_dir).unwrap();
    let (host_a, host_b) = (sshd_dir.join("host_a"), sshd_dir.join("host_b"));
    keygen(&host_a);
    keygen(&host_b);
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    keygen(&dir.path().join("keys/site"));
    std::fs::copy(
        dir.path().join("keys/site.pub"),
        sshd_dir.join("authorized_keys"),
    )
    .unwrap();
    let mut sshd = Sshd::start(&sshd_dir, &host_a, None);
    let port = sshd.port();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let url = format!(
        "ssh://{}@127.0.0.1:{port}{}",
        user.trim(),
        dir.path().join("srv/site.git").display()
    );
    let specs = ["site", "pinned", "mispinned"]
        .map(|name| ProjectSpec::new(name, Path::new(&url), "cat index.html"));
    let config = write_config(dir.path(), "", &specs);
    for name in ["site", "pinned", "mispinned"] {
        add_to_project(&config, name, "ssh_key = \"keys/site\"");
    }
    write_file(
        &dir.path().join("keys/known_hosts"),
        &known_hosts_line(&host_b, port),
    );
    write_file(
        &dir.path().join("keys/old_hosts"),
        &known_hosts_line(&host_a, port),
    );
    add_to_project(&config, "pinned", "known_hosts = \"keys/known_hosts\"");
    add_to_project(&config, "mispinned", "known_hosts = \"keys/old_hosts\"");

    let d = Daemon::start(&config);
    let (_, site) = d.create_hook("site", "main");
    let first = d.trigger(&site);
    d.wait_state(&first, "READY", T);
    let log = d.job_log(&first);
    assert!(log.contains("over ssh"), "{log}");
    let known_hosts = d.state_dir().join("known_hosts");
    let trusted = format!(
        "[deployhook] trusted a new SSH host key on first use, added to {}: 256 {} [127.0.0.1]:{port} (ED25519)",
        known_hosts.display(),
        fingerprint(&host_a)
    );
    assert!(log.contains(&trusted), "{trusted:?} not in:\n{log}");
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        known_hosts_line(&host_a, port)
    );

    // A new commit, the same host key: fetched, nothing newly trusted.
    let head = repo.commit(&[("index.html", "second")], "second");
    git(&repo.path, &["push", "-q", "../srv/site.git", "main"]);
    let second = d.trigger(&site);
    let job = d.wait_state(&second, "READY", T);
    assert_eq!(job["commit"], head.as_str());
    assert!(!d.job_log(&second).contains("trusted a new"));

    // The server's host key changes: the job fails, saying which file to fix.
    sshd.restart_with(&host_b);
    let changed = d.trigger(&site);
    let job = d.wait_state(&changed, "ERROR", T);
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("SSH host key of the repository's server changed")
            && error.contains(&format!(
                "ssh-keygen -R '[127.0.0.1]:{port}' -f {}",
                known_hosts.display()
            )),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        known_hosts_line(&host_a, port),
        "a changed key must not be trusted"
    );

    // A pinned file is checked strictly: the right key works, a stale one fails.
    let (_, pinned) = d.create_hook("pinned", "main");
    let ok = d.trigger(&pinned);
    d.wait_state(&ok, "READY", T);
    assert!(!d.job_log(&ok).contains("trusted a new"));
    let (_, mispinned) = d.create_hook_unverified("mispinned", "main");
    let stale = d.trigger(&mispinned);
    let job = d.wait_state(&stale, "ERROR", T);
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "does not match the pinned known_hosts file {}",
            dir.path().join("keys/old_hosts").display()
        )),
        "{error}"
    );
}
