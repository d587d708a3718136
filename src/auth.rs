//! Who a client is: AuthInfo (identities, groups, permissions), connection
//! metadata and trusted hosts, and the credential check every front-end shares:
//! [`check_credentials`] (failure delay, cache, then `auth_http` or Lua).

use crate::auth_cache::{AuthCache, FailureDelay};
use crate::listener::Shared;
use crate::net::{LocalAddr, PeerAddr};
use crate::permissions::Permissions;
use crate::pump::{Event, EVENT_AUTH_RFC1929};
use ipnet::IpNet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// Where an identity came from, as KumoMTA names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub identity: String,
    pub context: String,
}

/// The authenticated principal of a session. Kept with the session for policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub identities: Vec<Identity>,
    pub groups: Vec<String>,
    /// The user's own destination rules, checked after the listener's.
    pub permissions: Option<Arc<Permissions>>,
    /// How widely the `auth_cache` may reuse this acceptance.
    pub cache_scope: CacheScope,
}

/// `cache_scope` in an AuthInfo (Lua table or `auth_http` JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheScope {
    /// Only for a connection that shows the deciding party the same: event,
    /// peer IP, local address, client certificate, credentials. The default:
    /// safe for any handler, whatever it looks at.
    #[default]
    Connection,
    /// For the same event and credentials from any connection: the handler
    /// declares its verdict depends on the credentials alone.
    Credentials,
}

impl CacheScope {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "connection" => Ok(CacheScope::Connection),
            "credentials" => Ok(CacheScope::Credentials),
            other => Err(format!(
                "cache_scope: '{}' is not one of 'connection', 'credentials'",
                crate::logging::client(other)
            )),
        }
    }
}

pub const CONTEXT_RFC1929: &str = "ProxyAuthRfc1929";
pub const CONTEXT_TRUSTED_HOST: &str = "TrustedHost";
pub const CONTEXT_TLS_CLIENT: &str = "TlsClientCertificate";

impl AuthInfo {
    pub fn single(identity: impl Into<String>, context: &str) -> Self {
        AuthInfo {
            identities: vec![Identity {
                identity: identity.into(),
                context: context.to_string(),
            }],
            groups: Vec::new(),
            permissions: None,
            cache_scope: CacheScope::Connection,
        }
    }

    /// A short description for logs: the first identity. Identities come from
    /// clients (usernames) and handlers: escaped.
    pub fn summary(&self) -> String {
        use crate::logging::client;
        match self.identities.first() {
            Some(i) => format!("{} ({})", client(&i.identity), client(&i.context)),
            None => "anonymous".to_string(),
        }
    }
}

/// Why credentials were refused. `cacheable`: a decision (a handler's `false`,
/// an HTTP 4xx) rather than a failure to decide (timeout, service down, 5xx),
/// which must not be remembered by the auth cache.
#[derive(Debug, Clone)]
pub struct Denial {
    pub reason: String,
    pub cacheable: bool,
}

impl Denial {
    pub fn decided(reason: impl Into<String>) -> Self {
        Denial {
            reason: reason.into(),
            cacheable: true,
        }
    }
    pub fn failed(reason: impl Into<String>) -> Self {
        Denial {
            reason: reason.into(),
            cacheable: false,
        }
    }
}

/// Per-listener authentication state, shared by every front-end (SOCKS5, HTTP).
#[derive(Default)]
pub struct AuthState {
    pub cache: Option<AuthCache>,
    pub delay: FailureDelay,
}

/// The one credential check for every protocol: progressive delay for peers
/// with recent failures, then the auth cache, then `auth_http` when the listener
/// has it (Lua is not consulted), else `ask_lua` (the protocol's Lua event).
/// `context` names where an `auth_http` identity came from, and which event
/// the cache key belongs to. `password` is `None` for HTTP Basic without a
/// colon (distinct from an empty one). The error never contains the password.
pub async fn check_credentials<F, Fut>(
    username: &[u8],
    password: Option<&[u8]>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
    context: &'static str,
    ask_lua: F,
) -> Result<AuthInfo, String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<AuthInfo, Denial>>,
{
    let state = &shared.auth;
    let ip = meta.peer.0.ip();
    state.delay.wait(ip, shared.config.timeout).await;
    let key = crate::auth_cache::CacheKey::new(context, meta, username, password);
    if let Some(hit) = state.cache.as_ref().and_then(|c| c.get(&key)) {
        if hit.is_err() {
            state.delay.record_failure(ip);
        }
        return hit.map_err(|why| format!("{why} (cached)"));
    }
    let verdict = match &shared.config.auth_http {
        Some(http) => {
            let pw = password.unwrap_or_default();
            http.check(username, pw, meta, context).await
        }
        None => ask_lua().await,
    };
    if let Some(cache) = &state.cache {
        match &verdict {
            Ok(info) => cache.put(&key, Ok(info.clone())),
            Err(d) if d.cacheable => cache.put(&key, Err(d.reason.clone())),
            Err(_) => {}
        }
    }
    // Only a decision that these credentials are wrong is evidence of guessing.
    // A failure to decide (event queue full, no answer in time, service down)
    // says nothing about the client: counting it would slow every client of an
    // overloaded host for `forget_after` once the host has recovered.
    if matches!(&verdict, Err(d) if d.cacheable) {
        state.delay.record_failure(ip);
    }
    verdict.map_err(|d| d.reason)
}

