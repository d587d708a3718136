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

pub use crate::host::udp::bind_udp;
use crate::policy::permissions::canonical;
use crate::proto::socks5::TargetAddr;
use crate::proto::socks5_udp::{self, UdpHeaderError, MAX_IP_HEADER};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
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

/// Why a datagram was dropped: one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// From an address other than the client's, on the client leg (or not from
    /// the upstream relay, on an upstream leg).
    ForeignSource,
    /// FRAG != 0.
    Fragmented,
    /// Truncated header, bad address type or domain name.
    Malformed,
    /// The policy refused the destination, or its name did not resolve.
    Denied,
    /// A reply from an address the client has not sent to (address-restricted filtering).
    Unsolicited,
    /// Larger than the path (or the client's leg, once wrapped) can carry.
    Oversize,
    /// No socket for the destination's address family, or a failed send.
    SendError,
}

/// Live counters of a listener's UDP relay (all associations), lock-free.
#[derive(Debug, Default)]
pub struct UdpCounters {
    pub associations_active: AtomicU64,
    pub associations_total: AtomicU64,
    pub datagrams_to_remote: AtomicU64,
    pub bytes_to_remote: AtomicU64,
    pub datagrams_to_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub dropped_foreign_source: AtomicU64,
    pub dropped_fragmented: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_denied: AtomicU64,
    pub dropped_unsolicited: AtomicU64,
    pub dropped_oversize: AtomicU64,
    pub dropped_send_error: AtomicU64,
    /// Name lookups done (cache misses): a check that floods do not cause lookups.
    pub dns_lookups: AtomicU64,
    /// Refused at `max_udp_associations`.
    pub associations_refused: AtomicU64,
    /// Slots held by sessions (see `claim`), from the request to the end.
    claimed: AtomicU64,
}

impl UdpCounters {
    fn counter(&self, d: DropReason) -> &AtomicU64 {
        match d {
            DropReason::ForeignSource => &self.dropped_foreign_source,
            DropReason::Fragmented => &self.dropped_fragmented,
            DropReason::Malformed => &self.dropped_malformed,
            DropReason::Denied => &self.dropped_denied,
            DropReason::Unsolicited => &self.dropped_unsolicited,
            DropReason::Oversize => &self.dropped_oversize,
            DropReason::SendError => &self.dropped_send_error,
        }
    }

    pub fn dropped(&self, d: DropReason) -> u64 {
        self.counter(d).load(Relaxed)
    }

    fn add_drop(&self, d: DropReason, n: u64) {
        self.counter(d).fetch_add(n, Relaxed);
    }

    /// `(name, value)` pairs for `stats()` and metrics; drops as `udp_dropped_<reason>`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let l = |c: &AtomicU64| c.load(Relaxed);
        vec![
            ("udp_associations_active", l(&self.associations_active)),
            ("udp_associations_total", l(&self.associations_total)),
            ("udp_associations_refused", l(&self.associations_refused)),
            ("udp_datagrams_to_remote", l(&self.datagrams_to_remote)),
            ("udp_bytes_to_remote", l(&self.bytes_to_remote)),
            ("udp_datagrams_to_client", l(&self.datagrams_to_client)),
            ("udp_bytes_to_client", l(&self.bytes_to_client)),
            (
                "udp_dropped_foreign_source",
                l(&self.dropped_foreign_source),
            ),
            ("udp_dropped_fragmented", l(&self.dropped_fragmented)),
            ("udp_dropped_malformed", l(&self.dropped_malformed)),
            ("udp_dropped_denied", l(&self.dropped_denied)),
            ("udp_dropped_unsolicited", l(&self.dropped_unsolicited)),
            ("udp_dropped_oversize", l(&self.dropped_oversize)),
            ("udp_dropped_send_error", l(&self.dropped_send_error)),
            ("udp_dns_lookups", l(&self.dns_lookups)),
        ]
    }
}

/// A listener's `udp*` parameters; the listener has none without `udp = true`.
#[derive(Debug, Clone)]
pub struct UdpListenerConfig {
    /// Put in the reply instead of the relay socket's address (NAT, DNAT).
    pub advertise_address: Option<IpAddr>,
    pub idle_timeout: Duration,
    pub filter: UdpFilter,
    pub max_associations: Option<u64>,
}

pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for UdpListenerConfig {
    fn default() -> Self {
        UdpListenerConfig {
            advertise_address: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            filter: UdpFilter::AddressRestricted,
            max_associations: None,
        }
    }
}

/// One of a listener's `max_udp_associations` slots, held by a session.
pub struct AssociationSlot(Arc<UdpCounters>);

impl std::ops::Drop for AssociationSlot {
    fn drop(&mut self) {
        self.0.claimed.fetch_sub(1, Relaxed);
    }
}

impl UdpCounters {
    /// A slot under `max`, or `None` (counted in `udp_associations_refused`).
    /// Taken before the relay socket is opened, so the bound holds for fds too.
    pub fn claim(self: &Arc<Self>, max: Option<u64>) -> Option<AssociationSlot> {
        let limit = max.unwrap_or(u64::MAX);
        let r = self
            .claimed
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1));
        match r {
            Ok(_) => Some(AssociationSlot(self.clone())),
            Err(_) => {
                self.associations_refused.fetch_add(1, Relaxed);
                None
            }
        }
    }
}

/// The session's rules for destinations (listener and identity permissions,
/// private-destination rule). Called on cache misses only.
pub trait UdpPolicy: Send + Sync + 'static {
    /// A reason when the name (or IP text) and port are refused before any lookup.
    fn denies_name(&self, host: &str, port: u16) -> Option<String>;
    /// Every resolved address of `host` must pass.
    fn check(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Result<(), String>;
}

