//! A request head: parsed by `httparse` (strict about tokens, header names and the bytes a
//! header value may hold: a vertical tab or form feed is refused), then checked against the
//! rules of RFC 9110/9112 that a parser of bytes does not know: the request-target's form,
//! `Host`, how the body is framed (the request-smuggling rules), `Connection` and `Expect`.

use super::limits::Limits;
use super::ApiError;
use std::net::SocketAddr;
use tiny_http::{HTTPVersion, Method};

/// A request whose head has been read and checked.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// Path without the query string, as sent (not percent-decoded).
    pub path: String,
    pub query: String,
    /// Header names and values as sent (values that are not UTF-8 are read lossily).
    pub headers: Vec<(String, String)>,
    pub version: HTTPVersion,
    pub remote: Option<SocketAddr>,
    /// The connection closes after this request's answer.
    pub close: bool,
    /// The start of the body, as much as the listener keeps (nothing unless it asked).
    pub body: Vec<u8>,
}

impl Request {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The first value of header `name` (names are compared without case).
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.headers_named(name).next()
    }

    /// Every value of header `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request was HTTP/1.0 and asked to be kept alive: its answer must say so.
    pub fn keep_alive_1_0(&self) -> bool {
        self.version == HTTPVersion(1, 0) && !self.close
    }
}

/// How a request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed head: the request, its body's framing, and whether the client waits for
/// `100 Continue` before it sends the body.
#[derive(Debug)]
pub struct Head {
    pub request: Request,
    pub framing: Framing,
    pub expect_continue: bool,
}

/// Parses the head at the start of `bytes`: `Ok(None)` while it is incomplete, else the head
/// and the number of bytes it took.
pub fn parse_head(bytes: &[u8], limits: &Limits) -> Result<Option<(Head, usize)>, ApiError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut slots);
    let used = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(used)) if used > limits.max_head_bytes => {
            return Err(ApiError::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if bytes.len() > limits.max_head_bytes => {
            return Err(ApiError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ApiError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(bytes)),
        Err(e) => return Err(bad(&e.to_string())),
    };
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(bad("malformed request line"));
    };
    let method: Method = method.parse().map_err(|_| bad("malformed method"))?;
    let version = HTTPVersion(1, minor);
    let (path, query) = split_target(target, &method)?;
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_string(), value)
        })
        .collect();
    let mut request = Request {
        method,
        path,
        query,
        headers,
        version,
        remote: None,
        close: false,
        body: Vec::new(),
    };
    check_host(&request)?;
    let framing = framing(&request)?;
    request.close = wants_close(&request);
    let expect_continue = expects_continue(&request)?;
    Ok(Some((
        Head {
            request,
            framing,
            expect_continue,
        },
        used,
    )))
}

fn bad(why: &str) -> ApiError {
    ApiError::BadRequest(why.to_string())
}

/// `httparse` refuses every version but 1.0 and 1.1: a well-formed `HTTP/x.y` is answered
/// `505`, anything else is a malformed request line.
fn version_error(bytes: &[u8]) -> ApiError {
    let line = bytes
        .split(|&b| b == b'\n')
        .find(|l| !l.trim_ascii().is_empty());
    let version = line
        .and_then(|l| l.trim_ascii().rsplit(|&b| b == b' ').next())
        .unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            ApiError::VersionNotSupported
        }
        _ => bad("malformed request line"),
    }
}

/// Path and query of the request-target: origin-form (`/path?q`), or absolute-form
/// (`http://host/path?q`, RFC 9112 §3.2.2, sent to proxies and accepted by servers).
fn split_target(target: &str, method: &Method) -> Result<(String, String), ApiError> {
    let origin = if target.starts_with('/') {
        target
    } else if let Some(rest) = strip_scheme(target) {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, origin) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') || !is_host_value(authority) {
            return Err(bad("invalid authority in the request target"));
        }
        origin
    } else if target == "*" && *method == Method::Options {
        "*"
    } else {
        return Err(bad("request target must be a path"));
    };
    let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_string(), query.to_string()))
}

fn strip_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
    })
}

/// HTTP/1.1 requires exactly one `Host` (RFC 9112 §3.2); none may be two, or malformed.
fn check_host(req: &Request) -> Result<(), ApiError> {
    let hosts: Vec<&str> = req.headers_named("Host").collect();
    match hosts.as_slice() {
        [] if req.version == HTTPVersion(1, 0) => Ok(()),
        [] => Err(bad("HTTP/1.1 requires a Host header")),
        [host] if is_host_value(host) => Ok(()),
        [_] => Err(bad("invalid Host header")),
        _ => Err(bad("more than one Host header")),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): a bracketed IP literal or a reg-name, then an optional
/// port of digits. An empty value is allowed (an authority-less target URI).
fn is_host_value(value: &str) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("x", Some(port)),
            None if after.is_empty() => ("x", None),
            None => return false,
        }
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    };
    let reg_name = host.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    reg_name && port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 5)
}

