//! The host thread's side of the event pump: `run`, `poll`, `run_until`,
//! `run_command`, and `block_pumping` for every blocking call the module offers
//! (they keep dispatching events while they wait).

use crate::host::runtime::{self, Process};
use crate::lua::dispatch::dispatch_pending;
use crate::lua::params::{err, optional_duration, Params};
use crate::policy::events::EventPump as Pump;
use mlua::{Lua, MultiValue, Value};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Dispatch until `deadline`, or until something is dispatched when `until_one`.
fn pump_until(
    lua: &Lua,
    pump: &Pump,
    deadline: Option<Instant>,
    until_one: bool,
) -> mlua::Result<usize> {
    let mut total = 0;
    loop {
        total += dispatch_pending(lua, pump)?;
        if until_one && total > 0 {
            return Ok(total);
        }
        let wait = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(total);
                }
                Some(d - now)
            }
        };
        pump.wait(wait);
    }
}

/// `kumoproxy.poll([timeout])` -> number of events dispatched.
pub(crate) fn poll(lua: &Lua, timeout: Value) -> mlua::Result<usize> {
    let t = optional_duration(lua, &timeout, "kumoproxy.poll")?.unwrap_or(Duration::ZERO);
    let pump = crate::policy::events::pump();
    pump_until(lua, pump, Some(Instant::now() + t), true)
}

/// `kumoproxy.run{ grace = '5 seconds' }`: serve until stop() or SIGINT/SIGTERM;
/// SIGHUP calls the `reload` handler, SIGUSR1 reopens the access logs.
pub(crate) fn run(lua: &Lua, opts: Value) -> mlua::Result<()> {
    // Inside a handler, run() would serve until a signal while the session that
    // asked waits for an answer: refuse, and say what to use instead.
    if crate::lua::dispatch::in_handler() {
        return Err(err(
            "kumoproxy.run: called from inside an event handler; run() is the host's main loop. Use kumoproxy.run_until, poll or run_command to wait inside a handler",
        ));
    }
    let grace = if opts.is_nil() {
        DEFAULT_GRACE
    } else {
        let mut p = Params::new("kumoproxy.run", opts)?;
        let g = p.duration("grace", DEFAULT_GRACE)?;
        p.finish()?;
        g
    };
    let process = runtime::current();
    let pump = crate::policy::events::pump();
    // A stop() from before this run() (e.g. in a handler run by poll) is stale.
    pump.clear_stop();
    let why = {
        let _signals = crate::host::signals::install(pump.fd());
        // Logged once the handlers are in place: from here SIGTERM stops cleanly.
        tracing::info!(
            "kumoproxy.run: serving {} listener(s) until kumoproxy.stop() or SIGINT/SIGTERM",
            crate::server::listener::live().len()
        );
        loop {
            dispatch_pending(lua, pump)?;
            if crate::host::signals::take_usr1() {
                let n = crate::host::access_log::sinks().reopen_all();
                tracing::info!("SIGUSR1: reopening {n} access log(s)");
            }
            if crate::host::signals::take_hup() {
                crate::lua::ops::reload(lua);
            }
            if let Some(sig) = crate::host::signals::received() {
                break crate::host::signals::name(sig).to_string();
            }
            if pump.stop_requested() {
                break "kumoproxy.stop()".to_string();
            }
            pump.wait(None);
        }
    };
    pump.clear_stop();
    shutdown(lua, process, grace, &why)
}

