//! The leases and unreported byte counts this process holds, per Redis hash
//! tag, and their renewal: one script per tag for all of its live sessions.

use super::config::OnError;
use super::conn::{Connector, ErrorLog};
use redis::Script;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    pub(super) tag: String,
    pub(super) member: String,
}

/// Live leases and pending bytes by hash tag (`{kp:...}`).
#[derive(Default)]
pub(super) struct Leases(Mutex<HashMap<String, TagLeases>>);

impl Leases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, TagLeases>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The byte counters this process adds to `tag`'s fleet totals.
    pub fn tag_bytes(&self, tag: &str) -> Arc<TagBytes> {
        self.map().entry(tag.to_string()).or_default().bytes.clone()
    }

    pub fn register(&self, tag: &str, member: &str) {
        self.map()
            .entry(tag.to_string())
            .or_default()
            .members
            .insert(member.to_string());
    }

    pub fn unregister(&self, tag: &str, member: &str) {
        if let Some(t) = self.map().get_mut(tag) {
            t.members.remove(member);
        }
    }

    /// Bytes of `tag` not yet reported, reset to zero (the caller reports them).
    pub fn take_bytes(&self, tag: &str) -> (u64, u64) {
        match self.map().get(tag) {
            Some(t) => (t.bytes.up.swap(0, Relaxed), t.bytes.down.swap(0, Relaxed)),
            None => (0, 0),
        }
    }

    /// Live leases this process holds (all keys).
    pub fn live(&self) -> usize {
        self.map().values().map(|t| t.members.len()).sum()
    }

    /// Forgets live leases without releasing them, as a killed process would (tests).
    pub fn forget(&self) {
        self.map().clear();
    }

    /// One renewal script per limit key with live leases or unreported bytes.
    pub async fn renew_all(
        &self,
        conn: &Connector,
        script: &Script,
        ttl: Duration,
        errors: &ErrorLog,
        on_error: OnError,
    ) {
        let work: Vec<(String, Vec<String>, u64, u64)> = {
            let mut l = self.map();
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
            let mut inv = script.prepare_invoke();
            inv.key(format!("{tag}:s"))
                .key(format!("{tag}:st"))
                .arg(ttl.as_millis() as u64)
                .arg(up)
                .arg(down);
            for m in &members {
                inv.arg(m);
            }
            if let Err(e) = conn.call::<i64>(inv).await {
                errors.record("lease renewal", &e, on_error);
                // Put the bytes back for the next tick.
                let l = self.map();
                if let Some(t) = l.get(&tag) {
                    t.bytes.up.fetch_add(up, Relaxed);
                    t.bytes.down.fetch_add(down, Relaxed);
                }
            }
        }
    }
}
