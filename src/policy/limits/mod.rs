//! Per-identity limits: `max_sessions`, `connect_rate`, `bandwidth`, `quota`,
//! enforced per process (`scope = 'local'`) or fleet-wide on Redis (`'fleet'`).
//!
//! - [`spec`]: parsing `limits = {...}` (Lua tables and `auth_http` JSON)
//! - [`local`]: per-process state (GCRA, byte shapers, counters, quota windows)
//! - [`fleet`]: the Redis backend (leases, GCRA and quota chunks in one script)
//!
//! A session is admitted once ([`Limiter::admit`]); what it gets back,
//! [`SessionLimits`], is asked by the relay before moving bytes when the spec
//! shapes or meters bytes ([`SessionLimits::permit`], [`SessionLimits::record`]),
//! and gives everything back when dropped. Nothing here touches Lua.

pub mod fleet;
pub mod local;
pub mod spec;

#[cfg(test)]
mod tests;

pub use fleet::{FleetBackend, OnError, RedisConfig, RedisTarget};
pub use spec::{LimitsError, LimitsSpec, Raw, Scope};

use fleet::{FleetLease, TagBytes};
use local::{now_ns, ByteShaper, Grant, KeyState, LocalLimiter};
use spec::Quota;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Direction of relayed bytes: up = client -> remote, down = remote -> client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up = 0,
    Down = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    MaxSessions,
    ConnectRate,
    Quota,
    /// Fleet limits could not be checked and `on_error = 'deny'` (or no Redis is configured).
    Unavailable,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::MaxSessions => "max_sessions",
            RefusalKind::ConnectRate => "connect_rate",
            RefusalKind::Quota => "quota",
            RefusalKind::Unavailable => "redis_unavailable",
        }
    }
    fn from_script(s: &str) -> RefusalKind {
        match s {
            "max_sessions" => RefusalKind::MaxSessions,
            "connect_rate" => RefusalKind::ConnectRate,
            _ => RefusalKind::Quota,
        }
    }
}

/// A refused admission: what to log and what to tell the client.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// For HTTP `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
    /// The limit as configured, for the log line (`max_sessions = 3`).
    pub limit: String,
}

/// Why a live session was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub reason: String,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "limits: {}", self.reason)
    }
}

impl std::error::Error for Cut {}

/// The limits of one session: the AuthInfo's own, else the listener's
/// defaults; `None` when neither limits anything (the session skips the limiter).
/// `Err` carries the (escaped) key and why, for the session's log line.
/// Whether a session with these limits (its own, else the listener's) goes
/// through the limiter at all.
pub fn applies(own: Option<&Arc<LimitsSpec>>, defaults: Option<&Arc<LimitsSpec>>) -> bool {
    own.or(defaults).is_some_and(|s| !s.is_empty())
}

/// `own`/`key`: the AuthInfo's `limits` and `limit_key()`; `peer` is the key of
/// a session with no identity.
pub async fn admit_session(
    own: Option<&Arc<LimitsSpec>>,
    key: Option<&str>,
    defaults: Option<&Arc<LimitsSpec>>,
    peer: std::net::IpAddr,
) -> Result<Option<Box<SessionLimits>>, (String, Refusal)> {
    let Some(spec) = own.or(defaults) else {
        return Ok(None);
    };
    if spec.is_empty() {
        return Ok(None);
    }
    let peer_s;
    let key = match key {
        Some(k) => k,
        None => {
            peer_s = peer.to_string();
            &peer_s
        }
    };
    limiter()
        .admit(key, spec)
        .await
        // Boxed: kept for the whole relay in every limited session's future.
        .map(|s| Some(Box::new(s)))
        .map_err(|r| (crate::proto::text::printable(key).into_owned(), r))
}

impl Refusal {
    /// One line for the log: `key 'alice': max_sessions (max_sessions = 3)`.
    pub fn describe(&self, key: &str) -> String {
        format!("key '{key}': {} ({})", self.kind.as_str(), self.limit)
    }
    /// `Retry-After` seconds (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or(1)
            .max(1)
    }
}

