//! A whole server session fed from fuzz input over an in-memory stream: greeting,
//! method selection, RFC 1929 (answered through the real event pump by a stand-in
//! host), BIND/CONNECT/UDP requests, and HTTP CONNECT on a port that speaks both
//! protocols. Outbound connects are refused under cfg(fuzzing). Besides "no
//! panic, no hang", it checks the security promises on every SOCKS5 run: NOAUTH
//! only for trusted peers without require_auth, and no request is ever answered
//! before authentication succeeded; on HTTP, that require_auth never lets a
//! CONNECT through without valid credentials.
//!
//! Input: byte 0 = flags (bit 0 require_auth, bit 1 auth handlers registered,
//! bit 2 untrusted peer, bits 3-5 chunk size 2^k, bit 6 HTTP too, bit 7
//! allow_private_destinations), then the client's bytes.
#![no_main]
use kumoproxy::server::listener::{Config, Shared};
use kumoproxy::policy::events::EventPump as Pump;
use kumoproxy::policy::events::{self as pump, Event, EVENT_AUTH_RFC1929, EVENT_HTTP_AUTH_BASIC};
use kumoproxy::proto::socks5;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    /// Indexed by require_auth + 2 * http + 4 * allow_private_destinations.
    listeners: [Arc<Shared>; 8],
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        // Paused clock: timers fire as soon as every task waits, so a session
        // that waits for its `timeout` costs no wall time (and a hang is a bug).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let pump = Arc::new(Pump::new().unwrap());
        let shared = |i: usize| {
            let mut c = Config::new(c_addr());
            c.require_auth = i & 1 != 0;
            c.protocols.http = i & 2 != 0;
            c.timeout = Duration::from_secs(5);
            // Keep runs independent of each other: no per-peer state across inputs.
            c.auth_failure_delay = None;
            if i & 4 != 0 {
                // allow_private_destinations: the fuzzed targets reach the
                // connect step (refused under cfg(fuzzing)) instead of the ACL.
                c.permissions = Arc::new(kumoproxy::policy::permissions::Permissions::default());
            }
            Arc::new(Shared::new(c, c_addr(), pump.clone()))
        };
        World {
            listeners: std::array::from_fn(shared),
            rt,
        }
    })
}

fn c_addr() -> SocketAddr {
    ([127, 0, 0, 1], 1080).into()
}

/// The pump's eventfd, borrowed for AsyncFd (the Pump keeps owning it).
struct EventFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for EventFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// The stand-in host: sleeps on the event fd like a real host, and answers
/// queued auth questions like a Lua handler would.
async fn host(pump: &Pump) {
    let fd = tokio::io::unix::AsyncFd::new(EventFd(pump.fd())).unwrap();
    loop {
        for ev in pump.drain() {
            match ev {
                Event::AuthRfc1929 {
                    username,
                    password,
                    reply,
                    ..
                } => {
                    let verdict = if username == b"alice" && password == b"secret" {
                        Ok(kumoproxy::policy::identity::AuthInfo::single("alice", "ProxyAuthRfc1929"))
                    } else {
                        Err("rejected by handler".to_string())
                    };
                    let _ = reply.send(verdict);
                }
                Event::HttpAuthBasic {
                    user,
                    password,
                    reply,
                    ..
                } => {
                    let ok = user == b"alice" && password.as_deref() == Some(b"secret");
                    // `true` from a Lua handler: the user as an HttpBasicAuth identity.
                    let who = ok.then(|| {
                        kumoproxy::policy::identity::AuthInfo::single("alice", "HttpBasicAuth")
                    });
                    let _ = reply.send(Ok(who));
                }
                #[allow(unreachable_patterns)]
                _ => {} // an event this target does not know: dropped, fails closed
            }
        }
        // drain() reset the eventfd: a question queued from now on wakes us.
        let mut ready = fd.readable().await.unwrap();
        ready.clear_ready();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let w = world();
    let require_auth = flags & 1 != 0;
    let handler = flags & 2 != 0;
    let untrusted = flags & 4 != 0;
    let chunk = 1usize << ((flags >> 3) & 7);
    let http = flags & 64 != 0;
    pump::set_registered(EVENT_AUTH_RFC1929, handler);
    pump::set_registered(EVENT_HTTP_AUTH_BASIC, handler);
    let allow_private = flags & 128 != 0;
    let shared = &w.listeners[require_auth as usize + 2 * http as usize + 4 * allow_private as usize];
    let peer: SocketAddr = if untrusted {
        ([192, 0, 2, 1], 40000).into()
    } else {
        ([127, 0, 0, 1], 40000).into()
    };

    let out = w.rt.block_on(async {
        let (client, server) = tokio::io::duplex(1024);
        let (mut rd, mut wr) = tokio::io::split(client);
        let session = async {
            let _ = kumoproxy::server::session::fuzz_session(server, peer, shared).await;
        };
        let feed = async {
            for c in input.chunks(chunk) {
                if wr.write_all(c).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            let _ = wr.shutdown().await;
        };
        let mut out = Vec::new();
        let drain = async {
            let _ = rd.read_to_end(&mut out).await;
        };
        tokio::select! {
            _ = async { tokio::join!(session, feed, drain) } => {}
            _ = host(&shared.pump) => unreachable!(),
        }
        out
    });

    if out.is_empty() {
        return;
    }
    if http && input.first() != Some(&socks5::VERSION) {
        // HTTP: one response; a tunnel (200) only with valid credentials when
        // they are required. Outbound connects are refused, so a 200 can only
        // come from a bug.
        let head = String::from_utf8_lossy(&out[..out.len().min(32)]).into_owned();
        assert!(head.starts_with("HTTP/1.1 "), "{head:?}");
        assert!(!head.starts_with("HTTP/1.1 200"), "tunnel without a destination: {head:?}");
        if (require_auth || untrusted) && head.starts_with("HTTP/1.1 502") {
            assert!(handler, "a connect attempted without credentials being checked");
        }
        return;
    }
    // What the server said, frame by frame: method selection, then (RFC 1929)
    // an auth status, then request replies.
    assert!(out.len() >= 2, "partial method selection {out:02x?}");
    assert_eq!(out[0], socks5::VERSION);
    let chosen = out[1];
    if chosen == socks5::method::NO_AUTH {
        assert!(!require_auth, "NOAUTH chosen with require_auth");
        assert!(!untrusted, "NOAUTH chosen for an untrusted peer");
    }
    let mut rest = &out[2..];
    match chosen {
        socks5::method::NO_ACCEPTABLE => assert!(rest.is_empty(), "bytes after 0xFF"),
        socks5::method::USERNAME_PASSWORD => {
            if rest.is_empty() {
                return;
            }
            assert!(handler || require_auth);
            assert_eq!(&rest[..1], &[socks5::AUTH_VERSION]);
            assert!(rest.len() >= 2);
            let ok = rest[1] == 0;
            rest = &rest[2..];
            if !ok {
                assert!(rest.is_empty(), "request answered after failed auth");
                return;
            }
            assert!(handler, "auth succeeded with no handler");
        }
        socks5::method::NO_AUTH => {}
        other => panic!("unexpected method 0x{other:02x}"),
    }
    // Replies: each one whole, successes only for BIND (connects are refused).
    while !rest.is_empty() {
        let Ok(Some((_, n))) = socks5::parse_reply(rest) else {
            panic!("malformed reply {rest:02x?}");
        };
        rest = &rest[n..];
    }
});
