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

pub use super::answer::Answer;
use super::answer::Mailbox;
use super::body::BodyPolicy;
use super::conn::{is_out_of_descriptors, refuse_busy, Conn, Fill, Next, Phase, Serving};
use super::limits::Limits;
use super::request::Request;
use super::response::{write_bytes, Persistence, Reply};
use super::session::{default_policy, Session, Step, CONTINUE};
use super::streams::{self, StreamJob};
use super::ApiError;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
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
        let thread = crate::supervise::spawn_core(name, move || event_loop.run())?;
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
                        persistence: Persistence::of(&req),
                    });
                    conn.close_after = req.close;
                    let answer = Answer::new(token, self.mailbox.clone());
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
        streams::spawn(
            stream,
            StreamJob {
                reply,
                version,
                head_only,
            },
            &self.limits,
            &self.streams,
            &self.stream_name,
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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
}
