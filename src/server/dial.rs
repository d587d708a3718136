//! Connecting a checked plan: through its egress source, or directly from the
//! BIND-chosen socket or the policy's source address. Shared by every front-end.

use crate::egress::EgressStream;
use crate::host::net::within_else;
use crate::policy::request::Plan;
use crate::proto::socks5::{self, reply, TargetAddr};
use crate::server::config::Shared;
use crate::server::error::SessionError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// Tries each checked address in turn, all within `t`, from the BIND-chosen
/// socket or `source` when given.
pub(crate) async fn connect(
    target: &TargetAddr,
    addrs: &[SocketAddr],
    mut bound: Option<TcpSocket>,
    source: Option<IpAddr>,
    t: Duration,
    shared: &Shared,
) -> Result<(TcpStream, SocketAddr), SessionError> {
    let fail = |code: u8, reason: String| SessionError::Connect {
        target: target.to_string(),
        code,
        reason,
    };
    if cfg!(fuzzing) {
        // Fuzz input names arbitrary destinations: never resolve or dial them.
        let _ = bound.take();
        return Err(fail(
            reply::CONNECTION_REFUSED,
            "fuzzing: no outbound connections".into(),
        ));
    }
    // Built only on expiry: formatting it up front cost every session.
    let timed_out = || fail(reply::TTL_EXPIRED, format!("no connection within {t:?}"));
    within_else(t, timed_out, async {
        let source = match &bound {
            Some(s) => Some(
                s.local_addr()
                    .map_err(|e| fail(reply::GENERAL_FAILURE, e.to_string()))?,
            ),
            None => source.map(|ip| SocketAddr::new(ip, 0)),
        };
        let mut addrs = addrs.to_vec();
        if let Some(src) = source {
            addrs.retain(|a| a.is_ipv4() == src.is_ipv4());
            if addrs.is_empty() {
                return Err(fail(
                    reply::ADDRESS_TYPE_NOT_SUPPORTED,
                    format!("no address of the source address family ({src})"),
                ));
            }
        }
        if addrs.is_empty() {
            return Err(fail(
                reply::HOST_UNREACHABLE,
                "name has no addresses".into(),
            ));
        }
        let mut last = None;
        for addr in addrs {
            let sock = match bound.take() {
                Some(s) => s,
                None => match new_socket(addr, source) {
                    Ok(s) => s,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                },
            };
            match sock.connect(addr).await {
                Ok(stream) => {
                    crate::host::net::tune_stream(
                        &stream,
                        &shared.config.keepalive,
                        "remote socket",
                    );
                    return Ok((stream, addr));
                }
                Err(e) => {
                    tracing::debug!("connect to {addr} failed: {e}");
                    last = Some(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| io::Error::other("no address to try"));
        Err(fail(socks5::reply_code_for_io_error(&e), e.to_string()))
    })
    .await
}

fn new_socket(addr: SocketAddr, source: Option<SocketAddr>) -> io::Result<TcpSocket> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mut src) = source {
        src.set_port(0);
        sock.bind(src)?;
    }
    Ok(sock)
}

/// A connected destination, the address to report as bound, and both ends of
/// the outbound TCP connection (for the access log), known without asking the
/// kernel again.
pub(crate) struct Dialed {
    pub stream: EgressStream,
    pub bound: SocketAddr,
    /// Our end of the outbound TCP connection.
    pub local: SocketAddr,
    /// Its peer: the destination, or the upstream proxy.
    pub peer: SocketAddr,
}

/// Connects a checked plan (see `policy::plan_connect`) for any front-end:
/// through its egress source (an upstream proxy resolves the name; a direct
/// source dials the checked addresses from its own address), else directly,
/// from the BIND-chosen socket or the policy's source address. Errors are
/// `SessionError::Connect` carrying the reply code.
pub(crate) async fn dial(
    plan: &Plan,
    bound: Option<TcpSocket>,
    shared: &Shared,
) -> Result<Dialed, SessionError> {
    let (mut dialed, destination) = dial_only(plan, bound, shared).await?;
    if let Some(send) = plan.send_proxy {
        crate::server::proxy_inbound::send_header(
            &mut dialed.stream,
            send,
            plan.client,
            destination,
            shared.config.timeout,
        )
        .await
        .map_err(|reason| SessionError::Connect {
            target: plan.target.to_string(),
            code: reply::GENERAL_FAILURE,
            reason,
        })?;
    }
    Ok(dialed)
}

/// `dial` without the PROXY header; also returns the destination address
/// the header names (`None` when an upstream proxy resolved a name).
async fn dial_only(
    plan: &Plan,
    mut bound: Option<TcpSocket>,
    shared: &Shared,
) -> Result<(Dialed, Option<SocketAddr>), SessionError> {
    let mut timeout = shared.config.timeout;
    let mut source = plan.source;
    if let Some(egress) = &plan.egress {
        if bound.is_some() || plan.source.is_some() {
            // The egress source decides where connections leave from; a chosen
            // source cannot be honoured, and ignoring it would send from the wrong IP.
            return Err(SessionError::Connect {
                target: plan.target.to_string(),
                code: reply::NOT_ALLOWED,
                reason: format!(
                    "source address selection (BIND or source_address) is not available through egress source '{}'",
                    egress.name
                ),
            });
        }
        if egress.proxy.is_some() || egress.ha_proxy.is_some() {
            // The proxy is asked for the addresses the policy checked, in
            // resolver order; the name itself only with socks5_proxy_remote_dns
            // (then `addrs` is empty). HAProxy gets the checked address of its
            // source's family.
            let targets: Vec<TargetAddr> = if egress.ha_proxy.is_some() {
                vec![checked_target(egress, plan)]
            } else if plan.addrs.is_empty() {
                vec![plan.target.clone()]
            } else {
                plan.addrs.iter().map(|a| TargetAddr::Ip(*a)).collect()
            };
            // Boxed: upstream connects (TLS, a SOCKS5 handshake) are large
            // futures that would otherwise size every session's task.
            let result = Box::pin(connect_upstream(egress, &targets)).await;
            let (up, target) = result.map_err(|e| SessionError::Connect {
                target: plan.target.to_string(),
                code: e.as_ref().map_or(reply::GENERAL_FAILURE, |e| e.code),
                reason: match e {
                    Some(e) => format!("egress source '{}': {e}", egress.name),
                    None => format!("egress source '{}': no address to try", egress.name),
                },
            })?;
            let bound = match &up.proxy_bound {
                Some(TargetAddr::Ip(a)) => *a,
                _ => up.local,
            };
            let destination = match target {
                TargetAddr::Ip(a) => Some(a),
                TargetAddr::Domain(..) => None,
            };
            return Ok((
                Dialed {
                    stream: up.stream,
                    bound,
                    local: up.local,
                    peer: up.peer,
                },
                destination,
            ));
        }
        source = egress.source_address;
        timeout = egress.connect_timeout;
    }
    if source.is_some() {
        // The policy's source address replaces a BIND-chosen one.
        bound = None;
    }
    let (remote, peer) = connect(&plan.target, &plan.addrs, bound, source, timeout, shared).await?;
    let bound = remote
        .local_addr()
        .map_err(|e| SessionError::Io("reading bound address", e))?;
    Ok((
        Dialed {
            stream: EgressStream::Plain(remote),
            bound,
            local: bound,
            peer,
        },
        Some(peer),
    ))
}

/// The destination to hand `egress.connect` for a checked plan: through
/// HAProxy, the first checked address of the source's family (so a name is
/// not resolved again, possibly elsewhere); otherwise the plan's target.
/// Tries `targets` through `egress` in turn; the first connection, with the
/// target it reached, or the last error (`None`: nothing to try).
async fn connect_upstream(
    egress: &crate::egress::EgressSource,
    targets: &[TargetAddr],
) -> Result<(crate::egress::Connected, TargetAddr), Option<crate::egress::EgressError>> {
    let mut last = None;
    for t in targets {
        match egress.connect(t, egress.connect_timeout).await {
            Ok(c) => return Ok((c, t.clone())),
            Err(e) => last = Some(e),
        }
    }
    Err(last)
}

fn checked_target(egress: &crate::egress::EgressSource, plan: &Plan) -> TargetAddr {
    if let Some(ha) = &egress.ha_proxy {
        let v4 = ha.source_address.is_ipv4();
        if let Some(a) = plan.addrs.iter().find(|a| a.is_ipv4() == v4) {
            return TargetAddr::Ip(*a);
        }
    }
    plan.target.clone()
}
