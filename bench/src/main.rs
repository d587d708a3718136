//! socksbench: the loopback load client behind `bench/run.sh`.
//!
//! Subcommands (each measurement prints one `RESULT {json}` line on stdout):
//!
//!   sink    --listen ADDR [--no-zerocopy]       upload/download end for `bulk`
//!   echo    --listen ADDR                       echo end for `cycles` and `idle`
//!   bulk    --target ADDR [--proxy ADDR] --streams N --dir up|down
//!   cycles  --target ADDR [--proxy ADDR] --concurrency N [--close-by client|server]
//!           [--redis-port P]  (also counts the Redis commands of the window, from
//!           `redis-cli INFO commandstats`, and reports them per cycle)
//!   idle    --target ADDR  --proxy ADDR  --count N
//!   udp-echo --listen ADDR                      UDP echo end for `udp` and `udp-idle`
//!   udp     --target ADDR [--proxy ADDR] --size N --associations N [--window W]
//!   udp-idle --target ADDR --proxy ADDR --count N   (see src/udp.rs)
//!   floor   --listen ADDR                       a minimal one-thread epoll SOCKS5 proxy:
//!           the lower bound for CPU per connection (src/floor.rs)
//!   free-port                                   prints a free loopback TCP port
//!
//! Common options: --user U --pass P (RFC 1929), --tls-ca FILE [--tls-name NAME]
//! [--tls-no-resume] (TLS to the proxy), --proxy-v2 (a PROXY v2 header naming
//! 127.0.0.2 first, as a load balancer would), --proxy-pid PID (its process tree is
//! measured from /proc), --aux-pids PID,PID (harness processes such as the sink,
//! counted as harness CPU), --duration S, --warmup S, --quiet-wait S, --label TEXT.
//!
//! The ends are cheap on purpose, so the proxy is what is measured: the sink
//! splices into /dev/null and sends with sendfile(2) from a memfd (`--no-zerocopy`:
//! plain read/write), and the client does the same on its side of a bulk stream.

mod args;
mod floor;
mod measure;
mod socks;
mod udp;
mod zc;

use args::Args;
use measure::Window;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// First byte a client sends to the sink or echo server after CONNECT.
pub const MODE_UPLOAD: u8 = b'u';
pub const MODE_DOWNLOAD: u8 = b'd';
/// Echo this byte, then close (the server closes first).
pub const MODE_ECHO_CLOSE: u8 = b'c';

