//! `auth_http`: username/password checks delegated to a plain HTTP service.
//!
//! For each attempt we POST `{"username","password","peer_address","local_address"}`
//! as JSON. 2xx = accepted (the body may carry identity, groups and permissions;
//! an empty body is fine). Anything else fails closed: other statuses, redirects
//! (never followed), timeouts, connection errors, unparsable bodies. The reason
//! goes back to the caller, which logs it once; the password is never in it.

use crate::host::tls::PemSource;
use crate::policy::identity::{AuthInfo, ConnMeta, Denial};
use crate::policy::permissions::Permissions;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Client, Url};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reply is a small JSON object; refuse to buffer more than this.
const MAX_BODY: usize = 64 * 1024;

/// A bad setting: `key` is the `auth_http` field to blame.
#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

fn bad(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        msg: msg.into(),
    }
}

pub struct AuthHttp {
    url: Url,
    timeout: Duration,
    client: Client,
}

impl std::fmt::Debug for AuthHttp {
    // Headers may hold API keys: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthHttp")
            .field("url", &self.url.as_str())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// An absolute http(s) URL with a host and no userinfo (credentials for the
/// service belong in `headers`, where they are never logged).
pub fn check_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| {
        format!("'{s}' is not an absolute http(s) URL ({e}); e.g. 'https://auth.internal/verify'")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "'{s}': scheme '{}' is not http or https",
            url.scheme()
        ));
    }
    if matches!(url.host_str(), None | Some("")) {
        return Err(format!("'{s}' has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed; use auth_http.headers".into());
    }
    Ok(url)
}

impl AuthHttp {
    pub fn new(
        url: &str,
        timeout: Duration,
        tls_ca: Option<PemSource>,
        headers: Vec<(String, String)>,
    ) -> Result<AuthHttp, ConfigError> {
        let url = check_url(url).map_err(|e| bad("url", e))?;
        if timeout.is_zero() {
            return Err(bad("timeout", "must be greater than zero"));
        }
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| bad(format!("headers['{k}']"), "is not a valid header name"))?;
            let mut value = HeaderValue::from_str(&v).map_err(|_| {
                bad(
                    format!("headers['{k}']"),
                    "value is not a valid header value",
                )
            })?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        let mut roots = rustls::RootCertStore::empty();
        match &tls_ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(src) => {
                for c in crate::host::tls::load_certs(src, "tls_ca").map_err(|e| {
                    bad(
                        "tls_ca",
                        e.strip_prefix("tls_ca: ").unwrap_or(&e).to_string(),
                    )
                })? {
                    roots
                        .add(c)
                        .map_err(|e| bad("tls_ca", format!("bad certificate: {e}")))?;
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_ca", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = Client::builder()
            .use_preconfigured_tls(tls)
            // A redirect is a failure, never followed: a 302 to a URL that says
            // yes must not turn a refusal into an acceptance.
            .redirect(reqwest::redirect::Policy::none())
            // Never send passwords through a proxy picked up from the environment.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(map)
            .user_agent(concat!("kumoproxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad("url", format!("cannot build the HTTP client: {e}")))?;
        Ok(AuthHttp {
            url,
            timeout,
            client,
        })
    }

    /// One attempt. Transient failures (no answer, 5xx, redirect, bad body) are
    /// not cacheable; 4xx answers are decisions.
    pub async fn check(
        &self,
        username: &[u8],
        password: &[u8],
        meta: &ConnMeta,
        context: &str,
    ) -> Result<AuthInfo, Denial> {
        let (Ok(user), Ok(pass)) = (std::str::from_utf8(username), std::str::from_utf8(password))
        else {
            return Err(Denial::decided(
                "auth_http: username or password is not valid UTF-8",
            ));
        };
        let body = serde_json::json!({
            "username": user,
            "password": pass,
            "peer_address": meta.peer.to_string(),
            "local_address": meta.local.to_string(),
        });
        let body = serde_json::to_vec(&body).expect("serializable");
        let url = self.url.as_str();
        let resp = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                Denial::failed(format!("auth_http {url}: {}", describe(e, self.timeout)))
            })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(Denial::failed(format!(
                "auth_http {url}: status {status} (redirects are not followed)"
            )));
        }
        if !status.is_success() {
            let msg = format!("auth_http {url}: status {status}");
            return Err(if status.is_client_error() {
                Denial::decided(msg)
            } else {
                Denial::failed(msg)
            });
        }
        let body = read_bounded(resp)
            .await
            .map_err(|e| Denial::failed(format!("auth_http {url}: {e}")))?;
        parse_reply(&body, user, context)
            .map_err(|e| Denial::failed(format!("auth_http {url}: unparsable reply: {e}")))
    }
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the reply: {}", source_chain(&e.without_url())))?
    {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(format!("reply body larger than {MAX_BODY} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn describe(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no reply within {timeout:?}");
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The URL is already in the message; the chain says why.
    format!("{what}: {}", source_chain(&e.without_url()))
}

/// `error: cause: cause` on one line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// `{"identity": "...", "groups": [...], "permissions": {"allow": [...], "deny": [...]}}`,
/// every key optional; an empty body means "accepted as `username`".
pub fn parse_reply(body: &[u8], username: &str, context: &str) -> Result<AuthInfo, String> {
    let single = |id: &str| AuthInfo::single(id, context);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(single(username));
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let obj = v
        .as_object()
        .ok_or_else(|| "expected a JSON object".to_string())?;
    let mut info = match obj.get("identity") {
        None | Some(serde_json::Value::Null) => single(username),
        Some(serde_json::Value::String(s)) if !s.is_empty() => single(s),
        Some(_) => return Err("identity must be a non-empty string".into()),
    };
    if let Some(g) = obj.get("groups") {
        info.groups = strings(g).ok_or("groups must be a list of strings")?;
    }
    match obj.get("cache_scope") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) => {
            info.cache_scope = crate::policy::identity::CacheScope::parse(s)?
        }
        Some(_) => return Err("cache_scope must be \"connection\" or \"credentials\"".into()),
    }
    if let Some(p) = obj.get("permissions") {
        let p = p
            .as_object()
            .ok_or("permissions must be an object with allow and deny lists")?;
        if let Some(k) = p.keys().find(|k| !matches!(k.as_str(), "allow" | "deny")) {
            return Err(format!(
                "permissions: unknown key '{k}' (known: allow, deny)"
            ));
        }
        let list = |k: &str| match p.get(k) {
            None => Ok(Vec::new()),
            Some(v) => strings(v).ok_or(format!("permissions.{k} must be a list of strings")),
        };
        let perms = Permissions::parse(&list("allow")?, &list("deny")?)
            .map_err(|e| format!("permissions.{e}"))?;
        info.permissions = Some(Arc::new(perms));
    }
    let mut limits = crate::policy::identity::UserLimits::default();
    if let Some(l) = obj.get("limits") {
        let spec = crate::policy::limits::LimitsSpec::from_json(l).map_err(|e| e.to_string())?;
        if spec.scope == crate::policy::limits::Scope::Fleet
            && crate::policy::limits::limiter().fleet().is_none()
        {
            return Err("limits.scope: 'fleet' needs kumoproxy.configure_redis{} first".into());
        }
        limits.spec = Some(Arc::new(spec));
    }
    match obj.get("limit_key") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) if !s.is_empty() => limits.key = Some(s.clone()),
        Some(_) => return Err("limit_key must be a non-empty string".into()),
    }
    if limits != crate::policy::identity::UserLimits::default() {
        info.limits = Some(Arc::new(limits));
    }
    Ok(info)
}

