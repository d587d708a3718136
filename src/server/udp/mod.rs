//! The UDP ASSOCIATE relay (RFC 1928 §7): one task per association, moving
//! datagrams between the client and the destinations it names.
//!
//! The session does the TCP part (authentication, policy, the reply) and hands
//! this engine: the control connection's peer IP, the client's UDP port when
//! the request named one, a relay socket bound on the local address the client
//! connected to, a `UdpPolicy` (permissions and the private-destination rule)
//! and a cancellation token it fires when the control connection closes.
//!
//! Security model, per datagram:
//! - from the client leg, only the control peer's IP is accepted, and only one
//!   port (the request's DST.PORT, or else the first datagram's): a third party
//!   cannot inject into, or steal, an association;
//! - the header goes through the pure codec; fragments (FRAG != 0) and bad
//!   headers are dropped and counted;
//! - the destination is checked by the policy; names are resolved here with a
//!   small cache of verdicts, so a flood costs neither one DNS lookup nor one
//!   policy evaluation per datagram, and the checked address is the one used;
//! - replies are relayed only from IPs the client has sent to (address-
//!   restricted filtering, RFC 4787) unless the filter is endpoint-independent;
//! - nothing is ever truncated: receive buffers hold the largest UDP payload,
//!   and a datagram the path cannot carry (EMSGSIZE: fragmentation is off on
//!   our sockets) is dropped and counted.
//!
//! Speed: quinn-udp does the system calls: recvmmsg (up to `SLOTS` datagrams a
//! call), GRO on receive, and GSO on send, which sends a run of same-sized
//! datagrams to one destination in a single sendmsg. Without GSO, a datagram
//! goes out from where it was received: the reply header is written in front
//! of the payload in the receive buffer (headroom), no copy.

mod config;
mod counters;
mod leg;
mod limited;
mod relay;
mod send;
#[cfg(test)]
mod tests;
mod verdicts;

pub use crate::host::udp::bind_udp;
use crate::policy::limits::{Cut, SessionLimits};
use crate::server::sessions::Bytes;
pub use config::{UdpFilter, UdpListenerConfig, UdpPolicy, DEFAULT_IDLE_TIMEOUT};
pub use counters::{AssociationSlot, DropReason, UdpCounters};
use relay::Relay;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Datagrams received per system call.
const SLOTS: usize = 8;
/// Room in front of each receive slot for the reply header (IPv6: 22 bytes).
const HEADROOM: usize = 24;
/// The largest UDP payload (IPv6 without jumbograms): a slot holds any datagram,
/// or a GRO batch (the kernel keeps those within 64 KiB), so none is truncated.
const MAX_DATAGRAM: usize = 65_536;
const SLOT: usize = HEADROOM + MAX_DATAGRAM;
/// GSO only for segments every path carries (IPv6 minimum MTU 1280 - 48): above
/// that the kernel refuses a segment larger than the MTU instead of saying EMSGSIZE.
const GSO_MAX_SEGMENT: usize = 1232;
/// Destinations whose verdict is remembered, and for how long.
const VERDICTS: usize = 256;
const VERDICT_TTL: Duration = Duration::from_secs(30);
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Peers a client may receive from under address-restricted filtering.
const MAX_PEERS: usize = 1024;
/// The receive area is released after this long without a relayed datagram.
const RELEASE_AFTER: Duration = Duration::from_secs(2);
/// A send that cannot go within this long is dropped (the socket buffer stays full).
const SEND_WAIT: Duration = Duration::from_secs(1);
/// The remote leg: direct sockets, or an upstream SOCKS5 server's UDP relay.
pub enum Outbound {
    /// One socket per family, created on first use, bound to the unspecified
    /// address; with a `source`, only its family, bound to it (as for CONNECT:
    /// a chosen source address is never silently replaced by another).
    Direct { source: Option<IpAddr> },
    /// Datagrams keep their SOCKS5 header and go to `relay` (the address the
    /// upstream's UDP ASSOCIATE reply gave) from `socket`; the upstream resolves
    /// names. The session keeps the upstream control connection open and
    /// cancels this association when it closes.
    Upstream {
        relay: SocketAddr,
        socket: UdpSocket,
    },
}

pub struct UdpAssociation {
    /// For log lines: who and where, e.g. `udp 127.0.0.1:40000 (alice)`.
    pub label: String,
    /// The control connection's peer IP.
    pub client_ip: IpAddr,
    /// The request's DST.PORT when non-zero; else the first datagram's port is kept.
    pub client_port: Option<u16>,
    /// Bound on the local address the client connected to.
    pub socket: UdpSocket,
    pub outbound: Outbound,
    pub policy: Arc<dyn UdpPolicy>,
    pub filter: UdpFilter,
    pub idle_timeout: Duration,
    /// Bound on one name lookup (a miss stalls this association only).
    pub resolve_timeout: Duration,
    pub counters: Arc<UdpCounters>,
    /// Fired when the control connection closes or at shutdown.
    pub cancel: CancellationToken,
    /// The identity's limits (issue 14), held for the association's lifetime:
    /// datagram bytes are counted, shaped (over the rate: dropped) and metered.
    pub limits: Option<Arc<SessionLimits>>,
    /// The association's payload bytes each way (live sessions, access log).
    pub bytes: Arc<Bytes>,
}

/// Why an association ended.
#[derive(Debug)]
pub enum Ended {
    Cancelled,
    Idle,
    Error(io::Error),
    /// The identity's quota ran out.
    Cut(Cut),
}

/// Releases the `associations_active` slot however the task ends.
struct ActiveGuard(Arc<UdpCounters>);

impl std::ops::Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.associations_active.fetch_sub(1, Relaxed);
    }
}

impl UdpAssociation {
    /// Relays until cancelled, idle, or the client socket fails. Sockets close on return.
    pub async fn run(self) -> Ended {
        let counters = self.counters.clone();
        counters.associations_total.fetch_add(1, Relaxed);
        counters.associations_active.fetch_add(1, Relaxed);
        let _active = ActiveGuard(counters);
        let mut r = match Relay::new(self) {
            Ok(r) => r,
            Err(e) => return Ended::Error(e),
        };
        let ended = r.run().await;
        tracing::debug!("{}: association ended: {ended:?}", r.a.label);
        ended
    }
}
