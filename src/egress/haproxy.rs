//! HAProxy egress (`make_egress_source{ ha_proxy_server, ha_proxy_source_address }`),
//! as KumoMTA's egress sources do it: connect to an HAProxy whose frontend has
//! `accept-proxy`, send a PROXY v2 header whose source is the chosen address
//! and whose destination is where we are going; HAProxy connects there from
//! that address (`source 0.0.0.0 usesrc clientip`, server `0.0.0.0:0`).
//!
//! HAProxy accepts our connection before it tries the destination, so a
//! destination that refuses shows up as the stream closing, not as a connect
//! error. A leaf of `egress`: `connect.rs` resolves and dials, this file only
//! knows the hop and the header.

use crate::proto::proxy_header;
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A validated HAProxy hop.
#[derive(Debug, Clone)]
pub struct HaProxy {
    pub server: SocketAddr,
    /// The source address the destination sees (HAProxy binds it).
    pub source_address: IpAddr,
}

/// A setting that can never work: (key to blame, message).
pub type SettingError = (&'static str, String);

/// `ha_proxy_server` / `ha_proxy_source_address` -> an HAProxy hop, or `None`
/// when neither is set.
pub fn settings(
    server: Option<&str>,
    source: Option<IpAddr>,
) -> Result<Option<HaProxy>, SettingError> {
    match (server, source) {
        (None, None) => Ok(None),
        (Some(_), None) => Err((
            "ha_proxy_source_address",
            "is required when ha_proxy_server is set".into(),
        )),
        (None, Some(_)) => Err(("ha_proxy_source_address", "requires ha_proxy_server".into())),
        (Some(s), Some(source_address)) => {
            let server: SocketAddr = s.parse().map_err(|_| {
                (
                    "ha_proxy_server",
                    format!(
                        "'{}' is not ip:port (e.g. '10.0.0.5:5000' or '[::1]:5000')",
                        s.escape_debug()
                    ),
                )
            })?;
            if server.port() == 0 {
                return Err(("ha_proxy_server", "port must not be 0".into()));
            }
            Ok(Some(HaProxy {
                server,
                source_address,
            }))
        }
    }
}

impl HaProxy {
    /// Sends the v2 header for `destination` on a fresh connection to HAProxy.
    pub async fn send_header(
        &self,
        tcp: &mut TcpStream,
        destination: SocketAddr,
    ) -> io::Result<()> {
        let header =
            proxy_header::build_v2(SocketAddr::new(self.source_address, 0), destination, &[])?;
        tcp.write_all(&header).await
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
        assert_eq!(e.0, "ha_proxy_source_address");
        let e = settings(None, Some(ip)).unwrap_err();
        assert_eq!(e.0, "ha_proxy_source_address");
        let e = settings(Some("haproxy.local:5000"), Some(ip)).unwrap_err();
        assert_eq!(e.0, "ha_proxy_server");
        assert!(e.1.contains("ip:port"));
        let e = settings(Some("127.0.0.1:0"), Some(ip)).unwrap_err();
        assert_eq!(e.0, "ha_proxy_server");
        let h = settings(Some("[::1]:5000"), Some(ip)).unwrap().unwrap();
        assert_eq!(h.server, "[::1]:5000".parse().unwrap());
    }
}
