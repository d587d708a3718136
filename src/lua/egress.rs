//! Egress sources for Lua: `kumoproxy.make_egress_source{}`, the source object
//! (`connect`, `forward`) and the connection object with its LuaSocket-like
//! surface. Blocking calls run on the runtime through `block_pumping`, so events
//! keep dispatching while a script waits (it may be connecting through its own
//! proxy, whose auth handler is Lua on this very thread).

use crate::egress::{self, Connected, EgressSource, EgressStream, Settings};
use crate::host::net::within;
use crate::host::runtime;
use crate::lua::egress_source::{by_name, LuaEgressSource};
use crate::lua::listener::LuaListener;
use crate::lua::params::{err, parse_duration, port_arg, Params};
use crate::lua::pumping::block_pumping;
use crate::proto::socks5::TargetAddr;
use mlua::{Lua, MultiValue, Table, UserData, UserDataMethods, Value};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn register(lua: &Lua, m: &Table) -> mlua::Result<()> {
    m.set(
        "make_egress_source",
        lua.create_function(|lua, v: Value| {
            let src = make_egress_source(v)?;
            let name = src.source.name.clone();
            let ud = lua.create_userdata(src)?;
            by_name(lua)?.raw_set(name, &ud)?;
            Ok(ud)
        })?,
    )
}

const CTX: &str = "make_egress_source";

fn make_egress_source(v: Value) -> mlua::Result<LuaEgressSource> {
    let mut p = Params::new(CTX, v)?;
    let s = Settings {
        name: p.required_string("name")?,
        source_address: p.ip("source_address")?,
        proxy_server: p.string("socks5_proxy_server")?,
        proxy_source_address: p.ip("socks5_proxy_source_address")?,
        username: bytes(&mut p, "socks5_proxy_username")?,
        password: secret(&mut p, "socks5_proxy_password")?,
        tls: opt_bool(&mut p, "socks5_proxy_tls")?,
        tls_ca: p.string("socks5_proxy_tls_ca")?,
        tls_insecure: opt_bool(&mut p, "socks5_proxy_tls_insecure")?,
        tls_server_name: p.string("socks5_proxy_tls_server_name")?,
        connect_timeout: match p.raw("connect_timeout")? {
            Value::Nil => None,
            v => Some(parse_duration(&v).map_err(|e| p.key_err("connect_timeout", e))?),
        },
        ha_proxy_server: p.string("ha_proxy_server")?,
        ha_proxy_source_address: p.ip("ha_proxy_source_address")?,
        remote_dns: opt_bool(&mut p, "socks5_proxy_remote_dns")?,
    };
    p.finish()?;
    let source = EgressSource::new(s).map_err(|e| err(format!("{CTX}: {}: {}", e.key, e.msg)))?;
    Ok(LuaEgressSource {
        source: Arc::new(source),
    })
}

fn opt_bool(p: &mut Params, key: &str) -> mlua::Result<Option<bool>> {
    match p.raw(key)? {
        Value::Nil => Ok(None),
        Value::Boolean(b) => Ok(Some(b)),
        other => Err(p.key_err(
            key,
            format!("expected a boolean, got {}", other.type_name()),
        )),
    }
}

/// A string taken as raw bytes: RFC 1929 does not restrict the charset.
fn bytes(p: &mut Params, key: &str) -> mlua::Result<Option<Vec<u8>>> {
    match p.raw(key)? {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        other => Err(p.key_err(key, format!("expected a string, got {}", other.type_name()))),
    }
}

/// A secret: a string, `{ key_data = '...' }` or `{ key_file = '/path' }` (KumoMTA's
/// KeySource forms). A file's one trailing newline is dropped: editors add it,
/// and a password never ends in one on purpose.
fn secret(p: &mut Params, key: &str) -> mlua::Result<Option<Vec<u8>>> {
    let v = p.raw(key)?;
    let t = match v {
        Value::Nil => return Ok(None),
        Value::String(s) => return Ok(Some(s.as_bytes().to_vec())),
        t @ Value::Table(_) => t,
        other => {
            return Err(p.key_err(
                key,
                format!(
                    "expected a string, {{ key_data = '...' }} or {{ key_file = '/path' }}, got {}",
                    other.type_name()
                ),
            ))
        }
    };
    let mut ks = Params::new(&format!("{CTX}: {key}"), t)?;
    let data = bytes(&mut ks, "key_data")?;
    let file = ks.string("key_file")?;
    let out = match (data, file) {
        (Some(d), None) => d,
        (None, Some(path)) => {
            let mut d = std::fs::read(&path)
                .map_err(|e| ks.key_err("key_file", format!("cannot read {path}: {e}")))?;
            if d.ends_with(b"\n") {
                d.pop();
                if d.ends_with(b"\r") {
                    d.pop();
                }
            }
            d
        }
        _ => return Err(ks.key_err("key_data", "give exactly one of key_data or key_file")),
    };
    ks.finish()?;
    Ok(Some(out))
}

