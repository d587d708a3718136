//! `kumoproxy.configure_redis{...}` as the backend takes it.

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
