//! How a session ends when it does not end well: one error type for every
//! front-end (SOCKS5, HTTP CONNECT), counted and logged by `session::serve`.

use crate::proto::socks5::{self, reply, CodecError};
use std::fmt;
use std::io;

#[derive(Debug)]
pub enum SessionError {
    Timeout(&'static str),
    ClientClosed(&'static str),
    Protocol(&'static str, CodecError),
    Auth(String),
    /// A request we answered with a failure reply (unsupported, out of order, ...).
    Refused(String),
    /// Refused by permissions or the request policy: reply 0x02.
    Denied(String),
    /// Refused by the identity's `limits`: reply 0x02 / HTTP 429.
    Limited(String),
    Connect {
        target: String,
        code: u8,
        reason: String,
    },
    Io(&'static str, io::Error),
    Relay(io::Error),
    Aborted,
}

impl SessionError {
    pub fn is_auth(&self) -> bool {
        matches!(self, SessionError::Auth(_))
    }
    pub fn is_timeout(&self) -> bool {
        matches!(self, SessionError::Timeout(_))
            || matches!(self, SessionError::Connect { code, .. } if *code == reply::TTL_EXPIRED)
            || matches!(self, SessionError::Relay(e) if e.kind() == io::ErrorKind::TimedOut)
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Timeout(what) => write!(f, "timeout {what}"),
            SessionError::ClientClosed(what) => write!(f, "client closed the connection {what}"),
            SessionError::Protocol(what, e) => write!(f, "malformed {what}: {e}"),
            SessionError::Auth(why) => write!(f, "authentication failed: {why}"),
            SessionError::Refused(why) => write!(f, "request refused: {why}"),
            SessionError::Denied(why) => write!(f, "request denied: {why}"),
            SessionError::Limited(why) => write!(f, "refused by limits: {why}"),
            SessionError::Connect {
                target,
                code,
                reason,
            } => write!(
                f,
                "connect to {target} failed: {reason} (reply 0x{code:02x} {})",
                socks5::reply_text(*code)
            ),
            SessionError::Io(what, e) => write!(f, "i/o error {what}: {e}"),
            SessionError::Relay(e) => write!(f, "relay ended: {e}"),
            SessionError::Aborted => write!(f, "cut at the end of the shutdown grace period"),
        }
    }
}
