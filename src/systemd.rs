//! systemd's notification protocol: one datagram per state change (`READY=1`, `RELOADING=1`,
//! `STOPPING=1`, `WATCHDOG=1`) to the socket named by `$NOTIFY_SOCKET`, and the watchdog
//! interval systemd asks for. Outside systemd the variables are unset and every call does
//! nothing.
//!
//! The `sd-notify` crate supplies the states and their text ([`NotifyState`], the monotonic
//! timestamp `RELOADING=1` needs) and reads `$WATCHDOG_USEC`/`$WATCHDOG_PID`; it also reads
//! socket activation's variables for `sys::take_listen_fds`. Two parts stay here:
//! - Sending the datagram. `sd_notify::notify` connects to `$NOTIFY_SOCKET` as a file path
//!   only; systemd also names abstract sockets (`@name`, as containers and some service
//!   managers use), which the crate cannot reach. [`send_to`] handles both.
//! - Clearing the variables. The crate's `*_and_unset_env` functions are `unsafe` (they call
//!   `remove_var`, sound only while the process has one thread); [`watchdog_interval`] reads
//!   with the crate's safe function and removes the variables itself, and must be called at
//!   start-up before any other thread exists, as `daemon::run` does.

use sd_notify::NotifyState;
use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub const ENV_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends one notification if systemd asked for them; `Ok(false)` when it did not.
pub fn send(states: &[NotifyState]) -> io::Result<bool> {
    send_to(std::env::var_os(ENV_SOCKET).as_deref(), &message(states))
}

/// The datagram for `states`: one `KEY=VALUE` line each.
fn message(states: &[NotifyState]) -> String {
    states.iter().map(|s| format!("{s}\n")).collect()
}

/// Sends `message` to `target` (`$NOTIFY_SOCKET`'s value: a path, or an abstract name written
/// with a leading `@`); `Ok(false)` when there is none.
fn send_to(target: Option<&OsStr>, message: &str) -> io::Result<bool> {
    let Some(target) = target else {
        return Ok(false);
    };
    let target = target.to_string_lossy();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None if target.starts_with('/') => SocketAddr::from_pathname(&*target)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsupported {ENV_SOCKET} `{target}`"),
            ))
        }
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(message.as_bytes(), &addr)?;
    Ok(true)
}

fn send_logged(states: &[NotifyState]) {
    if let Err(e) = send(states) {
        log::warn!(
            "cannot notify systemd ({}): {e}",
            message(states).trim_end()
        );
    }
}

pub fn ready() {
    send_logged(&[
        NotifyState::Ready,
        NotifyState::Status("accepting triggers"),
    ]);
}

pub fn stopping() {
    send_logged(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping builds"),
    ]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC=` systemd 253 and later require beside it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send_logged(&[NotifyState::Reloading, now]),
        Err(e) => log::warn!("cannot notify systemd of the reload: no monotonic clock: {e}"),
    }
}

pub fn watchdog() {
    send_logged(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if it is meant for this process.
/// The variables are removed so that no child sees them; call before other threads start.
pub fn watchdog_interval() -> Option<Duration> {
    let interval = sd_notify::watchdog_enabled();
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    interval.filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_one_line_each() {
        assert_eq!(
            message(&[
                NotifyState::Ready,
                NotifyState::Status("accepting triggers")
            ]),
            "READY=1\nSTATUS=accepting triggers\n"
        );
        assert_eq!(
            message(&[NotifyState::Reloading, NotifyState::MonotonicUsec(42)]),
            "RELOADING=1\nMONOTONIC_USEC=42\n"
        );
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        assert!(!send_to(None, "READY=1").unwrap());
        assert!(send_to(Some("relative/path".as_ref()), "READY=1").is_err());

        let path = std::env::temp_dir().join(format!("deployhook-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        assert!(send_to(Some(path.as_os_str()), "READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_file(&path).unwrap();

        let name = format!("deployhook-notify-{}", std::process::id());
        let abs =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        assert!(send_to(Some(format!("@{name}").as_ref()), "WATCHDOG=1").unwrap());
        let n = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
