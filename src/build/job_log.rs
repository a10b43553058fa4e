//! A job's log file, `logs/{job}.log`: deployhook's own lines always, build output up to
//! `max_log_bytes`, then one line saying the rest was dropped.
//!
//! Shared between the build thread (its own lines) and the pump thread of each step (output),
//! behind one mutex.

use crate::git_access::RecentLines;
use crate::redact;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// The job's log file: deployhook's own lines always, build output up to the cap; every line
/// masked on its way in ([`redact::Masker`]).
pub(crate) struct Log {
    file: Option<File>,
    written: u64,
    cap: u64,
    truncated: bool,
    pub(crate) masker: redact::Masker,
    /// The last lines of the running command's output, for its error message.
    pub(super) recent: RecentLines,
}

/// The log as the build thread and its pump threads share it.
pub(crate) type SharedLog = Arc<Mutex<Log>>;

impl Log {
    /// Opens the log; `append` for a restarted attempt, which keeps what the earlier one wrote.
    /// A log that cannot be opened is warned about once and then drops everything. Every
    /// write goes to the end of the file (O_APPEND), so lines of the notifier, which writes to
    /// the same log while the build thread may still, never overwrite each other.
    pub(crate) fn open(path: &Path, cap: u64, append: bool) -> Log {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|f| match append {
                true => Ok(f),
                false => f.set_len(0).map(|()| f),
            });
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                log::warn!("cannot open log {}: {e}", path.display());
                None
            }
        };
        let written = if append {
            std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        Log {
            file,
            written,
            cap,
            truncated: false,
            masker: redact::Masker::default(),
            recent: RecentLines::default(),
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        if let Some(f) = &mut self.file {
            if f.write_all(bytes).is_ok() {
                self.written += bytes.len() as u64;
            }
        }
    }

    /// One of deployhook's own lines; written even past the cap.
    pub(super) fn line(&mut self, text: &str) {
        let text = self.masker.text(text);
        self.raw(format!("[deployhook] {text}\n").as_bytes());
    }

    /// A chunk of a command's output, written line by line once masked.
    pub(super) fn output(&mut self, bytes: &[u8]) {
        let mut masker = std::mem::take(&mut self.masker);
        masker.push(bytes, |line| self.masked_output(line));
        self.masker = masker;
    }

    /// The end of a command's output: its last line, even without a newline (one is added, so
    /// that the next line of the log starts on a line of its own).
    pub(super) fn end_of_output(&mut self) {
        let mut masker = std::mem::take(&mut self.masker);
        let mut unended = false;
        masker.finish(|line| {
            unended = !line.is_empty() && !line.ends_with(b"\n");
            self.masked_output(line)
        });
        self.masker = masker;
        if unended && !self.truncated {
            self.raw(b"\n");
        }
    }

    /// Masked output, up to the cap.
    fn masked_output(&mut self, bytes: &[u8]) {
        self.recent.push(bytes);
        if self.truncated {
            return;
        }
        let room = self.cap.saturating_sub(self.written) as usize;
        if bytes.len() <= room {
            self.raw(bytes);
        } else {
            self.raw(&bytes[..room]);
            self.truncated = true;
            let cap = self.cap;
            self.raw(b"\n");
            self.line(&format!(
                "log truncated: it reached max_log_bytes ({cap} bytes); further output is dropped, the build goes on"
            ));
        }
    }
}

/// `text` with the job's secrets masked, as its log shows them.
pub(crate) fn mask(log: &SharedLog, text: &str) -> String {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .masker
        .text(text)
        .into_owned()
}

/// Writes one of deployhook's own lines to a shared log.
pub(crate) fn say(log: &SharedLog, text: &str) {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .line(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_caps_output_but_keeps_own_lines() {
        let dir = std::env::temp_dir().join(format!("deployhook-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.log");
        let mut log = Log::open(&path, 1024, false);
        log.line("start");
        log.output(&[b'x'; 2000]);
        log.output(b"more");
        // Output is written by whole lines: the last one when its command's output ends.
        log.end_of_output();
        log.line("end");
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.starts_with("[deployhook] start\n"));
        let run = text.lines().nth(1).unwrap();
        assert!(run.bytes().all(|b| b == b'x'));
        assert_eq!(run.len(), 1024 - "[deployhook] start\n".len());
        assert!(text.contains("log truncated"));
        assert!(!text.contains("more"));
        assert!(text.ends_with("[deployhook] end\n"));
    }
}
