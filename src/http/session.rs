//! One connection's request cycle as a state machine over bytes, with no socket: bytes go in
//! with [`Session::feed`], and [`Session::step`] says what to do (wait, send `100 Continue`,
//! serve a request, or refuse). [`super::event_loop`] drives it with a socket; tests and the
//! fuzz target drive it with byte strings, so both see exactly the same framing.

use super::body::{BodyPolicy, BodyReader};
use super::limits::Limits;
use super::request::{parse_head, Framing, Request};
use super::ApiError;

/// A body of at most [`Limits::max_body_bytes`], none of it kept: what every request gets
/// unless its listener says otherwise.
pub fn default_policy(_: &Request, limits: &Limits) -> BodyPolicy {
    BodyPolicy {
        max: limits.max_body_bytes,
        keep: 0,
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the connection should do next.
#[derive(Debug)]
pub enum Step {
    /// Nothing to do until more bytes arrive.
    Wait,
    /// Write [`CONTINUE`]: the client waits for it before it sends the body.
    Continue,
    /// A whole request has arrived (its body read and dropped): serve it, then call
    /// [`Session::answered`] before the next one.
    Serve(Request),
    /// The request is bad: answer this, then close.
    Refuse(ApiError),
}

#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) a head.
    Head,
    /// Reading the body of `request`.
    Body {
        request: Box<Request>,
        body: BodyReader,
        continue_owed: bool,
    },
    /// A request is being served: nothing more is parsed until it is answered.
    Serving,
    /// Refused: nothing more is parsed.
    Ended,
}

pub struct Session {
    input: Vec<u8>,
    state: State,
    limits: Limits,
}

/// How much body a request may carry and how much of it its handler reads, decided from its
/// head (a git host's push event to a live hook carries a larger body than a plain trigger).
pub type Policy<'a> = &'a dyn Fn(&Request, &Limits) -> BodyPolicy;

impl Session {
    pub fn new(limits: Limits) -> Session {
        Session {
            input: Vec::new(),
            state: State::Head,
            limits,
        }
    }

    /// Whether part of a request has arrived (its deadline applies, not the idle one).
    pub fn in_request(&self) -> bool {
        match self.state {
            State::Head => !self.input.is_empty(),
            State::Body { .. } => true,
            State::Serving | State::Ended => false,
        }
    }

    /// Whether it will take more bytes: not while serving (a pipelining client waits in its
    /// socket buffer, so one connection never holds more than one request) and not when the
    /// buffer is full.
    pub fn wants_input(&self) -> bool {
        match self.state {
            State::Serving | State::Ended => false,
            _ => self.input.len() < self.limits.max_head_bytes + 1,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The request being served has been answered: parse the next one.
    pub fn answered(&mut self) {
        if let State::Serving = self.state {
            self.state = State::Head;
        }
    }

    pub fn step(&mut self, policy: Policy) -> Step {
        match self.advance(policy) {
            Ok(step) => step,
            Err(err) => {
                self.state = State::Ended;
                self.input.clear();
                Step::Refuse(err)
            }
        }
    }

    fn advance(&mut self, policy: Policy) -> Result<Step, ApiError> {
        if let State::Head = self.state {
            // Parse only once a blank line has come: a head trickled in byte by byte is then
            // parsed once, not once per read.
            if !head_may_be_complete(&self.input) {
                if self.input.len() > self.limits.max_head_bytes {
                    return Err(ApiError::HeadTooLarge);
                }
                return Ok(Step::Wait);
            }
            let Some((head, used)) = parse_head(&self.input, &self.limits)? else {
                return Ok(Step::Wait);
            };
            self.input.drain(..used);
            let policy = policy(&head.request, &self.limits);
            if let Framing::Length(n) = head.framing {
                if n > policy.max {
                    // Refused from the head alone: the body is never waited for.
                    return Err(ApiError::BodyTooLarge);
                }
            }
            let has_body = head.framing != Framing::None;
            self.state = State::Body {
                request: Box::new(head.request),
                body: BodyReader::new(head.framing, policy),
                continue_owed: head.expect_continue && has_body,
            };
        }
        let State::Body {
            body,
            continue_owed,
            ..
        } = &mut self.state
        else {
            return Ok(Step::Wait);
        };
        let used = body.consume(&self.input)?;
        self.input.drain(..used);
        if !body.is_done() {
            if std::mem::take(continue_owed) && self.input.is_empty() {
                return Ok(Step::Continue);
            }
            return Ok(Step::Wait);
        }
        let State::Body { request, body, .. } = std::mem::replace(&mut self.state, State::Serving)
        else {
            unreachable!("the state was Body just above");
        };
        let mut request = *request;
        request.body = body.into_kept();
        Ok(Step::Serve(request))
    }
}

/// Whether `input` holds an empty line (`\r\n\r\n` or `\n\n`, blank lines before the request
/// line included), without which no head can be complete.
fn head_may_be_complete(input: &[u8]) -> bool {
    input.windows(2).any(|w| w == b"\n\n") || input.windows(3).any(|w| w == b"\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(bytes: &[u8]) -> Vec<String> {
        let mut s = Session::new(Limits::DEFAULT);
        s.feed(bytes);
        let mut out = Vec::new();
        loop {
            match s.step(&default_policy) {
                Step::Wait => return out,
                Step::Continue => out.push("100".into()),
                Step::Serve(r) => {
                    out.push(format!("{} {}", r.method, r.path));
                    s.answered();
                }
                Step::Refuse(e) => {
                    out.push(format!("refuse {e:?}"));
                    return out;
                }
            }
        }
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let got = steps(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(got, ["POST /a", "GET /b"]);
    }

    #[test]
    fn continue_is_owed_only_while_the_body_has_not_come() {
        let head =
            b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(steps(head), ["100"]);
        let mut whole = head.to_vec();
        whole.extend_from_slice(b"abc");
        assert_eq!(steps(&whole), ["POST /a"]);
    }

    #[test]
    fn a_refusal_ends_the_session() {
        let got = steps(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("refuse BadRequest"), "{got:?}");
    }
}
