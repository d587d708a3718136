//! Reaching a destination through an egress source: directly from its source
//! address, or via its SOCKS5 proxy (TLS, greeting, auth, BIND, CONNECT).

use crate::egress::haproxy::HaProxy;
use crate::egress::socks5_client::handshake;
use crate::egress::source::*;
use crate::egress::tls::tls_error;
use crate::host::net::{within, Keepalive};
use crate::proto::socks5::{self, reply, Command, TargetAddr};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

impl EgressSource {
    /// Reaches `target` within `timeout`, directly or through the proxy.
    pub async fn connect(
        &self,
        target: &TargetAddr,
        timeout: Duration,
    ) -> Result<Connected, EgressError> {
        let deadline = Instant::now() + timeout;
        let r = match (&self.proxy, &self.ha_proxy) {
            (Some(p), _) => self.connect_via(p, target, deadline).await,
            (None, Some(ha)) => self.connect_haproxy(ha, target, deadline).await,
            (None, None) => self.connect_direct(target, deadline).await,
        };
        match &r {
            Ok(c) => tracing::debug!(
                "egress '{}': connected to {target} from {}{}",
                self.name,
                c.local,
                match &c.proxy_bound {
                    Some(b) => format!(" via proxy {} (proxy bound {b})", c.peer),
                    None => String::new(),
                }
            ),
            Err(e) => tracing::debug!("egress '{}': {target}: {e}", self.name),
        }
        r
    }

    async fn connect_direct(
        &self,
        target: &TargetAddr,
        deadline: Instant,
    ) -> Result<Connected, EgressError> {
        let what = target.to_string();
        let stream = within(
            left(deadline),
            fail(reply::TTL_EXPIRED, format!("timeout connecting to {what}")),
            async {
                let addrs = resolve(target, self.source_address).await?;
                dial(&addrs, self.source_address).await.map_err(|e| {
                    fail(
                        socks5::reply_code_for_io_error(&e),
                        format!("connect to {what}: {e}"),
                    )
                })
            },
        )
        .await?;
        let (local, peer) = addrs_of(&stream)?;
        Ok(Connected {
            stream: EgressStream::Plain(stream),
            local,
            peer,
            proxy_bound: None,
        })
    }

    /// Through HAProxy (`ha_proxy_server`): TCP to it, then the v2 header
    /// naming the chosen source and the destination (resolved here, keeping
    /// the source's family; the first address is used: HAProxy dials it).
    async fn connect_haproxy(
        &self,
        ha: &HaProxy,
        target: &TargetAddr,
        deadline: Instant,
    ) -> Result<Connected, EgressError> {
        let server = ha.server;
        let dest = *resolve(target, Some(ha.source_address))
            .await?
            .first()
            .ok_or_else(|| {
                fail(
                    reply::ADDRESS_TYPE_NOT_SUPPORTED,
                    format!(
                        "{target} has no address of ha_proxy_source_address {}'s family",
                        ha.source_address
                    ),
                )
            })?;
        let tcp = within(
            left(deadline),
            fail(
                reply::TTL_EXPIRED,
                format!("timeout connecting to HAProxy {server}"),
            ),
            async {
                let mut tcp = dial(&[server], self.source_address).await.map_err(|e| {
                    fail(
                        reply::GENERAL_FAILURE,
                        format!("connect to HAProxy {server}: {e}"),
                    )
                })?;
                ha.send_header(&mut tcp, dest).await.map_err(|e| {
                    fail(
                        reply::GENERAL_FAILURE,
                        format!("sending the PROXY header to HAProxy {server}: {e}"),
                    )
                })?;
                Ok(tcp)
            },
        )
        .await?;
        let (local, peer) = addrs_of(&tcp)?;
        Ok(Connected {
            stream: EgressStream::Plain(tcp),
            local,
            peer,
            // What the destination sees: the chosen source (HAProxy picks the port).
            proxy_bound: Some(TargetAddr::Ip(SocketAddr::new(ha.source_address, 0))),
        })
    }

