//! deployhook against its baselines, measured in one run on loopback (`benches/run`):
//!
//! 1. Trigger throughput and p50/p99 latency (wrk, 1 and 64 connections) for deployhook (durable),
//!    a minimal tiny_http server answering a fixed 60-byte body (the ceiling of the HTTP layer),
//!    and adnanh/webhook with a hook that appends a line to a file, waiting for the command and
//!    not. Afterwards, what was actually done: jobs in the journal, lines in the file.
//! 2. Resident memory of each server, idle and at the end of the load.
//! 3. Cancel latency: from the superseding trigger's 201 to the old build's process group gone.
//! 4. Checkout: from a job's start to its build command running, on a repository of 5,000 files
//!    and 300 commits, against a plain `git clone --depth 1` of it.
//!
//! Figures and ratios are printed, with each goal marked met or short; nothing is asserted.
//! Needs `wrk` and `webhook` on PATH (benches/run installs them).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUN_SECS: u64 = 5;
const CEILING_BODY: &[u8; 60] =
    b"{\"job\":{\"id\":\"AAAAAAAAAAAAAAAAAAAA\",\"state\":\"PENDING\"}}\n....";

/// The ceiling server, run as a child process of this benchmark (`compare --ceiling PORT`):
/// tiny_http answering every request with the same 60 bytes.
fn serve_ceiling(port: u16) -> ! {
    let server = tiny_http::Server::http(("127.0.0.1", port)).expect("ceiling binds");
    let server = std::sync::Arc::new(server);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    let _ = req.respond(
                        tiny_http::Response::from_data(&CEILING_BODY[..]).with_status_code(201),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "port {port} never opened"
    );
}

struct Load {
    requests: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    errors: u64,
}

fn ms(text: &str) -> f64 {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_alphabetic()).unwrap_or(t.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => v,
    }
}

