//! The public hook listener: `GET|POST /v1/integrations/deploy/{project}/{secret}` triggers a
//! job; `GET …/{secret}/jobs/{id}` answers that job's state to the caller (`?wait=N` holds the
//! answer until the job ends, see [`super::waiters`]).
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

use super::body::BodyPolicy;
use super::event_loop::{Answer, Service};
use super::limits::Limits;
use super::push;
use super::request::Request;
use super::session::default_policy;
use super::waiters::Waiters;
use super::{ApiError, Reply};
use crate::clock::now_ms;
use crate::config::is_project_name;
use crate::config::Config;
use crate::journal::{Journal, Op, Outcome, SecretLookup};
use crate::metrics::{Metrics, TriggerResult};
use crate::secret;
use serde_json::json;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tiny_http::Method;

pub const PATH_PREFIX: &str = "/v1/integrations/deploy/";
const ALLOW: &str = "GET, POST";
/// Methods of a hook's job path.
const ALLOW_JOB: &str = "GET, HEAD";
/// The longest long poll (`?wait=N`), in seconds.
const MAX_WAIT_SECS: u64 = 60;
/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE_SECS: u32 = 86_400;

pub struct TriggerHandler {
    pub journal: Journal,
    pub metrics: Arc<Metrics>,
    pub waiters: Arc<Waiters>,
    /// The running config, for each project's debounce.
    pub config: Arc<RwLock<Arc<Config>>>,
}

/// A hook path: a trigger, or a job of the hook.
#[derive(Debug, PartialEq, Eq)]
pub struct HookPath<'a> {
    pub project: &'a str,
    pub secret: &'a str,
    pub job: Option<&'a str>,
}

/// The parts of a hook path, or `None` for any other path.
pub fn parse_hook_path(path: &str) -> Option<HookPath<'_>> {
    let rest = path.strip_prefix(PATH_PREFIX)?;
    let mut parts = rest.split('/');
    let (project, secret) = (parts.next()?, parts.next()?);
    if project.is_empty() || secret.is_empty() {
        return None;
    }
    let job = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some("jobs"), Some(id), None) if !id.is_empty() => Some(id),
        _ => return None,
    };
    Some(HookPath {
        project,
        secret,
        job,
    })
}

impl Service for TriggerHandler {
    fn serve(&self, req: Request, answer: Answer) {
        if let Some(reply) = route_offline(&req) {
            return answer.send(move || reply);
        }
        let remote = req
            .remote
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        let Some(path) = parse_hook_path(&req.path) else {
            return answer.send(|| ApiError::NotFound.reply());
        };
        if let Some(job) = path.job {
            return self.job_status(&path, job, wait_param(&req).ok().flatten(), answer);
        }
        let metrics = self.metrics.clone();
        match self.trigger_op(path.project, path.secret) {
            Ok(op) => {
                if let Some(why) = self.skip_event(&req, &op, &remote) {
                    let skipped = json!({ "skipped": why });
                    return answer.send(move || cors(Reply::json(200, &skipped)));
                }
                // The job's id is appended once it is known.
                let location = format!("{PATH_PREFIX}{}/{}/jobs/", path.project, path.secret);
                self.journal.submit_then(op, move |result| {
                    answer.send(move || {
                        let result = result.map_err(|e| (ApiError::from(e), String::new()));
                        conclude(&metrics, result, &remote, &location)
                    })
                })
            }
            Err(refusal) => answer.send(move || conclude(&metrics, Err(refusal), &remote, "")),
        }
    }

    fn tick(&self, now: Instant) {
        self.waiters.expire(now);
    }

    /// A git host's event on a live hook's URL may carry a large body, whose start is read;
    /// anything else (an unknown secret above all) gets the listener's default, so that no one
    /// without a hook URL can make the daemon read or keep more.
    fn body_policy(&self, req: &Request, limits: &Limits) -> BodyPolicy {
        match parse_hook_path(&req.path) {
            Some(path)
                if path.job.is_none() && self.hook_of(path.project, path.secret).is_some() =>
            {
                push::policy(req)
            }
            _ => None,
        }
        .unwrap_or_else(|| default_policy(req, limits))
    }

    fn stopping(&self) {
        self.waiters
            .expire(Instant::now() + Duration::from_secs(MAX_WAIT_SECS + 1));
    }
}

