//! Inbound PROXY protocol (listener `proxy_protocol = { from = {...} }`):
//! connections from the listed balancers must start with a v1 or v2 header
//! naming the original client; nobody else's bytes are ever read as one
//! (HAProxy's specification forbids guessing).
//!
//! The header is read with MSG_PEEK and then consumed exactly, never a byte
//! past it, so TLS, SOCKS5, HTTP or hyper start on an untouched stream and no
//! front-end needs to know a header was there.

use crate::host::net::within;
use crate::proto::proxy_header::{self, Command, Parse, ProxyHeader, SendProxy, Tlvs};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// `proxy_protocol = { from = { '10.0.0.0/8', '127.0.0.1' } }`.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Balancers whose connections must carry a header.
    pub from: Vec<IpNet>,
}

impl InboundConfig {
    /// Whether `peer` is a listed balancer (IPv4-mapped peers count as IPv4).
    pub fn expects_header(&self, peer: IpAddr) -> bool {
        let ip = peer.to_canonical();
        self.from.iter().any(|n| n.contains(&ip))
    }
}

/// Parses `from` entries: CIDRs or single addresses. Errors name the entry.
pub fn parse_from(entries: &[String]) -> Result<Vec<IpNet>, String> {
    if entries.is_empty() {
        return Err("must list at least one address or CIDR".into());
    }
    entries
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{}' is not an IP address or CIDR", s.escape_debug()))
        })
        .collect()
}

/// Who a connection is from once its header has been read.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The original client (the header's source), or the balancer itself for
    /// LOCAL (health checks) and headers without addresses.
    pub peer: SocketAddr,
    /// The balancer: the TCP peer of the connection.
    pub proxy_peer: SocketAddr,
    pub tlvs: Option<Arc<Tlvs>>,
    pub header: ProxyHeader,
}

impl Origin {
    pub fn new(balancer: SocketAddr, header: ProxyHeader) -> Self {
        let peer = match header.command {
            Command::Local => balancer,
            Command::Proxy => header.source().unwrap_or(balancer),
        };
        let tlvs = match header.version {
            proxy_header::Version::V2 => Some(Arc::new(header.tlvs.clone())),
            proxy_header::Version::V1 => None,
        };
        Origin {
            peer,
            proxy_peer: balancer,
            tlvs,
            header,
        }
    }

    /// "client 127.0.0.2:4000 via 127.0.0.1:5000 (PROXY v2)" for logs.
    pub fn describe(&self) -> String {
        match self.header.command {
            Command::Local => format!(
                "{} (PROXY {} LOCAL)",
                self.proxy_peer,
                self.header.version.as_str()
            ),
            Command::Proxy => format!(
                "{} via {} (PROXY {})",
                self.peer,
                self.proxy_peer,
                self.header.version.as_str()
            ),
        }
    }
}

/// For any listener: reads the header when `peer` is a listed balancer,
/// within `timeout` (or until `abort`). `Ok(None)`: not a balancer, nothing
/// was read.
pub async fn origin_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    config: Option<&InboundConfig>,
    timeout: Duration,
    abort: &CancellationToken,
) -> Result<Option<Origin>, String> {
    if !config.is_some_and(|c| c.expects_header(peer.ip())) {
        return Ok(None);
    }
    let read = within(
        timeout,
        format!("timeout after {timeout:?}"),
        read_header(stream),
    );
    let header = tokio::select! {
        r = read => r?,
        _ = abort.cancelled() => return Err("shutting down".into()),
    };
    Ok(Some(Origin::new(peer, header)))
}

/// Outbound (`send_proxy_protocol`): writes the header naming `client` ->
/// `destination` as the first bytes to a destination, within `timeout`.
pub async fn send_header(
    stream: &mut crate::egress::EgressStream,
    send: SendProxy,
    client: SocketAddr,
    destination: Option<SocketAddr>,
    timeout: Duration,
) -> Result<(), String> {
    let header = send.header(client, destination);
    let write = async {
        stream.write_all(&header).await?;
        stream.flush().await
    };
    within(
        timeout,
        format!("timeout sending the PROXY {} header", send.as_str()),
        async {
            write
                .await
                .map_err(|e| format!("sending the PROXY {} header: {e}", send.as_str()))
        },
    )
    .await
}

