//! The credential check every front-end shares: [`check_credentials`]
//! (failure delay, cache, then `auth_http` or the protocol's Lua event).

use crate::policy::auth_cache::{AuthCache, FailureDelay};
use crate::policy::events::{BasicVerdict, Event, EVENT_AUTH_RFC1929, EVENT_HTTP_AUTH_BASIC};
use crate::policy::identity::{AuthInfo, ConnMeta, Denial, CONTEXT_RFC1929};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What a credential check needs of the listener it runs for.
pub struct AuthContext<'a> {
    pub state: &'a AuthState,
    /// Credentials checked by an HTTP service instead of Lua.
    pub auth_http: Option<&'a crate::policy::auth_http::AuthHttp>,
    /// Bounds the failure delay and the wait for a decision.
    pub timeout: std::time::Duration,
    pub pump: &'a crate::policy::events::EventPump,
}

/// Per-listener authentication state, shared by every front-end (SOCKS5, HTTP).
#[derive(Default)]
pub struct AuthState {
    pub cache: Option<AuthCache>,
    pub delay: FailureDelay,
}

/// The one credential check for every protocol: progressive delay for peers
/// with recent failures, then the auth cache, then `auth_http` when the listener
/// has it (Lua is not consulted), else `ask_lua` (the protocol's Lua event).
/// `context` names where an `auth_http` identity came from, and which event
/// the cache key belongs to. `password` is `None` for HTTP Basic without a
/// colon (distinct from an empty one). The error never contains the password.
pub async fn check_credentials<F, Fut>(
    username: &[u8],
    password: Option<&[u8]>,
    meta: &Arc<ConnMeta>,
    ctx: &AuthContext<'_>,
    context: &'static str,
    ask_lua: F,
) -> Result<AuthInfo, String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<AuthInfo, Denial>>,
{
    let state = ctx.state;
    let ip = meta.peer.0.ip();
    state.delay.wait(ip, ctx.timeout).await;
    // Made where used, not held across the awaits below: every byte kept
    // across an await grows each session's task.
    let key = || crate::policy::auth_cache::CacheKey::new(context, meta, username, password);
    if let Some(hit) = state.cache.as_ref().and_then(|c| c.get(&key())) {
        if hit.is_err() {
            state.delay.record_failure(ip);
        }
        return hit.map_err(|why| format!("{why} (cached)"));
    }
    let verdict = match ctx.auth_http {
        Some(http) => {
            let pw = password.unwrap_or_default();
            http.check(username, pw, meta, context).await
        }
        None => ask_lua().await,
    };
    if let Some(cache) = &state.cache {
        match &verdict {
            Ok(info) => cache.put(&key(), Ok(info.clone())),
            Err(d) if d.cacheable => cache.put(&key(), Err(d.reason.clone())),
            Err(_) => {}
        }
    }
    // Only a decision that these credentials are wrong is evidence of guessing.
    // A failure to decide (event queue full, no answer in time, service down)
    // says nothing about the client: counting it would slow every client of an
    // overloaded host for `forget_after` once the host has recovered.
    if matches!(&verdict, Err(d) if d.cacheable) {
        state.delay.record_failure(ip);
    }
    verdict.map_err(|d| d.reason)
}

/// [`check_credentials`] for SOCKS5 RFC 1929: the Lua side is
/// `proxy_server_auth_rfc1929`, required when the listener has no `auth_http`.
pub async fn check_rfc1929(
    username: Vec<u8>,
    password: Vec<u8>,
    meta: &Arc<ConnMeta>,
    ctx: &AuthContext<'_>,
) -> Result<AuthInfo, String> {
    let (u, p) = (username.clone(), password.clone());
    // The caller boxes this future (server::socks5): it runs once per session.
    check_credentials(&u, Some(&p), meta, ctx, CONTEXT_RFC1929, || {
        ask_rfc1929(username, password, meta, ctx)
    })
    .await
}

