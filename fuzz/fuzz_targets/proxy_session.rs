//! A whole proxy-listener session behind `proxy_protocol`, over real loopback
//! TCP (the header is read with MSG_PEEK, which in-memory streams lack): the
//! fuzz input is what a "balancer" at 127.0.0.1 sends, then EOF. The PROXY
//! header path, then SOCKS5 (and HTTP CONNECT) for whoever the header names.
//! Outbound connects are refused under cfg(fuzzing). Besides "no panic, no
//! hang": a connection whose bytes do not start with a valid header gets not
//! one byte back, and every session is accounted for (active back to 0,
//! per-IP slots given back: a second pass from the same client is served).
//!
//! Input: byte 0 = flags (bit 0 max_connections_per_ip = 1, bit 1 HTTP too),
//! then the balancer's bytes.
#![no_main]
use kumoproxy::policy::events::EventPump as Pump;
use kumoproxy::proto::proxy_header::{parse, Parse};
use kumoproxy::server::listener::{Config, Shared};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct World {
    rt: tokio::runtime::Runtime,
    listener: TcpListener,
    /// Indexed by per-IP cap + 2 * http.
    shared: [Arc<Shared>; 4],
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let pump = Arc::new(Pump::new().unwrap());
        let shared = |i: usize| {
            let mut c = Config::new(addr);
            c.max_connections_per_ip = (i & 1 != 0).then_some(1);
            c.protocols.http = i & 2 != 0;
            // Short: a header or request cut by EOF ends at once anyway.
            c.timeout = Duration::from_secs(2);
            c.auth_failure_delay = None;
            c.proxy_protocol = Some(kumoproxy::server::proxy_inbound::InboundConfig {
                from: vec!["127.0.0.1/32".parse().unwrap()],
            });
            Arc::new(Shared::new(c, addr, pump.clone()))
        };
        World {
            listener,
            shared: std::array::from_fn(shared),
            rt,
        }
    })
}

/// One connection: sends `bytes`, half-closes, runs the session to its end;
/// returns what the client received.
async fn session(w: &World, shared: &Arc<Shared>, bytes: &[u8]) -> Vec<u8> {
    let addr: SocketAddr = w.listener.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (server, peer) = w.listener.accept().await.unwrap();
    // Ignore write errors: the session may close before reading everything.
    let _ = client.write_all(bytes).await;
    let _ = client.shutdown().await;
    shared.stats.active.fetch_add(1, Ordering::Relaxed);
    let serve = kumoproxy::server::session::serve(server, peer, shared.clone());
    tokio::time::timeout(Duration::from_secs(20), serve)
        .await
        .expect("session hung");
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
    got
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let w = world();
    let shared = &w.shared[(flags & 3) as usize];
    w.rt.block_on(async {
        let got = session(w, shared, bytes).await;
        if !matches!(parse(bytes), Parse::Complete { .. }) {
            assert!(got.is_empty(), "answered {got:02x?} without a valid PROXY header");
        }
        assert_eq!(shared.stats.active.load(Ordering::Relaxed), 0);
        // Slots are given back: the same client again is not over its cap
        // (a valid header naming a client gets at least a method reply).
        if let Parse::Complete { consumed, .. } = parse(bytes) {
            if bytes.len() > consumed && bytes[consumed] == 5 && bytes.len() > consumed + 2 {
                let again = session(w, shared, bytes).await;
                assert_eq!(got.first(), again.first(), "second pass differs");
            }
        }
    });
});
