//! HTTP CONNECT on the proxy listener (`protocols = {'socks5', 'http'}`).
//!
//! `session.rs` sniffs the first byte (0x05 = SOCKS5) and hands anything else
//! here. The head is parsed with httparse, bounded by [`MAX_HEAD`]; only CONNECT
//! is served (a tunnel, then the same relay as SOCKS5). Credentials come from
//! `Proxy-Authorization: Basic` and go to `http_server_validate_auth_basic`;
//! without them, trusted hosts (and verified client certificates) proceed.
//!
//! The parsing half of this file is pure (bytes in, values out) and unit-tested.

use crate::auth::{
    check_credentials, AuthInfo, ConnMeta, Denial, Identity, CONTEXT_TLS_CLIENT,
    CONTEXT_TRUSTED_HOST,
};
use crate::listener::Shared;
use crate::net::within;
use crate::pump::{Event, EVENT_HTTP_AUTH_BASIC};
use crate::session::SessionError;
use crate::socks5::{reply, TargetAddr};
use crate::stream::ClientStream;
use base64::Engine;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request head we read (request line + headers). Beyond it: 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// More headers than this is not a proxy client: 431 as well.
const MAX_HEADERS: usize = 64;

/// The identity context of a user validated by `http_server_validate_auth_basic`
/// (KumoMTA's name for it).
/// The identity context of an HTTP Basic login, on every front-end (proxy
/// listener HTTP CONNECT, status listener): one name for one kind of login.
pub const CONTEXT_HTTP_BASIC: &str = "HttpBasicAuth";
/// What 401/407 challenges announce.
pub const REALM: &str = "kumoproxy";

/// A parsed request head: only what the proxy acts on.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request-target as sent (authority form `host:port` for CONNECT).
    pub target: String,
    /// The raw `Proxy-Authorization` value, if any.
    pub proxy_authorization: Option<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or broken syntax: 400.
    Malformed(String),
    /// Longer than [`MAX_HEAD`] or too many headers: 431.
    TooLarge,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Malformed(why) => write!(f, "malformed HTTP request head: {why}"),
            HeadError::TooLarge => write!(
                f,
                "HTTP request head larger than {MAX_HEAD} bytes or {MAX_HEADERS} headers"
            ),
        }
    }
}

/// Parses a request head from the start of `buf`: `Ok(None)` = need more bytes;
/// `Ok(Some((head, n)))` = the head took `n` bytes (anything after is payload).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    // Complete implies method, path and version are present.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let mut proxy_authorization = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("proxy-authorization") {
            if proxy_authorization.is_some() {
                return Err(HeadError::Malformed(
                    "more than one Proxy-Authorization header".into(),
                ));
            }
            proxy_authorization = Some(h.value.to_vec());
        }
    }
    Ok(Some((
        Head {
            method: method.to_string(),
            target: target.to_string(),
            proxy_authorization,
        },
        n,
    )))
}

/// A CONNECT request-target: `host:port`, `a.b.c.d:port` or `[v6]:port`.
pub fn parse_authority(target: &str) -> Result<TargetAddr, String> {
    // The target is quoted in error messages, which end up in log lines.
    let shown = crate::logging::client(target);
    if let Ok(a) = target.parse::<SocketAddr>() {
        return if a.port() == 0 {
            Err(format!("'{shown}': port 0"))
        } else {
            Ok(TargetAddr::Ip(a))
        };
    }
    let Some((host, port)) = target.rsplit_once(':') else {
        return Err(format!("'{shown}' is not host:port"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            let port = crate::logging::client(port);
            return Err(format!("'{shown}': bad port '{port}'"));
        }
    };
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(format!("'{shown}': bad host name"));
    }
    Ok(TargetAddr::Domain(host.to_ascii_lowercase(), port))
}

/// Credentials from an `Authorization` / `Proxy-Authorization` value.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    /// `Basic base64(user[:password])`; the password is `None` without a colon.
    Basic {
        user: Vec<u8>,
        password: Option<Vec<u8>>,
    },
    /// Another scheme (Bearer, Digest, ...): we only speak Basic.
    Other(String),
}

