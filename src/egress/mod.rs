//! Egress sources: how a connection leaves this host. Either directly (optionally
//! bound to a source address) or through a SOCKS5 proxy: TCP (optionally TLS) to
//! the proxy, greeting, RFC 1929 when credentials are set, KumoMTA's
//! BIND `<ip>:0` to pick the proxy's source address, then CONNECT.
//!
//! Everything here is async and Lua-free; `lua::egress` wraps it for Lua and the
//! listener uses it for upstream chaining. Failures are `EgressError`s whose text
//! names the hop that failed and whose `code` is the SOCKS5 reply a chained
//! listener sends its own client.

mod config;
mod connect;
pub mod haproxy;
mod socks5_client;
pub mod source;
mod tls;
/// UDP ASSOCIATE through an egress source (the client side of RFC 1928 §7).
pub mod udp;

pub use source::{
    split_host_port, target, ConfigError, Connected, EgressError, EgressSource, EgressStream,
    Proxy, ProxyTls, Settings, DEFAULT_CONNECT_TIMEOUT,
};

#[cfg(test)]
mod tests {

    use super::source::*;
    use crate::proto::socks5::{self, reply, Command, Reply, Request, TargetAddr};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn settings() -> Settings {
        Settings {
            name: "ip-1".into(),
            proxy_server: Some("127.0.0.1:1080".into()),
            ..Default::default()
        }
    }

