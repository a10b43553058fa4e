//! The threaded connection layer of the status listener: one accept thread, and one thread per
//! connection, at most [`Limits::max_connections`] at once (past that a connection gets a `503`
//! and is closed). Its log streams block while a build runs, which a thread can afford. Request
//! framing and response writing are [`super::wire`]'s; the hook listener runs them on
//! [`super::poll`]'s event loop instead.

use super::wire::{read_request, refuse_busy, write_reply, Limits, ReadFail, Request};
use super::Reply;
use std::io::{self, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{HTTPVersion, Method};

/// How often an idle accept loop looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Answers requests. Called on connection threads, so it must be cheap to share.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request) -> Reply;
}

/// A bound listener with its accept thread.
pub struct Listener {
    socket: Arc<TcpListener>,
    stopped: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Starts accepting on `socket`; `name` names the threads (`http-public`, `http-status`).
    pub fn start(
        socket: TcpListener,
        name: &str,
        handler: Arc<dyn Handler>,
        limits: Limits,
    ) -> io::Result<Listener> {
        let socket = Arc::new(socket);
        let stopped = Arc::new(AtomicBool::new(false));
        let (sock, stop) = (socket.clone(), stopped.clone());
        let conn_name = format!("{name}-conn");
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || accept_loop(&sock, &stop, &conn_name, handler, limits))?;
        Ok(Listener {
            socket,
            stopped,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Stops accepting; connections in progress finish on their own threads. Connections not
    /// yet accepted stay queued in the socket: with socket activation systemd keeps it open
    /// and the next daemon answers them.
    pub fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decrements the open-connection count when a connection thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    socket: &TcpListener,
    stopped: &AtomicBool,
    conn_name: &str,
    handler: Arc<dyn Handler>,
    limits: Limits,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut backoff = Duration::from_millis(10);
    while !stopped.load(Ordering::SeqCst) {
        // Accept only what is already queued, so that a stop never takes a connection it will
        // not serve.
        match crate::sys::wait_readable(socket, STOP_CHECK) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                log::warn!("poll on the listener failed: {e}");
                std::thread::sleep(STOP_CHECK);
                continue;
            }
        }
        let (stream, remote) = match socket.accept() {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                // EMFILE, ENOBUFS, ECONNABORTED…: none of them ends the listener.
                log::warn!("accept failed: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            let slot = Slot(open.clone());
            refuse_busy(stream);
            drop(slot);
            continue;
        }
        let slot = Slot(open.clone());
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name(conn_name.to_string())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _slot = slot;
                serve_connection(stream, remote, &*handler, &limits);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// A reader that fails with `TimedOut` once `deadline` has passed, however slowly bytes trickle
/// in: each read may wait only for the time that is left.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match (&*self.stream).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }
}

fn serve_connection(stream: TcpStream, remote: SocketAddr, handler: &dyn Handler, limits: &Limits) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    let mut reader = BufReader::with_capacity(
        4096,
        DeadlineReader {
            stream: &stream,
            deadline: Instant::now() + limits.idle_timeout,
        },
    );
    loop {
        reader.get_mut().deadline = Instant::now() + limits.idle_timeout;
        let request_timeout = limits.request_timeout;
        let started = |r: &mut BufReader<DeadlineReader<'_>>| {
            r.get_mut().deadline = Instant::now() + request_timeout;
        };
        match read_request(&mut reader, limits, Some(remote), started) {
            Ok(req) => {
                let reply = handler.handle(&req);
                let close = req.wants_close();
                let head_only = req.method == Method::Head;
                let reusable = write_reply(
                    &stream,
                    reply,
                    req.version.clone(),
                    &req.headers,
                    head_only,
                    close,
                );
                if close || !matches!(reusable, Ok(true)) {
                    return;
                }
            }
            Err(ReadFail::Quiet) => return,
            Err(ReadFail::Answer(err)) => {
                let _ = write_reply(&stream, err.reply(), HTTPVersion(1, 1), &[], false, true);
                // Let the client read the answer before the socket closes under it.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                return;
            }
        }
    }
}
