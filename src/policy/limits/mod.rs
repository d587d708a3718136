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
//!
//! The rest of this folder: [`admit`] (the [`Limiter`]), [`session`]
//! ([`SessionLimits`]), [`outcome`] (refusals, cuts, counters, stats).

pub mod admit;
pub mod fleet;
pub mod local;
pub mod outcome;
pub mod session;
pub mod spec;

#[cfg(test)]
mod tests;

pub use admit::Limiter;
pub use fleet::{FleetBackend, OnError, RedisConfig, RedisTarget};
pub use outcome::{Counters, Cut, Dir, LimitStats, Refusal, RefusalKind};
pub use session::SessionLimits;
pub use spec::{LimitsError, LimitsSpec, Raw, Scope};

use std::sync::Arc;
#[cfg(test)]
use std::{sync::atomic::Ordering::Relaxed, time::Duration};

/// Whether a session with these limits (its own, else the listener's) goes
/// through the limiter at all.
pub fn applies(own: Option<&Arc<LimitsSpec>>, defaults: Option<&Arc<LimitsSpec>>) -> bool {
    own.or(defaults).is_some_and(|s| !s.is_empty())
}

/// The limits of one session: the AuthInfo's own, else the listener's
/// defaults; `None` when neither limits anything (the session skips the limiter).
/// `Err` carries the (escaped) key and why, for the session's log line.
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

static LIMITER: crate::host::runtime::PerProcess<Limiter> = crate::host::runtime::PerProcess::new();

/// This process's limiter (a forked child gets its own, with no Redis backend).
pub fn limiter() -> &'static Limiter {
    LIMITER.get_or_init(Limiter::new)
}