/// Process-wide refusal counters for `/metrics`, by kind (no label per key).
#[derive(Debug, Default)]
pub struct Counters {
    pub refused_max_sessions: AtomicU64,
    pub refused_connect_rate: AtomicU64,
    pub refused_quota: AtomicU64,
    pub refused_unavailable: AtomicU64,
    /// Sessions closed mid-way because the quota ran out.
    pub quota_cuts: AtomicU64,
    /// Sessions admitted without fleet checks because Redis failed (`on_error = 'allow'`).
    pub admitted_unchecked: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("max_sessions", self.refused_max_sessions.load(Relaxed)),
            ("connect_rate", self.refused_connect_rate.load(Relaxed)),
            ("quota", self.refused_quota.load(Relaxed)),
            ("redis_unavailable", self.refused_unavailable.load(Relaxed)),
        ]
    }
    fn refused(&self, kind: RefusalKind) {
        match kind {
            RefusalKind::MaxSessions => &self.refused_max_sessions,
            RefusalKind::ConnectRate => &self.refused_connect_rate,
            RefusalKind::Quota => &self.refused_quota,
            RefusalKind::Unavailable => &self.refused_unavailable,
        }
        .fetch_add(1, Relaxed);
    }
}

/// `listener:limit_stats(key)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitStats {
    pub sessions: u64,
    pub connect_refused: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Quota handed out in the current window (None: no quota in the spec).
    pub quota_used: Option<u64>,
    pub quota_remaining: Option<u64>,
}

static LIMITER: crate::host::runtime::PerProcess<Limiter> = crate::host::runtime::PerProcess::new();

/// This process's limiter (a forked child gets its own, with no Redis backend).
pub fn limiter() -> &'static Limiter {
    LIMITER.get_or_init(Limiter::new)
}

/// All limit state of one process.
#[derive(Debug, Default)]
pub struct Limiter {
    local: LocalLimiter,
    fleet: RwLock<Option<Arc<FleetBackend>>>,
    pub counters: Arc<Counters>,
}

fn limit_text(spec: &LimitsSpec, kind: RefusalKind) -> String {
    match kind {
        RefusalKind::MaxSessions => format!("max_sessions = {}", spec.max_sessions.unwrap_or(0)),
        RefusalKind::ConnectRate => match &spec.connect_rate {
            Some(r) => format!("connect_rate = {r}"),
            None => "connect_rate".into(),
        },
        RefusalKind::Quota => match &spec.quota {
            Some(q) => format!("quota = {} bytes/{}", q.bytes, q.period.as_str()),
            None => "quota".into(),
        },
        RefusalKind::Unavailable => "scope = fleet".into(),
    }
}

impl Limiter {
    pub fn new() -> Self {
        Limiter::default()
    }

    /// Installs (or replaces) the Redis backend for `scope = 'fleet'`.
    pub fn set_fleet(&self, backend: Option<Arc<FleetBackend>>) {
        let mut f = self.fleet.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = f.take() {
            old.stop();
        }
        *f = backend;
    }

