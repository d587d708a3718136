//! A listener's UDP settings and the destination policy an association applies.

use std::net::IpAddr;
use std::time::Duration;

/// A listener's `udp*` parameters; the listener has none without `udp = true`.
#[derive(Debug, Clone)]
pub struct UdpListenerConfig {
    /// Put in the reply instead of the relay socket's address (NAT, DNAT).
    pub advertise_address: Option<IpAddr>,
    pub idle_timeout: Duration,
    pub filter: UdpFilter,
    pub max_associations: Option<u64>,
}

pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for UdpListenerConfig {
    fn default() -> Self {
        UdpListenerConfig {
            advertise_address: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            filter: UdpFilter::AddressRestricted,
            max_associations: None,
        }
    }
}

/// The session's rules for destinations (listener and identity permissions,
/// private-destination rule). Called on cache misses only.
pub trait UdpPolicy: Send + Sync + 'static {
    /// A reason when the name (or IP text) and port are refused before any lookup.
    fn denies_name(&self, host: &str, port: u16) -> Option<String>;
    /// Every resolved address of `host` must pass.
    fn check(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Result<(), String>;
}

/// Which replies reach the client (RFC 4787 filtering behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UdpFilter {
    /// Only from IPs the client has sent to.
    #[default]
    AddressRestricted,
    /// From anyone who learnt the relay's outbound port.
    EndpointIndependent,
}
