//! The poll-driven connection layer of the public hook listener: one thread serves every
//! connection from one `epoll` set (through mio), and a request's answer may come later, from
//! another thread (the journal writer, once the trigger's job is committed).
//!
//! Why not a thread per connection, as [`super::conn::Listener`] does for the status side: a
//! trigger spends nearly all its time waiting for the group commit, and with a thread per
//! connection every trigger costs two sleeps and two wake-ups (for the next request, then for
//! the commit). Here a commit wakes this thread once for its whole batch, and the requests that
//! arrive while a commit is on disk reach the writer together, as the next batch.
//!
//! Requests are framed by the same parser and within the same [`Limits`] as the threaded
//! layer: head size, header count, body size, the time a request may take to arrive, idle and
//! write timeouts, and the connection limit (past it a connection is answered `503`). A
//! connection carries one request at a time; bytes of the next one wait until it is answered.

use super::wire::{parse_request_prefix, refuse_busy, write_reply, Limits, Request};
use super::{ApiError, Reply};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tiny_http::{HTTPVersion, Method};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// The first connection token; tokens are never reused, so a late answer cannot reach the
/// wrong connection.
const FIRST_CONN: usize = 2;
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(50);
/// A chunked body carries framing besides its payload: an incomplete request may buffer this
/// many times the body limit (chunks of 8 bytes or more fit) before it is refused (`413`).
const MAX_INPUT_PER_BODY_BYTE: usize = 2;

/// Answers a request now or later, from any thread, by calling [`Answer::send`] once.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request, answer: Answer);
}

/// Builds a reply on the listener thread, so that the thread that finishes a request (the
/// journal writer) only hands it on.
type Later = Box<dyn FnOnce() -> Reply + Send>;

/// Answers waiting to be written, and the flag that keeps a burst of them to one wake-up.
struct Mailbox {
    answers: Mutex<Vec<(Token, Later)>>,
    woken: AtomicBool,
    stopped: AtomicBool,
    waker: Waker,
}

impl Mailbox {
    fn post(&self, token: Token, make: Later) {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((token, make));
        self.wake();
    }

    fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::warn!("cannot wake the hook listener: {e}");
            }
        }
    }
}

/// The way back to one request's connection.
pub struct Answer {
    token: Token,
    /// Taken by the one answer sent.
    mailbox: Option<Arc<Mailbox>>,
}

impl Answer {
    /// Hands the reply to the listener thread; `make` runs there.
    pub fn send(mut self, make: impl FnOnce() -> Reply + Send + 'static) {
        if let Some(mailbox) = self.mailbox.take() {
            mailbox.post(self.token, Box::new(make));
        }
    }
}

impl Drop for Answer {
    /// An answer dropped unsent (its op lost with a thread that panicked, say) still answers,
    /// with a `500`, rather than leave its connection waiting for ever.
    fn drop(&mut self) {
        if let Some(mailbox) = self.mailbox.take() {
            let lost = || ApiError::Internal("the request was dropped unanswered".into()).reply();
            mailbox.post(self.token, Box::new(lost));
        }
    }
}

