//! The public hook listener: `GET|POST /v1/integrations/deploy/{project}/{secret}`.
//!
//! A trigger is answered `201` only after the journal writer committed its job. The method is
//! checked before the secret is looked at, and every failed lookup (unknown secret, revoked
//! hook, project that does not match) gets the same `404`, so answers never tell which secrets
//! exist. Access log lines name the hook and the job, never the path (it holds the secret).
//!
//! Hook URLs are called from browsers too (CMS plugins running on another origin), so every
//! answer on a hook path carries `Access-Control-Allow-Origin: *`, and a CORS preflight
//! (`OPTIONS`) is answered before any secret is looked at. A hook URL needs no credentials,
//! so allowing every origin gives a page nothing it could not do with the URL alone.

use super::event_loop::{Answer, Service};
use super::request::Request;
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
/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE_SECS: u32 = 86_400;

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

impl Service for TriggerHandler {
    fn serve(&self, req: Request, answer: Answer) {
        if let Some(reply) = route_offline(&req) {
            return answer.send(move || reply);
        }
        let remote = req
            .remote
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        let Some((project, secret)) = parse_hook_path(&req.path) else {
            return answer.send(|| ApiError::NotFound.reply());
        };
        let metrics = self.metrics.clone();
        match self.trigger_op(project, secret) {
            Ok(op) => self.journal.submit_then(op, move |result| {
                answer.send(move || conclude(&metrics, result.map_err(ApiError::from), &remote))
            }),
            Err(err) => answer.send(move || conclude(&metrics, Err(err), &remote)),
        }
    }
}

/// The answers decided by the request alone, before any secret is looked at: a path that is
/// no hook path (`404`), a CORS preflight, a method not served (`405`). `None` for a trigger.
pub fn route_offline(req: &Request) -> Option<Reply> {
    if parse_hook_path(&req.path).is_none() {
        log::debug!("public: no route, status=404");
        return Some(ApiError::NotFound.reply());
    }
    match req.method {
        Method::Get | Method::Post => None,
        // A CORS preflight names the method it asks for; a plain OPTIONS is not served.
        Method::Options if req.header("Access-Control-Request-Method").is_some() => {
            Some(preflight(req))
        }
        _ => Some(cors(ApiError::MethodNotAllowed(ALLOW).reply())),
    }
}

/// Every answer on a hook path may be read by a page of any origin.
fn cors(reply: Reply) -> Reply {
    reply.with_header("Access-Control-Allow-Origin", "*")
}

/// The answer to a CORS preflight: the methods of a hook URL and whatever request headers the
/// page asked for (a JSON `Content-Type`, say), which are ignored anyway.
fn preflight(req: &Request) -> Reply {
    let mut reply = cors(Reply::empty(204))
        .with_header("Access-Control-Allow-Methods", ALLOW)
        .with_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE_SECS.to_string());
    if let Some(asked) = req.header("Access-Control-Request-Headers") {
        let asked: String = asked
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ',' | ' ' | '_'))
            .collect();
        if !asked.trim().is_empty() {
            reply = reply.with_header("Access-Control-Allow-Headers", asked);
        }
    }
    reply
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
            cors(Reply::json(
                201,
                &json!({"job": {"id": job.id, "state": "PENDING", "createdAt": job.created_at}}),
            ))
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
            cors(reply)
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
