//! Journal scale and retention figures (printed, not asserted):
//!
//! 1. Listing the newest 50 jobs of one hook (which has 200 jobs, as under the default
//!    `keep_jobs`), the newest 50 overall, and start-up (open the file, read the open jobs) with
//!    1,000 and with 1,000,000 jobs in the journal, the rest spread over 999 other hooks.
//!    Listings are index range scans, so the two rows should be close; the ratio is printed.
//! 2. Retention: 100,000 triggers of one hook through the running daemon (keep_jobs = 200), then
//!    the journal's size once pruning caught up.
//!
//! Run with `cargo bench --bench journal`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use deployhook::harness::hash_secret;
use deployhook::harness::{Hook, JobFilter, Journal, Op};
use std::time::{Duration, Instant};

const HOOKS: usize = 1000;
const FILL_THREADS: usize = 256;
/// Jobs of the hook whose listing is timed.
const SUBJECT_JOBS: usize = 200;

fn open(path: &std::path::Path) -> Journal {
    let (journal, writer) = Journal::open(path).unwrap();
    std::thread::spawn(move || writer.run(|_| {}, |_| {}));
    journal
}

/// A journal with `jobs` jobs spread over `HOOKS` hooks.
fn fill(path: &std::path::Path, jobs: usize) {
    let journal = open(path);
    for h in 0..HOOKS {
        let hook = Hook {
            id: format!("hook_{h:012}"),
            name: format!("hook {h}"),
            project: "site".into(),
            branch: "main".into(),
            created_at: 1,
            last_triggered_at: None,
        };
        journal
            .submit(Op::CreateHook {
                hook,
                secret: hash_secret(&format!("secret{h}")),
            })
            .unwrap();
    }
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..FILL_THREADS)
        .map(|_| {
            let (journal, next) = (journal.clone(), next.clone());
            std::thread::spawn(move || loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= jobs {
                    break;
                }
                // Hook 0 gets the first SUBJECT_JOBS jobs, the others share the rest.
                let hook = if n < SUBJECT_JOBS {
                    0
                } else {
                    1 + n % (HOOKS - 1)
                };
                {
                    journal
                        .submit(Op::Trigger {
                            secret: hash_secret(&format!("secret{hook}")),
                            project: "site".into(),
                            job_id: format!("{n:020}"),
                            now: n as u64,
                            not_before: None,
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Median time of `f` over `runs` runs.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

struct Scale {
    jobs: usize,
    fill: Duration,
    hook_page: Duration,
    global_page: Duration,
    startup: Duration,
    bytes: u64,
}

fn measure(jobs: usize) -> Scale {
    let dir = TempDir::new("bench-scale");
    let path = dir.path().join(deployhook::harness::FILE_NAME);
    let t0 = Instant::now();
    fill(&path, jobs);
    let fill_time = t0.elapsed();
    std::thread::sleep(Duration::from_millis(200)); // the filling writer lets go of the file
    let startup = median(5, || {
        let (journal, _writer) = Journal::open(&path).unwrap();
        let open = journal.open_jobs().unwrap();
        assert_eq!(open.len(), HOOKS.min(jobs - SUBJECT_JOBS + 1));
    });
    let journal = open(&path);
    let hook = JobFilter {
        hook: Some("hook_000000000000".into()),
        limit: 50,
        ..Default::default()
    };
    let all = JobFilter {
        limit: 50,
        ..Default::default()
    };
    let hook_page = median(200, || {
        assert_eq!(journal.list_jobs(&hook).unwrap().0.len(), 50)
    });
    let global_page = median(200, || {
        assert_eq!(journal.list_jobs(&all).unwrap().0.len(), 50)
    });
    Scale {
        jobs,
        fill: fill_time,
        hook_page,
        global_page,
        startup,
        bytes: journal.file_bytes(),
    }
}

fn retention(keep: usize, total: usize) -> (usize, Duration, u64, usize) {
    let s = setup_in(
        TempDir::new("bench-retain"),
        "true",
        &[("a", "1")],
        &format!("keep_jobs = {keep}"),
        Daemon::start_logging_to_file,
    );
    let (d, hook, path) = (&s.daemon, &s.hook, &s.path);
    const CLIENTS: usize = 32;
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, path) = (d.public, path.clone());
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Read, Write};
                let s = std::net::TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                // One write per request: written in pieces, Nagle's algorithm would stall each.
                let req = format!("POST {path} HTTP/1.1\r\nHost: b\r\n\r\n");
                for _ in 0..total / CLIENTS {
                    w.write_all(req.as_bytes()).unwrap();
                    let mut line = String::new();
                    let mut len = 0;
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.strip_prefix("Content-Length: ") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = t0.elapsed();
    let listing = format!("/jobs?hook={hook}&limit=500");
    wait_until(Duration::from_secs(120), || {
        http(d.status, "GET", &listing, &[], b"").json()["jobs"]
            .as_array()
            .unwrap()
            .len()
            <= 201
    });
    let kept = http(d.status, "GET", &listing, &[], b"").json()["jobs"]
        .as_array()
        .unwrap()
        .len();
    let bytes = std::fs::metadata(d.journal_path()).unwrap().len();
    (total, took, bytes, kept)
}

fn main() {
    println!("journal scale: newest 50 of one hook / newest 50 overall / start-up, median");
    println!(
        "{:>10} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "jobs", "fill", "hook page", "global page", "start-up", "file"
    );
    let rows: Vec<Scale> = [1_000, 1_000_000].into_iter().map(measure).collect();
    for r in &rows {
        println!(
            "{:>10} {:>9.1}s {:>10.0}µs {:>10.0}µs {:>10.2}ms {:>9.1}MiB",
            r.jobs,
            r.fill.as_secs_f64(),
            r.hook_page.as_secs_f64() * 1e6,
            r.global_page.as_secs_f64() * 1e6,
            r.startup.as_secs_f64() * 1e3,
            r.bytes as f64 / 1048576.0
        );
    }
    let (small, big) = (&rows[0], &rows[1]);
    println!(
        "ratio 1M / 1k: hook page {:.2}x, global page {:.2}x, start-up {:.2}x",
        big.hook_page.as_secs_f64() / small.hook_page.as_secs_f64(),
        big.global_page.as_secs_f64() / small.global_page.as_secs_f64(),
        big.startup.as_secs_f64() / small.startup.as_secs_f64()
    );
    let (total, took, bytes, kept) = retention(200, 100_000);
    println!(
        "retention: {total} triggers of one hook in {:.1} s, keep_jobs 200: {kept} jobs listed, journal {:.1} MiB",
        took.as_secs_f64(),
        bytes as f64 / 1048576.0
    );
}