/// Which replies reach the client (RFC 4787 filtering behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UdpFilter {
    /// Only from IPs the client has sent to.
    #[default]
    AddressRestricted,
    /// From anyone who learnt the relay's outbound port.
    EndpointIndependent,
}

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
}

/// Why an association ended.
#[derive(Debug)]
pub enum Ended {
    Cancelled,
    Idle,
    Error(io::Error),
}

/// A socket with quinn-udp's per-socket state (GSO/GRO support, options set).
struct Leg {
    io: UdpSocket,
    state: UdpSocketState,
}

impl Leg {
    fn new(io: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&io))?;
        Ok(Leg { io, state })
    }

    fn gso(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Receives up to `SLOTS` datagrams (batches) into `area` without waiting.
    fn try_recv(&self, area: &mut [u8], metas: &mut [RecvMeta]) -> io::Result<usize> {
        let mut iovs: Vec<IoSliceMut<'_>> = area
            .chunks_mut(SLOT)
            .map(|c| IoSliceMut::new(&mut c[HEADROOM..]))
            .collect();
        self.io.try_io(Interest::READABLE, || {
            self.state
                .recv(UdpSockRef::from(&self.io), &mut iovs, metas)
        })
    }

    async fn send(
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
enum LegId {
    Client,
    V4,
    V6,
    Upstream,
}

/// One datagram ready to go: `area[start..end]` (or `extra[..]` when `extra`).
struct Pending {
    leg: LegId,
    to: SocketAddr,
    start: usize,
    end: usize,
    extra: bool,
    /// Payload bytes, for the byte counters (the header is not counted).
    payload: usize,
}

type Verdict = Result<SocketAddr, DropReason>;

/// Verdict cache key (`TargetAddr` without the allocation of a name for IPs).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(SocketAddr),
    Name(String, u16),
}

impl Key {
    fn of(t: &TargetAddr) -> Key {
        match t {
            TargetAddr::Ip(a) => Key::Ip(*a),
            TargetAddr::Domain(n, p) => Key::Name(n.clone(), *p),
        }
    }
}

/// The association's settings, as the relay keeps them.
struct Cfg {
    label: String,
    client_ip: IpAddr,
    /// `Some(source)` for direct outbound sockets; `None` through an upstream.
    direct: Option<Option<IpAddr>>,
    policy: Arc<dyn UdpPolicy>,
    filter: UdpFilter,
    idle_timeout: Duration,
    resolve_timeout: Duration,
    counters: Arc<UdpCounters>,
    cancel: CancellationToken,
}

struct Relay {
    a: Cfg,
    client: Leg,
    client_port: Option<u16>,
    v4: Option<Result<Leg, ()>>,
    v6: Option<Result<Leg, ()>>,
    upstream: Option<(SocketAddr, Leg)>,
    verdicts: HashMap<Key, (Verdict, Instant)>,
    /// Address-restricted filtering: IPs the client sent to, with the last time.
    peers: HashMap<IpAddr, Instant>,
    area: Box<[u8]>,
    metas: [RecvMeta; SLOTS],
    /// Datagrams that cannot be wrapped in place (GRO segments after the first).
    extra: Vec<Vec<u8>>,
    pending: Vec<Pending>,
    gso_buf: Vec<u8>,
    last_activity: Instant,
    /// DropReason reasons already logged for this association (log once, count all).
    logged: u8,
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

async fn readable(leg: Option<&Leg>) -> io::Result<()> {
    match leg {
        Some(l) => l.io.readable().await,
        None => std::future::pending().await,
    }
}

fn ok_leg(l: &Option<Result<Leg, ()>>) -> Option<&Leg> {
    l.as_ref().and_then(|r| r.as_ref().ok())
}

/// Errors a UDP receive reports for an earlier datagram (ICMP): not the socket's fault.
fn transient(e: &io::Error) -> bool {
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

impl Relay {
    fn new(a: UdpAssociation) -> io::Result<Self> {
        let UdpAssociation {
            label,
            client_ip,
            client_port,
            socket,
            outbound,
            policy,
            filter,
            idle_timeout,
            resolve_timeout,
            counters,
            cancel,
        } = a;
        let (direct, upstream) = match outbound {
            Outbound::Direct { source } => (Some(source), None),
            Outbound::Upstream { relay, socket } => (None, Some((relay, Leg::new(socket)?))),
        };
        Ok(Relay {
            a: Cfg {
                label,
                // A v4-mapped peer (dual-stack listener) is an IPv4 client: the
                // relay socket is IPv4 then, and replies go to the plain address.
                client_ip: canonical(client_ip),
                direct,
                policy,
                filter,
                idle_timeout,
                resolve_timeout,
                counters,
                cancel,
            },
            client: Leg::new(socket)?,
            client_port,
            v4: None,
            v6: None,
            upstream,
            verdicts: HashMap::new(),
            peers: HashMap::new(),
            // Allocated on the first datagram, released when quiet (see `run`).
            area: Box::default(),
            metas: [RecvMeta::default(); SLOTS],
            extra: Vec::new(),
            pending: Vec::new(),
            gso_buf: Vec::new(),
            last_activity: Instant::now(),
            logged: 0,
        })
    }

    fn log_drop(&mut self, d: DropReason, n: u64, why: impl FnOnce() -> String) {
        self.a.counters.add_drop(d, n);
        let bit = 1u8 << (d as u8);
        if self.logged & bit == 0 {
            self.logged |= bit;
            // Once per reason and association: a flood must not flood the log.
            // `why` texts are escaped (`{:?}` of client-chosen strings).
            tracing::info!(
                "{}: dropped datagram ({d:?}): {} (further drops of this kind are only counted)",
                self.a.label,
                why()
            );
        }
    }

    async fn run(&mut self) -> Ended {
        let cancel = self.a.cancel.clone();
        let idle = self.a.idle_timeout;
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        let release = tokio::time::sleep(RELEASE_AFTER);
        tokio::pin!(release);
        loop {
            let which = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ended::Cancelled,
                _ = &mut release, if !self.area.is_empty() => {
                    // Quiet for a while: give the receive area (512 KiB) back, so
                    // idle associations cost their sockets and little else.
                    let at = self.last_activity + RELEASE_AFTER;
                    let next = if Instant::now() >= at {
                        self.area = Box::default();
                        self.gso_buf = Vec::new();
                        Instant::now() + RELEASE_AFTER
                    } else {
                        at
                    };
                    release.as_mut().reset(tokio::time::Instant::from_std(next));
                    continue;
                }
                _ = &mut timer => {
                    let deadline = self.last_activity + idle;
                    if Instant::now() >= deadline {
                        return Ended::Idle;
                    }
                    timer.as_mut().reset(tokio::time::Instant::from_std(deadline));
                    continue;
                }
                r = self.client.io.readable() => (LegId::Client, r),
                r = readable(ok_leg(&self.v4)) => (LegId::V4, r),
                r = readable(ok_leg(&self.v6)) => (LegId::V6, r),
                r = readable(self.upstream.as_ref().map(|u| &u.1)) => (LegId::Upstream, r),
            };
            if let (_, Err(e)) = which {
                return Ended::Error(e);
            }
            if let Err(e) = self.service(which.0).await {
                if which.0 == LegId::Client {
                    return Ended::Error(e);
                }
                tracing::warn!("{}: remote leg failed: {e}", self.a.label);
                match which.0 {
                    LegId::V4 => self.v4 = Some(Err(())),
                    LegId::V6 => self.v6 = Some(Err(())),
                    _ => return Ended::Error(e),
                }
            }
        }
    }

    fn leg(&self, id: LegId) -> Option<&Leg> {
        match id {
            LegId::Client => Some(&self.client),
            LegId::V4 => ok_leg(&self.v4),
            LegId::V6 => ok_leg(&self.v6),
            LegId::Upstream => self.upstream.as_ref().map(|u| &u.1),
        }
    }

    /// Drains what `id` has ready (bounded, so other legs get their turn).
    async fn service(&mut self, id: LegId) -> io::Result<()> {
        for _ in 0..8 {
            // Field by field, so the leg and the buffers are borrowed apart.
            let leg = match id {
                LegId::Client => Some(&self.client),
                LegId::V4 => ok_leg(&self.v4),
                LegId::V6 => ok_leg(&self.v6),
                LegId::Upstream => self.upstream.as_ref().map(|u| &u.1),
            };
            let leg = leg.expect("readable leg exists");
            if self.area.is_empty() {
                self.area = vec![0u8; SLOTS * SLOT].into_boxed_slice();
            }
            let n = match leg.try_recv(&mut self.area, &mut self.metas) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(e),
            };
            self.pending.clear();
            self.extra.clear();
            for i in 0..n {
                let m = self.metas[i];
                let base = i * SLOT + HEADROOM;
                let stride = if m.stride == 0 { m.len } else { m.stride };
                let mut off = 0;
                while off < m.len {
                    let len = stride.min(m.len - off);
                    let (s, e) = (base + off, base + off + len);
                    match id {
                        LegId::Client => self.on_client(m.addr, s, e).await,
                        _ => self.on_remote(id, m.addr, s, e, off == 0),
                    }
                    off += len;
                }
            }
            // Only relayed datagrams keep an association alive: a stranger
            // sending to the relay port must not hold it open.
            if !self.pending.is_empty() {
                self.last_activity = Instant::now();
            }
            self.flush().await;
            if n < SLOTS {
                return Ok(());
            }
        }
        Ok(())
    }

    fn client_addr(&self) -> Option<SocketAddr> {
        self.client_port
            .map(|p| SocketAddr::new(self.a.client_ip, p))
    }

    fn is_client(&mut self, from: SocketAddr) -> bool {
        if canonical(from.ip()) != canonical(self.a.client_ip) {
            return false;
        }
        match self.client_port {
            Some(p) => p == from.port(),
            None => {
                // Locked to the first datagram's port.
                self.client_port = Some(from.port());
                true
            }
        }
    }

    async fn on_client(&mut self, from: SocketAddr, s: usize, e: usize) {
        if !self.is_client(from) {
            return self.log_drop(DropReason::ForeignSource, 1, || {
                format!("from {from}, not the client")
            });
        }
        let (target, hlen) = match socks5_udp::parse(&self.area[s..e]) {
            Ok(v) => v,
            Err(err) => {
                let d = match err {
                    UdpHeaderError::Fragmented(_) => DropReason::Fragmented,
                    _ => DropReason::Malformed,
                };
                return self.log_drop(d, 1, || err.to_string());
            }
        };
        let payload = e - s - hlen;
        if let Some((relay, _)) = &self.upstream {
            let relay = *relay;
            if let Err(d) = self.check_unresolved(&target) {
                return self.log_drop(d, 1, || format!("to {:?} refused", target.to_string()));
            }
            if let TargetAddr::Ip(a) = &target {
                self.remember_peer(a.ip());
            }
            // The client's header is a SOCKS5 UDP header already: forward as is.
            self.area[s] = 0;
            self.area[s + 1] = 0;
            self.pending.push(Pending {
                leg: LegId::Upstream,
                to: relay,
                start: s,
                end: e,
                extra: false,
                payload,
            });
            return;
        }
        let to = match self.destination(&target).await {
            Ok(a) => a,
            Err(d) => {
                return self.log_drop(d, 1, || format!("to {:?} refused", target.to_string()))
            }
        };
        let leg = if to.is_ipv4() { LegId::V4 } else { LegId::V6 };
        if self.open_leg(leg).is_none() {
            return self.log_drop(DropReason::SendError, 1, || {
                format!(
                    "no usable {} socket for {to}",
                    if to.is_ipv4() { "IPv4" } else { "IPv6" }
                )
            });
        }
        self.remember_peer(to.ip());
        self.pending.push(Pending {
            leg,
            to,
            start: s + hlen,
            end: e,
            extra: false,
            payload,
        });
    }

    fn on_remote(&mut self, id: LegId, from: SocketAddr, s: usize, e: usize, first: bool) {
        let Some(client) = self.client_addr() else {
            // Only reachable if a remote guesses our port before the client sent
            // anything (no port known yet): nobody to deliver to.
            return self.log_drop(DropReason::Unsolicited, 1, || {
                format!("from {from} before the client")
            });
        };
        if id == LegId::Upstream {
            return self.on_upstream(client, from, s, e);
        }
        let from = SocketAddr::new(canonical(from.ip()), from.port());
        if !self.allowed_peer(from.ip()) {
            return self.log_drop(DropReason::Unsolicited, 1, || {
                format!("from {from}, which the client has not sent to")
            });
        }
        let payload = e - s;
        let target = TargetAddr::Ip(from);
        if first {
            // In place: the slot has headroom in front of its first datagram.
            let start = socks5_udp::write_header_before(&mut self.area, s, &target)
                .expect("headroom fits an IP header");
            self.pending.push(Pending {
                leg: LegId::Client,
                to: client,
                start,
                end: e,
                extra: false,
                payload,
            });
        } else {
            let mut v = Vec::with_capacity(MAX_IP_HEADER + payload);
            socks5_udp::encode_header(&target, &mut v);
            v.extend_from_slice(&self.area[s..e]);
            self.extra.push(v);
            self.pending.push(Pending {
                leg: LegId::Client,
                to: client,
                start: self.extra.len() - 1,
                end: 0,
                extra: true,
                payload,
            });
        }
    }

    fn on_upstream(&mut self, client: SocketAddr, from: SocketAddr, s: usize, e: usize) {
        let relay = self.upstream.as_ref().map(|u| u.0).expect("upstream leg");
        if canonical(from.ip()) != canonical(relay.ip()) || from.port() != relay.port() {
            return self.log_drop(DropReason::ForeignSource, 1, || {
                format!("from {from}, not the upstream relay {relay}")
            });
        }
        let (sender, hlen) = match socks5_udp::parse(&self.area[s..e]) {
            Ok(v) => v,
            Err(err) => {
                let d = match err {
                    UdpHeaderError::Fragmented(_) => DropReason::Fragmented,
                    _ => DropReason::Malformed,
                };
                return self.log_drop(d, 1, || format!("from the upstream relay: {err}"));
            }
        };
        if let TargetAddr::Ip(a) = &sender {
            if !self.allowed_peer(canonical(a.ip())) {
                return self.log_drop(DropReason::Unsolicited, 1, || {
                    format!("from {a} (via the upstream), which the client has not sent to")
                });
            }
        }
        self.area[s] = 0;
        self.area[s + 1] = 0;
        self.pending.push(Pending {
            leg: LegId::Client,
            to: client,
            start: s,
            end: e,
            extra: false,
            payload: e - s - hlen,
        });
    }

    fn remember_peer(&mut self, ip: IpAddr) {
        if self.a.filter == UdpFilter::EndpointIndependent {
            return;
        }
        let ip = canonical(ip);
        let now = Instant::now();
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&ip) {
            let idle = self.a.idle_timeout;
            self.peers.retain(|_, t| now.duration_since(*t) < idle);
            if self.peers.len() >= MAX_PEERS {
                // Still full of live peers: forget the oldest half, which may then
                // see their replies dropped; the bound is what keeps memory fixed.
                let mut ts: Vec<Instant> = self.peers.values().copied().collect();
                ts.sort_unstable();
                let cut = ts[ts.len() / 2];
                self.peers.retain(|_, t| *t > cut);
            }
        }
        self.peers.insert(ip, now);
    }

    fn allowed_peer(&self, ip: IpAddr) -> bool {
        self.a.filter == UdpFilter::EndpointIndependent || self.peers.contains_key(&ip)
    }

    /// Through an upstream (it resolves names): the name, and an IP, only.
    fn check_unresolved(&mut self, target: &TargetAddr) -> Result<(), DropReason> {
        let now = Instant::now();
        if let Some((v, t)) = self.verdicts.get(&Key::of(target)) {
            if *t > now {
                return v.map(|_| ());
            }
        }
        let (host, port) = (target.host(), target.port());
        let v = match self.a.policy.denies_name(&host, port) {
            Some(why) => Err(why),
            None => match target {
                TargetAddr::Ip(a) => self.a.policy.check(&host, port, &[a.ip()]),
                TargetAddr::Domain(..) => Ok(()),
            },
        };
        let verdict = match v {
            Ok(()) => Ok(SocketAddr::from(([0, 0, 0, 0], 0))),
            Err(why) => {
                tracing::debug!("{}: {target}: {why}", self.a.label);
                Err(DropReason::Denied)
            }
        };
        self.cache(target, verdict);
        verdict.map(|_| ())
    }

    fn cache(&mut self, target: &TargetAddr, v: Verdict) {
        if self.verdicts.len() >= VERDICTS {
            let now = Instant::now();
            self.verdicts.retain(|_, (_, t)| *t > now);
            if self.verdicts.len() >= VERDICTS {
                self.verdicts.clear();
            }
        }
        let ttl = if v.is_ok() { VERDICT_TTL } else { NEGATIVE_TTL };
        self.verdicts
            .insert(Key::of(target), (v, Instant::now() + ttl));
    }

    /// The checked address to send to: from the cache, or resolved and checked now.
    async fn destination(&mut self, target: &TargetAddr) -> Verdict {
        if let Some((v, t)) = self.verdicts.get(&Key::of(target)) {
            if *t > Instant::now() {
                return *v;
            }
        }
        let v = self.decide(target).await;
        self.cache(target, v);
        v
    }

    async fn decide(&mut self, target: &TargetAddr) -> Verdict {
        let (host, port) = (target.host(), target.port());
        let label = &self.a.label;
        if let Some(why) = self.a.policy.denies_name(&host, port) {
            tracing::debug!("{label}: {target}: {why}");
            return Err(DropReason::Denied);
        }
        let addrs: Vec<SocketAddr> = match target {
            TargetAddr::Ip(a) => vec![SocketAddr::new(canonical(a.ip()), a.port())],
            TargetAddr::Domain(name, port) => {
                self.a.counters.dns_lookups.fetch_add(1, Relaxed);
                let lookup = tokio::net::lookup_host((name.as_str(), *port));
                match tokio::time::timeout(self.a.resolve_timeout, lookup).await {
                    Ok(Ok(it)) => it.collect(),
                    Ok(Err(e)) => {
                        tracing::debug!("{label}: cannot resolve {name:?}: {e}");
                        return Err(DropReason::Denied);
                    }
                    Err(_) => {
                        tracing::debug!("{label}: cannot resolve {name:?} in time");
                        return Err(DropReason::Denied);
                    }
                }
            }
        };
        let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
        if ips.is_empty() {
            return Err(DropReason::Denied);
        }
        if let Err(why) = self.a.policy.check(&host, port, &ips) {
            tracing::debug!("{label}: {target}: {why}");
            return Err(DropReason::Denied);
        }
        // The first address of a family we have (or can open) a socket for.
        for a in &addrs {
            let leg = if a.is_ipv4() { LegId::V4 } else { LegId::V6 };
            if self.open_leg(leg).is_some() {
                return Ok(*a);
            }
        }
        Err(DropReason::SendError)
    }

    /// The outbound socket of a family, created on first use; `None` when it
    /// cannot be (no such family here): remembered, not retried per datagram.
    fn open_leg(&mut self, id: LegId) -> Option<&Leg> {
        let source = self.a.direct?;
        let (slot, ip) = match (id, source) {
            (LegId::V4, None) => (&mut self.v4, Ipv4Addr::UNSPECIFIED.into()),
            (LegId::V6, None) => (&mut self.v6, Ipv6Addr::UNSPECIFIED.into()),
            (LegId::V4, Some(ip @ IpAddr::V4(_))) => (&mut self.v4, ip),
            (LegId::V6, Some(ip @ IpAddr::V6(_))) => (&mut self.v6, ip),
            _ => return None,
        };
        let bind = SocketAddr::new(ip, 0);
        if slot.is_none() {
            let made = bind_udp(bind).and_then(Leg::new);
            if let Err(e) = &made {
                tracing::warn!("{}: cannot open a UDP socket on {bind}: {e}", self.a.label);
            }
            *slot = Some(made.map_err(|_| ()));
        }
        slot.as_ref().and_then(|r| r.as_ref().ok())
    }

    fn bytes(&self, p: &Pending) -> &[u8] {
        if p.extra {
            &self.extra[p.start]
        } else {
            &self.area[p.start..p.end]
        }
    }

    /// Sends what the batch produced: runs of same-sized datagrams to one
    /// destination as one GSO send, the others one by one from where they are.
    async fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut i = 0;
        while i < pending.len() {
            let p = &pending[i];
            let len = self.bytes(p).len();
            let leg = self.leg(p.leg).expect("leg of a pending datagram exists");
            let max = leg.gso().min(64);
            let mut j = i + 1;
            if max > 1 && len <= GSO_MAX_SEGMENT {
                while j < pending.len()
                    && j - i < max
                    && pending[j].leg == p.leg
                    && pending[j].to == p.to
                    && self.bytes(&pending[j]).len() == len
                {
                    j += 1;
                }
            }
            let run = &pending[i..j];
            let ok = if run.len() == 1 {
                self.send(p.leg, p.to, self.bytes(p), None).await
            } else {
                let mut buf = std::mem::take(&mut self.gso_buf);
                buf.clear();
                for q in run {
                    buf.extend_from_slice(self.bytes(q));
                }
                let sent = self.send(p.leg, p.to, &buf, Some(len)).await;
                self.gso_buf = buf;
                if sent.is_err() {
                    // GSO refused (a device without it, say): one by one instead.
                    for q in run {
                        let r = self.send(q.leg, q.to, self.bytes(q), None).await;
                        self.account(q, 1, r);
                    }
                    i = j;
                    continue;
                }
                sent
            };
            let n = run.len() as u64;
            let payload: usize = run.iter().map(|q| q.payload).sum();
            self.account_run(p.leg, p.to, n, payload as u64, ok);
            i = j;
        }
        self.pending = pending;
        self.pending.clear();
    }

    async fn send(
        &self,
        id: LegId,
        to: SocketAddr,
        bytes: &[u8],
        segment: Option<usize>,
    ) -> Result<(), io::Error> {
        let leg = self.leg(id).expect("leg exists");
        leg.send(to, bytes, segment).await
    }

    fn account(&mut self, p: &Pending, n: u64, r: io::Result<()>) {
        self.account_run(p.leg, p.to, n, p.payload as u64, r)
    }

    fn account_run(&mut self, leg: LegId, to: SocketAddr, n: u64, payload: u64, r: io::Result<()>) {
        let c = &self.a.counters;
        match r {
            Ok(()) if leg == LegId::Client => {
                c.datagrams_to_client.fetch_add(n, Relaxed);
                c.bytes_to_client.fetch_add(payload, Relaxed);
            }
            Ok(()) => {
                c.datagrams_to_remote.fetch_add(n, Relaxed);
                c.bytes_to_remote.fetch_add(payload, Relaxed);
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                self.log_drop(DropReason::Oversize, n, || {
                    format!("{payload} bytes to {to}: larger than the path carries")
                });
            }
            Err(e) => {
                self.log_drop(DropReason::SendError, n, || format!("to {to}: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::task::JoinHandle;

    const WAIT: Duration = Duration::from_secs(5);

    /// Refuses one port; counts its calls (the cache must spare most of them).
    #[derive(Default)]
    struct TestPolicy {
        deny_port: u16,
        calls: AtomicUsize,
    }

    impl UdpPolicy for TestPolicy {
        fn denies_name(&self, _host: &str, port: u16) -> Option<String> {
            self.calls.fetch_add(1, Relaxed);
            (port == self.deny_port).then(|| format!("port {port} is denied"))
        }
        fn check(&self, _host: &str, _port: u16, addrs: &[IpAddr]) -> Result<(), String> {
            // Stands for the private-destination rule: 127.0.0.9 is "private".
            match addrs.iter().find(|a| **a == IpAddr::from([127, 0, 0, 9])) {
                Some(a) => Err(format!("{a} is private")),
                None => Ok(()),
            }
        }
    }

    struct Assoc {
        relay: SocketAddr,
        counters: Arc<UdpCounters>,
        cancel: CancellationToken,
        task: JoinHandle<Ended>,
        policy: Arc<TestPolicy>,
    }

    struct Opts {
        local: IpAddr,
        client_ip: IpAddr,
        client_port: Option<u16>,
        filter: UdpFilter,
        idle: Duration,
        upstream: Option<SocketAddr>,
    }

    impl Default for Opts {
        fn default() -> Self {
            Opts {
                local: IpAddr::from([127, 0, 0, 1]),
                client_ip: IpAddr::from([127, 0, 0, 1]),
                client_port: None,
                filter: UdpFilter::AddressRestricted,
                idle: Duration::from_secs(60),
                upstream: None,
            }
        }
    }

    fn start(o: Opts) -> Assoc {
        let socket = bind_udp(SocketAddr::new(o.local, 0)).unwrap();
        let relay = socket.local_addr().unwrap();
        let counters = Arc::new(UdpCounters::default());
        let cancel = CancellationToken::new();
        let policy = Arc::new(TestPolicy {
            deny_port: 9,
            ..Default::default()
        });
        let outbound = match o.upstream {
            Some(relay) => Outbound::Upstream {
                relay,
                socket: bind_udp(SocketAddr::new(o.local, 0)).unwrap(),
            },
            None => Outbound::Direct { source: None },
        };
        let a = UdpAssociation {
            label: format!("udp test {relay}"),
            client_ip: o.client_ip,
            client_port: o.client_port,
            socket,
            outbound,
            policy: policy.clone(),
            filter: o.filter,
            idle_timeout: o.idle,
            resolve_timeout: WAIT,
            counters: counters.clone(),
            cancel: cancel.clone(),
        };
        Assoc {
            relay,
            counters,
            cancel,
            task: tokio::spawn(a.run()),
            policy,
        }
    }

    fn udp(ip: &str) -> UdpSocket {
        bind_udp(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap()
    }

    fn v6_available() -> bool {
        std::net::UdpSocket::bind("[::1]:0").is_ok()
    }

    /// A UDP echo server; ends with the test's runtime.
    fn echo(ip: &str) -> SocketAddr {
        let s = udp(ip);
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    fn wrap(t: &TargetAddr, payload: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        assert!(socks5_udp::encode_header(t, &mut d));
        d.extend_from_slice(payload);
        d
    }

    async fn recv(s: &UdpSocket) -> (TargetAddr, Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(WAIT, s.recv_from(&mut buf))
            .await
            .expect("a datagram in time")
            .unwrap();
        let (t, off) = socks5_udp::parse(&buf[..n]).unwrap();
        (t, buf[off..n].to_vec(), from)
    }

    async fn nothing(s: &UdpSocket) {
        let mut buf = [0u8; 100];
        let r = tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await;
        assert!(r.is_err(), "unexpected datagram: {r:?}");
    }

    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn ip(a: SocketAddr) -> TargetAddr {
        TargetAddr::Ip(a)
    }

    #[tokio::test]
    async fn echo_roundtrip_ipv4_with_counters() {
        let a = start(Opts::default());
        let e = echo("127.0.0.1");
        let c = udp("127.0.0.1");
        c.send_to(&wrap(&ip(e), b"ping"), a.relay).await.unwrap();
        let (from, data, relay) = recv(&c).await;
        assert_eq!(
            (from, data.as_slice(), relay),
            (ip(e), &b"ping"[..], a.relay)
        );
        let k = &a.counters;
        assert_eq!(k.associations_active.load(Relaxed), 1);
        assert_eq!(k.datagrams_to_remote.load(Relaxed), 1);
        assert_eq!(k.bytes_to_remote.load(Relaxed), 4);
        wait_for("to_client counted", || {
            k.datagrams_to_client.load(Relaxed) == 1
        })
        .await;
        assert_eq!(k.bytes_to_client.load(Relaxed), 4);
        a.cancel.cancel();
        assert!(matches!(a.task.await.unwrap(), Ended::Cancelled));
        assert_eq!(k.associations_active.load(Relaxed), 0);
        assert_eq!(k.associations_total.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn ipv6_both_legs_and_mixed_families() {
        if !v6_available() {
            eprintln!("no ::1 here; skipped");
            return;
        }
        let a = start(Opts {
            local: "::1".parse().unwrap(),
            client_ip: "::1".parse().unwrap(),
            ..Default::default()
        });
        let e6 = echo("::1");
        let e4 = echo("127.0.0.1");
        let c = udp("::1");
        c.send_to(&wrap(&ip(e6), b"six"), a.relay).await.unwrap();
        assert_eq!(recv(&c).await.0, ip(e6));
        // Same association, IPv4 destination: the IPv4 leg opens on demand.
        c.send_to(&wrap(&ip(e4), b"four"), a.relay).await.unwrap();
        let (from, data, _) = recv(&c).await;
        assert_eq!((from, data.as_slice()), (ip(e4), &b"four"[..]));
        assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 2);
        a.cancel.cancel();
        a.task.await.unwrap();
    }

    #[tokio::test]
    async fn ipv4_client_to_ipv6_destination() {
        if !v6_available() {
            return;
        }
        let a = start(Opts::default());
        let e6 = echo("::1");
        let c = udp("127.0.0.1");
        c.send_to(&wrap(&ip(e6), b"x"), a.relay).await.unwrap();
        let (from, data, _) = recv(&c).await;
        assert_eq!((from, data.as_slice()), (ip(e6), &b"x"[..]));
    }

    #[tokio::test]
    async fn only_the_client_ip_and_its_first_port() {
        let a = start(Opts::default());
        let e = echo("127.0.0.1");
        let c = udp("127.0.0.1");
        c.send_to(&wrap(&ip(e), b"1"), a.relay).await.unwrap();
        recv(&c).await;
        // Same IP, another port: the association is locked to the first port.
        let other_port = udp("127.0.0.1");
        other_port
            .send_to(&wrap(&ip(e), b"2"), a.relay)
            .await
            .unwrap();
        // Another IP (the whole of 127/8 is local on Linux).
        let other_ip = udp("127.0.0.3");
        other_ip
            .send_to(&wrap(&ip(e), b"3"), a.relay)
            .await
            .unwrap();
        wait_for("two foreign drops", || {
            a.counters.dropped(DropReason::ForeignSource) == 2
        })
        .await;
        nothing(&other_port).await;
        nothing(&other_ip).await;
        assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 1);
        // The client itself is unaffected.
        c.send_to(&wrap(&ip(e), b"4"), a.relay).await.unwrap();
        assert_eq!(recv(&c).await.1, b"4");
    }

    #[tokio::test]
    async fn port_named_in_the_request_is_the_only_one() {
        let c = udp("127.0.0.1");
        let early = udp("127.0.0.1");
        let a = start(Opts {
            client_port: Some(c.local_addr().unwrap().port()),
            ..Default::default()
        });
        let e = echo("127.0.0.1");
        // First datagram, but not from the named port: dropped, no lock taken.
        early.send_to(&wrap(&ip(e), b"x"), a.relay).await.unwrap();
        wait_for("drop", || {
            a.counters.dropped(DropReason::ForeignSource) == 1
        })
        .await;
        c.send_to(&wrap(&ip(e), b"y"), a.relay).await.unwrap();
        assert_eq!(recv(&c).await.1, b"y");
        nothing(&early).await;
    }

    #[tokio::test]
    async fn a_v4_mapped_control_peer_is_an_ipv4_client() {
        // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d; with the
        // port named in the request, replies must still reach plain IPv4.
        let c = udp("127.0.0.1");
        let a = start(Opts {
            client_ip: "::ffff:127.0.0.1".parse().unwrap(),
            client_port: Some(c.local_addr().unwrap().port()),
            ..Default::default()
        });
        let e = echo("127.0.0.1");
        c.send_to(&wrap(&ip(e), b"mapped"), a.relay).await.unwrap();
        assert_eq!(recv(&c).await.1, b"mapped");
    }

    #[tokio::test]
    async fn bad_headers_are_dropped_and_counted_apart() {
        let a = start(Opts::default());
        let e = echo("127.0.0.1");
        let c = udp("127.0.0.1");
        let mut frag = wrap(&ip(e), b"f");
        frag[2] = 1;
        c.send_to(&frag, a.relay).await.unwrap();
        for bad in [
            &[0u8, 0, 0][..],
            &[0, 0, 0, 7, 1, 2, 3, 4, 0, 1],
            &[0, 0, 0, 3, 3, b'a', b'\n', b'b', 0, 1],
        ] {
            c.send_to(bad, a.relay).await.unwrap();
        }
        wait_for("drops", || {
            a.counters.dropped(DropReason::Fragmented) == 1
                && a.counters.dropped(DropReason::Malformed) == 3
        })
        .await;
        assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 0);
        c.send_to(&wrap(&ip(e), b"ok"), a.relay).await.unwrap();
        assert_eq!(recv(&c).await.1, b"ok");
    }

    #[tokio::test]
    async fn policy_refusals_are_counted_and_cached() {
        let a = start(Opts::default());
        let c = udp("127.0.0.1");
        let private = udp("127.0.0.9");
        let paddr = private.local_addr().unwrap();
        for _ in 0..3 {
            c.send_to(&wrap(&ip("127.0.0.1:9".parse().unwrap()), b"d"), a.relay)
                .await
                .unwrap();
            c.send_to(&wrap(&ip(paddr), b"p"), a.relay).await.unwrap();
        }
        wait_for("denied", || a.counters.dropped(DropReason::Denied) == 6).await;
        nothing(&private).await;
        // One decision per destination, not per datagram.
        assert_eq!(a.policy.calls.load(Relaxed), 2);
        assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn names_are_resolved_once() {
        let a = start(Opts::default());
        let e = echo("127.0.0.1");
        let c = udp("127.0.0.1");
        let name = TargetAddr::Domain("localhost".into(), e.port());
        for i in 0..5u8 {
            c.send_to(&wrap(&name, &[i]), a.relay).await.unwrap();
            let (from, data, _) = recv(&c).await;
            // Replies carry the real sender, not the name.
            assert_eq!((from, data), (ip(e), vec![i]));
        }
        assert_eq!(a.counters.dns_lookups.load(Relaxed), 1);
    }

    /// Sends through the relay to a fresh socket; returns it and the relay's outbound address.
    async fn peer_and_outbound(a: &Assoc, c: &UdpSocket, at: &str) -> (UdpSocket, SocketAddr) {
        let r = udp(at);
        let raddr = r.local_addr().unwrap();
        c.send_to(&wrap(&ip(raddr), b"hello"), a.relay)
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, out) = tokio::time::timeout(WAIT, r.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
        (r, out)
    }

    #[tokio::test]
    async fn replies_only_from_addresses_the_client_sent_to() {
        let a = start(Opts::default());
        let c = udp("127.0.0.1");
        let (r, out) = peer_and_outbound(&a, &c, "127.0.0.1").await;
        let stranger = udp("127.0.0.2");
        stranger.send_to(b"spoof", out).await.unwrap();
        wait_for("unsolicited", || {
            a.counters.dropped(DropReason::Unsolicited) == 1
        })
        .await;
        r.send_to(b"reply", out).await.unwrap();
        let (from, data, _) = recv(&c).await;
        assert_eq!(
            (from, data.as_slice()),
            (ip(r.local_addr().unwrap()), &b"reply"[..])
        );
    }

    #[tokio::test]
    async fn endpoint_independent_filter_relays_anyone() {
        let a = start(Opts {
            filter: UdpFilter::EndpointIndependent,
            ..Default::default()
        });
        let c = udp("127.0.0.1");
        let (_r, out) = peer_and_outbound(&a, &c, "127.0.0.1").await;
        let stranger = udp("127.0.0.2");
        stranger.send_to(b"hi", out).await.unwrap();
        let (from, data, _) = recv(&c).await;
        assert_eq!(
            (from, data.as_slice()),
            (ip(stranger.local_addr().unwrap()), &b"hi"[..])
        );
    }

    #[tokio::test]
    async fn oversize_replies_are_dropped_not_truncated() {
        let a = start(Opts::default());
        let c = udp("127.0.0.1");
        let (r, out) = peer_and_outbound(&a, &c, "127.0.0.1").await;
        // The largest IPv4 UDP payload: with the 10-byte header it cannot reach the client.
        r.send_to(&vec![7u8; 65507], out).await.unwrap();
        wait_for("oversize", || a.counters.dropped(DropReason::Oversize) == 1).await;
        nothing(&c).await;
        // A big one that fits goes through whole.
        r.send_to(&vec![8u8; 65000], out).await.unwrap();
        let (_, data, _) = recv(&c).await;
        assert_eq!(data, vec![8u8; 65000]);
    }

    #[tokio::test]
    async fn a_burst_goes_through_batched() {
        let a = start(Opts::default());
        let e = echo("127.0.0.1");
        let c = udp("127.0.0.1");
        let d = wrap(&ip(e), &[0x55; 64]);
        for _ in 0..100 {
            c.send_to(&d, a.relay).await.unwrap();
        }
        for _ in 0..100 {
            assert_eq!(recv(&c).await.1, vec![0x55; 64]);
        }
        assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 100);
        wait_for("all back", || {
            a.counters.datagrams_to_client.load(Relaxed) == 100
        })
        .await;
        assert_eq!(a.counters.bytes_to_client.load(Relaxed), 6400);
    }

    #[tokio::test]
    async fn idle_timeout_ends_the_association() {
        let a = start(Opts {
            idle: Duration::from_millis(200),
            ..Default::default()
        });
        let e = echo("127.0.0.1");
        let c = udp("127.0.0.1");
        c.send_to(&wrap(&ip(e), b"x"), a.relay).await.unwrap();
        recv(&c).await;
        let ended = tokio::time::timeout(WAIT, a.task).await.unwrap().unwrap();
        assert!(matches!(ended, Ended::Idle), "{ended:?}");
        assert_eq!(a.counters.associations_active.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn through_an_upstream_relay() {
        // Upstream: a direct association whose client is our upstream leg.
        let up = start(Opts::default());
        let a = start(Opts {
            upstream: Some(up.relay),
            ..Default::default()
        });
        let e = echo("127.0.0.1");
        let c = udp("127.0.0.1");
        c.send_to(&wrap(&ip(e), b"chained"), a.relay).await.unwrap();
        let (from, data, relay) = recv(&c).await;
        assert_eq!(
            (from, data.as_slice(), relay),
            (ip(e), &b"chained"[..], a.relay)
        );
        // By name: the upstream resolves it.
        c.send_to(
            &wrap(&TargetAddr::Domain("localhost".into(), e.port()), b"n"),
            a.relay,
        )
        .await
        .unwrap();
        assert_eq!(recv(&c).await.1, b"n");
        assert_eq!(a.counters.dns_lookups.load(Relaxed), 0);
        assert_eq!(up.counters.dns_lookups.load(Relaxed), 1);
        // The policy still applies on our side.
        c.send_to(&wrap(&ip("127.0.0.1:9".parse().unwrap()), b"d"), a.relay)
            .await
            .unwrap();
        wait_for("denied", || a.counters.dropped(DropReason::Denied) == 1).await;
        assert_eq!(up.counters.datagrams_to_remote.load(Relaxed), 2);
    }
}
