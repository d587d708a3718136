//! The proxy listener: binds, accepts with back-off, hands each connection to a
//! session task. The accept loop never dies on a per-connection error.

use crate::auth::TrustedHosts;
use crate::net::Keepalive;
use crate::pump::Pump;
use crate::runtime::Process;
use crate::stats::Stats;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a listener does with each accepted connection.
#[derive(Debug, Clone)]
pub enum Service {
    /// `start_proxy_listener`: a SOCKS5 session.
    Socks5,
    /// `src:forward{}`: relay to `to` through an egress source.
    Forward {
        source: Arc<crate::egress::EgressSource>,
        to: crate::socks5::TargetAddr,
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
    pub tls: Option<Arc<crate::tls::TlsServer>>,
    /// With a verified client certificate, still ask for RFC 1929 credentials.
    pub require_password: bool,
    /// Credentials checked by an HTTP service instead of Lua.
    pub auth_http: Option<Arc<crate::auth_http::AuthHttp>>,
    pub auth_cache: Option<crate::auth_cache::CacheConfig>,
    /// `None`: no delay after failed attempts.
    pub auth_failure_delay: Option<crate::auth_cache::DelayConfig>,
    /// Listener-level destination rules, applied to every session; includes the
    /// private-destination denials unless `allow_private_destinations`.
    pub permissions: Arc<crate::permissions::Permissions>,
    /// BIND / policy source addresses; `None` = whatever the host can bind.
    pub allowed_source_addresses: Option<Vec<ipnet::IpNet>>,
    /// Which protocols this port speaks; the client's first byte picks one.
    pub protocols: Protocols,
    /// Set by `start`: TCP_NODELAY and keepalive were set on the listening socket,
    /// and accepted sockets inherit them (Linux), so sessions skip those syscalls.
    pub sockopts_inherited: bool,
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
            auth_failure_delay: Some(crate::auth_cache::DelayConfig::default()),
            permissions: Arc::new(crate::permissions::Permissions::private_destinations()),
            allowed_source_addresses: None,
            sockopts_inherited: false,
        }
    }
}

/// What the accept loop, its sessions and the Lua listener object share.
pub struct Shared {
    pub config: Config,
    pub local_addr: SocketAddr,
    pub stats: Stats,
    pub pump: Arc<Pump>,
    /// Cancelled by `close()`/shutdown: stop accepting; sessions go on.
    pub closing: CancellationToken,
    /// Cancelled when the grace period ends: in-flight sessions are cut.
    pub abort: CancellationToken,
    pub accepting: AtomicBool,
    /// Auth cache and failure delays (see `auth::check_credentials`).
    pub auth: crate::auth::AuthState,
    /// Live sessions per client IP, kept only with `max_connections_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, u64>>,
}

