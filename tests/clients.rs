//! Real HTTP clients against the real daemon: the programs and libraries that CMS plugins,
//! cron scripts and CI jobs call hook URLs with. Each makes, on one pooled connection where
//! it pools: a trigger, a trigger with a body past the limit (`413`, sent while the client is
//! still uploading), a trigger again (the pool must have learnt that the connection closed),
//! and a trigger with a small body (with `Expect: 100-continue` where the client can send it;
//! each client's expect timeout is set longer than its request timeout, so a missing
//! `100 Continue` fails instead of stalling). The scripts are in `tests/clients/`.
//!
//! A client that is not installed is skipped with a line saying so; under CI (`CI=true`),
//! where `.ci/run` installs them all, a missing client fails the test.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXPECTED: &str = "201 413 201 201";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `program` can run; if not, says so (and fails under CI).
fn available(client: &str, program: &str, probe: &[&str]) -> bool {
    let ok = installed(program)
        && Command::new(program)
            .args(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        skip_unless_ci(&format!(
            "{client}: `{program} {}` does not run here (.ci/run installs it)",
            probe.join(" ")
        ));
    }
    ok
}

/// Runs a client with the hook URL in `HOOK_URL`; returns its last line of output.
fn run(url: &str, dir: &Path, program: &str, args: &[&str]) -> String {
    let mut child = Command::new(program)
        .args(args)
        .env("HOOK_URL", url)
        .env("HOME", dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("").trim().to_string();
    if last.is_empty() {
        return format!(
            "no output; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    last
}

/// One daemon for a client's run, and the jobs it made, to check nothing was lost or added.
fn check(client: &str, program: &str, args: &[&str], expected: &str) {
    let s = setup(&format!("client-{client}"), "true", &[("a", "1")], "");
    let url = format!("http://{}{}", s.daemon.public, s.path);
    let got = run(&url, s.dir.path(), program, args);
    assert_eq!(got, expected, "{client}");
    let made = s.daemon.jobs_of(&s.hook);
    assert_eq!(made, expected.matches("201").count(), "{client}: jobs made");
}

#[test]
fn python_http_client() {
    if available("http.client", "python3", &["-c", "import http.client"]) {
        let script = scripts().join("http_client.py");
        check(
            "http.client",
            "python3",
            &[script.to_str().unwrap()],
            EXPECTED,
        );
    }
}

#[test]
fn python_pooled_libraries() {
    let script = scripts().join("python_pools.py");
    for lib in ["urllib", "requests", "urllib3", "httpx"] {
        let import = format!("import {lib}");
        if available(lib, "python3", &["-c", &import]) {
            check(lib, "python3", &[script.to_str().unwrap(), lib], EXPECTED);
        }
    }
}

#[test]
fn node_fetch_and_http() {
    if available("node", "node", &["-e", "fetch"]) {
        for script in ["node_fetch.mjs", "node_http.js"] {
            let path = scripts().join(script);
            check(script, "node", &[path.to_str().unwrap()], EXPECTED);
        }
    }
}

#[test]
fn go_net_http() {
    if available("go", "go", &["version"]) {
        let path = scripts().join("go_client.go");
        check("go", "go", &["run", path.to_str().unwrap()], EXPECTED);
    }
}

#[test]
fn php_curl() {
    if available(
        "php-curl",
        "php",
        &["-r", "exit(function_exists('curl_init') ? 0 : 1);"],
    ) {
        let path = scripts().join("php_curl.php");
        check("php-curl", "php", &[path.to_str().unwrap()], EXPECTED);
    }
}

#[test]
fn java_http_client() {
    if available("java", "java", &["-version"]) {
        let path = scripts().join("JavaClient.java");
        check("java", "java", &[path.to_str().unwrap()], EXPECTED);
    }
}

#[test]
fn curl_reuses_sends_expect_and_uploads_from_stdin() {
    if !available("curl", "curl", &["--version"]) {
        return;
    }
    let s = setup("client-curl", "true", &[("a", "1")], "");
    let url = format!("http://{}{}", s.daemon.public, s.path);
    let big = s.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 1 << 20]).unwrap();
    let small = s.dir.path().join("small");
    std::fs::write(&small, vec![b'x'; 2048]).unwrap();
    let (big, small) = (
        format!("@{}", big.display()),
        format!("@{}", small.display()),
    );
    let fmt = "%{http_code} ";
    let common = ["-s", "-o", "/dev/null", "-w", fmt, "--max-time", "20"];
    let mut args: Vec<&str> = Vec::new();
    for (i, extra) in [
        &["-X", "POST"][..],
        &["--data-binary", &big],
        &["-X", "POST"],
        &[
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
            "--data-binary",
            &small,
        ],
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            args.push("--next");
        }
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        args.push(&url);
    }
    let out = Command::new("curl").args(&args).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), EXPECTED);
    // `-T -` streams stdin chunked with Expect: 100-continue.
    let mut child = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(["--expect100-timeout", "30", "-X", "POST", "-T", "-", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"payload from a pipe\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
}

#[test]
fn wget_reads_its_413_while_uploading() {
    if !available("wget", "wget", &["--version"]) {
        return;
    }
    let s = setup("client-wget", "true", &[("a", "1")], "");
    let url = format!("http://{}{}", s.daemon.public, s.path);
    let big = s.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 4 << 20]).unwrap();
    let out = Command::new("wget")
        .args(["-S", "-O", "/dev/null", "--tries=1", "--timeout=20"])
        .arg(format!("--post-file={}", big.display()))
        .arg(&url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP/1.1 413"), "{err}");
    let out = Command::new("wget")
        .args(["-q", "-O", "-", "--tries=1", "--timeout=20", "--post-data="])
        .arg(&url)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"PENDING\""));
}

#[test]
fn apache_bench_keep_alive_over_http_1_0() {
    if !available("ab", "ab", &["-V"]) {
        return;
    }
    let s = setup("client-ab", "true", &[("a", "1")], "");
    let url = format!("http://{}{}", s.daemon.public, s.path);
    // -s 5: a response the server fails to mark keep-alive would make ab wait for the close
    // and time out.
    let out = Command::new("ab")
        .args(["-k", "-n", "50", "-c", "2", "-s", "5", "-m", "POST", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Complete requests:      50"), "{text}");
    assert!(text.contains("Failed requests:        0"), "{text}");
    assert!(text.contains("Keep-Alive requests:    50"), "{text}");
    assert!(!text.contains("Non-2xx responses"), "{text}");
}
