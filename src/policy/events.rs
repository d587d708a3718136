//! The questions policy asks the host's Lua, and this process's pump for them.
//!
//! A task builds an [`Event`] carrying a oneshot sender and awaits the answer
//! through [`pump`]; the host thread answers it in `lua/dispatch.rs`.

use crate::egress::EgressSource;
use crate::host::pump::{PendingEvent, Pump};
use crate::host::runtime::PerProcess;
use crate::policy::identity::{AuthInfo, ConnMeta};
use crate::proto::socks5::TargetAddr;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Why an authentication was refused; never contains the password.
pub type Verdict = Result<AuthInfo, String>;

/// `http_server_validate_auth_basic`'s answer: Ok(Some(who)) for `true` or an
/// AuthInfo table, Ok(None) for `false`, or Err(why) for an error or any other
/// value (500, never a pass).
pub type BasicVerdict = Result<Option<AuthInfo>, String>;

pub enum Event {
    /// `proxy_server_auth_rfc1929(username, password, conn_meta)`
    AuthRfc1929 {
        username: Vec<u8>,
        password: Vec<u8>,
        meta: Arc<ConnMeta>,
        reply: oneshot::Sender<Verdict>,
    },
    /// `http_server_validate_auth_basic(user, password, conn_meta)`: HTTP CONNECT's
    /// `Proxy-Authorization` and the status listener's `Authorization`.
    HttpAuthBasic {
        user: Vec<u8>,
        /// `None` when the credentials had no colon (user only).
        password: Option<Vec<u8>>,
        meta: Arc<ConnMeta>,
        reply: oneshot::Sender<BasicVerdict>,
    },
    /// `proxy_server_request(request, auth_info, conn_meta)`
    Request {
        request: RequestInfo,
        auth: Arc<AuthInfo>,
        meta: Arc<ConnMeta>,
        reply: oneshot::Sender<RequestVerdict>,
    },
    /// `proxy_session_end(summary)`: a notification, nobody waits for an answer.
    SessionEnd {
        summary: Box<crate::host::access_log::Record>,
    },
}

impl PendingEvent for Event {
    fn name(&self) -> &'static str {
        match self {
            Event::AuthRfc1929 { .. } => EVENT_AUTH_RFC1929,
            Event::HttpAuthBasic { .. } => EVENT_HTTP_AUTH_BASIC,
            Event::Request { .. } => EVENT_REQUEST,
            Event::SessionEnd { .. } => EVENT_SESSION_END,
        }
    }

    fn is_abandoned(&self) -> bool {
        match self {
            Event::AuthRfc1929 { reply, .. } => reply.is_closed(),
            Event::HttpAuthBasic { reply, .. } => reply.is_closed(),
            Event::Request { reply, .. } => reply.is_closed(),
            Event::SessionEnd { .. } => false,
        }
    }
}

impl Event {
    pub fn name(&self) -> &'static str {
        PendingEvent::name(self)
    }

    pub fn is_abandoned(&self) -> bool {
        PendingEvent::is_abandoned(self)
    }
}

/// `request` as the Lua handler sees it.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub command: &'static str,
    pub host: String,
    pub port: u16,
}

/// What a handler's table may change. All `None` = go ahead as asked.
#[derive(Debug, Default)]
pub struct Overrides {
    pub destination: Option<TargetAddr>,
    pub source_address: Option<IpAddr>,
    pub egress: Option<Arc<EgressSource>>,
    /// `send_proxy_protocol = 'v1' | 'v2' | false`: `Some(None)` clears it.
    pub send_proxy: Option<Option<crate::proto::proxy_header::SendProxy>>,
}

/// `Err` = refused, with the reason for the log.
pub type RequestVerdict = Result<Overrides, String>;

/// The pump that carries [`Event`]s to the host.
pub type EventPump = Pump<Event>;

static PUMP: PerProcess<Arc<EventPump>> = PerProcess::new();

/// This process's event pump (a forked child gets its own).
pub fn pump() -> &'static Arc<EventPump> {
    PUMP.get_or_init(|| Arc::new(Pump::new().expect("kumoproxy: cannot create eventfd")))
}

pub const EVENT_AUTH_RFC1929: &str = "proxy_server_auth_rfc1929";
pub const EVENT_HTTP_AUTH_BASIC: &str = "http_server_validate_auth_basic";
pub const EVENT_REQUEST: &str = "proxy_server_request";
pub const EVENT_SESSION_END: &str = "proxy_session_end";
/// SIGHUP during `run()`; called by `run()` itself, never queued.
pub const EVENT_RELOAD: &str = "reload";

/// Every event name `kumoproxy.on` accepts, with its bit in [`registered`].
pub const EVENTS: &[&str] = &[
    EVENT_AUTH_RFC1929,
    EVENT_HTTP_AUTH_BASIC,
    EVENT_REQUEST,
    EVENT_SESSION_END,
    EVENT_RELOAD,
];

/// Which events have a Lua handler. Process-global and lock-free, so it stays
/// valid across fork and runtime tasks can read it without asking the host.
static REGISTERED: AtomicU64 = AtomicU64::new(0);

pub fn event_bit(name: &str) -> Option<u64> {
    EVENTS.iter().position(|e| *e == name).map(|i| 1 << i)
}

pub fn set_registered(name: &str, on: bool) {
    if let Some(bit) = event_bit(name) {
        if on {
            REGISTERED.fetch_or(bit, Ordering::AcqRel);
        } else {
            REGISTERED.fetch_and(!bit, Ordering::AcqRel);
        }
    }
}

pub fn registered(name: &str) -> bool {
    event_bit(name).is_some_and(|bit| REGISTERED.load(Ordering::Acquire) & bit != 0)
}
