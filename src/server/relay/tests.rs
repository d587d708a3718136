use super::*;
use tokio::net::TcpListener;

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// A listener's shared state with default settings, for a relay on its own.
fn shared() -> Shared {
    let a: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    crate::server::listener::Shared::new(
        crate::server::listener::Config::new(a),
        a,
        std::sync::Arc::new(crate::host::pump::Pump::new().unwrap()),
    )
}

/// Bytes arrive whole and in order across the switch from copy to splice,
/// also when the far end's small buffers make copy-phase writes partial,
/// and EOF propagates as a half-close in both directions.
#[tokio::test]
async fn copy_then_splice_carries_every_byte() {
    let (mut client, proxy_client) = pair().await;
    let (proxy_remote, mut remote) = pair().await;
    // Small buffers: a 16 KiB copy step cannot be sent at once.
    socket2::SockRef::from(&proxy_remote)
        .set_send_buffer_size(4096)
        .unwrap();
    socket2::SockRef::from(&remote)
        .set_recv_buffer_size(4096)
        .unwrap();
    let shared = shared();
    let len = 3 * splice::SPLICE_AFTER as usize + 12345;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let up = data.clone();
    let session = Bytes::default();
    let relay = relay(proxy_client, proxy_remote, b"early", &shared, &session);
    let far = async {
        let mut got = Vec::new();
        remote.read_to_end(&mut got).await.unwrap();
        // The reverse direction: a reply after the client's EOF.
        remote.write_all(b"reply").await.unwrap();
        remote.shutdown().await.unwrap();
        got
    };
    let near = async {
        client.write_all(&up).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        back
    };
    let (r, got, back) = tokio::join!(relay, far, near);
    r.unwrap();
    assert_eq!(&got[..5], b"early");
    assert!(got[5..] == data[..], "payload differs");
    assert_eq!(back, b"reply");
    let stats = &shared.stats;
    assert_eq!(
        stats.bytes_to_remote.load(Ordering::Relaxed),
        (len + 5) as u64
    );
    assert_eq!(stats.bytes_to_client.load(Ordering::Relaxed), 5);
    // The session's own counters (access log, live sessions) agree.
    assert_eq!(session.up.load(Ordering::Relaxed), (len + 5) as u64);
    assert_eq!(session.down.load(Ordering::Relaxed), 5);
}

/// A session with limits takes the same copy-then-splice path: every byte
/// arrives, the limits count each one, and a quota far above the flow
/// neither cuts nor loses anything at the switch to splice.
#[tokio::test]
async fn metered_copy_then_splice_counts_every_byte() {
    use crate::policy::limits::{limiter, LimitsSpec, Raw};
    let (mut client, proxy_client) = pair().await;
    let (proxy_remote, mut remote) = pair().await;
    let e = [
        ("quota".to_string(), Raw::Str("10 GB/day".into())),
        ("bandwidth".to_string(), Raw::Str("10 GB/s".into())),
    ];
    let spec = std::sync::Arc::new(LimitsSpec::from_entries(&e).unwrap());
    let limits = limiter().admit("relay-unit-metered", &spec).await.unwrap();
    let shared = shared();
    let len = 4 * splice::SPLICE_AFTER as usize + 777;
    let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    let session = Bytes::default();
    let relay = relay_plain(
        proxy_client,
        proxy_remote,
        b"hi",
        &shared,
        &session,
        Some(&limits),
    );
    let far = async {
        let mut got = Vec::new();
        remote.read_to_end(&mut got).await.unwrap();
        remote.write_all(&got[..1000]).await.unwrap();
        remote.shutdown().await.unwrap();
        got
    };
    let near = async {
        client.write_all(&data).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        back
    };
    let (r, got, back) = tokio::join!(relay, far, near);
    r.unwrap();
    assert!(got[2..] == data[..], "payload differs");
    assert_eq!(back.len(), 1000);
    drop(limits);
    let st = limiter().stats("relay-unit-metered", &spec).await.unwrap();
    assert_eq!(st.bytes_up, (len + 2) as u64);
    assert_eq!(st.bytes_down, 1000);
}
