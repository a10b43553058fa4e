//! The read-only status listener: JSON API, logs, Prometheus metrics and the HTML pages.
//!
//! GET and HEAD only. Everything is read from the journal with read transactions (never
//! blocking the writer) and from log files; secrets are never loaded, so none can be shown.

use super::request::Request;
use super::{page, projects, ApiError, Reply};
use crate::config::Config;
use crate::journal::{Job, JobFilter, JobRow, JobState, Journal, MAX_LIST_LIMIT};
use crate::metrics::Metrics;
use crate::secret;
use serde_json::json;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tiny_http::Method;

const ALLOW: &str = "GET, HEAD";
const DEFAULT_LIMIT: usize = 50;
const MAX_TAIL: usize = 100_000;
/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub struct StatusHandler {
    pub journal: Journal,
    pub metrics: Arc<Metrics>,
    pub config: Arc<RwLock<Arc<Config>>>,
    pub started: Instant,
}

impl StatusHandler {
    /// Answers one request (on a thread of [`super::workers::Pool`]).
    pub fn handle(&self, req: &Request) -> Reply {
        if !matches!(req.method, Method::Get | Method::Head) {
            return ApiError::MethodNotAllowed(ALLOW).reply();
        }
        self.route(req).unwrap_or_else(|e| e.reply())
    }
}

