//! Limiter tests: local enforcement, and fleet enforcement against a REAL
//! `redis-server` started on a free 127.0.0.1 port (persistence off) and stopped.
//! Without redis-server installed the fleet tests print SKIP and pass; .ci/setup
//! installs it, so in CI they run.

use super::*;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

fn spec(entries: &[(&str, Raw)]) -> Arc<LimitsSpec> {
    let e: Vec<(String, Raw)> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Arc::new(LimitsSpec::from_entries(&e).unwrap())
}
fn s(v: &str) -> Raw {
    Raw::Str(v.into())
}

/// Polls `f` until it returns true or `deadline` passes.
async fn eventually<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Admits a session of `key`, retrying until `deadline` (a release or a lease
/// expiry elsewhere makes room).
async fn admit_eventually(
    l: &Limiter,
    key: &str,
    sp: &Arc<LimitsSpec>,
    deadline: Duration,
) -> Option<SessionLimits> {
    let end = Instant::now() + deadline;
    loop {
        if let Ok(s) = l.admit(key, sp).await {
            return Some(s);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- local ----

#[tokio::test]
async fn local_max_sessions_and_release_on_drop() {
    let l = Limiter::new();
    let sp = spec(&[("max_sessions", Raw::Int(2))]);
    let a = l.admit("k", &sp).await.unwrap();
    let _b = l.admit("k", &sp).await.unwrap();
    let r = l.admit("k", &sp).await.unwrap_err();
    assert_eq!(r.kind, RefusalKind::MaxSessions);
    assert_eq!(r.limit, "max_sessions = 2");
    // another key has its own budget
    let _other = l.admit("k2", &sp).await.unwrap();
    drop(a);
    let _c = l.admit("k", &sp).await.unwrap();
    let st = l.stats("k", &sp).await.unwrap();
    assert_eq!((st.sessions, st.connect_refused), (2, 1));
    assert_eq!(l.counters.refused_max_sessions.load(Relaxed), 1);
}

#[tokio::test]
async fn local_connect_rate_refuses_beyond_burst() {
    let l = Limiter::new();
    let sp = spec(&[("connect_rate", s("10/min,max_burst=3"))]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(l.admit("k", &sp).await.unwrap());
    }
    let r = l.admit("k", &sp).await.unwrap_err();
    assert_eq!(r.kind, RefusalKind::ConnectRate);
    let retry = r.retry_after.unwrap();
    assert!(
        retry > Duration::from_secs(5) && retry <= Duration::from_secs(6),
        "{retry:?}"
    );
}

#[tokio::test]
async fn local_quota_cuts_within_budget_and_returns_unused() {
    let l = Limiter::new();
    // 100 KB/hour: chunk 64 KiB
    let sp = spec(&[("quota", s("100 KB/hour"))]);
    let a = l.admit("k", &sp).await.unwrap();
    let b = l.admit("k", &sp).await.unwrap();
    // a takes 10 KB and ends: its unused chunk goes back
    let n = a.permit(Dir::Up, 10_000).await.unwrap();
    a.record(Dir::Up, n, n);
    drop(a);
    let mut moved = 10_000u64;
    loop {
        match b.permit(Dir::Down, 16384).await {
            Ok(n) => {
                b.record(Dir::Down, n, n);
                moved += n as u64;
            }
            Err(cut) => {
                assert!(cut.reason.contains("quota"), "{cut:?}");
                break;
            }
        }
        assert!(moved <= 100_000, "relayed beyond the quota: {moved}");
    }
    assert_eq!(moved, 100_000);
    drop(b);
    let st = l.stats("k", &sp).await.unwrap();
    assert_eq!(st.quota_used, Some(100_000));
    assert_eq!(st.quota_remaining, Some(0));
    assert_eq!(st.bytes_up + st.bytes_down, 100_000);
    assert_eq!(
        l.admit("k", &sp).await.unwrap_err().kind,
        RefusalKind::Quota
    );
}

#[tokio::test]
async fn local_bandwidth_shapes_both_directions_separately() {
    let l = Limiter::new();
    let sp = spec(&[("bandwidth", Raw::Table(vec![("down".into(), s("2 MB/s"))]))]);
    let sess = l.admit("k", &sp).await.unwrap();
    assert!(sess.meters_bytes());
    // up is free
    assert_eq!(sess.permit(Dir::Up, 1 << 20).await.unwrap(), 1 << 20);
    // down: 400 KB at 2 MB/s takes ~150 ms after the 50 ms burst
    let t = Instant::now();
    let mut moved = 0;
    while moved < 400_000 {
        let n = sess.permit(Dir::Down, 65536).await.unwrap();
        sess.record(Dir::Down, n, n);
        moved += n;
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(140), "{took:?}");
    assert!(took < Duration::from_millis(600), "{took:?}");
}

// ---------------------------------------------------------------- redis ----

struct RedisServer {
    child: Option<Child>,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// None (with a SKIP line) when redis-server is not installed.
    fn start(test: &str) -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIP {test}: redis-server not installed (Debian package redis-server; .ci/setup installs it)");
            return None;
        }
        // Another test may race us to the same free port: retry on a new one.
        for _ in 0..5 {
            let mut r = RedisServer {
                child: None,
                port: free_port(),
            };
            if r.spawn() {
                return Some(r);
            }
        }
        panic!("could not start redis-server on a free port");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts redis-server on `self.port`; false if the port was taken (by
    /// another test's server: a PING alone could be answered by it).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let pid = child.id();
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if let Ok(mut c) = client.get_connection() {
                if let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut c) {
                    let ours = info
                        .lines()
                        .any(|l| l.trim() == format!("process_id:{pid}"));
                    if !ours {
                        self.stop();
                    }
                    return ours;
                }
            }
            assert!(
                Instant::now() < end,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Same port again (the backends' URL does not change).
    fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "port {} was taken while redis was down",
            self.port
        );
    }

    /// Script calls sent by clients (EVAL, EVALSHA, SCRIPT) per `INFO commandstats`;
    /// commands a script runs inside Redis are not round trips.
    fn script_calls(&self) -> u64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_connection().unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut c)
            .unwrap();
        info.lines()
            .filter(|l| {
                l.starts_with("cmdstat_eval:")
                    || l.starts_with("cmdstat_evalsha:")
                    || l.starts_with("cmdstat_script")
            })
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One "process": its own Limiter and Redis backend.
fn process(redis: &RedisServer, on_error: OnError, lease_ttl: Duration) -> Limiter {
    let mut cfg = RedisConfig::new(RedisTarget::Url(redis.url()));
    cfg.on_error = on_error;
    cfg.lease_ttl = lease_ttl;
    cfg.timeout = Duration::from_millis(300);
    let l = Limiter::new();
    l.set_fleet(Some(
        FleetBackend::new(cfg, tokio::runtime::Handle::current()).unwrap(),
    ));
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_max_sessions_across_two_processes() {
    let Some(redis) = RedisServer::start("fleet_max_sessions_across_two_processes") else {
        return;
    };
    let (a, b) = (
        process(&redis, OnError::Deny, Duration::from_secs(30)),
        process(&redis, OnError::Deny, Duration::from_secs(30)),
    );
    let sp = spec(&[("max_sessions", Raw::Int(3)), ("scope", s("fleet"))]);
    // warm up: connect and load the script in both processes
    drop(a.admit("warm-up", &sp).await.unwrap());
    drop(b.admit("warm-up", &sp).await.unwrap());
    let warm = spec(&[("scope", s("fleet")), ("max_sessions", Raw::Int(9))]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats("warm-up", &warm).await.unwrap().sessions == 0
        })
        .await
    );
    let before = redis.script_calls();
    let a1 = a.admit("acme", &sp).await.unwrap();
    let _a2 = a.admit("acme", &sp).await.unwrap();
    let _b1 = b.admit("acme", &sp).await.unwrap();
    // one round trip (EVALSHA) per admission
    assert_eq!(redis.script_calls() - before, 3);
    for p in [&a, &b] {
        let r = p.admit("acme", &sp).await.unwrap_err();
        assert_eq!(r.kind, RefusalKind::MaxSessions);
    }
    // other keys, including ones made to look like Redis syntax, are separate
    let _x = b.admit("acme}:s", &sp).await.unwrap();
    let st = b.stats("acme", &sp).await.unwrap();
    assert_eq!((st.sessions, st.connect_refused), (3, 2));
    // ending a session frees its lease fleet-wide (released in the background)
    drop(a1);
    assert!(admit_eventually(&b, "acme", &sp, Duration::from_secs(5))
        .await
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_leases_of_a_crashed_process_expire_and_live_ones_are_renewed() {
    let Some(redis) = RedisServer::start("fleet_leases_expire") else {
        return;
    };
    let ttl = Duration::from_millis(1500);
    let (a, b) = (
        process(&redis, OnError::Deny, ttl),
        process(&redis, OnError::Deny, ttl),
    );
    let sp = spec(&[("max_sessions", Raw::Int(2)), ("scope", s("fleet"))]);
    let held_b = b.admit("k", &sp).await.unwrap();
    let held_a = a.admit("k", &sp).await.unwrap();
    // "kill -9" of a: no release, no more renewals
    let fa = a.fleet().unwrap();
    fa.stop();
    fa.forget_leases();
    std::mem::forget(held_a);
    assert_eq!(
        b.admit("k", &sp).await.unwrap_err().kind,
        RefusalKind::MaxSessions
    );
    let crashed = Instant::now();
    let mut got = None;
    while got.is_none() {
        match b.admit("k", &sp).await {
            Ok(s) => got = Some(s),
            Err(_) => {
                assert!(
                    crashed.elapsed() < ttl + Duration::from_millis(700),
                    "lease not freed within the bound"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // b's first session lived through several ttl periods: renewed, still counted
    assert!(crashed.elapsed() >= Duration::from_millis(800));
    tokio::time::sleep(ttl * 2).await;
    let st = b.stats("k", &sp).await.unwrap();
    assert_eq!(st.sessions, 2, "live leases must be renewed");
    drop(held_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_quota_is_counted_across_both_processes() {
    let Some(redis) = RedisServer::start("fleet_quota") else {
        return;
    };
    let (a, b) = (
        process(&redis, OnError::Deny, Duration::from_secs(30)),
        process(&redis, OnError::Deny, Duration::from_secs(30)),
    );
    // 300 KB/hour, chunk 64 KiB
    let sp = spec(&[("quota", s("300 KB/hour")), ("scope", s("fleet"))]);
    let sa = a.admit("q", &sp).await.unwrap();
    let sb = b.admit("q", &sp).await.unwrap();
    let mut total = 0u64;
    let mut a_done = false;
    let mut b_done = false;
    // alternate the two sessions, 8 KB at a time, until both are cut
    while !(a_done && b_done) {
        for (sess, done, dir) in [(&sa, &mut a_done, Dir::Up), (&sb, &mut b_done, Dir::Down)] {
            if *done {
                continue;
            }
            match sess.permit(dir, 8192).await {
                Ok(n) => {
                    sess.record(dir, n, n);
                    total += n as u64;
                }
                Err(_) => *done = true,
            }
        }
        assert!(total <= 300_000, "relayed beyond the fleet quota: {total}");
    }
    assert_eq!(total, 300_000);
    assert_eq!(
        a.admit("q", &sp).await.unwrap_err().kind,
        RefusalKind::Quota
    );
    drop(sa);
    drop(sb);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let st = b.stats("q", &sp).await.unwrap();
            st.bytes_up + st.bytes_down == 300_000 && st.quota_remaining == Some(0)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_unused_quota_goes_back() {
    let Some(redis) = RedisServer::start("fleet_unused_quota") else {
        return;
    };
    let a = process(&redis, OnError::Deny, Duration::from_secs(30));
    let sp = spec(&[("quota", s("1 MB/day")), ("scope", s("fleet"))]);
    let sa = a.admit("q", &sp).await.unwrap();
    let n = sa.permit(Dir::Up, 1000).await.unwrap();
    sa.record(Dir::Up, n, n);
    assert!(a.stats("q", &sp).await.unwrap().quota_used.unwrap() >= 65536);
    drop(sa);
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.stats("q", &sp).await.unwrap().quota_used == Some(1000)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_connect_rate_refuses_the_burst_beyond_max_burst() {
    let Some(redis) = RedisServer::start("fleet_connect_rate") else {
        return;
    };
    let (a, b) = (
        process(&redis, OnError::Deny, Duration::from_secs(30)),
        process(&redis, OnError::Deny, Duration::from_secs(30)),
    );
    let sp = spec(&[
        ("connect_rate", s("6/min,max_burst=4")),
        ("scope", s("fleet")),
    ]);
    let mut held = Vec::new();
    for i in 0..4 {
        let p = if i % 2 == 0 { &a } else { &b };
        held.push(p.admit("r", &sp).await.unwrap());
    }
    for p in [&a, &b] {
        let r = p.admit("r", &sp).await.unwrap_err();
        assert_eq!(r.kind, RefusalKind::ConnectRate);
        let retry = r.retry_after.unwrap();
        assert!(
            retry > Duration::from_secs(8) && retry <= Duration::from_secs(10),
            "{retry:?}"
        );
    }
    assert_eq!(a.stats("r", &sp).await.unwrap().connect_refused, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_on_error_allow_and_deny_then_recovery() {
    let Some(mut redis) = RedisServer::start("fleet_on_error") else {
        return;
    };
    let allow = process(&redis, OnError::Allow, Duration::from_secs(30));
    let deny = process(&redis, OnError::Deny, Duration::from_secs(30));
    let sp = spec(&[("max_sessions", Raw::Int(1)), ("scope", s("fleet"))]);
    // both connected and enforcing
    let first = allow.admit("e", &sp).await.unwrap();
    assert_eq!(
        deny.admit("e", &sp).await.unwrap_err().kind,
        RefusalKind::MaxSessions
    );
    drop(first);
    assert!(
        eventually(Duration::from_secs(5), || async {
            allow.stats("e", &sp).await.unwrap().sessions == 0
        })
        .await
    );

    redis.stop();
    let t = Instant::now();
    let s1 = allow
        .admit("e", &sp)
        .await
        .expect("on_error = allow admits");
    let s2 = allow
        .admit("e", &sp)
        .await
        .expect("on_error = allow admits beyond the limit");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "outage must fail fast: {:?}",
        t.elapsed()
    );
    assert_eq!(allow.counters.admitted_unchecked.load(Relaxed), 2);
    let r = deny.admit("e", &sp).await.unwrap_err();
    assert_eq!(r.kind, RefusalKind::Unavailable);
    assert!(allow.redis_errors() >= 2 && deny.redis_errors() >= 1);
    drop((s1, s2));

    // enforcement resumes by itself once Redis is back
    redis.restart();
    let held = admit_eventually(&deny, "e", &sp, Duration::from_secs(10)).await;
    assert!(held.is_some(), "deny process never recovered");
    assert!(
        eventually(Duration::from_secs(10), || async {
            matches!(allow.admit("e", &sp).await, Err(r) if r.kind == RefusalKind::MaxSessions)
        })
        .await,
        "allow process never enforced again"
    );
}

#[tokio::test]
async fn fleet_without_configure_redis_is_refused() {
    let l = Limiter::new();
    let sp = spec(&[("max_sessions", Raw::Int(1)), ("scope", s("fleet"))]);
    assert_eq!(
        l.admit("k", &sp).await.unwrap_err().kind,
        RefusalKind::Unavailable
    );
}
