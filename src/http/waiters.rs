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

    /// Holds `answer` until job `id` ends or `deadline` passes.
    pub fn wait(&self, id: &str, answer: Answer, deadline: Instant) {
        self.lock()
            .entry(id.to_string())
            .or_default()
            .push(Waiter { answer, deadline });
        self.metrics.waiting_callers.fetch_add(1, Relaxed);
    }

    /// Job `id` reached a terminal state: answers everyone waiting for it.
    pub fn ended(&self, id: &str) {
        let Some(waiters) = self.lock().remove(id) else {
            return;
        };
        for w in waiters {
            self.send(w.answer, id);
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