const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Close every listener, let sessions finish within `grace`, then cut the rest.
fn shutdown(lua: &Lua, _process: &Process, grace: Duration, why: &str) -> mlua::Result<()> {
    let listeners = crate::server::listener::live();
    tracing::info!(
        "stopping ({why}): closing {} listener(s), grace period {grace:?}",
        listeners.len()
    );
    for l in &listeners {
        l.close();
    }
    for l in crate::server::status::live() {
        l.close();
    }
    let pump = crate::policy::events::pump();
    let deadline = Instant::now() + grace;
    let active = || -> u64 {
        listeners
            .iter()
            .map(|l| l.stats.active.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    // Sessions still mid-handshake may need Lua decisions: keep dispatching.
    while active() > 0 && Instant::now() < deadline {
        dispatch_pending(lua, pump)?;
        let left = deadline.saturating_duration_since(Instant::now());
        pump.wait(Some(left.min(Duration::from_millis(20))));
    }
    let cut = active();
    if cut > 0 {
        tracing::warn!("grace period over: cutting {cut} session(s)");
    }
    for l in &listeners {
        l.abort.cancel();
    }
    // Cut sessions log their line and count themselves as failed on the
    // runtime threads: wait for that (they only have to notice the
    // cancellation), so stats() right after run() is final and no line is lost
    // if the process exits next. Bounded: a task stuck elsewhere cannot hang run().
    let settle = Instant::now() + Duration::from_secs(2);
    while active() > 0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Every session writes its access log line as it ends, cut ones too: when
    // there is an access log, let them end (briefly) and the writers catch up,
    // so that the log is complete once run() returns and the host exits.
    let logs = crate::host::access_log::sinks().live();
    if !logs.is_empty() {
        let until = Instant::now() + Duration::from_secs(1);
        while active() > 0 && Instant::now() < until {
            pump.wait(Some(Duration::from_millis(5)));
        }
        for s in &logs {
            if !s.sync(Duration::from_secs(2)) {
                tracing::warn!(
                    "access log {}: not all lines written at exit",
                    s.destination
                );
            }
        }
    }
    Ok(())
}

/// `kumoproxy.run_until(seconds)` or `run_until(predicate [, timeout])`.
/// Dispatches events meanwhile. With a predicate: returns its first truthy value,
/// or `nil, "timeout"`.
pub(crate) fn run_until(lua: &Lua, (what, timeout): (Value, Value)) -> mlua::Result<MultiValue> {
    let pump = crate::policy::events::pump();
    match what {
        Value::Function(pred) => {
            let t = optional_duration(lua, &timeout, "kumoproxy.run_until")?;
            let deadline = t.map(|t| Instant::now() + t);
            loop {
                dispatch_pending(lua, pump)?;
                let v: Value = pred.call(())?;
                if !matches!(v, Value::Nil | Value::Boolean(false)) {
                    return Ok(MultiValue::from_vec(vec![v]));
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Ok(MultiValue::from_vec(vec![
                        Value::Nil,
                        Value::String(lua.create_string("timeout")?),
                    ]));
                }
                // State a predicate reads (stats, sockets) changes without events:
                // look again soon, but sleep on the eventfd meanwhile.
                let mut wait = Duration::from_millis(5);
                if let Some(d) = deadline {
                    wait = wait.min(d - now);
                }
                pump.wait(Some(wait));
            }
        }
        v @ (Value::Integer(_) | Value::Number(_) | Value::String(_)) => {
            let t = optional_duration(lua, &v, "kumoproxy.run_until")?.unwrap_or_default();
            pump_until(lua, pump, Some(Instant::now() + t), false)?;
            Ok(MultiValue::from_vec(vec![Value::Boolean(true)]))
        }
        other => Err(err(format!(
            "kumoproxy.run_until: expected a function or a duration, got {}",
            other.type_name()
        ))),
    }
}

/// Runs `fut` on the runtime while dispatching events on this thread.
pub fn block_pumping<T: Send + 'static>(
    lua: &Lua,
    fut: impl Future<Output = T> + Send + 'static,
) -> mlua::Result<T> {
    let process = runtime::current();
    let pump = crate::policy::events::pump().clone();
    let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
    let done = slot.clone();
    let waker = pump.clone();
    process.runtime().spawn(async move {
        let v = fut.await;
        *done.lock().unwrap() = Some(v);
        waker.wake();
    });
    loop {
        // Drain (which resets the eventfd) before looking at the slot, so a
        // completion between the two still wakes the wait below.
        dispatch_pending(lua, &pump)?;
        if let Some(v) = slot.lock().unwrap().take() {
            return Ok(v);
        }
        pump.wait(None);
    }
}

/// `kumoproxy.run_command(cmd [, {stdin=, timeout=}])` -> stdout, exit_code, stderr.
/// `cmd` is a shell string or an argv table. Events are dispatched while it runs,
/// so a spec can drive curl against its own proxy and auth handler.
pub(crate) fn run_command(
    lua: &Lua,
    (cmd, opts): (Value, Value),
) -> mlua::Result<(Value, Value, Value)> {
    let argv: Vec<String> = match cmd {
        Value::String(s) => vec!["/bin/sh".into(), "-c".into(), s.to_str()?.to_string()],
        Value::Table(t) => t.sequence_values::<String>().collect::<mlua::Result<_>>()?,
        other => {
            return Err(err(format!(
                "kumoproxy.run_command: expected a command string or argv table, got {}",
                other.type_name()
            )))
        }
    };
    if argv.is_empty() {
        return Err(err("kumoproxy.run_command: empty argv"));
    }
    let (stdin, timeout) = if opts.is_nil() {
        (None, None)
    } else {
        let mut p = Params::new("kumoproxy.run_command", opts)?;
        let stdin = p.raw("stdin")?;
        let stdin = match stdin {
            Value::Nil => None,
            Value::String(s) => Some(s.as_bytes().to_vec()),
            _ => return Err(p.key_err("stdin", "expected a string")),
        };
        let timeout = match p.raw("timeout")? {
            Value::Nil => None,
            v => Some(crate::lua::params::parse_duration(&v).map_err(|e| p.key_err("timeout", e))?),
        };
        p.finish()?;
        (stdin, timeout)
    };
    let out = block_pumping(lua, async move {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::process::Command::new(&argv[0]);
        c.args(&argv[1..])
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // Runtime threads block every signal and children inherit the mask:
        // give the command a clean one, or it could never be stopped by SIGTERM.
        unsafe {
            c.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut child = c.spawn()?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            tokio::spawn(async move {
                let _ = pipe.write_all(&data).await;
            });
        }
        let wait = child.wait_with_output();
        match timeout {
            None => wait.await,
            Some(t) => tokio::time::timeout(t, wait).await.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("command timed out after {t:?}"),
                ))
            }),
        }
    })?;
    match out {
        Ok(o) => {
            use std::os::unix::process::ExitStatusExt;
            let code = o
                .status
                .code()
                .map(i64::from)
                .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0) as i64);
            Ok((
                Value::String(lua.create_string(&o.stdout)?),
                Value::Integer(code),
                Value::String(lua.create_string(&o.stderr)?),
            ))
        }
        // luv's convention: a runtime failure is `nil, message`.
        Err(e) => Ok((
            Value::Nil,
            Value::String(lua.create_string(format!("kumoproxy.run_command: {e}"))?),
            Value::Nil,
        )),
    }
}
