//! The connection layer of both listeners: one thread serves every connection of a listener
//! from one `epoll` set (through mio), and a request's answer may come later, from another
//! thread (the journal writer once a trigger's job is committed, a status worker once a page
//! is rendered). Only a streamed answer (a followed log) takes a thread of its own, at most
//! [`Limits::max_streams`] at once.
//!
//! Why an event loop and not a thread per connection: a trigger spends nearly all its time
//! waiting for the group commit, and a commit wakes this thread once for its whole batch; and
//! an idle or slow connection costs a few hundred bytes here instead of a thread, so that a
//! flood of them cannot starve real clients. When the connection limit is reached, the
//! connections that have sent the least (idle or trickling ones) are shed to make room.
//!
//! Each connection runs a [`Session`] (framing, `100 Continue`, refusals) within the
//! [`Limits`]: the time a request may take to arrive, idle and write timeouts, and a
//! lingering close after a refusal (the rest of the request is read and dropped for a bounded
//! time and size, so the client reads the answer instead of a reset). A panic while serving
//! one request costs that connection only.

use super::body::BodyPolicy;
use super::limits::Limits;
use super::request::Request;
use super::response::{write_bytes, write_stream, Persistence, Reply};
use super::session::{default_policy, Session, Step, CONTINUE};
use super::ApiError;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// When the connection limit is reached, this share of it is shed at once (the least active
/// connections), so that a flood does not cost a scan per accepted connection.
const SHED_FRACTION: usize = 64;

/// Serves requests: answers each now or later, from any thread, through its [`Answer`].
pub trait Service: Send + Sync + 'static {
    fn serve(&self, req: Request, answer: Answer);

    /// Called on the listener thread every tick (about 50 ms), for answers with deadlines.
    fn tick(&self, _now: Instant) {}

    /// The listener stops: answer now whatever was held for later.
    fn stopping(&self) {}

    /// How much body a request may carry, and how much of it [`Service::serve`] reads.
    fn body_policy(&self, req: &Request, limits: &Limits) -> BodyPolicy {
        default_policy(req, limits)
    }
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
                log::warn!("cannot wake a listener: {e}");
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
        service: Arc<dyn Service>,
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
            service,
            limits,
            mailbox: mailbox.clone(),
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            accept_retry: false,
            streams: Arc::new(AtomicUsize::new(0)),
            stream_name: format!("{name}-stream"),
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

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
    /// With the service: no deadline (every request is answered).
    Serving,
    /// An answer is being written: closed at the deadline.
    Writing(Instant),
    /// Refused and answered: the rest of the request is read and dropped until the deadline.
    Lingering(Instant),
}

/// What the answer of the request being served depends on.
struct Serving {
    version: HTTPVersion,
    head_only: bool,
    persistence: Persistence,
}

struct Conn {
    stream: TcpStream,
    remote: SocketAddr,
    session: Session,
    output: Vec<u8>,
    written: usize,
    /// The output is `100 Continue`: the request goes on once it is out.
    interim: bool,
    phase: Phase,
    serving: Option<Serving>,
    /// Close once the output is written (the request asked to, or it was refused).
    close_after: bool,
    /// After the answer, read and drop what the client still sends before closing.
    linger: bool,
    /// Bytes the lingering close may still drop.
    linger_budget: u64,
    /// The client has shut its side down: no more requests will come.
    read_closed: bool,
    /// Bytes of the current request received so far, and when it (or the idle wait) began:
    /// who is shed first when the listener is full.
    request_bytes: u64,
    since: Instant,
    opened: Instant,
}

struct EventLoop {
    poll: Poll,
    socket: TcpListener,
    service: Arc<dyn Service>,
    limits: Limits,
    mailbox: Arc<Mailbox>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// An accept failed (out of file descriptors, say): retry on the next tick, since the
    /// listener will not report the connections already queued again.
    accept_retry: bool,
    /// Streams being written on threads of their own.
    streams: Arc<AtomicUsize>,
    stream_name: String,
}