fn strings(v: &serde_json::Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://auth.internal/verify").is_ok());
        assert!(check_url("http://127.0.0.1:8080/x?y=1").is_ok());
        for bad in [
            "/verify",
            "verify",
            "auth.internal/verify",
            "ftp://auth.internal/",
            "https://",
            "http://user:pw@auth.internal/",
            "file:///etc/passwd",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn replies() {
        let ctx = "ProxyAuthRfc1929";
        let r = parse_reply(b"", "alice", ctx).unwrap();
        assert_eq!(r.identities[0].identity, "alice");
        assert!(r.permissions.is_none());
        let r = parse_reply(b" \n", "alice", ctx).unwrap();
        assert_eq!(r.identities[0].identity, "alice");
        let r = parse_reply(
            br#"{"identity":"a@corp","groups":["g1","g2"],"permissions":{"allow":["example.com:443"],"deny":["10.0.0.0/8"]},"extra":1}"#,
            "alice",
            ctx,
        )
        .unwrap();
        assert_eq!(r.identities[0].identity, "a@corp");
        assert_eq!(r.identities[0].context, ctx);
        assert_eq!(r.groups, vec!["g1", "g2"]);
        let p = r.permissions.unwrap();
        assert!(p.check("example.com", 443, &[]).is_ok());
        assert!(p.check("example.com", 80, &[]).is_err());
        assert!(parse_reply(b"{}", "bob", ctx).unwrap().identities[0].identity == "bob");
        for bad in [
            &b"{"[..],
            b"not json",
            b"true",
            b"[]",
            br#"{"identity": 5}"#,
            br#"{"identity": ""}"#,
            br#"{"groups": "g"}"#,
            br#"{"groups": [1]}"#,
            br#"{"permissions": []}"#,
            br#"{"permissions": {"allow": "x"}}"#,
            br#"{"permissions": {"alow": []}}"#,
            br#"{"permissions": {"allow": ["bad:port"]}}"#,
        ] {
            assert!(
                parse_reply(bad, "u", ctx).is_err(),
                "{} should be rejected",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
