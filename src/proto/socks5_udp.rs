//! SOCKS5 UDP request header (RFC 1928 §7), the codec of UDP ASSOCIATE datagrams:
//!
//! ```text
//! +----+------+------+----------+----------+----------+
//! |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//! +----+------+------+----------+----------+----------+
//! | 2  |  1   |  1   | Variable |    2     | Variable |
//! +----+------+------+----------+----------+----------+
//! ```
//!
//! Pure: bytes in, values out. A datagram is whole or nothing, so unlike the
//! stream codecs there is no "need more bytes": a short header is an error.
//! Encoding writes the header in front of a payload already in a buffer
//! (`write_header_before`), so a relay receives into a buffer with headroom
//! and sends without copying the payload.

use crate::proto::socks5::{self, CodecError, TargetAddr};
use std::fmt;
use std::net::SocketAddr;

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// RSV (2) + FRAG (1) + ATYP (1).
const FIXED: usize = 4;
/// Longest header: a 255-byte domain name.
pub const MAX_HEADER: usize = FIXED + 1 + 255 + 2;
/// Longest header with an IP address (IPv6): what a relay writes on replies.
pub const MAX_IP_HEADER: usize = FIXED + 16 + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpHeaderError {
    /// Shorter than the header its own fields announce.
    Truncated,
    /// FRAG ≠ 0: a fragment. Fragmentation is optional in the RFC and we do not
    /// reassemble; reported apart so it is counted apart.
    Fragmented(u8),
    /// ATYP other than 1, 3, 4.
    UnknownAddressType(u8),
    /// Domain name of length zero, not valid UTF-8, or with control characters.
    BadDomain,
}

impl UdpHeaderError {
    /// Short stable name, for drop counters and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            UdpHeaderError::Truncated => "truncated",
            UdpHeaderError::Fragmented(_) => "fragmented",
            UdpHeaderError::UnknownAddressType(_) => "bad_address_type",
            UdpHeaderError::BadDomain => "bad_domain",
        }
    }
}

impl fmt::Display for UdpHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpHeaderError::Truncated => write!(f, "truncated UDP request header"),
            UdpHeaderError::Fragmented(n) => {
                write!(
                    f,
                    "fragment {n} (FRAG != 0; fragmentation is not supported)"
                )
            }
            UdpHeaderError::UnknownAddressType(a) => write!(f, "unknown address type 0x{a:02x}"),
            UdpHeaderError::BadDomain => {
                write!(f, "empty, non-UTF-8 or control characters in domain name")
            }
        }
    }
}

impl std::error::Error for UdpHeaderError {}

/// Parses the header of `datagram`: the destination, and the offset where DATA
/// starts (`datagram[offset..]`, possibly empty). RSV is not checked: clients
/// are not all strict and it carries nothing.
pub fn parse(datagram: &[u8]) -> Result<(TargetAddr, usize), UdpHeaderError> {
    if datagram.len() < FIXED {
        return Err(UdpHeaderError::Truncated);
    }
    let frag = datagram[2];
    if frag != 0 {
        return Err(UdpHeaderError::Fragmented(frag));
    }
    // The address is the TCP request's (ATYP at byte 3): one parser, one rule
    // for names (no control characters: they reach log lines and Lua).
    match socks5::parse_addr(&datagram[3..]) {
        Ok(Some((target, n))) => Ok((target, 3 + n)),
        Ok(None) => Err(UdpHeaderError::Truncated),
        Err(CodecError::UnknownAddressType(a)) => Err(UdpHeaderError::UnknownAddressType(a)),
        Err(_) => Err(UdpHeaderError::BadDomain),
    }
}

/// Bytes the header for `addr` takes.
pub fn header_len(addr: &TargetAddr) -> usize {
    FIXED
        + 2
        + match addr {
            TargetAddr::Ip(SocketAddr::V4(_)) => 4,
            TargetAddr::Ip(SocketAddr::V6(_)) => 16,
            TargetAddr::Domain(d, _) => 1 + d.len(),
        }
}

