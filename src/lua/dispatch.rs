//! Host-thread side of the event pump: answer queued events with Lua handlers.
//!
//! Runs only inside `kumoproxy.run/poll/run_until` and the module's blocking calls,
//! on the thread that called them. A handler that errors, returns the wrong type or
//! is missing fails closed for that one request, with one log line naming the event.

use crate::policy::events::Overrides;
use crate::policy::events::{Event, EventPump as Pump, Verdict, EVENT_REQUEST};
use crate::policy::identity::{AuthInfo, ConnMeta, Identity, CONTEXT_RFC1929};
use crate::policy::permissions::Permissions;
use mlua::{Function, IntoLuaMulti, Lua, MultiValue, Table, Value};
use std::net::IpAddr;
use std::sync::Arc;

pub const HANDLERS_KEY: &str = "kumoproxy.handlers";

pub fn handlers(lua: &Lua) -> mlua::Result<Table> {
    match lua.named_registry_value::<Value>(HANDLERS_KEY)? {
        Value::Table(t) => Ok(t),
        _ => {
            let t = lua.create_table()?;
            lua.set_named_registry_value(HANDLERS_KEY, &t)?;
            Ok(t)
        }
    }
}

thread_local! {
    /// How many handlers are running on this thread (nested pumps included).
    static IN_HANDLER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// True while a handler runs on this thread: `run()` refuses to start there.
pub fn in_handler() -> bool {
    IN_HANDLER.with(|d| d.get() > 0)
}

struct HandlerScope;

impl HandlerScope {
    fn enter() -> Self {
        IN_HANDLER.with(|d| d.set(d.get() + 1));
        HandlerScope
    }
}

impl Drop for HandlerScope {
    fn drop(&mut self) {
        IN_HANDLER.with(|d| d.set(d.get() - 1));
    }
}

/// Answer the events queued now (not those queued meanwhile: a steady stream
/// must not keep the caller from its deadline); returns how many handlers ran.
/// Events are taken one at a time, each just before its handler runs: the ones
/// not reached yet stay queued, so a handler that pumps (`run_until`, `poll`,
/// `run_command`) dispatches them instead of waiting on them.
pub fn dispatch_pending(lua: &Lua, pump: &Pump) -> mlua::Result<usize> {
    // Reset first: an event queued after this makes the fd readable again.
    pump.reset_wake();
    let mut budget = pump.pending();
    let mut n = 0;
    while budget > 0 {
        let Some(ev) = pump.pop() else { break };
        budget -= 1;
        if ev.is_abandoned() {
            continue;
        }
        n += 1;
        let name = ev.name();
        let started = std::time::Instant::now();
        let outcome = {
            let _scope = HandlerScope::enter();
            handler(lua, name).and_then(|f| f.call(event_args(lua, &ev)?))
        };
        pump.event_latency.observe(name, started.elapsed());
        answer(lua, ev, outcome);
    }
    Ok(n)
}

/// The arguments a handler receives for `ev`.
pub fn event_args(lua: &Lua, ev: &Event) -> mlua::Result<MultiValue> {
    match ev {
        Event::AuthRfc1929 {
            username,
            password,
            meta,
            ..
        } => (
            lua.create_string(username)?,
            lua.create_string(password)?,
            conn_meta_table(lua, meta)?,
        )
            .into_lua_multi(lua),
        Event::HttpAuthBasic {
            user,
            password,
            meta,
            ..
        } => (
            lua.create_string(user)?,
            match password {
                Some(p) => Value::String(lua.create_string(p)?),
                None => Value::Nil,
            },
            conn_meta_table(lua, meta)?,
        )
            .into_lua_multi(lua),
        Event::Request {
            request,
            auth,
            meta,
            ..
        } => {
            let req = lua.create_table()?;
            req.set("command", request.command)?;
            req.set("host", request.host.as_str())?;
            req.set("port", request.port)?;
            (
                req,
                auth_info_table(lua, auth)?,
                conn_meta_table(lua, meta)?,
            )
                .into_lua_multi(lua)
        }
        Event::SessionEnd { summary } => summary_table(lua, summary)?.into_lua_multi(lua),
    }
}

/// `proxy_session_end`'s argument: the access log record as a table (times as
/// Unix seconds, addresses as strings, absent fields nil).
pub fn summary_table(lua: &Lua, r: &crate::host::access_log::Record) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let secs = |at: std::time::SystemTime| {
        at.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    t.set("start", secs(r.start))?;
    t.set("end", secs(r.end))?;
    t.set("duration", secs(r.end) - secs(r.start))?;
    t.set("listener", r.listener.to_string())?;
    t.set("protocol", r.protocol)?;
    t.set("command", r.command)?;
    t.set("peer", r.peer.to_string())?;
    t.set("proxy_peer", r.proxy_peer.map(|a| a.to_string()))?;
    t.set("identity", r.identity.as_deref())?;
    t.set("context", r.context.as_deref())?;
    t.set("groups", r.groups.clone())?;
    t.set("limit_key", r.limit_key.as_deref())?;
    t.set("destination", r.destination.as_deref())?;
    t.set("connected", r.connected.map(|a| a.to_string()))?;
    t.set("source", r.source.map(|a| a.to_string()))?;
    t.set("egress", r.egress.as_deref())?;
    t.set("bytes_up", r.bytes_up)?;
    t.set("bytes_down", r.bytes_down)?;
    t.set("outcome", r.outcome.as_str())?;
    t.set("reason", r.reason.as_deref())?;
    Ok(t)
}

/// Sends a handler's outcome (its return value, or the error it raised) as the
/// event's answer. Errors and wrong types fail closed with one log line. Used by
/// `poll`/`run` and by event objects that hosts answer themselves (`ev:reply`).
/// `lua` resolves names in answers (an egress source by name).
pub fn answer(lua: &Lua, ev: Event, outcome: mlua::Result<Value>) {
    let name = ev.name();
    match ev {
        Event::AuthRfc1929 {
            username, reply, ..
        } => {
            let user = String::from_utf8_lossy(&username).into_owned();
            let verdict: Verdict = match outcome {
                Ok(ret) => auth_verdict(ret, &user),
                Err(e) => {
                    tracing::error!(
                        "{name} handler failed (denying user '{}'): {}",
                        crate::proto::text::client(&username),
                        flat(&e)
                    );
                    Err(format!("{name} handler raised an error"))
                }
            };
            if let Err(why) = &verdict {
                if why.contains("returned") {
                    tracing::error!("{name}: {why}");
                }
            }
            let _ = reply.send(verdict);
        }
        Event::HttpAuthBasic { user, reply, .. } => {
            // For log lines only: escape what a client could forge lines with.
            let who = crate::proto::text::client(&user);
            // Seed semantics: true/false decide; anything else is a handler bug
            // and fails closed with a 500, never a pass.
            let verdict = match outcome {
                Ok(Value::Boolean(true)) => Ok(Some(AuthInfo::single(
                    String::from_utf8_lossy(&user),
                    crate::policy::identity::CONTEXT_HTTP_BASIC,
                ))),
                Ok(Value::Boolean(false)) => Ok(None),
                // The same AuthInfo table as proxy_server_auth_rfc1929's, so HTTP
                // CONNECT users get the same identities, permissions and limits.
                Ok(Value::Table(t)) => {
                    match auth_info_from_table(&t) {
                        Ok(info) if !info.identities.is_empty() => Ok(Some(info)),
                        Ok(_) => {
                            tracing::error!("{name}: handler returned an AuthInfo with no identities for user '{who}'");
                            Err("handler returned an AuthInfo with no identities".into())
                        }
                        Err(e) => {
                            tracing::error!("{name}: handler returned an invalid AuthInfo for user '{who}': {e}");
                            Err(format!("handler returned an invalid AuthInfo: {e}"))
                        }
                    }
                }
                Ok(other) => {
                    tracing::error!(
                        "{name}: handler returned a value of type {} for user '{who}'; expected a boolean or an AuthInfo table",
                        other.type_name()
                    );
                    Err(format!(
                        "handler returned a value of type {}; expected a boolean or an AuthInfo table",
                        other.type_name()
                    ))
                }
                Err(e) => {
                    tracing::error!("{name} handler failed (user '{who}'): {}", flat(&e));
                    Err(format!("{name} handler raised an error"))
                }
            };
            let _ = reply.send(verdict);
        }
        Event::Request { request, reply, .. } => {
            let what = format!(
                "{} {}:{}",
                request.command,
                crate::proto::text::client(&request.host),
                request.port
            );
            let verdict = match outcome {
                Ok(ret) => request_verdict(lua, ret),
                Err(e) => {
                    tracing::error!("{name} handler failed (denying {what}): {}", flat(&e));
                    Err(format!("{name} handler raised an error"))
                }
            };
            if let Err(why) = &verdict {
                if why.contains("returned") {
                    tracing::error!("{name} ({what}): {why}");
                }
            }
            let _ = reply.send(verdict);
        }
        Event::SessionEnd { .. } => {
            // Nobody waits for an answer; a failing handler is worth one line.
            if let Err(e) = outcome {
                tracing::error!("{name} handler failed: {}", flat(&e));
            }
        }
    }
}

/// `true` / `false` / `{ destination, source_address, egress_source, send_proxy_protocol }`.
fn request_verdict(lua: &Lua, ret: Value) -> crate::policy::events::RequestVerdict {
    let t = match ret {
        Value::Boolean(true) => return Ok(Overrides::default()),
        Value::Boolean(false) => return Err(format!("denied by the {EVENT_REQUEST} handler")),
        Value::Table(t) => t,
        other => {
            return Err(format!(
                "handler returned a value of type {}; expected a boolean or a table",
                other.type_name()
            ))
        }
    };
    let bad = |m: String| format!("handler returned an invalid table: {m}");
    let mut over = Overrides::default();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| bad(e.to_string()))?;
        let key = match &k {
            Value::String(s) => s.to_string_lossy(),
            other => return Err(bad(format!("unexpected key of type {}", other.type_name()))),
        };
        match key.as_str() {
            "destination" => {
                let Value::String(d) = &v else {
                    return Err(bad("destination must be a 'host:port' string".into()));
                };
                let d = d.to_string_lossy();
                let target = crate::egress::split_host_port(&d)
                    .and_then(|(h, p)| crate::egress::target(&h, p))
                    .map_err(|e| bad(format!("destination '{d}': {e}")))?;
                over.destination = Some(target);
            }
            "source_address" => {
                let ip = match &v {
                    Value::String(s) => s.to_string_lossy().parse::<IpAddr>().ok(),
                    _ => None,
                };
                over.source_address =
                    Some(ip.ok_or_else(|| {
                        bad("source_address must be an IP address string".into())
                    })?);
            }
            "egress_source" => {
                over.egress = Some(
                    crate::lua::egress_source::source_from_value(lua, &v)
                        .map_err(|e| bad(format!("egress_source: {e}")))?,
                );
            }
            "send_proxy_protocol" => {
                over.send_proxy = Some(crate::lua::proxy_protocol::send_override(&v).map_err(bad)?);
            }
            other => {
                return Err(bad(format!(
                    "unknown key '{other}' (known: destination, source_address, egress_source, send_proxy_protocol)"
                )))
            }
        }
    }
    Ok(over)
}

