//! Who a client is: AuthInfo (identities, groups, permissions), why a login was
//! refused, connection metadata, and trusted hosts. Plain data that every
//! other policy file and every front-end shares.

use crate::host::net::{LocalAddr, PeerAddr};
use crate::policy::permissions::Permissions;
use ipnet::IpNet;
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
    /// The user's own `limits` and `limit_key`, when given. One pointer: every
    /// session's handshake future holds AuthInfo values, and most have neither.
    pub limits: Option<Arc<UserLimits>>,
    /// How widely the `auth_cache` may reuse this acceptance.
    pub cache_scope: CacheScope,
}

/// An AuthInfo's `limits` (replacing the listener's) and `limit_key` (the
/// bucket they count in; default: the first identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserLimits {
    pub spec: Option<Arc<crate::policy::limits::LimitsSpec>>,
    pub key: Option<String>,
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
                crate::proto::text::client(other)
            )),
        }
    }
}

pub const CONTEXT_RFC1929: &str = "ProxyAuthRfc1929";
pub const CONTEXT_TRUSTED_HOST: &str = "TrustedHost";
pub const CONTEXT_TLS_CLIENT: &str = "TlsClientCertificate";
/// The identity context of a user validated by `http_server_validate_auth_basic`
/// (KumoMTA's name for it), on every front-end (proxy HTTP CONNECT, status
/// listener): one name for one kind of login.
pub const CONTEXT_HTTP_BASIC: &str = "HttpBasicAuth";

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
            limits: None,
        }
    }

    /// The bucket this principal's limits are counted in: `limit_key`, else the
    /// first identity (username, trusted peer IP, certificate name).
    pub fn limit_key(&self) -> Option<&str> {
        self.limits
            .as_ref()
            .and_then(|l| l.key.as_deref())
            .or_else(|| self.identities.first().map(|i| i.identity.as_str()))
    }

    /// The AuthInfo's own limits spec, if any.
    pub fn own_limits(&self) -> Option<&Arc<crate::policy::limits::LimitsSpec>> {
        self.limits.as_ref().and_then(|l| l.spec.as_ref())
    }

    /// A short description: the first identity. Identities come from
    /// clients (usernames) and handlers: escaped.
    pub fn summary(&self) -> String {
        use crate::proto::text::client;
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

/// What a Lua handler sees as `conn_meta`.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub peer: PeerAddr,
    pub local: LocalAddr,
    /// Set when the client presented a certificate that verified against `tls_client_ca`.
    pub tls_client: Option<crate::host::tls::ClientIdentity>,
    /// HTTP front-ends: who the request authenticated as (Basic user, or the
    /// peer address of a trusted host); `conn_meta.http_auth` in Lua.
    pub http_auth: Option<String>,
    /// Through a load balancer (`proxy_protocol`): the balancer, while `peer`
    /// is the client its PROXY header named. `conn_meta.proxy_peer_address`.
    pub proxy_peer: Option<std::net::SocketAddr>,
    /// The v2 header's TLVs (`conn_meta.proxy_tlvs`); `None` without one.
    pub proxy_tlvs: Option<Arc<crate::proto::proxy_header::Tlvs>>,
}

impl ConnMeta {
    /// A connection straight from its peer: no TLS client certificate, no HTTP
    /// authentication yet, no load balancer in front.
    pub fn direct(peer: PeerAddr, local: LocalAddr) -> Self {
        ConnMeta {
            peer,
            local,
            tls_client: None,
            http_auth: None,
            proxy_peer: None,
            proxy_tlvs: None,
        }
    }
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
