//! Reading Lua parameter tables: one place that knows how to name a bad key.
//!
//! `Params` wraps a table, hands out typed values by key, remembers which keys were
//! read, and `finish()` rejects any key nobody asked for. Every error names the key
//! (with its context, e.g. `start_proxy_listener: tcp_keepalive.time`).

use crate::host::tls::PemSource;
use ipnet::IpNet;
use mlua::{Lua, Table, Value};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub struct Params {
    ctx: String,
    /// Between `ctx` and a key in messages: ": ", or "." for dotted nested keys.
    sep: &'static str,
    table: Table,
    seen: HashSet<String>,
}

pub fn err(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(msg.into())
}

impl Params {
    /// `ctx` prefixes every message: usually the function name.
    pub fn new(ctx: &str, value: Value) -> mlua::Result<Self> {
        match value {
            Value::Table(table) => Ok(Params {
                ctx: ctx.to_string(),
                sep: ": ",
                table,
                seen: HashSet::new(),
            }),
            Value::Nil => Err(err(format!("{ctx}: expected a parameter table, got nil"))),
            other => Err(err(format!(
                "{ctx}: expected a parameter table, got {}",
                other.type_name()
            ))),
        }
    }

    /// What messages start with (`start_proxy_listener`, `reconfigure`, ...).
    pub fn ctx(&self) -> &str {
        &self.ctx
    }

    pub fn key_err(&self, key: &str, msg: impl std::fmt::Display) -> mlua::Error {
        err(format!("{}{}{key}: {msg}", self.ctx, self.sep))
    }

    pub fn raw(&mut self, key: &str) -> mlua::Result<Value> {
        self.seen.insert(key.to_string());
        self.table.raw_get(key)
    }

    pub fn string(&mut self, key: &str) -> mlua::Result<Option<String>> {
        match self.raw(key)? {
            Value::Nil => Ok(None),
            Value::String(s) => Ok(Some(
                s.to_str()
                    .map_err(|_| self.key_err(key, "must be valid UTF-8"))?
                    .to_string(),
            )),
            other => {
                Err(self.key_err(key, format!("expected a string, got {}", other.type_name())))
            }
        }
    }

    pub fn required_string(&mut self, key: &str) -> mlua::Result<String> {
        self.string(key)?
            .ok_or_else(|| self.key_err(key, "is required"))
    }

    pub fn bool(&mut self, key: &str, default: bool) -> mlua::Result<bool> {
        match self.raw(key)? {
            Value::Nil => Ok(default),
            Value::Boolean(b) => Ok(b),
            other => Err(self.key_err(
                key,
                format!("expected a boolean, got {}", other.type_name()),
            )),
        }
    }

    pub fn integer(&mut self, key: &str, min: i64, max: i64) -> mlua::Result<Option<i64>> {
        let v = match self.raw(key)? {
            Value::Nil => return Ok(None),
            Value::Integer(i) => i,
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => n as i64,
            other => {
                return Err(self.key_err(
                    key,
                    format!("expected an integer, got {}", describe(&other)),
                ))
            }
        };
        if v < min || v > max {
            return Err(self.key_err(key, format!("{v} is out of range {min}..={max}")));
        }
        Ok(Some(v))
    }

    pub fn duration(&mut self, key: &str, default: Duration) -> mlua::Result<Duration> {
        let v = self.raw(key)?;
        if v.is_nil() {
            return Ok(default);
        }
        parse_duration(&v).map_err(|e| self.key_err(key, e))
    }

    /// Kernel socket options take whole seconds: reject what would truncate to 0.
    pub fn duration_at_least(
        &mut self,
        key: &str,
        default: Duration,
        min: Duration,
    ) -> mlua::Result<Duration> {
        let d = self.duration(key, default)?;
        if d < min {
            return Err(self.key_err(key, format!("must be at least {min:?}")));
        }
        Ok(d)
    }

