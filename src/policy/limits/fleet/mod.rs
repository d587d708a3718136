//! Fleet-wide enforcement on Redis (`scope = 'fleet'`).
//!
//! Every process on the same Redis shares, per limit key:
//! - `…:s`  a sorted set of session leases, score = expiry (ms, Redis clock),
//!   KumoMTA's lease model: a crashed process's leases expire by themselves
//! - `…:r`  the GCRA theoretical arrival time (µs) of `connect_rate`
//! - `…:q:<window start>` bytes of quota handed out to sessions in this window
//! - `…:st` a hash of counters (connect_refused, bytes_up, bytes_down)
//!
//! All keys of one limit key share the hash tag `{kp:<escaped key>}` so one
//! script can touch them all on Redis Cluster. Admission is ONE script (one
//! round trip); the end of a session is one more (release). Live leases are
//! renewed by a per-process tick with one script per limit key for all of its
//! sessions. Scripts read the time from Redis (`TIME`), so hosts' clocks only
//! matter for which quota window is current.
//!
//! Files: [`config`] (`configure_redis`), [`scripts`] (the Lua scripts, key
//! naming), [`conn`] (connecting, timeouts, failure log), [`leases`] (leases
//! held and their renewal); this one admits, releases and reads stats.

mod config;
mod conn;
mod leases;
mod scripts;

pub use config::{OnError, RedisConfig, RedisTarget};
pub use conn::ErrorLog;
pub use leases::{FleetLease, TagBytes};
pub use scripts::redis_tag;

use super::spec::{LimitsSpec, Quota};
use conn::Connector;
use leases::Leases;
use scripts::Scripts;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Why an admission was refused by the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRefusal {
    pub kind: String,
    pub retry_after: Duration,
    pub sessions: u64,
}

/// A successful fleet admission.
#[derive(Debug)]
pub struct FleetAdmitted {
    /// The lease (None when max_sessions is not limited); release it at the end.
    pub lease: Option<FleetLease>,
    /// First quota chunk (0 when quota is not limited).
    pub grant: u64,
    pub sessions: u64,
}

/// Values for `limit_stats` from Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetStats {
    pub sessions: u64,
    pub connect_refused: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub quota_used: u64,
}

pub struct FleetBackend {
    pub config: RedisConfig,
    rt: tokio::runtime::Handle,
    conn: Connector,
    leases: Leases,
    lease_prefix: String,
    next_lease: AtomicU64,
    pub errors: ErrorLog,
    scripts: Scripts,
    stopped: AtomicBool,
}

impl std::fmt::Debug for FleetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn window_of(q: &Quota) -> (u64, u64) {
    q.period.window(super::local::unix_secs())
}