/// Parses a Basic credentials header value. Err = malformed (bad base64, no token).
pub fn parse_credentials(value: &[u8]) -> Result<Credentials, String> {
    let value = value.trim_ascii();
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        // Only ever shown in messages (and so log lines): bounded and escaped.
        let scheme = &scheme[..scheme.len().min(32)];
        return Ok(Credentials::Other(
            crate::logging::client(scheme).to_string(),
        ));
    }
    if rest.is_empty() {
        return Err("Basic credentials without a token".into());
    }
    // Some clients drop the padding; accept it either way.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = engine
        .decode(rest)
        .map_err(|_| "Basic credentials are not valid base64".to_string())?;
    let (user, password) = match decoded.iter().position(|b| *b == b':') {
        Some(i) => (decoded[..i].to_vec(), Some(decoded[i + 1..].to_vec())),
        None => (decoded, None),
    };
    Ok(Credentials::Basic { user, password })
}

/// A complete short response; every error response closes the connection.
pub fn response(status: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}

/// What a CONNECT failure becomes for the client: 403 / 504 / 502.
pub fn status_for_reply(code: u8) -> (u16, &'static str) {
    match code {
        reply::NOT_ALLOWED => (403, "Forbidden"),
        reply::TTL_EXPIRED => (504, "Gateway Timeout"),
        _ => (502, "Bad Gateway"),
    }
}

/// The answer of `http_server_validate_auth_basic`: Ok(true/false), or Err(why)
/// for an error or a value that is not a boolean (500, never a pass).
pub type BasicVerdict = Result<bool, String>;

/// How authentication of one HTTP request ended.
pub enum AuthOutcome {
    Proceed(AuthInfo),
    /// 401/407 with a challenge; the reason is for the log only.
    Challenge(String),
    /// 500: the handler failed or could not be asked.
    Error(String),
}

