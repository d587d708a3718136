//! Lua bindings.

pub mod ops;
