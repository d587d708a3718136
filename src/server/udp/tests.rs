//! The relay against real sockets on 127.0.0.1.

use super::*;
use crate::proto::socks5::TargetAddr;
use crate::proto::socks5_udp;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);

/// Refuses one port; counts its calls (the cache must spare most of them).
#[derive(Default)]
struct TestPolicy {
    deny_port: u16,
    calls: AtomicUsize,
}

impl UdpPolicy for TestPolicy {
    fn denies_name(&self, _host: &str, port: u16) -> Option<String> {
        self.calls.fetch_add(1, Relaxed);
        (port == self.deny_port).then(|| format!("port {port} is denied"))
    }
    fn check(&self, _host: &str, _port: u16, addrs: &[IpAddr]) -> Result<(), String> {
        // Stands for the private-destination rule: 127.0.0.9 is "private".
        match addrs.iter().find(|a| **a == IpAddr::from([127, 0, 0, 9])) {
            Some(a) => Err(format!("{a} is private")),
            None => Ok(()),
        }
    }
}

struct Assoc {
    relay: SocketAddr,
    counters: Arc<UdpCounters>,
    cancel: CancellationToken,
    task: JoinHandle<Ended>,
    policy: Arc<TestPolicy>,
}

struct Opts {
    local: IpAddr,
    client_ip: IpAddr,
    client_port: Option<u16>,
    filter: UdpFilter,
    idle: Duration,
    upstream: Option<SocketAddr>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            local: IpAddr::from([127, 0, 0, 1]),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            client_port: None,
            filter: UdpFilter::AddressRestricted,
            idle: Duration::from_secs(60),
            upstream: None,
        }
    }
}

fn start(o: Opts) -> Assoc {
    let socket = bind_udp(SocketAddr::new(o.local, 0)).unwrap();
    let relay = socket.local_addr().unwrap();
    let counters = Arc::new(UdpCounters::default());
    let cancel = CancellationToken::new();
    let policy = Arc::new(TestPolicy {
        deny_port: 9,
        ..Default::default()
    });
    let outbound = match o.upstream {
        Some(relay) => Outbound::Upstream {
            relay,
            socket: bind_udp(SocketAddr::new(o.local, 0)).unwrap(),
        },
        None => Outbound::Direct { source: None },
    };
    let a = UdpAssociation {
        label: format!("udp test {relay}"),
        client_ip: o.client_ip,
        client_port: o.client_port,
        socket,
        outbound,
        policy: policy.clone(),
        filter: o.filter,
        idle_timeout: o.idle,
        resolve_timeout: WAIT,
        counters: counters.clone(),
        cancel: cancel.clone(),
        limits: None,
        bytes: Arc::default(),
    };
    Assoc {
        relay,
        counters,
        cancel,
        task: tokio::spawn(a.run()),
        policy,
    }
}

fn udp(ip: &str) -> UdpSocket {
    bind_udp(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap()
}

fn v6_available() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok()
}