/// Reads the header at the start of `stream`, consuming exactly its bytes.
/// The caller bounds the wait (the listener's `timeout`). `Err` is a reason
/// for the log line, printable (see `proxy_header::Invalid`).
pub async fn read_header(stream: &mut TcpStream) -> Result<ProxyHeader, String> {
    // Most headers are 16 to ~100 bytes: peek a small window at a time (a
    // longer v2 header is consumed window by window, bounded by MAX_LEN).
    const WINDOW: usize = 512;
    let mut buf: Vec<u8> = Vec::with_capacity(WINDOW);
    loop {
        let have = buf.len();
        buf.resize(have + (proxy_header::MAX_LEN - have).min(WINDOW), 0);
        // Peeks what the kernel holds past the bytes consumed so far.
        let n = match stream.peek(&mut buf[have..]).await {
            Ok(n) => n,
            Err(e) => return Err(format!("reading the PROXY header: {e}")),
        };
        buf.truncate(have + n);
        if n == 0 {
            return Err(if have == 0 {
                "closed without sending a PROXY header".into()
            } else {
                format!("closed after {have} bytes of an incomplete PROXY header")
            });
        }
        let take = match proxy_header::parse(&buf) {
            Parse::Complete { header, consumed } => {
                consume(stream, consumed - have).await?;
                return Ok(header);
            }
            // All peeked bytes are header bytes: consume them and wait for more.
            Parse::NeedMore => n,
            Parse::Invalid(why) => return Err(why.to_string()),
        };
        consume(stream, take).await?;
    }
}

/// Discards `n` bytes already peeked (so they are in the socket buffer).
async fn consume(stream: &mut TcpStream, n: usize) -> Result<(), String> {
    let mut sink = [0u8; 256];
    let mut left = n;
    while left > 0 {
        let k = left.min(sink.len());
        stream
            .read_exact(&mut sink[..k])
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        left -= k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn header_then_payload_is_left_untouched() {
        let (mut c, mut s) = pair().await;
        let src: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:1080".parse().unwrap();
        let mut bytes = proxy_header::build_v2(src, dst, &[(0x05, b"id")]).unwrap();
        bytes.extend(b"\x05\x01\x00");
        c.write_all(&bytes).await.unwrap();
        let h = read_header(&mut s).await.unwrap();
        assert_eq!(h.source(), Some(src));
        let mut rest = [0u8; 3];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x05\x01\x00");
    }

    #[tokio::test]
    async fn header_longer_than_the_peek_window() {
        let (mut c, mut s) = pair().await;
        let src: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:1080".parse().unwrap();
        let pad = vec![7u8; 1500];
        let mut bytes = proxy_header::build_v2(src, dst, &[(0x04, &pad), (0x05, b"id")]).unwrap();
        bytes.extend(b"after");
        c.write_all(&bytes).await.unwrap();
        let h = read_header(&mut s).await.unwrap();
        assert_eq!(h.source(), Some(src));
        assert!(h.tlvs.get("unique_id").is_some());
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
    }

    #[tokio::test]
    async fn header_split_over_writes() {
        let (mut c, mut s) = pair().await;
        let bytes = b"PROXY TCP4 127.0.0.3 127.0.0.1 5 6\r\nGET";
        let reader = tokio::spawn(async move {
            let h = read_header(&mut s).await.unwrap();
            let mut rest = [0u8; 3];
            s.read_exact(&mut rest).await.unwrap();
            (h, rest)
        });
        for chunk in bytes.chunks(7) {
            c.write_all(chunk).await.unwrap();
            c.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (h, rest) = reader.await.unwrap();
        assert_eq!(h.source(), Some("127.0.0.3:5".parse().unwrap()));
        assert_eq!(&rest, b"GET");
    }

    #[tokio::test]
    async fn bad_and_missing_headers() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"\x05\x01\x00").await.unwrap();
        let e = read_header(&mut s).await.unwrap_err();
        assert!(e.contains("not a PROXY protocol header"), "{e}");

        let (mut c, mut s) = pair().await;
        c.write_all(b"PROXY TCP4 1.2").await.unwrap();
        drop(c);
        let e = read_header(&mut s).await.unwrap_err();
        assert!(e.contains("closed after 14 bytes"), "{e}");

        let (c, mut s) = pair().await;
        drop(c);
        let e = read_header(&mut s).await.unwrap_err();
        assert!(e.contains("without sending"), "{e}");
    }

    #[test]
    fn from_list_and_origin() {
        let from = parse_from(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let cfg = InboundConfig { from };
        assert!(cfg.expects_header("10.1.2.3".parse().unwrap()));
        assert!(cfg.expects_header("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!cfg.expects_header("127.0.0.2".parse().unwrap()));
        assert!(parse_from(&["nope".into()]).unwrap_err().contains("'nope'"));
        assert!(parse_from(&[]).is_err());

        let lb: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let Parse::Complete { header, .. } = proxy_header::parse(&proxy_header::build_v2_local())
        else {
            panic!()
        };
        let o = Origin::new(lb, header);
        assert_eq!((o.peer, o.proxy_peer), (lb, lb));
        assert!(o.tlvs.is_some());
        assert!(o.describe().contains("LOCAL"));
    }
}
