//! What an egress source is: its settings, its validated form, and how its
//! failures and connections are reported.

use crate::proto::socks5::{TargetAddr, UserPass};
use rustls::pki_types::ServerName;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio_rustls::TlsConnector;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What `make_egress_source` was given, before validation. Secrets are already
/// read (key_data / key_file resolved by the caller).
#[derive(Default)]
pub struct Settings {
    pub name: String,
    pub source_address: Option<IpAddr>,
    pub proxy_server: Option<String>,
    pub proxy_source_address: Option<IpAddr>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    pub tls: Option<bool>,
    pub tls_ca: Option<String>,
    pub tls_insecure: Option<bool>,
    pub tls_server_name: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub ha_proxy_server: Option<String>,
    pub ha_proxy_source_address: Option<IpAddr>,
    /// `socks5_proxy_remote_dns`: send client-requested names to the proxy
    /// unresolved (opt-in; see `Proxy::remote_dns`).
    pub remote_dns: Option<bool>,
}

/// A setting that can never work; `key` is the parameter to blame.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub msg: String,
}

pub(crate) fn bad(key: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        msg: msg.into(),
    }
}

/// A validated egress source, shared by every connection made through it.
pub struct EgressSource {
    pub name: String,
    /// Bound before connecting: to the destination, or to the proxy.
    pub source_address: Option<IpAddr>,
    pub proxy: Option<Proxy>,
    /// `ha_proxy_server`: through HAProxy with a PROXY v2 header (never with `proxy`).
    pub ha_proxy: Option<crate::egress::haproxy::HaProxy>,
    pub connect_timeout: Duration,
}

pub struct Proxy {
    /// As configured: an IP literal or a DNS name (every address tried in turn).
    pub host: String,
    pub port: u16,
    /// Asked of the proxy with BIND `<ip>:0` before CONNECT.
    pub source_address: Option<IpAddr>,
    pub credentials: Option<UserPass>,
    pub tls: Option<ProxyTls>,
    /// Names a client asked for go to the proxy unresolved, so the proxy's
    /// resolver decides where they lead: only name rules can be checked. Off
    /// by default: the name is resolved here, every address checked, and the
    /// checked address is what the proxy is asked to connect to.
    pub remote_dns: bool,
}

pub struct ProxyTls {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    pub insecure: bool,
}

impl fmt::Debug for EgressSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressSource")
            .field("name", &self.name)
            .field("source_address", &self.source_address)
            .field("proxy", &self.proxy)
            .field("ha_proxy", &self.ha_proxy)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl fmt::Debug for Proxy {
    // `credentials` is a UserPass, whose Debug redacts the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("server", &self.server())
            .field("source_address", &self.source_address)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("remote_dns", &self.remote_dns)
            .finish()
    }
}

impl fmt::Debug for ProxyTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Proxy {
    pub fn server(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port`, `[v6]:port` or `v4:port` -> (host, port).
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let err = || format!("'{s}' is not host:port (e.g. 'proxy.example.com:1080' or '[::1]:1080')");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(err)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| err())?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(err)?;
        if h.contains(':') {
            return Err(err()); // a bare IPv6 address needs brackets
        }
        (h, p)
    };
    let port: u16 = port.parse().map_err(|_| err())?;
    if host.is_empty() || port == 0 {
        return Err(err());
    }
    Ok((host.to_string(), port))
}

/// A destination as the caller named it: an IP literal stays an IP (CONNECT with
/// ATYP IPv4/IPv6); anything else is sent to the proxy as a domain name.
pub fn target(host: &str, port: u16) -> Result<TargetAddr, String> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(TargetAddr::Ip(SocketAddr::new(ip, port)));
    }
    if h.is_empty() || h.len() > 255 {
        return Err(format!("host name must be 1 to 255 bytes, got {}", h.len()));
    }
    Ok(TargetAddr::Domain(h.to_string(), port))
}

/// A failed connect: `msg` names the hop; `code` is the SOCKS5 reply for a chained
/// listener's client (the upstream proxy's own code when it gave one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressError {
    pub msg: String,
    pub code: u8,
}

impl fmt::Display for EgressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for EgressError {}

pub(crate) fn fail(code: u8, msg: impl Into<String>) -> EgressError {
    EgressError {
        msg: msg.into(),
        code,
    }
}

/// The connected stream: plain TCP (splice-able) or TLS to the proxy.
pub type EgressStream = crate::host::stream::UpstreamStream;

pub struct Connected {
    pub stream: EgressStream,
    /// Our end of the TCP connection (to the proxy, or to the destination).
    pub local: SocketAddr,
    /// The TCP peer: the proxy, or the destination when direct.
    pub peer: SocketAddr,
    /// The address the proxy reported in its CONNECT reply: the real source
    /// address of the outbound connection. None when direct.
    pub proxy_bound: Option<TargetAddr>,
}
