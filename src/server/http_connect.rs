//! HTTP CONNECT on the proxy listener (`protocols = {'socks5', 'http'}`).
//!
//! `session.rs` sniffs the first byte (0x05 = SOCKS5) and hands anything else
//! here. The head is parsed with httparse, bounded by [`MAX_HEAD`]; only CONNECT
//! is served (a tunnel, then the same relay as SOCKS5). Credentials come from
//! `Proxy-Authorization: Basic` and go to `http_server_validate_auth_basic`;
//! without them, trusted hosts (and verified client certificates) proceed.
//!
//! The head and credential parsing is pure, in `proto::http`.

use crate::host::net::within;
use crate::host::stream::ClientStream;
use crate::policy::auth::{check_credentials, validate_basic};
use crate::policy::events::EVENT_HTTP_AUTH_BASIC;
use crate::policy::identity::{
    AuthInfo, ConnMeta, Denial, Identity, CONTEXT_HTTP_BASIC, CONTEXT_TLS_CLIENT,
    CONTEXT_TRUSTED_HOST,
};
use crate::proto::http::{
    parse_authority, parse_credentials, parse_head, response, status_for_reply, Credentials,
    HeadError, REALM,
};
use crate::proto::socks5::reply;
use crate::server::config::Shared;
use crate::server::error::SessionError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How authentication of one HTTP request ended.
pub enum AuthOutcome {
    Proceed(AuthInfo),
    /// 401/407 with a challenge; the reason is for the log only.
    Challenge(String),
    /// 500: the handler failed or could not be asked.
    Error(String),
}

/// Who the client of a CONNECT is: Basic credentials first; without them a
/// verified client certificate or a trusted host (the same rules as SOCKS5).
async fn authenticate(
    creds: Option<Credentials>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
) -> AuthOutcome {
    let cfg = &shared.config;
    let cert_name = meta
        .tls_client
        .as_ref()
        .and_then(|c| c.name())
        .map(str::to_string);
    let with_cert = |mut info: AuthInfo| {
        if let Some(name) = &cert_name {
            info.identities.push(Identity {
                identity: name.clone(),
                context: CONTEXT_TLS_CLIENT.to_string(),
            });
        }
        info
    };
    let mut why_not = String::from("no Proxy-Authorization");
    match creds {
        Some(Credentials::Basic { user, password })
            if cfg.auth_http.is_some()
                || crate::policy::events::registered(EVENT_HTTP_AUTH_BASIC) =>
        {
            // The shared credential path: failure delay, auth cache, then auth_http
            // or the Lua event. A user without a password (no colon) is its own
            // cache key; Lua sees nil, auth_http an empty password.
            // `name` is the identity; log lines get it escaped.
            let shown = crate::proto::text::client(&user).to_string();
            let pw = password.clone();
            let errored = AtomicBool::new(false);
            let errored_ref = &errored;
            let u = user.clone();
            let ask = move || async move {
                match validate_basic(&shared.pump, u, password, meta, cfg.timeout).await {
                    Some(Ok(Some(info))) => Ok(info),
                    Some(Ok(None)) => Err(Denial::decided("rejected by handler")),
                    Some(Err(e)) => {
                        errored_ref.store(true, Ordering::Relaxed);
                        Err(Denial::failed(e))
                    }
                    None => Err(Denial::failed(format!(
                        "no {EVENT_HTTP_AUTH_BASIC} handler is registered"
                    ))),
                }
            };
            // Boxed: run once per session, it would otherwise size every session's task.
            let verdict = Box::pin(check_credentials(
                &user,
                pw.as_deref(),
                meta,
                &shared.auth_ctx(),
                CONTEXT_HTTP_BASIC,
                ask,
            ))
            .await;
            return match verdict {
                Ok(info) => AuthOutcome::Proceed(with_cert(info)),
                Err(why) if errored.load(Ordering::Relaxed) => {
                    AuthOutcome::Error(format!("user '{shown}': {why}"))
                }
                Err(why) => AuthOutcome::Challenge(format!("user '{shown}': {why}")),
            };
        }
        Some(Credentials::Basic { user, .. }) => {
            let name = crate::proto::text::client(&user).to_string();
            why_not = format!("user '{name}': no {EVENT_HTTP_AUTH_BASIC} handler is registered")
        }
        Some(Credentials::Other(scheme)) => {
            why_not = format!("unsupported Proxy-Authorization scheme '{scheme}'")
        }
        None => {}
    }
    // Credentials that cannot be checked fall back to the NOAUTH rules, as a
    // SOCKS5 client offering both methods would.
    if cert_name.is_some() && !cfg.require_password {
        return AuthOutcome::Proceed(with_cert(AuthInfo::default()));
    }
    let trusted = cfg.trusted_hosts.contains(meta.peer.0.ip());
    if trusted && !cfg.require_auth {
        return AuthOutcome::Proceed(AuthInfo::single(
            meta.peer.0.ip().to_string(),
            CONTEXT_TRUSTED_HOST,
        ));
    }
    AuthOutcome::Challenge(format!(
        "{why_not} (require_auth={}, trusted host={trusted})",
        cfg.require_auth
    ))
}

