//! Who a client is: AuthInfo (identities and groups), connection metadata and
//! trusted hosts. Decisions themselves come from Lua via the event pump.

use crate::net::{LocalAddr, PeerAddr};
use ipnet::IpNet;
use std::net::IpAddr;

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
        }
    }

    /// A short description for logs: the first identity.
    pub fn summary(&self) -> String {
        match self.identities.first() {
            Some(i) => format!("{} ({})", i.identity, i.context),
            None => "anonymous".to_string(),
        }
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
