//! Reading a request body and throwing it away, a few bytes at a time as they arrive:
//! deployhook never uses a body, but a connection that is kept alive must consume it.
//!
//! Chunk sizes are parsed by `httparse::parse_chunk_size`. It is lenient where RFC 9112 §7.1
//! is not, so a chunk-size line is first checked here: it must start with a hex digit (no
//! sign, no leading space) and end in CRLF with no bare CR or LF before it (a bare LF inside a
//! chunk extension is a known smuggling vector). Trailer fields are parsed by
//! `httparse::parse_headers` and dropped.

use super::request::Framing;
use super::ApiError;

/// The longest chunk-size line accepted (size, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 32;

/// Where the reader is inside the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `n` more bytes of a `Content-Length` body.
    Fixed(u64),
    /// A chunk-size line.
    Size,
    /// `n` more bytes of chunk data, then CRLF.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
    Done,
}

/// How much of a body may come, and how much of it is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyPolicy {
    /// Payload bytes accepted (`413` past it); the rest of what is read is dropped.
    pub max: u64,
    /// Payload bytes kept from the start of the body, for the handler to read.
    pub keep: usize,
}

/// Consumes one request's body, keeping its first [`BodyPolicy::keep`] bytes.
#[derive(Debug)]
pub struct BodyReader {
    part: Part,
    /// Payload bytes seen so far (chunked framing not counted).
    payload: u64,
    policy: BodyPolicy,
    kept: Vec<u8>,
}

impl BodyReader {
    pub fn new(framing: Framing, policy: BodyPolicy) -> BodyReader {
        let part = match framing {
            Framing::None => Part::Done,
            Framing::Length(n) => Part::Fixed(n),
            Framing::Chunked => Part::Size,
        };
        BodyReader {
            part,
            payload: 0,
            policy,
            kept: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.part == Part::Done
    }

    /// The kept start of the body.
    pub fn into_kept(self) -> Vec<u8> {
        self.kept
    }

    fn keep(&mut self, data: &[u8]) {
        let room = self.policy.keep.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..room.min(data.len())]);
    }

    /// Consumes what it can from the front of `input`; returns how many bytes it used.
    pub fn consume(&mut self, input: &[u8]) -> Result<usize, ApiError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            let used = match self.part {
                Part::Done => return Ok(at),
                Part::Fixed(n) | Part::Data(n) => {
                    let take = n.min(rest.len() as u64);
                    self.keep(&rest[..take as usize]);
                    let left = n - take;
                    self.part = match (self.part, left) {
                        (Part::Fixed(_), 0) => Part::Done,
                        (Part::Fixed(_), _) => Part::Fixed(left),
                        (_, 0) => Part::DataEnd,
                        _ => Part::Data(left),
                    };
                    take as usize
                }
                Part::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        self.part = Part::Size;
                        2
                    }
                    [] | [b'\r'] => 0,
                    _ => return Err(malformed("chunk data not followed by CRLF")),
                },
                Part::Size => match self.chunk_size(rest)? {
                    None => 0,
                    Some((used, size)) => {
                        self.payload = self.payload.saturating_add(size);
                        if self.payload > self.policy.max {
                            return Err(ApiError::BodyTooLarge);
                        }
                        self.part = if size == 0 {
                            Part::Trailers
                        } else {
                            Part::Data(size)
                        };
                        used
                    }
                },
                Part::Trailers => match trailers(rest)? {
                    None => 0,
                    Some(used) => {
                        self.part = Part::Done;
                        used
                    }
                },
            };
            if used == 0 {
                return Ok(at);
            }
            at += used;
        }
    }

    /// One chunk-size line: `None` until its CRLF has arrived.
    fn chunk_size(&self, rest: &[u8]) -> Result<Option<(usize, u64)>, ApiError> {
        if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
            return Err(malformed("chunk size must start with a hex digit"));
        }
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_CHUNK_LINE {
                return Err(malformed("chunk-size line too long"));
            }
            return Ok(None);
        };
        let line = &rest[..=lf];
        if lf > MAX_CHUNK_LINE
            || lf == 0
            || line[lf - 1] != b'\r'
            || line[..lf - 1].contains(&b'\r')
        {
            return Err(malformed("chunk-size line must end in CRLF"));
        }
        if !line[..lf - 1].iter().all(|&b| is_chunk_line_byte(b)) {
            return Err(malformed(
                "chunk extension with a byte RFC 9112 does not allow",
            ));
        }
        match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((used, size))) if used == line.len() => {
                Ok(Some((used, size)))
            }
            _ => Err(malformed("invalid chunk size")),
        }
    }
}

/// A byte of a chunk-size line before its CRLF (RFC 9112 §7.1.1): hex digits, and in
/// extensions tchar, `=`, quoted strings, spaces and tabs. No control bytes.
fn is_chunk_line_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~;=\"\\ \t".contains(&b) || b >= 0x80
}

/// The trailer section (fields, then an empty line): `None` until it has arrived whole.
fn trailers(rest: &[u8]) -> Result<Option<usize>, ApiError> {
    match rest {
        [] | [b'\r'] => return Ok(None),
        [b'\r', b'\n', ..] => return Ok(Some(2)),
        _ => {}
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    match httparse::parse_headers(rest, &mut slots) {
        Ok(httparse::Status::Complete((used, _))) => Ok(Some(used)),
        Ok(httparse::Status::Partial) if rest.len() > MAX_CHUNK_LINE * 4 => {
            Err(ApiError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(malformed("invalid trailer field")),
    }
}

fn malformed(why: &str) -> ApiError {
    ApiError::BadRequest(format!("malformed chunked body: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BodyPolicy = BodyPolicy { max: 64, keep: 5 };

    /// Feeds `body` one byte at a time: the result and the bytes left over.
    fn read(framing: Framing, body: &[u8]) -> Result<usize, ApiError> {
        let mut reader = BodyReader::new(framing, POLICY);
        let mut buffered = Vec::new();
        for &b in body {
            buffered.push(b);
            let used = reader.consume(&buffered)?;
            buffered.drain(..used);
            if reader.is_done() {
                return Ok(buffered.len());
            }
        }
        Err(ApiError::RequestTimeout)
    }

    #[test]
    fn chunked_bodies_read_byte_by_byte() {
        let good: [&[u8]; 4] = [
            b"3\r\nabc\r\n0\r\n\r\n",
            b"3;name=value\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n",
            b"3 ;x\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"0\r\n\r\nGET",
        ];
        for body in good {
            let left = read(Framing::Chunked, body);
            assert!(left.is_ok(), "{:?}", String::from_utf8_lossy(body));
        }
        assert_eq!(read(Framing::Chunked, b"0\r\n\r\nGET"), Ok(0));
        let mut r = BodyReader::new(Framing::Chunked, POLICY);
        let body = b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
        assert_eq!(r.consume(body), Ok(body.len()));
        assert_eq!(r.into_kept(), b"abcde");
        assert_eq!(read(Framing::Length(3), b"abc"), Ok(0));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for body in [
            &b"+3\r\nabc\r\n0\r\n\r\n"[..],
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"-1\r\n",
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b"\r\n",
            b"1111111111111111111\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"3;\x00\x01\r\nabc\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(read(Framing::Chunked, body), Err(ApiError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            read(Framing::Chunked, b"41\r\n"),
            Err(ApiError::BodyTooLarge)
        );
    }
}
