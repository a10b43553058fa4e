//! A fixed pool of threads for a service whose answers block (the status listener reads the
//! journal and log files): the event loop hands each request over a bounded queue and never
//! waits itself. Past the queue's bound a request is answered `503` at once. A panic while
//! answering one request answers it `500` and leaves the thread serving.

use super::event_loop::{Answer, Service};
use super::request::Request;
use super::{ApiError, Reply};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Answers one request, blocking.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Requests waiting for a pool thread, at most.
const QUEUE: usize = 1024;

pub struct Pool {
    queue: Sender<(Request, Answer)>,
}

impl Pool {
    /// Starts `threads` threads named `name`; they end when the pool is dropped.
    pub fn start(name: &str, threads: usize, handler: Handler) -> io::Result<Pool> {
        let (queue, requests) = crossbeam_channel::bounded(QUEUE);
        for _ in 0..threads.max(1) {
            let (requests, handler) = (requests.clone(), handler.clone());
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || answer_all(&requests, &*handler))?;
        }
        Ok(Pool { queue })
    }
}

fn answer_all(
    requests: &Receiver<(Request, Answer)>,
    handler: &(dyn Fn(&Request) -> Reply + Send + Sync),
) {
    for (req, answer) in requests {
        let reply = catch_unwind(AssertUnwindSafe(|| handler(&req))).unwrap_or_else(|_| {
            log::error!("a panic while answering {}; answered 500", req.path);
            ApiError::Internal("a panic while answering".into()).reply()
        });
        answer.send(move || reply);
    }
}

impl Service for Pool {
    fn serve(&self, req: Request, answer: Answer) {
        match self.queue.try_send((req, answer)) {
            Ok(()) => {}
            Err(TrySendError::Full((_, answer))) => answer.send(|| ApiError::Busy.reply()),
            Err(TrySendError::Disconnected((_, answer))) => {
                answer.send(|| ApiError::Internal("the status threads are gone".into()).reply())
            }
        }
    }
}
