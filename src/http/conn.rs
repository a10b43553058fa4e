//! One connection of the event loop: its socket, its [`Session`], the bytes it owes, and
//! where it is in its request cycle ([`Phase`], with the deadline that applies there). Reading
//! drains the socket (mio's readiness is edge-triggered); a refusal is written, then the
//! connection lingers, reading and dropping what the client still sends, before it closes.

use super::limits::Limits;
use super::response::{write_bytes, Persistence};
use super::session::Session;
use super::ApiError;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;
use tiny_http::HTTPVersion;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Where a connection is in its request cycle, with the deadline that applies there.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Phase {
    /// Between requests: closed quietly at the deadline.
    Idle(Instant),
    /// Part of a request has arrived: answered `408` at the deadline.
    Reading(Instant),
    /// With the service: no deadline (every request is answered).
    Serving,
    /// An answer is being written: closed at the deadline.
    Writing(Instant),
    /// Refused and answered: the rest of the request is read and dropped until the deadline.
    Lingering(Instant),
}

/// What the answer of the request being served depends on.
pub(super) struct Serving {
    pub(super) version: HTTPVersion,
    pub(super) head_only: bool,
    pub(super) persistence: Persistence,
}

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) remote: SocketAddr,
    pub(super) session: Session,
    pub(super) output: Vec<u8>,
    pub(super) written: usize,
    /// The output is `100 Continue`: the request goes on once it is out.
    pub(super) interim: bool,
    pub(super) phase: Phase,
    pub(super) serving: Option<Serving>,
    /// Close once the output is written (the request asked to, or it was refused).
    pub(super) close_after: bool,
    /// After the answer, read and drop what the client still sends before closing.
    pub(super) linger: bool,
    /// Bytes the lingering close may still drop.
    pub(super) linger_budget: u64,
    /// The client has shut its side down: no more requests will come.
    pub(super) read_closed: bool,
    /// Bytes of the current request received so far, and when it (or the idle wait) began:
    /// who is shed first when the listener is full.
    pub(super) request_bytes: u64,
    pub(super) since: Instant,
    pub(super) opened: Instant,
}

/// How a read of everything available ended.
pub(super) enum Fill {
    /// The socket has nothing more (or the client closed its side).
    Drained,
    /// The session took no more input; the socket may hold more.
    Full,
    Failed,
}

/// What to do with a connection after working on it.
#[derive(PartialEq)]
pub(super) enum Next {
    Keep,
    Close,
}

impl Conn {
    /// Reads everything available while the session takes input.
    pub(super) fn fill(&mut self) -> Fill {
        let mut buf = [0u8; READ_CHUNK];
        while !self.read_closed {
            if !self.session.wants_input() {
                return Fill::Full;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => self.read_closed = true,
                Ok(n) => {
                    self.request_bytes += n as u64;
                    self.session.feed(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Fill::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Fill::Failed,
            }
        }
        Fill::Drained
    }

    /// The lingering close: reads and drops until the client closes, the budget is spent or
    /// (checked by the deadline sweep) the time is up.
    pub(super) fn drain(&mut self) -> Next {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    self.linger_budget = self.linger_budget.saturating_sub(n as u64);
                    if self.linger_budget == 0 {
                        return Next::Close;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            }
        }
    }

    /// Writes as much of the output as the socket takes: `Ok(true)` once all of it is out.
    pub(super) fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Once the output is out: go on with the request (after `100 Continue`), linger, close,
    /// or wait for the next request.
    pub(super) fn after_output(&mut self, limits: &Limits) -> Next {
        self.output.clear();
        self.written = 0;
        if std::mem::take(&mut self.interim) {
            return Next::Keep;
        }
        if self.close_after {
            // Let the client read the answer before the socket closes under it.
            let _ = self.stream.shutdown(Shutdown::Write);
            if self.linger && !self.read_closed {
                self.phase = Phase::Lingering(Instant::now() + limits.linger_time);
                return Next::Keep;
            }
            return Next::Close;
        }
        self.session.answered();
        let now = Instant::now();
        self.phase = Phase::Idle(now + limits.idle_timeout);
        (self.request_bytes, self.since) = (0, now);
        Next::Keep
    }

    /// Answers `err`, then lingers and closes.
    pub(super) fn refuse(&mut self, err: ApiError, limits: &Limits) {
        self.close_after = true;
        self.linger = true;
        self.serving = None;
        self.output.clear();
        self.interim = false;
        let _ = write_bytes(
            &mut self.output,
            err.reply(),
            HTTPVersion(1, 1),
            false,
            Persistence::Close,
        );
        self.written = 0;
        self.phase = Phase::Writing(Instant::now() + limits.write_timeout);
    }
}

pub(super) fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Over the connection limit with nothing to shed: a short `503` written without blocking,
/// then close.
pub(super) fn refuse_busy(stream: std::net::TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut out = Vec::new();
    let _ = write_bytes(
        &mut out,
        ApiError::Busy.reply(),
        HTTPVersion(1, 1),
        false,
        Persistence::Close,
    );
    let _ = (&stream).write(&out);
}
