//! `start_proxy_listener` and the listener object it returns.

use crate::host::runtime;
use crate::lua::listener_params::listener_config;
use crate::lua::params::{err, pem_param, refuse_in_nginx_master, Params};
use crate::server::listener;
use mlua::{Lua, UserData, UserDataMethods, Value};
use std::sync::Arc;

pub(crate) fn start_proxy_listener(lua: &Lua, params: Value) -> mlua::Result<LuaListener> {
    refuse_in_nginx_master(lua, "start_proxy_listener")?;
    let config = listener_config(params.clone())?;
    let listen = config.listen;
    let shared = listener::start(runtime::current(), config).map_err(|e| {
        err(format!(
            "start_proxy_listener: listen: cannot listen on {listen}: {e}"
        ))
    })?;
    // `listener:reconfigure` re-reads these with its changes on top.
    crate::lua::ops::remember_params(lua, &shared, &params)?;
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
            for (k, v) in this.shared.udp.snapshot() {
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
        methods.add_method("sessions", |lua, this, filter: Value| {
            crate::lua::ops::sessions(lua, this.check_pid()?, filter)
        });
        methods.add_method("close_sessions", |_, this, filter: Value| {
            let f = crate::lua::ops::filter_param("close_sessions", filter, true)?;
            Ok(crate::lua::ops::close(this.check_pid()?, &f))
        });
        methods.add_method("reconfigure", |lua, this, update: Value| {
            this.check_pid()?;
            crate::lua::ops::reconfigure(lua, &this.shared, update)
        });
        methods.add_method("flush_auth_cache", |_, this, ()| {
            this.check_pid()?;
            Ok(this
                .shared
                .current()
                .auth
                .cache
                .as_ref()
                .map(|c| c.flush())
                .unwrap_or(0))
        });
        methods.add_method("limit_stats", |lua, this, key: String| {
            this.check_pid()?;
            // The limits of new sessions (after any `reconfigure`).
            let spec = this
                .shared
                .current()
                .config
                .limits
                .clone()
                .ok_or_else(|| err("limit_stats: this listener has no limits"))?;
            let r = crate::lua::pumping::block_pumping(lua, async move {
                crate::policy::limits::limiter().stats(&key, &spec).await
            })?;
            match r {
                Ok(s) => Ok((
                    Value::Table(crate::lua::limits::stats_table(lua, &s)?),
                    Value::Nil,
                )),
                Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e)?))),
            }
        });
        methods.add_method("close", |lua, this, ()| {
            this.check_pid()?.close();
            crate::lua::ops::forget_params(lua, &this.shared)?;
            Ok(())
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!("kumoproxy.listener({})", this.shared.local_addr))
        });
    }
}
