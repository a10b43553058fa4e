//! Long polls on hook URLs: 5,000 callers waiting at once (`…/jobs/{id}?wait=60` on a job
//! that keeps building) while triggers keep arriving on other hooks from 16 keep-alive
//! clients. Baseline, measured in the same run: the same triggers with nobody waiting.
//! Prints RSS, threads and trigger throughput for both; asserts nothing. Run with
//! `cargo bench --bench longpoll`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const WAITERS: usize = 5_000;
const CLIENTS: usize = 16;
const RUN: Duration = Duration::from_secs(5);

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

fn triggers_per_sec(addr: SocketAddr, hooks: &[String]) -> f64 {
    let until = Instant::now() + RUN;
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = hooks[i % hooks.len()].clone();
            std::thread::spawn(move || {
                let (_, statuses) = keep_alive_posts(addr, path, until);
                statuses.iter().filter(|s| **s == 201).count()
            })
        })
        .collect();
    let created: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    created as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    raise_nofile();
    let dir = TempDir::new("bench-longpoll");
    let gate = dir.path().join("go");
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let slow = format!("while [ ! -f '{}' ]; do sleep 0.1; done", gate.display());
    let config = write_config(
        dir.path(),
        "workers = 2",
        &[
            ProjectSpec::new("slow", &repo.path, &slow),
            ProjectSpec::new("site", &repo.path, "true"),
        ],
    );
    let d = Daemon::start_logging_to_file(&config);
    let pid = d.pid();
    let (_, slow_hook) = d.create_hook("slow", "main");
    let hooks: Vec<String> = (0..CLIENTS)
        .map(|_| d.create_hook("site", "main").1)
        .collect();
    let job = d.trigger(&slow_hook);
    d.wait_state(&job, "BUILDING", Duration::from_secs(30));

    let base_rss = rss_kib(pid);
    let base_threads = threads(pid);
    let base_rate = triggers_per_sec(d.public, &hooks);

    let req = format!("GET {slow_hook}/jobs/{job}?wait=60 HTTP/1.1\r\nHost: bench\r\n\r\n");
    let waiting: Vec<TcpStream> = (0..WAITERS)
        .map(|_| {
            let mut c = TcpStream::connect(d.public).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect();
    let held = wait_until(Duration::from_secs(30), || {
        metric(&d, "deployhook_waiting_callers") as usize == WAITERS
    });
    let wait_rss = rss_kib(pid);
    let wait_threads = threads(pid);
    let wait_rate = triggers_per_sec(d.public, &hooks);
    let still = metric(&d, "deployhook_waiting_callers") as u64;

    // Release them all: the job ends and every caller is answered.
    let t0 = Instant::now();
    std::fs::write(&gate, "").unwrap();
    let mut answered = 0;
    for mut c in waiting {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 512];
        if c.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"))
        {
            answered += 1;
        }
    }
    let release = t0.elapsed();

    println!(
        "## Long polls: {WAITERS} callers waiting on a hook URL while {CLIENTS} clients trigger\n"
    );
    println!("| run | waiting | RSS | threads | triggers/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| baseline | 0 | {:.1} MiB | {base_threads} | {base_rate:.0} |",
        base_rss as f64 / 1024.0
    );
    println!(
        "| with waiters | {still}{} | {:.1} MiB | {wait_threads} | {wait_rate:.0} |",
        if held { "" } else { " (not all held)" },
        wait_rss as f64 / 1024.0
    );
    println!(
        "\nwith/without waiters: triggers/s {:.2}x, RSS {:+.1} MiB ({:.0} bytes per waiter), threads {:+}",
        wait_rate / base_rate.max(1.0),
        (wait_rss as f64 - base_rss as f64) / 1024.0,
        (wait_rss as f64 - base_rss as f64) * 1024.0 / WAITERS as f64,
        wait_threads as i64 - base_threads as i64
    );
    println!(
        "releasing: {answered} of {WAITERS} callers answered 200 within {:.2} s of the job's end",
        release.as_secs_f64()
    );
}
