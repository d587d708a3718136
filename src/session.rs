//! One client session on a proxy listener: SOCKS5 greeting, authentication,
//! requests (BIND-for-source then CONNECT, KumoMTA style), then the relay.
//!
//! Framing comes from the pure codec in `socks5.rs`; this file only moves bytes
//! and makes decisions. Every wait is bounded by the listener's `timeout`.

use crate::auth::{AuthInfo, ConnMeta, Identity, CONTEXT_TLS_CLIENT, CONTEXT_TRUSTED_HOST};

use crate::egress::EgressStream;
use crate::listener::Shared;
use crate::net::{within, within_else, LocalAddr, PeerAddr};
use crate::policy::{self, Plan, Refusal};
use crate::pump::EVENT_AUTH_RFC1929;
use crate::socks5::{self, method, reply, CodecError, Command, Reply, TargetAddr};
use crate::stats::Stats;
use crate::stream::ClientStream;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug)]
pub enum SessionError {
    Timeout(&'static str),
    ClientClosed(&'static str),
    Protocol(&'static str, CodecError),
    Auth(String),
    /// A request we answered with a failure reply (unsupported, out of order, ...).
    Refused(String),
    /// Refused by permissions or the request policy: reply 0x02.
    Denied(String),
    Connect {
        target: String,
        code: u8,
        reason: String,
    },
    Io(&'static str, io::Error),
    Relay(io::Error),
    Aborted,
}

impl SessionError {
    fn is_auth(&self) -> bool {
        matches!(self, SessionError::Auth(_))
    }
    fn is_timeout(&self) -> bool {
        matches!(self, SessionError::Timeout(_))
            || matches!(self, SessionError::Connect { code, .. } if *code == reply::TTL_EXPIRED)
            || matches!(self, SessionError::Relay(e) if e.kind() == io::ErrorKind::TimedOut)
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Timeout(what) => write!(f, "timeout {what}"),
            SessionError::ClientClosed(what) => write!(f, "client closed the connection {what}"),
            SessionError::Protocol(what, e) => write!(f, "malformed {what}: {e}"),
            SessionError::Auth(why) => write!(f, "authentication failed: {why}"),
            SessionError::Refused(why) => write!(f, "request refused: {why}"),
            SessionError::Denied(why) => write!(f, "request denied: {why}"),
            SessionError::Connect {
                target,
                code,
                reason,
            } => write!(
                f,
                "connect to {target} failed: {reason} (reply 0x{code:02x} {})",
                socks5::reply_text(*code)
            ),
            SessionError::Io(what, e) => write!(f, "i/o error {what}: {e}"),
            SessionError::Relay(e) => write!(f, "relay ended: {e}"),
            SessionError::Aborted => write!(f, "cut at the end of the shutdown grace period"),
        }
    }
}

/// Entry point spawned per accepted connection. Owns the session's accounting.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _active = crate::stats::ActiveGuard(&shared.stats);

    // A listener bound to one address already knows it: no getsockname per session.
    let local = if shared.local_addr.ip().is_unspecified() {
        stream.local_addr().unwrap_or(shared.local_addr)
    } else {
        shared.local_addr
    };
    if !shared.config.sockopts_inherited {
        crate::net::tune_stream(&stream, &shared.config.keepalive, "client socket");
    }
    let stats = &shared.stats;

    let (client, tls_client) = match &shared.config.tls {
        None => (ClientStream::Plain(stream), None),
        Some(tls) => {
            // Boxed: the handshake state is large and only lives until it ends.
            let accept = Box::pin(async {
                tls.acceptor()
                    .accept(stream)
                    .await
                    .map_err(|e| e.to_string())
            });
            let t = shared.config.timeout;
            let handshake = tokio::select! {
                r = within(t, format!("timeout after {t:?}"), accept) => r,
                _ = shared.abort.cancelled() => Err("shutting down".to_string()),
            };
            match handshake {
                Ok(s) => {
                    let id = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::tls::client_identity);
                    (ClientStream::Tls(Box::new(s)), id)
                }
                Err(why) => {
                    Stats::inc(&stats.tls_handshake_failures);
                    Stats::inc(&stats.failed);
                    tracing::warn!("session from {peer} failed: TLS handshake: {why}");
                    return;
                }
            }
        }
    };
    let meta = Arc::new(ConnMeta {
        peer: PeerAddr(peer),
        local: LocalAddr(local),
        tls_client,
        http_auth: None,
    });

    let result = tokio::select! {
        r = handle(client, &meta, &shared) => r,
        _ = shared.abort.cancelled() => Err(SessionError::Aborted),
    };

    match result {
        Ok(()) => Stats::inc(&stats.completed),
        Err(e) => {
            Stats::inc(&stats.failed);
            if e.is_auth() {
                Stats::inc(&stats.auth_failures);
            }
            if e.is_timeout() {
                Stats::inc(&stats.timeouts);
            }
            if matches!(e, SessionError::Denied(_)) {
                Stats::inc(&stats.denied);
            }
            match e {
                // Client resets mid-transfer are routine; keep them out of warn.
                SessionError::Relay(_) | SessionError::ClientClosed(_) => {
                    tracing::info!("session from {peer} failed: {e}")
                }
                _ => tracing::warn!("session from {peer} failed: {e}"),
            }
        }
    }
}

/// Reads whole codec frames off a stream, keeping any bytes that arrive early
/// (a client may pipeline its request, or even payload, behind the greeting).
struct Framed<S> {
    io: S,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    async fn read<T>(
        &mut self,
        what: &'static str,
        parse: fn(&[u8]) -> socks5::Parsed<T>,
    ) -> Result<T, SessionError> {
        let Framed { io, buf, timeout } = self;
        within(*timeout, SessionError::Timeout(what), async {
            loop {
                match parse(buf) {
                    Ok(Some((v, n))) => {
                        buf.drain(..n);
                        return Ok(v);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(SessionError::Protocol(what, e)),
                }
                if buf.len() >= socks5::MAX_FRAME {
                    // Unreachable with a correct codec; never grow without bound.
                    return Err(SessionError::Protocol(
                        what,
                        CodecError::Malformed("oversize"),
                    ));
                }
                buf.reserve(socks5::MAX_FRAME);
                match io.read_buf(buf).await {
                    Ok(0) => return Err(SessionError::ClientClosed(what)),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::Io(what, e)),
                }
            }
        })
        .await
    }