/// A UDP echo server; ends with the test's runtime.
fn echo(ip: &str) -> SocketAddr {
    let s = udp(ip);
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

fn wrap(t: &TargetAddr, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    assert!(socks5_udp::encode_header(t, &mut d));
    d.extend_from_slice(payload);
    d
}

async fn recv(s: &UdpSocket) -> (TargetAddr, Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(WAIT, s.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    let (t, off) = socks5_udp::parse(&buf[..n]).unwrap();
    (t, buf[off..n].to_vec(), from)
}

async fn nothing(s: &UdpSocket) {
    let mut buf = [0u8; 100];
    let r = tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await;
    assert!(r.is_err(), "unexpected datagram: {r:?}");
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ip(a: SocketAddr) -> TargetAddr {
    TargetAddr::Ip(a)
}

#[tokio::test]
async fn echo_roundtrip_ipv4_with_counters() {
    let a = start(Opts::default());
    let e = echo("127.0.0.1");
    let c = udp("127.0.0.1");
    c.send_to(&wrap(&ip(e), b"ping"), a.relay).await.unwrap();
    let (from, data, relay) = recv(&c).await;
    assert_eq!(
        (from, data.as_slice(), relay),
        (ip(e), &b"ping"[..], a.relay)
    );
    let k = &a.counters;
    assert_eq!(k.associations_active.load(Relaxed), 1);
    assert_eq!(k.datagrams_to_remote.load(Relaxed), 1);
    assert_eq!(k.bytes_to_remote.load(Relaxed), 4);
    wait_for("to_client counted", || {
        k.datagrams_to_client.load(Relaxed) == 1
    })
    .await;
    assert_eq!(k.bytes_to_client.load(Relaxed), 4);
    a.cancel.cancel();
    assert!(matches!(a.task.await.unwrap(), Ended::Cancelled));
    assert_eq!(k.associations_active.load(Relaxed), 0);
    assert_eq!(k.associations_total.load(Relaxed), 1);
}

#[tokio::test]
async fn ipv6_both_legs_and_mixed_families() {
    if !v6_available() {
        eprintln!("no ::1 here; skipped");
        return;
    }
    let a = start(Opts {
        local: "::1".parse().unwrap(),
        client_ip: "::1".parse().unwrap(),
        ..Default::default()
    });
    let e6 = echo("::1");
    let e4 = echo("127.0.0.1");
    let c = udp("::1");
    c.send_to(&wrap(&ip(e6), b"six"), a.relay).await.unwrap();
    assert_eq!(recv(&c).await.0, ip(e6));
    // Same association, IPv4 destination: the IPv4 leg opens on demand.
    c.send_to(&wrap(&ip(e4), b"four"), a.relay).await.unwrap();
    let (from, data, _) = recv(&c).await;
    assert_eq!((from, data.as_slice()), (ip(e4), &b"four"[..]));
    assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 2);
    a.cancel.cancel();
    a.task.await.unwrap();
}

#[tokio::test]
async fn ipv4_client_to_ipv6_destination() {
    if !v6_available() {
        return;
    }
    let a = start(Opts::default());
    let e6 = echo("::1");
    let c = udp("127.0.0.1");
    c.send_to(&wrap(&ip(e6), b"x"), a.relay).await.unwrap();
    let (from, data, _) = recv(&c).await;
    assert_eq!((from, data.as_slice()), (ip(e6), &b"x"[..]));
}

#[tokio::test]
async fn only_the_client_ip_and_its_first_port() {
    let a = start(Opts::default());
    let e = echo("127.0.0.1");
    let c = udp("127.0.0.1");
    c.send_to(&wrap(&ip(e), b"1"), a.relay).await.unwrap();
    recv(&c).await;
    // Same IP, another port: the association is locked to the first port.
    let other_port = udp("127.0.0.1");
    other_port
        .send_to(&wrap(&ip(e), b"2"), a.relay)
        .await
        .unwrap();
    // Another IP (the whole of 127/8 is local on Linux).
    let other_ip = udp("127.0.0.3");
    other_ip
        .send_to(&wrap(&ip(e), b"3"), a.relay)
        .await
        .unwrap();
    wait_for("two foreign drops", || {
        a.counters.dropped(DropReason::ForeignSource) == 2
    })
    .await;
    nothing(&other_port).await;
    nothing(&other_ip).await;
    assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 1);
    // The client itself is unaffected.
    c.send_to(&wrap(&ip(e), b"4"), a.relay).await.unwrap();
    assert_eq!(recv(&c).await.1, b"4");
}

#[tokio::test]
async fn port_named_in_the_request_is_the_only_one() {
    let c = udp("127.0.0.1");
    let early = udp("127.0.0.1");
    let a = start(Opts {
        client_port: Some(c.local_addr().unwrap().port()),
        ..Default::default()
    });
    let e = echo("127.0.0.1");
    // First datagram, but not from the named port: dropped, no lock taken.
    early.send_to(&wrap(&ip(e), b"x"), a.relay).await.unwrap();
    wait_for("drop", || {
        a.counters.dropped(DropReason::ForeignSource) == 1
    })
    .await;
    c.send_to(&wrap(&ip(e), b"y"), a.relay).await.unwrap();
    assert_eq!(recv(&c).await.1, b"y");
    nothing(&early).await;
}

#[tokio::test]
async fn a_v4_mapped_control_peer_is_an_ipv4_client() {
    // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d; with the
    // port named in the request, replies must still reach plain IPv4.
    let c = udp("127.0.0.1");
    let a = start(Opts {
        client_ip: "::ffff:127.0.0.1".parse().unwrap(),
        client_port: Some(c.local_addr().unwrap().port()),
        ..Default::default()
    });
    let e = echo("127.0.0.1");
    c.send_to(&wrap(&ip(e), b"mapped"), a.relay).await.unwrap();
    assert_eq!(recv(&c).await.1, b"mapped");
}

#[tokio::test]
async fn bad_headers_are_dropped_and_counted_apart() {
    let a = start(Opts::default());
    let e = echo("127.0.0.1");
    let c = udp("127.0.0.1");
    let mut frag = wrap(&ip(e), b"f");
    frag[2] = 1;
    c.send_to(&frag, a.relay).await.unwrap();
    for bad in [
        &[0u8, 0, 0][..],
        &[0, 0, 0, 7, 1, 2, 3, 4, 0, 1],
        &[0, 0, 0, 3, 3, b'a', b'\n', b'b', 0, 1],
    ] {
        c.send_to(bad, a.relay).await.unwrap();
    }
    wait_for("drops", || {
        a.counters.dropped(DropReason::Fragmented) == 1
            && a.counters.dropped(DropReason::Malformed) == 3
    })
    .await;
    assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 0);
    c.send_to(&wrap(&ip(e), b"ok"), a.relay).await.unwrap();
    assert_eq!(recv(&c).await.1, b"ok");
}

