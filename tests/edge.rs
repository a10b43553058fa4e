//! The HTTP edge, byte for byte: RFC 9112 framing that must be refused, connection handling
//! that clients depend on (`Connection`, `Expect: 100-continue`, a lingering close after a
//! `413`), CORS for browser callers, and requests that once stopped the hook listener.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `bytes`, then reads everything the daemon writes back until it closes.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until `needle` has arrived (or the read times out).
fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn status_of(text: &str) -> &str {
    text.get(9..12).unwrap_or("")
}

#[test]
fn a_te_header_with_nan_weights_does_not_stop_the_hook_listener() {
    let s = setup("enan", "true", &[("a", "1")], "");
    // NaN weights among real ones: a sort by weight that is no total order (Rust's sort
    // panics on such a comparator once the list is long enough).
    let codings: Vec<String> = (0..30)
        .map(|i| match i % 3 {
            0 => format!("c{i};q=nan"),
            _ => format!("c{i};q=0.{}", i % 10),
        })
        .collect();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTE: {}, chunked;q=nan\r\nConnection: close\r\n\r\n",
        s.path,
        codings.join(", ")
    );
    let got = exchange(s.daemon.public, req.as_bytes());
    assert_eq!(status_of(&got), "201", "{got}");
    assert!(!got.contains("Transfer-Encoding"), "{got}");
    assert!(!s.daemon.log_text().contains("panicked"));
    // The listener still serves: the next trigger is answered.
    assert_eq!(http(s.daemon.public, "POST", &s.path, &[], b"").status, 201);
}

#[test]
fn framing_errors_are_refused_with_400_and_close() {
    let s = setup("eframe", "true", &[("a", "1")], "");
    let p = &s.path;
    let cases = [
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nX\x01Bad: 1\r\n\r\n"),
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: \x0b3\r\n\r\nabc"),
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\x0c\r\n\r\nabc"),
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n"),
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n"),
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n"),
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"),
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n0\r\n\r\n"),
        format!("POST {p} HTTP/1.1\r\n\r\n"),
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
        format!("POST {p} HTTP/1.1\r\nHost: x y\r\n\r\n"),
    ];
    for case in &cases {
        // A second, valid request follows: it must not be served on the same connection.
        let two = format!("{case}POST {p} HTTP/1.1\r\nHost: x\r\n\r\n");
        let got = exchange(s.daemon.public, two.as_bytes());
        assert_eq!(status_of(&got), "400", "{case:?} -> {got}");
        assert!(got.contains("Connection: close\r\n"), "{got}");
        assert!(got.contains("\"bad_request\""), "{got}");
        assert_eq!(
            got.matches("Server: deployhook").count(),
            1,
            "{case:?} -> {got}"
        );
    }
    assert_eq!(
        s.daemon.jobs_of(&s.hook),
        0,
        "no job from a refused request"
    );
}

#[test]
fn connection_semantics_and_request_target_forms() {
    let s = setup("econn", "true", &[("a", "1")], "");
    let (p, addr) = (&s.path, s.daemon.public);
    // Absolute-form is accepted (RFC 9112 §3.2.2).
    let got = exchange(
        addr,
        format!("POST http://{addr}{p} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status_of(&got), "201", "{got}");
    assert!(got.contains("Connection: close\r\n"), "{got}");
    // Two Connection lines count together: close on either closes.
    let got = exchange(
        addr,
        format!(
            "POST {p} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\nPOST {p} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(got.matches("HTTP/1.1 201").count(), 1, "{got}");
    // HTTP/1.0 with Transfer-Encoding: answered, then closed.
    let got = exchange(
        addr,
        format!(
            "POST {p} HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST {p} HTTP/1.0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(got.matches("HTTP/1.0 201").count(), 1, "{got}");
    assert!(got.contains("Connection: close\r\n"), "{got}");
    // HTTP/1.0 keep-alive is answered as kept alive, and the connection serves again.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let one = format!("POST {p} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    c.write_all(one.as_bytes()).unwrap();
    let first = read_until(&mut c, "}\n");
    assert!(first.starts_with("HTTP/1.0 201"), "{first}");
    assert!(first.contains("Connection: keep-alive\r\n"), "{first}");
    c.write_all(one.as_bytes()).unwrap();
    let second = read_until(&mut c, "}\n");
    assert!(second.starts_with("HTTP/1.0 201"), "{second}");
    // A plain HTTP/1.0 request is answered with a close.
    let got = exchange(addr, format!("POST {p} HTTP/1.0\r\n\r\n").as_bytes());
    assert!(
        got.starts_with("HTTP/1.0 201") && got.contains("Connection: close\r\n"),
        "{got}"
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let s = setup("eexpect", "true", &[("a", "1")], "");
    for addr in [s.daemon.public, s.daemon.status] {
        let path = if addr == s.daemon.public {
            s.path.clone()
        } else {
            "/status".into()
        };
        let method = if addr == s.daemon.public {
            "POST"
        } else {
            "GET"
        };
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        );
        c.write_all(head.as_bytes()).unwrap();
        let interim = read_until(&mut c, "\r\n\r\n");
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"hello").unwrap();
        let done = read_until(&mut c, "}\n");
        assert!(done.starts_with("HTTP/1.1 20"), "{done}");
    }
    // An expectation the server does not know is a 417.
    let got = exchange(
        s.daemon.public,
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n",
            s.path
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&got), "417", "{got}");
}

#[test]
fn a_413_is_read_by_a_client_still_uploading() {
    let s = setup("e413", "true", &[("a", "1")], "");
    let mut c = TcpStream::connect(s.daemon.public).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let size = 8 * 1024 * 1024;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.path
    );
    c.write_all(head.as_bytes()).unwrap();
    let mut writer = c.try_clone().unwrap();
    let upload = std::thread::spawn(move || {
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
        let mut sent = 0;
        while sent < size {
            if writer.write_all(chunk.as_bytes()).is_err() {
                return sent;
            }
            sent += 64 * 1024;
        }
        sent
    });
    let mut got = Vec::new();
    let read = c.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        read.is_ok(),
        "the answer was lost to a reset: {read:?} after {text:?}"
    );
    assert_eq!(status_of(&text), "413", "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    upload.join().unwrap();
}

#[test]
fn browsers_can_call_a_hook_url_from_another_origin() {
    let s = setup("ecors", "true", &[("a", "1")], "");
    let origin = [("Origin", "https://studio.example.com")];
    // The preflight is answered before any secret is looked at: the same for a bogus secret.
    let project = s.path.split('/').nth(4).unwrap();
    let bogus = format!("/v1/integrations/deploy/{project}/{}", "A".repeat(32));
    for path in [&s.path, &bogus] {
        let r = http(
            s.daemon.public,
            "OPTIONS",
            path,
            &[
                ("Origin", "https://studio.example.com"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            b"",
        );
        assert_eq!(r.status, 204);
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
        assert!(r
            .header("Access-Control-Allow-Methods")
            .unwrap()
            .contains("POST"));
        assert_eq!(
            r.header("Access-Control-Allow-Headers"),
            Some("content-type")
        );
    }
    let r = http(
        s.daemon.public,
        "POST",
        &s.path,
        &[origin[0], ("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    let r = http(s.daemon.public, "POST", &bogus, &origin, b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
}