/// Header length for an IP source: the reply path, where no `TargetAddr` is built.
pub fn ip_header_len(addr: &SocketAddr) -> usize {
    FIXED + 2 + if addr.is_ipv4() { 4 } else { 16 }
}

fn write_into(addr: &TargetAddr, out: &mut [u8]) {
    out[..3].copy_from_slice(&[0, 0, 0]);
    let end = match addr {
        TargetAddr::Ip(SocketAddr::V4(a)) => {
            out[3] = ATYP_IPV4;
            out[4..8].copy_from_slice(&a.ip().octets());
            8
        }
        TargetAddr::Ip(SocketAddr::V6(a)) => {
            out[3] = ATYP_IPV6;
            out[4..20].copy_from_slice(&a.ip().octets());
            20
        }
        TargetAddr::Domain(d, _) => {
            out[3] = ATYP_DOMAIN;
            out[4] = d.len() as u8;
            out[5..5 + d.len()].copy_from_slice(d.as_bytes());
            5 + d.len()
        }
    };
    out[end..end + 2].copy_from_slice(&addr.port().to_be_bytes());
}

/// Writes the header for `addr` into `buf[start..payload_start]` and returns
/// `start`: the datagram to send is `buf[start..payload_end]`. `None` when the
/// headroom is too small or the name cannot be encoded (empty or over 255 bytes).
pub fn write_header_before(
    buf: &mut [u8],
    payload_start: usize,
    addr: &TargetAddr,
) -> Option<usize> {
    if let TargetAddr::Domain(d, _) = addr {
        if d.is_empty() || d.len() > 255 {
            return None;
        }
    }
    let start = payload_start.checked_sub(header_len(addr))?;
    write_into(addr, buf.get_mut(start..payload_start)?);
    Some(start)
}

