//! The CLI side: `hooks …` over the admin socket, `jobs` and `logs` over the status listener.
//! Output is for people by default and JSON with `--json`; a hook URL is printed alone on
//! stdout so that `URL=$(deployhook hooks create …)` works.

use crate::admin::protocol::{Answer, Created, Hooks, Request, Revoked, MAX_LINE_BYTES};
use crate::config::Config;
use crate::journal::Job;
use crate::timefmt::utc;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the admin socket or the status address.
    NoDaemon { place: String, cause: io::Error },
    /// The daemon answered with an error.
    Refused(String),
    /// The exchange broke down.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoDaemon { place, cause } => write!(
                f,
                "no deployhook daemon is running at {place} ({cause}); start it with `deployhook serve` or `systemctl start deployhook`"
            ),
            ClientError::Refused(m) => write!(f, "{m}"),
            ClientError::Protocol(m) => write!(f, "unexpected answer from the daemon: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sends one request on the admin socket and returns the daemon's result of type `T` (the
/// type [`Request`]'s doc names for it), or the daemon's refusal.
pub fn admin<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|cause| ClientError::NoDaemon {
        place: socket.display().to_string(),
        cause,
    })?;
    let _ = stream.set_read_timeout(Some(ADMIN_TIMEOUT));
    let _ = stream.set_write_timeout(Some(ADMIN_TIMEOUT));
    let line = req
        .to_line()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new((&stream).take(MAX_LINE_BYTES))
        .read_line(&mut answer)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    match Answer::<T>::from_line(&answer) {
        Ok(Answer::Done(result)) => Ok(result),
        Ok(Answer::Refused(why)) => Err(ClientError::Refused(why)),
        Err(e) => Err(ClientError::Protocol(e.to_string())),
    }
}

fn field<T: serde::de::DeserializeOwned>(v: &Value, key: &str) -> Result<T, ClientError> {
    serde_json::from_value(v[key].clone()).map_err(|e| ClientError::Protocol(format!("{key}: {e}")))
}

pub fn hooks_create(
    socket: &Path,
    project: &str,
    name: &str,
    branch: &str,
    json: bool,
) -> Result<(), ClientError> {
    let Created { hook, url } = admin(
        socket,
        &Request::Create {
            project: project.into(),
            name: name.into(),
            branch: branch.into(),
        },
    )?;
    if json {
        println!("{}", serde_json::json!({"hook": hook, "url": url}));
    } else {
        println!("{url}");
        eprintln!(
            "created {} for project {} branch {}; the URL is shown only now, keep it secret",
            hook.id, hook.project, hook.branch
        );
    }
    Ok(())
}

pub fn hooks_list(socket: &Path, json: bool) -> Result<(), ClientError> {
    let Hooks { hooks } = admin(socket, &Request::List)?;
    if json {
        println!("{}", serde_json::json!({ "hooks": hooks }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|h| {
            vec![
                h.id.clone(),
                h.name.clone(),
                h.project.clone(),
                h.branch.clone(),
                utc(h.created_at),
                h.last_triggered_at.map_or_else(|| "never".into(), utc),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "PROJECT",
            "BRANCH",
            "CREATED (UTC)",
            "LAST TRIGGERED (UTC)",
        ],
        &rows,
    );
    Ok(())
}

pub fn hooks_revoke(socket: &Path, id: &str) -> Result<(), ClientError> {
    let Revoked { revoked } = admin(socket, &Request::Revoke { id: id.into() })?;
    println!("revoked {revoked}");
    Ok(())
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The status listener's base URL for a config.
pub fn status_base(config: &Config) -> String {
    format!("http://{}", config.status_listen)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .build()
        .into()
}

fn get(base: &str, path: &str) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
    agent()
        .get(&format!("{base}{path}"))
        .call()
        .map_err(|e| match e {
            ureq::Error::Io(cause) => ClientError::NoDaemon {
                place: base.to_string(),
                cause,
            },
            other => ClientError::Protocol(other.to_string()),
        })
}

fn api_error(resp: &mut ureq::http::Response<ureq::Body>) -> ClientError {
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    ClientError::Refused(format!("{} {message}", resp.status().as_u16()))
}

/// Query-string encoding for the few characters a filter value may need.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct JobsQuery {
    pub hook: Option<String>,
    pub project: Option<String>,
    pub state: Option<String>,
    pub limit: Option<usize>,
}

pub fn jobs(base: &str, q: &JobsQuery, json: bool) -> Result<(), ClientError> {
    let mut params = Vec::new();
    for (k, v) in [
        ("hook", &q.hook),
        ("project", &q.project),
        ("state", &q.state),
    ] {
        if let Some(v) = v {
            params.push(format!("{k}={}", encode(v)));
        }
    }
    if let Some(n) = q.limit {
        params.push(format!("limit={n}"));
    }
    let mut resp = get(base, &format!("/jobs?{}", params.join("&")))?;
    if resp.status().as_u16() != 200 {
        return Err(api_error(&mut resp));
    }
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    if json {
        println!("{text}");
        return Ok(());
    }
    let value: Value =
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let jobs: Vec<Job> = field(&value, "jobs")?;
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.state.as_str().to_string(),
                j.hook_id.clone(),
                j.project.clone(),
                j.branch.clone(),
                j.commit
                    .as_deref()
                    .map_or("-", |c| &c[..c.len().min(10)])
                    .to_string(),
                utc(j.created_at),
                j.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "JOB",
            "STATE",
            "HOOK",
            "PROJECT",
            "BRANCH",
            "COMMIT",
            "CREATED (UTC)",
            "ERROR",
        ],
        &rows,
    );
    Ok(())
}

pub fn logs(base: &str, job: &str, follow: bool) -> Result<(), ClientError> {
    let path = format!(
        "/jobs/{}/log{}",
        encode(job),
        if follow { "?follow=1" } else { "" }
    );
    let mut resp = get(base, &path)?;
    if resp.status().as_u16() != 200 {
        return Err(api_error(&mut resp));
    }
    let mut reader = resp.into_body().into_reader();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut buf = [0u8; 8192];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
            return Ok(()); // stdout closed (e.g. `| head`): not an error
        }
    }
}
