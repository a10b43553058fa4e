//! The way back from another thread to a request's connection: the service answers through
//! an [`Answer`], which posts the reply's builder to the listener's [`Mailbox`] and wakes the
//! event loop (once for a burst of answers). An answer dropped unsent still answers, `500`.

use super::{ApiError, Reply};
use mio::{Token, Waker};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Builds a reply on the listener thread, so that the thread that finishes a request (the
/// journal writer) only hands it on.
pub(super) type Later = Box<dyn FnOnce() -> Reply + Send>;

/// Answers waiting to be written, and the flag that keeps a burst of them to one wake-up.
pub(super) struct Mailbox {
    pub(super) answers: Mutex<Vec<(Token, Later)>>,
    pub(super) woken: AtomicBool,
    pub(super) stopped: AtomicBool,
    pub(super) waker: Waker,
}

impl Mailbox {
    pub(super) fn post(&self, token: Token, make: Later) {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((token, make));
        self.wake();
    }

    pub(super) fn wake(&self) {
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
    pub(super) fn new(token: Token, mailbox: Arc<Mailbox>) -> Answer {
        Answer {
            token,
            mailbox: Some(mailbox),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use mio::Poll;

    const WAKER: Token = Token(1);

    #[test]
    fn an_answer_dropped_unsent_still_answers_500() {
        let poll = Poll::new().unwrap();
        let mailbox = Arc::new(Mailbox {
            answers: Mutex::new(Vec::new()),
            woken: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            waker: Waker::new(poll.registry(), WAKER).unwrap(),
        });
        let answer = |n| Answer::new(Token(n), mailbox.clone());
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