impl StatusHandler {
    fn route(&self, req: &Request) -> Result<Reply, ApiError> {
        let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            [""] => self.dashboard(req),
            ["status"] => self.status(),
            ["jobs"] => self.jobs(req),
            ["jobs", id] => {
                let row = self.find_job(id)?;
                Ok(Reply::json(200, &json!({"job": row.job})))
            }
            ["jobs", id, "log"] => self.log(req, id),
            ["job", id] => {
                let row = self.find_job(id)?;
                let log = read_tail(&self.log_path(&row.job.id), Some(page::LOG_LINES))
                    .unwrap_or_default();
                Ok(Reply::html(page::job(&row, &log)))
            }
            ["hooks"] => Ok(Reply::json(200, &json!({"hooks": self.journal.hooks()?}))),
            ["events"] => Ok(self.events()),
            ["app.js"] => Ok(Reply::bytes(
                200,
                "text/javascript; charset=utf-8",
                page::SCRIPT.as_bytes().to_vec(),
            )),
            ["projects"] => {
                let projects: Vec<_> = self.summaries()?.iter().map(|s| s.to_json()).collect();
                Ok(Reply::json(200, &json!({ "projects": projects })))
            }
            ["metrics"] => {
                let pending = self.journal.notifications_pending()?;
                let mut text = self.metrics.render(self.journal.file_bytes(), pending);
                text.push_str(&projects::metrics(&self.summaries()?));
                Ok(Reply::bytes(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.into_bytes(),
                ))
            }
            _ => Err(ApiError::NotFound),
        }
    }

    /// Every configured project's recent history, in name order.
    fn summaries(&self) -> Result<Vec<projects::Summary>, ApiError> {
        let names: Vec<(String, Option<crate::config::Publish>)> = {
            let config = self.config.read().unwrap_or_else(PoisonError::into_inner);
            config
                .projects
                .values()
                .map(|p| (p.name.clone(), p.publish.clone()))
                .collect()
        };
        let mut out = Vec::with_capacity(names.len());
        for (name, publish) in names {
            out.push(projects::summarize(&self.journal, &name, publish.as_ref())?);
        }
        Ok(out)
    }

    fn find_job(&self, id: &str) -> Result<JobRow, ApiError> {
        if !secret::is_job_id(id) {
            return Err(ApiError::NotFound);
        }
        self.journal.job(id)?.ok_or(ApiError::NotFound)
    }

    fn log_path(&self, job_id: &str) -> PathBuf {
        let config = self.config.read().unwrap_or_else(PoisonError::into_inner);
        config.job_log(job_id)
    }

    fn status(&self) -> Result<Reply, ApiError> {
        let counts: serde_json::Map<String, serde_json::Value> = self
            .journal
            .state_counts()?
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n.into()))
            .collect();
        Ok(Reply::json(
            200,
            &json!({
                "version": env!("CARGO_PKG_VERSION"),
                "uptimeSecs": self.started.elapsed().as_secs(),
                "workers": {
                    "busy": self.metrics.workers_busy.load(Relaxed),
                    "total": self.metrics.workers_total.load(Relaxed),
                },
                "queueDepth": self.metrics.queue_depth.load(Relaxed),
                "jobs": counts,
                "journalBytes": self.journal.file_bytes(),
            }),
        ))
    }

    fn jobs(&self, req: &Request) -> Result<Reply, ApiError> {
        let filter = parse_filter(req)?;
        let (rows, next) = self.journal.list_jobs(&filter)?;
        let jobs: Vec<&Job> = rows.iter().map(|r| &r.job).collect();
        Ok(Reply::json(
            200,
            &json!({"jobs": jobs, "next": next.map(|n| n.to_string())}),
        ))
    }

    fn dashboard(&self, req: &Request) -> Result<Reply, ApiError> {
        let filter = JobFilter {
            limit: page::RECENT_JOBS,
            ..parse_filter(req)?
        };
        let (rows, _) = self.journal.list_jobs(&filter)?;
        let busy = self.metrics.workers_busy.load(Relaxed);
        let total = self.metrics.workers_total.load(Relaxed);
        let projects = self.summaries()?;
        Ok(Reply::html(page::dashboard(&projects, &rows, busy, total)))
    }

    /// `GET /events`: server-sent events, one `change` whenever a job changes state, for the
    /// live pages. Each open page holds a stream thread (at most `max_streams`); a comment line
    /// every [`EVENTS_HEARTBEAT`] notices a closed page, and the stream ends after
    /// [`EVENTS_FOR`] (the browser reconnects by itself).
    fn events(&self) -> Reply {
        let metrics = self.metrics.clone();
        Reply::stream(
            "text/event-stream",
            Box::new(move |out| watch_changes(&metrics, out)),
        )
    }

    fn log(&self, req: &Request, id: &str) -> Result<Reply, ApiError> {
        let row = self.find_job(id)?;
        let tail = match req.query_param("tail") {
            None => None,
            Some(n) => Some(
                n.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_TAIL).contains(n))
                    .ok_or_else(|| ApiError::BadRequest(format!("tail must be 1 to {MAX_TAIL}")))?,
            ),
        };
        let follow = match req.query_param("follow") {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") | Some("") => true,
            Some(_) => return Err(ApiError::BadRequest("follow must be 1 or 0".into())),
        };
        let path = self.log_path(&row.job.id);
        if !follow {
            let text = read_tail(&path, tail).map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok(Reply::text(200, text));
        }
        let journal = self.journal.clone();
        let job_id = row.job.id.clone();
        Ok(Reply::stream(
            "text/plain; charset=utf-8",
            Box::new(move |out| follow_log(&path, tail, &journal, &job_id, out)),
        ))
    }
}

/// How often an event stream looks for changes.
const EVENTS_POLL: Duration = Duration::from_millis(200);
/// A comment line this often shows whether the page is still open.
const EVENTS_HEARTBEAT: Duration = Duration::from_secs(15);
/// How long one event stream lasts.
const EVENTS_FOR: Duration = Duration::from_secs(3600);

fn watch_changes(metrics: &Metrics, out: &mut dyn Write) -> io::Result<()> {
    let mut seen = metrics.changes();
    out.write_all(b"retry: 2000\n\n")?;
    out.flush()?;
    let (started, mut wrote) = (Instant::now(), Instant::now());
    while started.elapsed() < EVENTS_FOR {
        std::thread::sleep(EVENTS_POLL);
        let now = metrics.changes();
        if now != seen {
            seen = now;
            write!(out, "event: change\ndata: {now}\n\n")?;
        } else if wrote.elapsed() >= EVENTS_HEARTBEAT {
            out.write_all(b": still here\n\n")?;
        } else {
            continue;
        }
        out.flush()?;
        wrote = Instant::now();
    }
    Ok(())
}

