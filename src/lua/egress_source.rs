//! Egress sources as Lua values: the userdata type, and how other functions'
//! parameters and policy replies name one (the object, or the name it was made
//! with). Its methods are in `lua::egress`.

use crate::egress::EgressSource;
use crate::lua::params::Params;
use mlua::{Lua, Table, Value};
use std::sync::Arc;

/// The egress source object.
pub struct LuaEgressSource {
    pub(crate) source: Arc<EgressSource>,
}

const BY_NAME_KEY: &str = "kumoproxy.egress_sources";

/// Sources by name for `egress_source = 'name'` in policy replies: the latest
/// one made with a name wins. Weak values: a source nobody holds can go away.
pub(crate) fn by_name(lua: &Lua) -> mlua::Result<Table> {
    if let Value::Table(t) = lua.named_registry_value::<Value>(BY_NAME_KEY)? {
        return Ok(t);
    }
    let t = lua.create_table()?;
    let mt = lua.create_table()?;
    mt.set("__mode", "v")?;
    t.set_metatable(Some(mt))?;
    lua.set_named_registry_value(BY_NAME_KEY, &t)?;
    Ok(t)
}

/// An egress source object, or the name of one made earlier in this Lua state.
pub fn source_from_value(lua: &Lua, v: &Value) -> Result<Arc<EgressSource>, String> {
    match v {
        Value::UserData(ud) => ud
            .borrow::<LuaEgressSource>()
            .map(|s| s.source.clone())
            .map_err(|_| "expected an egress source or its name".to_string()),
        Value::String(s) => {
            let name = s.to_string_lossy();
            match by_name(lua)
                .and_then(|t| t.raw_get::<Value>(name.as_str()))
                .map_err(|e| e.to_string())?
            {
                Value::UserData(ud) => ud
                    .borrow::<LuaEgressSource>()
                    .map(|s| s.source.clone())
                    .map_err(|e| e.to_string()),
                _ => Err(format!("no egress source named '{name}'")),
            }
        }
        other => Err(format!(
            "expected an egress source or its name, got {}",
            other.type_name()
        )),
    }
}

/// `egress_source = src` in another function's parameters (start_proxy_listener).
pub fn egress_param(p: &mut Params, key: &str) -> mlua::Result<Option<Arc<EgressSource>>> {
    match p.raw(key)? {
        Value::Nil => Ok(None),
        Value::UserData(ud) => match ud.borrow::<LuaEgressSource>() {
            Ok(src) => Ok(Some(src.source.clone())),
            Err(_) => Err(p.key_err(
                key,
                "expected an egress source from kumoproxy.make_egress_source",
            )),
        },
        other => Err(p.key_err(
            key,
            format!(
                "expected an egress source from kumoproxy.make_egress_source, got {}",
                other.type_name()
            ),
        )),
    }
}