async fn ask_rfc1929(
    username: Vec<u8>,
    password: Vec<u8>,
    meta: &Arc<ConnMeta>,
    ctx: &AuthContext<'_>,
) -> Result<AuthInfo, Denial> {
    if !crate::policy::events::registered(EVENT_AUTH_RFC1929) {
        return Err(Denial::failed(format!(
            "no {EVENT_AUTH_RFC1929} handler is registered"
        )));
    }
    let ask = ctx.pump.ask(|reply| Event::AuthRfc1929 {
        username,
        password,
        meta: meta.clone(),
        reply,
    });
    match tokio::time::timeout(ctx.timeout, ask).await {
        // The handler answered: a decision, even when it raised (fail closed).
        Ok(Ok(verdict)) => verdict.map_err(Denial::decided),
        Ok(Err(e)) => Err(Denial::failed(e.to_string())),
        Err(_) => Err(Denial::failed(format!(
            "no decision from the {EVENT_AUTH_RFC1929} handler within {:?} (is the host pumping events?)",
            ctx.timeout
        ))),
    }
}

/// Asks `http_server_validate_auth_basic(user, password, conn_meta)`, bounded by
/// `timeout`. `None` when no handler is registered (the caller decides).
pub async fn validate_basic(
    pump: &crate::policy::events::EventPump,
    user: Vec<u8>,
    password: Option<Vec<u8>>,
    meta: &Arc<ConnMeta>,
    timeout: Duration,
) -> Option<BasicVerdict> {
    if !crate::policy::events::registered(EVENT_HTTP_AUTH_BASIC) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::net::{LocalAddr, PeerAddr};
    use crate::policy::identity::TrustedHosts;

    struct Listener {
        state: AuthState,
        pump: crate::policy::events::EventPump,
    }

    impl Listener {
        fn ctx(&self) -> AuthContext<'_> {
            AuthContext {
                state: &self.state,
                auth_http: None,
                timeout: std::time::Duration::from_secs(60),
                pump: &self.pump,
            }
        }
    }

    fn shared() -> Listener {
        Listener {
            state: AuthState {
                cache: None,
                delay: FailureDelay::new(Some(Default::default())),
            },
            pump: crate::host::pump::Pump::new().unwrap(),
        }
    }

    fn meta(ip: [u8; 4]) -> Arc<ConnMeta> {
        Arc::new(ConnMeta::direct(
            PeerAddr((ip, 40000).into()),
            LocalAddr(([127, 0, 0, 1], 1080).into()),
        ))
    }

    #[tokio::test]
    async fn only_decided_denials_delay_the_peer() {
        let shared = shared();
        let (guesser, overloaded) = (meta([10, 0, 0, 1]), meta([10, 0, 0, 2]));
        let check = |m: &Arc<ConnMeta>, d: Denial| {
            let m = m.clone();
            let shared = &shared;
            async move {
                check_credentials(
                    b"u",
                    Some(b"p"),
                    &m,
                    &shared.ctx(),
                    CONTEXT_RFC1929,
                    || async { Err(d) },
                )
                .await
            }
        };
        assert!(check(&guesser, Denial::decided("rejected by handler"))
            .await
            .is_err());
        let queue_full = crate::host::pump::AskError::Overloaded(4).to_string();
        assert!(check(&overloaded, Denial::failed(queue_full))
            .await
            .is_err());
        assert!(check(&overloaded, Denial::failed("no decision in time"))
            .await
            .is_err());
        assert!(!shared.state.delay.delay_for(guesser.peer.0.ip()).is_zero());
        assert!(shared
            .state
            .delay
            .delay_for(overloaded.peer.0.ip())
            .is_zero());
    }

    #[test]
    fn trusted_default_is_loopback_only() {
        let t = TrustedHosts::default();
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(t.contains("127.9.9.9".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.contains("10.0.0.1".parse().unwrap()));
        assert!(!t.contains("::2".parse().unwrap()));
    }

    #[test]
    fn trusted_cidr() {
        let t = TrustedHosts::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(t.contains("10.200.0.1".parse().unwrap()));
        assert!(!t.contains("127.0.0.1".parse().unwrap()));
    }
}
