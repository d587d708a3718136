//! UDP ASSOCIATE through an egress source: the client side of RFC 1928 §7.
//!
//! Through a SOCKS5 proxy: the control connection (TCP, TLS when configured,
//! RFC 1929 and the BIND source request as for CONNECT), then UDP ASSOCIATE
//! naming our UDP socket's port; datagrams then go to the relay address of the
//! reply, each with the §7 header. Without a proxy: a plain UDP socket bound
//! to the source's `source_address`, datagrams going straight out.

use crate::egress::connect::left;
use crate::egress::socks5_client::handshake;
use crate::egress::source::{fail, EgressError, EgressSource, EgressStream};
use crate::host::net::within;
use crate::host::udp::bind_udp;
use crate::proto::socks5::{reply, Command, TargetAddr};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// An association made through an egress source.
pub struct UdpUpstream {
    /// The control connection (through a proxy): the association lives as long
    /// as it stays open, so the holder keeps it and watches it for EOF.
    pub control: Option<EgressStream>,
    pub socket: UdpSocket,
    /// The proxy's relay: datagrams go there with a SOCKS5 header. `None` when direct.
    pub relay: Option<SocketAddr>,
}

fn unspecified(v4: bool) -> IpAddr {
    if v4 {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    }
}

impl EgressSource {
    /// A UDP association, ready within `timeout`. `v4` picks the family of a
    /// direct socket when the source has no `source_address`.
    pub async fn udp_associate(
        &self,
        timeout: Duration,
        v4: bool,
    ) -> Result<UdpUpstream, EgressError> {
        let general = reply::GENERAL_FAILURE;
        let Some(proxy) = &self.proxy else {
            let ip = self.source_address.unwrap_or_else(|| unspecified(v4));
            let socket = bind_udp(SocketAddr::new(ip, 0))
                .map_err(|e| fail(general, format!("cannot open a UDP socket on {ip}: {e}")))?;
            return Ok(UdpUpstream {
                control: None,
                socket,
                relay: None,
            });
        };
        let deadline = Instant::now() + timeout;
        let (mut stream, local, peer) = self.open_proxy(proxy, deadline).await?;
        let server = peer.to_string();
        // Our socket first, on the address the proxy sees us from, so the
        // request names its port: relays that match the client's port need it.
        let socket = bind_udp(SocketAddr::new(local.ip(), 0)).map_err(|e| {
            fail(
                general,
                format!("cannot open a UDP socket on {}: {e}", local.ip()),
            )
        })?;
        let port = socket
            .local_addr()
            .map_err(|e| fail(general, format!("UDP socket address: {e}")))?
            .port();
        // The address part stays unspecified: behind NAT ours is not the one
        // the proxy sees, and the proxy knows that one from the connection.
        let ours = TargetAddr::Ip(SocketAddr::new(unspecified(local.is_ipv4()), port));
        let bound = within(
            left(deadline),
            fail(
                reply::TTL_EXPIRED,
                format!("timeout in SOCKS5 handshake with proxy {server}"),
            ),
            handshake(&mut stream, proxy, Command::UdpAssociate, &ours, &server),
        )
        .await?;
        let relay = match bound {
            // "Same host as the proxy" in practice; the connection's address is
            // the one known to reach it.
            TargetAddr::Ip(a) if a.ip().is_unspecified() => SocketAddr::new(peer.ip(), a.port()),
            TargetAddr::Ip(a) => a,
            TargetAddr::Domain(name, _) => {
                return Err(fail(
                    general,
                    format!("socks5: proxy {server} gave a relay name ({name:?}), not an address"),
                ))
            }
        };
        if relay.port() == 0 || relay.is_ipv4() != local.is_ipv4() {
            return Err(fail(
                general,
                format!("socks5: proxy {server} gave an unusable UDP relay address {relay}"),
            ));
        }
        tracing::debug!(
            "egress '{}': UDP association via proxy {server}: relay {relay}, ours {}:{port}",
            self.name,
            local.ip()
        );
        Ok(UdpUpstream {
            control: Some(stream),
            socket,
            relay: Some(relay),
        })
    }
}
