//! Hostile input never crashes or wedges the daemon: each attack runs while a normal trigger
//! must still be answered within a second and memory stays bounded.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Resident memory the daemon may reach during an attack.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn quick_trigger(s: &Setup) -> Duration {
    let t0 = Instant::now();
    let resp = http(s.daemon.public, "POST", &s.path, &[], b"");
    let took = t0.elapsed();
    assert_eq!(resp.status, 201);
    assert!(
        took < Duration::from_secs(1),
        "trigger took {took:?} under attack"
    );
    took
}

/// Sends `bytes` on a new connection and returns everything the daemon writes back until it
/// closes the connection.
fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Response {
    parse_response(exchange(addr, bytes).as_bytes(), false)
}

/// The status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at + 9..at + 12])
        .collect()
}

#[test]
fn a_huge_content_length_is_refused_not_allocated() {
    let s = setup("hhuge", "true", &[("a", "1")], "");
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\nabc",
        s.path
    );
    let r = raw(s.daemon.public, req.as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    quick_trigger(&s);
    assert!(rss_kib(s.daemon.pid()) < RSS_BOUND_KIB);
}

#[test]
fn a_one_mebibyte_header_line_is_refused() {
    let s = setup("hheader", "true", &[("a", "1")], "");
    let mut stream = TcpStream::connect(s.daemon.public).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let big = "a".repeat(1024 * 1024);
    let req = format!("GET {} HTTP/1.1\r\nX-Big: {big}\r\n\r\n", s.path);
    let _ = stream.write_all(req.as_bytes()); // the server may close before reading it all
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let r = parse_response(&out, false);
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"]["code"], "header_too_large");
    quick_trigger(&s);
    assert!(rss_kib(s.daemon.pid()) < RSS_BOUND_KIB);
}

#[test]
fn conflicting_content_lengths_are_a_400() {
    let s = setup("hcl", "true", &[("a", "1")], "");
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
        s.path
    );
    let r = raw(s.daemon.public, req.as_bytes());
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "bad_request");
    let req = format!("POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", s.path);
    assert_eq!(raw(s.daemon.public, req.as_bytes()).status, 400);
    // No job was made by either.
    let list = http(s.daemon.status, "GET", "/jobs", &[], b"").json();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
    quick_trigger(&s);
}

/// Open sockets of a process.
fn open_fds(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[test]
fn three_hundred_idle_connections_do_not_starve_triggers() {
    let s = setup("hidle", "true", &[("a", "1")], "");
    let before = open_fds(s.daemon.pid());
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(s.daemon.public).unwrap())
        .collect();
    // Half of them send a partial request head and stall.
    for conn in idle.iter().step_by(2) {
        let _ = (&*conn).write_all(b"POST /v1/integrations/deploy/site/x HTTP/1.1\r\nHost: x\r\n");
    }
    let accepted = wait_until(Duration::from_secs(10), || {
        open_fds(s.daemon.pid()) >= before + 295
    });
    assert!(
        accepted,
        "{} sockets, {before} before",
        open_fds(s.daemon.pid())
    );
    for _ in 0..5 {
        quick_trigger(&s);
    }
    let rss = rss_kib(s.daemon.pid());
    assert!(
        rss < RSS_BOUND_KIB,
        "rss {rss} KiB with 300 idle connections"
    );
    drop(idle);
}

