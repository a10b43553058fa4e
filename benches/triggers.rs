//! Trigger throughput and latency over loopback, with 1 and 64 concurrent keep-alive clients,
//! and how many triggers share one journal commit (group commit).
//!
//! Baseline, measured in the same run: the same request to a secret that does not exist, which
//! goes through the same connection layer and a journal read but no commit. The ratio shows
//! what durability costs. Run with `cargo bench --bench triggers`; it prints figures and asserts
//! nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(4);

struct Figures {
    requests: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    statuses: Vec<u16>,
}

fn load(addr: SocketAddr, paths: &[String], clients: usize) -> Figures {
    let until = Instant::now() + RUN;
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let path = paths[i % paths.len()].clone();
            std::thread::spawn(move || keep_alive_posts(addr, path, until))
        })
        .collect();
    let mut lat = Vec::new();
    let mut statuses = Vec::new();
    for t in threads {
        let (l, s) = t.join().unwrap();
        lat.extend(l);
        statuses.extend(s);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    statuses.sort();
    statuses.dedup();
    Figures {
        requests: lat.len(),
        per_sec: lat.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        statuses,
    }
}

fn main() {
    let dir = TempDir::new("bench-triggers");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "workers = 2",
        &[ProjectSpec::new("site", &repo.path, "true")],
    );
    let d = Daemon::start_logging_to_file(&config);
    let hooks: Vec<String> = (0..64).map(|_| d.create_hook("site", "main").1).collect();
    let missing = vec!["/v1/integrations/deploy/site/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string()];

    println!(
        "deployhook trigger benchmark: {} s per row, loopback, keep-alive clients",
        RUN.as_secs()
    );
    println!(
        "{:<34} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "case", "clients", "req/s", "p50", "p99", "vs base"
    );
    for clients in [1, 64] {
        let base = load(d.public, &missing, clients);
        assert_eq!(base.statuses, [404]);
        let (c0, o0) = (
            metric(&d, "deployhook_journal_commits_total"),
            metric(&d, "deployhook_journal_ops_total"),
        );
        let trig = load(d.public, &hooks, clients);
        let (c1, o1) = (
            metric(&d, "deployhook_journal_commits_total"),
            metric(&d, "deployhook_journal_ops_total"),
        );
        assert_eq!(trig.statuses, [201]);
        for (name, f, ratio) in [
            ("baseline: unknown secret (no commit)", &base, 1.0),
            ("durable trigger", &trig, trig.per_sec / base.per_sec),
        ] {
            println!(
                "{:<34} {:>8} {:>10.0} {:>8.2}ms {:>8.2}ms {:>9.2}x",
                name,
                clients,
                f.per_sec,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3,
                ratio
            );
        }
        let commits = c1 - c0;
        println!(
            "  {} clients: {} triggers, {} journal commits, {:.1} ops per commit (ops include build start/finish)",
            clients,
            trig.requests,
            commits,
            (o1 - o0) / commits.max(1.0)
        );
    }
    println!(
        "journal file: {} KiB, daemon RSS: {} KiB",
        std::fs::metadata(d.journal_path())
            .map(|m| m.len() / 1024)
            .unwrap_or(0),
        rss_kib(d.pid())
    );
}