/// Serves one HTTP client whose first bytes are in `buf`.
pub async fn handle(
    mut io: ClientStream,
    mut buf: Vec<u8>,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
    trace: &mut crate::server::accounting::Trace,
) -> Result<(), SessionError> {
    let t = shared.config.timeout;
    let parsed = within(
        t,
        SessionError::Timeout("reading HTTP request head"),
        async {
            loop {
                match parse_head(&buf) {
                    Ok(Some(v)) => return Ok(Ok(v)),
                    Ok(None) => {}
                    Err(e) => return Ok(Err(e)),
                }
                buf.reserve(4096);
                match io.read_buf(&mut buf).await {
                    Ok(0) => return Err(SessionError::ClientClosed("in the HTTP request head")),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::Io("reading HTTP request head", e)),
                }
            }
        },
    )
    .await?;
    let (head, n) = match parsed {
        Ok(v) => v,
        Err(e) => {
            let (status, reason) = match e {
                HeadError::TooLarge => (431, "Request Header Fields Too Large"),
                HeadError::Malformed(_) => (400, "Bad Request"),
            };
            refuse(&mut io, t, &response(status, reason, &[], "bad request\n")).await?;
            return Err(SessionError::Refused(e.to_string()));
        }
    };
    if head.method == "CONNECT" {
        trace.command = Some("connect");
        trace.destination = Some(crate::proto::text::client(&head.target).to_string());
    }
    if head.method != "CONNECT" {
        let body = "this proxy serves CONNECT only\n";
        send(
            &mut io,
            t,
            &response(405, "Method Not Allowed", &[("Allow", "CONNECT")], body),
        )
        .await?;
        return Err(SessionError::Refused(format!(
            "HTTP {} (only CONNECT is served)",
            crate::proto::text::client(&head.method.chars().take(32).collect::<String>())
        )));
    }
    let target = match parse_authority(&head.target) {
        Ok(t) => t,
        Err(why) => {
            send(
                &mut io,
                t,
                &response(400, "Bad Request", &[], "bad target\n"),
            )
            .await?;
            return Err(SessionError::Refused(format!("CONNECT target {why}")));
        }
    };
    let creds = match head.proxy_authorization.as_deref().map(parse_credentials) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(why)) => {
            send(
                &mut io,
                t,
                &response(400, "Bad Request", &[], "bad credentials\n"),
            )
            .await?;
            return Err(SessionError::Auth(why));
        }
    };
    let auth = match authenticate(creds, meta, shared).await {
        AuthOutcome::Proceed(a) => a,
        AuthOutcome::Challenge(why) => {
            let challenge = format!("Basic realm=\"{REALM}\"");
            let r = response(
                407,
                "Proxy Authentication Required",
                &[("Proxy-Authenticate", &challenge)],
                "proxy authentication required\n",
            );
            refuse(&mut io, t, &r).await?;
            return Err(SessionError::Auth(why));
        }
        AuthOutcome::Error(why) => {
            // dispatch.rs logged the handler's error; the session's line says the rest.
            let r = response(500, "Internal Server Error", &[], "internal error\n");
            refuse(&mut io, t, &r).await?;
            return Err(SessionError::Refused(format!(
                "authentication error: {why}"
            )));
        }
    };
    // Handlers asked after authentication see who this is as conn_meta.http_auth.
    let meta = Arc::new(ConnMeta {
        http_auth: auth.identities.first().map(|i| i.identity.clone()),
        ..(**meta).clone()
    });
    tracing::debug!(
        "HTTP session from {}: authenticated as {}, CONNECT {target}",
        meta.peer,
        auth.summary()
    );
    let auth = Arc::new(auth);
    trace.auth = Some(auth.clone());
    // Permissions and proxy_server_request, exactly as for SOCKS5.
    let plan =
        match crate::policy::request::plan_connect(&target, &auth, &meta, &shared.request_ctx())
            .await
        {
            Ok(p) => p,
            Err(r) => {
                let (status, reason) = status_for_reply(r.code);
                let body = if r.is_denied() {
                    format!("CONNECT {target} is not allowed\n")
                } else {
                    format!("cannot connect to {target}\n")
                };
                refuse(&mut io, t, &response(status, reason, &[], &body)).await?;
                return Err(if r.is_denied() {
                    SessionError::Denied(r.reason)
                } else {
                    SessionError::Connect {
                        target: target.to_string(),
                        code: r.code,
                        reason: r.reason,
                    }
                });
            }
        };
    // Limits, once the request is allowed and before dialling: 429 + Retry-After.
    let limits = match Box::pin(crate::policy::limits::admit_session(
        auth.own_limits(),
        auth.limit_key(),
        shared.config.limits.as_ref(),
        meta.peer.0.ip(),
    ))
    .await
    {
        Ok(l) => l,
        Err((key, r)) => {
            let retry = r.retry_after_secs().to_string();
            let resp = response(
                429,
                "Too Many Requests",
                &[("Retry-After", &retry)],
                "too many requests\n",
            );
            refuse(&mut io, t, &resp).await?;
            return Err(SessionError::Limited(r.describe(&key)));
        }
    };
    let remote = match crate::server::dial::dial(&plan, None, shared).await {
        Ok(d) => {
            trace.connected(
                d.peer,
                d.local,
                plan.egress.as_ref().map(|e| e.name.as_str()),
            );
            d.stream
        }
        Err(e) => {
            let code = match &e {
                SessionError::Connect { code, .. } => *code,
                _ => reply::GENERAL_FAILURE,
            };
            let (status, reason) = status_for_reply(code);
            let body = format!("cannot connect to {target}\n");
            refuse(&mut io, t, &response(status, reason, &[], &body)).await?;
            return Err(e);
        }
    };
    send(&mut io, t, b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    // Bytes the client sent behind the head (e.g. a TLS ClientHello) go first.
    let early = &buf[n..];
    let relay = |bytes: Arc<crate::server::sessions::Bytes>| async move {
        let limits = limits.as_deref();
        crate::server::relay::relay_any(io, remote, early, shared, &bytes, limits).await
    };
    crate::server::accounting::relay_listed(shared, &meta, trace, relay)
        .await
        .map_err(SessionError::Relay)
}

/// An error response, then a lingering close: stop writing and drain (bounded)
/// what the client still sends, so that closing with unread bytes (an oversize
/// head, say) does not reset the connection and destroy the response unread.
async fn refuse(io: &mut ClientStream, t: Duration, bytes: &[u8]) -> Result<(), SessionError> {
    send(io, t, bytes).await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = io.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

async fn send(io: &mut ClientStream, t: Duration, bytes: &[u8]) -> Result<(), SessionError> {
    within(t, SessionError::Timeout("sending HTTP response"), async {
        // flush: TLS buffers records; plain TCP makes this a no-op.
        async {
            io.write_all(bytes).await?;
            io.flush().await
        }
        .await
        .map_err(|e| SessionError::Io("sending HTTP response", e))
    })
    .await
}
