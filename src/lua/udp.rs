//! Lua side of UDP ASSOCIATE: the association object `src:udp_associate()`
//! returns. The listener's `udp*` parameters are in `lua::udp_params`.

use crate::egress::udp::UdpUpstream;
use crate::egress::EgressSource;
use crate::lua::params::{err, parse_duration, port_arg, Params};
use crate::lua::pumping::block_pumping;
use crate::proto::socks5_udp;
use mlua::{Lua, MultiValue, UserData, UserDataMethods, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The object `src:udp_associate()` returns: LuaSocket-like `sendto`,
/// `receivefrom`, `close`. Through a proxy, datagrams carry the RFC 1928 §7
/// header to the proxy's relay; directly, they go straight out.
pub struct LuaUdpAssociation {
    inner: Option<Arc<UdpUpstream>>,
    source: String,
    pid: u32,
}

impl LuaUdpAssociation {
    pub fn new(up: UdpUpstream, source: &str) -> Self {
        LuaUdpAssociation {
            inner: Some(Arc::new(up)),
            source: source.to_string(),
            pid: std::process::id(),
        }
    }

    fn get(&self) -> mlua::Result<Result<Arc<UdpUpstream>, &'static str>> {
        if self.pid != std::process::id() {
            return Err(err(format!(
                "this UDP association was made in process {} before a fork; make a new one",
                self.pid
            )));
        }
        Ok(self.inner.clone().ok_or("closed"))
    }
}

fn nil_err(lua: &Lua, msg: &str) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![
        Value::Nil,
        Value::String(lua.create_string(msg)?),
    ]))
}

/// The largest datagram a receive can return: more than any UDP payload.
const RECV_BUF: usize = 65_536 + socks5_udp::MAX_HEADER;

/// Runs `fut` on the runtime while the host thread keeps dispatching events.
fn block<T: Send + 'static>(
    lua: &Lua,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> mlua::Result<T> {
    block_pumping(lua, fut)
}

impl UserData for LuaUdpAssociation {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // a:sendto(data, host, port) -> bytes sent | nil, err
        methods.add_method(
            "sendto",
            |lua, this, (data, host, port): (mlua::LuaString, String, Value)| {
                let what = "udp_association:sendto";
                let port = port_arg(&port, what)?;
                let target =
                    crate::egress::target(&host, port).map_err(|e| err(format!("{what}: {e}")))?;
                let up = match this.get()? {
                    Ok(u) => u,
                    Err(e) => return nil_err(lua, e),
                };
                let payload = data.as_bytes().to_vec();
                let n = payload.len();
                let r = block(lua, async move {
                    match up.relay {
                        Some(relay) => {
                            let mut d = Vec::with_capacity(socks5_udp::MAX_HEADER + n);
                            if !socks5_udp::encode_header(&target, &mut d) {
                                return Err("host name too long".to_string());
                            }
                            d.extend_from_slice(&payload);
                            up.socket
                                .send_to(&d, relay)
                                .await
                                .map_err(|e| e.to_string())
                        }
                        None => {
                            let to = crate::host::net::resolve(&target, None)
                                .await
                                .map_err(|(_, m)| m)?;
                            let local_v4 =
                                up.socket.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
                            let to = to
                                .into_iter()
                                .find(|a| a.is_ipv4() == local_v4)
                                .ok_or_else(|| {
                                    format!("{target} has no address of this socket's family")
                                })?;
                            up.socket
                                .send_to(&payload, to)
                                .await
                                .map_err(|e| e.to_string())
                        }
                    }
                })?;
                match r {
                    Ok(_) => Ok(MultiValue::from_vec(vec![Value::Integer(n as i64)])),
                    Err(e) => nil_err(lua, &e),
                }
            },
        );
        // a:receivefrom([timeout]) -> data, host, port | nil, err ('timeout', 'closed', ...)
        methods.add_method("receivefrom", |lua, this, timeout: Value| {
            let timeout = match timeout {
                Value::Nil => None,
                v => Some(
                    parse_duration(&v)
                        .map_err(|e| err(format!("udp_association:receivefrom: timeout: {e}")))?,
                ),
            };
            let up = match this.get()? {
                Ok(u) => u,
                Err(e) => return nil_err(lua, e),
            };
            let r = block(lua, async move { receive(&up, timeout).await })?;
            match r {
                Ok((data, from)) => Ok(MultiValue::from_vec(vec![
                    Value::String(lua.create_string(&data)?),
                    Value::String(lua.create_string(from.host())?),
                    Value::Integer(from.port().into()),
                ])),
                Err(e) => nil_err(lua, &e),
            }
        });
        // a:getsockname() -> ip, port, family (our UDP socket)
        methods.add_method("getsockname", |lua, this, ()| {
            let up = match this.get()? {
                Ok(u) => u,
                Err(e) => return nil_err(lua, e),
            };
            let a = up.socket.local_addr().map_err(|e| err(e.to_string()))?;
            Ok(MultiValue::from_vec(vec![
                Value::String(lua.create_string(a.ip().to_string())?),
                Value::Integer(a.port().into()),
                Value::String(lua.create_string(if a.is_ipv4() { "inet" } else { "inet6" })?),
            ]))
        });
        // a:relay_address() -> 'ip:port' of the proxy's relay, or nil when direct
        methods.add_method("relay_address", |_, this, ()| {
            Ok(this
                .inner
                .as_ref()
                .and_then(|u| u.relay)
                .map(|a| a.to_string()))
        });
        // a:close() -> 1: ends the association (closes the control connection).
        methods.add_method_mut("close", |_, this, ()| {
            this.inner = None;
            Ok(1)
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!(
                "kumoproxy.udp_association({}{})",
                this.source,
                if this.inner.is_none() { ", closed" } else { "" }
            ))
        });
    }
}

