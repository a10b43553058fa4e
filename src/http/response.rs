//! Replies and their bytes on the wire.
//!
//! tiny_http's `Response::raw_print` writes the status line, `Date`, `Content-Length` and the
//! body. Two of its choices are not ours, so they are made here: it is never shown the
//! request's headers (its `TE` chooser panics on `q=nan` values, and deployhook sends every
//! body with a `Content-Length` anyway), and since it drops a `Connection` header added to a
//! response, that header is put into the written head here: `close` whenever the connection
//! closes after the answer, `keep-alive` to an HTTP/1.0 client that asked for it.
//!
//! A streamed body (a followed log) has a head written here and is sent chunked on HTTP/1.1
//! and raw (ended by the close) on HTTP/1.0.

use serde::Serialize;
use std::io::{self, Write};
use tiny_http::{HTTPVersion, Header};

/// A streamed body: called with the connection's writer, each write goes out at once.
pub type Producer = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

pub enum ReplyBody {
    Bytes(Vec<u8>),
    Stream(Producer),
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: ReplyBody,
}

/// Headers on every response of both listeners: nothing is cached (a hook URL's answer names a
/// job), and a page never leaks its URL onward.
fn common_headers(content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", content_type.to_string()),
        ("Cache-Control", "no-store".to_string()),
        ("Referrer-Policy", "no-referrer".to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
    ]
}

impl Reply {
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: common_headers(content_type),
            body: ReplyBody::Bytes(body),
        }
    }

    /// A JSON body, ending in a newline so that a shell prompt does not land on it.
    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Reply::bytes(status, "application/json", body)
            }
            Err(e) => super::ApiError::Internal(e.to_string()).reply(),
        }
    }

    pub fn text(status: u16, body: String) -> Reply {
        Reply::bytes(status, "text/plain; charset=utf-8", body.into_bytes())
    }

    pub fn html(body: String) -> Reply {
        let mut r = Reply::bytes(200, "text/html; charset=utf-8", body.into_bytes());
        r.headers.push((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
                .into(),
        ));
        r
    }

    /// No body at all (`204`).
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("Cache-Control", "no-store".to_string())],
            body: ReplyBody::Bytes(Vec::new()),
        }
    }

    pub fn stream(content_type: &str, produce: Producer) -> Reply {
        Reply {
            status: 200,
            headers: common_headers(content_type),
            body: ReplyBody::Stream(produce),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// A copy of a reply with a body of bytes (`None` for a stream, which runs once).
    pub fn try_clone(&self) -> Option<Reply> {
        match &self.body {
            ReplyBody::Bytes(bytes) => Some(Reply {
                status: self.status,
                headers: self.headers.clone(),
                body: ReplyBody::Bytes(bytes.clone()),
            }),
            ReplyBody::Stream(_) => None,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self.body, ReplyBody::Stream(_))
    }
}

/// How the answer leaves the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Open for the next request, as HTTP/1.1 is by default.
    KeepOpen,
    /// Open, and the HTTP/1.0 client must be told so (`Connection: keep-alive`).
    KeepAlive1_0,
    /// Closed after this answer (`Connection: close`).
    Close,
}

impl Persistence {
    /// What `req` asked for: closed after the answer, or kept open (and said so to HTTP/1.0).
    pub fn of(req: &super::request::Request) -> Persistence {
        if req.close {
            Persistence::Close
        } else if req.keep_alive_1_0() {
            Persistence::KeepAlive1_0
        } else {
            Persistence::KeepOpen
        }
    }
}

/// Writes `reply` with a `Bytes` body into `out`. Returns the stream producer untouched when
/// the body is a stream (see [`write_stream`]).
pub fn write_bytes(
    out: &mut Vec<u8>,
    reply: Reply,
    version: HTTPVersion,
    head_only: bool,
    persistence: Persistence,
) -> Result<(), Reply> {
    let Reply {
        status,
        mut headers,
        body,
    } = reply;
    let bytes = match body {
        ReplyBody::Bytes(bytes) => bytes,
        body => {
            return Err(Reply {
                status,
                headers,
                body,
            })
        }
    };
    headers.push(("Server", server()));
    let len = bytes.len();
    let mut response = tiny_http::Response::new(
        tiny_http::StatusCode(status),
        Vec::new(),
        io::Cursor::new(bytes),
        Some(len),
        None,
    )
    .with_chunked_threshold(usize::MAX);
    for (name, value) in headers {
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = response.raw_print(&mut *out, version, &[], head_only, None);
    if status == 204 {
        // tiny_http writes `Content-Length: 0`, which a 204 must not carry (RFC 9110 §8.6).
        let head = String::from_utf8_lossy(&out[start..]).replace("Content-Length: 0\r\n", "");
        out.truncate(start);
        out.extend_from_slice(head.as_bytes());
    }
    if let Some(line) = connection_line(persistence) {
        if let Some(eol) = out[start..].windows(2).position(|w| w == b"\r\n") {
            let at = start + eol + 2;
            out.splice(at..at, line.bytes());
        }
    }
    Ok(())
}

fn connection_line(persistence: Persistence) -> Option<&'static str> {
    match persistence {
        Persistence::KeepOpen => None,
        Persistence::KeepAlive1_0 => Some("Connection: keep-alive\r\n"),
        Persistence::Close => Some("Connection: close\r\n"),
    }
}

