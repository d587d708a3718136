//! Serving clients: listeners and their accept loops, SOCKS5 and HTTP CONNECT
//! sessions, forwarders, the relay, and the status/metrics listener.
//! May use `policy`, `egress`, `host`, `proto`.

pub mod accounting;
pub mod config;
pub mod dial;
pub mod error;
pub mod forward;
pub mod http_connect;
pub mod listener;
pub mod metrics;
pub mod proxy_accept;
pub mod proxy_inbound;
pub mod relay;
pub mod session;
pub mod sessions;
pub mod socks5;
pub mod status;
pub mod udp;
pub mod udp_session;
