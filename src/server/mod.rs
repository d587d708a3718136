//! Listeners and sessions.
pub mod proxy_inbound;
pub mod proxy_outbound;
