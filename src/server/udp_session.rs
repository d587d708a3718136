//! UDP ASSOCIATE in a SOCKS5 session: the request's policy, the relay socket,
//! the reply, then the association (server/udp/) for as long as the control
//! connection stays open.

use crate::egress::EgressSource;
use crate::host::udp::bind_udp;
use crate::policy::events::RequestInfo;
use crate::policy::identity::{AuthInfo, ConnMeta};
use crate::policy::limits;
use crate::policy::permissions::{self, Permissions};
use crate::policy::request::Refusal;
use crate::proto::socks5::{self, reply, Reply, TargetAddr};
use crate::server::accounting::Trace;
use crate::server::config::Shared;
use crate::server::error::SessionError;
use crate::server::udp::{Ended, Outbound, UdpAssociation, UdpPolicy};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Listener rules, then the identity's: what `plan_connect` applies, per datagram.
struct Rules {
    listener: Arc<Permissions>,
    user: Option<Arc<Permissions>>,
}

impl Rules {
    fn layers(&self) -> Vec<&Permissions> {
        let mut v = vec![&*self.listener];
        if let Some(u) = &self.user {
            v.push(u);
        }
        v
    }
}

impl UdpPolicy for Rules {
    fn denies_name(&self, host: &str, port: u16) -> Option<String> {
        permissions::denies_name(&self.layers(), host, port)
    }
    fn check(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Result<(), String> {
        permissions::check(&self.layers(), host, port, addrs)
    }
}

/// What `proxy_server_request` decided for an association.
struct UdpPlan {
    source: Option<IpAddr>,
    egress: Option<Arc<EgressSource>>,
}

/// `proxy_server_request` once per association (`command = 'udp_associate'`,
/// host/port = the client's DST.ADDR/DST.PORT): it may refuse, pick a source
/// address or an egress source; a `destination` has no meaning here.
async fn plan_udp(
    client: &TargetAddr,
    auth: &Arc<AuthInfo>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<UdpPlan, Refusal> {
    let mut plan = UdpPlan {
        source: None,
        egress: shared.config.egress.clone(),
    };
    let info = RequestInfo {
        command: "udp_associate",
        host: client.host(),
        port: client.port(),
    };
    let Some(over) = crate::policy::request::ask(info, auth, meta, &shared.request_ctx()).await?
    else {
        return Ok(plan);
    };
    if over.destination.is_some() {
        return Err(Refusal::denied(
            "proxy_server_request returned a destination for a udp_associate request (each datagram names its own)",
        ));
    }
    if let Some(e) = over.egress {
        plan.egress = Some(e);
    }
    if let Some(ip) = over.source_address {
        permissions::check_source(shared.config.allowed_source_addresses.as_deref(), ip, 0)
            .map_err(Refusal::denied)?;
        plan.source = Some(ip);
    }
    Ok(plan)
}

async fn send_reply<S: AsyncWrite + Unpin>(
    io: &mut S,
    r: &Reply,
    t: Duration,
) -> Result<(), SessionError> {
    let mut out = Vec::with_capacity(22);
    socks5::encode_reply(r, &mut out);
    let write = async {
        io.write_all(&out).await?;
        io.flush().await
    };
    match tokio::time::timeout(t, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SessionError::Io("sending reply", e)),
        Err(_) => Err(SessionError::Timeout("sending reply")),
    }
}

/// Reads and discards until the peer closes: RFC 1928 gives the control
/// connection no further use, and its end is the association's end.
async fn closed<S: AsyncRead + Unpin>(io: &mut S) {
    let mut buf = [0u8; 256];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// What an association is listed as among live sessions and in the access log.
pub const PROTOCOL: &str = "socks5-udp";
/// Its destination there: each datagram names its own.
pub const ANY_DESTINATION: &str = "*";

/// UDP ASSOCIATE on an authenticated session; returns when the association ends.
pub async fn associate<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    client: &TargetAddr,
    auth: &Arc<AuthInfo>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
    trace: &mut Trace,
) -> Result<(), SessionError> {
    let t = shared.config.timeout;
    let Some(cfg) = &shared.config.udp else {
        send_reply(&mut io, &Reply::failure(reply::COMMAND_NOT_SUPPORTED), t).await?;
        return Err(SessionError::Refused(
            "UDP ASSOCIATE: not enabled on this listener (udp = true)".into(),
        ));
    };
    let Some(_slot) = shared.udp.claim(cfg.max_associations) else {
        send_reply(&mut io, &Reply::failure(reply::GENERAL_FAILURE), t).await?;
        return Err(SessionError::Refused(format!(
            "UDP ASSOCIATE: max_udp_associations ({}) reached",
            cfg.max_associations.unwrap_or(0)
        )));
    };
    let plan = match plan_udp(client, auth, meta, shared).await {
        Ok(p) => p,
        Err(r) => {
            send_reply(&mut io, &Reply::failure(r.code), t).await?;
            return Err(if r.is_denied() {
                SessionError::Denied(r.reason)
            } else {
                SessionError::Refused(r.reason)
            });
        }
    };
    // Limits as for CONNECT: one session (its lease held while the association
    // lives), one connect for connect_rate, refused with 0x02 before any socket.
    let limits = if limits::applies(auth.own_limits(), shared.config.limits.as_ref()) {
        match limits::admit_session(
            auth.own_limits(),
            auth.limit_key(),
            shared.config.limits.as_ref(),
            meta.peer.0.ip(),
        )
        .await
        {
            Ok(l) => l.map(Arc::from),
            Err((key, r)) => {
                send_reply(&mut io, &Reply::failure(reply::NOT_ALLOWED), t).await?;
                return Err(SessionError::Limited(r.describe(&key)));
            }
        }
    } else {
        None
    };
    // On the address the client reached us at, never the wildcard: the reply
    // must name an address the client can send to.
    let local = permissions::canonical(meta.local.0.ip());
    let socket = match bind_udp(SocketAddr::new(local, 0)) {
        Ok(s) => s,
        Err(e) => {
            send_reply(&mut io, &Reply::failure(reply::GENERAL_FAILURE), t).await?;
            return Err(SessionError::Io("opening the UDP relay socket", e));
        }
    };
    let bound = socket
        .local_addr()
        .map_err(|e| SessionError::Io("reading the UDP relay address", e))?;
    let mut upstream_control = None;
    let outbound = match &plan.egress {
        Some(e) => {
            if plan.source.is_some() {
                send_reply(&mut io, &Reply::failure(reply::NOT_ALLOWED), t).await?;
                return Err(SessionError::Denied(format!(
                    "source address selection is not available through egress source '{}'",
                    e.name
                )));
            }
            match &e.proxy {
                None => source_outbound(e.source_address),
                Some(_) => {
                    match Box::pin(e.udp_associate(e.connect_timeout, local.is_ipv4())).await {
                        Ok(up) => {
                            upstream_control = up.control;
                            Outbound::Upstream {
                                relay: up.relay.expect("a proxy association has a relay"),
                                socket: up.socket,
                            }
                        }
                        Err(err) => {
                            send_reply(&mut io, &Reply::failure(err.code), t).await?;
                            return Err(SessionError::Connect {
                                target: "UDP ASSOCIATE".into(),
                                code: err.code,
                                reason: format!("egress source '{}': {err}", e.name),
                            });
                        }
                    }
                }
            }
        }
        None => source_outbound(plan.source),
    };
    let advertised = SocketAddr::new(cfg.advertise_address.unwrap_or(bound.ip()), bound.port());
    send_reply(&mut io, &Reply::success(advertised), t).await?;
    let label = format!(
        "udp association of {} ({}) on {bound}",
        meta.peer,
        auth.summary()
    );
    tracing::debug!("{label}: started, client said {client}");
    trace.protocol = PROTOCOL;
    trace.destination = Some(ANY_DESTINATION.to_string());
    trace.egress = plan.egress.as_ref().map(|e| e.name.clone());
    let policy = Arc::new(Rules {
        listener: shared.config.permissions.clone(),
        user: auth.permissions.clone(),
    });
    // The relay's own outcome, which `relay_listed` (io::Result) cannot carry.
    let mut outcome: Option<SessionError> = None;
    let relay = |bytes| {
        let assoc = UdpAssociation {
            label: label.clone(),
            client_ip: meta.peer.0.ip(),
            client_port: match client.port() {
                0 => None,
                p => Some(p),
            },
            socket,
            outbound,
            policy,
            filter: cfg.filter,
            idle_timeout: cfg.idle_timeout,
            resolve_timeout: t,
            counters: shared.udp.clone(),
            cancel: shared.abort.child_token(),
            limits,
            bytes,
        };
        let outcome = &mut outcome;
        let label = &label;
        async move {
            let upstream_closed = async {
                match &mut upstream_control {
                    Some(c) => closed(c).await,
                    None => std::future::pending().await,
                }
            };
            *outcome = tokio::select! {
                ended = assoc.run() => match ended {
                    Ended::Idle | Ended::Cancelled => {
                        tracing::debug!("{label}: ended ({ended:?})");
                        None
                    }
                    // As a CONNECT relay cut by its quota: the session warns why.
                    Ended::Cut(c) => Some(SessionError::Relay(std::io::Error::other(c))),
                    Ended::Error(e) => Some(SessionError::Io("relaying datagrams", e)),
                },
                _ = closed(&mut io) => {
                    tracing::debug!("{label}: control connection closed");
                    None
                }
                _ = upstream_closed => Some(SessionError::Refused(format!(
                    "{label}: the upstream proxy closed its control connection"
                ))),
            };
            Ok(())
        }
    };
    crate::server::accounting::relay_listed(shared, meta, trace, relay)
        .await
        .map_err(SessionError::Relay)?;
    outcome.map_or(Ok(()), Err)
}

/// Direct: from `source` when given (and then only to its address family).
fn source_outbound(source: Option<IpAddr>) -> Outbound {
    Outbound::Direct { source }
}
