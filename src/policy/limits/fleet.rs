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

use super::spec::{LimitsSpec, Quota};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Url(String),
    Cluster(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Allow,
    Deny,
}

/// `kumoproxy.configure_redis{...}`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// Per Redis call (connect, script); past it the call counts as an error.
    pub timeout: Duration,
    pub on_error: OnError,
    /// A session's lease lives this long unless renewed (every third of it).
    /// Bound for a crashed process's leases to disappear.
    pub lease_ttl: Duration,
}

impl RedisConfig {
    pub fn new(target: RedisTarget) -> Self {
        RedisConfig {
            target,
            timeout: Duration::from_millis(500),
            on_error: OnError::Allow,
            lease_ttl: Duration::from_secs(30),
        }
    }
}

/// A single node (reconnecting manager) or a cluster connection; both clone cheaply.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis key prefix of a limit key: `{kp:<escaped>}`. Bytes outside
/// `[A-Za-z0-9._@+-]` are %-escaped (so `{`, `}` and `:` never appear and the
/// hash tag cannot be broken); keys longer than 64 bytes escaped are replaced
/// by `#` + SHA-256 (`#` is itself always escaped, so the two forms never meet).
/// Distinct limit keys therefore never share Redis keys.
pub fn redis_tag(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    out.push_str("{kp:");
    let start = out.len();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"._@+-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.len() - start > 64 {
        out.truncate(start);
        out.push('#');
        for b in ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref() {
            let _ = write!(out, "{b:02x}");
        }
    }
    out.push('}');
    out
}

const ADMIT: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local max = tonumber(ARGV[3])
local T = tonumber(ARGV[4])
local limit = tonumber(ARGV[6])
local n = 0
local function refuse(kind, retry_ms)
  redis.call('HINCRBY', KEYS[4], 'connect_refused', 1)
  redis.call('EXPIRE', KEYS[4], 3024000)
  return {0, kind, retry_ms, 0, n}
end
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
  n = redis.call('ZCARD', KEYS[1])
  if n >= max then
    return refuse('max_sessions', 1000)
  end
end
local used = 0
if limit > 0 then
  used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used >= limit then
    return refuse('quota', math.max(0, tonumber(ARGV[9]) * 1000 - now_ms))
  end
end
local new_tat = 0
if T > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat < now_us then tat = now_us end
  new_tat = tat + T
  local tau = T * tonumber(ARGV[5])
  if new_tat - now_us > tau then
    return refuse('connect_rate', math.ceil((new_tat - now_us - tau) / 1000))
  end
  redis.call('SET', KEYS[2], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now_us) / 1000) + 1)
end
local grant = 0
if limit > 0 then
  grant = math.min(tonumber(ARGV[7]), limit - used)
  redis.call('INCRBY', KEYS[3], grant)
  redis.call('EXPIREAT', KEYS[3], ARGV[8])
end
if max > 0 then
  local ttl = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], string.format('%.0f', now_ms + ttl), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  n = n + 1
end
return {1, '', 0, grant, n}
"#;

/// Renews every live lease of one key and adds the bytes relayed since the last tick.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local exp = string.format('%.0f', now_ms + ttl)
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', exp, ARGV[i])
end
if #ARGV >= 4 then
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if tonumber(ARGV[2]) > 0 or tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'bytes_up', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'bytes_down', ARGV[3])
  redis.call('EXPIRE', KEYS[2], 3024000)
end
return 1
"#;

/// Ends a session: drops its lease, gives back unused quota, adds its last bytes.
const RELEASE: &str = r#"
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
local unused = tonumber(ARGV[2])
if unused > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DECRBY', KEYS[2], unused)
end
if tonumber(ARGV[3]) > 0 or tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[3], 'bytes_up', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'bytes_down', ARGV[4])
  redis.call('EXPIRE', KEYS[3], 3024000)
end
return 1
"#;

/// Takes the next quota chunk: returns the grant (0 = exhausted).
const CHUNK: &str = r#"
local limit = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= limit then return 0 end
local grant = math.min(tonumber(ARGV[2]), limit - used)
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return grant
"#;

