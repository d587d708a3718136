//! The listener's `udp*` parameters (UDP ASSOCIATE).

use crate::lua::params::Params;
use crate::server::udp::{UdpFilter, UdpListenerConfig};

const UDP_KEYS: [&str; 4] = [
    "udp_advertise_address",
    "udp_idle_timeout",
    "udp_filter",
    "max_udp_associations",
];

/// `udp`, `udp_advertise_address`, `udp_idle_timeout`, `udp_filter`,
/// `max_udp_associations`. `None` unless `udp = true`; the others without it
/// are an error (a setting that silently does nothing misleads).
pub fn udp_params(p: &mut Params) -> mlua::Result<Option<UdpListenerConfig>> {
    let enabled = p.bool("udp", false)?;
    if !enabled {
        for k in UDP_KEYS {
            if !p.raw(k)?.is_nil() {
                return Err(p.key_err(k, "requires udp = true"));
            }
        }
        return Ok(None);
    }
    let d = UdpListenerConfig::default();
    let advertise_address = p.ip("udp_advertise_address")?;
    if advertise_address.is_some_and(|ip| ip.is_unspecified()) {
        return Err(p.key_err(
            "udp_advertise_address",
            "must be an address clients can send to, not the wildcard",
        ));
    }
    let idle_timeout = p.duration("udp_idle_timeout", d.idle_timeout)?;
    if idle_timeout.is_zero() {
        return Err(p.key_err("udp_idle_timeout", "must be greater than zero"));
    }
    let filter = match p.string("udp_filter")?.as_deref() {
        None | Some("address-restricted") => UdpFilter::AddressRestricted,
        Some("endpoint-independent") => UdpFilter::EndpointIndependent,
        Some(other) => {
            return Err(p.key_err(
                "udp_filter",
                format!(
                    "unknown filter {:?} (use 'address-restricted' or 'endpoint-independent')",
                    crate::proto::text::client(other)
                ),
            ))
        }
    };
    let max_associations = p
        .integer("max_udp_associations", 1, i64::MAX)?
        .map(|n| n as u64);
    Ok(Some(UdpListenerConfig {
        advertise_address,
        idle_timeout,
        filter,
        max_associations,
    }))
}
