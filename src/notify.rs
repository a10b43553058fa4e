//! systemd's notification protocol without a library: one datagram per state change to the
//! socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`).
//! Outside systemd the variable is unset and every call does nothing.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub const ENV_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends one notification (`READY=1`, `WATCHDOG=1`, …) if systemd asked for them.
pub fn send(state: &str) -> io::Result<bool> {
    send_to(std::env::var_os(ENV_SOCKET).as_deref(), state)
}

/// Sends `state` to `target` (`$NOTIFY_SOCKET`'s value); `Ok(false)` when there is none.
fn send_to(target: Option<&std::ffi::OsStr>, state: &str) -> io::Result<bool> {
    let Some(target) = target else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None if target.starts_with('/') => SocketAddr::from_pathname(&target)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsupported {ENV_SOCKET} `{target}`"),
            ))
        }
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

fn send_logged(state: &str) {
    if let Err(e) = send(state) {
        log::warn!("cannot notify systemd ({state}): {e}");
    }
}

pub fn ready() {
    send_logged("READY=1\nSTATUS=accepting triggers");
}

pub fn stopping() {
    send_logged("STOPPING=1\nSTATUS=stopping builds");
}

pub fn reloading() {
    let now = monotonic_usec();
    send_logged(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}

pub fn watchdog() {
    send_logged("WATCHDOG=1");
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if it is meant for this process.
/// The variables are removed so that no child sees them; call before other threads start.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?.parse::<u64>().ok();
    let pid_ok = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    match usec {
        Some(u) if u > 0 && pid_ok => Some(std::time::Duration::from_micros(u)),
        _ => None,
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd expects with RELOADING=1.
fn monotonic_usec() -> u64 {
    crate::sys::monotonic_usec()
}

#[cfg(test)]
mod tests {
    use super::*;

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
