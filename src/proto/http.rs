//! HTTP CONNECT's pure half: the request head (httparse, bounded by
//! [`MAX_HEAD`]), the CONNECT authority, `Basic` credentials, and the short
//! responses the proxy sends. Bytes in, values out; unit-tested and fuzzed.

use crate::proto::socks5::{reply, TargetAddr};
use base64::Engine;
use std::net::SocketAddr;

/// Largest request head we read (request line + headers). Beyond it: 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// More headers than this is not a proxy client: 431 as well.
const MAX_HEADERS: usize = 64;

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
    let shown = crate::proto::text::client(target);
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
            let port = crate::proto::text::client(port);
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
            crate::proto::text::client(scheme).to_string(),
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
