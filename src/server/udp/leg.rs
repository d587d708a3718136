//! One socket of an association (quinn-udp state, batched receive, GSO send).

use super::*;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A socket with quinn-udp's per-socket state (GSO/GRO support, options set).
pub(super) struct Leg {
    pub(super) io: UdpSocket,
    pub(super) state: UdpSocketState,
}

impl Leg {
    pub(super) fn new(io: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&io))?;
        Ok(Leg { io, state })
    }

    pub(super) fn gso(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Receives up to `SLOTS` datagrams (batches) into `area` without waiting.
    pub(super) fn try_recv(&self, area: &mut [u8], metas: &mut [RecvMeta]) -> io::Result<usize> {
        let mut iovs: Vec<IoSliceMut<'_>> = area
            .chunks_mut(SLOT)
            .map(|c| IoSliceMut::new(&mut c[HEADROOM..]))
            .collect();
        self.io.try_io(Interest::READABLE, || {
            self.state
                .recv(UdpSockRef::from(&self.io), &mut iovs, metas)
        })
    }

    pub(super) async fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        let go = self.io.async_io(Interest::WRITABLE, || {
            self.state.try_send(UdpSockRef::from(&self.io), &t)
        });
        match tokio::time::timeout(SEND_WAIT, go).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "socket buffer full",
            )),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum LegId {
    Client,
    V4,
    V6,
    Upstream,
}

pub(super) async fn readable(leg: Option<&Leg>) -> io::Result<()> {
    match leg {
        Some(l) => l.io.readable().await,
        None => std::future::pending().await,
    }
}

pub(super) fn ok_leg(l: &Option<Result<Leg, ()>>) -> Option<&Leg> {
    l.as_ref().and_then(|r| r.as_ref().ok())
}

/// Errors a UDP receive reports for an earlier datagram (ICMP): not the socket's fault.
pub(super) fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) | Some(libc::EMSGSIZE)
    )
}
