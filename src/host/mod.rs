//! Process-level services: runtime, event pump, signals, logging, access log.

pub mod access_log;
