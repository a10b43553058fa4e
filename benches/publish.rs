//! Publishing 5,000 files (3 KiB each, in 50 folders) of which one changed since the previous
//! release, three ways, each into a fresh folder beside the previous release:
//!
//! - deployhook's publish (copy with hard links to the previous release for files of equal
//!   content and mode, one syncfs, the `current` switch);
//! - `rsync -a --link-dest=PREV SRC/ NEW/` (links files whose size and time match PREV's; the
//!   build output here keeps the times of the previous one, rsync's best case);
//! - the same rsync on an output whose files were all written anew, as a build writes them
//!   (new times: rsync copies every file);
//! - a plain `cp -a SRC NEW`.
//!
//! Each is run `RUNS` times, interleaved; medians are printed with their ratio to rsync's in
//! the same run. Nothing is asserted. Run with `cargo bench --bench publish`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use deployhook::harness::{publish, Gate, Publish};
use std::io;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const FILES: usize = 5_000;
const FOLDERS: usize = 50;
const FILE_BYTES: usize = 3 * 1024;
const RUNS: usize = 7;

/// A job nobody stops.
struct Running;

impl Gate for Running {
    fn stopped(&self) -> bool {
        false
    }
    fn unless_stopped(&self, switch: &mut dyn FnMut() -> io::Result<()>) -> Option<io::Result<()>> {
        Some(switch())
    }
}

/// The build output: `FILES` files of pseudo-random bytes under `root/public`.
fn make_site(root: &Path) {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..FILES {
        let path = root.join(format!("public/d{}/f{i}.html", i % FOLDERS));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..FILE_BYTES)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect();
        std::fs::write(path, bytes).unwrap();
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?}");
}

fn timed(f: impl FnOnce()) -> Duration {
    let t0 = Instant::now();
    f();
    t0.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn job_id(run: usize, which: char) -> String {
    format!("{run:07}{}", which.to_string().repeat(13))
}

fn main() {
    if Command::new("rsync").arg("--version").output().is_err() {
        eprintln!("rsync is not installed (apt-get install rsync); nothing to compare against");
        return;
    }
    // Every round's trees are kept until the end: ext4 allocates slowly next to inodes freed
    // seconds earlier (README, top-directory flag), which would tax whichever method makes the
    // most new files.
    let dir = TempDir::new("bench-publish");
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    make_site(&old);
    // The new build: the same output with one file changed, file times kept (rsync's best case).
    run(Command::new("cp").arg("-a").arg(&old).arg(&new));
    std::fs::write(new.join("public/d7/f7.html"), b"changed").unwrap();
    // The same output written anew: equal contents, new modification times.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    run(Command::new("cp")
        .arg("-R")
        .arg(new.join("public"))
        .arg(&fresh));

    let (mut ours, mut rsync, mut rsync_fresh, mut cp) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stats = String::new();
    for r in 0..RUNS {
        let round = dir.path().join(format!("run{r}"));
        let spec = Publish {
            dir: "public".into(),
            to: round.join("ours"),
            keep: 10,
        };
        let (prev, next) = (job_id(r, 'a'), job_id(r, 'b'));
        publish(&prev, &old, &spec, &Running, &mut |_| {}).unwrap();
        let prev_rsync = round.join("rsync-prev");
        run(Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", old.join("public").display()))
            .arg(&prev_rsync));
        let mut lines = Vec::new();
        ours.push(timed(|| {
            publish(&next, &new, &spec, &Running, &mut |l| {
                lines.push(l.to_string())
            })
            .unwrap();
        }));
        stats = lines
            .into_iter()
            .find(|l| l.contains("hard-linked"))
            .unwrap_or_default();
        rsync.push(timed(|| {
            run(Command::new("rsync")
                .arg("-a")
                .arg(format!("--link-dest={}", prev_rsync.display()))
                .arg(format!("{}/", new.join("public").display()))
                .arg(round.join("rsync-new")));
        }));
        rsync_fresh.push(timed(|| {
            run(Command::new("rsync")
                .arg("-a")
                .arg(format!("--link-dest={}", prev_rsync.display()))
                .arg(format!("{}/", fresh.join("public").display()))
                .arg(round.join("rsync-fresh")));
        }));
        cp.push(timed(|| {
            run(Command::new("cp")
                .arg("-a")
                .arg(new.join("public"))
                .arg(round.join("cp-new")));
        }));
    }
    let (ours, rsync, cp) = (median(ours), median(rsync), median(cp));
    let rsync_fresh = median(rsync_fresh);
    println!(
        "publish {FILES} files ({} KiB each, {FOLDERS} folders), one changed; median of {RUNS} runs",
        FILE_BYTES / 1024
    );
    println!("{:<44} {:>9} {:>10}", "method", "ms", "vs rsync");
    for (name, d) in [
        ("deployhook publish (links, syncfs, switch)", ours),
        ("rsync -a --link-dest=PREV SRC/ NEW/", rsync),
        ("the same rsync, files written anew", rsync_fresh),
        ("cp -a SRC NEW", cp),
    ] {
        println!(
            "{name:<44} {:>9.1} {:>9.2}x",
            ms(d),
            d.as_secs_f64() / rsync.as_secs_f64()
        );
    }
    println!("deployhook's log: {stats}");
    let goal = if ours <= rsync { "met" } else { "short" };
    println!("goal (deployhook <= rsync): {goal}");
}
