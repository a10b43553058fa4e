//! HTTP: the connection layer ([`conn`]), the public hook listener ([`trigger`]), the read-only
//! status listener ([`status`]) and the admin socket ([`admin`]), plus what they share: the
//! reply type, the headers every response carries, and [`ApiError`], the one place where an
//! error becomes an HTTP status.

pub mod admin;
pub mod conn;
pub mod page;
pub mod poll;
pub mod status;
pub mod trigger;
pub mod wire;

use serde::Serialize;
use std::io::{self, Write};

/// Runs the request side of both listeners on raw bytes, with no socket and no journal: head
/// parsing and framing, the hook path, the status routes' parameters. The entry point of the
/// request-router fuzz target; returns the error a client would be answered, if any.
#[doc(hidden)]
pub fn route_offline(bytes: &[u8]) -> Result<(), ApiError> {
    let Some(req) = wire::parse_request(bytes, &wire::Limits::DEFAULT)? else {
        return Ok(());
    };
    if let Some((project, secret)) = trigger::parse_hook_path(&req.path) {
        let _ = crate::config::is_project_name(project) && crate::secret::is_secret_shaped(secret);
    }
    let _ = page::escape(&req.path);
    let _ = req.query_param("tail");
    status::parse_filter(&req).map(|_| ())
}

/// A streamed body: called with the connection's writer, each write goes out at once.
pub type Producer = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

pub enum ReplyBody {
    Bytes(Vec<u8>),
    Stream(Producer),
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: ReplyBody,
}

/// Headers on every response of both listeners: nothing is cached (a hook URL's answer names a
/// job), and a page never leaks its URL onward.
fn common_headers(content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", content_type.to_string()),
        ("Cache-Control", "no-store".to_string()),
        ("Referrer-Policy", "no-referrer".to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
    ]
}

impl Reply {
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: common_headers(content_type),
            body: ReplyBody::Bytes(body),
        }
    }

    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::bytes(status, "application/json", body),
            Err(e) => ApiError::Internal(e.to_string()).reply(),
        }
    }

    pub fn text(status: u16, body: String) -> Reply {
        Reply::bytes(status, "text/plain; charset=utf-8", body.into_bytes())
    }

    pub fn html(body: String) -> Reply {
        let mut r = Reply::bytes(200, "text/html; charset=utf-8", body.into_bytes());
        r.headers.push((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'".into(),
        ));
        r
    }

    pub fn stream(content_type: &str, produce: Producer) -> Reply {
        Reply {
            status: 200,
            headers: common_headers(content_type),
            body: ReplyBody::Stream(produce),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// Every error an HTTP client can be answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Unknown path, job, hook or secret; for hook URLs the body is the same whatever the cause.
    NotFound,
    /// The method is not served on this path; carries the `Allow` value.
    MethodNotAllowed(&'static str),
    BadRequest(String),
    /// Request line and headers over the limit.
    HeadTooLarge,
    /// A body over the limit.
    BodyTooLarge,
    /// The request did not arrive in time.
    RequestTimeout,
    VersionNotSupported,
    /// Too many open connections.
    Busy,
    /// The journal cannot take the write (disk full, I/O error); nothing was acknowledged.
    Unavailable,
    Internal(String),
}

impl ApiError {
    fn status(&self) -> u16 {
        match self {
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::BadRequest(_) => 400,
            ApiError::HeadTooLarge => 431,
            ApiError::BodyTooLarge => 413,
            ApiError::RequestTimeout => 408,
            ApiError::VersionNotSupported => 505,
            ApiError::Busy | ApiError::Unavailable => 503,
            ApiError::Internal(_) => 500,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::HeadTooLarge => "header_too_large",
            ApiError::BodyTooLarge => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::VersionNotSupported => "http_version_not_supported",
            ApiError::Busy => "busy",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::NotFound => "Not found.".into(),
            ApiError::MethodNotAllowed(allow) => format!("Method not allowed; use {allow}."),
            ApiError::BadRequest(why) => format!("Bad request: {why}."),
            ApiError::HeadTooLarge => "Request line and headers are too large.".into(),
            ApiError::BodyTooLarge => "Request body is too large.".into(),
            ApiError::RequestTimeout => "The request did not arrive in time.".into(),
            ApiError::VersionNotSupported => "Only HTTP/1.0 and HTTP/1.1 are served.".into(),
            ApiError::Busy => "Too many connections; retry shortly.".into(),
            ApiError::Unavailable => {
                "The journal cannot record the job right now; nothing was queued. Retry later."
                    .into()
            }
            ApiError::Internal(_) => "Internal error.".into(),
        }
    }

    pub fn reply(&self) -> Reply {
        if let ApiError::Internal(detail) = self {
            log::error!("internal error: {detail}");
        }
        let body = serde_json::json!({"error": {"code": self.code(), "message": self.message()}});
        let reply = Reply::json(self.status(), &body);
        match self {
            ApiError::MethodNotAllowed(allow) => reply.with_header("Allow", *allow),
            ApiError::Busy | ApiError::Unavailable => reply.with_header("Retry-After", "5"),
            _ => reply,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        e.reply()
    }
}

impl From<crate::journal::JournalError> for ApiError {
    fn from(e: crate::journal::JournalError) -> ApiError {
        log::error!("{e}");
        ApiError::Unavailable
    }
}