impl Shared {
    pub fn new(config: Config, local_addr: SocketAddr, pump: Arc<Pump>) -> Self {
        let auth = crate::auth::AuthState {
            cache: config
                .auth_cache
                .clone()
                .map(crate::auth_cache::AuthCache::new),
            delay: crate::auth_cache::FailureDelay::new(config.auth_failure_delay.clone()),
        };
        Shared {
            config,
            auth,
            local_addr,
            stats: Stats::default(),
            pump,
            closing: CancellationToken::new(),
            abort: CancellationToken::new(),
            accepting: AtomicBool::new(true),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Takes a per-IP slot for a new session, or `None` when `ip` is at the limit.
    fn claim_ip(self: &Arc<Self>, ip: IpAddr, max: u64) -> Option<IpSlot> {
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
struct IpSlot {
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

pub fn start(process: &Process, mut config: Config) -> io::Result<Arc<Shared>> {
    let (std_listener, inherited) = bind(&config)?;
    config.sockopts_inherited = inherited;
    let local_addr = std_listener.local_addr()?;
    let rt = process.runtime();
    let _enter = rt.enter();
    let listener = TcpListener::from_std(std_listener)?;
    let shared = Arc::new(Shared::new(config, local_addr, process.pump().clone()));
    match &shared.config.service {
        Service::Forward { source, to } => tracing::info!(
            "forwarder on {local_addr} -> {to} through egress source '{}'",
            source.name
        ),
        Service::Socks5 if shared.config.tls.is_some() => {
            tracing::info!("proxy listener (TLS) on {local_addr}")
        }
        Service::Socks5 => tracing::info!("proxy listener on {local_addr}"),
    }

    rt.spawn(accept_loop(listener, shared.clone()));
    process
        .listeners
        .lock()
        .unwrap()
        .push(Arc::downgrade(&shared));
    Ok(shared)
}

/// Also reports whether accepted sockets will inherit our TCP options (see Config).
fn bind(config: &Config) -> io::Result<(std::net::TcpListener, bool)> {
    let addr = config.listen;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if config.reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    sock.bind(&addr.into())?;
    sock.listen(config.backlog)?;
    // Linux copies TCP_NODELAY and the keepalive settings from a listening socket
    // to the sockets it accepts: set them once here instead of on every accept.
    let inherited = cfg!(target_os = "linux")
        && crate::net::tune_socket(
            socket2::SockRef::from(&sock),
            &config.keepalive,
            "listening socket",
        );
    Ok((sock.into(), inherited))
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// WARN lines for connections refused by a limit, at most one per
/// [`RefusalLog::EVERY`]: a flood of refused connections must not turn into a
/// flood of log lines. The first refusal is logged at once; the ones after it
/// within the window are counted and logged as one line when it ends. The
/// `rejected` counter is kept exactly, elsewhere.
struct RefusalLog {
    what: &'static str,
    state: Arc<Mutex<RefusalState>>,
}

#[derive(Default)]
struct RefusalState {
    last_line: Option<std::time::Instant>,
    /// Refused since the last line, not yet logged.
    pending: u64,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(1);

    fn new(what: &'static str) -> Self {
        RefusalLog {
            what,
            state: Default::default(),
        }
    }

    fn refused(&self, addr: SocketAddr, peer: SocketAddr, max: u64) {
        let now = std::time::Instant::now();
        let what = self.what;
        let mut st = self.state.lock().unwrap();
        match st.last_line {
            Some(t) if now.duration_since(t) < Self::EVERY => {
                st.pending += 1;
                if st.pending == 1 {
                    // Log the window's count when it ends.
                    let state = self.state.clone();
                    let at = t + Self::EVERY;
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        let mut st = state.lock().unwrap();
                        let n = std::mem::take(&mut st.pending);
                        if n > 0 {
                            st.last_line = Some(std::time::Instant::now());
                            tracing::warn!(
                                "listener {addr}: refused {n} more connection(s) in the last second: {what} ({max}) reached"
                            );
                        }
                    });
                }
            }
            _ => {
                st.last_line = Some(now);
                tracing::warn!("listener {addr}: refusing {peer}: {what} ({max}) reached");
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let addr = shared.local_addr;
    let mut backoff = BACKOFF_MIN;
    let over_max = RefusalLog::new("max_connections");
    let over_max_per_ip = RefusalLog::new("max_connections_per_ip");
    loop {
        let accepted = tokio::select! {
            _ = shared.closing.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_MIN;
                Stats::inc(&shared.stats.accepted);
                if let Some(max) = shared.config.max_connections {
                    if shared.stats.active.load(Ordering::Relaxed) >= max {
                        Stats::inc(&shared.stats.rejected);
                        over_max.refused(addr, peer, max);
                        drop(stream);
                        continue;
                    }
                }
                let slot = match shared.config.max_connections_per_ip {
                    None => None,
                    Some(max) => match shared.claim_ip(peer.ip(), max) {
                        Some(slot) => Some(slot),
                        None => {
                            Stats::inc(&shared.stats.rejected);
                            over_max_per_ip.refused(addr, peer, max);
                            drop(stream);
                            continue;
                        }
                    },
                };
                shared.stats.active.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                // `slot` (per-IP count) is held by the task: released however it ends.
                match &shared.config.service {
                    Service::Socks5 => tokio::spawn(async move {
                        let _slot = slot;
                        crate::session::serve(stream, peer, shared).await
                    }),
                    Service::Forward { source, to } => {
                        let (source, to) = (source.clone(), to.clone());
                        tokio::spawn(async move {
                            let _slot = slot;
                            crate::egress::serve_forward(stream, peer, shared, source, to).await
                        })
                    }
                };
            }
            Err(e) => {
                Stats::inc(&shared.stats.accept_errors);
                if is_resource_exhaustion(&e) {
                    // Out of fds or memory: the pending connection stays in the backlog.
                    // Retrying at once would spin; wait, doubling up to a second.
                    if backoff == BACKOFF_MIN {
                        tracing::warn!("listener {addr}: accept failed: {e}; backing off");
                    }
                    tokio::select! {
                        _ = shared.closing.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                } else {
                    // ECONNABORTED and friends concern one connection only.
                    tracing::debug!("listener {addr}: accept error (skipped): {e}");
                }
            }
        }
    }
    shared.accepting.store(false, Ordering::Release);
    tracing::info!("proxy listener on {addr} closed");
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use socket2::SockRef;

    /// Sessions skip TCP_NODELAY/keepalive on accepted sockets because the kernel
    /// copies them from the listener: check that it really does.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap());
        config.keepalive.time = Duration::from_secs(77);
        config.keepalive.interval = Duration::from_secs(7);
        config.keepalive.retries = 3;
        let (listener, inherited) = bind(&config).unwrap();
        assert!(inherited);
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let s = SockRef::from(&accepted);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(77));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
    }

    #[test]
    fn keepalive_disabled_is_inherited_too() {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap());
        config.keepalive.enabled = false;
        let (listener, inherited) = bind(&config).unwrap();
        assert!(inherited);
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let s = SockRef::from(&accepted);
        assert!(s.tcp_nodelay().unwrap());
        assert!(!s.keepalive().unwrap());
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
