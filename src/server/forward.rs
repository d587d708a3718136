//! Forwarders (`src:forward{}`): each accepted connection is relayed to one
//! fixed destination through an egress source. Like a proxy session, it is a
//! live session while it relays (`fwd:sessions()`, `close_sessions`) and ends
//! with a record (`proxy_session_end`; protocol `forward`).

use crate::egress::EgressSource;
use crate::host::net::{LocalAddr, PeerAddr};
use crate::host::stats::Stats;
use crate::policy::identity::ConnMeta;
use crate::proto::socks5::TargetAddr;
use crate::server::accounting::Trace;
use crate::server::config::Shared;
use crate::server::error::SessionError;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// One connection accepted by a forwarder: connect through the source, relay.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    source: Arc<EgressSource>,
    to: TargetAddr,
) {
    let _active = crate::host::stats::ActiveGuard(&shared.stats);
    let mut trace = Trace::new("forward");
    trace.command = Some("connect");
    trace.destination = Some(to.to_string());
    let meta = ConnMeta::direct(PeerAddr(peer), LocalAddr(shared.local_addr));
    let r = tokio::select! {
        r = forward_one(stream, &meta, &shared, &source, &to, &mut trace) => r,
        _ = shared.abort.cancelled() => Err(SessionError::Aborted),
    };
    match &r {
        Ok(()) => Stats::inc(&shared.stats.completed),
        Err(e) => {
            Stats::inc(&shared.stats.failed);
            tracing::warn!("forwarder {}: {peer} -> {to}: {e}", shared.local_addr);
        }
    }
    crate::server::accounting::finish(&shared, peer, &trace, &r);
}

async fn forward_one(
    client: TcpStream,
    meta: &ConnMeta,
    shared: &Shared,
    source: &EgressSource,
    to: &TargetAddr,
    trace: &mut Trace,
) -> Result<(), SessionError> {
    if !shared.config.sockopts_inherited {
        crate::host::net::tune_stream(&client, &shared.config.keepalive, "client socket");
    }
    let up = source
        .connect(to, source.connect_timeout)
        .await
        .map_err(|e| SessionError::Connect {
            target: to.to_string(),
            code: e.code,
            reason: e.to_string(),
        })?;
    trace.connected(up.peer, up.local, Some(source.name.as_str()));
    let stream = up.stream;
    let relay = |bytes: Arc<crate::server::sessions::Bytes>| async move {
        crate::server::relay::relay_any(
            crate::host::stream::ClientStream::Plain(client),
            stream,
            &[],
            shared,
            &bytes,
            None,
        )
        .await
    };
    crate::server::accounting::relay_listed(shared, meta, trace, relay)
        .await
        .map_err(SessionError::Relay)
}
