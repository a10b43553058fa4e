//! HTTP/1.x on the wire, shared by both listeners: the limits on untrusted input, reading a
//! request (head, framing, and a body that is read and dropped), and writing a response with
//! tiny_http's response writer. Transports live elsewhere: [`super::conn`] (a thread per
//! connection, the status listener) and [`super::poll`] (one event loop, the hook listener).
//!
//! tiny_http 0.12's `Server` owns this layer itself and, as released, aborts the process when a
//! request announcing a huge `Content-Length` is dropped unread, sets no socket timeouts, reads
//! header lines without a bound, starts a thread per connection without a limit and takes the
//! first of two conflicting `Content-Length` headers. The fork tiny_http_fork 0.12.17 fixes only
//! the first (and its accept loop still ends on an `EMFILE`). So deployhook owns request framing
//! here, with every limit a named constant enforced in one place, and keeps tiny_http's message
//! types and `Response::raw_print` (status line, `Date`, framing, HEAD).

use super::{ApiError, Reply, ReplyBody};
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tiny_http::{HTTPVersion, Header, Method};

/// Limits of one listener. Defaults are [`Limits::DEFAULT`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line plus headers, in bytes (`431` past it).
    pub max_head_bytes: usize,
    /// Number of header lines (`431` past it).
    pub max_headers: usize,
    /// Request body, read and thrown away (`413` past it).
    pub max_body_bytes: u64,
    /// Time for a whole request (head and body) to arrive once its first byte did (`408`).
    pub request_timeout: Duration,
    /// Time an open connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time a response write may block.
    pub write_timeout: Duration,
    /// Open connections at once; more are answered `503` and closed.
    pub max_connections: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_head_bytes: 16 * 1024,
        max_headers: 64,
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(15),
        write_timeout: Duration::from_secs(15),
        max_connections: 512,
    };
}

/// A request whose head has been read and checked.
pub struct Request {
    pub method: Method,
    /// Path without the query string, as sent (not percent-decoded).
    pub path: String,
    pub query: String,
    pub headers: Vec<Header>,
    pub version: HTTPVersion,
    pub remote: Option<SocketAddr>,
}

impl Request {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    pub(super) fn wants_close(&self) -> bool {
        let conn = self
            .headers
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str().to_ascii_lowercase());
        match self.version {
            HTTPVersion(1, 0) => conn.as_deref() != Some("keep-alive"),
            _ => conn.is_some_and(|c| c.split(',').any(|t| t.trim() == "close")),
        }
    }
}

/// Over the connection limit: a short `503` written without blocking, then close.
pub(super) fn refuse_busy(stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let reply = ApiError::Busy.reply();
    let _ = write_reply(&stream, reply, HTTPVersion(1, 1), &[], false, true);
}

/// Parses one request from bytes, as a connection would: `Ok(None)` when the bytes end before a
/// request does, `Err` with the error a client would be answered. For fuzzing and tests.
pub fn parse_request(bytes: &[u8], limits: &Limits) -> Result<Option<Request>, ApiError> {
    Ok(parse_request_prefix(bytes, limits)?.map(|(req, _)| req))
}

