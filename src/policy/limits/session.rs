//! What an admitted session holds ([`SessionLimits`]): its byte shapers, its
//! quota budget (taken in chunks, locally or from Redis) and its fleet lease,
//! all given back when it is dropped.

use super::fleet::{FleetBackend, FleetLease, OnError, TagBytes};
use super::local::{now_ns, ByteShaper, Grant, KeyState};
use super::outcome::{limit_text, Counters, Cut, Dir, RefusalKind};
use super::spec::{LimitsSpec, Quota};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A session's share of the quota: a budget of bytes taken in chunks.
#[derive(Debug)]
pub(super) struct QuotaLease {
    pub(super) quota: Quota,
    /// Bytes this session may still move before it needs another chunk.
    pub(super) budget: AtomicI64,
    fetching: AtomicBool,
    pub(super) exhausted: AtomicBool,
    /// Admitted while Redis was down with on_error = 'allow': not counted.
    pub(super) unmetered: AtomicBool,
    /// The cut was counted (both directions may find the quota gone).
    cut: AtomicBool,
}

/// What an admitted session holds; dropping it ends the session's lease.
#[derive(Debug)]
pub struct SessionLimits {
    key: Arc<str>,
    spec: Arc<LimitsSpec>,
    pub(super) state: Arc<KeyState>,
    shapers: [Option<Arc<ByteShaper>>; 2],
    pub(super) quota: Option<Arc<QuotaLease>>,
    pub(super) fleet: Option<Arc<FleetBackend>>,
    pub(super) lease: Option<FleetLease>,
    pub(super) tag_bytes: Option<Arc<TagBytes>>,
    counters: Arc<Counters>,
    pub(super) counted: bool,
}