fn nil_err(lua: &Lua, msg: &str) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![
        Value::Nil,
        Value::String(lua.create_string(msg)?),
    ]))
}

impl UserData for LuaEgressSource {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("name", |_, this, ()| Ok(this.source.name.clone()));
        // src:connect(host, port [, { connect_timeout = ... }]) -> conn | nil, err
        methods.add_method(
            "connect",
            |lua, this, (host, port, opts): (String, Value, Value)| {
                let what = "egress_source:connect";
                let port = port_arg(&port, what)?;
                let target =
                    egress::target(&host, port).map_err(|e| err(format!("{what}: {e}")))?;
                let mut timeout = this.source.connect_timeout;
                if !opts.is_nil() {
                    let mut p = Params::new(what, opts)?;
                    timeout = p.duration("connect_timeout", timeout)?;
                    p.finish()?;
                }
                let source = this.source.clone();
                let r = block_pumping(lua, async move { source.connect(&target, timeout).await })?;
                match r {
                    Ok(c) => {
                        let conn = LuaConnection::new(c, &this.source.name);
                        Ok(MultiValue::from_vec(vec![Value::UserData(
                            lua.create_userdata(conn)?,
                        )]))
                    }
                    Err(e) => nil_err(lua, &e.msg),
                }
            },
        );
        // src:udp_associate([{ connect_timeout, family }]) -> association | nil, err
        methods.add_method("udp_associate", |lua, this, opts: Value| {
            crate::lua::udp::udp_associate(lua, &this.source, opts)
        });
        // src:forward{ listen = '127.0.0.1:0', to = 'host:port', timeout = idle }
        methods.add_method("forward", |_, this, v: Value| {
            let mut p = Params::new("egress_source:forward", v)?;
            let listen = p
                .socket_addr("listen")?
                .ok_or_else(|| p.key_err("listen", "is required, e.g. '127.0.0.1:0'"))?;
            let to = p.required_string("to")?;
            let (host, port) = egress::split_host_port(&to).map_err(|e| p.key_err("to", e))?;
            let to = egress::target(&host, port).map_err(|e| p.key_err("to", e))?;
            let idle = p.duration("timeout", Duration::from_secs(60))?;
            if idle.is_zero() {
                return Err(p.key_err("timeout", "must be greater than zero"));
            }
            p.finish()?;
            let shared = crate::server::listener::start_forward(
                runtime::current(),
                this.source.clone(),
                listen,
                to,
                idle,
            )
            .map_err(|e| {
                err(format!(
                    "egress_source:forward: listen: cannot listen on {listen}: {e}"
                ))
            })?;
            Ok(LuaListener::new(shared))
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!("kumoproxy.egress_source({})", this.source.name))
        });
    }
}

/// The stream and what was read ahead of the caller's pattern.
struct ConnIo {
    stream: EgressStream,
    rbuf: Vec<u8>,
    eof: bool,
}

/// A connection made by `src:connect`, with a LuaSocket-like surface.
pub struct LuaConnection {
    /// None once closed (or if a call was cut short by a Lua error while pumping).
    io: Option<ConnIo>,
    timeout: Option<Duration>,
    local: SocketAddr,
    peer: SocketAddr,
    proxy_bound: Option<TargetAddr>,
    label: String,
    pid: u32,
}

#[derive(Clone, Copy)]
enum Pattern {
    Line,
    All,
    Bytes(usize),
}

enum RecvError {
    Timeout,
    Closed,
    Io(io::Error),
}

impl RecvError {
    fn text(&self) -> String {
        match self {
            RecvError::Timeout => "timeout".into(),
            RecvError::Closed => "closed".into(),
            RecvError::Io(e) => io_text(e),
        }
    }
}

/// LuaSocket's words where it has them, so callers can test `err == 'closed'`.
fn io_text(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected | UnexpectedEof => {
            "closed".into()
        }
        TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}

