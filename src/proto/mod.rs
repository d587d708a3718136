pub mod socks5_udp;