/// One datagram: through a proxy, only from its relay and with a valid header
/// (others are skipped); the control connection closing ends the association.
async fn receive(
    up: &UdpUpstream,
    timeout: Option<Duration>,
) -> Result<(Vec<u8>, crate::proto::socks5::TargetAddr), String> {
    let fut = async {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let (n, from) = up
                .socket
                .recv_from(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            let Some(relay) = up.relay else {
                return Ok((
                    buf[..n].to_vec(),
                    crate::proto::socks5::TargetAddr::Ip(from),
                ));
            };
            if !same(from, relay) {
                tracing::debug!(
                    "udp association: datagram from {from}, not the relay {relay}: dropped"
                );
                continue;
            }
            match socks5_udp::parse(&buf[..n]) {
                Ok((sender, off)) => return Ok((buf[off..n].to_vec(), sender)),
                Err(e) => tracing::debug!("udp association: from the relay: {e}: dropped"),
            }
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .unwrap_or_else(|_| Err("timeout".into())),
        None => fut.await,
    }
}

fn same(a: SocketAddr, b: SocketAddr) -> bool {
    crate::policy::permissions::canonical(a.ip()) == crate::policy::permissions::canonical(b.ip())
        && a.port() == b.port()
}

/// `src:udp_associate([{ timeout = d, family = 'inet'|'inet6' }])`.
pub fn udp_associate(
    lua: &Lua,
    source: &Arc<EgressSource>,
    opts: Value,
) -> mlua::Result<MultiValue> {
    let what = "egress_source:udp_associate";
    let mut timeout = source.connect_timeout;
    let mut v4 = true;
    if !opts.is_nil() {
        let mut p = Params::new(what, opts)?;
        timeout = p.duration("connect_timeout", timeout)?;
        v4 = match p.string("family")?.as_deref() {
            None | Some("inet") => true,
            Some("inet6") => false,
            Some(other) => {
                return Err(p.key_err(
                    "family",
                    format!(
                        "expected 'inet' or 'inet6', got {:?}",
                        crate::proto::text::client(other)
                    ),
                ))
            }
        };
        p.finish()?;
    }
    let src = source.clone();
    let r = block(lua, async move { src.udp_associate(timeout, v4).await })?;
    match r {
        Ok(up) => Ok(MultiValue::from_vec(vec![Value::UserData(
            lua.create_userdata(LuaUdpAssociation::new(up, &source.name))?,
        )])),
        Err(e) => nil_err(lua, &e.msg),
    }
}
