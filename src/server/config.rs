//! What a listener is: its configuration, and the state its accept loop, its
//! sessions and the Lua listener object share (counters, cancellation, auth
//! state, the per-IP session counts).

use crate::host::net::Keepalive;
use crate::host::stats::Stats;
use crate::policy::events::EventPump as Pump;
use crate::policy::identity::TrustedHosts;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a listener does with each accepted connection.
#[derive(Debug, Clone)]
pub enum Service {
    /// `start_proxy_listener`: a SOCKS5 session.
    Socks5,
    /// `src:forward{}`: relay to `to` through an egress source.
    Forward {
        source: Arc<crate::egress::EgressSource>,
        to: crate::proto::socks5::TargetAddr,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub service: Service,
    pub listen: SocketAddr,
    /// Handshake steps, connect, waiting for a Lua decision, and idle in the data phase.
    pub timeout: Duration,
    pub use_splice: bool,
    pub require_auth: bool,
    pub trusted_hosts: TrustedHosts,
    pub keepalive: Keepalive,
    pub max_connections: Option<u64>,
    /// Sessions at once from one client IP address (abuse control).
    pub max_connections_per_ip: Option<u64>,
    pub reuse_port: bool,
    pub backlog: i32,
    /// Upstream chaining: every CONNECT leaves through this egress source.
    pub egress: Option<Arc<crate::egress::EgressSource>>,
    /// `use_tls`: the whole SOCKS5 conversation runs inside TLS.
    pub tls: Option<Arc<crate::host::tls::TlsServer>>,
    /// With a verified client certificate, still ask for RFC 1929 credentials.
    pub require_password: bool,
    /// Credentials checked by an HTTP service instead of Lua.
    pub auth_http: Option<Arc<crate::policy::auth_http::AuthHttp>>,
    pub auth_cache: Option<crate::policy::auth_cache::CacheConfig>,
    /// `None`: no delay after failed attempts.
    pub auth_failure_delay: Option<crate::policy::auth_cache::DelayConfig>,
    /// Listener-level destination rules, applied to every session; includes the
    /// private-destination denials unless `allow_private_destinations`.
    pub permissions: Arc<crate::policy::permissions::Permissions>,
    /// BIND / policy source addresses; `None` = whatever the host can bind.
    pub allowed_source_addresses: Option<Vec<ipnet::IpNet>>,
    /// Which protocols this port speaks; the client's first byte picks one.
    pub protocols: Protocols,
    /// `limits`: defaults for every identity (an AuthInfo's own replace them).
    pub limits: Option<Arc<crate::policy::limits::LimitsSpec>>,
    /// `udp = true` and its settings; `None`: UDP ASSOCIATE is refused (0x07).
    pub udp: Option<crate::server::udp::UdpListenerConfig>,
    /// `proxy_protocol = { from = {...} }`: balancers that send a PROXY header.
    pub proxy_protocol: Option<crate::server::proxy_inbound::InboundConfig>,
    /// `send_proxy_protocol`: a PROXY header to each destination.
    pub send_proxy: Option<crate::proto::proxy_header::SendProxy>,
    /// Set by `start`: TCP_NODELAY and keepalive were set on the listening socket,
    /// and accepted sockets inherit them (Linux), so sessions skip those syscalls.
    pub sockopts_inherited: bool,
    /// `access_log = { path = ... }`: one JSON line per finished session.
    pub access_log: Option<Arc<crate::host::access_log::Sink>>,
}

/// `protocols = {'socks5', 'http'}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    pub socks5: bool,
    pub http: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            socks5: true,
            http: false,
        }
    }
}

impl Protocols {
    pub const NAMES: [&'static str; 2] = ["socks5", "http"];

    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.socks5 {
            v.push("socks5");
        }
        if self.http {
            v.push("http");
        }
        v
    }
}

impl Config {
    pub fn new(listen: SocketAddr) -> Self {
        Config {
            service: Service::Socks5,
            listen,
            timeout: Duration::from_secs(60),
            use_splice: cfg!(target_os = "linux"),
            require_auth: false,
            trusted_hosts: TrustedHosts::default(),
            keepalive: Keepalive::default(),
            max_connections: None,
            max_connections_per_ip: None,
            reuse_port: false,
            backlog: 1024,
            egress: None,
            tls: None,
            require_password: false,
            protocols: Protocols::default(),
            auth_http: None,
            auth_cache: None,
            auth_failure_delay: Some(crate::policy::auth_cache::DelayConfig::default()),
            permissions: Arc::new(crate::policy::permissions::Permissions::private_destinations()),
            allowed_source_addresses: None,
            limits: None,
            proxy_protocol: None,
            send_proxy: None,
            sockopts_inherited: false,
            udp: None,
            access_log: None,
        }
    }
}

