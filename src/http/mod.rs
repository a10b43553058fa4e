//! HTTP: both listeners' connection layer ([`event_loop`], over [`session`], [`request`],
//! [`body`] and [`response`], within [`limits`]), the public hook listener ([`trigger`]), the
//! read-only status listener ([`status`]) and its pages ([`page`]), and [`ApiError`], the one
//! place where an error becomes an HTTP status. The admin socket is not HTTP: it lives in
//! `crate::admin`.

pub mod answer;
pub mod body;
mod conn;
pub mod event_loop;
pub mod limits;
pub mod page;
pub mod projects;
pub mod push;
pub mod request;
pub mod response;
pub mod session;
pub mod status;
mod streams;
pub mod trigger;
pub mod waiters;
pub mod workers;

pub use response::Reply;

/// Runs the request side of both listeners on raw bytes, with no socket and no journal: the
/// session (head parsing, framing, `100 Continue`, refusals), the hook and status routes'
/// parsing, and every answer written with the response writer. Returns the bytes a client
/// would read back. The entry point of the request-router fuzz target.
#[doc(hidden)]
pub fn exchange_offline(bytes: &[u8]) -> Vec<u8> {
    use response::{write_bytes, Persistence};
    let mut session = session::Session::new(limits::Limits::DEFAULT);
    // With no journal, any git host's event is taken as one to a live hook.
    let policy = |req: &request::Request, limits: &limits::Limits| {
        push::policy(req).unwrap_or_else(|| session::default_policy(req, limits))
    };
    session.feed(bytes);
    let mut out = Vec::new();
    loop {
        match session.step(&policy) {
            session::Step::Wait => return out,
            session::Step::Continue => out.extend_from_slice(session::CONTINUE),
            session::Step::Refuse(err) => {
                let v = tiny_http::HTTPVersion(1, 1);
                let _ = write_bytes(&mut out, err.reply(), v, false, Persistence::Close);
                return out;
            }
            session::Step::Serve(req) => {
                let reply = trigger::route_offline(&req).unwrap_or_else(|| {
                    match status::parse_filter(&req) {
                        Ok(_) => Reply::text(200, page::escape(&req.path)),
                        Err(e) => e.reply(),
                    }
                });
                let persistence = Persistence::of(&req);
                let head_only = req.method == tiny_http::Method::Head;
                let _ = write_bytes(&mut out, reply, req.version.clone(), head_only, persistence);
                if req.close {
                    return out;
                }
                session.answered();
            }
        }
    }
}

/// Every error an HTTP client can be answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Unknown path, job, hook or secret; for hook URLs the body is the same whatever the cause.
    NotFound,
    /// The method is not served on this path; carries the `Allow` value.
    MethodNotAllowed(&'static str),
    /// The request is malformed or a parameter is invalid; carries what was wrong.
    BadRequest(String),
    /// An `Expect` other than `100-continue`.
    ExpectationFailed,
    /// Request line and headers over the limit.
    HeadTooLarge,
    /// A body over the limit.
    BodyTooLarge,
    /// The request did not arrive in time.
    RequestTimeout,
    /// An HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
    /// Too many open connections.
    Busy,
    /// The journal cannot take the write (disk full, I/O error); nothing was acknowledged.
    Unavailable,
    /// The journal could not be read; nothing was being written. `retry`: the failure may pass
    /// by itself (an I/O error, the journal being reopened), rather than a damaged file.
    Unreadable { retry: bool },
    /// A bug or an unexpected failure; the detail goes to the log, never to the client.
    Internal(String),
}

