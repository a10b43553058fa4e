//! The CLI side: `hooks …` over the admin socket, `jobs` and `logs` over the status listener.
//! Output is for people by default and JSON with `--json`; a hook URL is printed alone on
//! stdout so that `URL=$(deployhook hooks create …)` works.

use crate::admin::protocol::{Answer, Created, Hooks, Request, Revoked, MAX_LINE_BYTES};
use crate::config::Config;
use crate::journal::Job;
use crate::timefmt::utc;
use serde::de::DeserializeOwned;
use serde::Deserialize;
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

/// GETs `path` with `query` from the status listener. ureq percent-encodes the query values.
fn get(
    base: &str,
    path: &str,
    query: &[(&str, String)],
) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
    agent()
        .get(&format!("{base}{path}"))
        .query_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
        .call()
        .map_err(|e| match e {
            ureq::Error::Io(cause) => ClientError::NoDaemon {
                place: base.to_string(),
                cause,
            },
            other => ClientError::Protocol(other.to_string()),
        })
}

/// The status listener's error body, `{"error":{"code":…,"message":…}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

/// The part of a `GET /jobs` page the table shows.
#[derive(Deserialize)]
struct JobsPage {
    jobs: Vec<Job>,
}

fn api_error(resp: &mut ureq::http::Response<ureq::Body>) -> ClientError {
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|body| body.error.message)
        .unwrap_or(text);
    ClientError::Refused(format!("{} {message}", resp.status().as_u16()))
}

pub struct JobsQuery {
    pub hook: Option<String>,
    pub project: Option<String>,
    pub state: Option<String>,
    pub limit: Option<usize>,
}

pub fn jobs(base: &str, q: &JobsQuery, json: bool) -> Result<(), ClientError> {
    let filters = [
        ("hook", q.hook.clone()),
        ("project", q.project.clone()),
        ("state", q.state.clone()),
        ("limit", q.limit.map(|n| n.to_string())),
    ];
    let params: Vec<(&str, String)> = filters
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    let mut resp = get(base, "/jobs", &params)?;
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
    let JobsPage { jobs } =
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
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
    // The id becomes a path segment: one that is not job-shaped cannot name a job, and
    // refusing it here leaves nothing to escape.
    if !crate::secret::is_job_id(job) {
        return Err(ClientError::Refused(format!(
            "`{job}` is not a job id (20 letters or digits)"
        )));
    }
    let query = if follow {
        vec![("follow", "1".to_string())]
    } else {
        Vec::new()
    };
    let mut resp = get(base, &format!("/jobs/{job}/log"), &query)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn query_values_are_percent_encoded_by_ureq() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::Builder::new()
            .name("fake-status".into())
            .spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let mut head = String::new();
                BufReader::new(&stream).read_line(&mut head).unwrap();
                (&stream)
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .unwrap();
                head
            })
            .unwrap();
        let query = [("project", "a b&c=d/é".to_string()), ("limit", "5".into())];
        get(&base, "/jobs", &query).unwrap();
        assert_eq!(
            server.join().unwrap(),
            "GET /jobs?project=a%20b%26c%3Dd%2F%C3%A9&limit=5 HTTP/1.1\r\n"
        );
    }

    #[test]
    fn a_log_is_asked_for_only_by_a_job_id() {
        // Refused before any connection: nothing listens on port 1.
        let err = logs("http://127.0.0.1:1", "../status", false).unwrap_err();
        assert!(matches!(err, ClientError::Refused(_)), "{err}");
    }
}
