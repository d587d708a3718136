//! The Lua bindings: every function, object and parameter table Lua sees.
//! The only layer that touches mlua; may use every layer below.
//!
//! Everything here runs on the host's thread. Blocking calls keep dispatching
//! events while they wait, so one Lua thread can be both a proxy's policy and a
//! client of it.
//!
//! Files, lowest first: `params` (parameter tables), `dispatch` (answering
//! events with Lua handlers), `egress_source`, `listener_params`, `pumping`
//! (run/poll/run_until/run_command), `listener`, `egress`, `udp` (UDP parameters and association objects), `http`, `embed`.

pub mod dispatch;
pub mod egress;
pub mod egress_source;
pub mod embed;
pub mod http;
pub mod limits;
pub mod listener;
pub mod listener_params;
pub mod ops;
pub mod params;
pub mod proxy_protocol;
pub mod pumping;
pub mod udp;
pub mod udp_params;

use crate::host::runtime;
use crate::lua::dispatch::handlers;
use crate::lua::listener::LuaListener;
use crate::lua::params::err;
use crate::policy::events as pump;
use mlua::{Lua, Table, Value};

/// The table `require "kumoproxy"` returns.
pub fn module(lua: &Lua) -> mlua::Result<Table> {
    // A subscriber starts no thread; set it up now so nothing logged is lost.
    crate::host::logging::init();

    let m = lua.create_table()?;
    m.set("VERSION", env!("CARGO_PKG_VERSION"))?;
    crate::lua::egress::register(lua, &m)?;
    crate::lua::http::register(lua, &m)?;
    crate::lua::ops::register(lua, &m)?;
    m.set("on", lua.create_function(on)?)?;
    m.set(
        "start_proxy_listener",
        lua.create_function(crate::lua::listener::start_proxy_listener)?,
    )?;
    m.set(
        "configure_redis",
        lua.create_function(crate::lua::limits::configure_redis)?,
    )?;
    m.set("run", lua.create_function(crate::lua::pumping::run)?)?;
    m.set("poll", lua.create_function(crate::lua::pumping::poll)?)?;
    m.set(
        "stop",
        lua.create_function(|_, ()| {
            crate::policy::events::pump().request_stop();
            Ok(())
        })?,
    )?;
    m.set(
        "run_until",
        lua.create_function(crate::lua::pumping::run_until)?,
    )?;
    m.set(
        "run_command",
        lua.create_function(crate::lua::pumping::run_command)?,
    )?;
    m.set(
        "event_fd",
        lua.create_function(|_, ()| Ok(crate::policy::events::pump().fd()))?,
    )?;
    m.set(
        "pending_events",
        lua.create_function(|_, ()| Ok(crate::policy::events::pump().pending()))?,
    )?;
    m.set(
        "set_max_pending_events",
        lua.create_function(|_, n: i64| {
            if n < 1 {
                return Err(err("set_max_pending_events: must be at least 1"));
            }
            crate::policy::events::pump().set_max_pending(n as usize);
            Ok(())
        })?,
    )?;
    m.set(
        "take_events",
        lua.create_function(crate::lua::embed::take_events)?,
    )?;
    m.set(
        "handler",
        lua.create_function(crate::lua::embed::lua_handler)?,
    )?;
    m.set(
        "wait_events",
        lua.create_function(crate::lua::embed::wait_events)?,
    )?;
    m.set(
        "event_socket",
        lua.create_function(crate::lua::embed::event_socket)?,
    )?;
    m.set(
        "runtime_stats",
        lua.create_function(|lua, ()| {
            let process = runtime::current();
            let pump = crate::policy::events::pump();
            let t = lua.create_table()?;
            t.set("pending_events", pump.pending())?;
            t.set("max_pending_events", pump.max_pending())?;
            t.set(
                "overloaded_events",
                pump.overloaded.load(std::sync::atomic::Ordering::Relaxed),
            )?;
            t.set("pooled_pipes", crate::server::relay::pooled_pipes())?;
            t.set(
                "dropped_notifications",
                pump.dropped_notifications
                    .load(std::sync::atomic::Ordering::Relaxed),
            )?;
            let (mut written, mut dropped) = (0, 0);
            for s in crate::host::access_log::sinks().live() {
                written += s
                    .counters()
                    .written
                    .load(std::sync::atomic::Ordering::Relaxed);
                dropped += s
                    .counters()
                    .dropped
                    .load(std::sync::atomic::Ordering::Relaxed);
            }
            t.set("access_log_written", written)?;
            t.set("access_log_dropped", dropped)?;
            t.set("runtime_started", process.has_runtime())?;
            Ok(t)
        })?,
    )?;
    m.set(
        "listeners",
        lua.create_function(|_, ()| {
            Ok(crate::server::listener::live()
                .into_iter()
                .map(LuaListener::new)
                .collect::<Vec<_>>())
        })?,
    )?;
    plain_errors(lua, m)
}

/// Wraps every module function so its errors reach Lua as plain strings with the
/// caller's position (`init.lua:12: start_proxy_listener: ...`). mlua raises error
/// objects (userdata); hosts such as ngx_lua print those as "unknown error".
fn plain_errors(lua: &Lua, m: Table) -> mlua::Result<Table> {
    lua.load(
        r#"
        local m = ...
        local pcall, error, tostring, type = pcall, error, tostring, type
        local function message(e)
          if type(e) == 'string' then return e end
          local s = tostring(e)
          s = s:gsub('^runtime error: ', '', 1)
          return (s:gsub('\nstack traceback:.*$', ''))
        end
        local select = select
        local function check(ok, ...)
          if ok then return ... end
          error(message((...)), 3)
        end
        for name, f in pairs(m) do
          if type(f) == 'function' then
            -- Not `return check(...)`: Lua 5.1 drops a tail-called frame's caller
            -- from error positions. Level 3 = check <- wrapper <- the caller.
            m[name] = function(...) return select(1, check(pcall(f, ...))) end
          end
        end
        return m
        "#,
    )
    .set_name("=kumoproxy")
    .call(m)
}

/// `kumoproxy.on(name, fn)`: registering again replaces the handler; `nil` removes it.
fn on(lua: &Lua, (name, f): (String, Value)) -> mlua::Result<()> {
    if pump::event_bit(&name).is_none() {
        return Err(err(format!(
            "kumoproxy.on: unknown event '{name}' (known events: {})",
            pump::EVENTS.join(", ")
        )));
    }
    let h = handlers(lua)?;
    match f {
        Value::Function(_) => {
            h.raw_set(name.as_str(), f)?;
            pump::set_registered(&name, true);
        }
        Value::Nil => {
            h.raw_set(name.as_str(), Value::Nil)?;
            pump::set_registered(&name, false);
        }
        other => {
            return Err(err(format!(
                "kumoproxy.on: handler for '{name}' must be a function, got {}",
                other.type_name()
            )))
        }
    }
    Ok(())
}
