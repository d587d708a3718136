//! The status and metrics listener (`kumoproxy.start_http_listener`): hyper 1,
//! HTTP/1.1, optionally inside TLS, on the module's runtime.
//!
//! - `GET /metrics`          Prometheus exposition (OpenMetrics or text 0.0.4, by `Accept`)
//! - `GET /proxy/status`     200 while every proxy listener accepts, else 503
//! - `GET /proxy/listeners`  JSON: address, protocols, TLS, accepting, stats
//! - `GET /proxy/sessions`   JSON: live sessions of every listener (who, where, bytes)
//!
//! Every request is authenticated first, as KumoMTA guards its HTTP endpoints:
//! `Authorization: Basic` goes to `http_server_validate_auth_basic` (true = in,
//! false = 401, anything else = 500); without it only trusted hosts get in.

use crate::host::net::{within, LocalAddr, PeerAddr};
use crate::host::runtime::Process;
use crate::host::stream::ClientStream;
use crate::host::tls::TlsServer;
use crate::policy::auth::validate_basic;
use crate::policy::events::EventPump as Pump;
use crate::policy::identity::{ConnMeta, TrustedHosts};
use crate::proto::http::{parse_credentials, Credentials, REALM};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, VARY, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Peers that need no `Authorization` (default: loopback).
    pub trusted_hosts: TrustedHosts,
    pub tls: Option<Arc<TlsServer>>,
    /// TLS handshake, reading a request head, and waiting for a Lua decision.
    pub timeout: Duration,
    /// Caches Basic credential decisions (see the proxy listener's `auth_cache`).
    pub auth_cache: Option<crate::policy::auth_cache::CacheConfig>,
    /// `proxy_protocol`: balancers whose connections start with a PROXY header.
    pub proxy_protocol: Option<crate::server::proxy_inbound::InboundConfig>,
}

impl Config {
    pub fn new(listen: SocketAddr) -> Self {
        Config {
            listen,
            trusted_hosts: TrustedHosts::default(),
            tls: None,
            timeout: Duration::from_secs(10),
            auth_cache: None,
            proxy_protocol: None,
        }
    }
}

pub struct Shared {
    pub config: Config,
    pub local_addr: SocketAddr,
    pub pump: Arc<Pump>,
    pub closing: CancellationToken,
    pub accepting: AtomicBool,
    pub requests: AtomicU64,
    /// 401s and 400s for bad credentials.
    pub auth_failures: AtomicU64,
    cache: Option<crate::policy::auth_cache::AuthCache>,
}

impl Shared {
    pub fn close(&self) {
        self.closing.cancel();
    }
}

pub fn start(process: &Process, config: Config) -> io::Result<Arc<Shared>> {
    // std sets SO_REUSEADDR and CLOEXEC on Unix.
    let std_listener = std::net::TcpListener::bind(config.listen)?;
    std_listener.set_nonblocking(true)?;
    let local_addr = std_listener.local_addr()?;
    let rt = process.runtime();
    let _enter = rt.enter();
    let listener = TcpListener::from_std(std_listener)?;
    let shared = Arc::new(Shared {
        local_addr,
        pump: crate::policy::events::pump().clone(),
        closing: CancellationToken::new(),
        accepting: AtomicBool::new(true),
        requests: AtomicU64::new(0),
        auth_failures: AtomicU64::new(0),
        cache: config
            .auth_cache
            .clone()
            .map(crate::policy::auth_cache::AuthCache::new),
        config,
    });
    tracing::info!(
        "status listener{} on {local_addr}",
        if shared.config.tls.is_some() {
            " (TLS)"
        } else {
            ""
        }
    );
    rt.spawn(accept_loop(listener, shared.clone()));
    registry().lock().unwrap().push(Arc::downgrade(&shared));
    Ok(shared)
}

type Registry = std::sync::Mutex<Vec<std::sync::Weak<Shared>>>;

/// Status listeners started in this process, closed by `run()`'s shutdown.
static LISTENERS: crate::host::runtime::PerProcess<Registry> =
    crate::host::runtime::PerProcess::new();

fn registry() -> &'static Registry {
    LISTENERS.get_or_init(Default::default)
}

