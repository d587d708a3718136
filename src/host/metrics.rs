//! Metrics that live below the server: the Lua event latency histogram, a real
//! prometheus-client metric kept on the per-process event pump (so a forked
//! worker starts with its own). The exposition itself (`GET /metrics`) is
//! `server::metrics`.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::time::Duration;

type EventLabels = [(&'static str, &'static str); 1];

/// Seconds each Lua handler took, by event name.
#[derive(Clone)]
pub struct EventLatency(Family<EventLabels, Histogram, fn() -> Histogram>);

impl Default for EventLatency {
    fn default() -> Self {
        // 50 µs .. ~1.2 s: a handler that decides from a table takes microseconds;
        // one that blocks the host thread shows up in the top buckets.
        EventLatency(Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.5, 12))
        }))
    }
}

impl EventLatency {
    pub fn observe(&self, event: &'static str, took: Duration) {
        self.0
            .get_or_create(&[("event", event)])
            .observe(took.as_secs_f64());
    }

    /// The histogram family, for registering in an exposition.
    pub fn family(&self) -> Family<EventLabels, Histogram, fn() -> Histogram> {
        self.0.clone()
    }
}