/// How a read of everything available ended.
enum Fill {
    /// The socket has nothing more (or the client closed its side).
    Drained,
    /// The session took no more input; the socket may hold more.
    Full,
    Failed,
}

/// What to do with a connection after working on it.
#[derive(PartialEq)]
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
                    log::warn!("poll on a listener failed: {e}");
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
                let service = &self.service;
                if catch_unwind(AssertUnwindSafe(|| service.stopping())).is_err() {
                    log::error!("a panic while a listener stops");
                }
            }
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK || stopping.is_some() {
                last_tick = now;
                self.expire(now, stopping.is_some());
                let service = &self.service;
                if catch_unwind(AssertUnwindSafe(|| service.tick(now))).is_err() {
                    log::error!("a panic in a listener's tick");
                }
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
                // Out of file descriptors before the connection limit (a low `ulimit -n`):
                // shed as if the limit were reached, and take the connection.
                Err(e) if is_out_of_descriptors(&e) && self.shed() => continue,
                Err(e) => {
                    // EMFILE, ENOBUFS, ECONNABORTED…: none of them ends the listener. The
                    // connection stays queued; the next tick tries again.
                    log::warn!("accept failed: {e}; retrying");
                    self.accept_retry = true;
                    return;
                }
            };
            if self.conns.len() >= self.limits.max_connections && !self.shed() {
                refuse_busy(stream);
                continue;
            }
            if let Err(e) = self.adopt(stream, remote) {
                log::warn!("cannot serve a connection from {remote}: {e}");
            }
        }
    }

    /// Closes the least active connections to make room: lingering ones first, then idle ones
    /// (the longest idle first), then those whose request is arriving slowest (bytes of the
    /// request so far per second). A connection younger than [`Limits::shed_grace`] is spared (a new
    /// client has not had time to send its request), and so are those being served or
    /// answered. Returns whether any was shed.
    fn shed(&mut self) -> bool {
        let now = Instant::now();
        let mut candidates: Vec<((u8, u64), Token)> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.opened) >= self.limits.shed_grace)
            .filter_map(|(token, c)| {
                let waited = now.duration_since(c.since).as_millis() as u64;
                let key = match c.phase {
                    Phase::Lingering(_) => (0, 0),
                    // Longest idle first: the smaller the key, the sooner shed.
                    Phase::Idle(_) => (1, u64::MAX - waited),
                    // Slowest first: bytes per second of the request so far.
                    Phase::Reading(_) => (2, c.request_bytes * 1000 / waited.max(1)),
                    Phase::Serving | Phase::Writing(_) => return None,
                };
                Some((key, *token))
            })
            .collect();
        if candidates.is_empty() {
            return false;
        }
        let count = (self.limits.max_connections / SHED_FRACTION).clamp(1, candidates.len());
        if count < candidates.len() {
            candidates.select_nth_unstable(count - 1);
        }
        for (_, token) in candidates.into_iter().take(count) {
            self.close(token);
        }
        log::debug!("connection limit reached: shed {count} least active connections");
        true
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
        let now = Instant::now();
        let conn = Conn {
            stream,
            remote,
            session: Session::new(self.limits),
            output: Vec::new(),
            written: 0,
            interim: false,
            phase: Phase::Idle(now + self.limits.idle_timeout),
            serving: None,
            close_after: false,
            linger: false,
            linger_budget: self.limits.linger_bytes,
            read_closed: false,
            request_bytes: 0,
            since: now,
            opened: now,
        };
        self.conns.insert(token, conn);
        // Bytes may have arrived before the registration; edge-triggered readiness would not
        // report them.
        self.on_ready(token);
        Ok(())
    }

    /// Works on one connection; a panic in doing so costs that connection only.
    fn on_ready(&mut self, token: Token) {
        let next = catch_unwind(AssertUnwindSafe(|| self.work(token))).unwrap_or_else(|_| {
            log::error!("a panic while serving a connection; it is closed");
            Next::Close
        });
        if next == Next::Close {
            self.close(token);
        }
    }

    /// Writes what the connection owes, reads what it has, and moves its requests on.
    fn work(&mut self, token: Token) -> Next {
        let stopped = self.mailbox.stopped.load(Ordering::SeqCst);
        let Some(conn) = self.conns.get_mut(&token) else {
            return Next::Keep;
        };
        loop {
            if !conn.output.is_empty() {
                match conn.flush() {
                    Ok(true) => {
                        if conn.after_output(&self.limits) == Next::Close {
                            return Next::Close;
                        }
                    }
                    Ok(false) => return Next::Keep,
                    Err(_) => return Next::Close,
                }
            }
            if let Phase::Lingering(_) = conn.phase {
                return conn.drain();
            }
            let drained = match conn.fill() {
                Fill::Drained => true,
                Fill::Full => false,
                Fill::Failed => return Next::Close,
            };
            if matches!(conn.phase, Phase::Serving) {
                return Next::Keep;
            }
            if stopped {
                // Stopping: no new requests, pipelined or partly read; the next daemon answers
                // them.
                return Next::Close;
            }
            let service = &self.service;
            match conn
                .session
                .step(&|req, limits| service.body_policy(req, limits))
            {
                Step::Wait if conn.read_closed => return Next::Close,
                // The buffer filled before the socket was drained: read on, or the rest
                // (whose readiness was already reported) would never be.
                Step::Wait if !drained && conn.session.wants_input() => {}
                Step::Wait => {
                    if conn.session.in_request() {
                        if let Phase::Idle(_) = conn.phase {
                            let now = Instant::now();
                            conn.phase = Phase::Reading(now + self.limits.request_timeout);
                            conn.since = now;
                        }
                    }
                    return Next::Keep;
                }
                Step::Continue => {
                    conn.output.extend_from_slice(CONTINUE);
                    conn.interim = true;
                }
                Step::Refuse(err) => conn.refuse(err, &self.limits),
                Step::Serve(mut req) => {
                    req.remote = Some(conn.remote);
                    conn.phase = Phase::Serving;
                    conn.serving = Some(Serving {
                        version: req.version.clone(),
                        head_only: req.method == Method::Head,
                        persistence: if req.close {
                            Persistence::Close
                        } else if req.keep_alive_1_0() {
                            Persistence::KeepAlive1_0
                        } else {
                            Persistence::KeepOpen
                        },
                    });
                    conn.close_after = req.close;
                    let answer = Answer {
                        token,
                        mailbox: Some(self.mailbox.clone()),
                    };
                    let service = &self.service;
                    // A panic drops the answer, which then answers 500.
                    if catch_unwind(AssertUnwindSafe(|| service.serve(req, answer))).is_err() {
                        log::error!("a panic while serving a request; answered 500");
                    }
                    return Next::Keep;
                }
            }
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
            let reply = catch_unwind(AssertUnwindSafe(make)).unwrap_or_else(|_| {
                ApiError::Internal("a panic while building an answer".into()).reply()
            });
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            let Some(serving) = conn.serving.take() else {
                continue;
            };
            let reply = if reply.is_stream() {
                match self.hand_off_stream(token, reply, serving.version.clone(), serving.head_only)
                {
                    Ok(()) => continue,
                    Err(busy) => busy,
                }
            } else {
                reply
            };
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            let _ = write_bytes(
                &mut conn.output,
                reply,
                serving.version,
                serving.head_only,
                serving.persistence,
            );
            conn.written = 0;
            conn.phase = Phase::Writing(Instant::now() + self.limits.write_timeout);
            self.on_ready(token);
        }
    }

    /// Gives the connection to a thread of its own that writes the streamed reply, then
    /// closes. Past [`Limits::max_streams`] the reply is a `503` instead.
    fn hand_off_stream(
        &mut self,
        token: Token,
        reply: Reply,
        version: HTTPVersion,
        head_only: bool,
    ) -> Result<(), Reply> {
        if self.streams.load(Ordering::SeqCst) >= self.limits.max_streams {
            return Err(ApiError::Busy.reply());
        }
        let Some(mut conn) = self.conns.remove(&token) else {
            return Ok(());
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let stream = std::net::TcpStream::from(OwnedFd::from(conn.stream));
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(self.limits.write_timeout));
        let slot = StreamSlot::take(&self.streams);
        let spawned = std::thread::Builder::new()
            .name(self.stream_name.clone())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _slot = slot;
                let written = catch_unwind(AssertUnwindSafe(|| {
                    write_stream(&stream, reply, version, head_only)
                }));
                if written.is_err() {
                    log::error!("a panic while streaming an answer; the connection is closed");
                }
                let _ = stream.shutdown(Shutdown::Both);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a stream thread: {e}");
        }
        Ok(())
    }

    /// Applies the deadlines; when stopping, closes every connection not owed an answer.
    fn expire(&mut self, now: Instant, stopping: bool) {
        let (mut expired, mut timed_out) = (Vec::new(), Vec::new());
        for (token, conn) in &mut self.conns {
            let late = |deadline: Instant| now >= deadline;
            match conn.phase {
                Phase::Idle(d) if late(d) || stopping => expired.push(*token),
                Phase::Reading(_) if stopping => expired.push(*token),
                Phase::Reading(d) if late(d) => {
                    conn.refuse(ApiError::RequestTimeout, &self.limits);
                    timed_out.push(*token);
                }
                Phase::Writing(d) | Phase::Lingering(d) if late(d) => expired.push(*token),
                _ => {}
            }
        }
        for token in expired {
            self.close(token);
        }
        for token in timed_out {
            self.on_ready(token);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Over the connection limit with nothing to shed: a short `503` written without blocking,
/// then close.
fn refuse_busy(stream: std::net::TcpStream) {
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

/// Counts a stream thread while it lives.
struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(count: &Arc<AtomicUsize>) -> StreamSlot {
        count.fetch_add(1, Ordering::SeqCst);
        StreamSlot(count.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Conn {
    /// Reads everything available while the session takes input.
    fn fill(&mut self) -> Fill {
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
    fn drain(&mut self) -> Next {
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
    fn flush(&mut self) -> io::Result<bool> {
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
    fn after_output(&mut self, limits: &Limits) -> Next {
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
    fn refuse(&mut self, err: ApiError, limits: &Limits) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `/panic` by panicking, anything else `200` with its path.
    struct Echo;

    impl Service for Echo {
        fn serve(&self, req: Request, answer: Answer) {
            if req.path == "/panic" {
                panic!("a bug in a handler");
            }
            answer.send(move || Reply::text(200, req.path));
        }
    }

    fn listener(limits: Limits) -> Listener {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        Listener::start(socket, "test-listener", Arc::new(Echo), limits).unwrap()
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[test]
    fn a_panic_in_a_handler_costs_one_request() {
        let mut l = listener(Limits::DEFAULT);
        let answer = get(l.local_addr(), "/panic");
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        let answer = get(l.local_addr(), "/after");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("/after"));
        l.stop();
    }

    #[test]
    fn when_full_the_least_active_connections_make_room() {
        let limits = Limits {
            max_connections: 64,
            shed_grace: Duration::ZERO,
            ..Limits::DEFAULT
        };
        let mut l = listener(limits);
        let addr = l.local_addr();
        // Fill the listener with idle connections, then make sure it has taken them all.
        let idle: Vec<std::net::TcpStream> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let answer = get(addr, "/probe");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Every new client is served although the limit is reached; the idle ones pay.
        for i in 0..10 {
            let answer = get(addr, &format!("/probe{i}"));
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        let mut closed = 0;
        for mut c in idle {
            c.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 16];
            if matches!(c.read(&mut buf), Ok(0)) {
                closed += 1;
            }
        }
        assert!(closed >= 1, "no idle connection was shed");
        l.stop();
    }

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
}
