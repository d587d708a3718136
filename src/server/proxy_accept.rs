//! A proxy listener's side of inbound PROXY protocol (`proxy_protocol`): which
//! peers must send a header, and a session's start once it has: the client
//! it names, logged and counted on failure, with its `max_connections_per_ip`
//! slot (connections from balancers are not counted at accept).

use crate::host::stats::Stats;
use crate::proto::proxy_header::Tlvs;
use crate::server::config::{IpSlot, Shared};
use crate::server::proxy_inbound::origin_of;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::TcpStream;

/// Whether this listener must read a header from `peer` first.
pub fn expects(shared: &Shared, peer: SocketAddr) -> bool {
    shared
        .config
        .proxy_protocol
        .as_ref()
        .is_some_and(|p| p.expects_header(peer.ip()))
}

/// A proxy listener's session after its PROXY header (if any): who the
/// client is, and its per-IP slot when the listener counts them.
pub(crate) struct Accepted {
    pub peer: SocketAddr,
    pub proxy_peer: Option<SocketAddr>,
    pub tlvs: Option<Arc<Tlvs>>,
    #[allow(dead_code)] // held for its Drop: the slot is given back when the session ends
    /// Held for the session: the original client's `max_connections_per_ip`
    /// slot (connections from balancers are not counted at accept).
    pub slot: Option<IpSlot>,
}

/// Reads the header of a session from a balancer, logs and counts a failure
/// (`None`: the connection is to be dropped), takes the client's per-IP slot.
pub(crate) async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Option<Accepted> {
    let cfg = shared.config.proxy_protocol.as_ref();
    let t = shared.config.timeout;
    let origin = match origin_of(stream, peer, cfg, t, &shared.abort).await {
        Ok(None) => {
            return Some(Accepted {
                peer,
                proxy_peer: None,
                tlvs: None,
                slot: None,
            })
        }
        Ok(Some(o)) => o,
        Err(why) => {
            Stats::inc(&shared.stats.failed);
            tracing::warn!("session from {peer} failed: PROXY header: {why}");
            let why = format!("PROXY header: {why}");
            crate::server::accounting::finish_early(shared, peer, SystemTime::now(), why);
            return None;
        }
    };
    tracing::debug!("session from {}", origin.describe());
    let slot = match shared.config.max_connections_per_ip {
        None => None,
        Some(max) => match shared.claim_ip(origin.peer.ip(), max) {
            Some(slot) => Some(slot),
            None => {
                Stats::inc(&shared.stats.rejected);
                tracing::warn!(
                    "listener {}: refusing {}: max_connections_per_ip ({max}) reached",
                    shared.local_addr,
                    origin.describe()
                );
                let why = format!("max_connections_per_ip ({max}) reached");
                crate::server::accounting::rejected_behind(
                    shared,
                    origin.peer,
                    origin.proxy_peer,
                    why,
                );
                return None;
            }
        },
    };
    Some(Accepted {
        peer: origin.peer,
        proxy_peer: Some(origin.proxy_peer),
        tlvs: origin.tlvs,
        slot,
    })
}
