//! The Lua side of the HTTP pieces: `kumoproxy.start_http_listener{...}` and its
//! object, and the proxy listener's `protocols` parameter.

use crate::host::runtime;
use crate::host::tls::{ClientAuth, TlsParams, TlsServer};
use crate::lua::params::pem_param;
use crate::lua::params::{err, Params};
use crate::policy::identity::TrustedHosts;
use crate::server::listener::Protocols;
use crate::server::status::{self as http_server, Config};
use mlua::{Lua, Table, UserData, UserDataMethods, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn register(lua: &Lua, m: &Table) -> mlua::Result<()> {
    m.set(
        "start_http_listener",
        lua.create_function(start_http_listener)?,
    )?;
    Ok(())
}

/// `protocols = {'socks5', 'http'}` (default `{'socks5'}`).
pub fn protocols_param(p: &mut Params) -> mlua::Result<Protocols> {
    let t = match p.raw("protocols")? {
        Value::Nil => return Ok(Protocols::default()),
        Value::Table(t) => t,
        other => {
            return Err(p.key_err(
                "protocols",
                format!(
                    "expected a list such as {{'socks5', 'http'}}, got {}",
                    other.type_name()
                ),
            ))
        }
    };
    let mut out = Protocols {
        socks5: false,
        http: false,
    };
    let mut n = 0;
    for (i, v) in t.sequence_values::<Value>().enumerate() {
        let key = format!("protocols[{}]", i + 1);
        let name = match v? {
            Value::String(s) => s.to_string_lossy(),
            other => {
                return Err(p.key_err(
                    &key,
                    format!("expected a string, got {}", other.type_name()),
                ))
            }
        };
        match name.as_str() {
            "socks5" => out.socks5 = true,
            "http" => out.http = true,
            _ => {
                return Err(p.key_err(
                    &key,
                    format!(
                        "'{name}' is not one of {}",
                        Protocols::NAMES.map(|n| format!("'{n}'")).join(", ")
                    ),
                ))
            }
        }
        n += 1;
    }
    if n == 0 || t.raw_len() != n || t.pairs::<Value, Value>().count() != n {
        return Err(p.key_err(
            "protocols",
            "must be a non-empty list such as {'socks5', 'http'}",
        ));
    }
    Ok(out)
}

fn http_config(v: Value) -> mlua::Result<Config> {
    let mut p = Params::new("start_http_listener", v)?;
    let listen = p.socket_addr("listen")?;
    let missing_listen = p.key_err("listen", "is required, e.g. '127.0.0.1:8080'");
    let mut c = Config::new(listen.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()));
    if let Some(nets) = p.ip_nets("trusted_hosts")? {
        c.trusted_hosts = TrustedHosts::new(nets);
    }
    c.timeout = p.duration("timeout", c.timeout)?;
    c.auth_cache = crate::lua::params::auth_cache_param(&mut p)?;
    if c.timeout.is_zero() {
        return Err(p.key_err("timeout", "must be greater than zero"));
    }
    let use_tls = p.bool("use_tls", false)?;
    let certificate = pem_param(&mut p, "start_http_listener", "tls_certificate")?;
    let private_key = pem_param(&mut p, "start_http_listener", "tls_private_key")?;
    let hostname = p.string("hostname")?;
    c.proxy_protocol = crate::lua::proxy_protocol::inbound_param(&mut p)?;
    p.finish()?;
    if listen.is_none() {
        return Err(missing_listen);
    }
    if !use_tls {
        // A listener the user believes encrypted must never run in clear.
        for (key, given) in [
            ("tls_certificate", certificate.is_some()),
            ("tls_private_key", private_key.is_some()),
            ("hostname", hostname.is_some()),
        ] {
            if given {
                return Err(err(format!(
                    "start_http_listener: {key}: requires use_tls = true"
                )));
            }
        }
    } else {
        let params = TlsParams {
            certificate,
            private_key,
            hostname: hostname.unwrap_or_else(crate::host::tls::system_hostname),
            client_ca: None,
            client_auth: ClientAuth::Required,
        };
        let tls = TlsServer::new(params).map_err(|e| err(format!("start_http_listener: {e}")))?;
        c.tls = Some(Arc::new(tls));
    }
    Ok(c)
}

fn start_http_listener(lua: &Lua, params: Value) -> mlua::Result<LuaHttpListener> {
    crate::lua::params::refuse_in_nginx_master(lua, "start_http_listener")?;
    let config = http_config(params)?;
    let listen = config.listen;
    let shared = http_server::start(runtime::current(), config).map_err(|e| {
        err(format!(
            "start_http_listener: listen: cannot listen on {listen}: {e}"
        ))
    })?;
    Ok(LuaHttpListener {
        shared,
        pid: std::process::id(),
    })
}

/// The status listener object handed to Lua.
pub struct LuaHttpListener {
    shared: Arc<http_server::Shared>,
    pid: u32,
}

impl UserData for LuaHttpListener {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("local_addr", |_, this, ()| {
            Ok(this.shared.local_addr.to_string())
        });
        methods.add_method("certificate_pem", |_, this, ()| {
            Ok(this.shared.config.tls.as_ref().map(|t| t.certificate_pem()))
        });
        methods.add_method("stats", |lua, this, ()| {
            let s = &this.shared;
            let t = lua.create_table()?;
            t.set("requests", s.requests.load(Ordering::Relaxed))?;
            t.set("auth_failures", s.auth_failures.load(Ordering::Relaxed))?;
            t.set("accepting", s.accepting.load(Ordering::Acquire))?;
            Ok(t)
        });
        methods.add_method("close", |_, this, ()| {
            if this.pid != std::process::id() {
                return Err(err(format!(
                    "this status listener was started in process {} before a fork",
                    this.pid
                )));
            }
            this.shared.close();
            Ok(())
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!(
                "kumoproxy.http_listener({})",
                this.shared.local_addr
            ))
        });
    }
}
