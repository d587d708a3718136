//! Lua side of per-identity limits: `kumoproxy.configure_redis{}`, the
//! `limits = {...}` tables (listener defaults, AuthInfo), `listener:limit_stats`.
//! Parsing itself is in `policy::limits::spec`; this file only converts Lua values.

use crate::lua::params::{err, Params};
use crate::policy::limits::{
    FleetBackend, LimitStats, LimitsError, LimitsSpec, OnError, Raw, RedisConfig, RedisTarget,
    Scope,
};
use mlua::{Lua, Table, Value};
use std::sync::Arc;
use std::time::Duration;

/// A Lua value as the limits parser sees it.
pub fn raw_from_lua(v: &Value) -> Raw {
    match v {
        Value::Integer(i) => Raw::Int(*i),
        Value::Number(n) => Raw::Num(*n),
        Value::String(s) => Raw::Str(s.to_string_lossy()),
        Value::Table(t) => Raw::Table(
            t.pairs::<Value, Value>()
                .flatten()
                .map(|(k, v)| {
                    let k = match k {
                        Value::String(s) => s.to_string_lossy(),
                        // Not a valid key: the parser reports it as unknown.
                        other => format!("[{}]", other.type_name()),
                    };
                    (k, raw_from_lua(&v))
                })
                .collect(),
        ),
        Value::Boolean(_) => Raw::Other("boolean"),
        Value::Nil => Raw::Other("nil"),
        other => Raw::Other(other.type_name()),
    }
}

/// `limits = {...}` from Lua; errors read `limits.<key>: ...`.
pub fn limits_from_lua(v: &Value) -> Result<LimitsSpec, LimitsError> {
    match raw_from_lua(v) {
        Raw::Table(entries) => LimitsSpec::from_entries(&entries),
        _ => Err(LimitsError {
            key: String::new(),
            msg: format!("expected a table, got {}", v.type_name()),
        }),
    }
}

/// A fleet scope needs a Redis to count in.
pub fn check_fleet_configured(spec: &LimitsSpec) -> Result<(), LimitsError> {
    if spec.scope == Scope::Fleet && crate::policy::limits::limiter().fleet().is_none() {
        return Err(LimitsError {
            key: "scope".into(),
            msg: "'fleet' needs kumoproxy.configure_redis{} first".into(),
        });
    }
    Ok(())
}

/// The listener's `limits` parameter.
pub fn listener_limits(p: &mut Params) -> mlua::Result<Option<Arc<LimitsSpec>>> {
    let v = p.raw("limits")?;
    if v.is_nil() {
        return Ok(None);
    }
    let spec = limits_from_lua(&v)
        .and_then(|s| check_fleet_configured(&s).map(|_| s))
        .map_err(|e| err(format!("{}: {e}", p.ctx())))?;
    Ok(Some(Arc::new(spec)))
}

/// `kumoproxy.configure_redis{ url | cluster, timeout, on_error, lease_ttl }`.
pub fn configure_redis(lua: &Lua, params: Value) -> mlua::Result<()> {
    crate::lua::params::refuse_in_nginx_master(lua, "configure_redis")?;
    let mut p = Params::new("configure_redis", params)?;
    let url = p.string("url")?;
    let cluster = match p.raw("cluster")? {
        Value::Nil => None,
        Value::Table(t) => Some(
            t.sequence_values::<String>()
                .collect::<mlua::Result<Vec<_>>>()
                .map_err(|_| p.key_err("cluster", "expected a list of redis:// URLs"))?,
        ),
        other => {
            return Err(p.key_err(
                "cluster",
                format!(
                    "expected a list of redis:// URLs, got {}",
                    other.type_name()
                ),
            ))
        }
    };
    let target = match (url, cluster) {
        (Some(u), None) => RedisTarget::Url(u),
        (None, Some(c)) => RedisTarget::Cluster(c),
        (Some(_), Some(_)) => return Err(err("configure_redis: give url or cluster, not both")),
        (None, None) => return Err(err("configure_redis: give url or cluster")),
    };
    let mut cfg = RedisConfig::new(target);
    cfg.timeout = p.duration("timeout", cfg.timeout)?;
    if cfg.timeout.is_zero() {
        return Err(p.key_err("timeout", "must be greater than zero"));
    }
    cfg.on_error = match p.string("on_error")?.as_deref() {
        None | Some("allow") => OnError::Allow,
        Some("deny") => OnError::Deny,
        Some(other) => {
            return Err(p.key_err(
                "on_error",
                format!(
                    "expected 'allow' or 'deny', got '{}'",
                    crate::proto::text::printable(other)
                ),
            ))
        }
    };
    cfg.lease_ttl = p.duration_at_least("lease_ttl", cfg.lease_ttl, Duration::from_secs(1))?;
    p.finish()?;
    let rt = crate::host::runtime::current().runtime().handle().clone();
    let backend = FleetBackend::new(cfg, rt).map_err(|e| err(format!("configure_redis: {e}")))?;
    crate::policy::limits::limiter().set_fleet(Some(backend));
    Ok(())
}

/// `listener:limit_stats(key)`'s table.
pub fn stats_table(lua: &Lua, s: &LimitStats) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("sessions", s.sessions)?;
    t.set("connect_refused", s.connect_refused)?;
    t.set("bytes_up", s.bytes_up)?;
    t.set("bytes_down", s.bytes_down)?;
    if let Some(u) = s.quota_used {
        t.set("quota_used", u)?;
    }
    if let Some(r) = s.quota_remaining {
        t.set("quota_remaining", r)?;
    }
    Ok(t)
}

/// `limits` and `limit_key` of an AuthInfo table returned by a handler.
pub fn auth_limits(t: &Table) -> Result<(Option<Arc<LimitsSpec>>, Option<String>), String> {
    let limits = match t.get::<Value>("limits").map_err(|e| e.to_string())? {
        Value::Nil => None,
        v => {
            let spec = limits_from_lua(&v)
                .and_then(|s| check_fleet_configured(&s).map(|_| s))
                .map_err(|e| e.to_string())?;
            Some(Arc::new(spec))
        }
    };
    let key = match t.get::<Value>("limit_key").map_err(|e| e.to_string())? {
        Value::Nil => None,
        Value::String(s) if !s.as_bytes().is_empty() => Some(s.to_string_lossy()),
        other => {
            return Err(format!(
                "limit_key must be a non-empty string, got {}",
                other.type_name()
            ))
        }
    };
    Ok((limits, key))
}
