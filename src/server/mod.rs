//! Listeners and sessions.
pub mod proxy_inbound;
