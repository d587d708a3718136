//! The association's relay loop: receive a batch, check each datagram,
//! queue it for `send.rs`.

use super::leg::*;
use super::*;
use crate::policy::limits::Dir;
use crate::policy::permissions::canonical;
use crate::proto::socks5::TargetAddr;
use crate::proto::socks5_udp::{self, MAX_IP_HEADER};
use quinn_udp::RecvMeta;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub(super) type Verdict = Result<SocketAddr, DropReason>;

/// Verdict cache key (`TargetAddr` without the allocation of a name for IPs).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Ip(SocketAddr),
    Name(String, u16),
}

impl Key {
    pub(super) fn of(t: &TargetAddr) -> Key {
        match t {
            TargetAddr::Ip(a) => Key::Ip(*a),
            TargetAddr::Domain(n, p) => Key::Name(n.clone(), *p),
        }
    }
}

/// One datagram ready to go: `area[start..end]` (or `extra[..]` when `extra`).
pub(super) struct Pending {
    pub(super) leg: LegId,
    pub(super) to: SocketAddr,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) extra: bool,
    /// Payload bytes, for the byte counters (the header is not counted).
    pub(super) payload: usize,
}

/// The association's settings, as the relay keeps them.
pub(super) struct Cfg {
    pub(super) label: String,
    pub(super) client_ip: IpAddr,
    /// `Some(source)` for direct outbound sockets; `None` through an upstream.
    pub(super) direct: Option<Option<IpAddr>>,
    pub(super) policy: Arc<dyn UdpPolicy>,
    pub(super) filter: UdpFilter,
    pub(super) idle_timeout: Duration,
    pub(super) resolve_timeout: Duration,
    pub(super) counters: Arc<UdpCounters>,
    pub(super) cancel: CancellationToken,
    pub(super) limits: Option<Arc<SessionLimits>>,
    pub(super) bytes: Arc<Bytes>,
}

pub(super) struct Relay {
    pub(super) a: Cfg,
    pub(super) client: Leg,
    pub(super) client_port: Option<u16>,
    pub(super) v4: Option<Result<Leg, ()>>,
    pub(super) v6: Option<Result<Leg, ()>>,
    pub(super) upstream: Option<(SocketAddr, Leg)>,
    pub(super) verdicts: HashMap<Key, (Verdict, Instant)>,
    /// Address-restricted filtering: IPs the client sent to, with the last time.
    pub(super) peers: HashMap<IpAddr, Instant>,
    pub(super) area: Box<[u8]>,
    pub(super) metas: [RecvMeta; SLOTS],
    /// Datagrams that cannot be wrapped in place (GRO segments after the first).
    pub(super) extra: Vec<Vec<u8>>,
    pub(super) pending: Vec<Pending>,
    pub(super) gso_buf: Vec<u8>,
    pub(super) last_activity: Instant,
    /// DropReason reasons already logged for this association (log once, count all).
    pub(super) logged: u8,
    /// Set when the quota ran out on a datagram: the association ends.
    pub(super) cut: Option<Cut>,
    /// A fleet quota chunk is being fetched in the background (at most one).
    pub(super) refilling: Arc<AtomicBool>,
}

impl Relay {
    pub(super) fn new(a: UdpAssociation) -> io::Result<Self> {
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
            limits,
            bytes,
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
                limits,
                bytes,
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
            cut: None,
            refilling: Arc::default(),
        })
    }

    pub(super) fn log_drop(&mut self, d: DropReason, n: u64, why: impl FnOnce() -> String) {
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

    pub(super) async fn run(&mut self) -> Ended {
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
            let serviced = self.service(which.0).await;
            if let Some(c) = self.cut.take() {
                return Ended::Cut(c);
            }
            if let Err(e) = serviced {
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

    pub(super) fn leg(&self, id: LegId) -> Option<&Leg> {
        match id {
            LegId::Client => Some(&self.client),
            LegId::V4 => ok_leg(&self.v4),
            LegId::V6 => ok_leg(&self.v6),
            LegId::Upstream => self.upstream.as_ref().map(|u| &u.1),
        }
    }

    /// Drains what `id` has ready (bounded, so other legs get their turn).
    pub(super) async fn service(&mut self, id: LegId) -> io::Result<()> {
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

    pub(super) fn client_addr(&self) -> Option<SocketAddr> {
        self.client_port
            .map(|p| SocketAddr::new(self.a.client_ip, p))
    }

    pub(super) fn is_client(&mut self, from: SocketAddr) -> bool {
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

    pub(super) async fn on_client(&mut self, from: SocketAddr, s: usize, e: usize) {
        if !self.is_client(from) {
            return self.log_drop(DropReason::ForeignSource, 1, || {
                format!("from {from}, not the client")
            });
        }
        let (target, hlen) = match socks5_udp::parse(&self.area[s..e]) {
            Ok(v) => v,
            Err(err) => return self.log_drop(DropReason::of(&err), 1, || err.to_string()),
        };
        let payload = e - s - hlen;
        if let Some((relay, _)) = &self.upstream {
            let relay = *relay;
            if let Err(d) = self.check_unresolved(&target) {
                return self.log_drop(d, 1, || format!("to {:?} refused", target.to_string()));
            }
            if !self.permit(Dir::Up, payload) {
                return;
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
        if !self.permit(Dir::Up, payload) {
            return;
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

    pub(super) fn on_remote(
        &mut self,
        id: LegId,
        from: SocketAddr,
        s: usize,
        e: usize,
        first: bool,
    ) {
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
        if !self.permit(Dir::Down, payload) {
            return;
        }
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

    pub(super) fn on_upstream(&mut self, client: SocketAddr, from: SocketAddr, s: usize, e: usize) {
        let relay = self.upstream.as_ref().map(|u| u.0).expect("upstream leg");
        if canonical(from.ip()) != canonical(relay.ip()) || from.port() != relay.port() {
            return self.log_drop(DropReason::ForeignSource, 1, || {
                format!("from {from}, not the upstream relay {relay}")
            });
        }
        let (sender, hlen) = match socks5_udp::parse(&self.area[s..e]) {
            Ok(v) => v,
            Err(err) => {
                return self.log_drop(DropReason::of(&err), 1, || {
                    format!("from the upstream relay: {err}")
                })
            }
        };
        if let TargetAddr::Ip(a) = &sender {
            if !self.allowed_peer(canonical(a.ip())) {
                return self.log_drop(DropReason::Unsolicited, 1, || {
                    format!("from {a} (via the upstream), which the client has not sent to")
                });
            }
        }
        let payload = e - s - hlen;
        if !self.permit(Dir::Down, payload) {
            return;
        }
        self.area[s] = 0;
        self.area[s + 1] = 0;
        self.pending.push(Pending {
            leg: LegId::Client,
            to: client,
            start: s,
            end: e,
            extra: false,
            payload,
        });
    }

    pub(super) fn remember_peer(&mut self, ip: IpAddr) {
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

    pub(super) fn allowed_peer(&self, ip: IpAddr) -> bool {
        self.a.filter == UdpFilter::EndpointIndependent || self.peers.contains_key(&ip)
    }
}
