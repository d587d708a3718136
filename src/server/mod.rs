pub mod udp;
pub mod udp_session;
