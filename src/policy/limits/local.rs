//! Per-process enforcement: a state per limit key with lock-free GCRA for
//! `connect_rate`, lock-free byte shapers for `bandwidth`, a session counter for
//! `max_sessions`, and a quota count that sessions draw from in chunks.
//!
//! The relay only touches [`ByteShaper`] (atomics). The map of keys is locked
//! only to find a key's state at admission; idle keys are swept so memory stays
//! bounded by the keys that are live or recently used.

use super::spec::{Quota, Rate};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Monotonic nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    // +1 s so that a zero "tat" (theoretical arrival time) is always in the past.
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
        + 1_000_000_000
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Generic Cell Rate Algorithm over one atomic: the theoretical arrival time.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// Takes one cell, or says how long until one is free.
    pub fn check(&self, rate: &Rate, now: u64) -> Result<(), Duration> {
        let t = rate.interval().as_nanos() as u64;
        let tau = t.saturating_mul(rate.burst());
        let mut tat = self.tat.load(Relaxed);
        loop {
            let new = tat.max(now) + t;
            if new - now > tau {
                return Err(Duration::from_nanos(new - now - tau));
            }
            match self.tat.compare_exchange_weak(tat, new, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(cur) => tat = cur,
            }
        }
    }

    /// True once the state is back to "never used" (safe to forget).
    fn recovered(&self, now: u64) -> bool {
        self.tat.load(Relaxed) <= now
    }
}

/// What a [`ByteShaper`] says about the next transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Move at most this many bytes now.
    Go(usize),
    /// Nothing may move yet: ask again after this long.
    Wait(Duration),
}

/// A token bucket (as GCRA on bytes) shared by every session of a key in one
/// direction. Lock-free: one atomic, a CAS per grant.
#[derive(Debug)]
pub struct ByteShaper {
    rate: u64,
    burst_ns: u64,
    min_grant: usize,
    tat: AtomicU64,
}

/// How much may go at once after an idle period: 50 ms worth. Short enough that
/// a measured rate stays within a few % of the setting, long enough that the
/// relay moves large blocks (few syscalls, splice stays efficient).
const BURST: Duration = Duration::from_millis(50);

impl ByteShaper {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1);
        ByteShaper {
            rate,
            burst_ns: BURST.as_nanos() as u64,
            // Wait for at least 20 ms worth (bounded) rather than trickling tiny writes.
            min_grant: (rate / 50).clamp(1, 16 * 1024) as usize,
            tat: AtomicU64::new(0),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn cost_ns(&self, bytes: u64) -> u64 {
        ((bytes as u128 * 1_000_000_000).div_ceil(self.rate as u128)) as u64
    }

    /// How many of `want` bytes may move now, or how long to wait.
    pub fn take(&self, want: usize, now: u64) -> Grant {
        if want == 0 {
            return Grant::Go(0);
        }
        let need = want.min(self.min_grant) as u64;
        let mut tat = self.tat.load(Relaxed);
        loop {
            let base = tat.max(now);
            let limit = now + self.burst_ns;
            let avail_ns = limit.saturating_sub(base);
            let avail = (avail_ns as u128 * self.rate as u128 / 1_000_000_000) as u64;
            if avail < need {
                let wait = (base + self.cost_ns(need)).saturating_sub(limit);
                return Grant::Wait(Duration::from_nanos(wait.max(100_000)));
            }
            let g = (want as u64).min(avail);
            let new = base + self.cost_ns(g);
            match self.tat.compare_exchange_weak(tat, new, Relaxed, Relaxed) {
                Ok(_) => return Grant::Go(g as usize),
                Err(cur) => tat = cur,
            }
        }
    }

    /// A datagram larger than the whole bucket (50 ms of the rate) could never
    /// go in one piece. It may when the bucket is full: the bucket goes into
    /// debt for it, so the rate over time stays exact. False when `want` fits
    /// the bucket (ask [`take`](Self::take)) or the bucket is not full.
    pub fn take_oversized(&self, want: usize, now: u64) -> bool {
        let capacity = (self.burst_ns as u128 * self.rate as u128 / 1_000_000_000) as u64;
        if want as u64 <= capacity {
            return false;
        }
        let mut tat = self.tat.load(Relaxed);
        loop {
            if tat > now {
                return false;
            }
            let new = now + self.cost_ns(want as u64);
            match self.tat.compare_exchange_weak(tat, new, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(cur) => tat = cur,
            }
        }
    }

    /// Gives back bytes granted but not moved (a short read or write).
    pub fn refund(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let c = self.cost_ns(bytes as u64);
        let _ = self
            .tat
            .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(c)));
    }
}

