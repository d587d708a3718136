//! HAProxy egress (`make_egress_source{ ha_proxy_server, ha_proxy_source_address }`),
//! as KumoMTA's egress sources do it: connect to an HAProxy whose frontend has
//! `accept-proxy`, send a PROXY v2 header whose source is the chosen address
//! and whose destination is where we are going; HAProxy connects there from
//! that address (`source 0.0.0.0 usesrc clientip`, server `0.0.0.0:0`).
//!
//! HAProxy accepts our connection before it tries the destination, so a
//! destination that refuses shows up as the stream closing, not as a connect
//! error; one destination address is used (the first of the source's family).

use crate::egress::connect::{addrs_of, dial, left, resolve};
use crate::egress::source::*;
use crate::host::net::within;
use crate::proto::proxy_header;
use crate::proto::socks5::{reply, TargetAddr};
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// A validated HAProxy hop.
#[derive(Debug, Clone)]
pub struct HaProxy {
    pub server: SocketAddr,
    /// The source address the destination sees (HAProxy binds it).
    pub source_address: IpAddr,
}

/// `ha_proxy_server` / `ha_proxy_source_address` -> an HAProxy hop, or `None`
/// when neither is set. Errors name the key to blame.
pub fn settings(
    server: Option<&str>,
    source: Option<IpAddr>,
) -> Result<Option<HaProxy>, ConfigError> {
    match (server, source) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad(
            "ha_proxy_source_address",
            "is required when ha_proxy_server is set",
        )),
        (None, Some(_)) => Err(bad("ha_proxy_source_address", "requires ha_proxy_server")),
        (Some(s), Some(source_address)) => {
            let server: SocketAddr = s.parse().map_err(|_| {
                bad(
                    "ha_proxy_server",
                    format!(
                        "'{}' is not ip:port (e.g. '10.0.0.5:5000' or '[::1]:5000')",
                        s.escape_debug()
                    ),
                )
            })?;
            if server.port() == 0 {
                return Err(bad("ha_proxy_server", "port must not be 0"));
            }
            Ok(Some(HaProxy {
                server,
                source_address,
            }))
        }
    }
}

impl EgressSource {
    /// Reaches `target` through HAProxy `ha` by the deadline.
    pub(crate) async fn connect_haproxy(
        &self,
        ha: &HaProxy,
        target: &TargetAddr,
        deadline: Instant,
    ) -> Result<Connected, EgressError> {
        let server = ha.server;
        // The destination in the header must be an address of the source's
        // family: HAProxy binds the source and connects from it.
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
        let mut tcp = within(
            left(deadline),
            fail(
                reply::TTL_EXPIRED,
                format!("timeout connecting to HAProxy {server}"),
            ),
            async {
                dial(&[server], self.source_address).await.map_err(|e| {
                    fail(
                        reply::GENERAL_FAILURE,
                        format!("connect to HAProxy {server}: {e}"),
                    )
                })
            },
        )
        .await?;
        let header =
            proxy_header::build_v2(SocketAddr::new(ha.source_address, 0), dest, &[]).map_err(
                |e| fail(reply::GENERAL_FAILURE, format!("PROXY header: {e}")),
            )?;
        within(
            left(deadline),
            fail(
                reply::TTL_EXPIRED,
                format!("timeout sending the PROXY header to HAProxy {server}"),
            ),
            async {
                tcp.write_all(&header).await.map_err(|e| {
                    fail(
                        reply::GENERAL_FAILURE,
                        format!("sending the PROXY header to HAProxy {server}: {e}"),
                    )
                })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_key() {
        assert!(settings(None, None).unwrap().is_none());
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let e = settings(Some("127.0.0.1:5000"), None).unwrap_err();
        assert_eq!(e.key, "ha_proxy_source_address");
        let e = settings(None, Some(ip)).unwrap_err();
        assert_eq!(e.key, "ha_proxy_source_address");
        let e = settings(Some("haproxy.local:5000"), Some(ip)).unwrap_err();
        assert_eq!(e.key, "ha_proxy_server");
        assert!(e.msg.contains("ip:port"));
        let e = settings(Some("127.0.0.1:0"), Some(ip)).unwrap_err();
        assert_eq!(e.key, "ha_proxy_server");
        let h = settings(Some("[::1]:5000"), Some(ip)).unwrap().unwrap();
        assert_eq!(h.server, "[::1]:5000".parse().unwrap());
    }
}
