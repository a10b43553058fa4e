//! The public hook listener: `GET|POST /v1/integrations/deploy/{project}/{secret}`.
//!
//! A trigger is answered `201` only after the journal writer committed its job. The method is
//! checked before the secret is looked at, and every failed lookup (unknown secret, revoked
//! hook, project that does not match) gets the same `404`, so answers never tell which secrets
//! exist. Access log lines name the hook and the job, never the path (it holds the secret).

use super::conn::{Handler, Request};
use super::{ApiError, Reply};
use crate::build::now_ms;
use crate::config::is_project_name;
use crate::journal::{Journal, Op, Outcome};
use crate::metrics::{Metrics, TriggerResult};
use crate::secret;
use serde_json::json;
use std::sync::Arc;
use tiny_http::Method;

pub const PATH_PREFIX: &str = "/v1/integrations/deploy/";
const ALLOW: &str = "GET, POST";

pub struct TriggerHandler {
    pub journal: Journal,
    pub metrics: Arc<Metrics>,
}

/// `(project, secret)` of a hook path, or `None` for any other path.
pub fn parse_hook_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PATH_PREFIX)?;
    let (project, secret) = rest.split_once('/')?;
    (!project.is_empty() && !secret.is_empty() && !secret.contains('/'))
        .then_some((project, secret))
}

impl Handler for TriggerHandler {
    fn handle(&self, req: &Request) -> Reply {
        let remote = req
            .remote
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        let Some((project, secret)) = parse_hook_path(&req.path) else {
            log::debug!("public: no route, status=404 remote={remote}");
            return ApiError::NotFound.reply();
        };
        if !matches!(req.method, Method::Get | Method::Post) {
            return ApiError::MethodNotAllowed(ALLOW).reply();
        }
        match self.trigger(project, secret) {
            Ok((job_id, hook_id, created_at)) => {
                self.metrics.trigger(TriggerResult::Accepted);
                log::info!("trigger hook={hook_id} job={job_id} status=201 remote={remote}");
                Reply::json(
                    201,
                    &json!({"job": {"id": job_id, "state": "PENDING", "createdAt": created_at}}),
                )
            }
            Err(err) => {
                let result = match err {
                    ApiError::NotFound => TriggerResult::NotFound,
                    _ => TriggerResult::Unavailable,
                };
                self.metrics.trigger(result);
                let status = err.reply().status;
                log::info!("trigger refused status={status} remote={remote}");
                err.reply()
            }
        }
    }
}

impl TriggerHandler {
    /// Commits a job for the hook behind `secret`; returns (job id, hook id, createdAt).
    fn trigger(&self, project: &str, secret: &str) -> Result<(String, String, u64), ApiError> {
        if !is_project_name(project) || !secret::is_secret_shaped(secret) {
            return Err(ApiError::NotFound);
        }
        let hash = secret::hash_secret(secret);
        // Guessed secrets are turned away from memory, never reaching the writer.
        if !self.journal.secret_matches(&hash, project) {
            return Err(ApiError::NotFound);
        }
        let now = now_ms();
        let job_id = secret::new_job_id(now).map_err(|e| ApiError::Internal(e.to_string()))?;
        let outcome = self.journal.submit(Op::Trigger {
            secret: hash,
            project: project.to_string(),
            job_id,
            now,
        })?;
        match outcome {
            Outcome::Triggered { row, .. } => Ok((row.job.id, row.job.hook_id, row.job.created_at)),
            _ => Err(ApiError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_paths() {
        assert_eq!(
            parse_hook_path("/v1/integrations/deploy/site/abc"),
            Some(("site", "abc"))
        );
        assert_eq!(parse_hook_path("/v1/integrations/deploy/site/abc/"), None);
        assert_eq!(parse_hook_path("/v1/integrations/deploy/site"), None);
        assert_eq!(parse_hook_path("/v1/integrations/deploy//abc"), None);
        assert_eq!(parse_hook_path("/jobs"), None);
    }
}
