//! Pure codecs: bytes in, values out. No sockets, no tokio, no policy.
//! Everything a client sends is parsed here first, so the fuzz targets live
//! against this layer.

pub mod http;
pub mod proxy_header;
pub mod socks5;
pub mod socks5_udp;
pub mod text;
