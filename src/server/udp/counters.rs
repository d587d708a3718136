//! Per-listener UDP counters and drop reasons (lock-free), and the
//! `max_udp_associations` slots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

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
    /// Over the identity's bandwidth limit (`limits`): a datagram never waits.
    Limit,
}

impl DropReason {
    /// Why a datagram whose header did not parse is dropped.
    pub fn of(err: &crate::proto::socks5_udp::UdpHeaderError) -> Self {
        match err {
            crate::proto::socks5_udp::UdpHeaderError::Fragmented(_) => DropReason::Fragmented,
            _ => DropReason::Malformed,
        }
    }
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
    pub dropped_limit: AtomicU64,
    /// Name lookups done (cache misses): a check that floods do not cause lookups.
    pub dns_lookups: AtomicU64,
    /// Refused at `max_udp_associations`.
    pub associations_refused: AtomicU64,
    /// Slots held by sessions (see `claim`), from the request to the end.
    pub(super) claimed: AtomicU64,
}

impl UdpCounters {
    pub(super) fn counter(&self, d: DropReason) -> &AtomicU64 {
        match d {
            DropReason::ForeignSource => &self.dropped_foreign_source,
            DropReason::Fragmented => &self.dropped_fragmented,
            DropReason::Malformed => &self.dropped_malformed,
            DropReason::Denied => &self.dropped_denied,
            DropReason::Unsolicited => &self.dropped_unsolicited,
            DropReason::Oversize => &self.dropped_oversize,
            DropReason::SendError => &self.dropped_send_error,
            DropReason::Limit => &self.dropped_limit,
        }
    }

    pub fn dropped(&self, d: DropReason) -> u64 {
        self.counter(d).load(Relaxed)
    }

    pub(super) fn add_drop(&self, d: DropReason, n: u64) {
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
            ("udp_dropped_limit", l(&self.dropped_limit)),
            ("udp_dns_lookups", l(&self.dns_lookups)),
        ]
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
