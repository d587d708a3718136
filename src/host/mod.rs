//! Host plumbing below everything that does I/O: the per-process runtime,
//! the event pump (runtime -> host thread), signals, logging, metrics
//! registry pieces, counters, socket helpers, streams and TLS configuration.
//! May use `proto` only.

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod process;
pub mod pump;
pub mod runtime;
pub mod signals;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod udp;
