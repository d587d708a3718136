//! Prometheus exposition for the status listener's `GET /metrics`.
//!
//! Listener counters already live in atomics (`host::stats`), so they are read at
//! scrape time by a [`Collector`] rather than mirrored into registered metrics:
//! one source of truth, nothing to keep in sync, and a listener that goes away
//! simply stops being reported.

use crate::policy::events::EventPump as Pump;
use crate::server::config::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn help(stat: &str) -> &'static str {
    match stat {
        "accepted" => "Connections accepted",
        "active" => "Sessions in progress",
        "completed" => "Sessions that ended normally",
        "failed" => "Sessions that ended with an error",
        "rejected" => "Connections refused at accept (max_connections)",
        "denied" => "Requests denied by permissions or policy",
        "auth_failures" => "Failed authentications",
        "timeouts" => "Sessions ended by a timeout",
        "bytes_to_remote" => "Bytes relayed from clients to destinations",
        "bytes_to_client" => "Bytes relayed from destinations to clients",
        "accept_errors" => "accept(2) errors",
        "tls_handshake_failures" => "Failed TLS handshakes with clients",
        "udp_associations_active" => "UDP associations in progress",
        "udp_associations_total" => "UDP associations started",
        "udp_associations_refused" => "UDP associations refused at max_udp_associations",
        "udp_datagrams_to_remote" => "Datagrams relayed from clients to destinations",
        "udp_bytes_to_remote" => "Payload bytes relayed from clients to destinations",
        "udp_datagrams_to_client" => "Datagrams relayed from destinations to clients",
        "udp_bytes_to_client" => "Payload bytes relayed from destinations to clients",
        "udp_dropped_foreign_source" => {
            "Datagrams dropped: not from the client (or upstream relay)"
        }
        "udp_dropped_fragmented" => "Datagrams dropped: FRAG set (fragmentation unsupported)",
        "udp_dropped_malformed" => "Datagrams dropped: bad UDP request header",
        "udp_dropped_denied" => "Datagrams dropped: destination denied or unresolvable",
        "udp_dropped_unsolicited" => "Replies dropped: from an address the client has not sent to",
        "udp_dropped_oversize" => "Datagrams dropped: larger than the path carries",
        "udp_dropped_send_error" => "Datagrams dropped: no socket for the family, or send failed",
        "udp_dns_lookups" => "Name lookups by UDP associations (cache misses)",
        _ => "Listener counter",
    }
}

/// Every proxy listener's counters plus the event pump's state, read on scrape.
struct Snapshot {
    listeners: Vec<Arc<Shared>>,
    pump: Arc<Pump>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        struct Row {
            addr: String,
            stats: Vec<(&'static str, u64)>,
            accepting: bool,
        }
        let rows: Vec<Row> = self
            .listeners
            .iter()
            .map(|l| Row {
                addr: l.local_addr.to_string(),
                stats: {
                    let mut s = l.stats.snapshot();
                    s.extend(l.udp.snapshot());
                    s
                },
                accepting: l.accepting.load(Ordering::Acquire),
            })
            .collect();
        // Names come from the stats snapshot, so a counter added there is exported too.
        if let Some(first) = rows.first() {
            for (i, (stat, _)) in first.stats.iter().enumerate() {
                let gauge = *stat == "active" || *stat == "udp_associations_active";
                let ty = if gauge {
                    MetricType::Gauge
                } else {
                    MetricType::Counter
                };
                let name = format!("listener_{stat}");
                let mut m = enc.encode_descriptor(&name, help(stat), None, ty)?;
                for row in &rows {
                    let v = row.stats[i].1;
                    let labels = [("listener", row.addr.as_str())];
                    let f = m.encode_family(&labels)?;
                    if gauge {
                        ConstGauge::new(v as i64).encode(f)?;
                    } else {
                        ConstCounter::new(v).encode(f)?;
                    }
                }
            }
            let mut m = enc.encode_descriptor(
                "listener_accepting",
                "1 while the listener's accept loop runs",
                None,
                MetricType::Gauge,
            )?;
            for row in &rows {
                let labels = [("listener", row.addr.as_str())];
                ConstGauge::new(row.accepting as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        let pump = &self.pump;
        let g = ConstGauge::new(pump.pending() as i64);
        g.encode(enc.encode_descriptor(
            "pending_events",
            "Lua decisions waiting for the host",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(pump.max_pending() as i64);
        g.encode(enc.encode_descriptor(
            "max_pending_events",
            "Bound of the event queue",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(pump.overloaded.load(Ordering::Relaxed));
        c.encode(enc.encode_descriptor(
            "overloaded_events",
            "Decisions refused because the event queue was full",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The whole exposition, OpenMetrics text.
pub fn render(listeners: Vec<Arc<Shared>>, pump: &Arc<Pump>) -> String {
    let mut reg = Registry::with_prefix("kumoproxy");
    reg.register(
        "lua_event_duration_seconds",
        "Time spent in Lua event handlers",
        pump.event_latency.family(),
    );
    reg.register_collector(Box::new(Snapshot {
        listeners,
        pump: pump.clone(),
    }));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_pump_and_histogram() {
        let pump = Arc::new(Pump::new().unwrap());
        pump.event_latency
            .observe("http_server_validate_auth_basic", Duration::from_millis(2));
        let text = render(Vec::new(), &pump);
        assert!(
            text.contains("# TYPE kumoproxy_pending_events gauge"),
            "{text}"
        );
        assert!(text.contains("kumoproxy_pending_events 0\n"), "{text}");
        assert!(
            text.contains("kumoproxy_overloaded_events_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "kumoproxy_lua_event_duration_seconds_count{event=\"http_server_validate_auth_basic\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
