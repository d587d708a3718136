//! `start_proxy_listener{...}`: the parameter table, checked key by key, into a
//! `server::listener::Config`.

use crate::host::net::Keepalive;
use crate::host::tls::{ClientAuth, PemSource, TlsParams, TlsServer};
use crate::lua::params::{auth_cache_param, err, pem_param, Params};
use crate::policy::identity::TrustedHosts;
use crate::server::listener::Config;
use mlua::Value;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn listener_config(v: Value) -> mlua::Result<Config> {
    listener_config_in("start_proxy_listener", v)
}

/// `ctx` names the caller in errors (`listener:reconfigure` parses with it too).
pub(crate) fn listener_config_in(ctx: &str, v: Value) -> mlua::Result<Config> {
    let mut p = Params::new(ctx, v)?;
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
    c.egress = crate::lua::egress_source::egress_param(&mut p, "egress_source")?;
    c.require_password = p.bool("require_password", false)?;
    c.tls = tls_params(&mut p)?;
    if c.require_password && c.tls.is_none() {
        return Err(p.key_err(
            "require_password",
            "requires use_tls = true (it concerns client certificates)",
        ));
    }
    c.protocols = crate::lua::http::protocols_param(&mut p)?;
    c.udp = crate::lua::udp_params::udp_params(&mut p)?;
    c.proxy_protocol = crate::lua::proxy_protocol::inbound_param(&mut p)?;
    c.send_proxy = crate::lua::proxy_protocol::send_param(&mut p)?;
    auth_params(&mut p, &mut c)?;
    c.access_log = access_log_param(&mut p)?.flatten();
    c.limits = crate::lua::limits::listener_limits(&mut p)?;
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
    use crate::policy::auth_cache::DelayConfig;
    if let Some(mut h) = p.nested_dotted("auth_http")? {
        let url = h.required_string("url")?;
        let timeout = h.duration("timeout", crate::policy::auth_http::DEFAULT_TIMEOUT)?;
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
        let http = crate::policy::auth_http::AuthHttp::new(&url, timeout, tls_ca, headers)
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
        crate::policy::permissions::Permissions::default()
    } else {
        crate::policy::permissions::Permissions::private_destinations()
    };
    let v = p.raw("permissions")?;
    if !v.is_nil() {
        let given = crate::lua::dispatch::permissions_from_value(&v)
            .map_err(|e| p.key_err("permissions", e))?;
        perms.extend(&given);
    }
    c.permissions = Arc::new(perms);
    c.allowed_source_addresses = p.ip_nets("allowed_source_addresses")?;
    Ok(())
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
        hostname: hostname.unwrap_or_else(crate::host::tls::system_hostname),
        client_ca,
        client_auth,
    };
    TlsServer::new(params)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| err(format!("start_proxy_listener: {e}")))
}

/// `access_log = { path = '/var/log/kumoproxy/access.jsonl' }` (or `'-'`), or
/// `false` (none; for `reconfigure`). Listeners with the same path share a writer.
pub(crate) fn access_log_param(
    p: &mut Params,
) -> mlua::Result<Option<Option<Arc<crate::host::access_log::Sink>>>> {
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
            let d = crate::host::access_log::Destination::parse(&path);
            let sink = crate::host::access_log::sinks()
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
