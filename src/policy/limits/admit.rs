//! The process's [`Limiter`]: admission (local and fleet) and `limit_stats`.

use super::fleet::{FleetBackend, OnError};
use super::local::{self, now_ns, LocalLimiter};
use super::outcome::{limit_text, Counters, LimitStats, Refusal, RefusalKind};
use super::session::SessionLimits;
use super::spec::{LimitsSpec, Scope};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// All limit state of one process.
#[derive(Debug, Default)]
pub struct Limiter {
    local: LocalLimiter,
    fleet: RwLock<Option<Arc<FleetBackend>>>,
    pub counters: Arc<Counters>,
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
