//! Forwarders (`src:forward{}`): each accepted connection is relayed to one
//! fixed destination through an egress source.

use crate::egress::EgressSource;
use crate::host::stats::Stats;
use crate::proto::socks5::TargetAddr;
use crate::server::config::Shared;
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
    let r = tokio::select! {
        r = forward_one(stream, &shared, &source, &to) => r,
        _ = shared.abort.cancelled() => Err("cut at the end of the shutdown grace period".to_string()),
    };
    match r {
        Ok(()) => Stats::inc(&shared.stats.completed),
        Err(e) => {
            Stats::inc(&shared.stats.failed);
            tracing::warn!("forwarder {}: {peer} -> {to}: {e}", shared.local_addr);
        }
    }
}

async fn forward_one(
    client: TcpStream,
    shared: &Shared,
    source: &EgressSource,
    to: &TargetAddr,
) -> Result<(), String> {
    if !shared.config.sockopts_inherited {
        crate::host::net::tune_stream(&client, &shared.config.keepalive, "client socket");
    }
    let up = source
        .connect(to, source.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    crate::server::relay::relay_any(
        crate::host::stream::ClientStream::Plain(client),
        up.stream,
        &[],
        shared,
        &Default::default(),
    )
    .await
    .map_err(|e| format!("relay ended: {e}"))
}
