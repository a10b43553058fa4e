//! `rollback PROJECT [JOB]` on the admin socket: points a publishing project's `current` at an
//! older kept release, at once and without a build. The choice and the switch are the publish
//! module's (under the target's lock, so a publish never interleaves); this file checks the
//! request against the running config, logs the switch for operators and counts it.

use super::protocol::RolledBack;
use super::{Admin, AdminError};
use crate::journal::JobState;
use crate::publish;
use crate::secret;
use std::sync::atomic::Ordering::Relaxed;

impl Admin {
    pub(super) fn rollback(
        &self,
        project: String,
        job: Option<String>,
    ) -> Result<RolledBack, AdminError> {
        if let Some(job) = job.as_ref().filter(|j| !secret::is_job_id(j)) {
            return Err(AdminError::NotAJobId(job.clone()));
        }
        let config = self.config();
        let spec = super::known_project(&config, project.clone())?;
        let Some(target) = &spec.publish else {
            return Err(AdminError::NotPublished { project });
        };
        let ready = |id: &str| matches!(self.journal.job(id), Ok(Some(row)) if row.job.state == JobState::Ready);
        match publish::rollback(target, job.as_deref(), &ready) {
            Ok(done) => {
                self.metrics.rollbacks.fetch_add(1, Relaxed);
                log::info!(
                    "rollback project={project} current -> releases/{} (was {}) by=operator",
                    done.to,
                    done.from.as_deref().unwrap_or("nothing")
                );
                Ok(RolledBack {
                    project,
                    from: done.from,
                    to: done.to,
                })
            }
            Err(e) => {
                log::warn!("rollback project={project} refused: {e}");
                Err(AdminError::Rollback(e))
            }
        }
    }
}
