//! Listeners, sessions and what they share at run time.

pub mod accounting;
pub mod sessions;
