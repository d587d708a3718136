//! The client side: TCP (or TLS) to the proxy, SOCKS5 greeting, optional RFC 1929,
//! CONNECT to an IPv4/IPv6 target. With no proxy: straight to the target.

use crate::args::Args;
use crate::Res;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub struct Config {
    pub proxy: Option<SocketAddr>,
    pub target: SocketAddr,
    pub auth: Option<(String, String)>,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `--proxy-v2`: start each connection with a PROXY v2 header naming
    /// 127.0.0.2 as the client, as a load balancer in front would.
    pub proxy_v2: bool,
}

/// PROXY v2, PROXY command, TCP over IPv4: 127.0.0.2:<our port> -> `proxy`.
fn proxy_v2_header(local: SocketAddr, proxy: SocketAddr) -> Res<Vec<u8>> {
    let SocketAddr::V4(dst) = proxy else {
        return Err("--proxy-v2 needs an IPv4 proxy".into());
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&[127, 0, 0, 2]);
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&local.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    Ok(h)
}

impl Config {
    pub fn from_args(a: &Args) -> Res<Self> {
        let proxy = a.get("proxy").map(|p| p.parse()).transpose()?;
        let target = a.req("target")?.parse()?;
        let auth = match (a.get("user"), a.get("pass")) {
            (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
            (None, None) => None,
            _ => return Err("--user and --pass go together".into()),
        };
        let tls = match a.get("tls-ca") {
            None => None,
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)? {
                    roots.add(c?)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                if a.flag("tls-no-resume") {
                    cfg.resumption = rustls::client::Resumption::disabled();
                }
                let name =
                    ServerName::try_from(a.get("tls-name").unwrap_or("localhost"))?.to_owned();
                Some((TlsConnector::from(Arc::new(cfg)), name))
            }
        };
        Ok(Config {
            proxy,
            target,
            auth,
            tls,
            proxy_v2: a.flag("proxy-v2"),
        })
    }

    /// A stream whose next byte reaches the target.
    pub async fn open(&self) -> Res<Conn> {
        let Some(proxy) = self.proxy else {
            let s = TcpStream::connect(self.target).await?;
            s.set_nodelay(true)?;
            return Ok(Conn::Plain(s));
        };
        let mut s = TcpStream::connect(proxy).await?;
        s.set_nodelay(true)?;
        if self.proxy_v2 {
            s.write_all(&proxy_v2_header(s.local_addr()?, proxy)?)
                .await?;
        }
        let mut c = match &self.tls {
            None => Conn::Plain(s),
            Some((connector, name)) => {
                Conn::Tls(Box::new(connector.connect(name.clone(), s).await?))
            }
        };
        self.handshake(&mut c).await?;
        Ok(c)
    }

    async fn handshake(&self, c: &mut Conn) -> Res<()> {
        let method = if self.auth.is_some() { 2 } else { 0 };
        c.write_all(&[5, 1, method]).await?;
        c.flush().await?;
        let mut sel = [0u8; 2];
        c.read_exact(&mut sel).await?;
        if sel != [5, method] {
            return Err(format!("proxy chose method {sel:?}, wanted {method}").into());
        }
        if let Some((u, p)) = &self.auth {
            let mut m = vec![1, u.len() as u8];
            m.extend_from_slice(u.as_bytes());
            m.push(p.len() as u8);
            m.extend_from_slice(p.as_bytes());
            c.write_all(&m).await?;
            c.flush().await?;
            let mut st = [0u8; 2];
            c.read_exact(&mut st).await?;
            if st[1] != 0 {
                return Err("RFC 1929 authentication refused".into());
            }
        }
        let mut req = vec![5, 1, 0];
        match self.target {
            SocketAddr::V4(a) => {
                req.push(1);
                req.extend_from_slice(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                req.push(4);
                req.extend_from_slice(&a.ip().octets());
            }
        }
        req.extend_from_slice(&self.target.port().to_be_bytes());
        c.write_all(&req).await?;
        c.flush().await?;
        let mut head = [0u8; 4];
        c.read_exact(&mut head).await?;
        if head[1] != 0 {
            return Err(format!("CONNECT refused: reply {}", head[1]).into());
        }
        let rest = match head[3] {
            1 => 4 + 2,
            4 => 16 + 2,
            3 => {
                let mut l = [0u8; 1];
                c.read_exact(&mut l).await?;
                l[0] as usize + 2
            }
            t => return Err(format!("bad ATYP {t} in reply").into()),
        };
        let mut skip = [0u8; 258];
        c.read_exact(&mut skip[..rest]).await?;
        Ok(())
    }
}

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, b),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
