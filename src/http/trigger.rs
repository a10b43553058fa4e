//! The public hook listener: `GET|POST /v1/integrations/deploy/{project}/{secret}`.
//!
//! A trigger is answered `201` only after the journal writer committed its job. The method is
//! checked before the secret is looked at, and every failed lookup (unknown secret, revoked
//! hook, project that does not match) gets the same `404`, so answers never tell which secrets
//! exist. Access log lines name the hook and the job, never the path (it holds the secret).

use super::poll::{Answer, Handler};
use super::wire::Request;
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
    fn handle(&self, req: &Request, answer: Answer) {
        let remote = req
            .remote
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        let Some((project, secret)) = parse_hook_path(&req.path) else {
            log::debug!("public: no route, status=404 remote={remote}");
            return answer.send(|| ApiError::NotFound.reply());
        };
        if !matches!(req.method, Method::Get | Method::Post) {
            return answer.send(|| ApiError::MethodNotAllowed(ALLOW).reply());
        }
        let metrics = self.metrics.clone();
        match self.trigger_op(project, secret) {
            Ok(op) => self.journal.submit_then(op, move |result| {
                answer.send(move || conclude(&metrics, result.map_err(ApiError::from), &remote))
            }),
            Err(err) => answer.send(move || conclude(&metrics, Err(err), &remote)),
        }
    }
}

impl TriggerHandler {
    /// The op that commits a job for the hook behind `secret`, or the refusal.
    fn trigger_op(&self, project: &str, secret: &str) -> Result<Op, ApiError> {
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
        Ok(Op::Trigger {
            secret: hash,
            project: project.to_string(),
            job_id,
            now,
        })
    }
}

/// The answer to a trigger once the journal has spoken: `201` with the committed job, or the
/// refusal. Counts and logs it (the access log names the hook and the job, never the secret).
fn conclude(metrics: &Metrics, outcome: Result<Outcome, ApiError>, remote: &str) -> Reply {
    match outcome {
        Ok(Outcome::Triggered { row, .. }) => {
            metrics.trigger(TriggerResult::Accepted);
            let job = row.job;
            log::info!(
                "trigger hook={} job={} status=201 remote={remote}",
                job.hook_id,
                job.id
            );
            Reply::json(
                201,
                &json!({"job": {"id": job.id, "state": "PENDING", "createdAt": job.created_at}}),
            )
        }
        Ok(_) => conclude(metrics, Err(ApiError::NotFound), remote),
        Err(err) => {
            let result = match err {
                ApiError::NotFound => TriggerResult::NotFound,
                _ => TriggerResult::Unavailable,
            };
            metrics.trigger(result);
            let reply = err.reply();
            log::info!("trigger refused status={} remote={remote}", reply.status);
            reply
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
