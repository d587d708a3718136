//! What admissions and cuts report: refusals and their kinds, cuts, the
//! process-wide refusal counters for `/metrics`, `limit_stats` values.

use super::spec::LimitsSpec;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
    pub(super) fn from_script(s: &str) -> RefusalKind {
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
    pub(super) fn refused(&self, kind: RefusalKind) {
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

/// The limit as configured, for log lines (`max_sessions = 3`).
pub(super) fn limit_text(spec: &LimitsSpec, kind: RefusalKind) -> String {
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
