//! The config file as written: the serde shape of the TOML (values a check may refuse keep
//! their place in the file as [`Spanned`]), and placing an error toml itself reports at the
//! key it is about, as written.

use super::*;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The file as written. Every value that a later check may refuse keeps its place in the file
/// ([`Spanned`]), so that the error names its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) status_listen: Option<Spanned<String>>,
    pub(super) admin_socket: Option<PathBuf>,
    pub(super) admin_group: Option<Spanned<String>>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) public_url: Option<Spanned<String>>,
    pub(super) workers: Option<Spanned<Whole>>,
    pub(super) kill_grace_secs: Option<Spanned<Whole>>,
    pub(super) keep_jobs: Option<Spanned<Whole>>,
    pub(super) max_log_bytes: Option<Spanned<Whole>>,
    #[serde(default)]
    pub(super) projects: BTreeMap<Spanned<String>, RawProject>,
}

/// A `[projects.NAME]` table as written; `repo` and `build` are required, which the checker
/// (not serde) enforces so that the error can name the key and the table's line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    pub(super) repo: Option<Spanned<String>>,
    pub(super) build: Option<Spanned<String>>,
    pub(super) timeout_secs: Option<Spanned<Whole>>,
    pub(super) debounce_secs: Option<Spanned<Whole>>,
    pub(super) env: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) ssh_key: Option<Spanned<String>>,
    pub(super) known_hosts: Option<Spanned<String>>,
    pub(super) git_credentials: Option<Spanned<String>>,
    pub(super) env_file: Option<Spanned<String>>,
    pub(super) notify: Option<Spanned<String>>,
    pub(super) notify_on: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) publish: Option<Spanned<RawPublish>>,
}

/// A project's `publish = { dir, to, keep }` as written; `dir` and `to` are required, which
/// the checker enforces so that the error names the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublish {
    pub(super) dir: Option<Spanned<String>>,
    pub(super) to: Option<Spanned<String>>,
    pub(super) keep: Option<Spanned<Whole>>,
}

/// A whole number (0 or more) in the file. Its own deserializer so that a wrong value is
/// refused as "expected a whole number", not as serde's "expected u64" / "expected usize".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Whole(u64);

impl Whole {
    pub(super) fn get(self) -> u64 {
        self.0
    }

    /// As a count; past `usize` (never on 64-bit targets) it saturates.
    pub(super) fn count(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Whole;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Whole, E> {
                u64::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_u64(Visitor)
    }
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted path, as written in the file, of the key at byte `offset` or of the key whose
/// value holds it: toml reports unknown keys at the key, wrong values at the value.
pub(super) fn key_path(table: &DeTable<'_>, offset: usize) -> Option<Vec<String>> {
    for (key, value) in table {
        let name = || key.get_ref().to_string();
        if key.span().contains(&offset) {
            return Some(vec![name()]);
        }
        let inner = match value.get_ref() {
            DeValue::Table(t) => key_path(t, offset),
            DeValue::Array(items) => items
                .iter()
                .find_map(|item| key_path(item.get_ref().as_table()?, offset)),
            _ => None,
        };
        if let Some(mut path) = inner {
            path.insert(0, name());
            return Some(path);
        }
        if value.span().contains(&offset) {
            return Some(vec![name()]);
        }
    }
    None
}
