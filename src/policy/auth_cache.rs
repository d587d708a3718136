//! Per-listener memory of authentication decisions, and the progressive delay
//! for peers that keep failing.
//!
//! The cache never holds a password: entries are keyed by username and an
//! HMAC-SHA256 of everything the verdict may depend on ([`CacheKey`]: the event,
//! the connection as the deciding party saw it, username and password) under a
//! random per-process key, and digests are compared in constant time. A changed
//! password, another peer IP, another certificate or another event is a miss.

use crate::policy::identity::{AuthInfo, CacheScope, ConnMeta};
use ring::hmac;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 10_000,
        }
    }
}

/// Entries kept per username: a few stale or wrong passwords must not evict
/// the right one, and one user cannot fill the cache alone. Entries are per
/// connection origin too (peer IP, certificate), so a user has several.
const PER_USER: usize = 16;

/// What a verdict may depend on. The deciding party (a Lua handler, or the
/// `auth_http` service) is shown the connection (`conn_meta`, or the JSON's
/// addresses), so a verdict is reused only for a connection that shows the
/// same: the same event, peer IP (not port), local address and client
/// certificate, username and password. A verdict whose AuthInfo says
/// `cache_scope = 'credentials'` is reused for the same event, username and
/// password from any connection.
#[derive(Debug, Clone, Copy)]
pub struct CacheKey<'a> {
    /// The event (front-end) that decided: a SOCKS5 login and an HTTP Basic
    /// login are different questions, asked of different handlers.
    pub event: &'a str,
    pub peer_ip: IpAddr,
    pub local: SocketAddr,
    /// SHA-256 of the client certificate, when one was presented.
    pub tls_client: Option<&'a [u8; 32]>,
    /// Through a load balancer (`proxy_protocol`): SHA-256 of the balancer's
    /// IP and the PROXY v2 TLVs, which handlers see too.
    pub via: Option<[u8; 32]>,
    pub username: &'a [u8],
    /// `None` (HTTP Basic without a colon) is not `Some(b"")`: handlers see
    /// `nil` and `""` and may decide differently.
    pub password: Option<&'a [u8]>,
}

impl<'a> CacheKey<'a> {
    pub fn new(
        event: &'a str,
        meta: &'a ConnMeta,
        username: &'a [u8],
        password: Option<&'a [u8]>,
    ) -> Self {
        CacheKey {
            event,
            peer_ip: crate::policy::permissions::canonical(meta.peer.0.ip()),
            local: meta.local.0,
            tls_client: meta.tls_client.as_ref().map(|c| &c.fingerprint),
            via: meta.proxy_peer.map(|b| {
                let seen = format!(
                    "{} {:?}",
                    crate::policy::permissions::canonical(b.ip()),
                    meta.proxy_tlvs
                );
                let mut out = [0u8; 32];
                out.copy_from_slice(
                    ring::digest::digest(&ring::digest::SHA256, seen.as_bytes()).as_ref(),
                );
                out
            }),
            username,
            password,
        }
    }
}

type Cached = Result<AuthInfo, String>;

struct Entry {
    digest: [u8; 32],
    verdict: Cached,
    expires: Instant,
    seq: u64,
}

#[derive(Default)]
struct Inner {
    by_user: HashMap<Vec<u8>, Vec<Entry>>,
    /// Insertion order for eviction; stale (replaced) items are skipped.
    order: VecDeque<(Vec<u8>, u64)>,
    len: usize,
    seq: u64,
}

pub struct AuthCache {
    cfg: CacheConfig,
    inner: Mutex<Inner>,
}

/// One random key per process, made on first use. A fork shares it with the
/// parent, which is harmless: it never leaves the process tree's memory.
fn key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .expect("system random generator")
    })
}