/// What the accept loop, its sessions and the Lua listener object share.
///
/// `listener:reconfigure` makes a new *generation*: a `Shared` with the new
/// `config` (and auth state when that changed) sharing everything else (the
/// counters, tokens, per-IP counts, live sessions) through `Arc`s. New
/// sessions get the latest generation ([`Shared::current`]); running ones keep
/// the one they started with, which is freed when the last of them ends.
pub struct Shared {
    pub config: Config,
    pub local_addr: SocketAddr,
    pub stats: Arc<Stats>,
    /// UDP ASSOCIATE counters (all zero without `udp = true`).
    pub udp: Arc<crate::server::udp::UdpCounters>,
    pub pump: Arc<Pump>,
    /// Cancelled by `close()`/shutdown: stop accepting; sessions go on.
    pub closing: CancellationToken,
    /// Cancelled when the grace period ends: in-flight sessions are cut.
    pub abort: CancellationToken,
    pub accepting: Arc<AtomicBool>,
    /// Auth cache and failure delays (see `auth::check_credentials`).
    pub auth: Arc<crate::policy::auth::AuthState>,
    /// Live sessions per client IP, kept only with `max_connections_per_ip`.
    per_ip: Arc<Mutex<HashMap<IpAddr, u64>>>,
    /// Sessions relaying now: `listener:sessions()`, `close_sessions()`.
    pub sessions: Arc<crate::server::sessions::Registry>,
    /// On the first generation (the one the accept loop and Lua hold): the
    /// latest one, when `reconfigure` made any. Points forward only: no cycle.
    latest: Mutex<Option<Arc<Shared>>>,
}

fn auth_state(config: &Config) -> Arc<crate::policy::auth::AuthState> {
    Arc::new(crate::policy::auth::AuthState {
        cache: config
            .auth_cache
            .clone()
            .map(crate::policy::auth_cache::AuthCache::new),
        delay: crate::policy::auth_cache::FailureDelay::new(config.auth_failure_delay.clone()),
    })
}

impl Shared {
    pub fn new(config: Config, local_addr: SocketAddr, pump: Arc<Pump>) -> Self {
        Shared {
            auth: auth_state(&config),
            config,
            local_addr,
            stats: Default::default(),
            udp: Arc::default(),
            pump,
            closing: CancellationToken::new(),
            abort: CancellationToken::new(),
            accepting: Arc::new(AtomicBool::new(true)),
            per_ip: Default::default(),
            sessions: Default::default(),
            latest: Mutex::new(None),
        }
    }

    /// The generation new sessions get.
    pub fn current(self: &Arc<Self>) -> Arc<Shared> {
        match &*self.latest.lock().unwrap() {
            Some(l) => l.clone(),
            None => self.clone(),
        }
    }

    /// Makes `config` the settings of new sessions (see the type's comment).
    /// The auth cache and failure-delay state carry over unless their
    /// settings changed. Call on the first generation.
    pub fn reconfigure(self: &Arc<Self>, config: Config) {
        let cur = self.current();
        let auth = if config.auth_cache == cur.config.auth_cache
            && config.auth_failure_delay == cur.config.auth_failure_delay
        {
            cur.auth.clone()
        } else {
            auth_state(&config)
        };
        let next = Arc::new(Shared {
            config,
            local_addr: self.local_addr,
            stats: self.stats.clone(),
            udp: self.udp.clone(),
            pump: self.pump.clone(),
            closing: self.closing.clone(),
            abort: self.abort.clone(),
            accepting: self.accepting.clone(),
            auth,
            per_ip: self.per_ip.clone(),
            sessions: self.sessions.clone(),
            latest: Mutex::new(None),
        });
        *self.latest.lock().unwrap() = Some(next);
    }

    pub fn close(&self) {
        self.closing.cancel();
    }

    /// What the credential checks need of this listener.
    pub fn auth_ctx(&self) -> crate::policy::auth::AuthContext<'_> {
        crate::policy::auth::AuthContext {
            state: &self.auth,
            auth_http: self.config.auth_http.as_deref(),
            timeout: self.config.timeout,
            pump: &self.pump,
        }
    }

    /// What the request policy needs of this listener.
    pub fn request_ctx(&self) -> crate::policy::request::RequestContext<'_> {
        crate::policy::request::RequestContext {
            permissions: &self.config.permissions,
            allowed_source_addresses: self.config.allowed_source_addresses.as_deref(),
            egress: self.config.egress.as_ref(),
            timeout: self.config.timeout,
            pump: &self.pump,
            send_proxy: self.config.send_proxy,
        }
    }

    /// Takes a per-IP slot for a new session, or `None` when `ip` is at the limit.
    pub(crate) fn claim_ip(self: &Arc<Self>, ip: IpAddr, max: u64) -> Option<IpSlot> {
        let ip = canonical_ip(ip);
        let mut map = self.per_ip.lock().unwrap();
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            shared: self.clone(),
            ip,
        })
    }
}

/// One session's share of its client IP's count; released when the session ends
/// (or its task is dropped), so the map holds only IPs with live sessions.
pub(crate) struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// An IPv4 client on a dual-stack socket (::ffff:a.b.c.d) is the same client as a.b.c.d.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod per_ip_tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        let pump = Arc::new(Pump::new().unwrap());
        Arc::new(Shared::new(
            Config::new(([127, 0, 0, 1], 0).into()),
            ([127, 0, 0, 1], 0).into(),
            pump,
        ))
    }

    #[test]
    fn per_ip_slots_are_counted_and_released() {
        let s = shared();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = s.claim_ip(a, 2).expect("first slot");
        let two = s
            .claim_ip(mapped, 2)
            .expect("second slot, same client via v4-mapped");
        assert!(s.claim_ip(a, 2).is_none(), "third slot must be refused");
        let other = s.claim_ip(b, 2).expect("another IP has its own count");
        drop(one);
        let three = s
            .claim_ip(a, 2)
            .expect("a released slot can be taken again");
        drop((two, three, other));
        assert!(
            s.per_ip.lock().unwrap().is_empty(),
            "no entry outlives its sessions"
        );
    }
}
