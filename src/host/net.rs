//! Socket plumbing: address newtypes and socket options that warn instead of kill.

use socket2::{SockRef, TcpKeepalive};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The remote end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Our end of an accepted connection (the listener's address as the client sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr(pub SocketAddr);

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `tcp_keepalive = {enabled, time, interval, retries}`.
#[derive(Debug, Clone)]
pub struct Keepalive {
    pub enabled: bool,
    pub time: Duration,
    pub interval: Duration,
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            enabled: true,
            time: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 5,
        }
    }
}

/// TCP_NODELAY (small SMTP writes must not wait for Nagle) and keepalive.
/// A failure here costs performance, not correctness: log and carry on.
pub fn tune_stream(sock: &tokio::net::TcpStream, keepalive: &Keepalive, who: &str) {
    tune_socket(SockRef::from(sock), keepalive, who);
}

/// `tune_stream` for any socket; true when every option was set.
pub fn tune_socket(s: SockRef<'_>, keepalive: &Keepalive, who: &str) -> bool {
    let mut ok = true;
    if let Err(e) = s.set_tcp_nodelay(true) {
        tracing::warn!("{who}: cannot set TCP_NODELAY: {e}");
        ok = false;
    }
    if keepalive.enabled {
        let ka = TcpKeepalive::new()
            .with_time(keepalive.time)
            .with_interval(keepalive.interval)
            .with_retries(keepalive.retries);
        if let Err(e) = s.set_tcp_keepalive(&ka) {
            tracing::warn!("{who}: cannot set TCP keepalive: {e}");
            ok = false;
        }
    }
    ok
}

/// Bounds a fallible step by `d`; on expiry the step fails with `on_timeout`.
/// The one timeout-and-context wrapper every wait in the module goes through.
pub async fn within<T, E>(
    d: Duration,
    on_timeout: E,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    within_else(d, || on_timeout, fut).await
}

/// `within` with an error built only on expiry (for errors that format or allocate).
pub async fn within_else<T, E>(
    d: Duration,
    on_timeout: impl FnOnce() -> E,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(d, fut).await {
        Ok(r) => r,
        Err(_) => Err(on_timeout()),
    }
}

/// Resolves a destination, keeping only addresses of `source`'s family when a source
/// address is set. Errors carry the RFC 1928 reply code for the client.
pub async fn resolve(
    target: &crate::proto::socks5::TargetAddr,
    source: Option<std::net::IpAddr>,
) -> Result<Vec<SocketAddr>, (u8, String)> {
    use crate::proto::socks5::{reply, TargetAddr};
    let mut addrs: Vec<SocketAddr> = match target {
        TargetAddr::Ip(a) => vec![*a],
        TargetAddr::Domain(host, port) => tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map_err(|e| {
                (
                    reply::HOST_UNREACHABLE,
                    format!("cannot resolve {}: {e}", crate::proto::text::client(host)),
                )
            })?
            .collect(),
    };
    if let Some(src) = source {
        addrs.retain(|a| a.is_ipv4() == src.is_ipv4());
        if addrs.is_empty() {
            return Err((
                reply::ADDRESS_TYPE_NOT_SUPPORTED,
                format!("{target} has no address in the family of source address {src}"),
            ));
        }
    }
    if addrs.is_empty() {
        return Err((
            reply::HOST_UNREACHABLE,
            format!("{target} has no addresses"),
        ));
    }
    Ok(addrs)
}
