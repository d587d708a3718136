//! Embedding in hosts with their own scheduler (OpenResty, luv, cqueues).
//!
//! `poll`/`run` call handlers directly, so a handler there must not yield. A host
//! whose handlers yield (cosockets, coroutines) instead takes the events as
//! objects and answers each when its handler finishes, in any order:
//!
//! ```lua
//! for _, ev in ipairs(kumoproxy.take_events()) do
//!   spawn(function()  -- the host's light thread / coroutine
//!     local ok, res = pcall(kumoproxy.handler(ev:name()), ev:args())
//!     if ok then ev:reply(res) else ev:fail(res) end
//!   end)
//! end
//! ```
//!
//! An event object dropped unanswered (garbage-collected) fails closed, as does one
//! that outlives the session's `timeout`.
//!
//! Wakeups: `event_fd()` for select/poll loops, or `event_socket()` for hosts that
//! can only wait on sockets (nginx cosockets): a unix socket that receives a byte
//! whenever events are queued.

use crate::host::runtime;
use crate::lua::dispatch::{answer, event_args, handler};
use crate::lua::params::err;
use crate::policy::events::Event;
use mlua::{Lua, UserData, UserDataMethods, Value};
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::io::AsyncWriteExt;

/// One pending decision, owned by the host until it answers.
pub struct LuaEvent {
    name: &'static str,
    event: Option<Event>,
}

impl LuaEvent {
    fn take(&mut self) -> mlua::Result<Event> {
        self.event
            .take()
            .ok_or_else(|| err(format!("{} event was already answered", self.name)))
    }
}

impl UserData for LuaEvent {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("name", |_, this, ()| Ok(this.name));
        methods.add_method("args", |lua, this, ()| match &this.event {
            Some(ev) => event_args(lua, ev),
            None => Err(err(format!("{} event was already answered", this.name))),
        });
        // True while the session still waits (not timed out, client not gone).
        methods.add_method("pending", |_, this, ()| {
            Ok(this.event.as_ref().is_some_and(|e| !e.is_abandoned()))
        });
        methods.add_method_mut("reply", |lua, this, v: Value| {
            answer(lua, this.take()?, Ok(v));
            Ok(true)
        });
        methods.add_method_mut("fail", |lua, this, msg: Value| {
            let msg = match msg {
                Value::String(s) => s.to_string_lossy(),
                Value::Nil => "failed by the host".to_string(),
                other => format!("{other:?}"),
            };
            answer(lua, this.take()?, Err(mlua::Error::RuntimeError(msg)));
            Ok(true)
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!("kumoproxy.event({})", this.name))
        });
    }
}

/// `kumoproxy.take_events([max])` -> list of event objects (possibly empty).
pub fn take_events(lua: &Lua, max: Option<usize>) -> mlua::Result<mlua::Table> {
    let pump = crate::policy::events::pump();
    let out = lua.create_table()?;
    let mut events = pump.drain();
    if let Some(max) = max {
        if events.len() > max {
            // Put the rest back; the eventfd stays readable for them.
            pump.requeue(events.split_off(max));
        }
    }
    for ev in events {
        if ev.is_abandoned() {
            continue;
        }
        out.raw_push(LuaEvent {
            name: ev.name(),
            event: Some(ev),
        })?;
    }
    Ok(out)
}

/// `kumoproxy.wait_events([timeout [, min]])` -> number of events pending (fewer
/// than `min`, default 1, on timeout). Blocks until events are queued, without
/// dispatching them: for hosts that take and run them in their own coroutines.
pub fn wait_events(lua: &Lua, (timeout, min): (Value, Option<usize>)) -> mlua::Result<usize> {
    let min = min.unwrap_or(1).max(1);
    let t = crate::lua::params::optional_duration(lua, &timeout, "kumoproxy.wait_events")?;
    let deadline = t.map(|t| std::time::Instant::now() + t);
    let pump = crate::policy::events::pump();
    loop {
        let n = pump.pending();
        if n >= min {
            return Ok(n);
        }
        let wait = match deadline {
            None => None,
            Some(d) => {
                let now = std::time::Instant::now();
                if now >= d {
                    return Ok(n);
                }
                Some(d - now)
            }
        };
        pump.wait(wait);
        // The eventfd stays readable until drained, so sleep at most once per
        // wakeup: consume it here; take_events drains the queue itself.
        pump.reset_wake();
    }
}

/// `kumoproxy.handler(name)` -> the registered function, or nil.
pub fn lua_handler(lua: &Lua, name: String) -> mlua::Result<Value> {
    Ok(handler(lua, &name)
        .map(Value::Function)
        .unwrap_or(Value::Nil))
}

static SOCKET_PATH: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

/// `kumoproxy.event_socket([dir])` -> path of this process's wake socket.
///
/// A unix stream socket, one per process (so per nginx worker), named
/// `kumoproxy-<pid>.sock` in `dir` (default `$TMPDIR` or `/tmp`). Sockets left by
/// dead processes in that directory are removed first. Each connected client gets
/// one byte whenever events are queued (wakeups coalesce).
pub fn event_socket(_: &Lua, dir: Option<String>) -> mlua::Result<String> {
    let pid = std::process::id();
    let mut slot = SOCKET_PATH.lock().unwrap();
    if let Some((p, path)) = &*slot {
        if *p == pid {
            return Ok(path.display().to_string());
        }
    }
    let dir = PathBuf::from(
        dir.or_else(|| std::env::var("TMPDIR").ok())
            .unwrap_or_else(|| "/tmp".into()),
    );
    remove_stale_sockets(&dir);
    let path = dir.join(format!("kumoproxy-{pid}.sock"));
    let _ = std::fs::remove_file(&path);
    let process = runtime::current();
    let rt = process.runtime();
    let _enter = rt.enter();
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| {
        err(format!(
            "kumoproxy.event_socket: cannot bind {}: {e}",
            path.display()
        ))
    })?;
    let pump = crate::policy::events::pump().clone();
    rt.spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            // One reader at a time; a reader that reconnects (its light thread
            // restarted) is served once the old connection is gone.
            loop {
                pump.notified().await;
                if conn.write_all(b"!").await.is_err() {
                    break;
                }
            }
        }
    });
    *slot = Some((pid, path.clone()));
    Ok(path.display().to_string())
}

fn remove_stale_sockets(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("kumoproxy-"))
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // kill(pid, 0): ESRCH means no such process; EPERM means alive (other user).
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
