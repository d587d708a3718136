//! kumoproxy: a SOCKS5 (and HTTP CONNECT) proxy for Lua hosts, loaded with
//! `require "kumoproxy"`.
//!
//! The crate is layered; each layer is a folder whose `mod.rs` says what it owns.
//! Imports point down only (checked by `.ci/check-layers`):
//!
//! ```text
//!   lua      mlua bindings and parameter parsing (the only layer that touches mlua)
//!   server   listeners, sessions (SOCKS5, HTTP CONNECT), forwarders, relay, status
//!   policy   who gets in and where they may go: auth, cache, auth_http, permissions
//!   egress   the client side: egress sources, SOCKS5 client, TLS to the proxy
//!   host     runtime, event pump, signals, logging, metrics, stats, sockets, TLS
//!   proto    pure codecs: bytes in, values out (no sockets, no tokio)
//! ```
//!
//! `docs/architecture.md` walks one SOCKS5 session through these layers.

pub mod egress;
pub mod host;
pub mod lua;
pub mod policy;
pub mod proto;
pub mod server;

#[mlua::lua_module]
fn kumoproxy(lua: &mlua::Lua) -> mlua::Result<mlua::Table> {
    lua::module(lua)
}