/// [`check_credentials`] for SOCKS5 RFC 1929: the Lua side is
/// `proxy_server_auth_rfc1929`, required when the listener has no `auth_http`.
pub async fn check_rfc1929(
    username: Vec<u8>,
    password: Vec<u8>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<AuthInfo, String> {
    let (u, p) = (username.clone(), password.clone());
    check_credentials(&u, Some(&p), meta, shared, CONTEXT_RFC1929, || {
        ask_rfc1929(username, password, meta, shared)
    })
    .await
}

async fn ask_rfc1929(
    username: Vec<u8>,
    password: Vec<u8>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<AuthInfo, Denial> {
    if !crate::pump::registered(EVENT_AUTH_RFC1929) {
        return Err(Denial::failed(format!(
            "no {EVENT_AUTH_RFC1929} handler is registered"
        )));
    }
    let ask = shared.pump.ask(|reply| Event::AuthRfc1929 {
        username,
        password,
        meta: meta.clone(),
        reply,
    });
    match tokio::time::timeout(shared.config.timeout, ask).await {
        // The handler answered: a decision, even when it raised (fail closed).
        Ok(Ok(verdict)) => verdict.map_err(Denial::decided),
        Ok(Err(e)) => Err(Denial::failed(e.to_string())),
        Err(_) => Err(Denial::failed(format!(
            "no decision from the {EVENT_AUTH_RFC1929} handler within {:?} (is the host pumping events?)",
            shared.config.timeout
        ))),
    }
}

/// What a Lua handler sees as `conn_meta`.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub peer: PeerAddr,
    pub local: LocalAddr,
    /// Set when the client presented a certificate that verified against `tls_client_ca`.
    pub tls_client: Option<crate::tls::ClientIdentity>,
    /// HTTP front-ends: who the request authenticated as (Basic user, or the
    /// peer address of a trusted host); `conn_meta.http_auth` in Lua.
    pub http_auth: Option<String>,
}

/// Peers allowed to proceed without credentials. Default: loopback only, so a
/// listener opened on 0.0.0.0 is not an open relay by accident.
#[derive(Debug, Clone)]
pub struct TrustedHosts(Vec<IpNet>);

impl Default for TrustedHosts {
    fn default() -> Self {
        TrustedHosts(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])
    }
}

impl TrustedHosts {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedHosts(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let pump = Arc::new(crate::pump::Pump::new().unwrap());
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 1080).into();
        Shared::new(crate::listener::Config::new(addr), addr, pump)
    }

    fn meta(ip: [u8; 4]) -> Arc<ConnMeta> {
        Arc::new(ConnMeta {
            peer: PeerAddr((ip, 40000).into()),
            local: LocalAddr(([127, 0, 0, 1], 1080).into()),
            tls_client: None,
            http_auth: None,
        })
    }

    #[tokio::test]
    async fn only_decided_denials_delay_the_peer() {
        let shared = shared();
        let (guesser, overloaded) = (meta([10, 0, 0, 1]), meta([10, 0, 0, 2]));
        let check = |m: &Arc<ConnMeta>, d: Denial| {
            let m = m.clone();
            let shared = &shared;
            async move {
                check_credentials(b"u", Some(b"p"), &m, shared, CONTEXT_RFC1929, || async {
                    Err(d)
                })
                .await
            }
        };
        assert!(check(&guesser, Denial::decided("rejected by handler"))
            .await
            .is_err());
        let queue_full = crate::pump::AskError::Overloaded(4).to_string();
        assert!(check(&overloaded, Denial::failed(queue_full))
            .await
            .is_err());
        assert!(check(&overloaded, Denial::failed("no decision in time"))
            .await
            .is_err());
        assert!(!shared.auth.delay.delay_for(guesser.peer.0.ip()).is_zero());
        assert!(shared
            .auth
            .delay
            .delay_for(overloaded.peer.0.ip())
            .is_zero());
    }

    #[test]
    fn trusted_default_is_loopback_only() {
        let t = TrustedHosts::default();
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(t.contains("127.9.9.9".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.contains("10.0.0.1".parse().unwrap()));
        assert!(!t.contains("::2".parse().unwrap()));
    }

    #[test]
    fn trusted_cidr() {
        let t = TrustedHosts::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(t.contains("10.200.0.1".parse().unwrap()));
        assert!(!t.contains("127.0.0.1".parse().unwrap()));
    }
}
