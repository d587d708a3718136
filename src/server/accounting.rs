//! Per-session accounting (issue 17): what a session learns on its way (who,
//! to where, through what, how much) becomes, when it ends, one access-log
//! record and the optional `proxy_session_end` event; while it relays, it is
//! listed in the listener's live sessions and can be closed by policy.
//!
//! Nothing here waits: the record goes to the access log's bounded queue and
//! the event to the pump with `notify` (both drop and count when full).

use crate::host::access_log::{Outcome, Record};
use crate::policy::identity::{AuthInfo, ConnMeta};
use crate::server::config::Shared;
use crate::server::error::SessionError;
use crate::server::sessions::{Bytes, NewSession};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Why a session cut by `close_sessions` ended (access log `reason`).
pub const CLOSED_BY_POLICY: &str = "closed by policy";

/// What one session learned so far. Boxed by the session: it is only read at the end.
#[derive(Debug)]
pub struct Trace {
    pub start: SystemTime,
    /// The balancer, when `proxy_protocol` named the client (`peer`).
    pub proxy_peer: Option<SocketAddr>,
    /// `socks5` or `http` (set once the first byte says which).
    pub protocol: &'static str,
    pub command: Option<&'static str>,
    pub auth: Option<Arc<AuthInfo>>,
    /// As requested, `host:port`.
    pub destination: Option<String>,
    pub connected: Option<SocketAddr>,
    pub source: Option<SocketAddr>,
    pub egress: Option<String>,
    pub bytes: Arc<Bytes>,
    /// Set when `close_sessions` cut the relay.
    pub closed_by_policy: bool,
}

impl Trace {
    pub fn new(protocol: &'static str) -> Box<Trace> {
        Box::new(Trace {
            start: SystemTime::now(),
            proxy_peer: None,
            protocol,
            command: None,
            auth: None,
            destination: None,
            connected: None,
            source: None,
            egress: None,
            bytes: Arc::default(),
            closed_by_policy: false,
        })
    }

    /// The outbound connection is up: where it went and from where.
    pub fn connected(&mut self, peer: SocketAddr, local: SocketAddr, egress: Option<&str>) {
        self.connected = Some(peer);
        self.source = Some(local);
        self.egress = egress.map(str::to_string);
    }
}

/// The request's name in records, as `proxy_server_request` spells it.
pub fn command_name(c: crate::proto::socks5::Command) -> &'static str {
    use crate::proto::socks5::Command;
    match c {
        Command::Connect => "connect",
        Command::Bind => "bind",
        Command::UdpAssociate => "udp_associate",
    }
}

/// Runs a relay listed among the listener's live sessions; `close_sessions`
/// ends it at once (an error the record reports as `cut`). `relay` builds the
/// relay future here, not in the caller: a future passed by value would be
/// stored twice in the session's state (issue 8 keeps that state small).
pub async fn relay_listed<F, Fut>(
    shared: &Shared,
    meta: &ConnMeta,
    trace: &mut Trace,
    relay: F,
) -> io::Result<()>
where
    F: FnOnce(Arc<Bytes>) -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    let auth = trace.auth.as_deref();
    let reg = shared.sessions.register(
        NewSession {
            peer: meta.peer.0,
            protocol: trace.protocol,
            identities: auth
                .map(|a| a.identities.iter().map(|i| i.identity.clone()).collect())
                .unwrap_or_default(),
            groups: auth.map(|a| a.groups.clone()).unwrap_or_default(),
            destination: trace.destination.clone().unwrap_or_default(),
            started: trace.start,
        },
        trace.bytes.clone(),
    );
    // Boxed: with the registration beside it, the relay state would grow every
    // session's task past its budget (issue 8); one allocation per relay instead.
    let relay = Box::pin(relay(trace.bytes.clone()));
    tokio::select! {
        r = relay => r,
        _ = reg.live.cancel.cancelled() => {
            trace.closed_by_policy = true;
            Err(io::Error::other(CLOSED_BY_POLICY))
        }
    }
}

