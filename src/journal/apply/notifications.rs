//! Notifications in the journal: each project's policy, the outbox row that a job's end adds in
//! the same commit as that end, and the record of each attempt to deliver it.

use super::Tables;
use crate::journal::error::JournalError;
use crate::journal::ops::{Attempt, Outcome};
use crate::journal::records::{JobRow, JobState, Notification, NotificationState, NotifyOn};
use crate::journal::schema::{decode, encode};
use redb::ReadableTable;

/// Most earlier jobs of a hook looked at to tell whether a READY build is a recovery.
const MAX_RECOVERY_SCAN: usize = 500;

impl Tables<'_> {
    /// Replaces every project's policy with `projects` (the projects not named notify nothing).
    /// The same policy again writes nothing (a start with an unchanged config commits nothing).
    pub(super) fn set_notify_policy(
        &mut self,
        projects: &[(String, NotifyOn)],
    ) -> Result<Outcome, JournalError> {
        let mut old = Vec::new();
        for entry in self.notify_policy.iter()? {
            let (project, raw) = entry?;
            old.push((project.value().to_string(), raw.value().to_vec()));
        }
        let mut new = Vec::new();
        for (project, on) in projects {
            new.push((project.clone(), encode("a notification policy", on)?));
        }
        new.sort();
        if old == new {
            return Ok(Outcome::NotApplicable);
        }
        for (project, _) in old {
            self.notify_policy.remove(project.as_str())?;
        }
        for (project, bytes) in &new {
            self.notify_policy
                .insert(project.as_str(), bytes.as_slice())?;
        }
        self.policy_cache.clear();
        Ok(Outcome::NotifyPolicySet)
    }

    fn policy_of(&mut self, project: &str) -> Result<NotifyOn, JournalError> {
        if let Some(on) = self.policy_cache.get(project) {
            return Ok(*on);
        }
        let on = match self.notify_policy.get(project)? {
            Some(raw) => decode("notify_policy", project, raw.value())?,
            None => NotifyOn::default(),
        };
        self.policy_cache.insert(project.to_string(), on);
        Ok(on)
    }

    /// `row` has just ended: when its project's policy lists how, it gets a pending
    /// notification and an outbox row, due at once.
    pub(super) fn queue_notification(&mut self, row: &mut JobRow) -> Result<(), JournalError> {
        let on = self.policy_of(&row.job.project)?;
        let state = row.job.state;
        let after_error = state == JobState::Ready
            && on.recovered
            && !on.ready
            && self.previous_build_failed(row)?;
        if !on.wants(state, after_error) {
            return Ok(());
        }
        row.job.notification = Some(Notification {
            state: NotificationState::Pending,
            attempts: 0,
            last_error: None,
        });
        let due = row.job.finished_at.unwrap_or(0);
        self.outbox.insert(row.job.id.as_str(), due)?;
        Ok(())
    }

    /// Whether the newest build of `row`'s hook before it that ended READY or ERROR ended in
    /// ERROR (canceled jobs are skipped: they built nothing).
    fn previous_build_failed(&self, row: &JobRow) -> Result<bool, JournalError> {
        let hook = row.job.hook_id.as_str();
        let earlier = self.by_hook.range((hook, 0)..(hook, row.seq))?;
        for entry in earlier.rev().take(MAX_RECOVERY_SCAN) {
            let id = entry?.1.value().to_string();
            match self.get_job(&id)?.map(|r| r.job.state) {
                Some(JobState::Error) => return Ok(true),
                Some(JobState::Ready) => return Ok(false),
                _ => {}
            }
        }
        Ok(false)
    }

    /// Records one attempt: sent or given up leaves the outbox, a failure with a retry time
    /// stays in it, due then.
    pub(super) fn notified(
        &mut self,
        job_id: &str,
        attempt: &Attempt,
    ) -> Result<Outcome, JournalError> {
        let Some(mut row) = self.get_job(job_id)? else {
            // Retention keeps jobs with a pending notification; a stray row is dropped.
            self.outbox.remove(job_id)?;
            return Ok(Outcome::Notified(None));
        };
        let Some(n) = row.job.notification.as_mut() else {
            self.outbox.remove(job_id)?;
            return Ok(Outcome::Notified(Some(row)));
        };
        if n.state != NotificationState::Pending {
            return Ok(Outcome::NotApplicable);
        }
        n.attempts += 1;
        match attempt {
            Attempt::Sent => {
                n.state = NotificationState::Sent;
                n.last_error = None;
                self.outbox.remove(job_id)?;
            }
            Attempt::Failed {
                error,
                retry_at: Some(at),
            } => {
                n.last_error = Some(error.clone());
                self.outbox.insert(job_id, *at)?;
            }
            Attempt::Failed {
                error,
                retry_at: None,
            } => {
                n.state = NotificationState::Failed;
                n.last_error = Some(error.clone());
                self.outbox.remove(job_id)?;
            }
        }
        self.put_job(row.clone());
        Ok(Outcome::Notified(Some(row)))
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::records::{JobState, NotificationState, NotifyOn};
    use crate::journal::testing::{hook, journal, trigger};
    use crate::journal::{Attempt, Journal, Op, Outcome};

    fn policy(j: &Journal, states: &[&str]) {
        let mut on = NotifyOn::default();
        for s in states {
            assert!(on.add(s));
        }
        let op = Op::SetNotifyPolicy {
            projects: vec![("site".into(), on)],
        };
        assert_eq!(j.submit(op).unwrap(), Outcome::NotifyPolicySet);
    }

    /// Triggers `id` on hook secret `s1` and ends it in `state` (at time 100 + n).
    fn build(j: &Journal, id: &str, state: JobState) {
        trigger(j, "s1", id);
        let now = 100;
        j.submit(Op::Start {
            job_id: id.into(),
            now,
        })
        .unwrap();
        let out = j
            .submit(Op::Finish {
                job_id: id.into(),
                state,
                exit_code: None,
                error: None,
                now,
            })
            .unwrap();
        assert!(matches!(out, Outcome::Finished(_)), "{out:?}");
    }

    fn notification_state(j: &Journal, id: &str) -> Option<NotificationState> {
        j.job(id)
            .unwrap()
            .unwrap()
            .job
            .notification
            .map(|n| n.state)
    }

    #[test]
    fn only_listed_end_states_enter_the_outbox_in_the_ending_commit() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        policy(&j, &["ERROR", "CANCELED"]);
        build(&j, "J1", JobState::Ready);
        build(&j, "J2", JobState::Error);
        trigger(&j, "s1", "J3");
        trigger(&j, "s1", "J4"); // supersedes J3: CANCELED
        assert_eq!(notification_state(&j, "J1"), None);
        assert_eq!(
            notification_state(&j, "J2"),
            Some(NotificationState::Pending)
        );
        assert_eq!(
            notification_state(&j, "J3"),
            Some(NotificationState::Pending)
        );
        assert_eq!(notification_state(&j, "J4"), None);
        // Soonest first: J3 ended (superseded) at the trigger's time, 5; J2 at 100.
        let due: Vec<String> = j.outbox().unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(due, ["J3", "J2"]);
        assert_eq!(j.notifications_pending().unwrap(), 2);
    }

    #[test]
    fn recovered_is_ready_after_an_error_of_the_same_hook() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        policy(&j, &["RECOVERED"]);
        build(&j, "J1", JobState::Ready);
        build(&j, "J2", JobState::Error);
        trigger(&j, "s1", "J3");
        trigger(&j, "s1", "J4"); // a canceled job between does not count
        j.submit(Op::Start {
            job_id: "J4".into(),
            now: 1,
        })
        .unwrap();
        j.submit(Op::Finish {
            job_id: "J4".into(),
            state: JobState::Ready,
            exit_code: Some(0),
            error: None,
            now: 2,
        })
        .unwrap();
        build(&j, "J5", JobState::Ready);
        let states: Vec<_> = ["J1", "J2", "J3", "J4", "J5"]
            .iter()
            .map(|id| notification_state(&j, id))
            .collect();
        assert_eq!(
            states,
            [None, None, None, Some(NotificationState::Pending), None]
        );
    }

    #[test]
    fn attempts_retry_then_send_or_give_up_and_leave_the_outbox() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        policy(&j, &["ERROR"]);
        build(&j, "J1", JobState::Error);
        build(&j, "J2", JobState::Error);
        let notified = |id: &str, attempt: Attempt| {
            let op = Op::Notified {
                job_id: id.into(),
                attempt,
            };
            match j.submit(op).unwrap() {
                Outcome::Notified(Some(row)) => row.job.notification.unwrap(),
                other => panic!("{other:?}"),
            }
        };
        let failed = |retry_at| Attempt::Failed {
            error: "the notify command exited with status 7".into(),
            retry_at,
        };
        let n = notified("J1", failed(Some(5_000)));
        assert_eq!((n.state, n.attempts), (NotificationState::Pending, 1));
        assert!(j.outbox().unwrap().contains(&("J1".to_string(), 5_000)));
        let n = notified("J1", Attempt::Sent);
        assert_eq!(
            (n.state, n.attempts, n.last_error),
            (NotificationState::Sent, 2, None)
        );
        let n = notified("J2", failed(None));
        assert_eq!((n.state, n.attempts), (NotificationState::Failed, 1));
        assert!(n.last_error.unwrap().contains("status 7"));
        assert!(j.outbox().unwrap().is_empty());
        // A settled notification is not attempted again.
        let again = Op::Notified {
            job_id: "J1".into(),
            attempt: Attempt::Sent,
        };
        assert_eq!(j.submit(again).unwrap(), Outcome::NotApplicable);
    }

    #[test]
    fn retention_keeps_a_job_until_its_notification_is_settled() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        policy(&j, &["ERROR"]);
        build(&j, "J1", JobState::Error);
        build(&j, "J2", JobState::Ready);
        build(&j, "J3", JobState::Ready);
        j.submit(Op::Prune { keep: 1 }).unwrap();
        assert!(
            j.job("J1").unwrap().is_some(),
            "pruned with a notification due"
        );
        assert!(j.job("J2").unwrap().is_none());
        j.submit(Op::Notified {
            job_id: "J1".into(),
            attempt: Attempt::Sent,
        })
        .unwrap();
        j.submit(Op::Prune { keep: 1 }).unwrap();
        assert!(j.job("J1").unwrap().is_none());
    }

    #[test]
    fn a_new_policy_replaces_the_old_for_jobs_that_end_afterwards() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        policy(&j, &["ERROR"]);
        build(&j, "J1", JobState::Error);
        let none = || Op::SetNotifyPolicy {
            projects: Vec::new(),
        };
        assert_eq!(j.submit(none()).unwrap(), Outcome::NotifyPolicySet);
        assert_eq!(
            j.submit(none()).unwrap(),
            Outcome::NotApplicable,
            "unchanged"
        );
        build(&j, "J2", JobState::Error);
        assert_eq!(
            notification_state(&j, "J1"),
            Some(NotificationState::Pending)
        );
        assert_eq!(notification_state(&j, "J2"), None);
    }
}
