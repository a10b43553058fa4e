//! Keeping secrets out of everything deployhook writes: job logs, job errors, daemon logs.
//!
//! Two kinds of secret are hidden. A password in a URL's userinfo (`https://USER:TOKEN@host/…`)
//! is found by its shape in any text and shown as `https://USER:***@host/…`, so it needs no
//! configuration. Known values (an `env_file`'s values, 4 characters or longer) are replaced
//! by `***` wherever they occur. Both work on bytes: build output need not be UTF-8, and
//! replacing ASCII-delimited spans of valid UTF-8 keeps it valid.
//!
//! Build output reaches the job log in arbitrary chunks, so [`Masker`] masks whole lines: it
//! holds a partial line until its newline (or carriage return), the end of the output, or
//! [`MAX_PARTIAL`] bytes.

use std::borrow::Cow;

/// What a hidden secret is shown as.
pub const MASK: &str = "***";
/// Values of fewer characters are not masked: they would hide common words and digits.
pub const MIN_SECRET_LEN: usize = 4;
/// The longest partial line held back while waiting for its newline. A longer line is masked
/// and written in pieces of this size (a secret split across two pieces is not recognised).
pub const MAX_PARTIAL: usize = 64 * 1024;

/// `text` with every URL password replaced by `***`.
pub fn url_passwords(text: &str) -> Cow<'_, str> {
    match url_passwords_bytes(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        // Only bytes between ASCII `:` and `@` were replaced by ASCII: still UTF-8.
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// Whether `text` holds a URL with a password in it.
pub fn has_url_password(text: &str) -> bool {
    matches!(url_passwords(text), Cow::Owned(_))
}

/// The password of a URL (`scheme://user:PASSWORD@host…`), if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let (start, end) = password_spans(url.as_bytes()).next()?;
    url.get(start..end)
}

/// Byte ranges of the passwords of every URL in `text`.
fn password_spans(text: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(found) = find(&text[from..], b"://") {
            let authority_start = from + found + 3;
            let authority_len = text[authority_start..]
                .iter()
                .position(|&b| ends_authority(b))
                .unwrap_or(text.len() - authority_start);
            let authority = &text[authority_start..authority_start + authority_len];
            from = authority_start + authority_len;
            // The userinfo ends at the last `@`: an unescaped `@` in a password is common.
            let Some(at) = authority.iter().rposition(|&b| b == b'@') else {
                continue;
            };
            let Some(colon) = authority[..at].iter().position(|&b| b == b':') else {
                continue;
            };
            let start = authority_start + colon + 1;
            let end = authority_start + at;
            if start < end && &text[start..end] != MASK.as_bytes() {
                return Some((start, end));
            }
        }
        None
    })
}

/// Bytes that end a URL's authority in running text.
fn ends_authority(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'/' | b'?' | b'#' | b'\'' | b'"' | b'`' | b'<' | b'>' | b'(' | b')' | b'[' | b']'
        )
        || b.is_ascii_control()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn url_passwords_bytes(text: &[u8]) -> Cow<'_, [u8]> {
    let spans: Vec<(usize, usize)> = password_spans(text).collect();
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in spans {
        out.extend_from_slice(&text[last..start]);
        out.extend_from_slice(MASK.as_bytes());
        last = end;
    }
    out.extend_from_slice(&text[last..]);
    Cow::Owned(out)
}

/// Replaces every occurrence of each of `secrets` (longest first) by `***`.
fn known_values<'a>(text: Cow<'a, [u8]>, secrets: &[Vec<u8>]) -> Cow<'a, [u8]> {
    let mut text = text;
    for secret in secrets {
        if find(&text, secret).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut rest: &[u8] = &text;
        while let Some(i) = find(rest, secret) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(MASK.as_bytes());
            rest = &rest[i + secret.len()..];
        }
        out.extend_from_slice(rest);
        text = Cow::Owned(out);
    }
    text
}

/// Masks a job's log line by line: URL passwords and the job's known secret values.
#[derive(Default)]
pub struct Masker {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<Vec<u8>>,
    partial: Vec<u8>,
}