impl SessionLimits {
    pub(super) fn new(
        key: &str,
        spec: &Arc<LimitsSpec>,
        state: Arc<KeyState>,
        counters: Arc<Counters>,
    ) -> Self {
        let shapers = [
            spec.bandwidth.up.map(|r| state.shaper(0, r)),
            spec.bandwidth.down.map(|r| state.shaper(1, r)),
        ];
        SessionLimits {
            key: key.into(),
            spec: spec.clone(),
            state,
            shapers,
            quota: spec.quota.map(|quota| {
                Arc::new(QuotaLease {
                    quota,
                    budget: AtomicI64::new(0),
                    fetching: AtomicBool::new(false),
                    exhausted: AtomicBool::new(false),
                    unmetered: AtomicBool::new(false),
                    cut: AtomicBool::new(false),
                })
            }),
            fleet: None,
            lease: None,
            tag_bytes: None,
            counters,
            counted: false,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn spec(&self) -> &Arc<LimitsSpec> {
        &self.spec
    }

    /// True when the relay must ask [`permit`](Self::permit) before moving bytes;
    /// otherwise it relays freely (splice fast path) and only reports totals.
    pub fn meters_bytes(&self) -> bool {
        self.spec.meters_bytes()
    }

    /// The quota lease while bytes count against it (not once it proved unmetered).
    fn metered_quota(&self) -> Option<&Arc<QuotaLease>> {
        self.quota.as_ref().filter(|q| !q.unmetered.load(Relaxed))
    }

    /// Gives `n` bytes taken from the quota budget back (they did not move).
    fn refund_quota(&self, n: usize) {
        if let Some(q) = self.metered_quota() {
            q.budget.fetch_add(n as i64, Relaxed);
        }
    }

    /// How many of `want` bytes may move now in `dir`. Waits for the bandwidth
    /// shaper (a timer, no lock) and, rarely, for a quota chunk. `Err`: the
    /// quota is used up and the session must end. Follow with [`record`](Self::record).
    pub async fn permit(&self, dir: Dir, want: usize) -> Result<usize, Cut> {
        if let Some(n) = self.try_permit(dir, want)? {
            return Ok(n);
        }
        // Boxed: the waiting path (timers, a Redis call) would otherwise size
        // every relay's future, metered or not.
        Box::pin(self.permit_slow(dir, want)).await
    }

    /// The common case without waiting: budget left and tokens in the bucket.
    /// `Ok(None)`: wait with [`permit_slow`](Self::permit_slow).
    pub fn try_permit(&self, dir: Dir, want: usize) -> Result<Option<usize>, Cut> {
        let mut n = want;
        if let Some(q) = self.metered_quota() {
            let b = q.budget.load(Relaxed);
            if b <= 0 {
                if q.exhausted.load(Relaxed) {
                    return Err(self.cut());
                }
                return Ok(None);
            }
            let take = (want as i64).min(b);
            if q.budget
                .compare_exchange(b, b - take, Relaxed, Relaxed)
                .is_err()
            {
                return Ok(None);
            }
            if b - take < q.quota.chunk() as i64 / 2 && self.fleet.is_some() {
                self.prefetch(q);
            }
            n = take as usize;
        }
        if let Some(sh) = &self.shapers[dir as usize] {
            match sh.take(n, now_ns()) {
                Grant::Go(g) => {
                    self.refund_quota(n - g);
                    n = g;
                }
                Grant::Wait(_) => {
                    self.refund_quota(n);
                    return Ok(None);
                }
            }
        }
        Ok(Some(n))
    }

    /// All of `want` bytes at once for a unit larger than the shaper's bucket
    /// (a UDP datagram), from a full bucket: see [`ByteShaper::take_oversized`].
    /// `Ok(false)`: it cannot go now (or it fits the bucket: use `try_permit`).
    /// Follow a `true` with [`record`](Self::record).
    pub fn try_permit_oversized(&self, dir: Dir, want: usize) -> Result<bool, Cut> {
        let Some(sh) = &self.shapers[dir as usize] else {
            return Ok(false);
        };
        if let Some(q) = self.metered_quota() {
            // All of it from the budget, or nothing.
            let b = q.budget.load(Relaxed);
            if b < want as i64 {
                if b <= 0 && q.exhausted.load(Relaxed) {
                    return Err(self.cut());
                }
                return Ok(false);
            }
            if q.budget
                .compare_exchange(b, b - want as i64, Relaxed, Relaxed)
                .is_err()
            {
                return Ok(false);
            }
        }
        if sh.take_oversized(want, now_ns()) {
            return Ok(true);
        }
        self.refund_quota(want);
        Ok(false)
    }

    /// [`permit`](Self::permit) when [`try_permit`](Self::try_permit) said wait.
    pub async fn permit_slow(&self, dir: Dir, want: usize) -> Result<usize, Cut> {
        let mut n = want;
        if let Some(q) = &self.quota {
            n = self.reserve(q, want).await?;
        }
        if let Some(sh) = &self.shapers[dir as usize] {
            loop {
                match sh.take(n, now_ns()) {
                    Grant::Go(g) => {
                        self.refund_quota(n - g);
                        n = g;
                        break;
                    }
                    Grant::Wait(d) => tokio::time::sleep(d).await,
                }
            }
        }
        Ok(n)
    }

    /// Accounts a transfer: `permitted` from [`permit`](Self::permit), `moved`
    /// what actually went (the rest is given back).
    pub fn record(&self, dir: Dir, permitted: usize, moved: usize) {
        let unused = permitted.saturating_sub(moved);
        if unused > 0 {
            if let Some(sh) = &self.shapers[dir as usize] {
                sh.refund(unused);
            }
            self.refund_quota(unused);
        }
        self.count(dir, moved as u64);
    }

    /// Counts bytes moved without asking first (unmetered sessions' relay).
    pub fn count(&self, dir: Dir, moved: u64) {
        if moved == 0 {
            return;
        }
        let (local, fleet) = match dir {
            Dir::Up => (&self.state.bytes_up, self.tag_bytes.as_ref().map(|t| &t.up)),
            Dir::Down => (
                &self.state.bytes_down,
                self.tag_bytes.as_ref().map(|t| &t.down),
            ),
        };
        local.fetch_add(moved, Relaxed);
        if let Some(f) = fleet {
            f.fetch_add(moved, Relaxed);
        }
    }

    async fn reserve(&self, q: &Arc<QuotaLease>, want: usize) -> Result<usize, Cut> {
        if q.unmetered.load(Relaxed) {
            return Ok(want);
        }
        let chunk = q.quota.chunk() as i64;
        loop {
            let b = q.budget.load(Relaxed);
            if b > 0 {
                let take = (want as i64).min(b);
                if q.budget
                    .compare_exchange_weak(b, b - take, Relaxed, Relaxed)
                    .is_err()
                {
                    continue;
                }
                // Fleet: ask for the next chunk while half of this one is left,
                // so a steady session never waits on Redis.
                if b - take < chunk / 2 && self.fleet.is_some() {
                    self.prefetch(q);
                }
                return Ok(take as usize);
            }
            if q.exhausted.load(Relaxed) {
                return Err(self.cut());
            }
            match &self.fleet {
                None => {
                    let got = self.state.quota_take(&q.quota, q.quota.chunk());
                    if got == 0 {
                        q.exhausted.store(true, Relaxed);
                    } else {
                        q.budget.fetch_add(got as i64, Relaxed);
                    }
                }
                Some(_) => {
                    if !q.fetching.swap(true, Relaxed) {
                        self.fetch_chunk(q).await;
                    } else {
                        // Another fetch (the prefetch) is in flight: wait for it.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
    }

    fn cut(&self) -> Cut {
        if let Some(q) = &self.quota {
            if !q.cut.swap(true, Relaxed) {
                self.counters.quota_cuts.fetch_add(1, Relaxed);
            }
        }
        Cut {
            reason: format!(
                "quota used up ({})",
                limit_text(&self.spec, RefusalKind::Quota)
            ),
        }
    }

    fn prefetch(&self, q: &Arc<QuotaLease>) {
        if q.exhausted.load(Relaxed) || q.fetching.swap(true, Relaxed) {
            return;
        }
        let (Some(fleet), q) = (self.fleet.clone(), q.clone()) else {
            return;
        };
        let key = self.key.clone();
        tokio::spawn(async move { fetch_fleet_chunk(&fleet, &key, &q).await });
    }

    async fn fetch_chunk(&self, q: &Arc<QuotaLease>) {
        if let Some(fleet) = &self.fleet {
            fetch_fleet_chunk(fleet, &self.key, q).await;
        }
    }
}

/// Adds one chunk to `q` from Redis; clears `fetching`. On a Redis failure
/// `on_error` decides: allow = the session goes on unmetered, deny = it is cut.
async fn fetch_fleet_chunk(fleet: &FleetBackend, key: &str, q: &QuotaLease) {
    match fleet.take_chunk(key, &q.quota).await {
        Ok(0) => q.exhausted.store(true, Relaxed),
        Ok(g) => {
            q.budget.fetch_add(g as i64, Relaxed);
        }
        Err(e) => {
            fleet
                .errors
                .record("quota chunk", &e, fleet.config.on_error);
            match fleet.config.on_error {
                OnError::Allow => q.unmetered.store(true, Relaxed),
                OnError::Deny => q.exhausted.store(true, Relaxed),
            }
        }
    }
    q.fetching.store(false, Relaxed);
}

impl Drop for SessionLimits {
    fn drop(&mut self) {
        if self.counted {
            self.state.sessions.fetch_sub(1, Relaxed);
        }
        let unused = self
            .metered_quota()
            .map(|q| (q.quota, q.budget.swap(0, Relaxed).max(0) as u64));
        match &self.fleet {
            Some(fleet) => {
                let quota = unused.as_ref().map(|(q, n)| (q, *n));
                fleet.release(&self.key, self.lease.take(), quota);
            }
            None => {
                if let Some((q, n)) = unused {
                    if n > 0 {
                        self.state.quota_return(&q, n);
                    }
                }
            }
        }
    }
}