fn main() {
    let args = Args::parse(std::env::args().skip(1));
    raise_nofile();
    if args.command == "floor" {
        // Synchronous on purpose: no runtime threads beside it.
        if let Err(e) = floor::run(&args) {
            eprintln!("socksbench floor: {e}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.usize("threads", 2))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(async {
        match args.command.as_str() {
            "sink" => sink(&args).await,
            "echo" => echo(&args).await,
            "bulk" => bulk(&args).await,
            "cycles" => cycles(&args).await,
            "idle" => idle(&args).await,
            "udp-echo" => udp::echo(&args),
            "udp" => udp::load(&args).await,
            "udp-idle" => udp::idle(&args).await,
            "free-port" => {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                println!("{}", l.local_addr()?.port());
                Ok(())
            }
            other => Err(format!(
                "unknown subcommand '{other}' (see the top of bench/src/main.rs)"
            )
            .into()),
        }
    });
    if let Err(e) = r {
        eprintln!("socksbench {}: {e}", args.command);
        std::process::exit(1);
    }
}

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The idle run needs ~10k sockets in one process: raise the soft fd limit to the hard one.
fn raise_nofile() {
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

async fn listen(args: &Args) -> Res<TcpListener> {
    let addr: SocketAddr = args.req("listen")?.parse()?;
    let l = TcpListener::bind(addr).await?;
    println!("READY {}", l.local_addr()?);
    Ok(l)
}

// ---------------------------------------------------------------- servers

async fn sink(args: &Args) -> Res<()> {
    let l = listen(args).await?;
    let zerocopy = !args.flag("no-zerocopy");
    let source = Arc::new(zc::Source::new()?);
    loop {
        let (s, _) = match l.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let source = source.clone();
        tokio::spawn(async move {
            let mut s = s;
            let mut mode = [0u8; 1];
            if s.read_exact(&mut mode).await.is_err() {
                return;
            }
            let never = AtomicBool::new(false);
            let count = AtomicU64::new(0);
            let _ = match mode[0] {
                MODE_UPLOAD => zc::drain(&mut s, zerocopy, &count, &never).await,
                MODE_DOWNLOAD => zc::fill(&mut s, zerocopy, &source, &count, &never).await,
                _ => echo_conn(s, mode[0]).await,
            };
        });
    }
}

async fn echo(args: &Args) -> Res<()> {
    let l = listen(args).await?;
    loop {
        let (s, _) = match l.accept().await {
            Ok(a) => a,
            Err(_) => {
                // Out of fds: the connection waits in the backlog.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut s = s;
            let mut first = [0u8; 1];
            if s.read_exact(&mut first).await.is_ok() {
                let _ = echo_conn(s, first[0]).await;
            }
        });
    }
}

/// Echoes `first`, then everything else until EOF; `MODE_ECHO_CLOSE` closes at once.
async fn echo_conn(mut s: TcpStream, first: u8) -> std::io::Result<()> {
    s.write_all(&[first]).await?;
    if first == MODE_ECHO_CLOSE {
        return Ok(());
    }
    // Small buffer: idle relays hold thousands of these connections.
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

// ---------------------------------------------------------------- bulk

async fn bulk(args: &Args) -> Res<()> {
    let cfg = socks::Config::from_args(args)?;
    let streams = args.usize("streams", 1);
    let upload = match args.get("dir").unwrap_or("up") {
        "up" => true,
        "down" => false,
        d => return Err(format!("--dir: '{d}' is not up or down").into()),
    };
    let zerocopy = !args.flag("no-zerocopy") && cfg.tls.is_none();
    let pre = Window::prepare(args).await;
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..streams).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let source = Arc::new(zc::Source::new()?);
    let mut tasks = Vec::new();
    for c in &counters {
        let mut conn = cfg.open().await?;
        let mode = if upload { MODE_UPLOAD } else { MODE_DOWNLOAD };
        conn.write_all(&[mode]).await?;
        conn.flush().await?;
        let (c, stop, source) = (c.clone(), stop.clone(), source.clone());
        tasks.push(tokio::spawn(async move {
            match conn {
                socks::Conn::Plain(mut s) => {
                    if upload {
                        zc::fill(&mut s, zerocopy, &source, &c, &stop).await
                    } else {
                        zc::drain(&mut s, zerocopy, &c, &stop).await
                    }
                }
                socks::Conn::Tls(mut s) => {
                    if upload {
                        zc::fill_stream(&mut *s, &c, &stop).await
                    } else {
                        zc::drain_stream(&mut *s, &c, &stop).await
                    }
                }
            }
        }));
    }
    let total = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let w = pre.run(args, total).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = 0;
    for t in tasks {
        t.abort();
        if let Ok(Err(_)) = t.await {
            errors += 1;
        }
    }
    let bytes = w.end.count - w.start.count;
    let secs = w.secs();
    let gbit = bytes as f64 * 8.0 / secs / 1e9;
    let proxy_cpu = w.proxy_cpu();
    let mut out = w.common(args);
    out.push(("streams", streams.to_string()));
    out.push(("dir", q(if upload { "up" } else { "down" })));
    out.push(("zerocopy", zerocopy.to_string()));
    out.push(("bytes", bytes.to_string()));
    out.push(("gbit_s", f(gbit)));
    out.push((
        "proxy_cpu_s_per_gb",
        match proxy_cpu {
            Some(c) if bytes > 0 => f(c / (bytes as f64 / 1e9)),
            _ => "null".into(),
        },
    ));
    out.push(("stream_errors", errors.to_string()));
    emit("bulk", out);
    Ok(())
}

// ---------------------------------------------------------------- cycles

async fn cycles(args: &Args) -> Res<()> {
    let cfg = Arc::new(socks::Config::from_args(args)?);
    let conc = args.usize("concurrency", 1);
    let server_closes = match args.get("close-by").unwrap_or("client") {
        "client" => false,
        "server" => true,
        o => return Err(format!("--close-by: '{o}' is not client or server").into()),
    };
    let pre = Window::prepare(args).await;
    // Redis commands per session (fleet limits: issue 14) are counted over the
    // whole run, warm-up included, from before the first session starts until
    // the proxy has ended the last one, so no session is cut at an edge.
    let redis_port = args.get("redis-port").map(str::to_owned);
    let redis_start = redis_port.as_deref().map(redis_commands);
    let started = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Latencies of cycles that ended inside the window (µs); workers check `recording`.
    let recording = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (cfg, stop, done, errors, rec, started) = (
            cfg.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
            recording.clone(),
            started.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut first_error: Option<String> = None;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                started.fetch_add(1, Ordering::Relaxed);
                match cycle(&cfg, server_closes).await {
                    Ok(()) => {
                        if rec.load(Ordering::Relaxed) {
                            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if rec.load(Ordering::Relaxed) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        first_error.get_or_insert_with(|| e.to_string());
                        // Out of ports or fds: do not spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (lat, first_error)
        }));
    }
    let w = {
        let done = done.clone();
        let rec = recording.clone();
        pre.run_with(
            args,
            move || done.load(Ordering::Relaxed),
            move |on| rec.store(on, Ordering::Relaxed),
        )
        .await
    };
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut first_error = None;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            if first_error.is_none() {
                first_error = e;
            }
        }
    }
    lat.sort_unstable();
    let n = w.end.count - w.start.count;
    let secs = w.secs();
    let pct = |p: f64| -> String {
        if lat.is_empty() {
            "null".into()
        } else {
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            f(lat[i] as f64 / 1000.0)
        }
    };
    let proxy_cpu = w.proxy_cpu();
    let mut out = w.common(args);
    out.push(("concurrency", conc.to_string()));
    out.push((
        "close_by",
        q(if server_closes { "server" } else { "client" }),
    ));
    out.push(("cycles", n.to_string()));
    out.push(("conn_s", f(n as f64 / secs)));
    out.push(("p50_ms", pct(0.50)));
    out.push(("p99_ms", pct(0.99)));
    out.push((
        "proxy_cpu_us_per_conn",
        match proxy_cpu {
            Some(c) if n > 0 => f(c * 1e6 / n as f64),
            _ => "null".into(),
        },
    ));
    out.push(("errors", errors.load(Ordering::Relaxed).to_string()));
    out.push((
        "first_error",
        first_error.map(|e| q(&e)).unwrap_or_else(|| "null".into()),
    ));
    if let (Some(port), Some(start)) = (&redis_port, redis_start) {
        // Wait (up to 5 s) until the proxy has ended its last session: two
        // reads in a row that differ only by the first read's own INFO.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut infos = 1u64; // INFO calls after `start` was read
        let mut last = redis_commands(port);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = redis_commands(port);
            infos += 1;
            if now.0 == last.0 + 1 || Instant::now() > deadline {
                last = now;
                break;
            }
            last = now;
        }
        // Every INFO the bench sent but the last is counted in `last`.
        let trips = last.0.saturating_sub(start.0).saturating_sub(infos);
        let all = last.1.saturating_sub(start.1).saturating_sub(infos);
        let sessions = started.load(Ordering::Relaxed);
        let per = |c: u64| {
            if sessions > 0 {
                f(c as f64 / sessions as f64)
            } else {
                "null".into()
            }
        };
        out.push(("redis_sessions", sessions.to_string()));
        out.push(("redis_cmds", trips.to_string()));
        out.push(("redis_cmds_per_conn", per(trips)));
        out.push(("redis_cmds_in_scripts_per_conn", per(all - trips)));
    }
    emit("cycles", out);
    Ok(())
}

