//! Listeners, sessions and what they share at run time.

pub mod sessions;
