//! Decisions: identities and AuthInfo, trusted hosts, permissions, the auth
//! cache and failure delay, `auth_http`, per-request policy and the events that
//! ask the host's Lua. Knows nothing of listeners: what it needs comes as
//! arguments or a narrow context type. May use `egress`, `host`, `proto`.

pub mod auth;
pub mod auth_cache;
pub mod auth_http;
pub mod events;
pub mod identity;
pub mod limits;
pub mod permissions;
pub mod request;
