//! Lua bindings for operations (issue 17): the `access_log` listener parameter,
//! `kumoproxy.reopen_logs()`, live sessions (`listener:sessions()`,
//! `listener:close_sessions()`, `kumoproxy.close_sessions()`).

use crate::lua::params::{err, Params};
use crate::server::config::Shared;
use crate::server::sessions::{Filter, Live, PeerFilter};
use mlua::{Lua, Table, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub fn register(lua: &Lua, m: &Table) -> mlua::Result<()> {
    m.set(
        "reopen_logs",
        lua.create_function(|_, ()| Ok(crate::host::access_log::sinks().reopen_all()))?,
    )?;
    m.set(
        "close_sessions",
        lua.create_function(|_, filter: Value| {
            let f = filter_param("kumoproxy.close_sessions", filter, true)?;
            Ok(close_all(&f))
        })?,
    )?;
    Ok(())
}

/// Every listener of this process: `kumoproxy.close_sessions`, and Lua-free
/// callers (the status listener does not close, it only lists).
pub fn close_all(f: &Filter) -> usize {
    let n: usize = crate::server::listener::live()
        .iter()
        .map(|l| close(l, f))
        .sum();
    n
}

pub fn close(shared: &Shared, f: &Filter) -> usize {
    let n = shared.sessions.close(f);
    if n > 0 {
        tracing::info!(
            "listener {}: closed {n} session(s) by policy ({})",
            shared.local_addr,
            describe(f)
        );
    }
    n
}

fn describe(f: &Filter) -> String {
    let mut v = Vec::new();
    if let Some(s) = &f.identity {
        v.push(format!("identity={}", crate::proto::text::client(s)));
    }
    if let Some(s) = &f.group {
        v.push(format!("group={}", crate::proto::text::client(s)));
    }
    if let Some(p) = &f.peer {
        v.push(match p {
            PeerFilter::Addr(a) => format!("peer={a}"),
            PeerFilter::Net(n) => format!("peer={n}"),
        });
    }
    if let Some(s) = &f.destination {
        v.push(format!("destination={}", crate::proto::text::client(s)));
    }
    if v.is_empty() {
        "all".into()
    } else {
        v.join(" ")
    }
}

/// `{ identity =, group =, peer =, destination = }`; `nil` matches all unless
/// `required` (closing every session takes an explicit `{ all = true }`).
pub fn filter_param(ctx: &str, v: Value, required: bool) -> mlua::Result<Filter> {
    if v.is_nil() && !required {
        return Ok(Filter::default());
    }
    let mut p = Params::new(ctx, v)?;
    let f = Filter {
        identity: p.string("identity")?,
        group: p.string("group")?,
        peer: match p.string("peer")? {
            None => None,
            Some(s) => Some(PeerFilter::parse(&s).map_err(|e| p.key_err("peer", e))?),
        },
        destination: p.string("destination")?,
    };
    let all = p.bool("all", false)?;
    p.finish()?;
    if required && f.is_empty() && !all {
        return Err(err(format!(
            "{ctx}: give identity, group, peer or destination (or all = true to close every session)"
        )));
    }
    if all && !f.is_empty() {
        return Err(err(format!(
            "{ctx}: all = true cannot be combined with identity, group, peer or destination"
        )));
    }
    Ok(f)
}

/// `listener:sessions([filter])`: an array of `{ id, peer, protocol, identity,
/// groups, destination, started, bytes_up, bytes_down }`, oldest first.
pub fn sessions(lua: &Lua, shared: &Shared, filter: Value) -> mlua::Result<Table> {
    let f = filter_param("sessions", filter, false)?;
    let out = lua.create_table()?;
    for l in shared.sessions.list(&f) {
        out.raw_push(session_table(lua, &l)?)?;
    }
    Ok(out)
}

fn session_table(lua: &Lua, l: &Live) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("id", l.id)?;
    t.set("peer", l.info.peer.to_string())?;
    t.set("protocol", l.info.protocol)?;
    t.set("identity", l.identity())?;
    t.set("groups", l.info.groups.clone())?;
    t.set("destination", l.info.destination.as_str())?;
    t.set(
        "started",
        l.info
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    )?;
    t.set("bytes_up", l.bytes.up.load(Relaxed))?;
    t.set("bytes_down", l.bytes.down.load(Relaxed))?;
    Ok(t)
}