/// The session ended: access log record and `proxy_session_end`, when wanted.
pub fn finish(shared: &Shared, peer: SocketAddr, trace: &Trace, result: &Result<(), SessionError>) {
    let log = shared.config.access_log.as_ref();
    let event = crate::policy::events::registered(crate::policy::events::EVENT_SESSION_END);
    if log.is_none() && !event {
        return;
    }
    let (outcome, reason) = match result {
        Ok(()) => (Outcome::Ok, None),
        Err(SessionError::Relay(_)) if trace.closed_by_policy => {
            (Outcome::Cut, Some(CLOSED_BY_POLICY.to_string()))
        }
        Err(e @ SessionError::Aborted) => (Outcome::Cut, Some(e.to_string())),
        Err(e @ (SessionError::Denied(_) | SessionError::Auth(_))) => {
            (Outcome::Denied, Some(e.to_string()))
        }
        Err(e) => (Outcome::Failed, Some(e.to_string())),
    };
    let mut r = Record::new(trace.start, shared.local_addr, trace.protocol, peer);
    r.end = SystemTime::now();
    r.command = trace.command;
    r.proxy_peer = trace.proxy_peer;
    if let Some(a) = &trace.auth {
        if let Some(first) = a.identities.first() {
            r.identity = Some(first.identity.clone());
            r.context = Some(first.context.clone());
        }
        r.groups = a.groups.clone();
        // The limit key only where limits exist: it names a budget, not a user.
        if crate::policy::limits::applies(a.own_limits(), shared.config.limits.as_ref()) {
            r.limit_key = a.limit_key().map(str::to_string);
        }
    }
    r.destination = trace.destination.clone();
    r.connected = trace.connected;
    r.source = trace.source;
    r.egress = trace.egress.clone();
    r.bytes_up = trace.bytes.up.load(std::sync::atomic::Ordering::Relaxed);
    r.bytes_down = trace.bytes.down.load(std::sync::atomic::Ordering::Relaxed);
    r.outcome = outcome;
    r.reason = reason;
    emit(shared, r, event);
}

/// A connection refused at accept (`max_connections`, `max_connections_per_ip`).
pub fn rejected(shared: &Shared, peer: SocketAddr, reason: String) {
    finish_as(
        shared,
        peer,
        None,
        SystemTime::now(),
        Outcome::Denied,
        reason,
    )
}

/// As [`rejected`], for a client named by a balancer's PROXY header.
pub fn rejected_behind(shared: &Shared, peer: SocketAddr, proxy_peer: SocketAddr, reason: String) {
    let now = SystemTime::now();
    finish_as(shared, peer, Some(proxy_peer), now, Outcome::Denied, reason)
}

/// A session that ended before it had a trace (TLS handshake failure).
pub fn finish_early(shared: &Shared, peer: SocketAddr, start: SystemTime, reason: String) {
    finish_as(shared, peer, None, start, Outcome::Failed, reason)
}

fn finish_as(
    shared: &Shared,
    peer: SocketAddr,
    proxy_peer: Option<SocketAddr>,
    start: SystemTime,
    outcome: Outcome,
    reason: String,
) {
    let event = crate::policy::events::registered(crate::policy::events::EVENT_SESSION_END);
    if shared.config.access_log.is_none() && !event {
        return;
    }
    // Before the first byte nobody knows; name what the listener speaks first.
    let protocol = if shared.config.protocols.socks5 {
        "socks5"
    } else {
        "http"
    };
    let mut r = Record::new(start, shared.local_addr, protocol, peer);
    r.end = SystemTime::now();
    r.proxy_peer = proxy_peer;
    r.outcome = outcome;
    r.reason = Some(reason);
    emit(shared, r, event);
}

fn emit(shared: &Shared, r: Record, event: bool) {
    if event {
        shared
            .pump
            .notify(crate::policy::events::Event::SessionEnd {
                summary: Box::new(r.clone()),
            });
    }
    if let Some(log) = &shared.config.access_log {
        log.log(r);
    }
}
