//! What an authenticated client may do with a request, for every front-end:
//! listener and user permissions (on the name and on the resolved addresses),
//! `allowed_source_addresses`, then the optional Lua `proxy_server_request`
//! event, which may refuse, rewrite the destination, pick a source address or
//! an egress source. The event is only asked when a handler is registered.

use crate::egress::EgressSource;
use crate::host::net::within;
use crate::policy::events::{Event, Overrides, RequestInfo, EVENT_REQUEST};
use crate::policy::identity::{AuthInfo, ConnMeta};
use crate::policy::permissions::{self, Permissions};
use crate::proto::proxy_header::SendProxy;
use crate::proto::socks5::{reply, TargetAddr};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the request policy needs of the listener it runs for.
pub struct RequestContext<'a> {
    /// The listener's destination rules (with the private-destination denials
    /// unless `allow_private_destinations`).
    pub permissions: &'a Permissions,
    /// BIND / policy source addresses; `None` = whatever the host can bind.
    pub allowed_source_addresses: Option<&'a [ipnet::IpNet]>,
    /// The listener's upstream, when it chains.
    pub egress: Option<&'a Arc<EgressSource>>,
    /// Bounds DNS lookups and the wait for a Lua decision.
    pub timeout: std::time::Duration,
    pub pump: &'a crate::policy::events::EventPump,
    /// The listener's `send_proxy_protocol`.
    pub send_proxy: Option<SendProxy>,
}

/// Why a request does not go ahead. `denied` ones get reply 0x02 and count in
/// `stats().denied`; the others carry the reply code to send.
#[derive(Debug)]
pub struct Refusal {
    pub code: u8,
    pub reason: String,
}

impl Refusal {
    pub fn denied(reason: impl Into<String>) -> Self {
        Refusal {
            code: reply::NOT_ALLOWED,
            reason: reason.into(),
        }
    }
    pub fn is_denied(&self) -> bool {
        self.code == reply::NOT_ALLOWED
    }
}

/// A checked CONNECT: where to go and how.
#[derive(Debug)]
pub struct Plan {
    /// The destination after any rewrite.
    pub target: TargetAddr,
    /// Checked addresses to dial, in resolver order; empty when an upstream
    /// proxy resolves the name.
    pub addrs: Vec<SocketAddr>,
    pub source: Option<IpAddr>,
    pub egress: Option<Arc<EgressSource>>,
    /// A PROXY header to send the destination first, naming `client`.
    pub send_proxy: Option<SendProxy>,
    /// The client as the session sees it (the original one behind a balancer).
    pub client: SocketAddr,
}

fn layers<'a>(ctx: &'a RequestContext<'a>, auth: &'a AuthInfo) -> Vec<&'a Permissions> {
    let mut v = vec![ctx.permissions];
    if let Some(p) = &auth.permissions {
        v.push(p);
    }
    v
}

/// Whether the name goes to an upstream proxy unresolved: only with an egress
/// source that opted in (`socks5_proxy_remote_dns = true`), and never for a
/// name whose last label is numeric (`127.1`, `0x7f.1`, `2130706433`): no
/// top-level domain is, and resolvers read those as IPv4 addresses, so they
/// are resolved (and checked) here like any literal.
fn resolved_upstream(target: &TargetAddr, egress: &Option<Arc<EgressSource>>) -> bool {
    let remote = egress
        .as_ref()
        .and_then(|e| e.proxy.as_ref())
        .is_some_and(|p| p.remote_dns);
    let TargetAddr::Domain(name, _) = target else {
        return false;
    };
    let last = name.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .or_else(|| last.strip_prefix("0X"))
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())));
    remote && !numeric
}

/// Permissions for one destination: a denied name is refused before any DNS
/// lookup; otherwise the name is resolved here and every address is checked,
/// whichever path the connection takes (an upstream proxy is then asked for
/// the checked address, not the name). The addresses returned are the ones
/// checked, so a second lookup cannot rebind the name elsewhere. Only an
/// egress source with `socks5_proxy_remote_dns` leaves names unresolved.
async fn check_destination(
    target: &TargetAddr,
    egress: &Option<Arc<EgressSource>>,
    auth: &AuthInfo,
    ctx: &RequestContext<'_>,
) -> Result<Vec<SocketAddr>, Refusal> {
    let layers = layers(ctx, auth);
    // Port 0 is no destination (connect(2) refuses it, an upstream proxy might
    // not): refused before any lookup or dial, like HTTP CONNECT's 400.
    if target.port() == 0 {
        return Err(Refusal::denied(format!(
            "{}: port 0 is not a destination",
            crate::proto::text::client(&target.host())
        )));
    }
    if let TargetAddr::Ip(a) = target {
        // An address is checked as one, without a round trip through text
        // (that cost every session a format and two parses).
        permissions::check_ip(&layers, a.ip(), a.port(), &[a.ip()]).map_err(Refusal::denied)?;
        return Ok(vec![*a]);
    }
    let (host, port) = (target.host(), target.port());
    if let Some(why) = permissions::denies_name(&layers, &host, port) {
        return Err(Refusal::denied(why));
    }
    let addrs = match target {
        TargetAddr::Ip(a) => vec![*a],
        TargetAddr::Domain(..) if resolved_upstream(target, egress) => Vec::new(),
        TargetAddr::Domain(name, _) => {
            let t = ctx.timeout;
            let timed_out = Refusal {
                code: reply::TTL_EXPIRED,
                reason: format!(
                    "cannot resolve {} within {t:?}",
                    crate::proto::text::client(name)
                ),
            };
            let lookup = async {
                crate::host::net::resolve(target, None)
                    .await
                    .map_err(|(code, reason)| Refusal { code, reason })
            };
            within(t, timed_out, lookup).await?
        }
    };
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    permissions::check(&layers, &host, port, &ips).map_err(Refusal::denied)?;
    Ok(addrs)
}

