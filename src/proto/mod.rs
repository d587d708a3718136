//! Pure codecs: bytes in, values out; no sockets, no tokio.
pub mod proxy_header;