/// SIGHUP during `run()`: the `reload` handler when there is one. Never fatal:
/// a handler error is logged and the proxy keeps serving with what it has.
pub fn reload(lua: &Lua) {
    use crate::policy::events::EVENT_RELOAD;
    if !crate::policy::events::registered(EVENT_RELOAD) {
        tracing::info!("SIGHUP: no '{EVENT_RELOAD}' handler registered; ignored");
        return;
    }
    tracing::info!("SIGHUP: calling the '{EVENT_RELOAD}' handler");
    let r = crate::lua::dispatch::handler(lua, EVENT_RELOAD).and_then(|f| f.call::<Value>(()));
    if let Err(e) = r {
        tracing::error!(
            "{EVENT_RELOAD} handler failed (still serving with the previous settings): {}",
            crate::lua::dispatch::flat(&e)
        );
    }
}

const PARAMS_KEY: &str = "kumoproxy.listener_params";

fn params_registry(lua: &Lua) -> mlua::Result<Table> {
    match lua.named_registry_value::<Value>(PARAMS_KEY)? {
        Value::Table(t) => Ok(t),
        _ => {
            let t = lua.create_table()?;
            lua.set_named_registry_value(PARAMS_KEY, &t)?;
            Ok(t)
        }
    }
}

fn listener_key(shared: &Arc<Shared>) -> i64 {
    Arc::as_ptr(shared) as usize as i64
}

/// Keeps a copy of a proxy listener's parameters for `reconfigure`.
pub fn remember_params(lua: &Lua, shared: &Arc<Shared>, params: &Value) -> mlua::Result<()> {
    let Value::Table(t) = params else {
        return Ok(());
    };
    let copy = lua.create_table()?;
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        copy.raw_set(k, v)?;
    }
    params_registry(lua)?.raw_set(listener_key(shared), copy)
}

/// A closed listener will not be reconfigured: drop its parameters.
pub fn forget_params(lua: &Lua, shared: &Arc<Shared>) -> mlua::Result<()> {
    params_registry(lua)?.raw_set(listener_key(shared), Value::Nil)
}

/// What `reconfigure` changes; each is a setting of new sessions only.
const RECONFIGURABLE: &[&str] = &[
    "timeout",
    "require_auth",
    "trusted_hosts",
    "permissions",
    "allow_private_destinations",
    "allowed_source_addresses",
    "auth_http",
    "auth_cache",
    "auth_failure_delay",
    "max_connections",
    "max_connections_per_ip",
    "access_log",
    "limits",
];

/// Optional settings `reconfigure` can remove with `false` (`access_log` and
/// `auth_failure_delay` take `false` themselves).
const UNSETTABLE: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "auth_http",
    "auth_cache",
    "permissions",
    "trusted_hosts",
    "allowed_source_addresses",
    "limits",
];

/// Settings of the listening socket or its TLS: fixed while it runs.
const FIXED: &[&str] = &[
    "listen",
    "reuse_port",
    "backlog",
    "use_tls",
    "tls_certificate",
    "tls_private_key",
    "tls_client_ca",
    "tls_client_auth",
    "hostname",
    "require_password",
    "tcp_keepalive",
    "use_splice",
    "protocols",
    "egress_source",
    "proxy_protocol",
    "send_proxy_protocol",
];

/// Keys left out when re-parsing: the TLS material is kept as is (parsing it
/// again would make a new self-signed certificate).
const TLS_KEYS: &[&str] = &[
    "use_tls",
    "tls_certificate",
    "tls_private_key",
    "tls_client_ca",
    "tls_client_auth",
    "hostname",
    "require_password",
];