    /// The client's first byte, left in the buffer for whoever parses it.
    async fn first_byte(&mut self) -> Result<u8, SessionError> {
        let Framed { io, buf, timeout } = self;
        within(*timeout, SessionError::Timeout("greeting"), async {
            while buf.is_empty() {
                buf.reserve(socks5::MAX_FRAME);
                match io.read_buf(buf).await {
                    Ok(0) => return Err(SessionError::ClientClosed("greeting")),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::Io("greeting", e)),
                }
            }
            Ok(buf[0])
        })
        .await
    }

    async fn write(&mut self, what: &'static str, bytes: &[u8]) -> Result<(), SessionError> {
        let io = &mut self.io;
        within(self.timeout, SessionError::Timeout(what), async {
            // flush: TLS buffers records; plain TCP makes this a no-op.
            async {
                io.write_all(bytes).await?;
                io.flush().await
            }
            .await
            .map_err(|e| SessionError::Io(what, e))
        })
        .await
    }

    async fn reply(&mut self, r: &Reply) -> Result<(), SessionError> {
        let mut out = Vec::with_capacity(22);
        socks5::encode_reply(r, &mut out);
        self.write("sending reply", &out).await
    }
}

async fn handle(
    stream: ClientStream,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<(), SessionError> {
    let mut conn = Framed {
        io: stream,
        buf: Vec::new(),
        timeout: shared.config.timeout,
    };
    // `protocols`: SOCKS5 always starts with its version byte, HTTP never does.
    let protocols = shared.config.protocols;
    if protocols.http && (!protocols.socks5 || conn.first_byte().await? != socks5::VERSION) {
        let Framed { io, buf, .. } = conn;
        // Boxed: the HTTP state is large and would otherwise size every session.
        return Box::pin(crate::http_connect::handle(io, buf, meta, shared)).await;
    }
    let greeting = conn.read("greeting", socks5::parse_greeting).await?;
    let auth = Arc::new(authenticate(&mut conn, &greeting, meta, shared).await?);
    tracing::debug!(
        "session from {}: authenticated as {}",
        meta.peer,
        auth.summary()
    );

    // KumoMTA selects its source IP with BIND <ip>:0 before CONNECT.
    let mut bound: Option<TcpSocket> = None;
    loop {
        let req = match conn.read("request", socks5::parse_request).await {
            Ok(r) => r,
            Err(SessionError::Protocol(what, e)) => {
                if let Some(code) = e.reply_code() {
                    conn.reply(&Reply::failure(code)).await?;
                }
                return Err(SessionError::Protocol(what, e));
            }
            Err(e) => return Err(e),
        };
        match req.command {
            Command::Bind => {
                let source = match (&bound, &req.target) {
                    (Some(_), _) => Err(SessionError::Refused(
                        "second BIND on one connection".into(),
                    )),
                    (None, TargetAddr::Ip(a)) if a.port() == 0 => Ok(*a),
                    (None, t) => Err(SessionError::Refused(format!(
                        "BIND {t}: only BIND <ip>:0 (source address selection) is supported"
                    ))),
                };
                let source = match source {
                    Ok(s) => s,
                    Err(e) => {
                        let code = if bound.is_some() {
                            reply::GENERAL_FAILURE
                        } else {
                            reply::COMMAND_NOT_SUPPORTED
                        };
                        conn.reply(&Reply::failure(code)).await?;
                        return Err(e);
                    }
                };
                let source = match policy::plan_bind(source, &auth, meta, shared).await {
                    Ok(s) => s,
                    Err(r) => return Err(refuse(&mut conn, r, &req.target).await),
                };
                match bind_source(source) {
                    Ok((sock, addr)) => {
                        bound = Some(sock);
                        conn.reply(&Reply::success(addr)).await?;
                    }
                    Err(e) => {
                        conn.reply(&Reply::failure(socks5::reply_code_for_io_error(&e)))
                            .await?;
                        return Err(SessionError::Refused(format!(
                            "BIND to source {source}: {e}"
                        )));
                    }
                }
            }
            Command::Connect => {
                let plan = match policy::plan_connect(&req.target, &auth, meta, shared).await {
                    Ok(p) => p,
                    Err(r) => return Err(refuse(&mut conn, r, &req.target).await),
                };
                let dialed = match dial(&plan, bound.take(), shared).await {
                    Ok(d) => d,
                    Err(e) => {
                        if let SessionError::Connect { code, .. } = &e {
                            conn.reply(&Reply::failure(*code)).await?;
                        }
                        return Err(e);
                    }
                };
                let bound_addr = dialed.bound;
                conn.reply(&Reply::success(bound_addr)).await?;
                tracing::debug!(
                    "session from {}: connected to {} from {bound_addr}",
                    meta.peer,
                    plan.target
                );
                let Framed { io, mut buf, .. } = conn;
                // Usually empty: free the frame buffer so an idle relay does not hold it.
                buf.shrink_to_fit();
                return crate::relay::relay_any(io, dialed.stream, &buf, shared)
                    .await
                    .map_err(SessionError::Relay);
            }
            Command::UdpAssociate => {
                conn.reply(&Reply::failure(reply::COMMAND_NOT_SUPPORTED))
                    .await?;
                return Err(SessionError::Refused(
                    "UDP ASSOCIATE is not supported".into(),
                ));
            }
        }
    }
}

/// Picks the method, runs RFC 1929 when chosen, and returns who the client is.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<S>,
    greeting: &socks5::Greeting,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> Result<AuthInfo, SessionError> {
    let cfg = &shared.config;
    let handler = crate::pump::registered(EVENT_AUTH_RFC1929);
    let trusted = cfg.trusted_hosts.contains(meta.peer.0.ip());
    // A verified client certificate is authentication in itself, unless the
    // listener asks for a password as well (`require_password`).
    let cert_name = meta
        .tls_client
        .as_ref()
        .and_then(|c| c.name())
        .map(str::to_string);
    let cert_suffices = cert_name.is_some() && !cfg.require_password;
    // auth_http stands in for the Lua handler: Lua is not consulted then.
    let checker = handler || cfg.auth_http.is_some();
    let chosen = if cert_suffices && greeting.offers(method::NO_AUTH) {
        // The certificate already says who this is; no password round trip.
        method::NO_AUTH
    } else if greeting.offers(method::USERNAME_PASSWORD) && (checker || cfg.require_auth) {
        method::USERNAME_PASSWORD
    } else if greeting.offers(method::NO_AUTH) && ((!cfg.require_auth && trusted) || cert_suffices)
    {
        method::NO_AUTH
    } else {
        method::NO_ACCEPTABLE
    };
    conn.write(
        "sending method selection",
        &socks5::encode_method_selection(chosen),
    )
    .await?;
    let with_cert = |mut info: AuthInfo| {
        if let Some(name) = &cert_name {
            info.identities.push(Identity {
                identity: name.clone(),
                context: CONTEXT_TLS_CLIENT.to_string(),
            });
        }
        info
    };
    match chosen {
        method::NO_AUTH if cert_suffices => Ok(with_cert(AuthInfo::default())),
        method::NO_AUTH => Ok(AuthInfo::single(
            meta.peer.0.ip().to_string(),
            CONTEXT_TRUSTED_HOST,
        )),
        method::USERNAME_PASSWORD => {
            let creds = match conn.read("RFC 1929 request", socks5::parse_userpass).await {
                Ok(c) => c,
                Err(e @ SessionError::Protocol(..)) => {
                    conn.write("sending auth status", &socks5::encode_auth_status(false))
                        .await?;
                    return Err(SessionError::Auth(e.to_string()));
                }
                Err(e) => return Err(e),
            };
            // For log lines: escaped (logging::ClientText).
            let user = crate::logging::client(&creds.username).to_string();
            let verdict =
                crate::auth::check_rfc1929(creds.username, creds.password, meta, shared).await;
            conn.write(
                "sending auth status",
                &socks5::encode_auth_status(verdict.is_ok()),
            )
            .await?;
            verdict
                .map(with_cert)
                .map_err(|why| SessionError::Auth(format!("user '{user}': {why}")))
        }
        _ => Err(SessionError::Auth(format!(
            "no acceptable method (client offered {:?}; require_auth={}, trusted host={}, client certificate={})",
            greeting.methods,
            cfg.require_auth,
            trusted,
            cert_name.as_deref().unwrap_or("none")
        ))),
    }
}

/// Sends the failure reply for a refused request and returns the session error.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<S>,
    r: Refusal,
    target: &TargetAddr,
) -> SessionError {
    if let Err(e) = conn.reply(&Reply::failure(r.code)).await {
        return e;
    }
    if r.is_denied() {
        SessionError::Denied(r.reason)
    } else {
        SessionError::Connect {
            target: target.to_string(),
            code: r.code,
            reason: r.reason,
        }
    }
}

