//! Log output: one event per line on stderr, filtered by `RUST_LOG` (default `info`).
//!
//! Under systemd (stderr is the journal stream named by `$JOURNAL_STREAM`) a line carries a
//! syslog priority prefix (`<3>` error … `<7>` debug) and no timestamp, since journald adds its
//! own; `journalctl -p err` then finds errors. Elsewhere a line starts with a UTC timestamp.
//! A password in a URL never reaches the log: every line goes through [`crate::redact`].

use log::Level;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

pub fn init() {
    let journald = stderr_is_journal();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            let text = message(record.args());
            if journald {
                writeln!(buf, "<{}>{text}", priority(record.level()))
            } else {
                let ts = buf.timestamp_seconds();
                writeln!(buf, "{ts} {:<5} {text}", record.level())
            }
        })
        .init();
}

/// A record's text as it is logged: any URL password hidden.
fn message(args: &std::fmt::Arguments<'_>) -> String {
    let text = args.to_string();
    match crate::redact::url_passwords(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(redacted) => redacted,
    }
}

/// The syslog priority of a log level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM` is
/// `DEVICE:INODE` of it (a redirected stderr keeps the variable but not the identity).
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_never_reach_the_log() {
        let token = "glpat-abcdef";
        assert_eq!(
            message(&format_args!(
                "fetching https://oauth2:{token}@git.example.com/site.git"
            )),
            "fetching https://oauth2:***@git.example.com/site.git"
        );
        assert_eq!(message(&format_args!("job={} READY", 7)), "job=7 READY");
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
    }
}