fn server() -> String {
    format!("deployhook/{}", env!("CARGO_PKG_VERSION"))
}

/// Writes a streamed reply to a blocking socket, then the connection closes: the head, then
/// the body chunked on HTTP/1.1 (each write one chunk, sent at once) or raw on HTTP/1.0.
pub fn write_stream(
    stream: impl Write,
    reply: Reply,
    version: HTTPVersion,
    head_only: bool,
) -> io::Result<()> {
    let Reply {
        status,
        headers,
        body,
    } = reply;
    let chunked = version == HTTPVersion(1, 1);
    let mut out = io::BufWriter::with_capacity(8192, stream);
    write!(
        out,
        "HTTP/{} {} {}\r\n",
        version,
        status,
        tiny_http::StatusCode(status).default_reason_phrase()
    )?;
    for (name, value) in &headers {
        write!(out, "{name}: {value}\r\n")?;
    }
    write!(out, "Server: {}\r\nConnection: close\r\n", server())?;
    if chunked {
        out.write_all(b"Transfer-Encoding: chunked\r\n")?;
    }
    out.write_all(b"\r\n")?;
    out.flush()?;
    let ReplyBody::Stream(produce) = body else {
        return Ok(());
    };
    if head_only {
        return Ok(());
    }
    let mut out = out.into_inner().map_err(|e| e.into_error())?;
    if chunked {
        produce(&mut ChunkedWriter(&mut out))?;
        out.write_all(b"0\r\n\r\n")?;
    } else {
        produce(&mut out)?;
    }
    out.flush()
}

/// Writes each `write` call as one HTTP chunk, sent at once (live logs).
struct ChunkedWriter<'a, W: Write>(&'a mut W);

impl<W: Write> Write for ChunkedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        write!(self.0, "{:x}\r\n", buf.len())?;
        self.0.write_all(buf)?;
        self.0.write_all(b"\r\n")?;
        self.0.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(reply: Reply, version: HTTPVersion, p: Persistence) -> String {
        let mut out = Vec::new();
        assert!(write_bytes(&mut out, reply, version, false, p).is_ok());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_connection_header_is_written_when_it_matters() {
        let v11 = HTTPVersion(1, 1);
        let closed = written(
            Reply::text(200, "hi".into()),
            v11.clone(),
            Persistence::Close,
        );
        assert!(
            closed.starts_with("HTTP/1.1 200 OK\r\nConnection: close\r\n"),
            "{closed}"
        );
        assert!(closed.contains("Content-Length: 2\r\n") && closed.ends_with("\r\n\r\nhi"));
        let open = written(Reply::text(200, "hi".into()), v11, Persistence::KeepOpen);
        assert!(!open.contains("Connection:"));
        let v10 = written(
            Reply::text(200, "hi".into()),
            HTTPVersion(1, 0),
            Persistence::KeepAlive1_0,
        );
        assert!(
            v10.starts_with("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"),
            "{v10}"
        );
    }

    #[test]
    fn a_204_has_no_content_length() {
        let got = written(Reply::empty(204), HTTPVersion(1, 1), Persistence::KeepOpen);
        assert!(
            got.starts_with("HTTP/1.1 204") && !got.contains("Content-Length"),
            "{got}"
        );
    }

    #[test]
    fn large_bodies_keep_a_content_length() {
        let big = written(
            Reply::text(200, "x".repeat(100_000)),
            HTTPVersion(1, 1),
            Persistence::KeepOpen,
        );
        assert!(big.contains("Content-Length: 100000\r\n"));
        assert!(!big.contains("Transfer-Encoding"));
    }
}
