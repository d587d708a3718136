//! A TCP connection that may carry TLS: the client side of a session (server TLS)
//! and the upstream leg of an egress source (client TLS).
//!
//! One concrete enum instead of boxed trait objects: the plain case stays a bare
//! `TcpStream`, so the relay can still splice(2) it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// In-memory client of the session fuzz target; never built otherwise.
    #[cfg(fuzzing)]
    Mem(tokio::io::DuplexStream),
}

/// Accepted from a client on a listener with `use_tls`.
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;
/// Connected to an upstream proxy with `socks5_proxy_tls`.
pub type UpstreamStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

impl ClientStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
            #[cfg(fuzzing)]
            MaybeTls::Mem(_) => unreachable!("an in-memory fuzzing stream has no socket"),
        }
    }
}

impl UpstreamStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
            #[cfg(fuzzing)]
            MaybeTls::Mem(_) => unreachable!("an in-memory fuzzing stream has no socket"),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(fuzzing)]
            MaybeTls::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(fuzzing)]
            MaybeTls::Mem(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(fuzzing)]
            MaybeTls::Mem(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(fuzzing)]
            MaybeTls::Mem(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
