//! The proxy listener: binds, accepts with back-off, hands each connection to a
//! session task. The accept loop never dies on a per-connection error.

use crate::egress::EgressSource;
use crate::host::runtime::Process;
use crate::host::stats::Stats;
use crate::proto::socks5::TargetAddr;
pub use crate::server::config::{Config, Protocols, Service, Shared};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub fn start(process: &Process, mut config: Config) -> io::Result<Arc<Shared>> {
    let (std_listener, inherited) = bind(&config)?;
    config.sockopts_inherited = inherited;
    let local_addr = std_listener.local_addr()?;
    let rt = process.runtime();
    let _enter = rt.enter();
    let listener = TcpListener::from_std(std_listener)?;
    let shared = Arc::new(Shared::new(
        config,
        local_addr,
        crate::policy::events::pump().clone(),
    ));
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
    registry().lock().unwrap().push(Arc::downgrade(&shared));
    Ok(shared)
}

type Registry = Mutex<Vec<std::sync::Weak<Shared>>>;

/// Listeners started in this process, for `run()`'s shutdown and the status pages.
static LISTENERS: crate::host::runtime::PerProcess<Registry> =
    crate::host::runtime::PerProcess::new();

fn registry() -> &'static Registry {
    LISTENERS.get_or_init(Default::default)
}

/// This process's listeners that are still referenced (open or draining).
pub fn live() -> Vec<Arc<Shared>> {
    let mut l = registry().lock().unwrap();
    l.retain(|w| w.strong_count() > 0);
    l.iter().filter_map(|w| w.upgrade()).collect()
}

/// `src:forward{}`: a local TCP listener whose connections are relayed to `to`
/// through `source`. It is a listener like the proxy's (stats, close, graceful
/// shutdown in `run()`), so it registers with the process the same way.
pub fn start_forward(
    process: &Process,
    source: Arc<EgressSource>,
    listen: SocketAddr,
    to: TargetAddr,
    idle_timeout: Duration,
) -> io::Result<Arc<Shared>> {
    let mut config = Config::new(listen);
    config.timeout = idle_timeout;
    config.service = Service::Forward { source, to };
    start(process, config)
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
        && crate::host::net::tune_socket(
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
                // The settings of `reconfigure`, if any, from this session on.
                let gen = shared.current();
                if let Some(max) = gen.config.max_connections {
                    if shared.stats.active.load(Ordering::Relaxed) >= max {
                        Stats::inc(&shared.stats.rejected);
                        over_max.refused(addr, peer, max);
                        let why = format!("max_connections ({max}) reached");
                        crate::server::accounting::rejected(&gen, peer, why);
                        drop(stream);
                        continue;
                    }
                }
                let slot = match gen.config.max_connections_per_ip {
                    None => None,
                    // From a balancer: counted once the PROXY header names the client.
                    Some(_) if crate::server::proxy_accept::expects(&shared, peer) => None,
                    Some(max) => match shared.claim_ip(peer.ip(), max) {
                        Some(slot) => Some(slot),
                        None => {
                            Stats::inc(&shared.stats.rejected);
                            over_max_per_ip.refused(addr, peer, max);
                            let why = format!("max_connections_per_ip ({max}) reached");
                            crate::server::accounting::rejected(&gen, peer, why);
                            drop(stream);
                            continue;
                        }
                    },
                };
                shared.stats.active.fetch_add(1, Ordering::Relaxed);
                let shared = gen;
                // `slot` (per-IP count) is held by the task: released however it ends.
                match &shared.config.service {
                    Service::Socks5 => {
                        // Boxed: tokio moves a task's future several times while
                        // spawning it and rewrites its stage in place when it ends;
                        // moving a pointer instead of the session's ~2 KiB state
                        // costs less than the allocation (docs/benchmarks.md,
                        // "Connection setup profile").
                        let session = Box::pin(crate::server::session::serve(stream, peer, shared));
                        tokio::spawn(async move {
                            let _slot = slot;
                            session.await
                        })
                    }
                    Service::Forward { source, to } => {
                        let (source, to) = (source.clone(), to.clone());
                        tokio::spawn(async move {
                            let _slot = slot;
                            crate::server::forward::serve(stream, peer, shared, source, to).await
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