fn wrk(url: &str, connections: u32, script: &std::path::Path) -> Load {
    let out = Command::new("wrk")
        .args([
            "-t",
            &connections.min(2).to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{RUN_SECS}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs (benches/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let find = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or("")
            .to_string()
    };
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let errors: u64 = find("Socket errors:")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    Load {
        requests,
        per_sec: find("Requests/sec:")
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: ms(find("50%").split_whitespace().nth(1).unwrap_or("nan")),
        p99_ms: ms(find("99%").split_whitespace().nth(1).unwrap_or("nan")),
        non_2xx: find("Non-2xx or 3xx responses:")
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        errors,
    }
}

fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

struct Row {
    name: String,
    connections: u32,
    load: Load,
    done: u64,
    rss_idle: f64,
    rss_end: f64,
}

fn print_rows(round: usize, rows: &[Row], ceiling: &[(u32, f64)]) {
    println!("\n1-2. Trigger throughput, latency, work done, memory, round {round} ({RUN_SECS} s per row, wrk on loopback)");
    println!(
        "{:<28} {:>5} {:>10} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9}",
        "server",
        "conns",
        "req/s",
        "p50 ms",
        "p99 ms",
        "acked",
        "done",
        "lost",
        "RSS idle",
        "RSS end",
        "vs ceil"
    );
    for r in rows {
        let ceil = ceiling
            .iter()
            .find(|(c, _)| *c == r.connections)
            .map_or(f64::NAN, |(_, v)| *v);
        let acked = r.load.requests.saturating_sub(r.load.non_2xx);
        println!(
            "{:<28} {:>5} {:>10.0} {:>9.2} {:>9.2} {:>10} {:>10} {:>8} {:>7.1}M {:>8.1}M {:>8.2}x",
            r.name,
            r.connections,
            r.load.per_sec,
            r.load.p50_ms,
            r.load.p99_ms,
            acked,
            r.done,
            acked.saturating_sub(r.done),
            r.rss_idle,
            r.rss_end,
            r.load.per_sec / ceil
        );
        if r.load.errors > 0 || r.load.non_2xx > 0 {
            println!(
                "{:<28}   ({} socket errors, {} non-2xx answers)",
                "", r.load.errors, r.load.non_2xx
            );
        }
    }
}

/// What one round says about the goals: deployhook at 64 connections against the same round's
/// ceiling and webhook waiting mode, lost triggers, and deployhook's largest RSS.
struct RoundGoals {
    vs_ceiling: f64,
    vs_webhook: f64,
    lost: u64,
    rss_mib: f64,
}

fn round_goals(rows: &[Row], ceiling: &[(u32, f64)], webhook_wait: &[(u32, f64)]) -> RoundGoals {
    let at64 = |v: &[(u32, f64)]| v.iter().find(|(c, _)| *c == 64).map_or(f64::NAN, |p| p.1);
    let d = rows
        .iter()
        .find(|r| r.name.starts_with("deployhook") && r.connections == 64)
        .expect("a deployhook row at 64 connections");
    let acked = d.load.requests.saturating_sub(d.load.non_2xx);
    RoundGoals {
        vs_ceiling: d.load.per_sec / at64(ceiling),
        vs_webhook: d.load.per_sec / at64(webhook_wait),
        // wrk leaves requests in flight at its end out of its count, so done may exceed acked.
        lost: acked.saturating_sub(d.done),
        rss_mib: rows
            .iter()
            .filter(|r| r.name.starts_with("deployhook"))
            .map(|r| r.rss_end.max(r.rss_idle))
            .fold(0.0, f64::max),
    }
}

/// The goals over all rounds: each ratio is taken within its round (the machine's speed drifts
/// between rounds), and the median ratio is held to the goal.
fn print_goals(rounds: &[RoundGoals]) {
    let median_of = |f: &dyn Fn(&RoundGoals) -> f64| median(rounds.iter().map(f).collect());
    let list = |f: &dyn Fn(&RoundGoals) -> f64, digits: usize| {
        rounds
            .iter()
            .map(|r| format!("{:.digits$}", f(r)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "\nGoals over {} rounds (ratios within each round; median held to the goal)",
        rounds.len()
    );
    println!(
        "  deployhook / ceiling at 64 conns, per round: {}",
        list(&|r| r.vs_ceiling, 2)
    );
    println!(
        "  deployhook / webhook waiting at 64 conns, per round: {}",
        list(&|r| r.vs_webhook, 1)
    );
    let vs_ceiling = median_of(&|r| r.vs_ceiling);
    goal(
        "deployhook at 64 conns >= 0.5x the tiny_http ceiling",
        vs_ceiling >= 0.5,
        format!("{vs_ceiling:.2}x"),
    );
    let vs_webhook = median_of(&|r| r.vs_webhook);
    goal(
        "deployhook at 64 conns >= 20x webhook waiting mode",
        vs_webhook >= 20.0,
        format!("{vs_webhook:.1}x"),
    );
    let lost: u64 = rounds.iter().map(|r| r.lost).sum();
    goal(
        "deployhook loses 0 acknowledged triggers",
        lost == 0,
        format!("{lost} lost"),
    );
    let rss = rounds.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
    goal(
        "deployhook RSS <= 30 MB",
        rss <= 30.0 * 1_000_000.0 / 1_048_576.0,
        format!("{rss:.1} MiB"),
    );
}

/// The middle value (the upper one of the two middles for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn goal(what: &str, met: bool, figure: String) {
    println!(
        "  goal: {what:<52} {figure:>10}  {}",
        if met { "met" } else { "SHORT" }
    );
}

/// A deployhook daemon with one hook; builds run `build`. The daemon logs every trigger (its
/// access log) to a file, as it would to journald, rather than into a pipe this process would
/// have to read during the load.
fn deployhook(dir: TempDir, build: &str, extra: &str) -> Setup {
    setup_in(
        dir,
        build,
        &[("a", "1")],
        extra,
        Daemon::start_logging_to_file,
    )
}

fn jobs_in_journal(d: &Daemon) -> u64 {
    let v = http(d.status, "GET", "/status", &[], b"").json();
    v["jobs"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn throughput(
    rows: &mut Vec<Row>,
    ceiling: &mut Vec<(u32, f64)>,
    webhook_wait: &mut Vec<(u32, f64)>,
) {
    let dir = TempDir::new("cmp");
    let post = dir.path().join("post.lua");
    std::fs::write(&post, "wrk.method = \"POST\"\n").unwrap();

    // Ceiling.
    let port = free_port();
    let mut ceil = Command::new(std::env::current_exe().unwrap())
        .args(["--ceiling", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    let idle = rss_mib(ceil.id());
    for c in [1, 64] {
        let load = wrk(&format!("http://127.0.0.1:{port}/"), c, &post);
        ceiling.push((c, load.per_sec));
        let done = load.requests.saturating_sub(load.non_2xx);
        rows.push(Row {
            name: "tiny_http fixed 60 B (ceiling)".into(),
            connections: c,
            done,
            rss_idle: idle,
            rss_end: rss_mib(ceil.id()),
            load,
        });
    }
    kill(&mut ceil);

    // deployhook: one hook, builds that do nothing, so the trigger path is what is measured.
    for c in [1, 64] {
        // Every job stays in the journal (no retention) so that it can be counted.
        let s = deployhook(
            TempDir::new("cmp-dh"),
            "true",
            "workers = 2\nkeep_jobs = 10000000",
        );
        let (d, path) = (&s.daemon, &s.path);
        std::thread::sleep(Duration::from_millis(300));
        let idle = rss_mib(d.pid());
        let before = jobs_in_journal(d);
        let load = wrk(&format!("http://{}{path}", d.public), c, &post);
        let rss_end = rss_mib(d.pid());
        let done = jobs_in_journal(d) - before;
        rows.push(Row {
            name: "deployhook (durable)".into(),
            connections: c,
            load,
            done,
            rss_idle: idle,
            rss_end,
        });
    }

    // webhook, waiting for the command and not.
    let lines = dir.path().join("lines");
    let script = dir.path().join("append.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho x >> {}\n", lines.display()),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    for (name, wait) in [("webhook 2.8 waiting", true), ("webhook 2.8 async", false)] {
        let hooks = dir.path().join("hooks.json");
        let mut f = std::fs::File::create(&hooks).unwrap();
        write!(
            f,
            "[{{\"id\":\"append\",\"execute-command\":\"{}\",\"command-working-directory\":\"{}\",\"include-command-output-in-response\":{wait}}}]",
            script.display(),
            dir.path().display()
        )
        .unwrap();
        for c in [1, 64] {
            let _ = std::fs::remove_file(&lines);
            let port = free_port();
            let mut wh = Command::new("webhook")
                .args([
                    "-hooks",
                    hooks.to_str().unwrap(),
                    "-ip",
                    "127.0.0.1",
                    "-port",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("webhook runs (benches/run installs it)");
            wait_port(port);
            let idle = rss_mib(wh.id());
            let load = wrk(&format!("http://127.0.0.1:{port}/hooks/append"), c, &post);
            let rss_end = rss_mib(wh.id());
            // Let commands still running finish before counting.
            let count = || {
                std::fs::read_to_string(&lines)
                    .map(|t| t.lines().count() as u64)
                    .unwrap_or(0)
            };
            let mut last = count();
            while {
                std::thread::sleep(Duration::from_millis(500));
                let now = count();
                let moving = now != last;
                last = now;
                moving
            } {}
            if wait {
                webhook_wait.push((c, load.per_sec));
            }
            kill(&mut wh);
            rows.push(Row {
                name: name.into(),
                connections: c,
                load,
                done: last,
                rss_idle: idle,
                rss_end,
            });
        }
    }
}

/// 3. From the superseding trigger's 201 to the old build's process group being gone.
fn cancel_latency() -> (f64, f64) {
    let dir = TempDir::new("cmp-cancel");
    let pidfile = dir.path().join("pid");
    let build = format!(
        "echo $$ > {}.tmp && mv {p}.tmp {p}; sleep 60 & sleep 60 & wait",
        pidfile.display(),
        p = pidfile.display()
    );
    let s = deployhook(dir, &build, "workers = 1");
    let (d, path) = (&s.daemon, &s.path);
    let mut samples = Vec::new();
    for _ in 0..20 {
        let _ = std::fs::remove_file(&pidfile);
        let id = d.trigger(path);
        d.wait_state(&id, "BUILDING", Duration::from_secs(30));
        assert!(wait_until(Duration::from_secs(30), || pidfile.exists()));
        std::thread::sleep(Duration::from_millis(50));
        let pgid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let resp = http(d.public, "POST", path, &[], b"");
        let acked = Instant::now();
        assert_eq!(resp.status, 201);
        while deployhook::harness::group_exists(pgid) {
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(acked.elapsed().as_secs_f64() * 1000.0);
        d.wait_state(&id, "CANCELED", Duration::from_secs(10));
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (samples[samples.len() / 2], *samples.last().unwrap())
}

/// A repository of `files` files and `commits` commits, written with git fast-import.
fn synthetic_repo(dir: &std::path::Path, files: usize, commits: usize) -> std::path::PathBuf {
    let path = dir.join("big");
    git(
        dir,
        &[
            "init",
            "-q",
            "--initial-branch=main",
            path.to_str().unwrap(),
        ],
    );
    let mut stream = String::new();
    for c in 0..commits {
        let message = format!("commit {c}");
        stream.push_str(&format!(
            "commit refs/heads/main\ncommitter b <b@x> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + c,
            message.len()
        ));
        let stream_data = |s: &mut String, name: String, body: String| {
            s.push_str(&format!(
                "M 644 inline {name}\ndata {}\n{body}\n",
                body.len()
            ));
        };
        if c == 0 {
            for f in 0..files {
                stream_data(
                    &mut stream,
                    format!("src/d{}/file{f}.txt", f % 50),
                    format!("file {f}\n{}", "lorem ipsum dolor sit amet\n".repeat(20)),
                );
            }
        } else {
            for k in 0..10 {
                let f = (c * 37 + k * 101) % files;
                stream_data(
                    &mut stream,
                    format!("src/d{}/file{f}.txt", f % 50),
                    format!(
                        "file {f} v{c}\n{}",
                        "lorem ipsum dolor sit amet\n".repeat(20)
                    ),
                );
            }
        }
    }
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    git(&path, &["checkout", "-q", "main"]);
    path
}

/// One plain `git clone --depth 1` of `repo` (file://, so it really is shallow), in ms; the
/// tree is then removed.
fn plain_clone(repo: &std::path::Path, dst: &std::path::Path) -> f64 {
    let t0 = Instant::now();
    let ok = Command::new("git")
        .args([
            "clone",
            "-q",
            "--depth",
            "1",
            "--single-branch",
            "--branch",
            "main",
        ])
        .arg(format!("file://{}", repo.display()))
        .arg(dst)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let t = t0.elapsed().as_secs_f64() * 1000.0;
    std::fs::remove_dir_all(dst).unwrap();
    t
}

/// Part 4: job start to build command, against `git clone --depth 1`, the two alternating so
/// that both meet the same disk and cache state; returns (baseline, cold, warm) medians in ms.
/// Plain clone median, the same into a flagged folder (if the file system has the flag), the
/// first job's checkout and the median of the next ones, in ms.
fn checkout() -> (f64, Option<f64>, f64, f64) {
    let dir = TempDir::new("cmp-checkout");
    let repo = synthetic_repo(dir.path(), 5000, 300);
    let out = dir.path().join("started");
    let build = format!("date +%s%3N > {}", out.display());
    let config = write_config(dir.path(), "", &[ProjectSpec::new("site", &repo, &build)]);
    let d = Daemon::start(&config);
    let (_, path) = d.create_hook("site", "main");
    let builds = dir.path().join("state/builds");
    // The same clone into a folder flagged as deployhook flags its builds folder, under a new
    // name each time as job folders have (ext4 picks a top directory's block group from a hash
    // of its name), to tell what the flag does from what the checkout method does.
    let flagged = dir.path().join("flagged");
    std::fs::create_dir_all(&flagged).unwrap();
    let flag_set = deployhook::harness::spread_new_directories(&flagged);
    let (mut plain, mut plain_flagged, mut times) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..8 {
        // A new commit before each job, as a real deploy has.
        let file = repo.join(format!("src/d0/file{}.txt", i * 50));
        std::fs::write(&file, format!("change {i}\n")).unwrap();
        git(&repo, &["commit", "-qam", "change"]);
        plain.push(plain_clone(&repo, &dir.path().join("plain")));
        if flag_set {
            plain_flagged.push(plain_clone(&repo, &flagged.join(format!("plain-{i}"))));
        }
        let id = d.trigger(&path);
        let job = d.wait_state(&id, "READY", Duration::from_secs(120));
        let started = job["startedAt"].as_u64().unwrap() as f64;
        let ran: f64 = std::fs::read_to_string(&out)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        times.push(ran - started);
        // The janitor removes the finished tree in the background, as between real deploys;
        // the next plain clone waits for it so that the deletion does not slow the baseline.
        wait_until(Duration::from_secs(60), || {
            std::fs::read_dir(&builds).is_ok_and(|mut d| d.next().is_none())
        });
    }
    let flagged_median = (!plain_flagged.is_empty()).then(|| median(plain_flagged));
    (
        median(plain),
        flagged_median,
        times[0],
        median(times[1..].to_vec()),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--ceiling") {
        serve_ceiling(args[i + 1].parse().unwrap());
    }
    if Command::new("wrk").arg("--version").output().is_err()
        || Command::new("webhook").arg("-version").output().is_err()
    {
        eprintln!("compare: needs wrk and webhook on PATH; run benches/run, which installs them");
        return;
    }
    println!(
        "deployhook comparison benchmark ({} cores; all servers on 127.0.0.1)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // COMPARE_ONLY=throughput, cancel or checkout runs one part.
    let only = std::env::var("COMPARE_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    if part("throughput") {
        // COMPARE_ROUNDS (default 3): the whole table is measured this many times over.
        let rounds: usize = std::env::var("COMPARE_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
            .max(1);
        let mut goals = Vec::new();
        for round in 1..=rounds {
            let (mut rows, mut ceiling, mut webhook_wait) = (Vec::new(), Vec::new(), Vec::new());
            throughput(&mut rows, &mut ceiling, &mut webhook_wait);
            print_rows(round, &rows, &ceiling);
            goals.push(round_goals(&rows, &ceiling, &webhook_wait));
        }
        print_goals(&goals);
    }

    if part("cancel") {
        let (median, max) = cancel_latency();
        println!(
            "\n3. Cancel latency, superseding 201 -> old build's process group gone (20 runs)"
        );
        println!("  median {median:.1} ms, max {max:.1} ms");
        goal(
            "cancel latency <= 50 ms",
            max <= 50.0,
            format!("{max:.1} ms max"),
        );
    }
    if part("checkout") {
        let (baseline, flagged, cold, warm) = checkout();
        println!("\n4. Checkout, job start -> build command running (5,000 files, 300 commits)");
        println!("  git clone --depth 1 (file://), median of 8: {baseline:.0} ms");
        if let Some(f) = flagged {
            println!(
                "  the same into a top-directory-flagged folder: {f:.0} ms  (deployhook next jobs: {:.2}x of it)",
                warm / f
            );
        }
        println!(
            "  deployhook, first job (mirror created):   {cold:.0} ms  ({:.2}x)",
            cold / baseline
        );
        println!(
            "  deployhook, next 7 jobs, median:           {warm:.0} ms  ({:.2}x)",
            warm / baseline
        );
        goal(
            "checkout <= 0.8x a shallow clone",
            warm / baseline <= 0.8,
            format!("{:.2}x", warm / baseline),
        );
    }
}