/// Asks `http_server_validate_auth_basic(user, password, conn_meta)`, bounded by
/// `timeout`. `None` when no handler is registered (the caller decides).
pub async fn validate_basic(
    pump: &crate::pump::Pump,
    user: Vec<u8>,
    password: Option<Vec<u8>>,
    meta: &Arc<ConnMeta>,
    timeout: Duration,
) -> Option<BasicVerdict> {
    if !crate::pump::registered(EVENT_HTTP_AUTH_BASIC) {
        return None;
    }
    let ask = pump.ask(|reply| Event::HttpAuthBasic {
        user,
        password,
        meta: meta.clone(),
        reply,
    });
    Some(match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no decision from the {EVENT_HTTP_AUTH_BASIC} handler within {timeout:?} (is the host pumping events?)"
        )),
    })
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
            if cfg.auth_http.is_some() || crate::pump::registered(EVENT_HTTP_AUTH_BASIC) =>
        {
            // The shared credential path: failure delay, auth cache, then auth_http
            // or the Lua event. A user without a password (no colon) is its own
            // cache key; Lua sees nil, auth_http an empty password.
            let name = String::from_utf8_lossy(&user).into_owned();
            // `name` is the identity; log lines get it with control characters escaped.
            let shown = crate::logging::client(&user).to_string();
            let pw = password.clone();
            let errored = AtomicBool::new(false);
            let errored_ref = &errored;
            let (u, n) = (user.clone(), name.clone());
            let ask = move || async move {
                match validate_basic(&shared.pump, u, password, meta, cfg.timeout).await {
                    Some(Ok(true)) => Ok(AuthInfo::single(n, CONTEXT_HTTP_BASIC)),
                    Some(Ok(false)) => Err(Denial::decided("rejected by handler")),
                    Some(Err(e)) => {
                        errored_ref.store(true, Ordering::Relaxed);
                        Err(Denial::failed(e))
                    }
                    None => Err(Denial::failed(format!(
                        "no {EVENT_HTTP_AUTH_BASIC} handler is registered"
                    ))),
                }
            };
            let verdict =
                check_credentials(&user, pw.as_deref(), meta, shared, CONTEXT_HTTP_BASIC, ask)
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
            let name = crate::logging::client(&user).to_string();
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
            crate::logging::client(&head.method.chars().take(32).collect::<String>())
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
    // Permissions and proxy_server_request, exactly as for SOCKS5.
    let plan = match crate::policy::plan_connect(&target, &Arc::new(auth), &meta, shared).await {
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
    let remote = match crate::session::dial(&plan, None, shared).await {
        Ok(d) => d.stream,
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
    crate::relay::relay_any(io, remote, &buf[n..], shared)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<(Head, usize)>, HeadError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn connect_head_with_credentials_and_payload() {
        let req = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
                   Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n\x16\x03\x01";
        let (h, n) = head(req).unwrap().unwrap();
        assert_eq!(h.method, "CONNECT");
        assert_eq!(h.target, "example.com:443");
        assert_eq!(
            h.proxy_authorization.as_deref(),
            Some(&b"Basic dXNlcjpwYXNz"[..])
        );
        assert_eq!(&req.as_bytes()[n..], b"\x16\x03\x01");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert_eq!(head("CONNECT a:1 HTTP/1.1\r\nHost: a"), Ok(None));
        assert_eq!(head("C"), Ok(None));
        assert_eq!(head(""), Ok(None));
    }

    #[test]
    fn malformed_heads() {
        for bad in [
            "CONNECT a:1 HTTP/2.0\r\n\r\n",
            "CONNECT a:1 FTP/1.1\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic a\r\nproxy-authorization: Basic b\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(HeadError::Malformed(_))),
                "{bad:?} -> {:?}",
                head(bad)
            );
        }
    }

    #[test]
    fn oversize_heads() {
        let long = format!("CONNECT a:1 HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&long), Err(HeadError::TooLarge));
        // Complete but over the bound counts too.
        let complete = format!("{long}\r\n");
        assert_eq!(head(&complete), Err(HeadError::TooLarge));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X{i}: v\r\n"))
            .collect();
        let req = format!("CONNECT a:1 HTTP/1.1\r\n{many}\r\n");
        assert_eq!(head(&req), Err(HeadError::TooLarge));
    }

    #[test]
    fn authorities() {
        assert_eq!(
            parse_authority("127.0.0.1:80"),
            Ok(TargetAddr::Ip("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_authority("[::1]:443"),
            Ok(TargetAddr::Ip("[::1]:443".parse().unwrap()))
        );
        assert_eq!(
            parse_authority("Mail.Example.com:25"),
            Ok(TargetAddr::Domain("mail.example.com".into(), 25))
        );
        for bad in [
            "example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            ":80",
            "exa mple.com:80",
            "a/b:80",
            "http://example.com:80",
            "[::1]:0",
            "::1:80x",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad}");
        }
        assert!(parse_authority(&format!("{}:1", "a".repeat(256))).is_err());
    }

    #[test]
    fn basic_credentials() {
        let b = |u: &str, p: Option<&str>| Credentials::Basic {
            user: u.as_bytes().to_vec(),
            password: p.map(|p| p.as_bytes().to_vec()),
        };
        // user:pass
        assert_eq!(
            parse_credentials(b"Basic dXNlcjpwYXNz"),
            Ok(b("user", Some("pass")))
        );
        // scheme is case-insensitive; padding optional ("a:b:c" keeps colons in the password)
        assert_eq!(
            parse_credentials(b"bAsIc  YTpiOmM="),
            Ok(b("a", Some("b:c")))
        );
        assert_eq!(parse_credentials(b"Basic YTpiOmM"), Ok(b("a", Some("b:c"))));
        // "user:" = empty password; "user" = no password
        assert_eq!(
            parse_credentials(b"Basic dXNlcjo="),
            Ok(b("user", Some("")))
        );
        assert_eq!(parse_credentials(b"Basic dXNlcg=="), Ok(b("user", None)));
        assert_eq!(
            parse_credentials(b"Bearer abc"),
            Ok(Credentials::Other("Bearer".into()))
        );
        assert!(parse_credentials(b"Basic").is_err());
        assert!(parse_credentials(b"Basic !!!").is_err());
        // Found by fuzz/http_head: the scheme is shown in log lines, escaped.
        assert_eq!(
            parse_credentials(b"\xff\xffWxpY2U6\t\tV 0"),
            Ok(Credentials::Other("\\xff\\xffWxpY2U6\\t\\tV".into()))
        );
    }

    #[test]
    fn client_text_in_messages_is_escaped() {
        let err = parse_authority("a\u{1b}[2J\u{85}b:x").unwrap_err();
        assert!(!err.chars().any(char::is_control), "{err:?}");
        assert!(err.contains("\\x1b[2J\\x85b"), "{err:?}");
    }

    #[test]
    fn responses() {
        let r = response(407, "Proxy Authentication Required", &[("A", "b")], "x\n");
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\nA: b\r\n"));
        assert!(s.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\nx\n"));
        // Our own responses parse as HTTP.
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(s.as_bytes()).unwrap().is_complete());
        assert_eq!(resp.code, Some(407));
        assert_eq!(status_for_reply(reply::TTL_EXPIRED).0, 504);
        assert_eq!(status_for_reply(reply::NOT_ALLOWED).0, 403);
        assert_eq!(status_for_reply(reply::CONNECTION_REFUSED).0, 502);
    }
}