impl ConnIo {
    /// What the buffer already holds for `pat`, without I/O.
    fn ready(&mut self, pat: Pattern) -> Option<Vec<u8>> {
        match pat {
            Pattern::Line => {
                let nl = self.rbuf.iter().position(|&b| b == b'\n')?;
                let mut line: Vec<u8> = self.rbuf.drain(..=nl).collect();
                line.pop();
                // LuaSocket's *l ignores every CR, not only the one before LF.
                line.retain(|&b| b != b'\r');
                Some(line)
            }
            Pattern::Bytes(n) if self.rbuf.len() >= n => Some(self.rbuf.drain(..n).collect()),
            Pattern::All if self.eof => Some(std::mem::take(&mut self.rbuf)),
            _ => None,
        }
    }

    async fn receive(&mut self, pat: Pattern) -> Result<Vec<u8>, RecvError> {
        loop {
            if let Some(v) = self.ready(pat) {
                return Ok(v);
            }
            if self.eof {
                return Err(RecvError::Closed);
            }
            self.rbuf.reserve(16 * 1024);
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }
}

async fn bounded<T>(
    t: Option<Duration>,
    fut: impl std::future::Future<Output = Result<T, RecvError>>,
) -> Result<T, RecvError> {
    match t {
        Some(t) => within(t, RecvError::Timeout, fut).await,
        None => fut.await,
    }
}

fn parse_pattern(v: &Value) -> mlua::Result<Pattern> {
    let bad = || err("conn:receive: pattern must be '*l', '*a' or a byte count");
    match v {
        Value::Nil => Ok(Pattern::Line),
        Value::String(s) => match s.to_str()?.as_ref() {
            "*l" | "l" => Ok(Pattern::Line),
            "*a" | "a" => Ok(Pattern::All),
            _ => Err(bad()),
        },
        Value::Integer(n) if *n >= 0 => Ok(Pattern::Bytes(*n as usize)),
        Value::Number(n) if *n >= 0.0 && n.fract() == 0.0 => Ok(Pattern::Bytes(*n as usize)),
        _ => Err(bad()),
    }
}

impl LuaConnection {
    fn new(c: Connected, source: &str) -> Self {
        LuaConnection {
            io: Some(ConnIo {
                stream: c.stream,
                rbuf: Vec::new(),
                eof: false,
            }),
            timeout: None,
            local: c.local,
            peer: c.peer,
            proxy_bound: c.proxy_bound,
            label: source.to_string(),
            pid: std::process::id(),
        }
    }

    /// The stream, or the LuaSocket-style error text when there is none.
    fn take_io(&mut self) -> mlua::Result<Result<ConnIo, &'static str>> {
        if self.pid != std::process::id() {
            return Err(err(format!(
                "this connection was opened in process {} before a fork; connect again in this process",
                self.pid
            )));
        }
        Ok(self.io.take().ok_or("closed"))
    }
}

fn addr_values(lua: &Lua, a: SocketAddr) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![
        Value::String(lua.create_string(a.ip().to_string())?),
        Value::Integer(a.port().into()),
        Value::String(lua.create_string(if a.is_ipv4() { "inet" } else { "inet6" })?),
    ]))
}