/// Like [`parse_request`], and also says how many bytes the request took (head and body), so
/// that what follows can be parsed as the next request on the connection.
pub fn parse_request_prefix(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Option<(Request, usize)>, ApiError> {
    let mut reader = io::Cursor::new(bytes);
    match read_request(&mut reader, limits, None, |_| {}) {
        Ok(req) => Ok(Some((req, reader.position() as usize))),
        Err(ReadFail::Quiet) => Ok(None),
        Err(ReadFail::Answer(e)) => Err(e),
    }
}

/// Why a request could not be read.
pub(super) enum ReadFail {
    /// The connection closed or idled out before a request began: close quietly.
    Quiet,
    /// The request is bad: answer this error, then close.
    Answer(ApiError),
}

/// Reads one line (through `\n`), failing past `budget` bytes.
fn read_line(
    reader: &mut impl BufRead,
    budget: &mut usize,
    line: &mut Vec<u8>,
) -> Result<(), io::Error> {
    line.clear();
    let mut limited = reader.take(*budget as u64 + 1);
    limited.read_until(b'\n', line)?;
    if line.len() > *budget {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
    }
    if !line.is_empty() && !line.ends_with(b"\n") {
        // The bytes ended inside the line: the rest has not arrived (or never will).
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    *budget -= line.len();
    Ok(())
}

/// Reads one request head (and drops its body). `started` runs once the first byte is there,
/// so the caller can give the rest of the request its own deadline.
pub(super) fn read_request<R: BufRead>(
    reader: &mut R,
    limits: &Limits,
    remote: Option<SocketAddr>,
    started: impl FnOnce(&mut R),
) -> Result<Request, ReadFail> {
    let io_fail = |e: io::Error, started: bool| match e.kind() {
        io::ErrorKind::InvalidData => ReadFail::Answer(ApiError::HeadTooLarge),
        io::ErrorKind::TimedOut if started => ReadFail::Answer(ApiError::RequestTimeout),
        _ => ReadFail::Quiet,
    };
    // Wait for the first byte under the idle deadline, then give the request its own.
    match reader.fill_buf() {
        Ok([]) => return Err(ReadFail::Quiet),
        Ok(_) => {}
        Err(e) => return Err(io_fail(e, false)),
    }
    started(reader);
    let mut budget = limits.max_head_bytes;
    let mut line = Vec::with_capacity(256);
    // Tolerate blank lines before a request line (RFC 9112 §2.2).
    loop {
        read_line(reader, &mut budget, &mut line).map_err(|e| io_fail(e, true))?;
        if line.is_empty() {
            return Err(ReadFail::Quiet);
        }
        if line != b"\r\n" && line != b"\n" {
            break;
        }
    }
    let bad = |why: &str| ReadFail::Answer(ApiError::BadRequest(why.to_string()));
    let request_line =
        std::str::from_utf8(trim_eol(&line)).map_err(|_| bad("request line is not text"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let method: Method = method.parse().map_err(|_| bad("malformed method"))?;
    let version = match version {
        "HTTP/1.1" => HTTPVersion(1, 1),
        "HTTP/1.0" => HTTPVersion(1, 0),
        v if v.starts_with("HTTP/") => return Err(ReadFail::Answer(ApiError::VersionNotSupported)),
        _ => return Err(bad("malformed request line")),
    };
    if !target.starts_with('/') {
        return Err(bad("request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());

    let mut headers = Vec::new();
    loop {
        read_line(reader, &mut budget, &mut line).map_err(|e| io_fail(e, true))?;
        if line.is_empty() {
            return Err(ReadFail::Quiet);
        }
        let text = trim_eol(&line);
        if text.is_empty() {
            break;
        }
        if headers.len() == limits.max_headers {
            return Err(ReadFail::Answer(ApiError::HeadTooLarge));
        }
        let Some(colon) = text.iter().position(|&b| b == b':') else {
            return Err(bad("malformed header line"));
        };
        let (name, value) = (&text[..colon], trim_ows(&text[colon + 1..]));
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(bad("malformed header name"));
        }
        let header = Header::from_bytes(name, value).map_err(|_| bad("header is not ASCII"))?;
        headers.push(header);
    }

    let body = body_framing(&headers, limits)?;
    discard_body(reader, body, limits)?;
    Ok(Request {
        method,
        path,
        query,
        headers,
        version,
        remote,
    })
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// How the body is framed; conflicting or ambiguous framing is refused (request smuggling).
fn body_framing(headers: &[Header], limits: &Limits) -> Result<Framing, ReadFail> {
    let bad = |why: &str| ReadFail::Answer(ApiError::BadRequest(why.to_string()));
    let mut length: Option<u64> = None;
    for h in headers.iter().filter(|h| h.field.equiv("Content-Length")) {
        for part in h.value.as_str().split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 19 {
                return Err(bad("invalid Content-Length"));
            }
            let n: u64 = part.parse().map_err(|_| bad("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
    }
    let encodings: Vec<&Header> = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"))
        .collect();
    if !encodings.is_empty() {
        if length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        let chunked_last = encodings.len() == 1
            && encodings[0]
                .value
                .as_str()
                .trim()
                .eq_ignore_ascii_case("chunked");
        if !chunked_last {
            return Err(bad("unsupported Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    match length {
        Some(n) if n > limits.max_body_bytes => Err(ReadFail::Answer(ApiError::BodyTooLarge)),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::None),
    }
}

/// Reads and drops the body: deployhook never uses one, but keep-alive needs it consumed.
fn discard_body<R: BufRead>(
    reader: &mut R,
    framing: Framing,
    limits: &Limits,
) -> Result<(), ReadFail> {
    let fail = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut => ReadFail::Answer(ApiError::RequestTimeout),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            ReadFail::Answer(ApiError::BadRequest("malformed chunked body".into()))
        }
        _ => ReadFail::Quiet,
    };
    match framing {
        Framing::None => Ok(()),
        Framing::Length(n) => {
            let copied = io::copy(&mut reader.take(n), &mut io::sink()).map_err(fail)?;
            if copied < n {
                return Err(ReadFail::Quiet);
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut source = NoteEnd {
                inner: reader,
                ended: false,
            };
            let mut decoder = chunked_transfer::Decoder::new(&mut source);
            let copied = io::copy(
                &mut (&mut decoder).take(limits.max_body_bytes + 1),
                &mut io::sink(),
            );
            // A body cut short is not a malformed one: the rest may still come.
            let copied = match copied {
                _ if source.ended => return Err(ReadFail::Quiet),
                other => other.map_err(fail)?,
            };
            if copied > limits.max_body_bytes {
                return Err(ReadFail::Answer(ApiError::BodyTooLarge));
            }
            Ok(())
        }
    }
}

/// A reader that remembers whether its source ran out.
struct NoteEnd<R> {
    inner: R,
    ended: bool,
}

impl<R: Read> Read for NoteEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ended |= n == 0 && !buf.is_empty();
        Ok(n)
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Writes `reply`; a streamed body is sent chunked on HTTP/1.1 and raw on 1.0. Returns whether
/// the connection may carry another request.
pub(super) fn write_reply(
    stream: impl Write,
    reply: Reply,
    version: HTTPVersion,
    request_headers: &[Header],
    head_only: bool,
    close: bool,
) -> io::Result<bool> {
    let Reply {
        status,
        mut headers,
        body,
    } = reply;
    headers.push((
        "Server",
        format!("deployhook/{}", env!("CARGO_PKG_VERSION")),
    ));
    if close {
        headers.push(("Connection", "close".to_string()));
    }
    let mut out = io::BufWriter::with_capacity(8192, stream);
    match body {
        ReplyBody::Bytes(bytes) => {
            let len = bytes.len();
            let mut response = tiny_http::Response::new(
                tiny_http::StatusCode(status),
                Vec::new(),
                io::Cursor::new(bytes),
                Some(len),
                None,
            );
            for (name, value) in headers {
                if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                    response.add_header(h);
                }
            }
            response.raw_print(&mut out, version, request_headers, head_only, None)?;
            out.flush()?;
            Ok(true)
        }
        ReplyBody::Stream(produce) => {
            let chunked = version == HTTPVersion(1, 1);
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
            if chunked {
                out.write_all(b"Transfer-Encoding: chunked\r\n")?;
            } else if !close {
                out.write_all(b"Connection: close\r\n")?;
            }
            out.write_all(b"\r\n")?;
            out.flush()?;
            if head_only {
                return Ok(chunked);
            }
            let mut out = out.into_inner().map_err(|e| e.into_error())?;
            if chunked {
                let mut writer = ChunkedWriter(&mut out);
                produce(&mut writer)?;
                out.write_all(b"0\r\n\r\n")?;
            } else {
                produce(&mut out)?;
            }
            out.flush()?;
            Ok(chunked)
        }
    }
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

    fn headers(list: &[(&str, &str)]) -> Vec<Header> {
        list.iter()
            .map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap())
            .collect()
    }

    fn framing(list: &[(&str, &str)]) -> Result<Framing, ReadFail> {
        body_framing(&headers(list), &Limits::DEFAULT)
    }

    #[test]
    fn conflicting_or_smuggling_framing_is_refused() {
        assert!(matches!(
            framing(&[("Content-Length", "5")]),
            Ok(Framing::Length(5))
        ));
        assert!(matches!(
            framing(&[("Content-Length", "5"), ("content-length", "5")]),
            Ok(Framing::Length(5))
        ));
        for bad in [
            vec![("Content-Length", "5"), ("Content-Length", "6")],
            vec![("Content-Length", "5, 6")],
            vec![("Content-Length", "-1")],
            vec![("Content-Length", "+5")],
            vec![("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            vec![("Transfer-Encoding", "gzip, chunked")],
        ] {
            assert!(
                matches!(
                    framing(&bad),
                    Err(ReadFail::Answer(ApiError::BadRequest(_)))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            framing(&[("Content-Length", "100000000000000")]),
            Err(ReadFail::Answer(ApiError::BodyTooLarge))
        ));
        assert!(matches!(
            framing(&[("Content-Length", "99999999999999999999999")]),
            Err(ReadFail::Answer(ApiError::BadRequest(_)))
        ));
    }

    /// The poll-driven layer parses whatever bytes have arrived: every proper prefix of a
    /// request must read as incomplete, never as an error, and the whole as one request that
    /// says where it ends.
    #[test]
    fn every_prefix_of_a_request_is_incomplete_not_an_error() {
        let requests: [&[u8]; 3] = [
            b"\r\nPOST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
            b"GET /jobs?limit=1 HTTP/1.0\r\n\r\n",
        ];
        for bytes in requests {
            for end in 0..bytes.len() {
                let got = parse_request_prefix(&bytes[..end], &Limits::DEFAULT);
                assert!(
                    matches!(got, Ok(None)),
                    "{:?}",
                    String::from_utf8_lossy(&bytes[..end])
                );
            }
            let mut two = bytes.to_vec();
            two.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let (_, used) = parse_request_prefix(&two, &Limits::DEFAULT)
                .unwrap()
                .unwrap();
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn query_params_and_whitespace() {
        let req = Request {
            method: Method::Get,
            path: "/jobs".into(),
            query: "limit=5&state=READY&flag".into(),
            headers: vec![],
            version: HTTPVersion(1, 1),
            remote: None,
        };
        assert_eq!(req.query_param("limit"), Some("5"));
        assert_eq!(req.query_param("flag"), Some(""));
        assert_eq!(req.query_param("nope"), None);
        assert_eq!(trim_ows(b"  a b\t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
    }
}