/// Commands a Redis on 127.0.0.1:`port` has run so far, from `INFO
/// commandstats` (through redis-cli, the Redis project's own client):
/// (round trips, all). Commandstats also counts the commands a script runs
/// inside Redis; round trips are the commands a client can send itself and
/// that no script runs (scripts, and connection set-up).
fn redis_commands(port: &str) -> (u64, u64) {
    const CLIENT_SENT: &[&str] = &[
        "eval",
        "evalsha",
        "eval_ro",
        "evalsha_ro",
        "fcall",
        "fcall_ro",
        "script|load",
        "script|exists",
        "hello",
        "client|setinfo",
        "client|setname",
        "select",
        "ping",
        "info",
    ];
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", port, "INFO", "commandstats"])
        .output();
    let Ok(out) = out else { return (0, 0) };
    let (mut trips, mut all) = (0, 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let Some(calls) = rest
            .strip_prefix("calls=")
            .and_then(|v| v.split(',').next()?.parse::<u64>().ok())
        else {
            continue;
        };
        all += calls;
        if CLIENT_SENT.contains(&name) {
            trips += calls;
        }
    }
    (trips, all)
}

/// One full session: connect, greeting [+ RFC 1929], CONNECT, 1-byte echo, close.
async fn cycle(cfg: &socks::Config, server_closes: bool) -> Res<()> {
    let mut conn = cfg.open().await?;
    let b = if server_closes { MODE_ECHO_CLOSE } else { b'e' };
    conn.write_all(&[b]).await?;
    conn.flush().await?;
    let mut one = [0u8; 1];
    conn.read_exact(&mut one).await?;
    if one[0] != b {
        return Err("echo returned a different byte".into());
    }
    if server_closes {
        // Wait for the server's FIN (through the proxy) before closing.
        let mut rest = [0u8; 16];
        while conn.read(&mut rest).await? > 0 {}
    }
    Ok(())
}