#[tokio::test]
async fn policy_refusals_are_counted_and_cached() {
    let a = start(Opts::default());
    let c = udp("127.0.0.1");
    let private = udp("127.0.0.9");
    let paddr = private.local_addr().unwrap();
    for _ in 0..3 {
        c.send_to(&wrap(&ip("127.0.0.1:9".parse().unwrap()), b"d"), a.relay)
            .await
            .unwrap();
        c.send_to(&wrap(&ip(paddr), b"p"), a.relay).await.unwrap();
    }
    wait_for("denied", || a.counters.dropped(DropReason::Denied) == 6).await;
    nothing(&private).await;
    // One decision per destination, not per datagram.
    assert_eq!(a.policy.calls.load(Relaxed), 2);
    assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 0);
}

#[tokio::test]
async fn names_are_resolved_once() {
    let a = start(Opts::default());
    let e = echo("127.0.0.1");
    let c = udp("127.0.0.1");
    let name = TargetAddr::Domain("localhost".into(), e.port());
    for i in 0..5u8 {
        c.send_to(&wrap(&name, &[i]), a.relay).await.unwrap();
        let (from, data, _) = recv(&c).await;
        // Replies carry the real sender, not the name.
        assert_eq!((from, data), (ip(e), vec![i]));
    }
    assert_eq!(a.counters.dns_lookups.load(Relaxed), 1);
}

/// Sends through the relay to a fresh socket; returns it and the relay's outbound address.
async fn peer_and_outbound(a: &Assoc, c: &UdpSocket, at: &str) -> (UdpSocket, SocketAddr) {
    let r = udp(at);
    let raddr = r.local_addr().unwrap();
    c.send_to(&wrap(&ip(raddr), b"hello"), a.relay)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, out) = tokio::time::timeout(WAIT, r.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hello");
    (r, out)
}

#[tokio::test]
async fn replies_only_from_addresses_the_client_sent_to() {
    let a = start(Opts::default());
    let c = udp("127.0.0.1");
    let (r, out) = peer_and_outbound(&a, &c, "127.0.0.1").await;
    let stranger = udp("127.0.0.2");
    stranger.send_to(b"spoof", out).await.unwrap();
    wait_for("unsolicited", || {
        a.counters.dropped(DropReason::Unsolicited) == 1
    })
    .await;
    r.send_to(b"reply", out).await.unwrap();
    let (from, data, _) = recv(&c).await;
    assert_eq!(
        (from, data.as_slice()),
        (ip(r.local_addr().unwrap()), &b"reply"[..])
    );
}

