//! Live counters of a listener, readable from Lua at any time without locking.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Invariant once idle: accepted = completed + failed + rejected.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Requests refused by permissions or the request policy (reply 0x02).
    pub denied: AtomicU64,
    pub timeouts: AtomicU64,
    pub bytes_to_remote: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub accept_errors: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("accepted", self.accepted.load(Relaxed)),
            ("active", self.active.load(Relaxed)),
            ("completed", self.completed.load(Relaxed)),
            ("failed", self.failed.load(Relaxed)),
            ("rejected", self.rejected.load(Relaxed)),
            ("auth_failures", self.auth_failures.load(Relaxed)),
            ("denied", self.denied.load(Relaxed)),
            ("timeouts", self.timeouts.load(Relaxed)),
            ("bytes_to_remote", self.bytes_to_remote.load(Relaxed)),
            ("bytes_to_client", self.bytes_to_client.load(Relaxed)),
            ("accept_errors", self.accept_errors.load(Relaxed)),
            (
                "tls_handshake_failures",
                self.tls_handshake_failures.load(Relaxed),
            ),
        ]
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Holds one `active` slot; released even if the session task panics or is dropped.
pub struct ActiveGuard<'a>(pub &'a Stats);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
