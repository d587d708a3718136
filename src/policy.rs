//! What an authenticated client may do with a request, for every front-end:
//! listener and user permissions (on the name and on the resolved addresses),
//! `allowed_source_addresses`, then the optional Lua `proxy_server_request`
//! event, which may refuse, rewrite the destination, pick a source address or
//! an egress source. The event is only asked when a handler is registered.

use crate::auth::{AuthInfo, ConnMeta};
use crate::egress::EgressSource;
use crate::listener::Shared;
use crate::net::within;
use crate::permissions::{self, Permissions};
use crate::pump::{Event, EVENT_REQUEST};
use crate::socks5::{reply, TargetAddr};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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
}

/// `Err` = refused, with the reason for the log.
pub type RequestVerdict = Result<Overrides, String>;

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
}

fn layers<'a>(shared: &'a Shared, auth: &'a AuthInfo) -> Vec<&'a Permissions> {
    let mut v = vec![&*shared.config.permissions];
    if let Some(p) = &auth.permissions {
        v.push(p);
    }
    v
}

fn via_proxy(egress: &Option<Arc<EgressSource>>) -> bool {
    egress.as_ref().is_some_and(|e| e.proxy.is_some())
}

/// Permissions for one destination: a denied name is refused before any DNS
/// lookup; otherwise the name is resolved here (unless an upstream proxy will
/// resolve it) and every address is checked. The addresses returned are the
/// ones checked, so a second lookup cannot rebind the name elsewhere.
async fn check_destination(
    target: &TargetAddr,
    egress: &Option<Arc<EgressSource>>,
    auth: &AuthInfo,
    shared: &Shared,
) -> Result<Vec<SocketAddr>, Refusal> {
    let layers = layers(shared, auth);
    let (host, port) = (target.host(), target.port());
    // Port 0 is no destination (connect(2) refuses it, an upstream proxy might
    // not): refused before any lookup or dial, like HTTP CONNECT's 400.
    if port == 0 {
        return Err(Refusal::denied(format!(
            "{}: port 0 is not a destination",
            crate::logging::client(&host)
        )));
    }
    if let Some(why) = permissions::denies_name(&layers, &host, port) {
        return Err(Refusal::denied(why));
    }
    let addrs = match target {
        TargetAddr::Ip(a) => vec![*a],
        TargetAddr::Domain(..) if via_proxy(egress) => Vec::new(),
        TargetAddr::Domain(name, _) => {
            let t = shared.config.timeout;
            let timed_out = Refusal {
                code: reply::TTL_EXPIRED,
                reason: format!(
                    "cannot resolve {} within {t:?}",
                    crate::logging::client(name)
                ),
            };
            let lookup = async {
                crate::net::resolve(target, None)
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

fn check_source(shared: &Shared, ip: IpAddr, port: u16) -> Result<(), Refusal> {
    permissions::check_source(shared.config.allowed_source_addresses.as_deref(), ip, port)
        .map_err(Refusal::denied)
}

/// Permissions, then the request event (when registered), for a CONNECT.
pub async fn plan_connect(
    target: &TargetAddr,
    auth: &Arc<AuthInfo>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<Plan, Refusal> {
    let mut plan = Plan {
        target: target.clone(),
        addrs: Vec::new(),
        source: None,
        egress: shared.config.egress.clone(),
    };
    plan.addrs = check_destination(&plan.target, &plan.egress, auth, shared).await?;
    let info = RequestInfo {
        command: "connect",
        host: target.host(),
        port: target.port(),
    };
    let Some(over) = ask(info, auth, meta, shared).await? else {
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
        check_source(shared, ip, 0)?;
        plan.source = Some(ip);
    }
    if recheck {
        // A rewrite is held to the same rules as the client's own request.
        plan.addrs = check_destination(&plan.target, &plan.egress, auth, shared).await?;
    }
    Ok(plan)
}

/// `allowed_source_addresses`, then the request event (when registered), for a
/// BIND `<ip>:0` (source address selection). Returns the source to bind.
pub async fn plan_bind(
    source: SocketAddr,
    auth: &Arc<AuthInfo>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<SocketAddr, Refusal> {
    check_source(shared, source.ip(), source.port())?;
    let info = RequestInfo {
        command: "bind",
        host: source.ip().to_string(),
        port: source.port(),
    };
    let Some(over) = ask(info, auth, meta, shared).await? else {
        return Ok(source);
    };
    if over.destination.is_some() || over.egress.is_some() {
        let why = format!(
            "{EVENT_REQUEST} handler returned destination or egress_source for a bind request (only source_address applies)"
        );
        tracing::error!("{why}");
        return Err(Refusal::denied(why));
    }
    match over.source_address {
        Some(ip) => {
            check_source(shared, ip, 0)?;
            Ok(SocketAddr::new(ip, 0))
        }
        None => Ok(source),
    }
}

/// Asks `proxy_server_request` when registered; `Ok(None)` when not.
async fn ask(
    request: RequestInfo,
    auth: &Arc<AuthInfo>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<Option<Overrides>, Refusal> {
    if !crate::pump::registered(EVENT_REQUEST) {
        return Ok(None);
    }
    let what = format!(
        "{} {}:{}",
        request.command,
        crate::logging::client(&request.host),
        request.port
    );
    let ask = shared.pump.ask(|reply| Event::Request {
        request,
        auth: auth.clone(),
        meta: meta.clone(),
        reply,
    });
    let t = shared.config.timeout;
    match tokio::time::timeout(t, ask).await {
        Ok(Ok(Ok(over))) => Ok(Some(over)),
        Ok(Ok(Err(why))) => Err(Refusal::denied(format!("{what}: {why}"))),
        Ok(Err(e)) => Err(Refusal::denied(format!("{what}: {EVENT_REQUEST}: {e}"))),
        Err(_) => Err(Refusal::denied(format!(
            "{what}: no decision from the {EVENT_REQUEST} handler within {t:?} (is the host pumping events?)"
        ))),
    }
}
