//! Outbound PROXY protocol (listener `send_proxy_protocol = 'v1' | 'v2'`, or
//! per request from `proxy_server_request`): the first bytes to each
//! destination are a header naming the client (the original one when the
//! listener itself is behind a balancer) and the destination.

use crate::proto::proxy_header;
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    V1,
    V2,
}

impl SendProxy {
    /// `'v1'` / `'v2'`; the error lists what is accepted.
    pub fn parse(s: &str) -> Result<SendProxy, String> {
        match s {
            "v1" => Ok(SendProxy::V1),
            "v2" => Ok(SendProxy::V2),
            other => Err(format!(
                "must be 'v1' or 'v2', got '{}'",
                other.escape_debug()
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SendProxy::V1 => "v1",
            SendProxy::V2 => "v2",
        }
    }

    /// The header for `client` -> `destination`. `destination` is `None` when
    /// only a name is known (an upstream proxy resolved it): v1 then says
    /// UNKNOWN and v2 carries no addresses, so the receiver uses the real
    /// endpoints (what the specification prescribes for such cases).
    pub fn header(self, client: SocketAddr, destination: Option<SocketAddr>) -> Vec<u8> {
        match (self, destination) {
            (SendProxy::V1, Some(d)) => proxy_header::build_v1(client, d),
            (SendProxy::V1, None) => b"PROXY UNKNOWN\r\n".to_vec(),
            (SendProxy::V2, Some(d)) => {
                proxy_header::build_v2(client, d, &[]).expect("a header without TLVs always fits")
            }
            (SendProxy::V2, None) => proxy_header::build_v2_unspec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::proxy_header::{parse, Parse};

    #[test]
    fn headers_parse_back() {
        let c: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let d: SocketAddr = "127.0.0.1:80".parse().unwrap();
        for v in [SendProxy::V1, SendProxy::V2] {
            let Parse::Complete { header, .. } = parse(&v.header(c, Some(d))) else {
                panic!()
            };
            assert_eq!(header.addresses, Some((c, d)));
            let Parse::Complete { header, .. } = parse(&v.header(c, None)) else {
                panic!()
            };
            assert_eq!(header.addresses, None);
        }
        assert_eq!(SendProxy::parse("v2"), Ok(SendProxy::V2));
        assert!(SendProxy::parse("v3").unwrap_err().contains("'v1' or 'v2'"));
    }
}
