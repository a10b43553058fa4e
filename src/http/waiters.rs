//! Long polls on a hook URL (`…/jobs/{id}?wait=N`): callers waiting for a job to end. A waiter
//! is an [`Answer`] and a deadline, held here, not a thread: the journal's commit callback
//! calls [`Waiters::ended`] for every job that reached a terminal state, and the hook
//! listener's event loop calls [`Waiters::expire`] on each tick. Either way the answer is the
//! job as the journal has it at that moment.

use super::event_loop::Answer;
use super::Reply;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Callers that may wait at once, below the connection limit, so that long polls alone cannot
/// fill a listener (past it a caller is answered at once with the job as it is).
pub const MAX_WAITERS: usize = 8_000;

/// Builds the answer for a job (on the listener thread, when it is written).
pub type Render = fn(&crate::journal::Journal, &str) -> Reply;

struct Waiter {
    answer: Answer,
    deadline: Instant,
}

/// Every caller waiting for a job to end, by job id.
pub struct Waiters {
    journal: crate::journal::Journal,
    metrics: Arc<Metrics>,
    render: Render,
    waiting: Mutex<HashMap<String, Vec<Waiter>>>,
}

impl Waiters {
    pub fn new(journal: crate::journal::Journal, metrics: Arc<Metrics>, render: Render) -> Waiters {
        Waiters {
            journal,
            metrics,
            render,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Holds `answer` until job `id` ends or `deadline` passes; gives it back when
    /// [`MAX_WAITERS`] callers wait already (the caller then answers at once).
    pub fn wait(&self, id: &str, answer: Answer, deadline: Instant) -> Option<Answer> {
        let mut waiting = self.lock();
        if waiting.values().map(Vec::len).sum::<usize>() >= MAX_WAITERS {
            return Some(answer);
        }
        waiting
            .entry(id.to_string())
            .or_default()
            .push(Waiter { answer, deadline });
        self.metrics.waiting_callers.fetch_add(1, Relaxed);
        None
    }

    /// Job `id` reached a terminal state: answers everyone waiting for it. The job is read
    /// and its answer built once, on the listener thread, for all of them.
    pub fn ended(&self, id: &str) {
        let Some(waiters) = self.lock().remove(id) else {
            return;
        };
        let shared: Arc<Mutex<Option<Reply>>> = Arc::new(Mutex::new(None));
        for w in waiters {
            self.metrics.waiting_callers.fetch_sub(1, Relaxed);
            let (journal, id, render, shared) = (
                self.journal.clone(),
                id.to_string(),
                self.render,
                shared.clone(),
            );
            w.answer.send(move || {
                let mut first = shared.lock().unwrap_or_else(PoisonError::into_inner);
                let reply = first.get_or_insert_with(|| render(&journal, &id));
                reply.try_clone().unwrap_or_else(|| render(&journal, &id))
            });
        }
    }

    /// Answers the waiters whose time is up, with the job as it is now.
    pub fn expire(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut waiting = self.lock();
            waiting.retain(|id, list| {
                let (late, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(list)
                    .into_iter()
                    .partition(|w| w.deadline <= now);
                due.extend(late.into_iter().map(|w| (id.clone(), w)));
                *list = keep;
                !list.is_empty()
            });
        }
        for (id, w) in due {
            self.send(w.answer, &id);
        }
    }

    fn send(&self, answer: Answer, id: &str) {
        self.metrics.waiting_callers.fetch_sub(1, Relaxed);
        let (journal, id, render) = (self.journal.clone(), id.to_string(), self.render);
        answer.send(move || render(&journal, &id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Waiter>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