impl UserData for LuaConnection {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // conn:send(data [, i [, j]]) -> last index sent | nil, err, last index sent
        methods.add_method_mut(
            "send",
            |lua, this, (data, i, j): (mlua::LuaString, Option<i64>, Option<i64>)| {
                let bytes = data.as_bytes();
                let len = bytes.len() as i64;
                // LuaSocket's string.sub-style indices, negatives from the end.
                let norm = |x: i64| if x < 0 { (len + x + 1).max(0) } else { x };
                let start = norm(i.unwrap_or(1)).max(1);
                let end = norm(j.unwrap_or(-1)).min(len);
                let chunk: Vec<u8> = if start > end {
                    Vec::new()
                } else {
                    bytes[(start - 1) as usize..end as usize].to_vec()
                };
                let mut io = match this.take_io()? {
                    Ok(io) => io,
                    Err(e) => {
                        let mut v = nil_err(lua, e)?;
                        v.push_back(Value::Integer(start - 1));
                        return Ok(v);
                    }
                };
                let t = this.timeout;
                let (io, sent, r) = block_pumping(lua, async move {
                    let mut sent = 0usize;
                    let r = bounded(t, async {
                        while sent < chunk.len() {
                            match io.stream.write(&chunk[sent..]).await {
                                Ok(0) => return Err(RecvError::Closed),
                                Ok(n) => sent += n,
                                Err(e) => return Err(RecvError::Io(e)),
                            }
                        }
                        io.stream.flush().await.map_err(RecvError::Io)
                    })
                    .await;
                    (io, sent, r)
                })?;
                this.io = Some(io);
                let last = start - 1 + sent as i64;
                match r {
                    Ok(()) => Ok(MultiValue::from_vec(vec![Value::Integer(last)])),
                    Err(e) => {
                        let mut v = nil_err(lua, &e.text())?;
                        v.push_back(Value::Integer(last));
                        Ok(v)
                    }
                }
            },
        );
        // conn:receive([pattern [, prefix]]) -> data | nil, err, partial
        methods.add_method_mut(
            "receive",
            |lua, this, (pattern, prefix): (Value, Option<mlua::LuaString>)| {
                let pat = parse_pattern(&pattern)?;
                let prefix = prefix.map(|p| p.as_bytes().to_vec()).unwrap_or_default();
                let with_prefix = |data: &[u8]| -> mlua::Result<Value> {
                    let mut out = prefix.clone();
                    out.extend_from_slice(data);
                    Ok(Value::String(lua.create_string(&out)?))
                };
                let mut io = match this.take_io()? {
                    Ok(io) => io,
                    Err(e) => {
                        let mut v = nil_err(lua, e)?;
                        v.push_back(with_prefix(b"")?);
                        return Ok(v);
                    }
                };
                // Served from what was read ahead: no task, no wait.
                let (io, r) = match io.ready(pat) {
                    Some(v) => (io, Ok(v)),
                    None => {
                        let t = this.timeout;
                        block_pumping(lua, async move {
                            let r = bounded(t, io.receive(pat)).await;
                            (io, r)
                        })?
                    }
                };
                let mut io = io;
                let out = match r {
                    Ok(data) => MultiValue::from_vec(vec![with_prefix(&data)?]),
                    Err(e) => {
                        let partial = std::mem::take(&mut io.rbuf);
                        let mut v = nil_err(lua, &e.text())?;
                        v.push_back(with_prefix(&partial)?);
                        v
                    }
                };
                this.io = Some(io);
                Ok(out)
            },
        );
        // conn:settimeout(seconds): nil or negative = block (pumping) until done.
        methods.add_method_mut("settimeout", |_, this, (v, _mode): (Value, Value)| {
            this.timeout = match v {
                Value::Nil => None,
                Value::Integer(n) if n < 0 => None,
                Value::Number(n) if n < 0.0 => None,
                v => Some(parse_duration(&v).map_err(|e| err(format!("conn:settimeout: {e}")))?),
            };
            Ok(1)
        });
        // conn:shutdown([mode]): 'send' or 'both' half-closes our side (TLS:
        // close_notify); 'receive' has nothing to do.
        methods.add_method_mut("shutdown", |lua, this, mode: Option<String>| {
            let mode = mode.unwrap_or_else(|| "both".into());
            if !matches!(mode.as_str(), "both" | "send" | "receive") {
                return Err(err(
                    "conn:shutdown: mode must be 'both', 'send' or 'receive'",
                ));
            }
            if mode == "receive" {
                return Ok(MultiValue::from_vec(vec![Value::Integer(1)]));
            }
            let mut io = match this.take_io()? {
                Ok(io) => io,
                Err(e) => return nil_err(lua, e),
            };
            let t = this.timeout;
            let (io, r) = block_pumping(lua, async move {
                let r = bounded(t, async {
                    io.stream.shutdown().await.map_err(RecvError::Io)
                })
                .await;
                (io, r)
            })?;
            this.io = Some(io);
            match r {
                Ok(()) => Ok(MultiValue::from_vec(vec![Value::Integer(1)])),
                Err(e) => nil_err(lua, &e.text()),
            }
        });
        methods.add_method_mut("close", |_, this, ()| {
            if let Some(io) = this.io.take() {
                if let EgressStream::Tls(mut s) = io.stream {
                    // Say close_notify without making the caller wait for it.
                    if this.pid == std::process::id() {
                        runtime::current().runtime().spawn(async move {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
                        });
                    }
                }
            }
            Ok(1)
        });
        methods.add_method("getpeername", |lua, this, ()| addr_values(lua, this.peer));
        methods.add_method("getsockname", |lua, this, ()| addr_values(lua, this.local));
        // What the proxy's CONNECT reply reported: the outbound source address.
        methods.add_method("proxy_bound_address", |_, this, ()| {
            Ok(this.proxy_bound.as_ref().map(|a| a.to_string()))
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!(
                "kumoproxy.egress_connection({}: {} -> {}{})",
                this.label,
                this.local,
                this.peer,
                if this.io.is_none() { ", closed" } else { "" }
            ))
        });
    }
}