#[tokio::test]
async fn endpoint_independent_filter_relays_anyone() {
    let a = start(Opts {
        filter: UdpFilter::EndpointIndependent,
        ..Default::default()
    });
    let c = udp("127.0.0.1");
    let (_r, out) = peer_and_outbound(&a, &c, "127.0.0.1").await;
    let stranger = udp("127.0.0.2");
    stranger.send_to(b"hi", out).await.unwrap();
    let (from, data, _) = recv(&c).await;
    assert_eq!(
        (from, data.as_slice()),
        (ip(stranger.local_addr().unwrap()), &b"hi"[..])
    );
}

#[tokio::test]
async fn oversize_replies_are_dropped_not_truncated() {
    let a = start(Opts::default());
    let c = udp("127.0.0.1");
    let (r, out) = peer_and_outbound(&a, &c, "127.0.0.1").await;
    // The largest IPv4 UDP payload: with the 10-byte header it cannot reach the client.
    r.send_to(&vec![7u8; 65507], out).await.unwrap();
    wait_for("oversize", || a.counters.dropped(DropReason::Oversize) == 1).await;
    nothing(&c).await;
    // A big one that fits goes through whole.
    r.send_to(&vec![8u8; 65000], out).await.unwrap();
    let (_, data, _) = recv(&c).await;
    assert_eq!(data, vec![8u8; 65000]);
}

#[tokio::test]
async fn a_burst_goes_through_batched() {
    let a = start(Opts::default());
    let e = echo("127.0.0.1");
    let c = udp("127.0.0.1");
    let d = wrap(&ip(e), &[0x55; 64]);
    for _ in 0..100 {
        c.send_to(&d, a.relay).await.unwrap();
    }
    for _ in 0..100 {
        assert_eq!(recv(&c).await.1, vec![0x55; 64]);
    }
    assert_eq!(a.counters.datagrams_to_remote.load(Relaxed), 100);
    wait_for("all back", || {
        a.counters.datagrams_to_client.load(Relaxed) == 100
    })
    .await;
    assert_eq!(a.counters.bytes_to_client.load(Relaxed), 6400);
}

#[tokio::test]
async fn idle_timeout_ends_the_association() {
    let a = start(Opts {
        idle: Duration::from_millis(200),
        ..Default::default()
    });
    let e = echo("127.0.0.1");
    let c = udp("127.0.0.1");
    c.send_to(&wrap(&ip(e), b"x"), a.relay).await.unwrap();
    recv(&c).await;
    let ended = tokio::time::timeout(WAIT, a.task).await.unwrap().unwrap();
    assert!(matches!(ended, Ended::Idle), "{ended:?}");
    assert_eq!(a.counters.associations_active.load(Relaxed), 0);
}

#[tokio::test]
async fn through_an_upstream_relay() {
    // Upstream: a direct association whose client is our upstream leg.
    let up = start(Opts::default());
    let a = start(Opts {
        upstream: Some(up.relay),
        ..Default::default()
    });
    let e = echo("127.0.0.1");
    let c = udp("127.0.0.1");
    c.send_to(&wrap(&ip(e), b"chained"), a.relay).await.unwrap();
    let (from, data, relay) = recv(&c).await;
    assert_eq!(
        (from, data.as_slice(), relay),
        (ip(e), &b"chained"[..], a.relay)
    );
    // By name: the upstream resolves it.
    c.send_to(
        &wrap(&TargetAddr::Domain("localhost".into(), e.port()), b"n"),
        a.relay,
    )
    .await
    .unwrap();
    assert_eq!(recv(&c).await.1, b"n");
    assert_eq!(a.counters.dns_lookups.load(Relaxed), 0);
    assert_eq!(up.counters.dns_lookups.load(Relaxed), 1);
    // The policy still applies on our side.
    c.send_to(&wrap(&ip("127.0.0.1:9".parse().unwrap()), b"d"), a.relay)
        .await
        .unwrap();
    wait_for("denied", || a.counters.dropped(DropReason::Denied) == 1).await;
    assert_eq!(up.counters.datagrams_to_remote.load(Relaxed), 2);
}