/// A bound listener with its thread.
pub struct Listener {
    addr: SocketAddr,
    mailbox: Arc<Mailbox>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Starts serving `socket` on a thread named `name`.
    pub fn start(
        socket: TcpListener,
        name: &str,
        handler: Arc<dyn Handler>,
        limits: Limits,
    ) -> io::Result<Listener> {
        socket.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let mailbox = Arc::new(Mailbox {
            answers: Mutex::new(Vec::new()),
            woken: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            waker: Waker::new(poll.registry(), WAKER)?,
        });
        poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let addr = socket.local_addr()?;
        let mut event_loop = EventLoop {
            poll,
            socket,
            handler,
            limits,
            mailbox: mailbox.clone(),
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            accept_retry: false,
        };
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || event_loop.run())?;
        Ok(Listener {
            addr,
            mailbox,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    /// Stops accepting and reading new requests; requests already taken are answered (within
    /// the write timeout) before this returns. Connections not yet accepted stay queued in the
    /// socket: with socket activation systemd keeps it open and the next daemon answers them.
    pub fn stop(&mut self) {
        self.mailbox.stopped.store(true, Ordering::SeqCst);
        self.mailbox.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a connection is in its request cycle, with the deadline that applies there.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    /// Between requests: closed quietly at the deadline.
    Idle(Instant),
    /// Part of a request has arrived: answered `408` at the deadline.
    Reading(Instant),
    /// With the handler: no deadline (the journal answers every op).
    Handling,
    /// An answer is being written: closed at the deadline.
    Writing(Instant),
}

struct Conn {
    stream: TcpStream,
    remote: SocketAddr,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    phase: Phase,
    /// The request with the handler: what its answer's framing depends on.
    request: Option<Request>,
    /// Close once the output is written (the request asked to, or it was refused).
    close_after: bool,
    /// The client has shut its side down: no more requests will come.
    read_closed: bool,
}

struct EventLoop {
    poll: Poll,
    socket: TcpListener,
    handler: Arc<dyn Handler>,
    limits: Limits,
    mailbox: Arc<Mailbox>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// An accept failed (out of file descriptors, say): retry on the next tick, since the
    /// listener will not report the connections already queued again.
    accept_retry: bool,
}

/// What to do with a connection after working on it.
enum Next {
    Keep,
    Close,
}

impl EventLoop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_tick = Instant::now();
        let mut stopping: Option<Instant> = None;
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("poll on the hook listener failed: {e}");
                    std::thread::sleep(TICK);
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER if stopping.is_none() => self.accept_all(),
                    LISTENER | WAKER => {}
                    token => self.on_ready(token),
                }
            }
            self.deliver_answers();
            if stopping.is_none() && self.mailbox.stopped.load(Ordering::SeqCst) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&self.socket.as_raw_fd()));
                stopping = Some(Instant::now() + self.limits.write_timeout);
            }
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK || stopping.is_some() {
                last_tick = now;
                self.expire(now, stopping.is_some());
                if self.accept_retry && stopping.is_none() {
                    self.accept_all();
                }
            }
            if let Some(deadline) = stopping {
                if self.conns.is_empty() || now >= deadline {
                    return;
                }
            }
        }
    }

    /// Accepts every queued connection (mio's readiness is edge-triggered).
    fn accept_all(&mut self) {
        self.accept_retry = false;
        loop {
            let (stream, remote) = match self.socket.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE, ENOBUFS, ECONNABORTED…: none of them ends the listener. The
                    // connection stays queued; the next tick tries again.
                    log::warn!("accept failed: {e}; retrying");
                    self.accept_retry = true;
                    return;
                }
            };
            if self.conns.len() >= self.limits.max_connections {
                refuse_busy(stream);
                continue;
            }
            if let Err(e) = self.adopt(stream, remote) {
                log::warn!("cannot serve a connection from {remote}: {e}");
            }
        }
    }

    fn adopt(&mut self, stream: std::net::TcpStream, remote: SocketAddr) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let mut stream = TcpStream::from_std(stream);
        let token = Token(self.next_token);
        self.next_token += 1;
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let conn = Conn {
            stream,
            remote,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            phase: Phase::Idle(Instant::now() + self.limits.idle_timeout),
            request: None,
            close_after: false,
            read_closed: false,
        };
        self.conns.insert(token, conn);
        // Bytes may have arrived before the registration; edge-triggered readiness would not
        // report them.
        self.on_ready(token);
        Ok(())
    }

    /// Reads what the connection has, writes what it owes, and starts its next request.
    fn on_ready(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let next = match conn.flush() {
            Ok(true) => conn.finish_answer(&self.limits),
            Ok(false) => Next::Keep,
            Err(_) => Next::Close,
        };
        let next = match next {
            Next::Keep => conn.fill(&self.limits),
            close => close,
        };
        let next = match next {
            Next::Keep => self.dispatch(token),
            close => close,
        };
        if let Next::Close = next {
            self.close(token);
        }
    }

    /// Starts the connection's next request if one has arrived whole and none is in progress.
    fn dispatch(&mut self, token: Token) -> Next {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Next::Close;
        };
        if !conn.output.is_empty() || conn.phase == Phase::Handling {
            return Next::Keep;
        }
        if self.mailbox.stopped.load(Ordering::SeqCst) {
            // Stopping: no new requests; the next daemon answers them.
            return Next::Close;
        }
        match parse_request_prefix(&conn.input, &self.limits) {
            Ok(Some((mut req, used))) => {
                conn.input.drain(..used);
                req.remote = Some(conn.remote);
                conn.phase = Phase::Handling;
                let answer = Answer {
                    token,
                    mailbox: Some(self.mailbox.clone()),
                };
                self.handler.handle(&req, answer);
                conn.close_after |= req.wants_close();
                conn.request = Some(req);
                Next::Keep
            }
            Ok(None) if conn.read_closed => Next::Close,
            Ok(None) => {
                if conn.input.len() > max_input(&self.limits) {
                    conn.refuse(ApiError::BodyTooLarge, &self.limits)
                } else {
                    if !conn.input.is_empty() {
                        if let Phase::Idle(_) = conn.phase {
                            conn.phase =
                                Phase::Reading(Instant::now() + self.limits.request_timeout);
                        }
                    }
                    Next::Keep
                }
            }
            Err(err) => conn.refuse(err, &self.limits),
        }
    }

    /// Writes the answers other threads have sent.
    fn deliver_answers(&mut self) {
        self.mailbox.woken.store(false, Ordering::Release);
        let answers = std::mem::take(
            &mut *self
                .mailbox
                .answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (token, make) in answers {
            // Built even when the client has gone: building it logs the outcome.
            let reply = make();
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            let Some(req) = conn.request.take() else {
                continue;
            };
            let close = conn.close_after;
            let head_only = req.method == Method::Head;
            match write_reply(
                &mut conn.output,
                reply,
                req.version.clone(),
                &req.headers,
                head_only,
                close,
            ) {
                Ok(reusable) => conn.close_after |= !reusable,
                Err(_) => conn.close_after = true,
            }
            conn.written = 0;
            conn.phase = Phase::Writing(Instant::now() + self.limits.write_timeout);
            self.on_ready(token);
        }
    }

    /// Applies the deadlines; when stopping, closes every connection not owed an answer.
    fn expire(&mut self, now: Instant, stopping: bool) {
        let mut expired = Vec::new();
        for (token, conn) in &mut self.conns {
            let late = |deadline: Instant| now >= deadline;
            match conn.phase {
                Phase::Idle(d) if late(d) || stopping => expired.push(*token),
                Phase::Reading(_) if stopping => expired.push(*token),
                Phase::Reading(d) if late(d) => {
                    if let Next::Close = conn.refuse(ApiError::RequestTimeout, &self.limits) {
                        expired.push(*token);
                    }
                }
                Phase::Writing(d) if late(d) => expired.push(*token),
                _ => {}
            }
        }
        for token in expired {
            self.close(token);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

/// Bytes a connection may buffer while a request is incomplete.
fn max_input(limits: &Limits) -> usize {
    limits.max_head_bytes + (limits.max_body_bytes as usize).saturating_mul(MAX_INPUT_PER_BODY_BYTE)
}

impl Conn {
    /// Reads everything available, up to the input bound. Nothing is read while a request is
    /// with the handler or its answer is being written: a client that pipelines requests
    /// waits in its socket buffer, so one connection never buffers more than one request.
    fn fill(&mut self, limits: &Limits) -> Next {
        if self.phase == Phase::Handling || !self.output.is_empty() {
            return Next::Keep;
        }
        let cap = max_input(limits) + 1;
        let mut buf = [0u8; 4096];
        while !self.read_closed && self.input.len() < cap {
            match self.stream.read(&mut buf) {
                Ok(0) => self.read_closed = true,
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            }
        }
        Next::Keep
    }

    /// Writes as much of the output as the socket takes: `Ok(true)` once all of it is out.
    fn flush(&mut self) -> io::Result<bool> {
        if self.output.is_empty() {
            return Ok(false);
        }
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

    /// After an answer is out: close, or wait for the next request.
    fn finish_answer(&mut self, limits: &Limits) -> Next {
        self.output.clear();
        self.written = 0;
        if self.close_after {
            // Let the client read the answer before the socket closes under it.
            let _ = self.stream.shutdown(Shutdown::Write);
            return Next::Close;
        }
        self.phase = Phase::Idle(Instant::now() + limits.idle_timeout);
        Next::Keep
    }

    /// Answers `err` and closes once it is written.
    fn refuse(&mut self, err: ApiError, limits: &Limits) -> Next {
        self.input.clear();
        self.close_after = true;
        self.request = None;
        if write_reply(
            &mut self.output,
            err.reply(),
            HTTPVersion(1, 1),
            &[],
            false,
            true,
        )
        .is_err()
        {
            return Next::Close;
        }
        self.written = 0;
        self.phase = Phase::Writing(Instant::now() + limits.write_timeout);
        match self.flush() {
            Ok(true) => self.finish_answer(limits),
            Ok(false) => Next::Keep,
            Err(_) => Next::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_dropped_unsent_still_answers_500() {
        let poll = Poll::new().unwrap();
        let mailbox = Arc::new(Mailbox {
            answers: Mutex::new(Vec::new()),
            woken: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            waker: Waker::new(poll.registry(), WAKER).unwrap(),
        });
        let answer = |n| Answer {
            token: Token(n),
            mailbox: Some(mailbox.clone()),
        };
        answer(7).send(|| Reply::text(201, "made".into()));
        drop(answer(8));
        let answers = std::mem::take(&mut *mailbox.answers.lock().unwrap());
        let got: Vec<(usize, u16)> = answers
            .into_iter()
            .map(|(token, make)| (token.0, make().status))
            .collect();
        assert_eq!(got, [(7, 201), (8, 500)]);
        assert!(mailbox.woken.load(Ordering::SeqCst));
    }

    #[test]
    fn input_bound_leaves_room_for_a_chunked_body_at_the_limit() {
        let limits = Limits::DEFAULT;
        // A body of max_body_bytes sent as 8-byte chunks ("8\r\n" + 8 bytes + "\r\n").
        let framed = limits.max_body_bytes as usize / 8 * 13 + 5;
        assert!(max_input(&limits) > limits.max_head_bytes + framed);
        assert!(max_input(&limits) < 256 * 1024);
    }
}