// ---------------------------------------------------------------- idle relays

async fn idle(args: &Args) -> Res<()> {
    let cfg = Arc::new(socks::Config::from_args(args)?);
    if cfg.proxy.is_none() {
        return Err("idle: --proxy is required".into());
    }
    let pid = args
        .get("proxy-pid")
        .map(|p| p.parse::<u32>())
        .transpose()?;
    let count = args.usize("count", 1000);
    let hold = Duration::from_secs_f64(args.f64("hold", 3.0));
    let before = pid.map(measure::tree_memory);
    // Open with bounded concurrency, each with a 1-byte echo round trip.
    let sem = Arc::new(tokio::sync::Semaphore::new(
        args.usize("open-concurrency", 64),
    ));
    let mut opening = Vec::with_capacity(count);
    let t0 = Instant::now();
    for _ in 0..count {
        let (cfg, sem) = (cfg.clone(), sem.clone());
        opening.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let mut c = cfg.open().await?;
            echo_once(&mut c).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c)
        }));
    }
    let mut conns = Vec::with_capacity(count);
    let mut open_errors = 0u64;
    let mut first_error = None;
    for t in opening {
        match t.await? {
            Ok(c) => conns.push(c),
            Err(e) => {
                open_errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    // Let the proxy settle (allocator, pools) before reading its footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = pid.map(measure::tree_memory);
    tokio::time::sleep(hold).await;
    // Every relay must still work: a second echo on each.
    let mut verified = 0u64;
    for chunk in conns.chunks_mut(256) {
        let mut futs = Vec::new();
        for c in chunk.iter_mut() {
            futs.push(echo_once(c));
        }
        for r in futs {
            if r.await.is_ok() {
                verified += 1;
            }
        }
    }
    let opened = conns.len();
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pid.map(measure::tree_memory);
    let mut out: Vec<(&str, String)> = vec![("label", q(args.get("label").unwrap_or("")))];
    out.push(("requested", count.to_string()));
    out.push(("opened", opened.to_string()));
    out.push(("verified", verified.to_string()));
    out.push(("open_errors", open_errors.to_string()));
    out.push((
        "first_error",
        first_error.map(|e| q(&e)).unwrap_or_else(|| "null".into()),
    ));
    out.push(("open_s", f(open_secs)));
    if let (Some(b), Some(h), Some(a)) = (before, held, after) {
        let n = opened.max(1) as f64;
        out.push(("rss_kib_before", b.rss_kib.to_string()));
        out.push(("rss_kib_held", h.rss_kib.to_string()));
        out.push(("rss_kib_after", a.rss_kib.to_string()));
        out.push(("pss_kib_before", b.pss_kib.to_string()));
        out.push(("pss_kib_held", h.pss_kib.to_string()));
        out.push(("fds_before", b.fds.to_string()));
        out.push(("fds_held", h.fds.to_string()));
        out.push(("threads_before", b.threads.to_string()));
        out.push(("threads_held", h.threads.to_string()));
        out.push(("procs_held", h.procs.to_string()));
        out.push((
            "kib_rss_per_relay",
            f((h.rss_kib as f64 - b.rss_kib as f64) / n),
        ));
        out.push((
            "kib_pss_per_relay",
            f((h.pss_kib as f64 - b.pss_kib as f64) / n),
        ));
        out.push(("fds_per_relay", f((h.fds as f64 - b.fds as f64) / n)));
    }
    emit("idle", out);
    Ok(())
}

async fn echo_once(c: &mut socks::Conn) -> Res<()> {
    c.write_all(b"e").await?;
    c.flush().await?;
    let mut one = [0u8; 1];
    c.read_exact(&mut one).await?;
    if one[0] != b'e' {
        return Err("echo returned a different byte".into());
    }
    Ok(())
}

// ---------------------------------------------------------------- output

/// A JSON string literal.
pub fn q(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number with sensible precision (never NaN/inf).
pub fn f(x: f64) -> String {
    if !x.is_finite() {
        return "null".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.5}")
    }
}

pub fn emit(kind: &str, fields: Vec<(&str, String)>) {
    let body: Vec<String> = std::iter::once(format!("\"kind\":{}", q(kind)))
        .chain(fields.into_iter().map(|(k, v)| format!("{}:{v}", q(k))))
        .collect();
    println!("RESULT {{{}}}", body.join(","));
}
