//! Prometheus exposition for the status listener's `GET /metrics`.
//!
//! Listener counters already live in atomics (`host::stats`), so they are read at
//! scrape time by a [`Collector`] rather than mirrored into registered metrics:
//! one source of truth, nothing to keep in sync, and a listener that goes away
//! simply stops being reported.
//!
//! Two formats, picked by the scraper's `Accept` header ([`negotiate`]):
//! OpenMetrics (what Prometheus asks for) as prometheus-client encodes it, and
//! the classic text format 0.0.4 (what `Accept: text/plain` scrapers and parsers
//! expect), derived from the OpenMetrics text by [`to_text_004`]: the two differ
//! only in how counter and info families are named, `# UNIT` and `# EOF`.

use crate::host::process;
use crate::policy::events::EventPump as Pump;
use crate::server::config::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The exposition formats `GET /metrics` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Picks the format from an `Accept` header: OpenMetrics when the client names
/// `application/openmetrics-text` with a quality at least that of `text/plain`
/// (Prometheus lists it first with q=1), the classic text format otherwise,
/// also without the header (as the Prometheus client libraries do).
/// RFC 9110 quality values; the most specific matching range sets the quality.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    // (specificity, q) of the best-matching range for each format.
    let mut om: (u8, f32) = (0, 0.0);
    let mut text: (u8, f32) = (0, 0.0);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let (om_spec, text_spec) = match media.as_str() {
            "application/openmetrics-text" => (3, 0),
            "text/plain" => (0, 3),
            "application/*" => (2, 0),
            "text/*" => (0, 2),
            "*/*" => (1, 1),
            _ => (0, 0),
        };
        if om_spec > om.0 {
            om = (om_spec, q);
        }
        if text_spec > text.0 {
            text = (text_spec, q);
        }
    }
    // Only an explicit openmetrics range picks it: `*/*` (curl) gets text.
    if om.0 == 3 && om.1 > 0.0 && om.1 >= text.1 {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Rewrites prometheus-client's OpenMetrics text as text format 0.0.4: a
/// counter family `x` (samples `x_total`) is declared as `x_total`, an info
/// family `x` (sample `x_info`) as the gauge `x_info`; `# UNIT` lines and the
/// `# EOF` terminator go. HELP escaping is the same in both for our texts (no
/// quotes), label syntax is identical, and we emit no exemplars or `_created`.
pub fn to_text_004(om: &str) -> String {
    use std::collections::HashMap;
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, ty)) = rest.split_once(' ') {
                types.insert(name, ty);
            }
        }
    }
    let rename = |name: &str| -> (String, Option<&'static str>) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), None),
            Some("info") => (format!("{name}_info"), Some("gauge")),
            Some("histogram" | "gauge") | None => (name.to_string(), None),
            Some(_) => (name.to_string(), Some("untyped")),
        }
    };
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", rename(name).0));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, new_ty) = rename(name);
            out.push_str(&format!("# TYPE {name} {}\n", new_ty.unwrap_or(ty)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

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
        "udp_dropped_limit" => "Datagrams dropped: over the identity's bandwidth limit",
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
                // Byte counters are `..._bytes_total`: bytes_to_remote ->
                // kumoproxy_listener_to_remote_bytes_total.
                let (name, unit) = match stat.strip_prefix("bytes_") {
                    Some(dir) => (format!("listener_{dir}"), Some(&Unit::Bytes)),
                    None => (format!("listener_{stat}"), None),
                };
                let mut m = enc.encode_descriptor(&name, help(stat), unit, ty)?;
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
        limit_metrics(&mut enc)
    }
}

/// Per-identity limits: refusals by kind only (a label per key would be unbounded).
fn limit_metrics(enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let limiter = &crate::policy::limits::limiter();
    let mut m = enc.encode_descriptor(
        "limit_refusals",
        "Sessions refused by limits, by kind",
        None,
        MetricType::Counter,
    )?;
    for (kind, v) in limiter.counters.snapshot() {
        ConstCounter::new(v).encode(m.encode_family(&[("kind", kind)])?)?;
    }
    for (name, help, v) in [
        (
            "limit_quota_cuts",
            "Sessions closed because their quota ran out",
            limiter.counters.quota_cuts.load(Relaxed),
        ),
        (
            "limit_admitted_unchecked",
            "Sessions admitted without fleet checks while Redis failed (on_error = allow)",
            limiter.counters.admitted_unchecked.load(Relaxed),
        ),
        (
            "limit_redis_errors",
            "Failed Redis calls of fleet limits",
            limiter.redis_errors(),
        ),
    ] {
        let c = ConstCounter::new(v);
        c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
    }
    Ok(())
}

/// The process figures of [`process::read`], under the standard names.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = process::read();
        if let Some(v) = p.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<&Unit>, Option<u64>); 4] = [
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                p.max_fds,
            ),
            (
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                p.resident_memory_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(&Unit::Bytes),
                p.virtual_memory_bytes,
            ),
        ];
        for (name, help, unit, v) in gauges {
            if let Some(v) = v {
                let g = ConstGauge::new(v as i64);
                g.encode(enc.encode_descriptor(name, help, unit, g.metric_type())?)?;
            }
        }
        if let Some(v) = p.start_time_seconds {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(&Unit::Seconds),
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Which Lua API this build was made for (the cargo feature).
const LUA: &str = if cfg!(feature = "luajit") {
    "luajit"
} else if cfg!(feature = "lua51") {
    "lua51"
} else if cfg!(feature = "lua52") {
    "lua52"
} else if cfg!(feature = "lua53") {
    "lua53"
} else {
    "lua54"
};

/// The whole exposition in the requested format.
pub fn render(listeners: Vec<Arc<Shared>>, pump: &Arc<Pump>, format: Format) -> String {
    let mut root = Registry::default();
    // Standard unprefixed names, as every Prometheus client library exports them.
    root.register_collector(Box::new(ProcessCollector));
    let reg = root.sub_registry_with_prefix("kumoproxy");
    reg.register(
        "build",
        "kumoproxy build: module version and the Lua API it was built for",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION")), ("lua", LUA)]),
    );
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
    let _ = prometheus_client::encoding::text::encode(&mut out, &root);
    match format {
        Format::OpenMetrics => out,
        Format::Text => to_text_004(&out),
    }
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
        let text = render(Vec::new(), &pump, Format::OpenMetrics);
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
        assert!(
            text.contains("kumoproxy_limit_refusals_total{kind=\"max_sessions\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("kumoproxy_limit_redis_errors_total 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains(&format!(
                "kumoproxy_build_info{{version=\"{}\",lua=\"{LUA}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds counter\n"),
            "{text}"
        );
        assert!(text.contains("process_open_fds "), "{text}");

        let classic = render(Vec::new(), &pump, Format::Text);
        assert!(
            classic.contains("# TYPE kumoproxy_overloaded_events_total counter\nkumoproxy_overloaded_events_total 0\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE kumoproxy_build_info gauge\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{classic}"
        );
        assert!(
            !classic.contains("# EOF") && !classic.contains("# UNIT"),
            "{classic}"
        );
    }

    #[test]
    fn negotiates_like_prometheus_and_classic_scrapers() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(
            negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0, */*")),
            Format::Text
        );
        assert_eq!(negotiate(Some("application/json")), Format::Text);
    }

    #[test]
    fn classic_text_renames_counter_and_info_families() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total{l=\"x\"} 3\n# HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{l=\"x\"} 3\n# HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n# TYPE g gauge\ng 2\n"
        );
    }
}