pub(crate) fn parse_filter(req: &Request) -> Result<JobFilter, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let mut filter = JobFilter {
        limit: DEFAULT_LIMIT,
        ..JobFilter::default()
    };
    for pair in req.query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "hook" if secret::is_hook_id(value) => filter.hook = Some(value.to_string()),
            "hook" => return Err(bad("hook must be a hook id (hook_…)".into())),
            "project" if crate::config::is_project_name(value) => {
                filter.project = Some(value.to_string())
            }
            "project" => return Err(bad("project is not a project name".into())),
            "state" => {
                filter.state = Some(JobState::parse(value).ok_or_else(|| {
                    bad("state must be PENDING, BUILDING, READY, ERROR or CANCELED".into())
                })?)
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("limit must be 1 to {MAX_LIST_LIMIT}")))?
            }
            "before" => {
                filter.before = Some(
                    value
                        .parse()
                        .map_err(|_| bad("before must be a `next` cursor".into()))?,
                )
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter `{}`",
                    page::ascii_only(other)
                )))
            }
        }
    }
    Ok(filter)
}

/// Byte offset in `file` where its last `lines` lines begin.
fn tail_offset(file: &mut File, lines: usize) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut pos = len;
    let mut newlines = 0usize;
    let mut buf = vec![0u8; 8192];
    // A final newline ends the last line; it does not start an empty one.
    let mut skip_last = true;
    while pos > 0 {
        let n = buf.len().min(pos as usize);
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..n])?;
        for i in (0..n).rev() {
            if buf[i] == b'\n' {
                if skip_last && pos + i as u64 == len - 1 {
                    continue;
                }
                newlines += 1;
                if newlines == lines {
                    return Ok(pos + i as u64 + 1);
                }
            }
            skip_last = false;
        }
    }
    Ok(0)
}

/// The whole log, or its last `tail` lines; a job that has not started has an empty log.
fn read_tail(path: &Path, tail: Option<usize>) -> io::Result<String> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let start = match tail {
        Some(n) => tail_offset(&mut file, n)?,
        None => 0,
    };
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Sends the log, then what is appended to it, until the job is in a terminal state and
/// everything written has been sent.
fn follow_log(
    path: &Path,
    tail: Option<usize>,
    journal: &Journal,
    job_id: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut file: Option<File> = None;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Look at the state before reading, so output written before the job ended is sent.
        let done = match journal.job(job_id) {
            Ok(Some(row)) => row.job.state.is_terminal(),
            Ok(None) | Err(_) => true,
        };
        if file.is_none() {
            if let Ok(mut f) = File::open(path) {
                offset = match tail {
                    Some(n) => tail_offset(&mut f, n)?,
                    None => 0,
                };
                file = Some(f);
            }
        }
        if let Some(f) = file.as_mut() {
            f.seek(SeekFrom::Start(offset))?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                // Send whole lines while the job runs; the rest goes with the next poll.
                let upto = if done {
                    n
                } else {
                    buf[..n]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1)
                };
                if upto == 0 {
                    break;
                }
                out.write_all(&buf[..upto])?;
                offset += upto as u64;
                f.seek(SeekFrom::Start(offset))?;
            }
        }
        if done {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("deployhook-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        let text: String = (1..=20000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            read_tail(&path, Some(2)).unwrap(),
            "line 19999\nline 20000\n"
        );
        assert_eq!(read_tail(&path, Some(1)).unwrap(), "line 20000\n");
        assert_eq!(read_tail(&path, Some(50000)).unwrap(), text);
        std::fs::write(&path, "a\nb").unwrap();
        assert_eq!(read_tail(&path, Some(1)).unwrap(), "b");
        assert_eq!(read_tail(&dir.join("none.log"), None).unwrap(), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
