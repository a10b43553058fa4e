//! Availability under a connection flood: 600 slowloris connections (a partial head, one more
//! byte a second, reconnecting when cut off) and 600 idle ones (reconnecting when closed) on
//! EACH listener, while probes call a hook URL and `/status` every half second.
//!
//! Goal (issue "HTTP edge"): at least 19 of 20 probes on each listener answered within 1 s,
//! RSS under 64 MB, threads bounded. Baseline, measured in the same run: the same probes with
//! no flood. Run with `cargo bench --bench flood`; it prints figures and asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SLOW: usize = 600;
const IDLE: usize = 600;
const PROBES: usize = 20;
const PROBE_EVERY: Duration = Duration::from_millis(500);

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Keeps `count` attacking connections open to `addr` until `stop`: slowloris ones trickle a
/// byte a second, idle ones send nothing. A connection the server closes is opened again.
fn attack(
    addr: SocketAddr,
    count: usize,
    slow: bool,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
) {
    let connect = || {
        let c = TcpStream::connect(addr).ok()?;
        c.set_nonblocking(true).ok()?;
        if slow {
            (&c).write_all(b"POST /v1/integrations/deploy/site/x HTTP/1.1\r\nHost: x\r\n")
                .ok()?;
        }
        Some(c)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| connect()).collect();
    while !stop.load(Ordering::Relaxed) {
        let mut alive = 0;
        for slot in &mut conns {
            let keep = match slot {
                Some(c) => {
                    // An answer (a 408) or a close means the server cut it off.
                    let mut buf = [0u8; 512];
                    let alive = matches!(std::io::Read::read(c, &mut buf),
                        Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
                    alive && (!slow || c.write_all(b"a").is_ok())
                }
                None => false,
            };
            if !keep {
                *slot = connect();
            }
            alive += usize::from(slot.is_some());
        }
        open.store(alive, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct Probes {
    within_1s: usize,
    p50: Duration,
    max: Duration,
    ok: usize,
}

fn probe(s: &Setup) -> (Probes, Probes, u64, usize) {
    let pid = s.daemon.pid();
    let (mut public, mut status) = (Vec::new(), Vec::new());
    let (mut public_ok, mut status_ok) = (0, 0);
    let (mut rss, mut most_threads) = (0, 0);
    for _ in 0..PROBES {
        let t0 = Instant::now();
        public_ok += usize::from(http(s.daemon.public, "POST", &s.path, &[], b"").status == 201);
        public.push(t0.elapsed());
        let t0 = Instant::now();
        status_ok += usize::from(http(s.daemon.status, "GET", "/status", &[], b"").status == 200);
        status.push(t0.elapsed());
        rss = rss.max(rss_kib(pid));
        most_threads = most_threads.max(threads(pid));
        std::thread::sleep(PROBE_EVERY);
    }
    let summary = |mut lat: Vec<Duration>, ok| {
        lat.sort();
        Probes {
            within_1s: lat.iter().filter(|d| **d <= Duration::from_secs(1)).count(),
            p50: lat[lat.len() / 2],
            max: lat[lat.len() - 1],
            ok,
        }
    };
    (
        summary(public, public_ok),
        summary(status, status_ok),
        rss,
        most_threads,
    )
}

fn main() {
    raise_nofile();
    let s = setup("bench-flood", "true", &[("a", "1")], "");
    let (base_pub, base_stat, base_rss, base_threads) = probe(&s);

    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    let mut counters = Vec::new();
    for addr in [s.daemon.public, s.daemon.status] {
        for slow in [true, false] {
            let (stop, open) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
            counters.push(open.clone());
            let count = if slow { SLOW } else { IDLE };
            attackers.push(std::thread::spawn(move || {
                attack(addr, count, slow, stop, open)
            }));
        }
    }
    // Let the flood fill up and go through a first round of timeouts and reconnects.
    wait_until(Duration::from_secs(30), || {
        counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<usize>()
            >= 2 * (SLOW + IDLE) * 9 / 10
    });
    let (flood_pub, flood_stat, flood_rss, flood_threads) = probe(&s);
    let attacking: usize = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }

    println!("## Connection flood: {SLOW} slowloris + {IDLE} idle connections on each listener");
    println!("(attacking connections open at the end of the probes: {attacking})\n");
    println!(
        "| run | listener | probes ok | within 1 s | p50 ms | max ms | RSS max | threads max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |run: &str, which: &str, p: &Probes, rss: u64, threads: usize| {
        println!(
            "| {run} | {which} | {}/{PROBES} | {}/{PROBES} | {:.2} | {:.2} | {:.1} MiB | {threads} |",
            p.ok,
            p.within_1s,
            p.p50.as_secs_f64() * 1e3,
            p.max.as_secs_f64() * 1e3,
            rss as f64 / 1024.0
        )
    };
    row("baseline", "hook", &base_pub, base_rss, base_threads);
    row("baseline", "status", &base_stat, base_rss, base_threads);
    row("flood", "hook", &flood_pub, flood_rss, flood_threads);
    row("flood", "status", &flood_stat, flood_rss, flood_threads);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "\nflood/baseline: hook p50 {:.2}x, status p50 {:.2}x, RSS {:.2}x, threads {:+}",
        ratio(flood_pub.p50, base_pub.p50),
        ratio(flood_stat.p50, base_stat.p50),
        flood_rss as f64 / base_rss.max(1) as f64,
        flood_threads as i64 - base_threads as i64
    );
    let met = flood_pub.within_1s >= 19 && flood_stat.within_1s >= 19 && flood_rss < 64 * 1024;
    println!(
        "goal (>= 19/20 within 1 s on each listener, RSS < 64 MB): {}",
        if met { "met" } else { "NOT met" }
    );
}