fn bind_source(source: SocketAddr) -> io::Result<(TcpSocket, SocketAddr)> {
    let sock = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(source)?;
    let addr = sock.local_addr()?;
    Ok((sock, addr))
}

/// Tries each checked address in turn, all within `t`, from the BIND-chosen
/// socket or `source` when given.
async fn connect(
    target: &TargetAddr,
    addrs: &[SocketAddr],
    mut bound: Option<TcpSocket>,
    source: Option<IpAddr>,
    t: Duration,
    shared: &Shared,
) -> Result<TcpStream, SessionError> {
    let fail = |code: u8, reason: String| SessionError::Connect {
        target: target.to_string(),
        code,
        reason,
    };
    if cfg!(fuzzing) {
        // Fuzz input names arbitrary destinations: never resolve or dial them.
        let _ = bound.take();
        return Err(fail(
            reply::CONNECTION_REFUSED,
            "fuzzing: no outbound connections".into(),
        ));
    }
    // Built only on expiry: formatting it up front cost every session.
    let timed_out = || fail(reply::TTL_EXPIRED, format!("no connection within {t:?}"));
    within_else(t, timed_out, async {
        let source = match &bound {
            Some(s) => Some(
                s.local_addr()
                    .map_err(|e| fail(reply::GENERAL_FAILURE, e.to_string()))?,
            ),
            None => source.map(|ip| SocketAddr::new(ip, 0)),
        };
        let mut addrs = addrs.to_vec();
        if let Some(src) = source {
            addrs.retain(|a| a.is_ipv4() == src.is_ipv4());
            if addrs.is_empty() {
                return Err(fail(
                    reply::ADDRESS_TYPE_NOT_SUPPORTED,
                    format!("no address of the source address family ({src})"),
                ));
            }
        }
        if addrs.is_empty() {
            return Err(fail(
                reply::HOST_UNREACHABLE,
                "name has no addresses".into(),
            ));
        }
        let mut last = None;
        for addr in addrs {
            let sock = match bound.take() {
                Some(s) => s,
                None => match new_socket(addr, source) {
                    Ok(s) => s,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                },
            };
            match sock.connect(addr).await {
                Ok(stream) => {
                    crate::net::tune_stream(&stream, &shared.config.keepalive, "remote socket");
                    return Ok(stream);
                }
                Err(e) => {
                    tracing::debug!("connect to {addr} failed: {e}");
                    last = Some(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| io::Error::other("no address to try"));
        Err(fail(socks5::reply_code_for_io_error(&e), e.to_string()))
    })
    .await
}

fn new_socket(addr: SocketAddr, source: Option<SocketAddr>) -> io::Result<TcpSocket> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mut src) = source {
        src.set_port(0);
        sock.bind(src)?;
    }
    Ok(sock)
}

/// A connected destination, and the address to report as bound.
pub(crate) struct Dialed {
    pub stream: EgressStream,
    pub bound: SocketAddr,
}

/// Connects a checked plan (see `policy::plan_connect`) for any front-end:
/// through its egress source (an upstream proxy resolves the name; a direct
/// source dials the checked addresses from its own address), else directly,
/// from the BIND-chosen socket or the policy's source address. Errors are
/// `SessionError::Connect` carrying the reply code.
pub(crate) async fn dial(
    plan: &Plan,
    mut bound: Option<TcpSocket>,
    shared: &Shared,
) -> Result<Dialed, SessionError> {
    let mut timeout = shared.config.timeout;
    let mut source = plan.source;
    if let Some(egress) = &plan.egress {
        if bound.is_some() || plan.source.is_some() {
            // The egress source decides where connections leave from; a chosen
            // source cannot be honoured, and ignoring it would send from the wrong IP.
            return Err(SessionError::Connect {
                target: plan.target.to_string(),
                code: reply::NOT_ALLOWED,
                reason: format!(
                    "source address selection (BIND or source_address) is not available through egress source '{}'",
                    egress.name
                ),
            });
        }
        if egress.proxy.is_some() {
            // Boxed: upstream connects (TLS, a SOCKS5 handshake) are large futures
            // that would otherwise size every session's task.
            let up = Box::pin(egress.connect(&plan.target, egress.connect_timeout))
                .await
                .map_err(|e| SessionError::Connect {
                    target: plan.target.to_string(),
                    code: e.code,
                    reason: format!("egress source '{}': {e}", egress.name),
                })?;
            let bound = match &up.proxy_bound {
                Some(TargetAddr::Ip(a)) => *a,
                _ => up.local,
            };
            return Ok(Dialed {
                stream: up.stream,
                bound,
            });
        }
        source = egress.source_address;
        timeout = egress.connect_timeout;
    }
    if source.is_some() {
        // The policy's source address replaces a BIND-chosen one.
        bound = None;
    }
    let remote = connect(&plan.target, &plan.addrs, bound, source, timeout, shared).await?;
    let bound = remote
        .local_addr()
        .map_err(|e| SessionError::Io("reading bound address", e))?;
    Ok(Dialed {
        stream: EgressStream::Plain(remote),
        bound,
    })
}

#[cfg(test)]
mod tests {
    /// An idle relay's memory is mostly its session task, whose future is as large
    /// as its largest state (issue 8: ≤ 8 KiB per idle relay). Large, rare states
    /// (TLS handshakes, egress connects, userspace copies) are boxed to keep it so.
    #[tokio::test]
    async fn session_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(a).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let shared = std::sync::Arc::new(crate::listener::Shared::new(
            crate::listener::Config::new(a),
            a,
            std::sync::Arc::new(crate::pump::Pump::new().unwrap()),
        ));
        let f = super::serve(s, peer, shared);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 3 * 1024, "session future is {size} bytes");
    }
}

/// Runs one session's SOCKS5 conversation over an in-memory stream: the entry
/// point of the session fuzz target (`fuzz/`). Outbound connects are refused
/// under `cfg(fuzzing)` (see `connect`).
#[cfg(fuzzing)]
pub async fn fuzz_session(
    client: tokio::io::DuplexStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<(), SessionError> {
    let meta = Arc::new(ConnMeta {
        peer: PeerAddr(peer),
        local: LocalAddr(shared.local_addr),
        tls_client: None,
        http_auth: None,
    });
    handle(ClientStream::Mem(client), &meta, shared).await
}
