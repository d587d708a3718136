//! One accepted connection on a proxy listener: TLS (when the listener has it),
//! the protocol the client speaks (`protocols`), then its conversation
//! (`server::socks5` or `server::http_connect`); counted and logged here.

use crate::policy::identity::ConnMeta;

use crate::host::net::{within, LocalAddr, PeerAddr};
use crate::host::stats::Stats;
use crate::host::stream::ClientStream;
use crate::proto::socks5::{self};
use crate::server::accounting::Trace;
use crate::server::config::Shared;
use crate::server::error::SessionError;
use crate::server::socks5::Framed;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

pub async fn serve(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _active = crate::host::stats::ActiveGuard(&shared.stats);
    // Boxed (its state is read only at the end), and made first: its start
    // time includes the PROXY header and TLS handshake.
    let mut trace = Trace::new("socks5");
    // `proxy_protocol`: from a balancer, the client is whom its header names.
    // Boxed: only the header read needs this state, and only connections that
    // must send a header pay for the allocation.
    // One expression, not a variable: a moved-from local would keep its
    // bytes in the session's future for the whole session.
    let Some(crate::server::proxy_accept::Accepted {
        peer,
        proxy_peer,
        tlvs: proxy_tlvs,
        slot: _slot,
    }) = (if crate::server::proxy_accept::expects(&shared, peer) {
        Box::pin(crate::server::proxy_accept::accept(
            &mut stream,
            peer,
            &shared,
        ))
        .await
    } else {
        Some(crate::server::proxy_accept::Accepted {
            peer,
            proxy_peer: None,
            tlvs: None,
            slot: None,
        })
    })
    else {
        return;
    };

    // A listener bound to one address already knows it: no getsockname per session.
    let local = if shared.local_addr.ip().is_unspecified() {
        stream.local_addr().unwrap_or(shared.local_addr)
    } else {
        shared.local_addr
    };
    if !shared.config.sockopts_inherited {
        crate::host::net::tune_stream(&stream, &shared.config.keepalive, "client socket");
    }
    let stats = &shared.stats;

    let (client, tls_client) = match &shared.config.tls {
        None => (ClientStream::Plain(stream), None),
        Some(tls) => {
            // Boxed: the handshake state is large and only lives until it ends.
            let accept = Box::pin(async {
                tls.acceptor()
                    .accept(stream)
                    .await
                    .map_err(|e| e.to_string())
            });
            let t = shared.config.timeout;
            let handshake = tokio::select! {
                r = within(t, format!("timeout after {t:?}"), accept) => r,
                _ = shared.abort.cancelled() => Err("shutting down".to_string()),
            };
            match handshake {
                Ok(s) => {
                    let id = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::host::tls::client_identity);
                    (ClientStream::Tls(Box::new(s)), id)
                }
                Err(why) => {
                    Stats::inc(&stats.tls_handshake_failures);
                    Stats::inc(&stats.failed);
                    tracing::warn!("session from {peer} failed: TLS handshake: {why}");
                    let why = format!("TLS handshake: {why}");
                    crate::server::accounting::finish_early(&shared, peer, trace.start, why);
                    return;
                }
            }
        }
    };
    let meta = Arc::new(ConnMeta {
        peer: PeerAddr(peer),
        local: LocalAddr(local),
        tls_client,
        http_auth: None,
        proxy_peer,
        proxy_tlvs,
    });

    trace.proxy_peer = meta.proxy_peer;
    let result = tokio::select! {
        r = handle(client, &meta, &shared, &mut trace) => r,
        _ = shared.abort.cancelled() => Err(SessionError::Aborted),
    };
    crate::server::accounting::finish(&shared, peer, &trace, &result);

    match result {
        Ok(()) => Stats::inc(&stats.completed),
        Err(e) => {
            Stats::inc(&stats.failed);
            if e.is_auth() {
                Stats::inc(&stats.auth_failures);
            }
            if e.is_timeout() {
                Stats::inc(&stats.timeouts);
            }
            if matches!(e, SessionError::Denied(_)) {
                Stats::inc(&stats.denied);
            }
            match e {
                // A quota cut is a decision worth a warning, not a routine reset.
                SessionError::Relay(ref e)
                    if e.get_ref()
                        .is_some_and(|c| c.is::<crate::policy::limits::Cut>()) =>
                {
                    tracing::warn!("session from {peer} ended: {e}")
                }
                // Client resets mid-transfer are routine; keep them out of warn.
                SessionError::Relay(_) | SessionError::ClientClosed(_) => {
                    tracing::info!("session from {peer} failed: {e}")
                }
                _ => tracing::warn!("session from {peer} failed: {e}"),
            }
        }
    }
}

/// Picks the conversation by the client's first byte: SOCKS5 always starts with
/// its version byte, HTTP never does.
async fn handle(
    stream: ClientStream,
    meta: &Arc<ConnMeta>,
    shared: &Shared,
    trace: &mut Trace,
) -> Result<(), SessionError> {
    let mut conn = Framed {
        io: stream,
        buf: Vec::new(),
        timeout: shared.config.timeout,
    };
    let protocols = shared.config.protocols;
    if protocols.http && (!protocols.socks5 || conn.first_byte().await? != socks5::VERSION) {
        let Framed { io, buf, .. } = conn;
        trace.protocol = "http";
        // Boxed: the HTTP state is large and would otherwise size every session.
        return Box::pin(crate::server::http_connect::handle(
            io, buf, meta, shared, trace,
        ))
        .await;
    }
    crate::server::socks5::handle(conn, meta, shared, trace).await
}

#[cfg(test)]
mod tests {
    /// An idle relay's memory is mostly its session task, whose future is as large
    /// as its largest state (issue 8: ≤ 8 KiB per idle relay). Large, rare states
    /// (TLS handshakes, egress connects, userspace copies) are boxed to keep it so.
    #[tokio::test]
    async fn session_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(a).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let shared = std::sync::Arc::new(crate::server::listener::Shared::new(
            crate::server::listener::Config::new(a),
            a,
            std::sync::Arc::new(crate::host::pump::Pump::new().unwrap()),
        ));
        let f = super::serve(s, peer, shared);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 3 * 1024, "session future is {size} bytes");
    }
}

/// Runs one session's SOCKS5 conversation over an in-memory stream: the entry
/// point of the session fuzz target (`fuzz/`). Outbound connects are refused
/// under `cfg(fuzzing)` (see `connect`).
#[cfg(fuzzing)]
pub async fn fuzz_session(
    client: tokio::io::DuplexStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<(), SessionError> {
    let meta = Arc::new(ConnMeta::direct(
        PeerAddr(peer),
        LocalAddr(shared.local_addr),
    ));
    let mut trace = Trace::new("socks5");
    handle(ClientStream::Mem(client), &meta, shared, &mut trace).await
}
