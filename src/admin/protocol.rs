//! The admin socket's wire format, shared by the daemon and the CLI: one JSON request line, one
//! JSON answer line per connection.
//!
//! A request is an object tagged by `op` ([`Request`]). An answer is the result's own fields with
//! `"ok":true` beside them (`{"ok":true,"hooks":[…]}`), or `{"ok":false,"error":"…"}`
//! ([`Answer`]). Which result type answers which request is fixed by [`Request`]'s doc lines;
//! the CLI asks for that type when it reads the answer.

use crate::journal::{Hook, Job};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest line either side reads.
pub const MAX_LINE_BYTES: u64 = 64 * 1024;

/// What a client asks of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Creates a hook; answered with [`Created`]. Unless `verify` is false, the branch must
    /// exist in the project's repository (`git ls-remote`).
    Create {
        project: String,
        name: String,
        branch: String,
        /// Absent (an older client) means true.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        verify: bool,
    },
    /// Lists every hook; answered with [`Hooks`].
    List,
    /// Revokes a hook; answered with [`Revoked`].
    Revoke { id: String },
    /// Triggers a hook as its URL would; answered with [`Triggered`].
    Trigger { id: String },
    /// Gives a hook a new secret; answered with [`Rotated`].
    Rotate { id: String },
    /// Cancels a PENDING or BUILDING job; answered with [`Canceled`].
    Cancel { job: String },
    /// Points a project's `current` at an older release (`job`'s, or the newest kept one older
    /// than the live one); answered with [`RolledBack`].
    Rollback {
        project: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
    },
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

/// The answer to [`Request::Trigger`]: the same body as a hook URL's `201`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Triggered {
    pub job: NewJob,
}

/// A job as a trigger's answer shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NewJob {
    pub id: String,
    pub state: String,
    pub created_at: u64,
}

/// The answer to [`Request::Rotate`]: the hook and its new URL, shown only this once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rotated {
    pub hook: Hook,
    pub url: String,
}

/// The answer to [`Request::Cancel`]: the job as it now is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Canceled {
    pub job: Job,
}

/// The answer to [`Request::Rollback`]: the release live before and the one live now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolledBack {
    pub project: String,
    pub from: Option<String>,
    pub to: String,
}

/// The answer to [`Request::Create`]: the new hook and its URL, the only time the secret is
/// shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Created {
    pub hook: Hook,
    pub url: String,
}

/// The answer to [`Request::List`]: the same objects as `GET /hooks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hooks {
    pub hooks: Vec<Hook>,
}

/// The answer to [`Request::Revoke`]: the id of the hook that is gone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    pub revoked: String,
}

/// One answer line: a result of type `T`, or the daemon's reason for refusing the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Done(T),
    Refused(String),
}

/// `{"ok":true, …T's fields}` on the wire.
#[derive(Serialize, Deserialize)]
struct DoneLine<T> {
    ok: bool,
    #[serde(flatten)]
    result: T,
}

/// `{"ok":false,"error":"…"}` on the wire.
#[derive(Serialize, Deserialize)]
struct RefusedLine {
    ok: bool,
    error: String,
}

/// Just the `ok` flag, read first to know which of the two shapes the line has.
#[derive(Deserialize)]
struct Flag {
    ok: bool,
}

impl<T: Serialize> Answer<T> {
    /// The answer as one line, newline included.
    pub fn to_line(&self) -> String {
        let text = match self {
            Answer::Done(result) => serde_json::to_string(&DoneLine { ok: true, result }),
            Answer::Refused(error) => serde_json::to_string(&RefusedLine {
                ok: false,
                error: error.clone(),
            }),
        };
        // Serialising plain structs of strings and numbers cannot fail; should a future field
        // make it fail, the client still gets a well-formed refusal.
        let mut line = text.unwrap_or_else(|e| {
            format!(
                r#"{{"ok":false,"error":{}}}"#,
                serde_json::Value::String(format!("cannot encode the answer: {e}"))
            )
        });
        line.push('\n');
        line
    }
}

impl<T: DeserializeOwned> Answer<T> {
    /// Reads an answer line.
    pub fn from_line(line: &str) -> Result<Answer<T>, serde_json::Error> {
        if serde_json::from_str::<Flag>(line)?.ok {
            Ok(Answer::Done(
                serde_json::from_str::<DoneLine<T>>(line)?.result,
            ))
        } else {
            Ok(Answer::Refused(
                serde_json::from_str::<RefusedLine>(line)?.error,
            ))
        }
    }
}

impl Request {
    /// The request as one line, newline included.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(self)?;
        line.push('\n');
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> Hook {
        Hook {
            id: "hook_AAAAAAAAAAAA".into(),
            name: "n".into(),
            project: "p".into(),
            branch: "main".into(),
            created_at: 1,
            last_triggered_at: None,
        }
    }

    #[test]
    fn requests_are_tagged_by_op() {
        let r: Request =
            serde_json::from_str(r#"{"op":"create","project":"p","name":"n","branch":"b"}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::Create {
                project: "p".into(),
                name: "n".into(),
                branch: "b".into(),
                verify: true,
            }
        );
        assert_eq!(Request::List.to_line().unwrap(), "{\"op\":\"list\"}\n");
        assert_eq!(
            Request::Revoke { id: "x".into() }.to_line().unwrap(),
            "{\"op\":\"revoke\",\"id\":\"x\"}\n"
        );
    }

    #[test]
    fn answers_put_ok_beside_the_result() {
        let line = Answer::Done(Revoked {
            revoked: "hook_AAAAAAAAAAAA".into(),
        })
        .to_line();
        assert_eq!(line, "{\"ok\":true,\"revoked\":\"hook_AAAAAAAAAAAA\"}\n");
        let line = Answer::<Revoked>::Refused("no".into()).to_line();
        assert_eq!(line, "{\"ok\":false,\"error\":\"no\"}\n");
        let line = Answer::Done(Hooks {
            hooks: vec![hook()],
        })
        .to_line();
        assert!(
            line.starts_with("{\"ok\":true,\"hooks\":[{\"id\":\"hook_AAAAAAAAAAAA\""),
            "{line}"
        );
    }

    #[test]
    fn answers_read_back_as_written() {
        let created = Created {
            hook: hook(),
            url: "http://h/v1/x".into(),
        };
        let line = Answer::Done(created.clone()).to_line();
        assert_eq!(
            Answer::<Created>::from_line(&line).unwrap(),
            Answer::Done(created)
        );
        let line = Answer::<Created>::Refused("unknown project".into()).to_line();
        assert_eq!(
            Answer::<Created>::from_line(&line).unwrap(),
            Answer::Refused("unknown project".into())
        );
        // A line as earlier daemons wrote it by hand.
        let old = r#"{"ok":true,"hook":{"id":"hook_AAAAAAAAAAAA","name":"n","project":"p","branch":"main","createdAt":1,"lastTriggeredAt":null},"url":"http://h/v1/x"}"#;
        assert_eq!(
            Answer::<Created>::from_line(old).unwrap(),
            Answer::Done(Created {
                hook: hook(),
                url: "http://h/v1/x".into()
            })
        );
        // The wrong result type for the line, or no `ok` at all, is an error, not a default.
        assert!(Answer::<Created>::from_line("{\"ok\":true,\"revoked\":\"x\"}").is_err());
        assert!(Answer::<Revoked>::from_line("{\"revoked\":\"x\"}").is_err());
    }
}