    pub fn socket_addr(&mut self, key: &str) -> mlua::Result<Option<SocketAddr>> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s.parse::<SocketAddr>().map(Some).map_err(|_| {
                self.key_err(
                    key,
                    format!("'{s}' is not an address: use 'ip:port' or '[ipv6]:port'"),
                )
            }),
        }
    }

    pub fn ip(&mut self, key: &str) -> mlua::Result<Option<IpAddr>> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s
                .parse::<IpAddr>()
                .map(Some)
                .map_err(|_| self.key_err(key, format!("'{s}' is not an IP address"))),
        }
    }

    /// A list of IPs or CIDR blocks: `{'127.0.0.1', '10.0.0.0/8', '::1'}`.
    pub fn ip_nets(&mut self, key: &str) -> mlua::Result<Option<Vec<IpNet>>> {
        let t = match self.raw(key)? {
            Value::Nil => return Ok(None),
            Value::Table(t) => t,
            other => {
                return Err(self.key_err(
                    key,
                    format!("expected a list of IPs or CIDRs, got {}", other.type_name()),
                ))
            }
        };
        let mut out = Vec::new();
        for (i, v) in t.sequence_values::<Value>().enumerate() {
            let v = v?;
            let s = match &v {
                Value::String(s) => s.to_string_lossy(),
                other => {
                    return Err(self.key_err(
                        &format!("{key}[{}]", i + 1),
                        format!("expected a string, got {}", other.type_name()),
                    ))
                }
            };
            out.push(parse_ip_net(&s).map_err(|e| self.key_err(&format!("{key}[{}]", i + 1), e))?);
        }
        Ok(Some(out))
    }

    /// A nested parameter table, e.g. `tcp_keepalive = {...}`.
    pub fn nested(&mut self, key: &str) -> mlua::Result<Option<Params>> {
        match self.raw(key)? {
            Value::Nil => Ok(None),
            v @ Value::Table(_) => Ok(Some(Params::new(&format!("{}: {key}", self.ctx), v)?)),
            other => Err(self.key_err(key, format!("expected a table, got {}", other.type_name()))),
        }
    }

    /// Like [`Params::nested`], but errors name keys as `parent.key`
    /// (e.g. `start_proxy_listener: auth_http.url: ...`).
    pub fn nested_dotted(&mut self, key: &str) -> mlua::Result<Option<Params>> {
        Ok(self.nested(key)?.map(|mut p| {
            p.ctx = format!("{}: {key}", self.ctx);
            p.sep = ".";
            p
        }))
    }

    /// Rejects keys nobody read: a typo must not silently fall back to a default.
    pub fn finish(self) -> mlua::Result<()> {
        let mut unknown = Vec::new();
        for pair in self.table.pairs::<Value, Value>() {
            let (k, _) = pair?;
            let name = match &k {
                Value::String(s) => s.to_string_lossy(),
                other => format!("{other:?}"),
            };
            if !self.seen.contains(&name) {
                unknown.push(name);
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort();
        let mut known: Vec<_> = self.seen.into_iter().collect();
        known.sort();
        Err(err(format!(
            "{}: unknown parameter{} {} (known: {})",
            self.ctx,
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            known.join(", ")
        )))
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{n}"),
        other => other.type_name().to_string(),
    }
}

/// Seconds (integer or fractional) or a human string: `'30 seconds'`, `'500ms'`, `'1m 30s'`.
pub fn parse_duration(v: &Value) -> Result<Duration, String> {
    let secs = match v {
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        Value::String(s) => {
            let s = s.to_string_lossy();
            let t = s.trim();
            if let Ok(n) = t.parse::<f64>() {
                n
            } else {
                let d = humantime::parse_duration(t).map_err(|e| {
                    format!("'{s}' is not a duration ({e}); use seconds or e.g. '30 seconds'")
                })?;
                // Same bound as numbers: deadlines computed from it must not overflow.
                d.as_secs_f64()
            }
        }
        other => {
            return Err(format!(
                "expected seconds or a duration string, got {}",
                other.type_name()
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 || secs > 1.0e9 {
        return Err(format!("{secs} is not a valid number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_ip_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{s}' is neither an IP address nor a CIDR block"))
}

/// Optional timeout argument of `poll`/`run_until`: nil = default, seconds, or a string.
pub fn optional_duration(_lua: &Lua, v: &Value, what: &str) -> mlua::Result<Option<Duration>> {
    if v.is_nil() {
        return Ok(None);
    }
    parse_duration(v)
        .map(Some)
        .map_err(|e| err(format!("{what}: {e}")))
}

/// `auth_cache = { ttl, negative_ttl, max_entries }`, shared by the proxy and
/// status listeners.
pub(crate) fn auth_cache_param(
    p: &mut Params,
) -> mlua::Result<Option<crate::policy::auth_cache::CacheConfig>> {
    use crate::policy::auth_cache::CacheConfig;
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

/// A port argument of a method (`src:connect(host, port)`, `a:sendto(data, host, port)`):
/// an integer 1..65535, or a string holding one.
pub fn port_arg(v: &Value, what: &str) -> mlua::Result<u16> {
    let n = match v {
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        Value::String(s) => s.to_str()?.trim().parse::<f64>().unwrap_or(-1.0),
        _ => -1.0,
    };
    if n.fract() != 0.0 || !(1.0..=65535.0).contains(&n) {
        return Err(err(format!("{what}: port must be an integer 1..65535")));
    }
    Ok(n as u16)
}