/// The `auth_info` a handler sees: `{ identities = {{identity, context}}, groups,
/// permissions = { allow, deny } }` (permissions only when the user has some).
pub fn auth_info_table(lua: &Lua, info: &AuthInfo) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let ids = lua.create_table()?;
    for (i, id) in info.identities.iter().enumerate() {
        let it = lua.create_table()?;
        it.set("identity", id.identity.as_str())?;
        it.set("context", id.context.as_str())?;
        ids.raw_set(i + 1, it)?;
    }
    t.set("identities", ids)?;
    t.set("groups", info.groups.clone())?;
    if let Some(p) = &info.permissions {
        let pt = lua.create_table()?;
        pt.set(
            "allow",
            p.allow.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        )?;
        pt.set(
            "deny",
            p.deny.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        )?;
        t.set("permissions", pt)?;
    }
    Ok(t)
}

/// `{ allow = {...}, deny = {...} }` -> Permissions; errors name the entry.
pub fn permissions_from_value(v: &Value) -> Result<Permissions, String> {
    let t = match v {
        Value::Table(t) => t,
        other => {
            return Err(format!(
                "expected a table {{ allow = {{...}}, deny = {{...}} }}, got {}",
                other.type_name()
            ))
        }
    };
    for pair in t.pairs::<Value, Value>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        let name = match &k {
            Value::String(s) => s.to_string_lossy(),
            other => format!("of type {}", other.type_name()),
        };
        if !matches!(name.as_str(), "allow" | "deny") {
            return Err(format!("unknown key '{name}' (known: allow, deny)"));
        }
    }
    let list = |key: &str| -> Result<Vec<String>, String> {
        match t.raw_get::<Value>(key).map_err(|e| e.to_string())? {
            Value::Nil => Ok(Vec::new()),
            Value::Table(l) => l
                .sequence_values::<Value>()
                .enumerate()
                .map(|(i, v)| match v {
                    Ok(Value::String(s)) => Ok(s.to_string_lossy()),
                    _ => Err(format!("{key}[{}]: expected a pattern string", i + 1)),
                })
                .collect(),
            other => Err(format!(
                "{key}: expected a list of patterns, got {}",
                other.type_name()
            )),
        }
    };
    Permissions::parse(&list("allow")?, &list("deny")?)
}

