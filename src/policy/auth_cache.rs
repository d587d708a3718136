//! Per-listener memory of authentication decisions, and the progressive delay
//! for peers that keep failing.
//!
//! The cache never holds a password: entries are keyed by username and an
//! HMAC-SHA256 of (username, password) under a random per-process key, and
//! digests are compared in constant time. A changed password is a miss.

use crate::policy::identity::AuthInfo;
use ring::hmac;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
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
/// the right one, and one user cannot fill the cache alone.
const PER_USER: usize = 4;

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

fn digest(username: &[u8], password: &[u8]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key());
    // Length-prefixed so ("ab","c") and ("a","bc") differ.
    ctx.update(&(username.len() as u64).to_be_bytes());
    ctx.update(username);
    ctx.update(password);
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

    pub fn get(&self, username: &[u8], password: &[u8]) -> Option<Cached> {
        let d = digest(username, password);
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        let bucket = inner.by_user.get_mut(username)?;
        let i = bucket.iter().position(|e| bool::from(e.digest.ct_eq(&d)))?;
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

    pub fn put(&self, username: &[u8], password: &[u8], verdict: Cached) {
        let ttl = if verdict.is_ok() {
            self.cfg.ttl
        } else {
            self.cfg.negative_ttl
        };
        if ttl.is_zero() || self.cfg.max_entries == 0 {
            return;
        }
        let d = digest(username, password);
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

    fn cache(max: usize) -> AuthCache {
        AuthCache::new(CacheConfig {
            max_entries: max,
            ..Default::default()
        })
    }

    #[test]
    fn hit_miss_and_changed_password() {
        let c = cache(10);
        assert!(c.get(b"alice", b"pw").is_none());
        c.put(
            b"alice",
            b"pw",
            Ok(AuthInfo::single("alice", CONTEXT_RFC1929)),
        );
        assert_eq!(
            c.get(b"alice", b"pw").unwrap().unwrap().identities[0].identity,
            "alice"
        );
        assert!(c.get(b"alice", b"pw2").is_none());
        assert!(c.get(b"alicE", b"pw").is_none());
        c.put(b"alice", b"bad", Err("no".into()));
        assert_eq!(c.get(b"alice", b"bad").unwrap().unwrap_err(), "no");
        // The wrong password did not evict the right one.
        assert!(c.get(b"alice", b"pw").unwrap().is_ok());
        assert_eq!(c.len(), 2);
        assert_eq!(c.flush(), 2);
        assert!(c.get(b"alice", b"pw").is_none());
    }

    #[test]
    fn digest_is_length_prefixed() {
        assert_ne!(digest(b"ab", b"c"), digest(b"a", b"bc"));
        assert_eq!(digest(b"a", b"bc"), digest(b"a", b"bc"));
    }

    #[test]
    fn expiry() {
        let c = AuthCache::new(CacheConfig {
            ttl: Duration::from_millis(1),
            negative_ttl: Duration::ZERO,
            max_entries: 10,
        });
        c.put(b"u", b"p", Ok(AuthInfo::default()));
        c.put(b"u", b"x", Err("no".into()));
        assert_eq!(c.len(), 1, "negative_ttl 0 caches no failures");
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.get(b"u", b"p").is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded() {
        let c = cache(3);
        for i in 0..10u8 {
            c.put(&[b'u', i], b"p", Ok(AuthInfo::default()));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(b"u\x09", b"p").is_some(), "newest kept");
        assert!(c.get(b"u\x00", b"p").is_none(), "oldest evicted");
        // Per-user bound.
        let c = cache(100);
        for i in 0..10u8 {
            c.put(b"u", &[i], Err("no".into()));
        }
        assert_eq!(c.len(), PER_USER);
        // Refreshing one key many times keeps the order queue bounded.
        for _ in 0..1000 {
            c.put(b"v", b"p", Ok(AuthInfo::default()));
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