/// The answers decided by the request alone, before any secret is looked at: a path that is
/// no hook path (`404`), a CORS preflight, a method not served (`405`), a bad `wait` (`400`).
/// `None` when the secret must be looked at.
pub fn route_offline(req: &Request) -> Option<Reply> {
    let Some(path) = parse_hook_path(&req.path) else {
        log::debug!("public: no route, status=404");
        return Some(ApiError::NotFound.reply());
    };
    let allow = if path.job.is_some() { ALLOW_JOB } else { ALLOW };
    match req.method {
        Method::Get | Method::Post if path.job.is_none() => None,
        Method::Get | Method::Head if path.job.is_some() => match wait_param(req) {
            Ok(_) => None,
            Err(e) => Some(cors(e.reply())),
        },
        // A CORS preflight names the method it asks for; a plain OPTIONS is not served.
        Method::Options if req.header("Access-Control-Request-Method").is_some() => {
            Some(preflight(req, allow))
        }
        _ => Some(cors(ApiError::MethodNotAllowed(allow).reply())),
    }
}

/// `?wait=N`: `None` without it, else 1 to [`MAX_WAIT_SECS`] seconds.
fn wait_param(req: &Request) -> Result<Option<Duration>, ApiError> {
    match req.query_param("wait") {
        None => Ok(None),
        Some(n) => n
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_WAIT_SECS).contains(n))
            .map(|n| Some(Duration::from_secs(n)))
            .ok_or_else(|| ApiError::BadRequest(format!("wait must be 1 to {MAX_WAIT_SECS}"))),
    }
}

/// The answer to a job status request: the job as the journal has it, or the same `404` as an
/// unknown secret.
pub fn job_reply(journal: &Journal, id: &str) -> Reply {
    match journal.job(id) {
        Ok(Some(row)) => cors(Reply::json(200, &json!({"job": row.job}))),
        Ok(None) => cors(ApiError::NotFound.reply()),
        Err(e) => cors(ApiError::from(e).reply()),
    }
}

/// Every answer on a hook path may be read by a page of any origin.
fn cors(reply: Reply) -> Reply {
    reply.with_header("Access-Control-Allow-Origin", "*")
}

