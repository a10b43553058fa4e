//! Git hosts' push webhooks on a hook URL: GitHub, Gitea, Forgejo, Gogs and GitLab each name
//! the event in a header of their own, and each sends a JSON body with the pushed `ref` near
//! its start. A push to the hook's branch triggers a build; anything else (a ping, another
//! branch, a tag, a deleted branch, another kind of event) is answered `200 {"skipped":…}`
//! without a job, so pointing a repository's webhook at a hook URL rebuilds only that branch.
//!
//! Bodies may be large (GitHub sends up to 25 MiB), but only the first [`KEEP`] bytes are kept
//! and parsed: the fields read here (`ref`, `after`, `deleted`) come first in every host's
//! payload. The parser stops at the cut: a top-level field seen before it counts, whatever
//! follows.

use super::body::BodyPolicy;
use super::request::Request;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use std::fmt;

/// The largest body a git host sends (GitHub's documented cap); past it `413`.
pub const MAX_EVENT_BODY: u64 = 25 * 1024 * 1024;
/// How much of an event's body is kept and parsed.
pub const KEEP: usize = 64 * 1024;
/// The longest pushed ref repeated in a skip's reason.
const MAX_REF_SHOWN: usize = 200;

/// The hosts, in the order their headers win: Forgejo also sends Gitea's, Gogs' and GitHub's
/// headers, Gitea also Gogs' and GitHub's, Gogs also GitHub's.
const HEADERS: [(&str, &str); 5] = [
    ("X-Forgejo-Event", "Forgejo"),
    ("X-Gitea-Event", "Gitea"),
    ("X-Gogs-Event", "Gogs"),
    ("X-Gitlab-Event", "GitLab"),
    ("X-GitHub-Event", "GitHub"),
];

/// A git host's event: which host, and its event name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub host: &'static str,
    pub name: String,
}

/// The event a request carries, if it is a POST from a git host.
pub fn event_of(req: &Request) -> Option<Event> {
    if req.method != tiny_http::Method::Post {
        return None;
    }
    HEADERS.iter().find_map(|(header, host)| {
        req.header(header).map(|name| Event {
            host,
            name: name.trim().to_string(),
        })
    })
}

/// An event's body may be as large as a host sends, and its start is kept.
pub fn policy(req: &Request) -> Option<BodyPolicy> {
    event_of(req).map(|_| BodyPolicy {
        max: MAX_EVENT_BODY,
        keep: KEEP,
    })
}

/// What to do with an event for a hook of `branch`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Build,
    /// No job; the reason goes into the answer's `skipped`.
    Skip(String),
}

pub fn judge(event: &Event, body: &[u8], branch: &str) -> Verdict {
    let name = event.name.to_ascii_lowercase();
    match name.as_str() {
        "ping" => return Verdict::Skip("ping".into()),
        "push" | "push hook" => {}
        "tag push hook" => return Verdict::Skip("a tag push, not a branch push".into()),
        _ => {
            let name: String = event.name.chars().take(MAX_REF_SHOWN).collect();
            return Verdict::Skip(format!("{} event `{name}` is not a push", event.host));
        }
    }
    let push = Push::read(body);
    let Some(pushed) = push.git_ref else {
        return Verdict::Skip("a push event without a ref".into());
    };
    let wanted = format!("refs/heads/{branch}");
    if pushed != wanted {
        let pushed: String = pushed.chars().take(MAX_REF_SHOWN).collect();
        return Verdict::Skip(format!("a push to {pushed}, not {wanted}"));
    }
    let all_zeros = push
        .after
        .as_deref()
        .is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b == b'0'));
    if push.deleted == Some(true) || all_zeros {
        return Verdict::Skip(format!("{wanted} was deleted"));
    }
    Verdict::Build
}

/// The fields of a push payload that matter, as far as the kept start of the body holds them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Push {
    git_ref: Option<String>,
    after: Option<String>,
    deleted: Option<bool>,
}

impl Push {
    /// Reads the top-level fields present before the body ends (or is cut off).
    fn read(body: &[u8]) -> Push {
        let mut push = Push::default();
        let mut de = serde_json::Deserializer::from_slice(body);
        // A cut-off body ends in an error; what was read before it stays in `push`.
        let _ = de.deserialize_map(Fields(&mut push));
        push
    }
}

/// Visits a payload's top level, filling a [`Push`] as it goes.
struct Fields<'a>(&'a mut Push);

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "ref" => self.0.git_ref = map.next_value::<Option<String>>()?,
                "after" => self.0.after = map.next_value::<Option<String>>()?,
                "deleted" => self.0.deleted = map.next_value::<Option<bool>>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(host: &'static str, name: &str) -> Event {
        Event {
            host,
            name: name.into(),
        }
    }

    #[test]
    fn a_cut_off_body_still_yields_the_fields_before_the_cut() {
        let body = br#"{"ref":"refs/heads/main","before":"a","after":"b","commits":[{"id":"x","message":"unfinis"#;
        assert_eq!(
            Push::read(body),
            Push {
                git_ref: Some("refs/heads/main".into()),
                after: Some("b".into()),
                deleted: None
            }
        );
        assert_eq!(
            judge(&event("GitHub", "push"), body, "main"),
            Verdict::Build
        );
        assert_eq!(Push::read(b"not json"), Push::default());
    }

    #[test]
    fn pushes_elsewhere_deletions_and_other_events_are_skipped() {
        let push = |r: &str, after: &str| {
            format!(r#"{{"ref":"{r}","before":"1111","after":"{after}"}}"#).into_bytes()
        };
        let gh = event("GitHub", "push");
        assert_eq!(
            judge(&gh, &push("refs/heads/main", "abc"), "main"),
            Verdict::Build
        );
        assert!(
            matches!(judge(&gh, &push("refs/heads/dev", "abc"), "main"), Verdict::Skip(w) if w.contains("refs/heads/dev"))
        );
        assert!(matches!(
            judge(&gh, &push("refs/tags/v1", "abc"), "main"),
            Verdict::Skip(_)
        ));
        let zeros = "0".repeat(40);
        assert!(
            matches!(judge(&gh, &push("refs/heads/main", &zeros), "main"), Verdict::Skip(w) if w.contains("deleted"))
        );
        let deleted = br#"{"ref":"refs/heads/main","after":"abc","deleted":true}"#;
        assert!(matches!(judge(&gh, deleted, "main"), Verdict::Skip(_)));
        assert_eq!(
            judge(&event("GitHub", "ping"), b"{}", "main"),
            Verdict::Skip("ping".into())
        );
        let gl = event("GitLab", "Push Hook");
        assert_eq!(
            judge(&gl, &push("refs/heads/main", "abc"), "main"),
            Verdict::Build
        );
        assert!(matches!(
            judge(&event("GitLab", "Tag Push Hook"), b"{}", "main"),
            Verdict::Skip(_)
        ));
        assert!(
            matches!(judge(&event("Gitea", "delete"), b"{}", "main"), Verdict::Skip(w) if w.contains("`delete`"))
        );
        assert!(
            matches!(judge(&gh, b"{}", "main"), Verdict::Skip(w) if w.contains("without a ref"))
        );
    }
}