    pub fn fleet(&self) -> Option<Arc<FleetBackend>> {
        self.fleet.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Redis failures so far (fleet scope), for `/metrics`.
    pub fn redis_errors(&self) -> u64 {
        self.fleet().map_or(0, |f| f.errors.errors.load(Relaxed))
    }

    /// Number of limit keys this process remembers (bounded by live/recent keys).
    pub fn local_keys(&self) -> usize {
        self.local.len()
    }

    /// Admits one session of `key` or says why not. Local scope never waits;
    /// fleet scope costs one Redis round trip.
    pub async fn admit(&self, key: &str, spec: &Arc<LimitsSpec>) -> Result<SessionLimits, Refusal> {
        let r = match spec.scope {
            Scope::Local => self.admit_local(key, spec),
            Scope::Fleet => self.admit_fleet(key, spec).await,
        };
        if let Err(refusal) = &r {
            self.counters.refused(refusal.kind);
        }
        r
    }

    fn refusal(&self, spec: &LimitsSpec, kind: RefusalKind, retry: Option<Duration>) -> Refusal {
        Refusal {
            kind,
            retry_after: retry,
            limit: limit_text(spec, kind),
        }
    }

    fn admit_local(&self, key: &str, spec: &Arc<LimitsSpec>) -> Result<SessionLimits, Refusal> {
        let state = self.local.entry(key);
        let refuse = |kind, retry| {
            state.connect_refused.fetch_add(1, Relaxed);
            Err(self.refusal(spec, kind, retry))
        };
        if let Some(q) = &spec.quota {
            if state.quota_used(q) >= q.bytes {
                let (_, end) = q.period.window(local::unix_secs());
                let retry = Duration::from_secs(end.saturating_sub(local::unix_secs()));
                return refuse(RefusalKind::Quota, Some(retry));
            }
        }
        let n = state.sessions.fetch_add(1, Relaxed) + 1;
        let mut s = SessionLimits::new(key, spec, state.clone(), self.counters.clone());
        s.counted = true;
        if let Some(max) = spec.max_sessions {
            if n > max {
                drop(s);
                return refuse(RefusalKind::MaxSessions, Some(Duration::from_secs(1)));
            }
        }
        if let Some(rate) = &spec.connect_rate {
            if let Err(wait) = state.gcra.check(rate, now_ns()) {
                drop(s);
                return refuse(RefusalKind::ConnectRate, Some(wait));
            }
        }
        if let Some(q) = &s.quota {
            let first = state.quota_take(&q.quota, q.quota.chunk());
            if first == 0 {
                drop(s);
                return refuse(RefusalKind::Quota, None);
            }
            q.budget.store(first as i64, Relaxed);
        }
        Ok(s)
    }

    async fn admit_fleet(
        &self,
        key: &str,
        spec: &Arc<LimitsSpec>,
    ) -> Result<SessionLimits, Refusal> {
        let Some(fleet) = self.fleet() else {
            return Err(self.refusal(spec, RefusalKind::Unavailable, None));
        };
        let state = self.local.entry(key);
        match fleet.admit(key, spec).await {
            Ok(Ok(adm)) => {
                let mut s = SessionLimits::new(key, spec, state, self.counters.clone());
                s.state.sessions.fetch_add(1, Relaxed);
                s.counted = true;
                s.lease = adm.lease;
                s.tag_bytes = Some(fleet.tag_bytes(key));
                if let Some(q) = &s.quota {
                    q.budget.store(adm.grant as i64, Relaxed);
                    if adm.grant == 0 {
                        q.exhausted.store(true, Relaxed);
                    }
                }
                s.fleet = Some(fleet);
                Ok(s)
            }
            Ok(Err(refused)) => {
                state.connect_refused.fetch_add(1, Relaxed);
                let kind = RefusalKind::from_script(&refused.kind);
                Err(self.refusal(spec, kind, Some(refused.retry_after)))
            }
            Err(e) => {
                fleet.errors.record("admission", &e, fleet.config.on_error);
                match fleet.config.on_error {
                    OnError::Deny => {
                        state.connect_refused.fetch_add(1, Relaxed);
                        Err(self.refusal(
                            spec,
                            RefusalKind::Unavailable,
                            Some(Duration::from_secs(1)),
                        ))
                    }
                    OnError::Allow => {
                        self.counters.admitted_unchecked.fetch_add(1, Relaxed);
                        let mut s = SessionLimits::new(key, spec, state, self.counters.clone());
                        s.state.sessions.fetch_add(1, Relaxed);
                        s.counted = true;
                        if let Some(q) = &s.quota {
                            // Not metered: Redis is the only place the count lives.
                            q.unmetered.store(true, Relaxed);
                        }
                        Ok(s)
                    }
                }
            }
        }
    }

    /// Values for `limit_stats(key)` under `spec` (fleet-wide for fleet scope).
    pub async fn stats(&self, key: &str, spec: &LimitsSpec) -> Result<LimitStats, String> {
        let quota = spec.quota.as_ref();
        let mut st = match spec.scope {
            Scope::Local => match self.local.peek(key) {
                Some(s) => LimitStats {
                    sessions: s.sessions.load(Relaxed),
                    connect_refused: s.connect_refused.load(Relaxed),
                    bytes_up: s.bytes_up.load(Relaxed),
                    bytes_down: s.bytes_down.load(Relaxed),
                    quota_used: quota.map(|q| s.quota_used(q)),
                    quota_remaining: None,
                },
                None => LimitStats {
                    quota_used: quota.map(|_| 0),
                    ..Default::default()
                },
            },
            Scope::Fleet => {
                let fleet = self
                    .fleet()
                    .ok_or("scope is 'fleet' but kumoproxy.configure_redis was not called")?;
                let f = fleet.stats(key, quota).await?;
                // Bytes of live sessions not yet reported by the renewal tick.
                let pending = self.local.peek(key).map_or((0, 0), |_| {
                    let t = fleet.tag_bytes(key);
                    (t.up.load(Relaxed), t.down.load(Relaxed))
                });
                LimitStats {
                    sessions: f.sessions,
                    connect_refused: f.connect_refused,
                    bytes_up: f.bytes_up + pending.0,
                    bytes_down: f.bytes_down + pending.1,
                    quota_used: quota.map(|_| f.quota_used),
                    quota_remaining: None,
                }
            }
        };
        if let (Some(q), Some(used)) = (quota, st.quota_used) {
            st.quota_remaining = Some(q.bytes.saturating_sub(used));
        }
        Ok(st)
    }
}

/// A session's share of the quota: a budget of bytes taken in chunks.
#[derive(Debug)]
struct QuotaLease {
    quota: Quota,
    /// Bytes this session may still move before it needs another chunk.
    budget: AtomicI64,
    fetching: AtomicBool,
    exhausted: AtomicBool,
    /// Admitted while Redis was down with on_error = 'allow': not counted.
    unmetered: AtomicBool,
    /// The cut was counted (both directions may find the quota gone).
    cut: AtomicBool,
}

/// What an admitted session holds; dropping it ends the session's lease.
#[derive(Debug)]
pub struct SessionLimits {
    key: Arc<str>,
    spec: Arc<LimitsSpec>,
    state: Arc<KeyState>,
    shapers: [Option<Arc<ByteShaper>>; 2],
    quota: Option<Arc<QuotaLease>>,
    fleet: Option<Arc<FleetBackend>>,
    lease: Option<FleetLease>,
    tag_bytes: Option<Arc<TagBytes>>,
    counters: Arc<Counters>,
    counted: bool,
}

impl SessionLimits {
    fn new(
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
        if let Some(q) = &self.quota {
            if !q.unmetered.load(Relaxed) {
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
        }
        if let Some(sh) = &self.shapers[dir as usize] {
            match sh.take(n, now_ns()) {
                Grant::Go(g) => {
                    if let Some(q) = &self.quota {
                        if !q.unmetered.load(Relaxed) {
                            q.budget.fetch_add((n - g) as i64, Relaxed);
                        }
                    }
                    n = g;
                }
                Grant::Wait(_) => {
                    if let Some(q) = &self.quota {
                        if !q.unmetered.load(Relaxed) {
                            q.budget.fetch_add(n as i64, Relaxed);
                        }
                    }
                    return Ok(None);
                }
            }
        }
        Ok(Some(n))
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
                        if let Some(q) = &self.quota {
                            if !q.unmetered.load(Relaxed) {
                                q.budget.fetch_add((n - g) as i64, Relaxed);
                            }
                        }
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
            if let Some(q) = &self.quota {
                if !q.unmetered.load(Relaxed) {
                    q.budget.fetch_add(unused as i64, Relaxed);
                }
            }
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
            .quota
            .as_ref()
            .filter(|q| !q.unmetered.load(Relaxed))
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
