//! The limits on untrusted input of one listener, each a named setting with its default, and
//! each enforced in one place: head and body sizes by [`super::session`], times and the
//! connection count by [`super::event_loop`].

use std::time::Duration;

/// Limits of one listener. Defaults are [`Limits::DEFAULT`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line plus headers, in bytes (`431` past it).
    pub max_head_bytes: usize,
    /// Number of header lines (`431` past it).
    pub max_headers: usize,
    /// Request body, read and thrown away (`413` past it).
    pub max_body_bytes: u64,
    /// Time for a whole request (head and body) to arrive once its first byte did (`408`).
    pub request_timeout: Duration,
    /// Time an open connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time a response write may take.
    pub write_timeout: Duration,
    /// Open connections at once. When full, the connection that has sent the least is shed
    /// to make room; only when none can be shed is a new one answered `503`.
    pub max_connections: usize,
    /// A connection this young is never shed: its client has not had time to send a request.
    pub shed_grace: Duration,
    /// Log streams (`?follow=1`) at once, each with a thread of its own (`503` past it).
    pub max_streams: usize,
    /// After a refusal (a `413`, say) the rest of the request is read and dropped for at most
    /// this long before the socket closes, so that the client reads the answer instead of a
    /// reset.
    pub linger_time: Duration,
    /// ... and at most this many bytes.
    pub linger_bytes: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_head_bytes: 16 * 1024,
        max_headers: 64,
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(15),
        write_timeout: Duration::from_secs(15),
        max_connections: 10_000,
        shed_grace: Duration::from_secs(1),
        max_streams: 64,
        linger_time: Duration::from_secs(5),
        linger_bytes: 32 * 1024 * 1024,
    };
}