/// Appends the header for `addr` to `out` (then append the payload). `false`
/// (nothing written) when the name cannot be encoded.
pub fn encode_header(addr: &TargetAddr, out: &mut Vec<u8>) -> bool {
    if let TargetAddr::Domain(d, _) = addr {
        if d.is_empty() || d.len() > 255 {
            return false;
        }
    }
    let at = out.len();
    out.resize(at + header_len(addr), 0);
    write_into(addr, &mut out[at..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> TargetAddr {
        TargetAddr::Ip(s.parse().unwrap())
    }

    #[test]
    fn ipv4_wire_format_from_the_rfc() {
        let d = [0, 0, 0, 1, 127, 0, 0, 1, 0x00, 0x35, b'h', b'i'];
        let (t, off) = parse(&d).unwrap();
        assert_eq!(t, ip("127.0.0.1:53"));
        assert_eq!(&d[off..], b"hi");
        let mut out = Vec::new();
        assert!(encode_header(&t, &mut out));
        assert_eq!(out, d[..off]);
    }

    #[test]
    fn roundtrip_all_address_types_and_empty_payload() {
        for t in [
            ip("10.1.2.3:9"),
            ip("[2001:db8::1]:443"),
            ip("[::ffff:1.2.3.4]:1"),
            TargetAddr::Domain("example.com".into(), 53),
            TargetAddr::Domain("x".repeat(255), 65535),
        ] {
            for payload in [&b""[..], b"payload", &[0u8; 1500]] {
                let mut d = Vec::new();
                assert!(encode_header(&t, &mut d));
                assert_eq!(d.len(), header_len(&t));
                d.extend_from_slice(payload);
                let (got, off) = parse(&d).unwrap();
                assert_eq!(got, t);
                assert_eq!(off, header_len(&t));
                assert_eq!(&d[off..], payload);
                // Every strict prefix of the header is truncated, never a panic
                // or a wrong address.
                for k in 0..off {
                    assert_eq!(parse(&d[..k]), Err(UdpHeaderError::Truncated), "{t} {k}");
                }
            }
        }
    }

    #[test]
    fn write_header_before_payload_in_place() {
        let payload = b"dns query";
        let mut buf = vec![0xAAu8; MAX_IP_HEADER + payload.len()];
        buf[MAX_IP_HEADER..].copy_from_slice(payload);
        for t in [ip("192.0.2.7:5353"), ip("[::1]:53")] {
            let start = write_header_before(&mut buf, MAX_IP_HEADER, &t).unwrap();
            assert_eq!(start, MAX_IP_HEADER - header_len(&t));
            if let TargetAddr::Ip(a) = &t {
                assert_eq!(ip_header_len(a), header_len(&t));
            }
            let (got, off) = parse(&buf[start..]).unwrap();
            assert_eq!(got, t);
            assert_eq!(&buf[start + off..], payload);
        }
        // Not enough headroom: nothing written.
        let before = buf.clone();
        assert_eq!(write_header_before(&mut buf, 5, &ip("[::1]:53")), None);
        assert_eq!(buf, before);
        let long = TargetAddr::Domain("y".repeat(256), 1);
        let end = buf.len();
        assert_eq!(write_header_before(&mut buf, end, &long), None);
        assert!(!encode_header(&long, &mut Vec::new()));
        assert!(!encode_header(
            &TargetAddr::Domain(String::new(), 1),
            &mut Vec::new()
        ));
    }

    #[test]
    fn frag_is_reported_apart_and_before_the_address() {
        assert_eq!(
            parse(&[0, 0, 1, 1, 127, 0, 0, 1, 0, 53]),
            Err(UdpHeaderError::Fragmented(1))
        );
        // The end-of-sequence bit (0x80) is a fragment too.
        assert_eq!(
            parse(&[0, 0, 0x81, 9]),
            Err(UdpHeaderError::Fragmented(0x81))
        );
        assert_eq!(UdpHeaderError::Fragmented(3).reason(), "fragmented");
    }

    #[test]
    fn errors() {
        assert_eq!(parse(&[]), Err(UdpHeaderError::Truncated));
        assert_eq!(parse(&[0, 0, 0]), Err(UdpHeaderError::Truncated));
        assert_eq!(
            parse(&[0, 0, 0, 1, 127, 0, 0, 1, 0]),
            Err(UdpHeaderError::Truncated)
        );
        assert_eq!(parse(&[0, 0, 0, 4, 0, 0]), Err(UdpHeaderError::Truncated));
        assert_eq!(parse(&[0, 0, 0, 3]), Err(UdpHeaderError::Truncated));
        assert_eq!(
            parse(&[0, 0, 0, 3, 5, b'a', b'b']),
            Err(UdpHeaderError::Truncated)
        );
        for atyp in [0u8, 2, 5, 0xff] {
            assert_eq!(
                parse(&[0, 0, 0, atyp, 1, 2, 3, 4, 0, 53]),
                Err(UdpHeaderError::UnknownAddressType(atyp))
            );
        }
        assert_eq!(
            parse(&[0, 0, 0, 3, 0, 0, 53]),
            Err(UdpHeaderError::BadDomain)
        );
        assert_eq!(
            parse(&[0, 0, 0, 3, 2, 0xff, 0xfe, 0, 53]),
            Err(UdpHeaderError::BadDomain)
        );
        for name in [
            &b"a\nb"[..],
            b"a\rb",
            b"\x1b[2J",
            b"a\x00b",
            "a\u{85}b".as_bytes(),
        ] {
            let mut d = vec![0, 0, 0, 3, name.len() as u8];
            d.extend_from_slice(name);
            d.extend_from_slice(&[0, 53]);
            assert_eq!(parse(&d), Err(UdpHeaderError::BadDomain), "{name:?}");
        }
        // Messages name the problem and are one printable line.
        for e in [
            UdpHeaderError::Truncated,
            UdpHeaderError::Fragmented(1),
            UdpHeaderError::UnknownAddressType(9),
            UdpHeaderError::BadDomain,
        ] {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.chars().any(char::is_control));
        }
    }

    #[test]
    fn reserved_bytes_are_tolerated() {
        let (t, off) = parse(&[0xff, 0xff, 0, 1, 1, 2, 3, 4, 0, 7]).unwrap();
        assert_eq!((t, off), (ip("1.2.3.4:7"), 10));
    }
}