/// The local count for one quota window.
#[derive(Debug, Default)]
struct QuotaWindow {
    start: u64,
    end: u64,
    used: u64,
}

/// Everything this process knows about one limit key.
#[derive(Debug, Default)]
pub struct KeyState {
    pub sessions: AtomicU64,
    pub connect_refused: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub gcra: Gcra,
    shapers: Mutex<[Option<Arc<ByteShaper>>; 2]>,
    quota: Mutex<QuotaWindow>,
    last_used: AtomicU64,
}

impl KeyState {
    /// The shared shaper of one direction (0 up, 1 down) for this rate. A key
    /// whose rate changed (another login's limits) gets a fresh shaper.
    pub fn shaper(&self, dir: usize, rate: u64) -> Arc<ByteShaper> {
        let mut s = self.shapers.lock().unwrap_or_else(|e| e.into_inner());
        match &s[dir] {
            Some(sh) if sh.rate() == rate => sh.clone(),
            _ => {
                let sh = Arc::new(ByteShaper::new(rate));
                s[dir] = Some(sh.clone());
                sh
            }
        }
    }

    /// Takes up to one chunk from this window's quota; 0 = exhausted.
    pub fn quota_take(&self, q: &Quota, chunk: u64) -> u64 {
        let (start, end) = q.period.window(unix_secs());
        let mut w = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        if w.start != start {
            *w = QuotaWindow {
                start,
                end,
                used: 0,
            };
        }
        let grant = chunk.min(q.bytes.saturating_sub(w.used));
        w.used += grant;
        grant
    }

    /// Returns what a session took but did not use, if still the same window.
    pub fn quota_return(&self, q: &Quota, bytes: u64) {
        let (start, _) = q.period.window(unix_secs());
        let mut w = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        if w.start == start {
            w.used = w.used.saturating_sub(bytes);
        }
    }

    /// Quota taken (granted to sessions) in the current window.
    pub fn quota_used(&self, q: &Quota) -> u64 {
        let (start, _) = q.period.window(unix_secs());
        let w = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        if w.start == start {
            w.used
        } else {
            0
        }
    }

    fn idle_and_forgettable(&self, now: u64) -> bool {
        if self.sessions.load(Relaxed) != 0 || !self.gcra.recovered(now) {
            return false;
        }
        if now.saturating_sub(self.last_used.load(Relaxed)) < IDLE_TTL.as_nanos() as u64 {
            return false;
        }
        // A quota count must outlive idleness until its window ends.
        let w = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        w.used == 0 || unix_secs() >= w.end
    }
}

/// Keys idle for this long (and with nothing left to remember) are forgotten.
pub const IDLE_TTL: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The per-process map of limit keys.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    map: Mutex<HashMap<String, Arc<KeyState>>>,
    last_sweep: AtomicU64,
}

impl LocalLimiter {
    /// The state of `key`, created on first use.
    pub fn entry(&self, key: &str) -> Arc<KeyState> {
        let now = now_ns();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let last = self.last_sweep.load(Relaxed);
        if now.saturating_sub(last) > SWEEP_EVERY.as_nanos() as u64 {
            self.last_sweep.store(now, Relaxed);
            // Arc::strong_count == 1: no session or caller holds the state.
            map.retain(|_, st| Arc::strong_count(st) > 1 || !st.idle_and_forgettable(now));
        }
        let st = match map.get(key) {
            Some(st) => st.clone(),
            None => {
                let st = Arc::new(KeyState::default());
                map.insert(key.to_string(), st.clone());
                st
            }
        };
        st.last_used.store(now, Relaxed);
        st
    }

    /// The state of `key` if it exists (for stats; never creates one).
    pub fn peek(&self, key: &str) -> Option<Arc<KeyState>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forces a sweep as if `now` were the time (tests).
    pub fn sweep_at(&self, now: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, st| Arc::strong_count(st) > 1 || !st.idle_and_forgettable(now));
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{parse_rate, QuotaPeriod};
    use super::*;

