//! kumoproxy: a SOCKS5 proxy for Lua hosts, loaded with `require "kumoproxy"`.
//!
//! Where things live:
//! - `socks5`   — pure RFC 1928/1929 codec (bytes in, values out)
//! - `listener` — bind, accept loop with back-off, limits
//! - `session`  — one client: greeting, auth, requests, connect
//! - `relay`    — splice(2) with a pipe pool, or userspace copy
//! - `egress`   — egress sources: direct or via SOCKS5 (RFC 1929, BIND source, TLS), forwarders
//! - `http_connect` — HTTP CONNECT on the proxy listener (head parsing, Basic auth)
//! - `http_server` — status/metrics listener (hyper): /metrics, /proxy/status, /proxy/listeners
//! - `metrics`  — Prometheus exposition of listener counters and Lua event latency
//! - `auth`     — AuthInfo, connection metadata, trusted hosts, check_credentials
//! - `auth_http`, `auth_cache` — HTTP-delegated credentials; decision cache, failure delay
//! - `permissions` — destination ACL patterns (pure)
//! - `policy`   — permissions + `proxy_server_request` for each request
//! - `pump`     — runtime -> host event queue (no Lua)
//! - `dispatch` — host-thread handler calls (Lua)
//! - `lua_api`  — the functions and objects Lua sees
//! - `lua_egress` — make_egress_source, egress source and connection objects
//! - `lua_http` — start_http_listener and its object, the `protocols` parameter
//! - `runtime`  — per-process tokio runtime, fork-aware
//! - `params`, `net`, `stats`, `signals`, `logging` — small shared pieces

pub mod auth;
pub mod auth_cache;
pub mod auth_http;
pub mod dispatch;
pub mod egress;
pub mod embed;
pub mod http_connect;
pub mod http_server;
pub mod listener;
pub mod logging;
pub mod lua_api;
pub mod lua_egress;
pub mod lua_http;
pub mod lua_limits;
pub mod metrics;
pub mod net;
pub mod params;
pub mod permissions;
pub mod policy;
pub mod pump;
pub mod relay;
pub mod runtime;
pub mod session;
pub mod signals;
pub mod socks5;
pub mod stats;
pub mod stream;
pub mod tls;

#[mlua::lua_module]
fn kumoproxy(lua: &mlua::Lua) -> mlua::Result<mlua::Table> {
    lua_api::module(lua)
}
