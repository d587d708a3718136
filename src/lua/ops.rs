//! Lua bindings for operations (issue 17): the `access_log` listener parameter,
//! `kumoproxy.reopen_logs()`, live sessions (`listener:sessions()`,
//! `listener:close_sessions()`, `kumoproxy.close_sessions()`).

use crate::host::access_log::{Destination, Sink};
use crate::listener::Shared;
use crate::params::{err, Params};
use crate::server::sessions::{Filter, Live, PeerFilter};
use mlua::{Lua, Table, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub fn register(lua: &Lua, m: &Table) -> mlua::Result<()> {
    m.set(
        "reopen_logs",
        lua.create_function(|_, ()| Ok(crate::runtime::current().access_logs.reopen_all()))?,
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
    let n: usize = crate::runtime::current()
        .live_listeners()
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
        v.push(format!("identity={}", crate::logging::printable(s)));
    }
    if let Some(s) = &f.group {
        v.push(format!("group={}", crate::logging::printable(s)));
    }
    if let Some(p) = &f.peer {
        v.push(match p {
            PeerFilter::Addr(a) => format!("peer={a}"),
            PeerFilter::Net(n) => format!("peer={n}"),
        });
    }
    if let Some(s) = &f.destination {
        v.push(format!("destination={}", crate::logging::printable(s)));
    }
    if v.is_empty() {
        "all".into()
    } else {
        v.join(" ")
    }
}

/// `access_log = { path = '/var/log/kumoproxy/access.jsonl' }` (or `'-'`), or
/// `false` (none; for `reconfigure`). Listeners with the same path share a writer.
pub fn access_log_param(p: &mut Params) -> mlua::Result<Option<Option<Arc<Sink>>>> {
    match p.raw("access_log")? {
        Value::Nil => Ok(None),
        Value::Boolean(false) => Ok(Some(None)),
        t @ Value::Table(_) => {
            let _ = t;
            let mut a = p.nested_dotted("access_log")?.expect("a table");
            let path = a.required_string("path")?;
            if path.is_empty() {
                return Err(a.key_err("path", "must not be empty ('-' is stderr)"));
            }
            a.finish()?;
            let d = Destination::parse(&path);
            let sink = crate::runtime::current()
                .access_logs
                .get(&d)
                .map_err(|e| p.key_err("access_log", format!("cannot open '{path}': {e}")))?;
            Ok(Some(Some(sink)))
        }
        other => Err(p.key_err(
            "access_log",
            format!(
                "expected {{ path = '...' }} or false, got {}",
                other.type_name()
            ),
        )),
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
    use crate::pump::EVENT_RELOAD;
    if !crate::pump::registered(EVENT_RELOAD) {
        tracing::info!("SIGHUP: no '{EVENT_RELOAD}' handler registered; ignored");
        return;
    }
    tracing::info!("SIGHUP: calling the '{EVENT_RELOAD}' handler");
    let r = crate::dispatch::handler(lua, EVENT_RELOAD).and_then(|f| f.call::<Value>(()));
    if let Err(e) = r {
        tracing::error!(
            "{EVENT_RELOAD} handler failed (still serving with the previous settings): {}",
            crate::dispatch::flat(&e)
        );
    }
}