/// The answer to a CORS preflight: the methods of the path and whatever request headers the
/// page asked for (a JSON `Content-Type`, say), which are ignored anyway.
fn preflight(req: &Request, allow: &'static str) -> Reply {
    let mut reply = cors(Reply::empty(204))
        .with_header("Access-Control-Allow-Methods", allow)
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
    /// The hook behind `secret` for a URL naming `project`. Guessed secrets are turned away
    /// from memory, never reaching the journal's writer.
    fn lookup(&self, project: &str, secret: &str) -> SecretLookup {
        if !is_project_name(project) || !secret::is_secret_shaped(secret) {
            return SecretLookup::Unknown;
        }
        self.journal
            .lookup_secret(&secret::hash_secret(secret), project)
    }

    /// The live hook behind `secret`, if it is of `project`.
    fn hook_of(&self, project: &str, secret: &str) -> Option<String> {
        match self.lookup(project, secret) {
            SecretLookup::Live(hook) => Some(hook),
            _ => None,
        }
    }

    /// A job of the hook behind the path's secret: answered now, or once it ends (long poll).
    fn job_status(&self, path: &HookPath, id: &str, wait: Option<Duration>, answer: Answer) {
        let hook = self.hook_of(path.project, path.secret);
        let row = match (&hook, secret::is_job_id(id)) {
            (Some(_), true) => self.journal.job(id),
            _ => Ok(None),
        };
        let row = match row {
            Ok(Some(row)) if Some(&row.job.hook_id) == hook.as_ref() => row,
            Ok(_) => return answer.send(|| cors(ApiError::NotFound.reply())),
            Err(e) => {
                let err = ApiError::from(e);
                return answer.send(move || cors(err.reply()));
            }
        };
        match wait {
            Some(wait) if !row.job.state.is_terminal() => {
                if let Some(answer) = self.waiters.wait(id, answer, Instant::now() + wait) {
                    return answer.send(move || cors(Reply::json(200, &json!({"job": row.job}))));
                }
                // The job may have ended between the read and the registration.
                if matches!(self.journal.job(id), Ok(Some(r)) if r.job.state.is_terminal()) {
                    self.waiters.ended(id);
                }
            }
            _ => answer.send(move || cors(Reply::json(200, &json!({"job": row.job})))),
        }
    }

    /// Why a git host's event on this hook's URL builds nothing (a ping, another branch, a
    /// deletion, another event), or `None` when it is a push to the hook's branch or the
    /// request is no event at all.
    fn skip_event(&self, req: &Request, op: &Op, remote: &str) -> Option<String> {
        let event = push::event_of(req)?;
        let Op::Trigger { secret, .. } = op else {
            return None;
        };
        let branch = self.journal.branch_of(secret)?;
        match push::judge(&event, &req.body, &branch) {
            push::Verdict::Build => None,
            push::Verdict::Skip(why) => {
                // The reason and event name come from the request: quoted, so that a line
                // break in them cannot forge a log line.
                log::info!(
                    "push event skipped: {} {:?}: {why:?} remote={remote}",
                    event.host,
                    event.name
                );
                Some(why)
            }
        }
    }

    /// Debounce: when a job of `project` triggered at `now` may start.
    fn not_before(&self, project: &str, now: u64) -> Option<u64> {
        let config = self.config.read().unwrap_or_else(PoisonError::into_inner);
        config.projects.get(project)?.not_before(now)
    }

    /// The op that commits a job for the hook behind `secret`, or the refusal and, for the
    /// operator's log, why.
    fn trigger_op(&self, project: &str, secret: &str) -> Result<Op, (ApiError, String)> {
        let refused = |why: String| Err((ApiError::NotFound, why));
        match self.lookup(project, secret) {
            SecretLookup::Live(_) => {}
            SecretLookup::Unknown => return refused("unknown secret".into()),
            SecretLookup::Revoked(hook) => return refused(format!("revoked hook {hook}")),
            SecretLookup::OtherProject(hook) => {
                return refused(format!(
                    "project mismatch for {hook}: the URL names `{project}`"
                ))
            }
        }
        let hash = secret::hash_secret(secret);
        let now = now_ms();
        let job_id = secret::new_job_id(now).map_err(|e| {
            (
                ApiError::Internal(e.to_string()),
                "no random id".to_string(),
            )
        })?;
        Ok(Op::Trigger {
            secret: hash,
            project: project.to_string(),
            job_id,
            now,
            not_before: self.not_before(project, now),
        })
    }
}

/// The answer to a trigger once the journal has spoken: `201` with the committed job, or the
/// refusal. Counts and logs it (the access log names the hook and the job, never the secret).
fn conclude(
    metrics: &Metrics,
    outcome: Result<Outcome, (ApiError, String)>,
    remote: &str,
    location: &str,
) -> Reply {
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
            .with_header("Location", format!("{location}{}", job.id))
        }
        // The writer found no live hook: it was revoked after the pre-check.
        Ok(_) => conclude(
            metrics,
            Err((ApiError::NotFound, "hook revoked meanwhile".into())),
            remote,
            location,
        ),
        Err((err, why)) => {
            let result = match err {
                ApiError::NotFound => TriggerResult::NotFound,
                _ => TriggerResult::Unavailable,
            };
            metrics.trigger(result);
            let reply = err.reply();
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            log::info!(
                "trigger refused status={}{why} remote={remote}",
                reply.status
            );
            cors(reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_paths() {
        let trigger = |p, s| {
            Some(HookPath {
                project: p,
                secret: s,
                job: None,
            })
        };
        assert_eq!(
            parse_hook_path("/v1/integrations/deploy/site/abc"),
            trigger("site", "abc")
        );
        assert_eq!(
            parse_hook_path("/v1/integrations/deploy/site/abc/jobs/J1"),
            Some(HookPath {
                project: "site",
                secret: "abc",
                job: Some("J1")
            })
        );
        for bad in [
            "/v1/integrations/deploy/site/abc/",
            "/v1/integrations/deploy/site",
            "/v1/integrations/deploy//abc",
            "/v1/integrations/deploy/site/abc/jobs",
            "/v1/integrations/deploy/site/abc/jobs/",
            "/v1/integrations/deploy/site/abc/jobs/J1/x",
            "/v1/integrations/deploy/site/abc/other/J1",
            "/jobs",
        ] {
            assert_eq!(parse_hook_path(bad), None, "{bad}");
        }
    }
}