    fn key_of(s: Settings) -> &'static str {
        EgressSource::new(s).unwrap_err().key
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("a.example:25"),
            Ok(("a.example".into(), 25))
        );
        assert_eq!(
            split_host_port("10.0.0.1:1080"),
            Ok(("10.0.0.1".into(), 1080))
        );
        assert_eq!(split_host_port("[::1]:1080"), Ok(("::1".into(), 1080)));
        assert!(split_host_port("::1:1080").is_err());
        assert!(split_host_port("host").is_err());
        assert!(split_host_port("host:0").is_err());
        assert!(split_host_port(":25").is_err());
        assert!(split_host_port("[nope]:25").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            target("10.0.0.1", 25),
            Ok(TargetAddr::Ip("10.0.0.1:25".parse().unwrap()))
        );
        assert_eq!(
            target("[::1]", 25),
            Ok(TargetAddr::Ip("[::1]:25".parse().unwrap()))
        );
        assert_eq!(
            target("mx.example", 25),
            Ok(TargetAddr::Domain("mx.example".into(), 25))
        );
        assert!(target("", 25).is_err());
        assert!(target(&"a".repeat(256), 25).is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut s = settings();
        s.username = Some(b"alice".to_vec());
        assert_eq!(key_of(s), "socks5_proxy_password");

        let mut s = settings();
        s.password = Some(b"pw".to_vec());
        assert_eq!(key_of(s), "socks5_proxy_username");

        let mut s = settings();
        s.username = Some(vec![b'u'; 256]);
        s.password = Some(b"pw".to_vec());
        assert_eq!(key_of(s), "socks5_proxy_username");

        // KumoMTA blames the username for a long password; we name the password.
        let mut s = settings();
        s.username = Some(b"alice".to_vec());
        s.password = Some(vec![b'p'; 256]);
        assert_eq!(key_of(s), "socks5_proxy_password");

        let mut s = settings();
        s.source_address = Some("::1".parse().unwrap());
        assert_eq!(key_of(s), "source_address");

        let mut s = settings();
        s.proxy_server = None;
        s.tls = Some(true);
        assert_eq!(key_of(s), "socks5_proxy_tls");

        let mut s = settings();
        s.tls_ca = Some("/nonexistent".into());
        assert_eq!(key_of(s), "socks5_proxy_tls_ca");

        let mut s = settings();
        s.tls = Some(true);
        s.tls_ca = Some("/nonexistent/ca.pem".into());
        assert_eq!(key_of(s), "socks5_proxy_tls_ca");

        let mut s = settings();
        s.proxy_server = Some("proxy".into());
        assert_eq!(key_of(s), "socks5_proxy_server");

        let mut s = settings();
        s.connect_timeout = Some(Duration::ZERO);
        assert_eq!(key_of(s), "connect_timeout");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let mut s = settings();
        s.username = Some(b"alice".to_vec());
        s.password = Some(b"hunter2-secret".to_vec());
        s.tls = Some(true);
        let src = EgressSource::new(s).unwrap();
        let dbg = format!("{src:?}");
        assert!(dbg.contains("alice"), "{dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    /// A scripted proxy: replies as given, records what the client sent.
    async fn scripted(replies: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(&replies).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut got)).await;
            got
        });
        (addr, h)
    }

    #[tokio::test]
    async fn reads_exactly_the_reply_and_leaves_the_banner() {
        // method NO_AUTH, CONNECT ok bound 10.1.2.3:4567, then an SMTP banner
        let mut replies = vec![5, 0];
        socks5::encode_reply(
            &Reply::success("10.1.2.3:4567".parse().unwrap()),
            &mut replies,
        );
        replies.extend_from_slice(b"220 hi\r\n");
        let (addr, server) = scripted(replies).await;
        let mut s = settings();
        s.proxy_server = Some(addr.to_string());
        let src = EgressSource::new(s).unwrap();
        let mut c = src
            .connect(&target("mx.example", 25).unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            c.proxy_bound,
            Some(TargetAddr::Ip("10.1.2.3:4567".parse().unwrap()))
        );
        let mut banner = [0u8; 8];
        c.stream.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"220 hi\r\n");
        drop(c);
        let sent = server.await.unwrap();
        let mut want = vec![5, 1, 0];
        socks5::encode_request(
            &Request {
                command: Command::Connect,
                target: TargetAddr::Domain("mx.example".into(), 25),
            },
            &mut want,
        );
        assert_eq!(sent, want);
    }

    #[tokio::test]
    async fn auth_bind_connect_and_errors_name_the_hop() {
        // userpass chosen, auth ok, BIND ok, CONNECT refused (0x05)
        let mut replies = vec![5, 2, 1, 0];
        socks5::encode_reply(
            &Reply::success("127.0.0.2:0".parse().unwrap()),
            &mut replies,
        );
        socks5::encode_reply(&Reply::failure(reply::CONNECTION_REFUSED), &mut replies);
        let (addr, server) = scripted(replies).await;
        let mut s = settings();
        s.proxy_server = Some(addr.to_string());
        s.proxy_source_address = Some("127.0.0.2".parse().unwrap());
        s.username = Some(b"alice".to_vec());
        s.password = Some(b"pw".to_vec());
        let src = EgressSource::new(s).unwrap();
        let e = src
            .connect(&target("10.9.9.9", 25).unwrap(), Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code, reply::CONNECTION_REFUSED);
        assert!(
            e.msg
                .starts_with("socks5: connection refused by destination (0x05)"),
            "{e}"
        );
        let sent = server.await.unwrap();
        let mut want = vec![5, 1, 2];
        socks5::encode_userpass(b"alice", b"pw", &mut want);
        for (command, t) in [
            (Command::Bind, "127.0.0.2:0"),
            (Command::Connect, "10.9.9.9:25"),
        ] {
            socks5::encode_request(
                &Request {
                    command,
                    target: TargetAddr::Ip(t.parse().unwrap()),
                },
                &mut want,
            );
        }
        assert_eq!(sent, want);
    }

    #[tokio::test]
    async fn auth_rejected_and_timeouts() {
        let (addr, _server) = scripted(vec![5, 2, 1, 1]).await;
        let mut s = settings();
        s.proxy_server = Some(addr.to_string());
        s.username = Some(b"alice".to_vec());
        s.password = Some(b"wrong".to_vec());
        let src = EgressSource::new(s).unwrap();
        let e = src
            .connect(&target("10.9.9.9", 25).unwrap(), Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(e.msg.starts_with("socks5 auth: rejected by proxy"), "{e}");
        assert!(!e.msg.contains("wrong"), "{e}");

        // A proxy that accepts and says nothing: the timeout names the step.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = settings();
        s.proxy_server = Some(l.local_addr().unwrap().to_string());
        let src = EgressSource::new(s).unwrap();
        let e = src
            .connect(&target("10.9.9.9", 25).unwrap(), Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(
            e.msg.contains("timeout in SOCKS5 handshake with proxy"),
            "{e}"
        );
        assert_eq!(e.code, reply::TTL_EXPIRED);
        drop(l);
    }
}
