//! Streamed answers (a followed log, the live pages' events): the one kind of answer that
//! takes a thread, handed the connection by the event loop, at most
//! [`super::limits::Limits::max_streams`] at once. The thread writes the head and the
//! stream's output, then closes the connection; a panic costs that connection only.

use super::limits::Limits;
use super::response::{write_stream, Reply};
use std::net::{Shutdown, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tiny_http::HTTPVersion;

/// A streamed reply and what its framing depends on.
pub(super) struct StreamJob {
    pub reply: Reply,
    pub version: HTTPVersion,
    pub head_only: bool,
}

/// Writes `job` to `stream` on a thread of its own named `name`, counted in `count` while it
/// lives.
pub(super) fn spawn(
    stream: TcpStream,
    job: StreamJob,
    limits: &Limits,
    count: &Arc<AtomicUsize>,
    name: &str,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    let slot = StreamSlot::take(count);
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(move || {
            let _slot = slot;
            let StreamJob {
                reply,
                version,
                head_only,
            } = job;
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