impl ApiError {
    fn status(&self) -> u16 {
        match self {
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::BadRequest(_) => 400,
            ApiError::ExpectationFailed => 417,
            ApiError::HeadTooLarge => 431,
            ApiError::BodyTooLarge => 413,
            ApiError::RequestTimeout => 408,
            ApiError::VersionNotSupported => 505,
            ApiError::Busy | ApiError::Unavailable => 503,
            ApiError::Unreadable { retry: true } => 503,
            ApiError::Unreadable { retry: false } | ApiError::Internal(_) => 500,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::ExpectationFailed => "expectation_failed",
            ApiError::HeadTooLarge => "header_too_large",
            ApiError::BodyTooLarge => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::VersionNotSupported => "http_version_not_supported",
            ApiError::Busy => "busy",
            ApiError::Unavailable => "unavailable",
            ApiError::Unreadable { .. } => "journal_unreadable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::NotFound => "Not found.".into(),
            ApiError::MethodNotAllowed(allow) => format!("Method not allowed; use {allow}."),
            ApiError::BadRequest(why) => format!("Bad request: {why}."),
            ApiError::ExpectationFailed => {
                "Only the expectation 100-continue is served; send the request without it.".into()
            }
            ApiError::HeadTooLarge => "Request line and headers are too large.".into(),
            ApiError::BodyTooLarge => "Request body is too large.".into(),
            ApiError::RequestTimeout => "The request did not arrive in time.".into(),
            ApiError::VersionNotSupported => "Only HTTP/1.0 and HTTP/1.1 are served.".into(),
            ApiError::Busy => "Too many connections; retry shortly.".into(),
            ApiError::Unavailable => {
                "The journal cannot record the job right now; nothing was queued. Retry later."
                    .into()
            }
            ApiError::Unreadable { retry: true } => {
                "The journal cannot be read right now; retry later.".into()
            }
            ApiError::Unreadable { retry: false } => {
                "The journal could not be read; check the daemon log.".into()
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
            ApiError::Busy | ApiError::Unavailable | ApiError::Unreadable { retry: true } => {
                reply.with_header("Retry-After", "5")
            }
            _ => reply,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        e.reply()
    }
}

/// A refused write (nothing was queued); a failed read is a [`crate::journal::ReadError`].
impl From<crate::journal::JournalError> for ApiError {
    fn from(e: crate::journal::JournalError) -> ApiError {
        log::error!("{e}");
        ApiError::Unavailable
    }
}

impl From<crate::journal::ReadError> for ApiError {
    fn from(e: crate::journal::ReadError) -> ApiError {
        log::error!("{e}");
        ApiError::Unreadable {
            retry: e.cause.is_transient(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::response::ReplyBody;
    use super::*;
    use crate::journal::{JournalError, ReadError};

    /// The status, `Retry-After` and error message a client is answered with.
    fn answer(error: ApiError) -> (u16, Option<String>, String) {
        let reply = error.reply();
        let retry = reply
            .headers
            .iter()
            .find(|(name, _)| *name == "Retry-After")
            .map(|(_, value)| value.clone());
        let ReplyBody::Bytes(body) = reply.body else {
            panic!("an error is answered with bytes")
        };
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = json["error"]["message"].as_str().unwrap().to_string();
        (reply.status, retry, message)
    }

    #[test]
    fn a_failed_read_is_not_answered_as_a_refused_write() {
        let corrupt = ReadError {
            query: "a job listing",
            cause: JournalError::Corrupt {
                table: "jobs",
                key: "J1".into(),
                detail: "EOF while parsing".into(),
            },
        };
        let (status, retry, message) = answer(corrupt.into());
        assert_eq!((status, retry), (500, None));
        assert_eq!(
            message,
            "The journal could not be read; check the daemon log."
        );
        let reopening = ReadError {
            query: "a job",
            cause: JournalError::Reopening,
        };
        let (status, retry, message) = answer(reopening.into());
        assert_eq!((status, retry.as_deref()), (503, Some("5")));
        assert!(!message.contains("nothing was queued"), "{message}");
        // A refused write still says that nothing was queued.
        let (status, _, message) = answer(JournalError::Stopped.into());
        assert_eq!(status, 503);
        assert!(message.contains("nothing was queued"), "{message}");
    }
}