pub fn handler(lua: &Lua, name: &str) -> mlua::Result<Function> {
    match handlers(lua)?.raw_get::<Value>(name)? {
        Value::Function(f) => Ok(f),
        _ => Err(mlua::Error::RuntimeError(format!(
            "no handler registered for {name}"
        ))),
    }
}

pub fn conn_meta_table(lua: &Lua, meta: &ConnMeta) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("peer_address", meta.peer.to_string())?;
    t.set("local_address", meta.local.to_string())?;
    if let Some(id) = &meta.tls_client {
        if let Some(name) = id.name() {
            t.set("tls_client_identity", name)?;
        }
        t.set("tls_client_sans", id.sans.clone())?;
    }
    if let Some(who) = &meta.http_auth {
        t.set("http_auth", who.as_str())?;
    }
    crate::lua::proxy_protocol::conn_meta_fields(lua, meta, &t)?;

    Ok(t)
}

/// `true` / `false` / AuthInfo table -> verdict. Anything else is a handler bug.
fn auth_verdict(ret: Value, user: &str) -> Verdict {
    match ret {
        Value::Boolean(true) => Ok(AuthInfo::single(user, CONTEXT_RFC1929)),
        Value::Boolean(false) | Value::Nil => Err("rejected by handler".into()),
        Value::Table(t) => match auth_info_from_table(&t) {
            Ok(info) if info.identities.is_empty() => {
                Err("handler returned an AuthInfo with no identities".into())
            }
            Ok(info) => Ok(info),
            Err(e) => Err(format!("handler returned an invalid AuthInfo: {e}")),
        },
        other => Err(format!(
            "handler returned a value of type {}; expected a boolean or an AuthInfo table",
            other.type_name()
        )),
    }
}