const STATS: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')
local h = redis.call('HMGET', KEYS[2], 'connect_refused', 'bytes_up', 'bytes_down')
local q = redis.call('GET', KEYS[3]) or '0'
return {n, tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0'), tonumber(q)}
"#;

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

/// Bytes relayed by this process for one key, not yet added to Redis.
#[derive(Debug, Default)]
pub struct TagBytes {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

#[derive(Default)]
struct TagLeases {
    members: HashSet<String>,
    bytes: Arc<TagBytes>,
}

/// A live session's lease; its holder must call [`FleetBackend::release`].
#[derive(Debug)]
pub struct FleetLease {
    tag: String,
    member: String,
}

/// Counts Redis failures and rate-limits their WARN line to one per second.
#[derive(Debug, Default)]
pub struct ErrorLog {
    pub errors: AtomicU64,
    last_warn_ns: AtomicU64,
}

impl ErrorLog {
    pub fn record(&self, what: &str, err: &str, on_error: OnError) {
        self.errors.fetch_add(1, Relaxed);
        let now = super::local::now_ns();
        let last = self.last_warn_ns.load(Relaxed);
        if now.saturating_sub(last) >= 1_000_000_000
            && self
                .last_warn_ns
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let verdict = match on_error {
                OnError::Allow => "sessions are admitted without fleet limits (on_error = 'allow')",
                OnError::Deny => "sessions are refused (on_error = 'deny')",
            };
            tracing::warn!(
                "fleet limits: Redis unavailable during {what}: {}; {verdict} until it is back ({} errors so far)",
                err.escape_default(),
                self.errors.load(Relaxed)
            );
        }
    }
}

pub struct FleetBackend {
    pub config: RedisConfig,
    rt: tokio::runtime::Handle,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// When the last connect attempt failed (ns): retry at most once a second
    /// so an outage costs callers a fast error, not a connect timeout each.
    last_connect_fail: AtomicU64,
    leases: Mutex<HashMap<String, TagLeases>>,
    lease_prefix: String,
    next_lease: AtomicU64,
    pub errors: ErrorLog,
    admit: Script,
    renew: Script,
    release_script: Script,
    chunk: Script,
    stats: Script,
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
            config,
            rt: rt.clone(),
            conn: tokio::sync::Mutex::new(None),
            last_connect_fail: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            lease_prefix,
            next_lease: AtomicU64::new(0),
            errors: ErrorLog::default(),
            admit: Script::new(ADMIT),
            renew: Script::new(RENEW),
            release_script: Script::new(RELEASE),
            chunk: Script::new(CHUNK),
            stats: Script::new(STATS),
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

    async fn connection(&self) -> Result<Conn, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let now = super::local::now_ns();
        let last = self.last_connect_fail.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < 1_000_000_000 {
            return Err("not connected (retrying)".into());
        }
        let t = self.config.timeout;
        let made = tokio::time::timeout(t, async {
            match &self.config.target {
                RedisTarget::Url(u) => {
                    let client = redis::Client::open(u.as_str())?;
                    let cfg = ConnectionManagerConfig::new()
                        .set_connection_timeout(t)
                        .set_response_timeout(t)
                        .set_number_of_retries(1)
                        .set_max_delay(1000);
                    ConnectionManager::new_with_config(client, cfg)
                        .await
                        .map(Conn::Single)
                }
                RedisTarget::Cluster(nodes) => {
                    let client = redis::cluster::ClusterClient::builder(nodes.clone())
                        .connection_timeout(t)
                        .response_timeout(t)
                        .retries(1)
                        .build()?;
                    client.get_async_connection().await.map(Conn::Cluster)
                }
            }
        })
        .await;
        match made {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                self.last_connect_fail.store(now, Relaxed);
                Err(e.to_string())
            }
            Err(_) => {
                self.last_connect_fail.store(now, Relaxed);
                Err(format!("connect timed out after {t:?}"))
            }
        }
    }

    /// Runs a script invocation with the configured timeout.
    async fn call<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.config.timeout, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {:?}", self.config.timeout)),
        }
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
            self.register(&tag, &member);
        }
        let mut inv = self.admit.prepare_invoke();
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
        let r: Result<(i64, String, u64, u64, u64), String> = self.call(inv).await;
        let (ok, kind, retry_ms, grant, sessions) = match r {
            Ok(v) => v,
            Err(e) => {
                if max > 0 {
                    self.unregister(&tag, &member);
                }
                return Err(e);
            }
        };
        if ok != 1 {
            if max > 0 {
                self.unregister(&tag, &member);
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
        let tag = redis_tag(key);
        let mut l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        l.entry(tag).or_default().bytes.clone()
    }

    fn register(&self, tag: &str, member: &str) {
        let mut l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        l.entry(tag.to_string())
            .or_default()
            .members
            .insert(member.to_string());
    }

    fn unregister(&self, tag: &str, member: &str) {
        let mut l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = l.get_mut(tag) {
            t.members.remove(member);
        }
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
                self.unregister(&l.tag, &l.member);
                l.member
            }
            None => String::new(),
        };
        let (up, down) = {
            let l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            match l.get(&tag) {
                Some(t) => (t.bytes.up.swap(0, Relaxed), t.bytes.down.swap(0, Relaxed)),
                None => (0, 0),
            }
        };
        let (qkey, unused) = match quota {
            Some((q, unused)) => (format!("{tag}:q:{}", window_of(q).0), unused),
            None => (format!("{tag}:q"), 0),
        };
        if member.is_empty() && unused == 0 && up == 0 && down == 0 {
            return;
        }
        let b = self.clone();
        self.rt.spawn(async move {
            let mut inv = b.release_script.prepare_invoke();
            inv.key(format!("{tag}:s"))
                .key(&qkey)
                .key(format!("{tag}:st"))
                .arg(&member)
                .arg(unused)
                .arg(up)
                .arg(down);
            if let Err(e) = b.call::<i64>(inv).await {
                // The lease expires by itself within lease_ttl; bytes are lost from stats.
                b.errors.record("release", &e, b.config.on_error);
            }
        });
    }

    /// The next quota chunk for a live session (`Err`: Redis failed).
    pub async fn take_chunk(&self, key: &str, q: &Quota) -> Result<u64, String> {
        let tag = redis_tag(key);
        let (start, end) = window_of(q);
        let mut inv = self.chunk.prepare_invoke();
        inv.key(format!("{tag}:q:{start}"))
            .arg(q.bytes)
            .arg(q.chunk())
            .arg(end + 3600);
        self.call(inv).await
    }

    /// Fleet-wide values for `limit_stats`.
    pub async fn stats(&self, key: &str, quota: Option<&Quota>) -> Result<FleetStats, String> {
        let tag = redis_tag(key);
        let qkey = match quota {
            Some(q) => format!("{tag}:q:{}", window_of(q).0),
            None => format!("{tag}:q"),
        };
        let mut inv = self.stats.prepare_invoke();
        inv.key(format!("{tag}:s"))
            .key(format!("{tag}:st"))
            .key(qkey);
        let (sessions, connect_refused, bytes_up, bytes_down, quota_used): (
            u64,
            u64,
            u64,
            u64,
            i64,
        ) = self.call(inv).await?;
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
        let work: Vec<(String, Vec<String>, u64, u64)> = {
            let mut l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            // Forget keys with no lease and nobody else holding their counters.
            l.retain(|_, t| {
                !t.members.is_empty()
                    || Arc::strong_count(&t.bytes) > 1
                    || t.bytes.up.load(Relaxed) > 0
                    || t.bytes.down.load(Relaxed) > 0
            });
            l.iter()
                .map(|(tag, t)| {
                    (
                        tag.clone(),
                        t.members.iter().cloned().collect::<Vec<_>>(),
                        t.bytes.up.swap(0, Relaxed),
                        t.bytes.down.swap(0, Relaxed),
                    )
                })
                .filter(|(_, m, up, down)| !m.is_empty() || *up > 0 || *down > 0)
                .collect()
        };
        for (tag, members, up, down) in work {
            let mut inv = self.renew.prepare_invoke();
            inv.key(format!("{tag}:s"))
                .key(format!("{tag}:st"))
                .arg(self.config.lease_ttl.as_millis() as u64)
                .arg(up)
                .arg(down);
            for m in &members {
                inv.arg(m);
            }
            if let Err(e) = self.call::<i64>(inv).await {
                self.errors
                    .record("lease renewal", &e, self.config.on_error);
                // Put the bytes back for the next tick.
                let l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(t) = l.get(&tag) {
                    t.bytes.up.fetch_add(up, Relaxed);
                    t.bytes.down.fetch_add(down, Relaxed);
                }
            }
        }
    }

    /// Live leases this process holds (all keys).
    pub fn live_leases(&self) -> usize {
        let l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        l.values().map(|t| t.members.len()).sum()
    }

    /// Forgets live leases without releasing them, as a killed process would (tests).
    pub fn forget_leases(&self) {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_cannot_collide_or_break_out() {
        assert_eq!(redis_tag("acme"), "{kp:acme}");
        assert_eq!(redis_tag("a}b"), "{kp:a%7Db}");
        assert_eq!(redis_tag("a:b{c"), "{kp:a%3Ab%7Bc}");
        assert_ne!(redis_tag("a%7Db"), redis_tag("a}b"));
        let long = "x".repeat(100);
        let t = redis_tag(&long);
        assert!(t.starts_with("{kp:#") && t.len() == 4 + 1 + 64 + 1, "{t}");
        assert_ne!(redis_tag("#abc"), "{kp:#abc}");
        for k in ["a}b", "{x}", "\r\nFLUSHALL\r\n", &long] {
            let t = redis_tag(k);
            assert_eq!(t.matches('{').count(), 1);
            assert_eq!(t.matches('}').count(), 1);
            assert!(t.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
