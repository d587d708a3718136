//! Destination verdicts: policy checks and name lookups, cached so that a
//! flood costs neither a lookup nor a policy evaluation per datagram.

use super::leg::*;
use super::relay::*;
use super::*;
use crate::host::udp::bind_udp;
use crate::policy::permissions::canonical;
use crate::proto::socks5::TargetAddr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Relay {
    /// Through an upstream (it resolves names): the name, and an IP, only.
    pub(super) fn check_unresolved(&mut self, target: &TargetAddr) -> Result<(), DropReason> {
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

    pub(super) fn cache(&mut self, target: &TargetAddr, v: Verdict) {
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
    pub(super) async fn destination(&mut self, target: &TargetAddr) -> Verdict {
        if let Some((v, t)) = self.verdicts.get(&Key::of(target)) {
            if *t > Instant::now() {
                return *v;
            }
        }
        let v = self.decide(target).await;
        self.cache(target, v);
        v
    }

    pub(super) async fn decide(&mut self, target: &TargetAddr) -> Verdict {
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
    pub(super) fn open_leg(&mut self, id: LegId) -> Option<&Leg> {
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
}