/// How the body is framed; conflicting or ambiguous framing is refused (request smuggling).
/// Whether the body's size is acceptable is the session's to decide.
fn framing(req: &Request) -> Result<Framing, ApiError> {
    let mut length: Option<u64> = None;
    for value in req.headers_named("Content-Length") {
        for part in value.split(',') {
            let part = part.trim_matches([' ', '\t']);
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
    let codings: Vec<&str> = req.headers_named("Transfer-Encoding").collect();
    if !codings.is_empty() {
        if length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        let only_chunked = matches!(codings.as_slice(), [one]
            if one.trim_matches([' ', '\t']).eq_ignore_ascii_case("chunked"));
        if !only_chunked {
            return Err(bad("unsupported Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    match length {
        Some(0) | None => Ok(Framing::None),
        Some(n) => Ok(Framing::Length(n)),
    }
}

/// Whether the connection closes after this request. Every `Connection` line counts: `close`
/// on any closes. HTTP/1.0 stays open only when asked (`keep-alive`), and a 1.0 request with
/// `Transfer-Encoding` always closes (RFC 9112 §6.1: its framing cannot be trusted).
fn wants_close(req: &Request) -> bool {
    let tokens: Vec<String> = req
        .headers_named("Connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim_matches([' ', '\t']).to_ascii_lowercase())
        .collect();
    let has = |t: &str| tokens.iter().any(|x| x == t);
    if has("close") {
        return true;
    }
    match req.version {
        HTTPVersion(1, 0) => !has("keep-alive") || req.header("Transfer-Encoding").is_some(),
        _ => false,
    }
}

/// `Expect: 100-continue` (RFC 9110 §10.1.1); any other expectation is a `417`. HTTP/1.0
/// clients cannot expect anything, so theirs is ignored.
fn expects_continue(req: &Request) -> Result<bool, ApiError> {
    let mut wants = false;
    for value in req.headers_named("Expect") {
        for part in value.split(',').map(|p| p.trim_matches([' ', '\t'])) {
            if part.eq_ignore_ascii_case("100-continue") {
                wants = true;
            } else if !part.is_empty() && req.version == HTTPVersion(1, 1) {
                return Err(ApiError::ExpectationFailed);
            }
        }
    }
    Ok(wants && req.version == HTTPVersion(1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Head, usize)>, ApiError> {
        parse_head(text.as_bytes(), &Limits::DEFAULT)
    }

    fn ok_huge(text: &str) -> Framing {
        head(text).unwrap().unwrap().0.framing
    }

    fn refused(text: &str) -> bool {
        matches!(head(text), Err(ApiError::BadRequest(_)))
    }

    #[test]
    fn framing_and_smuggling_rules() {
        let ok = |extra: &str| {
            let t = format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
            head(&t).unwrap().unwrap().0.framing
        };
        assert_eq!(ok("Content-Length: 5\r\n"), Framing::Length(5));
        assert_eq!(
            ok("Content-Length: 5\r\ncontent-length: 5\r\n"),
            Framing::Length(5)
        );
        assert_eq!(ok("Transfer-Encoding: chunked\r\n"), Framing::Chunked);
        assert_eq!(ok(""), Framing::None);
        for extra in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 6\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: \x0b5\r\n",
            "Content-Length: 5\x0c\r\n",
            "Transfer-Encoding: \x0bchunked\r\n",
            "Content-Length: 99999999999999999999999\r\n",
            "X\x01Y: 1\r\n",
            " Content-Length: 5\r\n",
            "Content-Length : 5\r\n",
        ] {
            let t = format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
            assert!(refused(&t), "{extra:?}");
        }
        let huge = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000000000\r\n\r\n";
        assert_eq!(ok_huge(huge), Framing::Length(100_000_000_000_000));
    }

    #[test]
    fn host_is_required_once_and_well_formed_in_1_1() {
        assert!(refused("GET / HTTP/1.1\r\n\r\n"));
        assert!(refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"));
        assert!(refused("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"));
        assert!(refused("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"));
        assert!(refused("GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n"));
        for good in ["a", "a:80", "127.0.0.1:8080", "[::1]:8080", "[::1]", ""] {
            let t = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert!(head(&t).unwrap().is_some(), "{good}");
        }
        assert!(head("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn targets_connection_and_expect() {
        let (h, _) = head("GET http://x:1/jobs?limit=2 HTTP/1.1\r\nHost: y\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.request.path.as_str(), h.request.query.as_str()),
            ("/jobs", "limit=2")
        );
        let (h, _) = head("GET HTTP://x HTTP/1.1\r\nHost: y\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.request.path, "/");
        assert!(refused("GET jobs HTTP/1.1\r\nHost: y\r\n\r\n"));
        assert!(refused("GET http://u@x/ HTTP/1.1\r\nHost: y\r\n\r\n"));
        let close = |t: &str| head(t).unwrap().unwrap().0.request.close;
        assert!(close(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        assert!(!close("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(close("GET / HTTP/1.0\r\n\r\n"));
        assert!(!close("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(close(
            "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        let expect = |t: &str| head(t).map(|h| h.unwrap().0.expect_continue);
        assert_eq!(
            expect(
                "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
            ),
            Ok(true)
        );
        assert_eq!(
            expect("POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n"),
            Err(ApiError::ExpectationFailed)
        );
        assert_eq!(
            expect("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"),
            Ok(false)
        );
    }

    #[test]
    fn versions_sizes_and_prefixes() {
        assert_eq!(
            head("GET / HTTP/2.0\r\n\r\n").unwrap_err(),
            ApiError::VersionNotSupported
        );
        assert!(refused("GET / HTXP/1.1\r\n\r\n"));
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        assert_eq!(head(&big).unwrap_err(), ApiError::HeadTooLarge);
        assert_eq!(head(&big[..17_000]).unwrap_err(), ApiError::HeadTooLarge);
        let many: String = (0..70).map(|i| format!("X-{i}: 1\r\n")).collect();
        let t = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(head(&t).unwrap_err(), ApiError::HeadTooLarge);
        let whole = "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..whole.len() {
            assert!(head(&whole[..end]).unwrap().is_none(), "{end}");
        }
        assert_eq!(head(whole).unwrap().unwrap().1, whole.len());
    }
}
