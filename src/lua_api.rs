//! The Lua surface: `kumoproxy.on/start_proxy_listener/run/poll/stop/...`.
//!
//! Everything here runs on the host's thread. Blocking calls keep dispatching
//! events while they wait, so one Lua thread can be both a proxy's policy and a
//! client of it.

use crate::auth::TrustedHosts;
use crate::tls::{ClientAuth, PemSource, TlsParams, TlsServer};

use crate::dispatch::{dispatch_pending, handlers};
use crate::listener::{self, Config};
use crate::net::Keepalive;
use crate::params::{err, optional_duration, Params};
use crate::pump::{self, Pump};
use crate::runtime::{self, Process};
use mlua::{Lua, MultiValue, Table, UserData, UserDataMethods, Value};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn module(lua: &Lua) -> mlua::Result<Table> {
    // A subscriber starts no thread; set it up now so nothing logged is lost.
    crate::logging::init();

    let m = lua.create_table()?;
    m.set("VERSION", env!("CARGO_PKG_VERSION"))?;
    crate::lua_egress::register(lua, &m)?;
    crate::lua_http::register(lua, &m)?;
    m.set("on", lua.create_function(on)?)?;
    m.set(
        "start_proxy_listener",
        lua.create_function(start_proxy_listener)?,
    )?;
    m.set("run", lua.create_function(run)?)?;
    m.set("poll", lua.create_function(poll)?)?;
    m.set(
        "stop",
        lua.create_function(|_, ()| {
            runtime::current().pump().request_stop();
            Ok(())
        })?,
    )?;
    m.set("run_until", lua.create_function(run_until)?)?;
    m.set("run_command", lua.create_function(run_command)?)?;
    m.set(
        "event_fd",
        lua.create_function(|_, ()| Ok(runtime::current().pump().fd()))?,
    )?;
    m.set(
        "pending_events",
        lua.create_function(|_, ()| Ok(runtime::current().pump().pending()))?,
    )?;
    m.set(
        "set_max_pending_events",
        lua.create_function(|_, n: i64| {
            if n < 1 {
                return Err(err("set_max_pending_events: must be at least 1"));
            }
            runtime::current().pump().set_max_pending(n as usize);
            Ok(())
        })?,
    )?;
    m.set(
        "take_events",
        lua.create_function(crate::embed::take_events)?,
    )?;
    m.set("handler", lua.create_function(crate::embed::lua_handler)?)?;
    m.set(
        "wait_events",
        lua.create_function(crate::embed::wait_events)?,
    )?;
    m.set(
        "event_socket",
        lua.create_function(crate::embed::event_socket)?,
    )?;
    m.set(
        "runtime_stats",
        lua.create_function(|lua, ()| {
            let process = runtime::current();
            let pump = process.pump();
            let t = lua.create_table()?;
            t.set("pending_events", pump.pending())?;
            t.set("max_pending_events", pump.max_pending())?;
            t.set(
                "overloaded_events",
                pump.overloaded.load(std::sync::atomic::Ordering::Relaxed),
            )?;
            t.set("pooled_pipes", crate::relay::pooled_pipes())?;
            t.set("runtime_started", process.has_runtime())?;
            Ok(t)
        })?,
    )?;
    m.set(
        "listeners",
        lua.create_function(|_, ()| {
            Ok(runtime::current()
                .live_listeners()
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
        local function check(ok, ...)
          if ok then return ... end
          error(message((...)), 2)
        end
        for name, f in pairs(m) do
          if type(f) == 'function' then
            m[name] = function(...) return check(pcall(f, ...)) end
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

fn listener_config(v: Value) -> mlua::Result<Config> {
    let mut p = Params::new("start_proxy_listener", v)?;
    let listen = p.socket_addr("listen")?;
    let missing_listen = p.key_err("listen", "is required, e.g. '127.0.0.1:1080'");
    let mut c = Config::new(listen.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()));
    c.timeout = p.duration("timeout", c.timeout)?;
    if c.timeout.is_zero() {
        return Err(p.key_err("timeout", "must be greater than zero"));
    }
    c.use_splice = p.bool("use_splice", c.use_splice)?;
    c.require_auth = p.bool("require_auth", false)?;
    if let Some(nets) = p.ip_nets("trusted_hosts")? {
        c.trusted_hosts = TrustedHosts::new(nets);
    }
    if let Some(mut ka) = p.nested("tcp_keepalive")? {
        let d = Keepalive::default();
        c.keepalive = Keepalive {
            enabled: ka.bool("enabled", d.enabled)?,
            time: ka.duration_at_least("time", d.time, Duration::from_secs(1))?,
            interval: ka.duration_at_least("interval", d.interval, Duration::from_secs(1))?,
            retries: ka
                .integer("retries", 1, 255)?
                .map(|n| n as u32)
                .unwrap_or(d.retries),
        };
        ka.finish()?;
    }
    c.max_connections = p.integer("max_connections", 1, i64::MAX)?.map(|n| n as u64);
    c.max_connections_per_ip = p
        .integer("max_connections_per_ip", 1, i64::MAX)?
        .map(|n| n as u64);
    c.reuse_port = p.bool("reuse_port", false)?;
    c.backlog = p
        .integer("backlog", 1, 65535)?
        .map(|n| n as i32)
        .unwrap_or(c.backlog);
    c.egress = crate::lua_egress::egress_param(&mut p, "egress_source")?;
    c.require_password = p.bool("require_password", false)?;
    c.tls = tls_params(&mut p)?;
    if c.require_password && c.tls.is_none() {
        return Err(p.key_err(
            "require_password",
            "requires use_tls = true (it concerns client certificates)",
        ));
    }
    c.protocols = crate::lua_http::protocols_param(&mut p)?;
    auth_params(&mut p, &mut c)?;
    // Unknown keys first: a missing `listen` is often a misspelt one.
    p.finish()?;
    if listen.is_none() {
        return Err(missing_listen);
    }
    Ok(c)
}

/// auth_http, auth_cache, auth_failure_delay, permissions,
/// allow_private_destinations, allowed_source_addresses.
fn auth_params(p: &mut Params, c: &mut Config) -> mlua::Result<()> {
    use crate::auth_cache::DelayConfig;
    if let Some(mut h) = p.nested_dotted("auth_http")? {
        let url = h.required_string("url")?;
        let timeout = h.duration("timeout", crate::auth_http::DEFAULT_TIMEOUT)?;
        let tls_ca = h.string("tls_ca")?.map(|s| PemSource::from_str(&s));
        let mut headers = Vec::new();
        match h.raw("headers")? {
            Value::Nil => {}
            Value::Table(t) => {
                for pair in t.pairs::<Value, Value>() {
                    match pair? {
                        (Value::String(k), Value::String(v)) => {
                            headers.push((k.to_string_lossy(), v.to_string_lossy()))
                        }
                        (k, _) => {
                            return Err(h.key_err(
                                "headers",
                                format!(
                                    "expected string names and values, got a {} key or value",
                                    k.type_name()
                                ),
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(h.key_err(
                    "headers",
                    format!("expected a table, got {}", other.type_name()),
                ))
            }
        }
        let http = crate::auth_http::AuthHttp::new(&url, timeout, tls_ca, headers)
            .map_err(|e| h.key_err(&e.key, e.msg))?;
        h.finish()?;
        c.auth_http = Some(Arc::new(http));
    }
    c.auth_cache = auth_cache_param(p)?;
    match p.raw("auth_failure_delay")? {
        Value::Nil => {}
        Value::Boolean(false) => c.auth_failure_delay = None,
        Value::Table(_) => {
            let mut a = p.nested_dotted("auth_failure_delay")?.expect("a table");
            let d = DelayConfig::default();
            let cfg = DelayConfig {
                initial: a.duration("initial", d.initial)?,
                max: a.duration("max", d.max)?,
                forget_after: a.duration("forget_after", d.forget_after)?,
            };
            if cfg.max < cfg.initial {
                return Err(a.key_err("max", "must be at least initial"));
            }
            a.finish()?;
            c.auth_failure_delay = Some(cfg);
        }
        other => {
            return Err(p.key_err(
                "auth_failure_delay",
                format!(
                    "expected {{ initial, max, forget_after }} or false, got {}",
                    other.type_name()
                ),
            ))
        }
    }
    let allow_private = p.bool("allow_private_destinations", false)?;
    let mut perms = if allow_private {
        crate::permissions::Permissions::default()
    } else {
        crate::permissions::Permissions::private_destinations()
    };
    let v = p.raw("permissions")?;
    if !v.is_nil() {
        let given =
            crate::dispatch::permissions_from_value(&v).map_err(|e| p.key_err("permissions", e))?;
        perms.extend(&given);
    }
    c.permissions = Arc::new(perms);
    c.allowed_source_addresses = p.ip_nets("allowed_source_addresses")?;
    Ok(())
}

/// `auth_cache = { ttl, negative_ttl, max_entries }`, shared by the proxy and
/// status listeners.
pub(crate) fn auth_cache_param(
    p: &mut Params,
) -> mlua::Result<Option<crate::auth_cache::CacheConfig>> {
    use crate::auth_cache::CacheConfig;
    let Some(mut a) = p.nested_dotted("auth_cache")? else {
        return Ok(None);
    };
    let d = CacheConfig::default();
    let cfg = CacheConfig {
        ttl: a.duration("ttl", d.ttl)?,
        negative_ttl: a.duration("negative_ttl", d.negative_ttl)?,
        max_entries: a
            .integer("max_entries", 1, 100_000_000)?
            .map(|n| n as usize)
            .unwrap_or(d.max_entries),
    };
    a.finish()?;
    Ok(Some(cfg))
}

/// `use_tls` and its companions. TLS options without `use_tls` are an error:
/// a listener the user believes encrypted must never silently run in clear.
fn tls_params(p: &mut Params) -> mlua::Result<Option<Arc<TlsServer>>> {
    let use_tls = p.bool("use_tls", false)?;
    let certificate = pem_param(p, "start_proxy_listener", "tls_certificate")?;
    let private_key = pem_param(p, "start_proxy_listener", "tls_private_key")?;
    let client_ca = pem_param(p, "start_proxy_listener", "tls_client_ca")?;
    let hostname = p.string("hostname")?;
    let client_auth_given = p.string("tls_client_auth")?;
    let client_auth = match client_auth_given.as_deref() {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(other) => {
            return Err(p.key_err(
                "tls_client_auth",
                format!("'{other}' is not one of 'required', 'optional'"),
            ))
        }
    };
    if !use_tls {
        for (key, given) in [
            ("tls_certificate", certificate.is_some()),
            ("tls_private_key", private_key.is_some()),
            ("tls_client_ca", client_ca.is_some()),
            ("hostname", hostname.is_some()),
            ("tls_client_auth", client_auth_given.is_some()),
        ] {
            if given {
                return Err(p.key_err(key, "requires use_tls = true"));
            }
        }
        return Ok(None);
    }
    if client_auth_given.is_some() && client_ca.is_none() {
        return Err(p.key_err("tls_client_auth", "requires tls_client_ca"));
    }
    let params = TlsParams {
        certificate,
        private_key,
        hostname: hostname.unwrap_or_else(crate::tls::system_hostname),
        client_ca,
        client_auth,
    };
    TlsServer::new(params)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| err(format!("start_proxy_listener: {e}")))
}

/// PEM material: a path, inline PEM text, `{ key_data = PEM }` or `{ key_file = path }`.
pub(crate) fn pem_param(p: &mut Params, ctx: &str, key: &str) -> mlua::Result<Option<PemSource>> {
    match p.raw(key)? {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(PemSource::from_str(&s.to_str()?))),
        t @ Value::Table(_) => {
            let mut ks = Params::new(&format!("{ctx}: {key}"), t)?;
            let data = ks.string("key_data")?;
            let file = ks.string("key_file")?;
            let src = match (data, file) {
                (Some(d), None) => PemSource::Inline(d),
                (None, Some(f)) => PemSource::File(f.into()),
                _ => return Err(ks.key_err("key_data", "give exactly one of key_data or key_file")),
            };
            ks.finish()?;
            Ok(Some(src))
        }
        other => Err(p.key_err(
            key,
            format!(
                "expected a path, PEM text, {{ key_data = ... }} or {{ key_file = ... }}, got {}",
                other.type_name()
            ),
        )),
    }
}

/// nginx runs `init_by_lua` in the master and then forks workers; runtime threads
/// started in the master would not exist in them. Refuse clearly instead.
pub(crate) fn refuse_in_nginx_master(lua: &Lua, what: &str) -> mlua::Result<()> {
    let Ok(Value::Table(ngx)) = lua.globals().get::<Value>("ngx") else {
        return Ok(());
    };
    let Ok(Value::Function(get_phase)) = ngx.get::<Value>("get_phase") else {
        return Ok(());
    };
    if get_phase.call::<String>(()).ok().as_deref() == Some("init") {
        return Err(err(format!(
            "{what}: called in nginx's master process (init_by_lua); start listeners in init_worker_by_lua"
        )));
    }
    Ok(())
}

fn start_proxy_listener(lua: &Lua, params: Value) -> mlua::Result<LuaListener> {
    refuse_in_nginx_master(lua, "start_proxy_listener")?;
    let config = listener_config(params)?;
    let listen = config.listen;
    let shared = listener::start(runtime::current(), config).map_err(|e| {
        err(format!(
            "start_proxy_listener: listen: cannot listen on {listen}: {e}"
        ))
    })?;
    Ok(LuaListener::new(shared))
}

/// The listener object handed to Lua.
pub struct LuaListener {
    shared: Arc<listener::Shared>,
    pid: u32,
}

impl LuaListener {
    pub(crate) fn new(shared: Arc<listener::Shared>) -> Self {
        LuaListener {
            shared,
            pid: std::process::id(),
        }
    }

    /// A listener started before fork belongs to the parent's runtime.
    fn check_pid(&self) -> mlua::Result<&listener::Shared> {
        if self.pid != std::process::id() {
            return Err(err(format!(
                "this listener was started in process {} before a fork; start listeners in each worker (init_worker_by_lua)",
                self.pid
            )));
        }
        Ok(&self.shared)
    }
}

impl UserData for LuaListener {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("local_addr", |_, this, ()| {
            Ok(this.shared.local_addr.to_string())
        });
        methods.add_method("stats", |lua, this, ()| {
            let t = lua.create_table()?;
            for (k, v) in this.shared.stats.snapshot() {
                t.set(k, v)?;
            }
            t.set(
                "accepting",
                this.shared
                    .accepting
                    .load(std::sync::atomic::Ordering::Acquire),
            )?;
            Ok(t)
        });
        methods.add_method("certificate_pem", |_, this, ()| {
            Ok(this.shared.config.tls.as_ref().map(|t| t.certificate_pem()))
        });
        methods.add_method("reload_tls", |_, this, params: Value| {
            let tls = this
                .check_pid()?
                .config
                .tls
                .clone()
                .ok_or_else(|| err("reload_tls: this listener does not use TLS"))?;
            let mut p = Params::new("reload_tls", params)?;
            let certificate = pem_param(&mut p, "reload_tls", "tls_certificate")?;
            let private_key = pem_param(&mut p, "reload_tls", "tls_private_key")?;
            let client_ca = pem_param(&mut p, "reload_tls", "tls_client_ca")?;
            p.finish()?;
            tls.reload(|t| {
                if certificate.is_some() {
                    t.certificate = certificate;
                }
                if private_key.is_some() {
                    t.private_key = private_key;
                }
                if client_ca.is_some() {
                    t.client_ca = client_ca;
                }
            })
            .map_err(|e| err(format!("reload_tls: {e}")))?;
            tracing::info!("listener {}: TLS material reloaded", this.shared.local_addr);
            Ok(())
        });
        methods.add_method("flush_auth_cache", |_, this, ()| {
            Ok(this
                .check_pid()?
                .auth
                .cache
                .as_ref()
                .map(|c| c.flush())
                .unwrap_or(0))
        });
        methods.add_method("close", |_, this, ()| {
            this.check_pid()?.close();
            Ok(())
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!("kumoproxy.listener({})", this.shared.local_addr))
        });
    }
}

/// Dispatch until `deadline`, or until something is dispatched when `until_one`.
fn pump_until(
    lua: &Lua,
    pump: &Pump,
    deadline: Option<Instant>,
    until_one: bool,
) -> mlua::Result<usize> {
    let mut total = 0;
    loop {
        total += dispatch_pending(lua, pump)?;
        if until_one && total > 0 {
            return Ok(total);
        }
        let wait = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(total);
                }
                Some(d - now)
            }
        };
        pump.wait(wait);
    }
}

/// `kumoproxy.poll([timeout])` -> number of events dispatched.
fn poll(lua: &Lua, timeout: Value) -> mlua::Result<usize> {
    let t = optional_duration(lua, &timeout, "kumoproxy.poll")?.unwrap_or(Duration::ZERO);
    let pump = runtime::current().pump();
    pump_until(lua, pump, Some(Instant::now() + t), true)
}

/// `kumoproxy.run{ grace = '5 seconds' }`: serve until stop() or SIGINT/SIGTERM.
fn run(lua: &Lua, opts: Value) -> mlua::Result<()> {
    // Inside a handler, run() would serve until a signal while the session that
    // asked waits for an answer: refuse, and say what to use instead.
    if crate::dispatch::in_handler() {
        return Err(err(
            "kumoproxy.run: called from inside an event handler; run() is the host's main loop. Use kumoproxy.run_until, poll or run_command to wait inside a handler",
        ));
    }
    let grace = if opts.is_nil() {
        DEFAULT_GRACE
    } else {
        let mut p = Params::new("kumoproxy.run", opts)?;
        let g = p.duration("grace", DEFAULT_GRACE)?;
        p.finish()?;
        g
    };
    let process = runtime::current();
    let pump = process.pump();
    // A stop() from before this run() (e.g. in a handler run by poll) is stale.
    pump.clear_stop();
    let why = {
        let _signals = crate::signals::install(pump.fd());
        // Logged once the handlers are in place: from here SIGTERM stops cleanly.
        tracing::info!(
            "kumoproxy.run: serving {} listener(s) until kumoproxy.stop() or SIGINT/SIGTERM",
            process.live_listeners().len()
        );
        loop {
            dispatch_pending(lua, pump)?;
            if let Some(sig) = crate::signals::received() {
                break crate::signals::name(sig).to_string();
            }
            if pump.stop_requested() {
                break "kumoproxy.stop()".to_string();
            }
            pump.wait(None);
        }
    };
    pump.clear_stop();
    shutdown(lua, process, grace, &why)
}

const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Close every listener, let sessions finish within `grace`, then cut the rest.
fn shutdown(lua: &Lua, process: &Process, grace: Duration, why: &str) -> mlua::Result<()> {
    let listeners = process.live_listeners();
    tracing::info!(
        "stopping ({why}): closing {} listener(s), grace period {grace:?}",
        listeners.len()
    );
    for l in &listeners {
        l.close();
    }
    for l in process.live_http_listeners() {
        l.close();
    }
    let pump = process.pump();
    let deadline = Instant::now() + grace;
    let active = || -> u64 {
        listeners
            .iter()
            .map(|l| l.stats.active.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    // Sessions still mid-handshake may need Lua decisions: keep dispatching.
    while active() > 0 && Instant::now() < deadline {
        dispatch_pending(lua, pump)?;
        let left = deadline.saturating_duration_since(Instant::now());
        pump.wait(Some(left.min(Duration::from_millis(20))));
    }
    let cut = active();
    if cut > 0 {
        tracing::warn!("grace period over: cutting {cut} session(s)");
    }
    for l in &listeners {
        l.abort.cancel();
    }
    // Cut sessions log their line and count themselves as failed on the
    // runtime threads: wait for that (they only have to notice the
    // cancellation), so stats() right after run() is final and no line is lost
    // if the process exits next. Bounded: a task stuck elsewhere cannot hang run().
    let settle = Instant::now() + Duration::from_secs(2);
    while active() > 0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// `kumoproxy.run_until(seconds)` or `run_until(predicate [, timeout])`.
/// Dispatches events meanwhile. With a predicate: returns its first truthy value,
/// or `nil, "timeout"`.
fn run_until(lua: &Lua, (what, timeout): (Value, Value)) -> mlua::Result<MultiValue> {
    let pump = runtime::current().pump();
    match what {
        Value::Function(pred) => {
            let t = optional_duration(lua, &timeout, "kumoproxy.run_until")?;
            let deadline = t.map(|t| Instant::now() + t);
            loop {
                dispatch_pending(lua, pump)?;
                let v: Value = pred.call(())?;
                if !matches!(v, Value::Nil | Value::Boolean(false)) {
                    return Ok(MultiValue::from_vec(vec![v]));
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Ok(MultiValue::from_vec(vec![
                        Value::Nil,
                        Value::String(lua.create_string("timeout")?),
                    ]));
                }
                // State a predicate reads (stats, sockets) changes without events:
                // look again soon, but sleep on the eventfd meanwhile.
                let mut wait = Duration::from_millis(5);
                if let Some(d) = deadline {
                    wait = wait.min(d - now);
                }
                pump.wait(Some(wait));
            }
        }
        v @ (Value::Integer(_) | Value::Number(_) | Value::String(_)) => {
            let t = optional_duration(lua, &v, "kumoproxy.run_until")?.unwrap_or_default();
            pump_until(lua, pump, Some(Instant::now() + t), false)?;
            Ok(MultiValue::from_vec(vec![Value::Boolean(true)]))
        }
        other => Err(err(format!(
            "kumoproxy.run_until: expected a function or a duration, got {}",
            other.type_name()
        ))),
    }
}

/// Runs `fut` on the runtime while dispatching events on this thread.
pub fn block_pumping<T: Send + 'static>(
    lua: &Lua,
    fut: impl Future<Output = T> + Send + 'static,
) -> mlua::Result<T> {
    let process = runtime::current();
    let pump = process.pump().clone();
    let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
    let done = slot.clone();
    let waker = pump.clone();
    process.runtime().spawn(async move {
        let v = fut.await;
        *done.lock().unwrap() = Some(v);
        waker.wake();
    });
    loop {
        // Drain (which resets the eventfd) before looking at the slot, so a
        // completion between the two still wakes the wait below.
        dispatch_pending(lua, &pump)?;
        if let Some(v) = slot.lock().unwrap().take() {
            return Ok(v);
        }
        pump.wait(None);
    }
}

/// `kumoproxy.run_command(cmd [, {stdin=, timeout=}])` -> stdout, exit_code, stderr.
/// `cmd` is a shell string or an argv table. Events are dispatched while it runs,
/// so a spec can drive curl against its own proxy and auth handler.
fn run_command(lua: &Lua, (cmd, opts): (Value, Value)) -> mlua::Result<(Value, Value, Value)> {
    let argv: Vec<String> = match cmd {
        Value::String(s) => vec!["/bin/sh".into(), "-c".into(), s.to_str()?.to_string()],
        Value::Table(t) => t.sequence_values::<String>().collect::<mlua::Result<_>>()?,
        other => {
            return Err(err(format!(
                "kumoproxy.run_command: expected a command string or argv table, got {}",
                other.type_name()
            )))
        }
    };
    if argv.is_empty() {
        return Err(err("kumoproxy.run_command: empty argv"));
    }
    let (stdin, timeout) = if opts.is_nil() {
        (None, None)
    } else {
        let mut p = Params::new("kumoproxy.run_command", opts)?;
        let stdin = p.raw("stdin")?;
        let stdin = match stdin {
            Value::Nil => None,
            Value::String(s) => Some(s.as_bytes().to_vec()),
            _ => return Err(p.key_err("stdin", "expected a string")),
        };
        let timeout = match p.raw("timeout")? {
            Value::Nil => None,
            v => Some(crate::params::parse_duration(&v).map_err(|e| p.key_err("timeout", e))?),
        };
        p.finish()?;
        (stdin, timeout)
    };
    let out = block_pumping(lua, async move {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::process::Command::new(&argv[0]);
        c.args(&argv[1..])
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // Runtime threads block every signal and children inherit the mask:
        // give the command a clean one, or it could never be stopped by SIGTERM.
        unsafe {
            c.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut child = c.spawn()?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            tokio::spawn(async move {
                let _ = pipe.write_all(&data).await;
            });
        }
        let wait = child.wait_with_output();
        match timeout {
            None => wait.await,
            Some(t) => tokio::time::timeout(t, wait).await.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("command timed out after {t:?}"),
                ))
            }),
        }
    })?;
    match out {
        Ok(o) => {
            use std::os::unix::process::ExitStatusExt;
            let code = o
                .status
                .code()
                .map(i64::from)
                .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0) as i64);
            Ok((
                Value::String(lua.create_string(&o.stdout)?),
                Value::Integer(code),
                Value::String(lua.create_string(&o.stderr)?),
            ))
        }
        // luv's convention: a runtime failure is `nil, message`.
        Err(e) => Ok((
            Value::Nil,
            Value::String(lua.create_string(format!("kumoproxy.run_command: {e}"))?),
            Value::Nil,
        )),
    }
}
