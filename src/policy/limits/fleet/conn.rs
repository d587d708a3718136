//! The connection to Redis (one node through a reconnecting manager, or a
//! cluster) and the bookkeeping of its failures.

use super::config::{OnError, RedisConfig, RedisTarget};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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

/// Counts Redis failures and rate-limits their WARN line to one per second.
#[derive(Debug, Default)]
pub struct ErrorLog {
    pub errors: AtomicU64,
    last_warn_ns: AtomicU64,
}

impl ErrorLog {
    pub fn record(&self, what: &str, err: &str, on_error: OnError) {
        self.errors.fetch_add(1, Relaxed);
        let now = crate::policy::limits::local::now_ns();
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

/// Connects lazily and once (the connection is then shared and reconnects by
/// itself); runs scripts with the configured timeout.
pub(super) struct Connector {
    target: RedisTarget,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// When the last connect attempt failed (ns): retry at most once a second
    /// so an outage costs callers a fast error, not a connect timeout each.
    last_connect_fail: AtomicU64,
}

impl Connector {
    pub fn new(config: &RedisConfig) -> Self {
        Connector {
            target: config.target.clone(),
            timeout: config.timeout,
            conn: tokio::sync::Mutex::new(None),
            last_connect_fail: AtomicU64::new(0),
        }
    }

    async fn connection(&self) -> Result<Conn, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let now = crate::policy::limits::local::now_ns();
        let last = self.last_connect_fail.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < 1_000_000_000 {
            return Err("not connected (retrying)".into());
        }
        let t = self.timeout;
        let made = tokio::time::timeout(t, async {
            match &self.target {
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
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }
}
