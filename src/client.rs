//! The CLI side: `hooks …`, `jobs cancel` and `rollback` over the admin socket, `jobs` and
//! `logs` over the status listener. Output is for people by default and JSON with `--json`; a
//! hook URL is printed alone on stdout so that `URL=$(deployhook hooks create …)` works.

use crate::admin::protocol::{
    Answer, Canceled, Created, Hooks, Request, Revoked, RolledBack, Rotated, Triggered,
    MAX_LINE_BYTES,
};
use crate::config::Config;
use crate::journal::Job;
use crate::timefmt::utc;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed command, as the CLI reports it; `main` maps each variant to an exit status.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the admin socket or the status address.
    NoDaemon { place: String, cause: io::Error },
    /// The admin socket is there but this user may not open it (EACCES).
    Forbidden(Forbidden),
    /// An argument is not a value the command takes (the status listener said 400, or the
    /// CLI saw it before asking).
    BadArgument(String),
    /// The daemon answered with an error.
    Refused(String),
    /// The exchange broke down.
    Protocol(String),
}

/// Who may open the admin socket, for the message a refused user sees.
#[derive(Debug)]
pub struct Forbidden {
    pub socket: PathBuf,
    /// The config's `admin_group`, if it names one.
    pub group: Option<String>,
    /// The socket's folder, not the socket, refused the user.
    pub folder_closed: bool,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let socket = self.socket.display();
        let dir = self.socket.parent().unwrap_or(Path::new("/"));
        if self.folder_closed {
            write!(
                f,
                "you may not enter {}, the folder of the deployhook admin socket {socket} \
                 (Permission denied); access needs root, or a folder that lets you through \
                 (mode 0755: the socket's own mode still decides who may use it)",
                dir.display()
            )?;
            if let Some(group) = &self.group {
                write!(f, " and membership of group `{group}` (admin_group)")?;
            }
            return Ok(());
        }
        write!(
            f,
            "a deployhook daemon is running, but you may not open its admin socket {socket} \
             (Permission denied); "
        )?;
        match &self.group {
            Some(group) => write!(
                f,
                "access needs root or membership of group `{group}` (admin_group)"
            ),
            None => write!(
                f,
                "access needs root or the daemon's own user; set admin_group in the config to \
                 let a group in"
            ),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoDaemon { place, cause } => write!(
                f,
                "no deployhook daemon is running at {place} ({cause}); start it with `deployhook serve` or `systemctl start deployhook`"
            ),
            ClientError::Forbidden(why) => write!(f, "{why}"),
            ClientError::BadArgument(m) => write!(f, "{m}"),
            ClientError::Refused(m) => write!(f, "{m}"),
            ClientError::Protocol(m) => write!(f, "unexpected answer from the daemon: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sends one request on the admin socket and returns the daemon's result of type `T` (the
/// type [`Request`]'s doc names for it), or the daemon's refusal.
pub fn admin<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    call(socket, None, req)
}

/// [`admin`] on the config's socket; a refused user is told about its `admin_group`.
fn admin_of<T: DeserializeOwned>(config: &Config, req: &Request) -> Result<T, ClientError> {
    call(&config.admin_socket, config.admin_group.as_deref(), req)
}

/// The error for a failed connect. EACCES means the socket file exists (a daemon removes it
/// when it stops) or its folder is closed to this user; either way, "not running" would mislead.
fn connect_error(socket: &Path, group: Option<&str>, cause: io::Error) -> ClientError {
    if cause.kind() != io::ErrorKind::PermissionDenied {
        return ClientError::NoDaemon {
            place: socket.display().to_string(),
            cause,
        };
    }
    let folder_closed = std::fs::symlink_metadata(socket)
        .is_err_and(|e| e.kind() == io::ErrorKind::PermissionDenied);
    ClientError::Forbidden(Forbidden {
        socket: socket.to_path_buf(),
        group: group.map(str::to_string),
        folder_closed,
    })
}

fn call<T: DeserializeOwned>(
    socket: &Path,
    group: Option<&str>,
    req: &Request,
) -> Result<T, ClientError> {
    let stream =
        UnixStream::connect(socket).map_err(|cause| connect_error(socket, group, cause))?;
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

/// What `hooks create` asks for.
pub struct NewHook<'a> {
    pub project: &'a str,
    pub name: &'a str,
    pub branch: &'a str,
    /// Check that the branch exists (`git ls-remote`) before creating the hook.
    pub verify: bool,
}

pub fn hooks_create(config: &Config, new: &NewHook, json: bool) -> Result<(), ClientError> {
    let NewHook {
        project,
        name,
        branch,
        verify,
    } = *new;
    // The daemon checks again against the config it runs with (reloaded or not).
    if !config.projects.contains_key(project) {
        let known: Vec<&str> = config.projects.keys().map(String::as_str).collect();
        return Err(ClientError::BadArgument(format!(
            "unknown project `{project}`; {} configures: {}",
            config.path.display(),
            known.join(", ")
        )));
    }
    let Created { hook, url } = admin_of(
        config,
        &Request::Create {
            project: project.into(),
            name: name.into(),
            branch: branch.into(),
            verify,
        },
    )?;
    let note = format!(
        "created {} for project {} branch {}; the URL is shown only now, keep it secret",
        hook.id, hook.project, hook.branch
    );
    print_hook_url(&hook, &url, json, &note);
    Ok(())
}

pub fn hooks_list(config: &Config, json: bool) -> Result<(), ClientError> {
    let Hooks { hooks } = admin_of(config, &Request::List)?;
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

pub fn hooks_revoke(config: &Config, id: &str) -> Result<(), ClientError> {
    let Revoked { revoked } = admin_of(config, &Request::Revoke { id: id.into() })?;
    println!("revoked {revoked}");
    Ok(())
}

/// `hooks trigger`: prints the job as the hook URL's `201` body would (JSON with `--json`).
pub fn hooks_trigger(config: &Config, id: &str, json: bool) -> Result<(), ClientError> {
    let Triggered { job } = admin_of(config, &Request::Trigger { id: id.into() })?;
    print_job(json, &job, &job.id);
    if !json {
        eprintln!("queued job {} of {id}", job.id);
    }
    Ok(())
}

/// `hooks rotate`: prints the new URL alone on stdout, shown only this once.
pub fn hooks_rotate(config: &Config, id: &str, json: bool) -> Result<(), ClientError> {
    let Rotated { hook, url } = admin_of(config, &Request::Rotate { id: id.into() })?;
    let note = format!(
        "new secret for {}; the old URL is refused from now on; the new one is shown only now",
        hook.id
    );
    print_hook_url(&hook, &url, json, &note);
    Ok(())
}

/// `jobs cancel`: PENDING or BUILDING -> CANCELED.
pub fn jobs_cancel(config: &Config, job: &str, json: bool) -> Result<(), ClientError> {
    let Canceled { job } = admin_of(config, &Request::Cancel { job: job.into() })?;
    print_job(json, &job, &format!("canceled {}", job.id));
    Ok(())
}

/// `rollback PROJECT [JOB]`: prints the switch (JSON with `--json`).
pub fn rollback(
    config: &Config,
    project: &str,
    job: Option<&str>,
    json: bool,
) -> Result<(), ClientError> {
    let request = Request::Rollback {
        project: project.into(),
        job: job.map(str::to_string),
    };
    let done: RolledBack = admin_of(config, &request)?;
    if json {
        println!("{}", serde_json::json!(done));
    } else if done.from.as_deref() == Some(done.to.as_str()) {
        println!("{project}: releases/{} is live already", done.to);
    } else {
        println!(
            "{project}: current -> releases/{} (was {})",
            done.to,
            done.from.as_deref().unwrap_or("nothing")
        );
    }
    Ok(())
}

/// A job the daemon answered with: `{"job":…}` with `--json`, else `text`.
fn print_job(json: bool, job: &impl serde::Serialize, text: &str) {
    if json {
        println!("{}", serde_json::json!({ "job": job }));
    } else {
        println!("{text}");
    }
}

/// A hook URL shown once: alone on stdout (the note on stderr), or as JSON.
fn print_hook_url(hook: &crate::journal::Hook, url: &str, json: bool, note: &str) {
    if json {
        println!("{}", serde_json::json!({"hook": hook, "url": url}));
    } else {
        println!("{url}");
        eprintln!("{note}");
    }
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

/// A status listener's error answer; a 400 means the arguments were wrong.
fn api_error(resp: &mut ureq::http::Response<ureq::Body>) -> ClientError {
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|body| body.error.message)
        .unwrap_or(text);
    match resp.status().as_u16() {
        400 => ClientError::BadArgument(message),
        status => ClientError::Refused(format!("{status} {message}")),
    }
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
        // The listener's JSON ends with a newline already; add one only if it does not.
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
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
    crate::args::job_id(job).map_err(|e| ClientError::BadArgument(format!("`{job}`: {e}")))?;
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

    /// A status listener that answers one request with `answer`; its thread returns the
    /// request line it got.
    fn fake_status(answer: String) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::Builder::new()
            .name("fake-status".into())
            .spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let mut head = String::new();
                BufReader::new(&stream).read_line(&mut head).unwrap();
                (&stream).write_all(answer.as_bytes()).unwrap();
                head
            })
            .unwrap();
        (base, server)
    }

    #[test]
    fn query_values_are_percent_encoded_by_ureq() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let (base, server) = fake_status(ok.to_string());
        let query = [("project", "a b&c=d/é".to_string()), ("limit", "5".into())];
        get(&base, "/jobs", &query).unwrap();
        assert_eq!(
            server.join().unwrap(),
            "GET /jobs?project=a%20b%26c%3Dd%2F%C3%A9&limit=5 HTTP/1.1\r\n"
        );
    }

    #[test]
    fn a_400_from_the_status_listener_is_a_bad_argument() {
        let body = r#"{"error":{"code":"bad_request","message":"limit must be 1 to 500"}}"#;
        let (base, server) = fake_status(format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        let query = JobsQuery {
            hook: None,
            project: None,
            state: None,
            limit: Some(9999),
        };
        let err = jobs(&base, &query, true).unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&err, ClientError::BadArgument(m) if m == "limit must be 1 to 500"),
            "{err}"
        );
    }

    #[test]
    fn a_log_is_asked_for_only_by_a_job_id() {
        // Refused before any connection: nothing listens on port 1.
        let err = logs("http://127.0.0.1:1", "../status", false).unwrap_err();
        assert!(matches!(err, ClientError::BadArgument(_)), "{err}");
    }
}
