//! Live sessions of a listener (issue 17): who is connected right now, to
//! where, how much has moved, and a handle to cut them.
//!
//! A session registers once it relays (its identity and destination are known
//! by then) and unregisters when its [`Registration`] drops, however it ends.
//! Byte counters are plain atomics the relay bumps next to the listener's own;
//! listing and closing take the registry lock, never the sessions'.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// Bytes moved by one session so far; shared with its relay.
#[derive(Debug, Default)]
pub struct Bytes {
    /// Client -> destination.
    pub up: AtomicU64,
    /// Destination -> client.
    pub down: AtomicU64,
}

/// What a session tells the registry about itself.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub peer: SocketAddr,
    pub protocol: &'static str,
    /// Every identity name the session authenticated as; the first is "the" identity.
    pub identities: Vec<String>,
    pub groups: Vec<String>,
    /// `host:port` as requested.
    pub destination: String,
    pub started: SystemTime,
}

#[derive(Debug)]
pub struct Live {
    pub id: u64,
    pub info: NewSession,
    pub bytes: Arc<Bytes>,
    /// Cancelled by `close`: the session ends at once.
    pub cancel: CancellationToken,
    closed_by_policy: AtomicBool,
}

impl Live {
    pub fn identity(&self) -> Option<&str> {
        self.info.identities.first().map(String::as_str)
    }

    /// Set when `close_sessions` ended it (the access log says `cut`).
    pub fn closed_by_policy(&self) -> bool {
        self.closed_by_policy.load(Relaxed)
    }
}

/// Which sessions `sessions()`/`close_sessions()` mean; every given key must
/// match. The empty filter matches every session.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Any of the session's identities.
    pub identity: Option<String>,
    pub group: Option<String>,
    pub peer: Option<PeerFilter>,
    /// `host:port` exactly, or the host (any port). Case-insensitive.
    pub destination: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFilter {
    /// `ip:port`: one connection.
    Addr(SocketAddr),
    /// An address (`10.0.0.1`, any port) or a network (`10.0.0.0/8`).
    Net(IpNet),
}

impl PeerFilter {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(PeerFilter::Addr(a));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerFilter::Net(IpNet::from(ip)));
        }
        s.parse::<IpNet>().map(PeerFilter::Net).map_err(|_| {
            format!("'{s}' is not an address, address:port or network (e.g. 10.0.0.0/8)")
        })
    }

    fn matches(&self, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        match self {
            PeerFilter::Addr(a) => canonical(a.ip()) == ip && a.port() == peer.port(),
            PeerFilter::Net(n) => n.contains(&ip),
        }
    }
}

/// An IPv4 client on a dual-stack socket (::ffff:a.b.c.d) matches a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.identity.is_none()
            && self.group.is_none()
            && self.peer.is_none()
            && self.destination.is_none()
    }

    pub fn matches(&self, s: &NewSession) -> bool {
        if let Some(id) = &self.identity {
            if !s.identities.iter().any(|i| i == id) {
                return false;
            }
        }
        if let Some(g) = &self.group {
            if !s.groups.iter().any(|x| x == g) {
                return false;
            }
        }
        if let Some(p) = &self.peer {
            if !p.matches(s.peer) {
                return false;
            }
        }
        if let Some(d) = &self.destination {
            let dest = &s.destination;
            let host = host_of(dest);
            if !dest.eq_ignore_ascii_case(d)
                && !host.eq_ignore_ascii_case(d.trim_matches(['[', ']']))
            {
                return false;
            }
        }
        true
    }
}

/// `host` of `host:port` / `[v6]:port`.
fn host_of(dest: &str) -> &str {
    let h = match dest.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => dest,
    };
    h.trim_matches(['[', ']'])
}

/// A listener's live sessions.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    map: Mutex<HashMap<u64, Arc<Live>>>,
}

/// Keeps a session listed; unregisters it when dropped.
pub struct Registration<'a> {
    registry: &'a Registry,
    pub live: Arc<Live>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.map.lock().unwrap().remove(&self.live.id);
    }
}

