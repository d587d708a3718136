//! PROXY protocol for Lua: the `proxy_protocol = { from = {...} }` and
//! `send_proxy_protocol = 'v1' | 'v2'` listener parameters, and the
//! `conn_meta.proxy_peer_address` / `conn_meta.proxy_tlvs` fields.

use crate::lua::params::Params;
use crate::policy::identity::ConnMeta;
use crate::proto::proxy_header::{SendProxy, TlvValue, Tlvs};
use crate::server::proxy_inbound::{parse_from, InboundConfig};
use mlua::{Lua, Table, Value};

/// `proxy_protocol = { from = { '10.0.0.0/8', '127.0.0.1' } }`; errors name
/// the key (`proxy_protocol.from: ...`).
pub fn inbound_param(p: &mut Params) -> mlua::Result<Option<InboundConfig>> {
    let key = "proxy_protocol";
    if !matches!(p.raw(key)?, Value::Nil | Value::Table(_)) {
        let v = p.raw(key)?;
        return Err(p.key_err(
            key,
            format!(
                "expected a table {{ from = {{...}} }}, got {}",
                v.type_name()
            ),
        ));
    }
    let Some(mut t) = p.nested_dotted(key)? else {
        return Ok(None);
    };
    // Unknown keys are reported first: a missing `from` is often a misspelt one.
    let from = match t.raw("from")? {
        Value::Table(list) => from_list(&t, &list),
        Value::Nil => Err(t.key_err("from", "is required: the balancers' addresses")),
        other => Err(t.key_err(
            "from",
            format!("expected a list of IPs or CIDRs, got {}", other.type_name()),
        )),
    };
    t.finish()?;
    let from = from?;
    Ok(Some(InboundConfig { from }))
}

fn from_list(t: &Params, list: &Table) -> mlua::Result<Vec<ipnet::IpNet>> {
    let mut v = Vec::new();
    for (i, s) in list.clone().sequence_values::<Value>().enumerate() {
        match s? {
            Value::String(s) => v.push(s.to_string_lossy()),
            other => {
                return Err(t.key_err(
                    &format!("from[{}]", i + 1),
                    format!("expected a string, got {}", other.type_name()),
                ))
            }
        }
    }
    parse_from(&v).map_err(|e| t.key_err("from", e))
}

/// `send_proxy_protocol = 'v1' | 'v2'`.
pub fn send_param(p: &mut Params) -> mlua::Result<Option<SendProxy>> {
    let key = "send_proxy_protocol";
    match p.raw(key)? {
        Value::Nil => Ok(None),
        Value::String(s) => SendProxy::parse(&s.to_string_lossy())
            .map(Some)
            .map_err(|e| p.key_err(key, e)),
        other => Err(p.key_err(key, format!("expected a string, got {}", other.type_name()))),
    }
}

/// In a `proxy_server_request` reply: `'v1'`, `'v2'` or `false` (none).
pub fn send_override(v: &Value) -> Result<Option<SendProxy>, String> {
    match v {
        Value::Boolean(false) => Ok(None),
        Value::String(s) => SendProxy::parse(&s.to_string_lossy())
            .map(Some)
            .map_err(|e| format!("send_proxy_protocol {e}")),
        other => Err(format!(
            "send_proxy_protocol must be 'v1', 'v2' or false, got {}",
            other.type_name()
        )),
    }
}

/// Adds `proxy_peer_address` and `proxy_tlvs` to a `conn_meta` table.
pub fn conn_meta_fields(lua: &Lua, meta: &ConnMeta, t: &Table) -> mlua::Result<()> {
    if let Some(b) = meta.proxy_peer {
        t.set("proxy_peer_address", b.to_string())?;
    }
    if let Some(tlvs) = &meta.proxy_tlvs {
        t.set("proxy_tlvs", tlvs_table(lua, tlvs)?)?;
    }
    Ok(())
}

fn tlvs_table(lua: &Lua, tlvs: &Tlvs) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (k, v) in tlvs.iter() {
        match v {
            TlvValue::Bytes(b) => t.set(k, lua.create_string(b)?)?,
            TlvValue::Int(n) => t.set(k, *n)?,
        }
    }
    Ok(t)
}