/// Slow (it takes the whole 10 s request limit): runs with `DEPLOYHOOK_SLOW_TESTS=1`.
#[test]
fn a_client_sending_one_byte_a_second_is_cut_off() {
    if !slow_tests_enabled() {
        return;
    }
    let s = setup("hslow", "true", &[("a", "1")], "");
    let addr = s.daemon.public;
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let head = b"POST /v1/integrations/deploy/site/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let t0 = Instant::now();
        let mut answer = Vec::new();
        for &b in head
            .iter()
            .chain(b"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz".iter())
        {
            if stream.write_all(&[b]).is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            if let Ok(n) = stream.read(&mut buf) {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            std::thread::sleep(Duration::from_millis(950));
            if t0.elapsed() > Duration::from_secs(25) {
                break;
            }
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.read_to_end(&mut answer);
        (t0.elapsed(), answer)
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        quick_trigger(&s);
    }
    let (took, answer) = slow.join().unwrap();
    let r = parse_response(&answer, false);
    assert_eq!(r.status, 408);
    assert!(took < Duration::from_secs(14), "cut off after {took:?}");
}

#[test]
fn a_flood_of_idle_and_trickling_connections_on_both_listeners_refuses_nobody() {
    raise_nofile();
    let s = setup("hflood", "true", &[("a", "1")], "");
    let pid = s.daemon.pid();
    let before = (open_fds(pid), threads(pid));
    let mut flood = Vec::new();
    for addr in [s.daemon.public, s.daemon.status] {
        for i in 0..1200 {
            let Ok(c) = TcpStream::connect(addr) else {
                continue;
            };
            if i % 2 == 0 {
                let _ = (&c).write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            }
            flood.push(c);
        }
    }
    assert!(
        flood.len() >= 2000,
        "only {} connections opened",
        flood.len()
    );
    let accepted = wait_until(Duration::from_secs(8), || {
        open_fds(pid) >= before.0 + flood.len() * 9 / 10
    });
    assert!(
        accepted,
        "{} of {} connections accepted",
        open_fds(pid) - before.0,
        flood.len()
    );
    for _ in 0..20 {
        assert_eq!(http(s.daemon.public, "POST", &s.path, &[], b"").status, 201);
        assert_eq!(
            http(s.daemon.status, "GET", "/status", &[], b"").status,
            200
        );
    }
    let (rss, now_threads) = (rss_kib(pid), threads(pid));
    assert!(rss < RSS_BOUND_KIB, "rss {rss} KiB during the flood");
    assert!(
        now_threads <= before.1 + 2,
        "{now_threads} threads during the flood, {} before",
        before.1
    );
    drop(flood);
}

#[test]
fn keep_alive_serves_several_requests_and_a_chunked_body_is_drained() {
    let s = setup("hkeep", "true", &[("a", "1")], "");
    let req = format!(
        "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\nGET {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        p = s.path
    );
    let text = exchange(s.daemon.public, req.as_bytes());
    assert_eq!(statuses(&text), ["201", "201", "201"], "{text}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = setup("hpipe", "true", &[("a", "1")], "");
    // Sent in one write: the second and later requests wait behind the first one's commit, and
    // answers that need no commit must not overtake the ones that do.
    let req = format!(
        "POST {p} HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nDELETE {p} HTTP/1.1\r\nHost: x\r\n\r\nPOST {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        p = s.path
    );
    let text = exchange(s.daemon.public, req.as_bytes());
    assert_eq!(statuses(&text), ["201", "404", "405", "201"], "{text}");
}

#[test]
fn garbage_requests_get_json_errors() {
    let s = setup("hgarbage", "true", &[("a", "1")], "");
    for (req, status) in [
        (&b"NOT A REQUEST\r\n\r\n"[..], 400),
        (b"GET /x HTTP/2.0\r\n\r\n", 505),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n", 400),
    ] {
        let r = raw(s.daemon.public, req);
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(req));
        assert!(r.json()["error"]["code"].is_string());
    }
    quick_trigger(&s);
}

#[test]
fn out_of_file_descriptors_the_least_active_connections_make_room() {
    raise_nofile();
    let s = setup("hfds", "true", &[("a", "1")], "");
    let pid = s.daemon.pid();
    // A daemon run with a low `ulimit -n`: 128 descriptors, far below the connection limit.
    let low = libc::rlimit {
        rlim_cur: 128,
        rlim_max: 128,
    };
    // SAFETY: prlimit reads the struct on our stack; the daemon is our own child.
    let set = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(s.daemon.public).ok())
        .collect();
    assert!(idle.len() >= 150);
    // Without shedding, a trigger would wait for the idle timeout (15 s) to free descriptors.
    for _ in 0..5 {
        let t0 = Instant::now();
        assert_eq!(http(s.daemon.public, "POST", &s.path, &[], b"").status, 201);
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(5), "trigger took {took:?}");
    }
    drop(idle);
}