fn check_source(ctx: &RequestContext<'_>, ip: IpAddr, port: u16) -> Result<(), Refusal> {
    permissions::check_source(ctx.allowed_source_addresses, ip, port).map_err(Refusal::denied)
}

/// Permissions, then the request event (when registered), for a CONNECT.
pub async fn plan_connect(
    target: &TargetAddr,
    auth: &Arc<AuthInfo>,
    meta: &Arc<ConnMeta>,
    ctx: &RequestContext<'_>,
) -> Result<Plan, Refusal> {
    let mut plan = Plan {
        target: target.clone(),
        addrs: Vec::new(),
        source: None,
        egress: ctx.egress.cloned(),
        send_proxy: ctx.send_proxy,
        client: meta.peer.0,
    };
    plan.addrs = check_destination(&plan.target, &plan.egress, auth, ctx).await?;
    if !crate::policy::events::registered(EVENT_REQUEST) {
        // No handler: no event to describe (its host string cost a format).
        return Ok(plan);
    }
    let info = RequestInfo {
        command: "connect",
        host: target.host(),
        port: target.port(),
    };
    let Some(over) = ask(info, auth, meta, ctx).await? else {
        return Ok(plan);
    };
    let recheck = over.destination.is_some() || over.egress.is_some();
    if let Some(d) = over.destination {
        plan.target = d;
    }
    if let Some(e) = over.egress {
        plan.egress = Some(e);
    }
    if let Some(ip) = over.source_address {
        check_source(ctx, ip, 0)?;
        plan.source = Some(ip);
    }
    if let Some(send) = over.send_proxy {
        plan.send_proxy = send;
    }
    if recheck {
        // A rewrite is held to the same rules as the client's own request.
        plan.addrs = check_destination(&plan.target, &plan.egress, auth, ctx).await?;
    }
    Ok(plan)
}

/// `allowed_source_addresses`, then the request event (when registered), for a
/// BIND `<ip>:0` (source address selection). Returns the source to bind.
pub async fn plan_bind(
    source: SocketAddr,
    auth: &Arc<AuthInfo>,
    meta: &Arc<ConnMeta>,
    ctx: &RequestContext<'_>,
) -> Result<SocketAddr, Refusal> {
    check_source(ctx, source.ip(), source.port())?;
    let info = RequestInfo {
        command: "bind",
        host: source.ip().to_string(),
        port: source.port(),
    };
    let Some(over) = ask(info, auth, meta, ctx).await? else {
        return Ok(source);
    };
    if over.destination.is_some() || over.egress.is_some() || over.send_proxy.is_some() {
        let why = format!(
            "{EVENT_REQUEST} handler returned destination, egress_source or send_proxy_protocol for a bind request (only source_address applies)"
        );
        tracing::error!("{why}");
        return Err(Refusal::denied(why));
    }
    match over.source_address {
        Some(ip) => {
            check_source(ctx, ip, 0)?;
            Ok(SocketAddr::new(ip, 0))
        }
        None => Ok(source),
    }
}

/// Asks `proxy_server_request` when registered; `Ok(None)` when not.
pub(crate) async fn ask(
    request: RequestInfo,
    auth: &Arc<AuthInfo>,
    meta: &Arc<ConnMeta>,
    ctx: &RequestContext<'_>,
) -> Result<Option<Overrides>, Refusal> {
    if !crate::policy::events::registered(EVENT_REQUEST) {
        return Ok(None);
    }
    let what = format!(
        "{} {}:{}",
        request.command,
        crate::proto::text::client(&request.host),
        request.port
    );
    let ask = ctx.pump.ask(|reply| Event::Request {
        request,
        auth: auth.clone(),
        meta: meta.clone(),
        reply,
    });
    let t = ctx.timeout;
    match tokio::time::timeout(t, ask).await {
        Ok(Ok(Ok(over))) => Ok(Some(over)),
        Ok(Ok(Err(why))) => Err(Refusal::denied(format!("{what}: {why}"))),
        Ok(Err(e)) => Err(Refusal::denied(format!("{what}: {EVENT_REQUEST}: {e}"))),
        Err(_) => Err(Refusal::denied(format!(
            "{what}: no decision from the {EVENT_REQUEST} handler within {t:?} (is the host pumping events?)"
        ))),
    }
}