/// `wide`: the key of a `cache_scope = 'credentials'` verdict (event and
/// credentials only). Every field is length-prefixed or tagged, so no two
/// different keys feed the same bytes.
fn digest(k: &CacheKey, wide: bool) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key());
    let mut field = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    };
    field(&[wide as u8]);
    field(k.event.as_bytes());
    if !wide {
        let ip = match crate::policy::permissions::canonical(k.peer_ip) {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        field(&ip);
        field(k.local.to_string().as_bytes());
        match k.tls_client {
            Some(f) => field(f),
            None => field(b"-"),
        }
        match &k.via {
            Some(v) => field(v),
            None => field(b"-"),
        }
    }
    field(k.username);
    match k.password {
        // The tag byte keeps None and Some("") apart.
        Some(p) => {
            field(b"P");
            field(p);
        }
        None => field(b"N"),
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

impl AuthCache {
    pub fn new(cfg: CacheConfig) -> Self {
        AuthCache {
            cfg,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The verdict for exactly this key, else one made for these credentials
    /// with `cache_scope = 'credentials'`.
    pub fn get(&self, key: &CacheKey) -> Option<Cached> {
        self.get_digest(key.username, &digest(key, false))
            .or_else(|| self.get_digest(key.username, &digest(key, true)))
    }

    fn get_digest(&self, username: &[u8], d: &[u8; 32]) -> Option<Cached> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        let bucket = inner.by_user.get_mut(username)?;
        let i = bucket.iter().position(|e| bool::from(e.digest.ct_eq(d)))?;
        if bucket[i].expires <= now {
            bucket.remove(i);
            if bucket.is_empty() {
                inner.by_user.remove(username);
            }
            inner.len -= 1;
            return None;
        }
        Some(bucket[i].verdict.clone())
    }

    pub fn put(&self, key: &CacheKey, verdict: Cached) {
        let username = key.username;
        let ttl = if verdict.is_ok() {
            self.cfg.ttl
        } else {
            self.cfg.negative_ttl
        };
        if ttl.is_zero() || self.cfg.max_entries == 0 {
            return;
        }
        // Only an acceptance can widen its own key; a refusal never does.
        let wide = matches!(&verdict, Ok(i) if i.cache_scope == CacheScope::Credentials);
        let d = digest(key, wide);
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        inner.seq += 1;
        let seq = inner.seq;
        let bucket = inner.by_user.entry(username.to_vec()).or_default();
        let before = bucket.len();
        bucket.retain(|e| !bool::from(e.digest.ct_eq(&d)));
        if bucket.len() >= PER_USER {
            bucket.remove(0);
        }
        bucket.push(Entry {
            digest: d,
            verdict,
            expires: Instant::now() + ttl,
            seq,
        });
        inner.len = inner.len + bucket.len() - before;
        inner.order.push_back((username.to_vec(), seq));
        while inner.len > self.cfg.max_entries {
            let Some((user, seq)) = inner.order.pop_front() else {
                break;
            };
            inner.remove_seq(&user, seq);
        }
        // Replaced entries leave stale order items behind; keep the queue bounded.
        if inner.order.len() > 2 * self.cfg.max_entries + 64 {
            let live: std::collections::HashSet<u64> = inner
                .by_user
                .values()
                .flat_map(|b| b.iter().map(|e| e.seq))
                .collect();
            inner.order.retain(|(_, s)| live.contains(s));
        }
    }

    /// Forgets every decision; returns how many entries there were.
    pub fn flush(&self) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.len;
        *inner = Inner::default();
        n
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn remove_seq(&mut self, user: &[u8], seq: u64) {
        if let Some(bucket) = self.by_user.get_mut(user) {
            let before = bucket.len();
            bucket.retain(|e| e.seq != seq);
            self.len -= before - bucket.len();
            if bucket.is_empty() {
                self.by_user.remove(user);
            }
        }
    }
}

/// `auth_failure_delay = { initial, max, forget_after }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayConfig {
    pub initial: Duration,
    pub max: Duration,
    pub forget_after: Duration,
}

impl Default for DelayConfig {
    fn default() -> Self {
        DelayConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            forget_after: Duration::from_secs(300),
        }
    }
}

/// Peers tracked at most; past this, the quiet ones are forgotten first.
const MAX_PEERS: usize = 65_536;

/// Slows down brute force per peer IP. Every attempt from a peer with recent
/// failures waits before its credentials are checked, whatever their outcome,
/// so a client cannot tell a failure by the delay alone. Only that session's
/// task sleeps: other peers are unaffected.
#[derive(Default)]
pub struct FailureDelay {
    cfg: Option<DelayConfig>,
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureDelay {
    pub fn new(cfg: Option<DelayConfig>) -> Self {
        FailureDelay {
            cfg,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// The wait before checking an attempt from `ip`: zero without failures,
    /// then `initial`, doubling per failure up to `max`.
    pub fn delay_for(&self, ip: IpAddr) -> Duration {
        let Some(cfg) = &self.cfg else {
            return Duration::ZERO;
        };
        let ip = crate::policy::permissions::canonical(ip);
        let mut peers = self.peers.lock().unwrap();
        match peers.get(&ip) {
            Some((n, last)) if last.elapsed() < cfg.forget_after => {
                let shift = (*n - 1).min(20);
                cfg.initial.saturating_mul(1 << shift).min(cfg.max)
            }
            Some(_) => {
                peers.remove(&ip);
                Duration::ZERO
            }
            None => Duration::ZERO,
        }
    }

    /// Sleeps this peer's delay, at most `cap` (the listener's `timeout`: a delay
    /// longer than the client is allowed to wait would only look like a hang).
    pub async fn wait(&self, ip: IpAddr, cap: Duration) {
        let d = self.delay_for(ip).min(cap);
        if !d.is_zero() {
            tracing::debug!("auth attempt from {ip} delayed {d:?} after recent failures");
            tokio::time::sleep(d).await;
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let Some(cfg) = &self.cfg else {
            return;
        };
        let ip = crate::policy::permissions::canonical(ip);
        let mut peers = self.peers.lock().unwrap();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            peers.retain(|_, (_, last)| last.elapsed() < cfg.forget_after);
            if peers.len() >= MAX_PEERS {
                // Still full of active peers: drop the quietest half.
                let mut lasts: Vec<Instant> = peers.values().map(|(_, l)| *l).collect();
                lasts.sort();
                let cut = lasts[lasts.len() / 2];
                peers.retain(|_, (_, last)| *last > cut);
            }
        }
        let now = Instant::now();
        let e = peers.entry(ip).or_insert((0, now));
        if e.1.elapsed() >= cfg.forget_after {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::identity::CONTEXT_RFC1929;

    fn meta() -> ConnMeta {
        ConnMeta::direct(
            crate::host::net::PeerAddr(([10, 0, 0, 1], 40000).into()),
            crate::host::net::LocalAddr(([127, 0, 0, 1], 1080).into()),
        )
    }

    fn k<'a>(user: &'a [u8], pw: &'a [u8]) -> CacheKey<'a> {
        CacheKey {
            event: CONTEXT_RFC1929,
            peer_ip: [10, 0, 0, 1].into(),
            local: ([127, 0, 0, 1], 1080).into(),
            tls_client: None,
            via: None,
            username: user,
            password: Some(pw),
        }
    }

    #[test]
    fn key_holds_what_the_decider_saw() {
        let c = cache(100);
        let m = meta();
        let base = CacheKey::new(CONTEXT_RFC1929, &m, b"alice", Some(b"pw"));
        c.put(&base, Ok(AuthInfo::single("alice", CONTEXT_RFC1929)));
        assert!(c.get(&base).is_some());
        // Another source port of the same IP: a hit.
        let mut m2 = meta();
        m2.peer = crate::host::net::PeerAddr(([10, 0, 0, 1], 50000).into());
        assert!(c
            .get(&CacheKey::new(CONTEXT_RFC1929, &m2, b"alice", Some(b"pw")))
            .is_some());
        // ::ffff:10.0.0.1 is 10.0.0.1.
        m2.peer = crate::host::net::PeerAddr("[::ffff:10.0.0.1]:1".parse().unwrap());
        assert!(c
            .get(&CacheKey::new(CONTEXT_RFC1929, &m2, b"alice", Some(b"pw")))
            .is_some());
        let misses = [
            CacheKey {
                peer_ip: [10, 0, 0, 2].into(),
                ..base
            },
            CacheKey {
                local: ([127, 0, 0, 1], 1081).into(),
                ..base
            },
            CacheKey {
                tls_client: Some(&[7; 32]),
                ..base
            },
            CacheKey {
                via: Some([1; 32]),
                ..base
            },
            CacheKey {
                event: "HttpBasicAuth",
                ..base
            },
            CacheKey {
                password: None,
                ..base
            },
            CacheKey {
                password: Some(b""),
                ..base
            },
        ];
        for m in &misses {
            assert!(c.get(m).is_none(), "{m:?}");
        }
        // nil and "" are two keys with two verdicts.
        let none = CacheKey {
            password: None,
            ..base
        };
        let empty = CacheKey {
            password: Some(b""),
            ..base
        };
        c.put(&empty, Ok(AuthInfo::default()));
        c.put(&none, Err("no".into()));
        assert!(c.get(&empty).unwrap().is_ok());
        assert!(c.get(&none).unwrap().is_err());
    }

    #[test]
    fn credentials_scope_widens_acceptances_only() {
        let c = cache(100);
        let base = k(b"bob", b"pw");
        let mut info = AuthInfo::single("bob", CONTEXT_RFC1929);
        info.cache_scope = CacheScope::Credentials;
        c.put(&base, Ok(info));
        let elsewhere = CacheKey {
            peer_ip: [10, 9, 9, 9].into(),
            ..base
        };
        assert!(c.get(&elsewhere).unwrap().is_ok());
        // Not for another event, nor other credentials.
        assert!(c
            .get(&CacheKey {
                event: "HttpBasicAuth",
                ..elsewhere
            })
            .is_none());
        assert!(c
            .get(&CacheKey {
                password: Some(b"px"),
                ..elsewhere
            })
            .is_none());
        // A refusal stays with its connection.
        let w = k(b"carol", b"pw");
        c.put(&w, Err("no".into()));
        assert!(c
            .get(&CacheKey {
                peer_ip: [10, 9, 9, 9].into(),
                ..w
            })
            .is_none());
    }

    fn cache(max: usize) -> AuthCache {
        AuthCache::new(CacheConfig {
            max_entries: max,
            ..Default::default()
        })
    }

    #[test]
    fn hit_miss_and_changed_password() {
        let c = cache(10);
        assert!(c.get(&k(b"alice", b"pw")).is_none());
        c.put(
            &k(b"alice", b"pw"),
            Ok(AuthInfo::single("alice", CONTEXT_RFC1929)),
        );
        assert_eq!(
            c.get(&k(b"alice", b"pw")).unwrap().unwrap().identities[0].identity,
            "alice"
        );
        assert!(c.get(&k(b"alice", b"pw2")).is_none());
        assert!(c.get(&k(b"alicE", b"pw")).is_none());
        c.put(&k(b"alice", b"bad"), Err("no".into()));
        assert_eq!(c.get(&k(b"alice", b"bad")).unwrap().unwrap_err(), "no");
        // The wrong password did not evict the right one.
        assert!(c.get(&k(b"alice", b"pw")).unwrap().is_ok());
        assert_eq!(c.len(), 2);
        assert_eq!(c.flush(), 2);
        assert!(c.get(&k(b"alice", b"pw")).is_none());
    }

    #[test]
    fn digest_is_length_prefixed() {
        let d = |u: &[u8], p: &[u8]| digest(&k(u, p), false);
        assert_ne!(d(b"ab", b"c"), d(b"a", b"bc"));
        assert_eq!(d(b"a", b"bc"), d(b"a", b"bc"));
        assert_ne!(d(b"a", b"bc"), digest(&k(b"a", b"bc"), true));
    }

    #[test]
    fn expiry() {
        let c = AuthCache::new(CacheConfig {
            ttl: Duration::from_millis(1),
            negative_ttl: Duration::ZERO,
            max_entries: 10,
        });
        c.put(&k(b"u", b"p"), Ok(AuthInfo::default()));
        c.put(&k(b"u", b"x"), Err("no".into()));
        assert_eq!(c.len(), 1, "negative_ttl 0 caches no failures");
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.get(&k(b"u", b"p")).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded() {
        let c = cache(3);
        for i in 0..10u8 {
            c.put(&k(&[b'u', i], b"p"), Ok(AuthInfo::default()));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&k(b"u\x09", b"p")).is_some(), "newest kept");
        assert!(c.get(&k(b"u\x00", b"p")).is_none(), "oldest evicted");
        // Per-user bound.
        let c = cache(100);
        for i in 0..40u8 {
            c.put(&k(b"u", &[i]), Err("no".into()));
        }
        assert_eq!(c.len(), PER_USER);
        // Refreshing one key many times keeps the order queue bounded.
        for _ in 0..1000 {
            c.put(&k(b"v", b"p"), Ok(AuthInfo::default()));
        }
        assert!(c.inner.lock().unwrap().order.len() <= 2 * 100 + 64 + 1);
        assert_eq!(c.len(), PER_USER + 1);
    }

    #[test]
    fn failure_delay_progression() {
        let d = FailureDelay::new(Some(DelayConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            forget_after: Duration::from_secs(60),
        }));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(d.delay_for(a), Duration::ZERO);
        d.record_failure(a);
        assert_eq!(d.delay_for(a), Duration::from_millis(100));
        d.record_failure(a);
        assert_eq!(d.delay_for(a), Duration::from_millis(200));
        d.record_failure(a);
        assert_eq!(d.delay_for(a), Duration::from_millis(350));
        for _ in 0..100 {
            d.record_failure(a);
        }
        assert_eq!(d.delay_for(a), Duration::from_millis(350));
        assert_eq!(d.delay_for(b), Duration::ZERO, "other peers unaffected");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(d.delay_for(mapped), Duration::from_millis(350));
        let off = FailureDelay::new(None);
        off.record_failure(a);
        assert_eq!(off.delay_for(a), Duration::ZERO);
    }

    #[test]
    fn failure_delay_forgets() {
        let d = FailureDelay::new(Some(DelayConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            forget_after: Duration::from_millis(1),
        }));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        d.record_failure(a);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(d.delay_for(a), Duration::ZERO);
    }
}