impl Registry {
    /// Lists a session; `bytes` are the counters its relay updates.
    pub fn register(&self, info: NewSession, bytes: Arc<Bytes>) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let live = Arc::new(Live {
            id,
            info,
            bytes,
            cancel: CancellationToken::new(),
            closed_by_policy: AtomicBool::new(false),
        });
        self.map.lock().unwrap().insert(id, live.clone());
        Registration {
            registry: self,
            live,
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Matching sessions, oldest first.
    pub fn list(&self, f: &Filter) -> Vec<Arc<Live>> {
        let mut v: Vec<Arc<Live>> = self
            .map
            .lock()
            .unwrap()
            .values()
            .filter(|l| f.matches(&l.info))
            .cloned()
            .collect();
        v.sort_by_key(|l| l.id);
        v
    }

    /// Cuts the matching sessions now; returns how many.
    pub fn close(&self, f: &Filter) -> usize {
        let hit = self.list(f);
        for l in &hit {
            l.closed_by_policy.store(true, Relaxed);
            l.cancel.cancel();
        }
        hit.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, groups: &[&str], peer: &str, dest: &str) -> NewSession {
        NewSession {
            peer: peer.parse().unwrap(),
            protocol: "socks5",
            identities: vec![id.to_string()],
            groups: groups.iter().map(|g| g.to_string()).collect(),
            destination: dest.to_string(),
            started: SystemTime::now(),
        }
    }

    #[test]
    fn register_list_filter_close_unregister() {
        let r = Registry::default();
        let a = r.register(
            info("alice", &["staff"], "10.0.0.1:1000", "example.com:443"),
            Default::default(),
        );
        let b = r.register(
            info("bob", &["staff", "ops"], "10.0.0.2:2000", "[::1]:25"),
            Default::default(),
        );
        let c = r.register(
            info("alice", &[], "[::ffff:192.168.1.5]:3000", "10.9.9.9:80"),
            Default::default(),
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r.list(&Filter::default()).len(), 3);
        let ids = |f: Filter| r.list(&f).iter().map(|l| l.id).collect::<Vec<_>>();
        let (ia, ib, ic) = (a.live.id, b.live.id, c.live.id);
        assert_eq!(
            ids(Filter {
                identity: Some("alice".into()),
                ..Default::default()
            }),
            vec![ia, ic]
        );
        assert_eq!(
            ids(Filter {
                group: Some("ops".into()),
                ..Default::default()
            }),
            vec![ib]
        );
        let peer = |s: &str| Filter {
            peer: Some(PeerFilter::parse(s).unwrap()),
            ..Default::default()
        };
        assert_eq!(ids(peer("10.0.0.0/8")), vec![ia, ib]);
        assert_eq!(ids(peer("10.0.0.2")), vec![ib]);
        assert_eq!(ids(peer("10.0.0.2:2001")), Vec::<u64>::new());
        assert_eq!(ids(peer("192.168.1.5")), vec![ic], "v4-mapped peer");
        assert!(PeerFilter::parse("nope").is_err());
        let dest = |s: &str| Filter {
            destination: Some(s.into()),
            ..Default::default()
        };
        assert_eq!(ids(dest("EXAMPLE.com")), vec![ia]);
        assert_eq!(ids(dest("example.com:443")), vec![ia]);
        assert_eq!(ids(dest("example.com:80")), Vec::<u64>::new());
        assert_eq!(ids(dest("::1")), vec![ib]);
        assert_eq!(ids(dest("[::1]:25")), vec![ib]);
        // All keys must match.
        assert_eq!(
            ids(Filter {
                identity: Some("alice".into()),
                destination: Some("10.9.9.9".into()),
                ..Default::default()
            }),
            vec![ic]
        );

        let n = r.close(&Filter {
            identity: Some("alice".into()),
            ..Default::default()
        });
        assert_eq!(n, 2);
        assert!(a.live.cancel.is_cancelled() && a.live.closed_by_policy());
        assert!(!b.live.cancel.is_cancelled() && !b.live.closed_by_policy());
        drop(a);
        drop(c);
        assert_eq!(ids(Filter::default()), vec![ib]);
        drop(b);
        assert!(r.is_empty());
    }

    #[test]
    fn byte_counters_are_shared_with_the_relay() {
        let r = Registry::default();
        let bytes = Arc::new(Bytes::default());
        let reg = r.register(info("u", &[], "127.0.0.1:1", "h:1"), bytes.clone());
        bytes.up.fetch_add(5, Relaxed);
        bytes.down.fetch_add(7, Relaxed);
        let l = &r.list(&Filter::default())[0];
        assert_eq!(
            (l.bytes.up.load(Relaxed), l.bytes.down.load(Relaxed)),
            (5, 7)
        );
        drop(reg);
    }
}