pub fn auth_info_from_table(t: &Table) -> Result<AuthInfo, String> {
    let mut info = AuthInfo::default();
    for (k, _) in t.pairs::<String, Value>().flatten() {
        if !matches!(
            k.as_str(),
            "identities" | "groups" | "permissions" | "cache_scope" | "limits" | "limit_key"
        ) {
            return Err(format!(
                "unknown key '{}' (known: identities, groups, permissions, cache_scope, limits, limit_key)",
                crate::proto::text::client(&k)
            ));
        }
    }
    let ids = match t.get::<Value>("identities").map_err(|e| e.to_string())? {
        Value::Nil => None,
        Value::Table(ids) => Some(ids),
        _ => return Err("identities must be a list".into()),
    };
    if let Some(ids) = ids {
        for (i, id) in ids.sequence_values::<Value>().enumerate() {
            match id.map_err(|e| e.to_string())? {
                Value::Table(it) => {
                    let identity: String = it
                        .get("identity")
                        .map_err(|_| format!("identities[{}].identity must be a string", i + 1))?;
                    let context: Option<String> = it
                        .get("context")
                        .map_err(|_| format!("identities[{}].context must be a string", i + 1))?;
                    info.identities.push(Identity {
                        identity,
                        context: context.unwrap_or_else(|| CONTEXT_RFC1929.to_string()),
                    });
                }
                Value::String(s) => info.identities.push(Identity {
                    identity: s.to_string_lossy(),
                    context: CONTEXT_RFC1929.to_string(),
                }),
                other => {
                    return Err(format!(
                        "identities[{}] must be a table, got {}",
                        i + 1,
                        other.type_name()
                    ))
                }
            }
        }
    }
    match t.get::<Value>("groups").map_err(|e| e.to_string())? {
        Value::Nil => {}
        Value::Table(g) => {
            for v in g.sequence_values::<String>() {
                info.groups
                    .push(v.map_err(|_| "groups must be a list of strings".to_string())?);
            }
        }
        _ => return Err("groups must be a list of strings".into()),
    }
    match t.get::<Value>("cache_scope").map_err(|e| e.to_string())? {
        Value::Nil => {}
        Value::String(s) => {
            info.cache_scope = crate::policy::identity::CacheScope::parse(&s.to_string_lossy())?
        }
        _ => return Err("cache_scope must be 'connection' or 'credentials'".into()),
    }
    let perms = t.get::<Value>("permissions").map_err(|e| e.to_string())?;
    if !perms.is_nil() {
        let p = permissions_from_value(&perms).map_err(|e| format!("permissions: {e}"))?;
        info.permissions = Some(Arc::new(p));
    }
    let (spec, key) = crate::lua::limits::auth_limits(t)?;
    if spec.is_some() || key.is_some() {
        info.limits = Some(Arc::new(crate::policy::identity::UserLimits { spec, key }));
    }
    Ok(info)
}

/// One line for a Lua error: message plus the first traceback line, no newlines.
pub fn flat(e: &mlua::Error) -> String {
    let s = match e {
        mlua::Error::CallbackError { cause, .. } => cause.to_string(),
        other => other.to_string(),
    };
    s.lines().next().unwrap_or("").to_string()
}