    async fn connect_via(
        &self,
        proxy: &Proxy,
        target: &TargetAddr,
        deadline: Instant,
    ) -> Result<Connected, EgressError> {
        let (mut stream, local, peer) = self.open_proxy(proxy, deadline).await?;
        let server = peer.to_string();
        let bound = within(
            left(deadline),
            fail(
                reply::TTL_EXPIRED,
                format!("timeout in SOCKS5 handshake with proxy {server}"),
            ),
            handshake(&mut stream, proxy, Command::Connect, target, &server),
        )
        .await?;
        Ok(Connected {
            stream,
            local,
            peer,
            proxy_bound: Some(bound),
        })
    }

    /// TCP (and TLS when configured) to the proxy: the stream, our end, the
    /// proxy's. CONNECT and UDP ASSOCIATE (egress/udp.rs) both start here.
    pub(crate) async fn open_proxy(
        &self,
        proxy: &Proxy,
        deadline: Instant,
    ) -> Result<(EgressStream, SocketAddr, SocketAddr), EgressError> {
        let server = proxy.server();
        let general = reply::GENERAL_FAILURE;
        let tcp = within(
            left(deadline),
            fail(
                reply::TTL_EXPIRED,
                format!("timeout connecting to proxy {server}"),
            ),
            async {
                let proxy_target = TargetAddr::Domain(proxy.host.clone(), proxy.port);
                let proxy_target = match proxy.host.parse::<IpAddr>() {
                    Ok(ip) => TargetAddr::Ip(SocketAddr::new(ip, proxy.port)),
                    Err(_) => proxy_target,
                };
                let addrs = resolve(&proxy_target, self.source_address)
                    .await
                    .map_err(|e| fail(general, format!("proxy {server}: {e}")))?;
                dial(&addrs, self.source_address)
                    .await
                    .map_err(|e| fail(general, format!("connect to proxy {server}: {e}")))
            },
        )
        .await?;
        let (local, peer) = addrs_of(&tcp)?;
        let server = peer.to_string();
        let stream = match &proxy.tls {
            None => EgressStream::Plain(tcp),
            Some(tls) => {
                let s = within(
                    left(deadline),
                    fail(
                        reply::TTL_EXPIRED,
                        format!("timeout in TLS handshake with proxy {server}"),
                    ),
                    async {
                        tls.connector
                            .connect(tls.server_name.clone(), tcp)
                            .await
                            .map_err(|e| tls_error(e, &server, &tls.server_name))
                    },
                )
                .await?;
                EgressStream::Tls(Box::new(s))
            }
        };
        Ok((stream, local, peer))
    }
}

pub(crate) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub(crate) fn addrs_of(s: &TcpStream) -> Result<(SocketAddr, SocketAddr), EgressError> {
    let e = |e: io::Error| fail(reply::GENERAL_FAILURE, format!("socket address: {e}"));
    Ok((s.local_addr().map_err(e)?, s.peer_addr().map_err(e)?))
}

/// Addresses to try, keeping only the source address's family when one is set.
pub(crate) async fn resolve(
    target: &TargetAddr,
    source: Option<IpAddr>,
) -> Result<Vec<SocketAddr>, EgressError> {
    crate::host::net::resolve(target, source)
        .await
        .map_err(|(code, msg)| fail(code, msg))
}

/// Tries each address in turn; the last error wins.
pub(crate) async fn dial(addrs: &[SocketAddr], source: Option<IpAddr>) -> io::Result<TcpStream> {
    let mut last = None;
    for &addr in addrs {
        let attempt = async {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(src) = source {
                sock.bind(SocketAddr::new(src, 0)).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot bind source address {src}: {e}"))
                })?;
            }
            sock.connect(addr).await
        };
        match attempt.await {
            Ok(s) => {
                crate::host::net::tune_stream(&s, &Keepalive::default(), "egress socket");
                return Ok(s);
            }
            Err(e) => {
                tracing::debug!("connect to {addr} failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to try")))
}