    #[test]
    fn gcra_burst_then_rate() {
        let r = parse_rate("10/s,max_burst=5").unwrap();
        let g = Gcra::default();
        let t0 = 10_000_000_000;
        for i in 0..5 {
            assert!(g.check(&r, t0).is_ok(), "cell {i}");
        }
        let wait = g.check(&r, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // one interval later exactly one more
        assert!(g.check(&r, t0 + 100_000_000).is_ok());
        assert!(g.check(&r, t0 + 100_000_000).is_err());
        // default burst = limit
        let r = parse_rate("3/min").unwrap();
        let g = Gcra::default();
        assert!((0..3).all(|_| g.check(&r, t0).is_ok()));
        assert_eq!(g.check(&r, t0).unwrap_err(), Duration::from_secs(20));
    }

    #[test]
    fn shaper_rate_is_accurate() {
        // 1 MB/s over 2 simulated seconds in 64 KiB requests.
        let sh = ByteShaper::new(1_000_000);
        let mut now = 10_000_000_000u64;
        let end = now + 2_000_000_000;
        let mut moved = 0u64;
        while now < end {
            match sh.take(65536, now) {
                Grant::Go(n) => moved += n as u64,
                Grant::Wait(d) => now += d.as_nanos() as u64,
            }
        }
        // 2 s at the rate plus at most the 50 ms burst
        assert!((2_000_000..=2_060_000).contains(&moved), "{moved}");
    }

    #[test]
    fn an_oversized_datagram_goes_into_debt_only_from_a_full_bucket() {
        let sh = ByteShaper::new(10_000); // bucket 500 B
        let now = 10_000_000_000u64;
        assert!(
            !sh.take_oversized(400, now),
            "fits the bucket: take() decides"
        );
        assert!(sh.take_oversized(1400, now));
        // 1400 B at 10 KB/s: 140 ms owed. Until the debt is within the 50 ms
        // burst, nothing goes; another oversized one only from a full bucket.
        assert!(!sh.take_oversized(1400, now + 80_000_000));
        assert!(matches!(sh.take(100, now + 80_000_000), Grant::Wait(_)));
        assert!(!sh.take_oversized(1400, now + 139_000_000));
        assert!(sh.take_oversized(1400, now + 140_000_000));
    }

    #[test]
    fn shaper_refund_and_min_grant() {
        let sh = ByteShaper::new(100_000); // burst 5000 B, min grant 2000 B
        let now = 10_000_000_000u64;
        assert_eq!(sh.take(100_000, now), Grant::Go(5000));
        match sh.take(100, now) {
            Grant::Wait(d) => assert_eq!(d, Duration::from_millis(1)),
            g => panic!("{g:?}"),
        }
        sh.refund(3000);
        assert_eq!(sh.take(100_000, now), Grant::Go(3000));
        assert!(matches!(sh.take(2000, now), Grant::Wait(d) if d == Duration::from_millis(20)));
    }

    #[test]
    fn quota_chunks_and_window() {
        let st = KeyState::default();
        let q = Quota {
            bytes: 250,
            period: QuotaPeriod::Day,
        };
        assert_eq!(st.quota_take(&q, 100), 100);
        assert_eq!(st.quota_take(&q, 100), 100);
        assert_eq!(st.quota_take(&q, 100), 50);
        assert_eq!(st.quota_take(&q, 100), 0);
        st.quota_return(&q, 30);
        assert_eq!(st.quota_used(&q), 220);
        assert_eq!(st.quota_take(&q, 100), 30);
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let l = LocalLimiter::default();
        let held = l.entry("busy");
        held.sessions.fetch_add(1, Relaxed);
        drop(l.entry("idle"));
        let q = Quota {
            bytes: 1000,
            period: QuotaPeriod::Day,
        };
        l.entry("quota").quota_take(&q, 10);
        assert_eq!(l.len(), 3);
        l.sweep_at(now_ns() + IDLE_TTL.as_nanos() as u64 + 1);
        // busy has a session, quota has a count for today; idle is gone
        assert!(l.peek("idle").is_none());
        assert!(l.peek("busy").is_some());
        assert!(l.peek("quota").is_some());
        held.sessions.fetch_sub(1, Relaxed);
        drop(held);
        l.sweep_at(now_ns() + IDLE_TTL.as_nanos() as u64 + 1);
        assert!(l.peek("busy").is_none());
    }
}
