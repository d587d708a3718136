//! UDP sockets for the UDP ASSOCIATE relay (server) and its client side (egress).

use std::io;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// A bound, non-blocking tokio UDP socket (IPv6 ones IPv6-only: IPv4 has its own).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}
