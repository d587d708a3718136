//! The SOCKS5 conversation on a proxy listener: greeting, authentication,
//! requests (BIND-for-source then CONNECT, KumoMTA style), then the relay.
//!
//! Framing comes from the pure codec in `proto::socks5`; this file only moves
//! bytes and makes decisions. Every wait is bounded by the listener's `timeout`.

use crate::policy::identity::{
    AuthInfo, ConnMeta, Identity, CONTEXT_TLS_CLIENT, CONTEXT_TRUSTED_HOST,
};

use crate::host::net::within;
use crate::host::stream::ClientStream;
use crate::policy::events::EVENT_AUTH_RFC1929;
use crate::policy::request::{self as policy, Refusal};
use crate::proto::socks5::{self, method, reply, CodecError, Command, Reply, TargetAddr};
use crate::server::config::Shared;
use crate::server::dial::dial;
use crate::server::error::SessionError;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Reads whole codec frames off a stream, keeping any bytes that arrive early
/// (a client may pipeline its request, or even payload, behind the greeting).
pub(crate) struct Framed<S> {
    pub io: S,
    pub buf: Vec<u8>,
    pub timeout: Duration,
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
    pub async fn first_byte(&mut self) -> Result<u8, SessionError> {
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

/// The SOCKS5 conversation, from the greeting to the end of the relay.
pub(crate) async fn handle(
    mut conn: Framed<ClientStream>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
    trace: &mut crate::server::accounting::Trace,
) -> Result<(), SessionError> {
    let greeting = conn.read("greeting", socks5::parse_greeting).await?;
    let auth = Arc::new(authenticate(&mut conn, &greeting, meta, shared).await?);
    trace.auth = Some(auth.clone());
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
        trace.command = Some(crate::server::accounting::command_name(req.command));
        trace.destination = Some(req.target.to_string());
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
                let source =
                    match policy::plan_bind(source, &auth, meta, &shared.request_ctx()).await {
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
                let plan =
                    match policy::plan_connect(&req.target, &auth, meta, &shared.request_ctx())
                        .await
                    {
                        Ok(p) => p,
                        Err(r) => return Err(refuse(&mut conn, r, &req.target).await),
                    };
                if crate::policy::limits::applies(auth.own_limits(), shared.config.limits.as_ref())
                {
                    // Boxed: admission and a limited relay would otherwise size
                    // every session's future, limited or not.
                    return Box::pin(connect_limited(
                        conn,
                        plan,
                        bound.take(),
                        &auth,
                        meta,
                        shared,
                        trace,
                    ))
                    .await;
                }
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
                trace.connected(
                    dialed.peer,
                    dialed.local,
                    plan.egress.as_ref().map(|e| e.name.as_str()),
                );
                conn.reply(&Reply::success(bound_addr)).await?;
                tracing::debug!(
                    "session from {}: connected to {} from {bound_addr}",
                    meta.peer,
                    plan.target
                );
                let Framed { io, mut buf, .. } = conn;
                // Usually empty: free the frame buffer so an idle relay does not hold it.
                buf.shrink_to_fit();
                let stream = dialed.stream;
                let relay = |bytes: Arc<crate::server::sessions::Bytes>| async move {
                    crate::server::relay::relay_any(io, stream, &buf, shared, &bytes, None).await
                };
                return crate::server::accounting::relay_listed(shared, meta, trace, relay)
                    .await
                    .map_err(SessionError::Relay);
            }
            Command::UdpAssociate => {
                let Framed { io, .. } = conn;
                // Boxed: the association's state would otherwise size every session.
                return Box::pin(crate::server::udp_session::associate(
                    io,
                    &req.target,
                    &auth,
                    meta,
                    shared,
                    trace,
                ))
                .await;
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
    let handler = crate::policy::events::registered(EVENT_AUTH_RFC1929);
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
            // For log lines: escaped (proto::text::ClientText).
            let user = crate::proto::text::client(&creds.username).to_string();
            // Boxed: the credential check (auth cache, auth_http, a Lua question)
            // is the session's largest state and ends before the relay; inline it
            // would size every session's task (issue 8).
            let verdict =
                Box::pin(crate::policy::auth::check_rfc1929(
                    creds.username,
                    creds.password,
                    meta,
                    &shared.auth_ctx(),
                ))
                .await;
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

/// CONNECT for a session whose identity has limits: admission (reply 0x02 when
/// refused, before anything is dialled), then the same dial and replies as an
/// unlimited session, then the limited relay, which owns the admission.
async fn connect_limited(
    mut conn: Framed<ClientStream>,
    plan: policy::Plan,
    bound: Option<TcpSocket>,
    auth: &crate::policy::identity::AuthInfo,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
    trace: &mut crate::server::accounting::Trace,
) -> Result<(), SessionError> {
    let limits = match crate::policy::limits::admit_session(
        auth.own_limits(),
        auth.limit_key(),
        shared.config.limits.as_ref(),
        meta.peer.0.ip(),
    )
    .await
    {
        Ok(l) => l,
        Err((key, r)) => return Err(refuse_limited(&mut conn, r.describe(&key)).await),
    };
    let dialed = match dial(&plan, bound, shared).await {
        Ok(d) => d,
        Err(e) => {
            if let SessionError::Connect { code, .. } = &e {
                conn.reply(&Reply::failure(*code)).await?;
            }
            return Err(e);
        }
    };
    trace.connected(
        dialed.peer,
        dialed.local,
        plan.egress.as_ref().map(|e| e.name.as_str()),
    );
    conn.reply(&Reply::success(dialed.bound)).await?;
    tracing::debug!(
        "session from {}: connected to {} from {} (with limits)",
        meta.peer,
        plan.target,
        dialed.bound
    );
    let Framed { io, mut buf, .. } = conn;
    buf.shrink_to_fit();
    let stream = dialed.stream;
    let relay = |bytes: Arc<crate::server::sessions::Bytes>| async move {
        let limits = limits.as_deref();
        crate::server::relay::relay_any(io, stream, &buf, shared, &bytes, limits).await
    };
    crate::server::accounting::relay_listed(shared, meta, trace, relay)
        .await
        .map_err(SessionError::Relay)
}

/// Reply 0x02 for a session refused by its limits; the error carries why.
async fn refuse_limited<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<S>,
    why: String,
) -> SessionError {
    match conn.reply(&Reply::failure(reply::NOT_ALLOWED)).await {
        Ok(()) => SessionError::Limited(why),
        Err(e) => e,
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