/// This process's status listeners that are still referenced.
pub fn live() -> Vec<Arc<Shared>> {
    let mut l = registry().lock().unwrap();
    l.retain(|w| w.strong_count() > 0);
    l.iter().filter_map(|w| w.upgrade()).collect()
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let addr = shared.local_addr;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shared.closing.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                tokio::spawn(serve(stream, peer, shared.clone()));
            }
            Err(e) => {
                // Out of fds and the like: the connection stays queued; don't spin.
                tracing::debug!("status listener {addr}: accept error: {e}");
                tokio::select! {
                    _ = shared.closing.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    shared.accepting.store(false, Ordering::Release);
    tracing::info!("status listener on {addr} closed");
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let local = stream.local_addr().unwrap_or(shared.local_addr);
    let _ = stream.set_nodelay(true);
    let t = shared.config.timeout;
    // `proxy_protocol`: from a balancer, the client is whom its header names.
    let cfg = shared.config.proxy_protocol.as_ref();
    let origin =
        match crate::server::proxy_inbound::origin_of(&mut stream, peer, cfg, t, &shared.closing)
            .await
        {
            Ok(o) => o,
            Err(why) => {
                tracing::warn!("status listener: connection from {peer}: PROXY header: {why}");
                return;
            }
        };
    let (peer, proxy_peer, proxy_tlvs) = match origin {
        Some(o) => (o.peer, Some(o.proxy_peer), o.tlvs),
        None => (peer, None, None),
    };
    let io = match &shared.config.tls {
        None => ClientStream::Plain(stream),
        Some(tls) => {
            let hs = async {
                tls.acceptor()
                    .accept(stream)
                    .await
                    .map_err(|e| e.to_string())
            };
            match within(t, format!("timeout after {t:?}"), hs).await {
                Ok(s) => ClientStream::Tls(Box::new(s)),
                Err(why) => {
                    tracing::info!("status listener: TLS handshake with {peer} failed: {why}");
                    return;
                }
            }
        }
    };
    let meta = Arc::new(ConnMeta {
        proxy_peer,
        proxy_tlvs,
        ..ConnMeta::direct(PeerAddr(peer), LocalAddr(local))
    });
    let svc_shared = shared.clone();
    let svc = hyper::service::service_fn(move |req| respond(req, meta.clone(), svc_shared.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(t)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shared.closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("status listener: connection from {peer}: {e}");
    }
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = text(status, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn challenge(body: &'static str) -> Resp {
    let mut r = text(StatusCode::UNAUTHORIZED, body);
    let v = HeaderValue::from_str(&format!("Basic realm=\"{REALM}\"")).unwrap();
    r.headers_mut().insert(WWW_AUTHENTICATE, v);
    r
}

/// Who the request is from, or the response that refuses it.
async fn authorize(
    header: Option<&HeaderValue>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<String, Resp> {
    let peer = meta.peer.0;
    let mut why_not = String::from("no Authorization header");
    match header.map(|h| parse_credentials(h.as_bytes())) {
        None => {}
        Some(Err(why)) => {
            tracing::warn!("status listener: request from {peer}: {why}");
            return Err(text(StatusCode::BAD_REQUEST, "bad credentials\n"));
        }
        Some(Ok(Credentials::Other(scheme))) => {
            why_not = format!("unsupported Authorization scheme '{scheme}'")
        }
        Some(Ok(Credentials::Basic { user, password })) => {
            let name = String::from_utf8_lossy(&user).into_owned();
            // For log lines: escaped (proto::text::ClientText).
            let shown = crate::proto::text::client(&user).to_string();
            let pw = password.clone();
            // This listener's own cache: its one event, keyed like the proxy's.
            let key = crate::policy::auth_cache::CacheKey::new(
                crate::policy::events::EVENT_HTTP_AUTH_BASIC,
                meta,
                &user,
                pw.as_deref(),
            );
            let cached = shared.cache.as_ref().and_then(|c| c.get(&key));
            let verdict = match cached {
                Some(Ok(info)) => Some(Ok(Some(info))),
                Some(Err(_)) => Some(Ok(None)),
                None => {
                    let t = shared.config.timeout;
                    let v = validate_basic(&shared.pump, user.clone(), password, meta, t).await;
                    // Decisions are cached; handler errors (500) are not.
                    if let (Some(c), Some(Ok(ok))) = (&shared.cache, &v) {
                        let entry = match ok {
                            Some(info) => Ok(info.clone()),
                            None => Err("rejected by handler".to_string()),
                        };
                        c.put(&key, entry);
                    }
                    v
                }
            };
            match verdict {
                Some(Ok(Some(_))) => return Ok(name),
                Some(Ok(None)) => {
                    tracing::warn!(
                        "status listener: request from {peer}: user '{shown}' rejected by handler"
                    );
                    return Err(challenge("authentication required\n"));
                }
                Some(Err(why)) => {
                    tracing::warn!("status listener: request from {peer}: user '{shown}': {why}");
                    return Err(text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"));
                }
                None => {
                    why_not = format!(
                        "user '{shown}': no {} handler is registered",
                        crate::policy::events::EVENT_HTTP_AUTH_BASIC
                    )
                }
            }
        }
    }
    if shared.config.trusted_hosts.contains(peer.ip()) {
        return Ok(peer.ip().to_string());
    }
    tracing::warn!("status listener: request from {peer} refused: {why_not}, not a trusted host");
    Err(challenge("authentication required\n"))
}

async fn respond(
    req: Request<Incoming>,
    meta: Arc<ConnMeta>,
    shared: Arc<Shared>,
) -> Result<Resp, Infallible> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let who = match authorize(req.headers().get(AUTHORIZATION), &meta, &shared).await {
        Ok(who) => who,
        Err(resp) => {
            shared.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Ok(resp);
        }
    };
    let path = req.uri().path();
    tracing::debug!(
        "status listener: {} {} from {} as {}",
        req.method(),
        crate::proto::text::client(path),
        meta.peer,
        crate::proto::text::client(&who)
    );
    if !matches!(
        path,
        "/metrics" | "/proxy/status" | "/proxy/listeners" | "/proxy/sessions" | "/proxy/limits"
    ) {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let listeners = crate::server::listener::live();
    if path == "/proxy/limits" {
        return Ok(limits_json(req.uri().query(), listeners).await);
    }
    Ok(match path {
        "/metrics" => {
            use crate::server::metrics;
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = metrics::negotiate(accept);
            let mut r = text(
                StatusCode::OK,
                metrics::render(listeners, &shared.pump, format),
            );
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            r.headers_mut()
                .insert(VARY, HeaderValue::from_static("Accept"));
            r
        }
        "/proxy/status" => {
            let down: Vec<String> = listeners
                .iter()
                .filter(|l| !l.accepting.load(Ordering::Acquire))
                .map(|l| l.local_addr.to_string())
                .collect();
            let ok = down.is_empty();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                &serde_json::json!({
                    "ok": ok,
                    "listeners": listeners.len(),
                    "not_accepting": down,
                }),
            )
        }
        "/proxy/sessions" => json(StatusCode::OK, &sessions_json(&listeners)),
        _ => {
            let list: Vec<serde_json::Value> = listeners
                .iter()
                .map(|l| {
                    let stats: serde_json::Map<String, serde_json::Value> = l
                        .stats
                        .snapshot()
                        .into_iter()
                        .chain(l.udp.snapshot())
                        .map(|(k, v)| (k.to_string(), v.into()))
                        .collect();
                    // Egress forwarders share the accept loop; they speak no protocol.
                    let (kind, protocols) = match &l.config.service {
                        crate::server::listener::Service::Socks5 => {
                            ("proxy", l.config.protocols.names())
                        }
                        crate::server::listener::Service::Forward { .. } => ("forward", Vec::new()),
                    };
                    serde_json::json!({
                        "address": l.local_addr.to_string(),
                        "kind": kind,
                        "protocols": protocols,
                        "tls": l.config.tls.is_some(),
                        "accepting": l.accepting.load(Ordering::Acquire),
                        "stats": stats,
                    })
                })
                .collect();
            json(StatusCode::OK, &serde_json::Value::Array(list))
        }
    })
}

/// `GET /proxy/sessions`: every listener's live sessions as JSON.
fn sessions_json(listeners: &[Arc<crate::server::config::Shared>]) -> serde_json::Value {
    let mut out = Vec::new();
    for l in listeners {
        for s in l.sessions.list(&Default::default()) {
            out.push(serde_json::json!({
                "listener": l.local_addr.to_string(),
                "id": s.id,
                "peer": s.info.peer.to_string(),
                "protocol": s.info.protocol,
                "identity": s.identity(),
                "groups": s.info.groups,
                "destination": s.info.destination,
                "started": humantime::format_rfc3339_millis(s.info.started).to_string(),
                "bytes_up": s.bytes.up.load(std::sync::atomic::Ordering::Relaxed),
                "bytes_down": s.bytes.down.load(std::sync::atomic::Ordering::Relaxed),
            }));
        }
    }
    serde_json::Value::Array(out)
}

/// `GET /proxy/limits?key=K[&listener=ADDR]`: `listener:limit_stats(K)` as JSON,
/// for the given proxy listener or the first one that has `limits`.
async fn limits_json(
    query: Option<&str>,
    listeners: Vec<Arc<crate::server::config::Shared>>,
) -> Resp {
    let mut key = None;
    let mut addr = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "key" => key = Some(v.into_owned()),
            "listener" => addr = Some(v.into_owned()),
            _ => {}
        }
    }
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": "give ?key=<limit key>" }),
        );
    };
    let Some((l, spec)) = listeners.iter().find_map(|l| {
        // The limits of new sessions (after any `reconfigure`).
        let spec = l.current().config.limits.clone()?;
        match &addr {
            Some(a) if *a != l.local_addr.to_string() => None,
            _ => Some((l, spec)),
        }
    }) else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "no proxy listener with limits" }),
        );
    };
    match crate::policy::limits::limiter().stats(&key, &spec).await {
        Ok(s) => json(
            StatusCode::OK,
            &serde_json::json!({
                "key": key,
                "listener": l.local_addr.to_string(),
                "scope": spec.scope.as_str(),
                "sessions": s.sessions,
                "connect_refused": s.connect_refused,
                "bytes_up": s.bytes_up,
                "bytes_down": s.bytes_down,
                "quota_used": s.quota_used,
                "quota_remaining": s.quota_remaining,
            }),
        ),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": e }),
        ),
    }
}