/// `listener:reconfigure{...}`: new settings for new sessions, all at once.
/// The start parameters with `update` on top are parsed as by
/// `start_proxy_listener` (same validation, same errors), then only the
/// updated keys replace the running values. Live sessions keep theirs.
pub fn reconfigure(lua: &Lua, shared: &Arc<Shared>, update: Value) -> mlua::Result<()> {
    const CTX: &str = "reconfigure";
    let Value::Table(update) = update else {
        return Err(err(format!(
            "{CTX}: expected a parameter table, got {}",
            update.type_name()
        )));
    };
    let mut keys = Vec::new();
    let mut fixed = Vec::new();
    for pair in update.pairs::<Value, Value>() {
        let (k, _) = pair?;
        let name = match &k {
            Value::String(s) => s.to_string_lossy(),
            other => {
                return Err(err(format!(
                    "{CTX}: unexpected key of type {}",
                    other.type_name()
                )))
            }
        };
        if FIXED.contains(&name.as_str()) {
            fixed.push(name);
        } else if RECONFIGURABLE.contains(&name.as_str()) {
            keys.push(name);
        } else {
            return Err(err(format!(
                "{CTX}: unknown parameter {name} (reconfigurable: {})",
                RECONFIGURABLE.join(", ")
            )));
        }
    }
    if !fixed.is_empty() {
        fixed.sort();
        return Err(err(format!(
            "{CTX}: {} cannot change on a running listener (start a new listener{})",
            fixed.join(", "),
            if fixed.iter().any(|k| k.starts_with("tls_")) {
                "; TLS material: reload_tls"
            } else {
                ""
            }
        )));
    }
    let registry = params_registry(lua)?;
    let Value::Table(base) = registry.raw_get::<Value>(listener_key(shared))? else {
        return Err(err(format!(
            "{CTX}: only open listeners made by start_proxy_listener in this Lua state can be reconfigured"
        )));
    };
    let merged = lua.create_table()?;
    for pair in base.pairs::<Value, Value>() {
        let (k, v) = pair?;
        merged.raw_set(k, v)?;
    }
    for pair in update.pairs::<Value, Value>() {
        let (k, v) = pair?;
        // `false` lifts an optional setting (a limit, a cache, auth_http).
        let lifts = matches!(v, Value::Boolean(false))
            && matches!(&k, Value::String(s) if UNSETTABLE.contains(&s.to_string_lossy().as_str()));
        merged.raw_set(k, if lifts { Value::Nil } else { v })?;
    }
    let parse = lua.create_table()?;
    for pair in merged.pairs::<Value, Value>() {
        let (k, v) = pair?;
        if let Value::String(s) = &k {
            if TLS_KEYS.contains(&s.to_string_lossy().as_str()) {
                continue;
            }
        }
        parse.raw_set(k, v)?;
    }
    let parsed = crate::lua::listener_params::listener_config_in(CTX, Value::Table(parse))?;
    let cur = shared.current();
    let mut next = cur.config.clone();
    for k in &keys {
        match k.as_str() {
            "timeout" => next.timeout = parsed.timeout,
            "require_auth" => next.require_auth = parsed.require_auth,
            "trusted_hosts" => next.trusted_hosts = parsed.trusted_hosts.clone(),
            "permissions" | "allow_private_destinations" => {
                next.permissions = parsed.permissions.clone()
            }
            "allowed_source_addresses" => {
                next.allowed_source_addresses = parsed.allowed_source_addresses.clone()
            }
            "auth_http" => next.auth_http = parsed.auth_http.clone(),
            "auth_cache" => next.auth_cache = parsed.auth_cache.clone(),
            "auth_failure_delay" => next.auth_failure_delay = parsed.auth_failure_delay.clone(),
            "max_connections" => next.max_connections = parsed.max_connections,
            "max_connections_per_ip" => next.max_connections_per_ip = parsed.max_connections_per_ip,
            "access_log" => next.access_log = parsed.access_log.clone(),
            // Admitted sessions keep the spec they hold (`SessionLimits`).
            "limits" => next.limits = parsed.limits.clone(),
            _ => unreachable!("checked against RECONFIGURABLE"),
        }
    }
    shared.reconfigure(next);
    registry.raw_set(listener_key(shared), merged)?;
    keys.sort();
    tracing::info!(
        "listener {}: reconfigured {} for new sessions",
        shared.local_addr,
        keys.join(", ")
    );
    Ok(())
}