impl FleetBackend {
    /// Validates the target and starts the renewal tick on `rt`. Connects lazily:
    /// a Redis that is down at start-up is an outage like any other.
    pub fn new(config: RedisConfig, rt: tokio::runtime::Handle) -> Result<Arc<Self>, String> {
        match &config.target {
            RedisTarget::Url(u) => {
                redis::Client::open(u.as_str()).map_err(|e| format!("url: {e}"))?;
            }
            RedisTarget::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err("cluster: needs at least one node URL".into());
                }
                redis::cluster::ClusterClient::new(nodes.clone())
                    .map_err(|e| format!("cluster: {e}"))?;
            }
        }
        let mut rnd = [0u8; 6];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd)
            .map_err(|_| "no randomness for lease ids".to_string())?;
        let mut lease_prefix = format!("{}-", std::process::id());
        for b in rnd {
            let _ = write!(lease_prefix, "{b:02x}");
        }
        let b = Arc::new(FleetBackend {
            conn: Connector::new(&config),
            config,
            rt: rt.clone(),
            leases: Leases::default(),
            lease_prefix,
            next_lease: AtomicU64::new(0),
            errors: ErrorLog::default(),
            scripts: Scripts::new(),
            stopped: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&b);
        let every = b.config.lease_ttl / 3;
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(b) = weak.upgrade() else { return };
                // A replaced backend keeps renewing its live sessions' leases
                // until they end; a stopped one with none left is done.
                if b.stopped.load(Relaxed) && b.live_leases() == 0 {
                    return;
                }
                b.renew_all().await;
            }
        });
        Ok(b)
    }

    /// Stops the renewal tick once no lease is live (a replaced configuration;
    /// with `forget_leases`, tests' "crash").
    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
    }

    /// One round trip: lease, connect_rate and the first quota chunk.
    /// `Err` is a Redis failure (the caller applies `on_error`).
    pub async fn admit(
        &self,
        key: &str,
        spec: &LimitsSpec,
    ) -> Result<Result<FleetAdmitted, FleetRefusal>, String> {
        let tag = redis_tag(key);
        let max = spec.max_sessions.unwrap_or(0);
        let member = if max > 0 {
            format!(
                "{}-{}",
                self.lease_prefix,
                self.next_lease.fetch_add(1, Relaxed)
            )
        } else {
            String::new()
        };
        let (t_us, burst) = match &spec.connect_rate {
            Some(r) => (r.interval().as_micros().max(1) as u64, r.burst()),
            None => (0, 0),
        };
        let (qkey, limit, chunk, expire_at, window_end) = match &spec.quota {
            Some(q) => {
                let (start, end) = window_of(q);
                (
                    format!("{tag}:q:{start}"),
                    q.bytes,
                    q.chunk(),
                    end + 3600,
                    end,
                )
            }
            None => (format!("{tag}:q"), 0, 0, 0, 0),
        };
        // The lease is registered before the script runs, so a renewal tick
        // that starts meanwhile already includes it.
        if max > 0 {
            self.leases.register(&tag, &member);
        }
        let mut inv = self.scripts.admit.prepare_invoke();
        inv.key(format!("{tag}:s"))
            .key(format!("{tag}:r"))
            .key(&qkey)
            .key(format!("{tag}:st"))
            .arg(&member)
            .arg(self.config.lease_ttl.as_millis() as u64)
            .arg(max)
            .arg(t_us)
            .arg(burst)
            .arg(limit)
            .arg(chunk)
            .arg(expire_at)
            .arg(window_end);
        let r: Result<(i64, String, u64, u64, u64), String> = self.conn.call(inv).await;
        let (ok, kind, retry_ms, grant, sessions) = match r {
            Ok(v) => v,
            Err(e) => {
                if max > 0 {
                    self.leases.unregister(&tag, &member);
                }
                return Err(e);
            }
        };
        if ok != 1 {
            if max > 0 {
                self.leases.unregister(&tag, &member);
            }
            return Ok(Err(FleetRefusal {
                kind,
                retry_after: Duration::from_millis(retry_ms),
                sessions,
            }));
        }
        Ok(Ok(FleetAdmitted {
            lease: (max > 0).then_some(FleetLease { tag, member }),
            grant,
            sessions,
        }))
    }

    /// The byte counters this process adds to `key`'s fleet totals.
    pub fn tag_bytes(&self, key: &str) -> Arc<TagBytes> {
        self.leases.tag_bytes(&redis_tag(key))
    }

    /// Ends a session: one round trip, run in the background (Drop cannot wait).
    /// `unused_quota` goes back to the window it was taken from (`quota`).
    pub fn release(
        self: &Arc<Self>,
        key: &str,
        lease: Option<FleetLease>,
        quota: Option<(&Quota, u64)>,
    ) {
        let tag = redis_tag(key);
        let member = match lease {
            Some(l) => {
                self.leases.unregister(&l.tag, &l.member);
                l.member
            }
            None => String::new(),
        };
        let (up, down) = self.leases.take_bytes(&tag);
        let (qkey, unused) = match quota {
            Some((q, unused)) => (format!("{tag}:q:{}", window_of(q).0), unused),
            None => (format!("{tag}:q"), 0),
        };
        if member.is_empty() && unused == 0 && up == 0 && down == 0 {
            return;
        }
        let b = self.clone();
        self.rt.spawn(async move {
            let mut inv = b.scripts.release.prepare_invoke();
            inv.key(format!("{tag}:s"))
                .key(&qkey)
                .key(format!("{tag}:st"))
                .arg(&member)
                .arg(unused)
                .arg(up)
                .arg(down);
            if let Err(e) = b.conn.call::<i64>(inv).await {
                // The lease expires by itself within lease_ttl; bytes are lost from stats.
                b.errors.record("release", &e, b.config.on_error);
            }
        });
    }

    /// The next quota chunk for a live session (`Err`: Redis failed).
    pub async fn take_chunk(&self, key: &str, q: &Quota) -> Result<u64, String> {
        let tag = redis_tag(key);
        let (start, end) = window_of(q);
        let mut inv = self.scripts.chunk.prepare_invoke();
        inv.key(format!("{tag}:q:{start}"))
            .arg(q.bytes)
            .arg(q.chunk())
            .arg(end + 3600);
        self.conn.call(inv).await
    }

    /// Fleet-wide values for `limit_stats`.
    pub async fn stats(&self, key: &str, quota: Option<&Quota>) -> Result<FleetStats, String> {
        let tag = redis_tag(key);
        let qkey = match quota {
            Some(q) => format!("{tag}:q:{}", window_of(q).0),
            None => format!("{tag}:q"),
        };
        let mut inv = self.scripts.stats.prepare_invoke();
        inv.key(format!("{tag}:s"))
            .key(format!("{tag}:st"))
            .key(qkey);
        let (sessions, connect_refused, bytes_up, bytes_down, quota_used): (
            u64,
            u64,
            u64,
            u64,
            i64,
        ) = self.conn.call(inv).await?;
        Ok(FleetStats {
            sessions,
            connect_refused,
            bytes_up,
            bytes_down,
            quota_used: quota_used.max(0) as u64,
        })
    }

    /// One renewal script per limit key with live leases or unreported bytes.
    pub async fn renew_all(&self) {
        self.leases
            .renew_all(
                &self.conn,
                &self.scripts.renew,
                self.config.lease_ttl,
                &self.errors,
                self.config.on_error,
            )
            .await
    }

    /// Live leases this process holds (all keys).
    pub fn live_leases(&self) -> usize {
        self.leases.live()
    }

    /// Forgets live leases without releasing them, as a killed process would (tests).
    pub fn forget_leases(&self) {
        self.leases.forget()
    }
}