impl Masker {
    /// Adds values to hide from now on; those shorter than [`MIN_SECRET_LEN`] are ignored.
    pub fn hide<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) {
        for value in values {
            let long_enough = value.chars().count() >= MIN_SECRET_LEN;
            if long_enough && !self.secrets.iter().any(|s| s == value.as_bytes()) {
                self.secrets.push(value.as_bytes().to_vec());
            }
        }
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// One whole piece of text (deployhook's own line, an error), masked.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let masked = known_values(url_passwords_bytes(text.as_bytes()), &self.secrets);
        match masked {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// Takes a chunk of output; calls `emit` with each complete line (its end included),
    /// masked. A carriage return ends a line too, so that progress meters stream.
    pub fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&[u8])) {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (line, rest) = chunk.split_at(nl + 1);
            chunk = rest;
            if self.partial.is_empty() {
                emit(&self.mask(line));
            } else {
                self.partial.extend_from_slice(line);
                let whole = std::mem::take(&mut self.partial);
                emit(&self.mask(&whole));
            }
        }
        self.partial.extend_from_slice(chunk);
        while self.partial.len() >= MAX_PARTIAL {
            let piece: Vec<u8> = self.partial.drain(..MAX_PARTIAL).collect();
            emit(&self.mask(&piece));
        }
    }

    /// The end of one command's output: the partial line held back, masked.
    pub fn finish(&mut self, emit: impl FnOnce(&[u8])) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            emit(&self.mask(&rest));
        }
    }

    fn mask<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        known_values(url_passwords_bytes(bytes), &self.secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_hidden_and_the_rest_kept() {
        for (text, shown) in [
            (
                "https://oauth2:TOKEN@host/group/site.git",
                "https://oauth2:***@host/group/site.git",
            ),
            (
                "fatal: 'http://u:p%40ss@127.0.0.1:8080/x.git' not found",
                "fatal: 'http://u:***@127.0.0.1:8080/x.git' not found",
            ),
            ("a https://u:x@y@h b", "a https://u:***@h b"),
            (
                "two: http://a:b@h1/ ssh://c:d@h2",
                "two: http://a:***@h1/ ssh://c:***@h2",
            ),
            ("https://user@host/x", "https://user@host/x"),
            ("https://host:8080/x", "https://host:8080/x"),
            ("no url: a:b@c", "no url: a:b@c"),
            ("https://u:***@host/", "https://u:***@host/"),
            ("git@host:me/site.git", "git@host:me/site.git"),
            (
                "ünïcode https://u:pässwörd@h/ ok",
                "ünïcode https://u:***@h/ ok",
            ),
            ("trailing https://u:tok@", "trailing https://u:***@"),
            ("https://:tok@host", "https://:***@host"),
        ] {
            assert_eq!(url_passwords(text), shown, "{text}");
        }
        assert!(matches!(url_passwords("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_url_password_is_found_and_reported() {
        assert!(has_url_password("https://oauth2:TOKEN@host/x"));
        assert!(!has_url_password("https://oauth2@host/x"));
        assert!(!has_url_password("/srv/git/site.git"));
        assert_eq!(url_password("https://u:TOKEN@host/x"), Some("TOKEN"));
        assert_eq!(url_password("https://u@host/x"), None);
    }

    #[test]
    fn known_values_are_masked_longest_first_and_short_ones_kept() {
        let mut m = Masker::default();
        m.hide(["hunter2", "hunter2-extended", "abc", "", "çé"]);
        assert_eq!(
            m.text("pw=hunter2-extended; pw=hunter2; abc çé"),
            "pw=***; pw=***; abc çé"
        );
        assert_eq!(m.text("https://u:abc@h/"), "https://u:***@h/");
    }

    fn run(m: &mut Masker, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            m.push(c, |l| out.extend_from_slice(l));
        }
        m.finish(|l| out.extend_from_slice(l));
        out
    }

    #[test]
    fn output_is_masked_per_line_across_chunks() {
        let mut m = Masker::default();
        m.hide(["s3cr3t-value"]);
        let out = run(
            &mut m,
            &[
                b"one s3cr",
                b"3t-value\ntwo http://u:p",
                b"w@h/\nthree s3cr3t-value",
            ],
        );
        assert_eq!(out, b"one ***\ntwo http://u:***@h/\nthree ***");
        let mut lines = Vec::new();
        m.push(b"10% s3cr3t-value\r20%\r\n", |l| lines.push(l.to_vec()));
        assert_eq!(lines, [&b"10% ***\r"[..], b"20%\r", b"\n"]);
    }

    #[test]
    fn a_partial_line_is_held_only_up_to_its_bound() {
        let mut m = Masker::default();
        let mut emitted = 0;
        m.push(&vec![b'x'; MAX_PARTIAL + 10], |l| emitted += l.len());
        assert_eq!(emitted, MAX_PARTIAL);
        m.finish(|l| emitted += l.len());
        assert_eq!(emitted, MAX_PARTIAL + 10);
    }

    #[test]
    fn binary_output_passes_unchanged() {
        let mut m = Masker::default();
        m.hide(["secret"]);
        let bytes: Vec<u8> = (0..=255u8).collect();
        assert_eq!(run(&mut m, &[&bytes]), bytes);
    }
}
