//! PROXY protocol v1/v2 header codec: a thin, bounded wrapper around the `ppp`
//! crate (the parser KumoMTA uses).
//!
//! Pure: bytes in, values out; no sockets, no tokio. [`parse`] looks at the
//! start of a connection's bytes and answers one of
//! - [`Parse::NeedMore`]: a valid prefix of a header, read more;
//! - [`Parse::Complete`]: a whole header, `consumed` bytes long (what follows
//!   belongs to the proxied protocol);
//! - [`Parse::Invalid`]: these bytes can never become a valid header; the
//!   reason is printable ASCII, safe for a log line.
//!
//! Sizes are bounded before `ppp` sees them: a v1 header is at most 107 bytes
//! (the specification's limit), a v2 header at most 16 + [`V2_MAX_PAYLOAD`]
//! bytes, and a v2 length field above that is refused as soon as the 16 fixed
//! bytes have arrived, so a sender can never make us buffer more.
//!
//! The builders produce what HAProxy's `send-proxy` / `send-proxy-v2` send.

use ppp::v1;
use ppp::v2;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Longest v1 header, CRLF included (proxy-protocol.txt §2.1).
pub const V1_MAX_LEN: usize = 107;
/// Fixed part of a v2 header: signature, version/command, family, length.
pub const V2_FIXED_LEN: usize = 16;
/// Largest v2 payload (addresses + TLVs) accepted. Addresses take at most 216
/// bytes (AF_UNIX); the rest is for TLVs. HAProxy's own TLVs (ALPN, authority,
/// unique ID, SSL with CN and cipher) and cloud balancers' (AWS VPC endpoint,
/// GCP PSC) fit comfortably; a larger header is refused, never buffered.
pub const V2_MAX_PAYLOAD: usize = 2048;
/// Longest header of either version.
pub const MAX_LEN: usize = V2_FIXED_LEN + V2_MAX_PAYLOAD;

/// Per-TLV limits from the specification: ALPN and authority are a protocol
/// name and a host name (255), the unique ID at most 128 bytes (§2.2.5).
const MAX_ALPN: usize = 255;
const MAX_AUTHORITY: usize = 255;
const MAX_UNIQUE_ID: usize = 128;

/// v2 TLV types (proxy-protocol.txt §2.2).
pub mod tlv_type {
    pub const ALPN: u8 = 0x01;
    pub const AUTHORITY: u8 = 0x02;
    pub const CRC32C: u8 = 0x03;
    pub const NOOP: u8 = 0x04;
    pub const UNIQUE_ID: u8 = 0x05;
    pub const SSL: u8 = 0x20;
    pub const SSL_VERSION: u8 = 0x21;
    pub const SSL_CN: u8 = 0x22;
    pub const SSL_CIPHER: u8 = 0x23;
    pub const SSL_SIG_ALG: u8 = 0x24;
    pub const SSL_KEY_ALG: u8 = 0x25;
    pub const NETNS: u8 = 0x30;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The connection was relayed for a client: addresses (if any) are its.
    Proxy,
    /// v2 only: the balancer speaks for itself (health checks); the receiver
    /// must use the connection's real endpoints.
    Local,
}

/// A TLV value: raw bytes (Lua gets a string) or an integer (SSL fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlvValue {
    Bytes(Vec<u8>),
    Int(u32),
}

/// The TLVs of a v2 header as a small ordered map, keyed by name: `alpn`,
/// `authority`, `unique_id`, `netns`, `ssl_client`, `ssl_verify`,
/// `ssl_version`, `ssl_cn`, `ssl_cipher`, `ssl_sig_alg`, `ssl_key_alg`, and
/// `tlv_0xNN` for any other type. NOOP and CRC32C are not kept. A repeated
/// type keeps its last value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    entries: Vec<(String, TlvValue)>,
}

impl Tlvs {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, name: &str) -> Option<&TlvValue> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &TlvValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn insert(&mut self, name: String, value: TlvValue) {
        match self.entries.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((name, value)),
        }
    }
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    pub command: Command,
    /// The original client and the address it connected to, for a PROXY
    /// command over TCP/IPv4 or IPv6. `None` for LOCAL, v1 UNKNOWN, and v2
    /// UNSPEC/AF_UNIX families: the receiver then uses the real endpoints.
    /// IPv4-mapped IPv6 addresses are given as IPv4.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    pub tlvs: Tlvs,
}

impl ProxyHeader {
    /// The original client's address, when the header names one.
    pub fn source(&self) -> Option<SocketAddr> {
        self.addresses.map(|(s, _)| s)
    }

    /// The address the original client connected to, when the header names one.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.addresses.map(|(_, d)| d)
    }
}

/// Why bytes are not a valid header. Printable ASCII only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(String);

impl Invalid {
    fn new(s: impl Into<String>) -> Self {
        let s: String = s.into();
        // Input is quoted escaped (`quote`) and ppp's messages are ASCII;
        // this makes sure nothing else can put a control char in a log line.
        Invalid(
            s.chars()
                .map(|c| {
                    if c.is_ascii() && !c.is_control() {
                        c
                    } else {
                        '?'
                    }
                })
                .collect(),
        )
    }

    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    NeedMore,
    Complete {
        header: ProxyHeader,
        consumed: usize,
    },
    Invalid(Invalid),
}

/// First bytes of input, escaped, for "not a header" messages.
fn quote(buf: &[u8]) -> String {
    let n = buf.len().min(16);
    format!("\"{}\"", buf[..n].escape_ascii())
}

/// Parses the header at the start of `buf` (see the module documentation).
pub fn parse(buf: &[u8]) -> Parse {
    match buf.first() {
        None => Parse::NeedMore,
        Some(b'\r') => parse_v2(buf),
        Some(b'P') => parse_v1(buf),
        Some(_) => Parse::Invalid(Invalid::new(format!(
            "not a PROXY protocol header (starts with {})",
            quote(buf)
        ))),
    }
}

fn parse_v1(buf: &[u8]) -> Parse {
    // A v1 header is one line: wait for its CRLF (within 107 bytes) before
    // parsing, since ppp reads a line cut after a space as a bad field.
    // Before the line is whole, only the "PROXY " prefix is checked.
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let line = match window.iter().position(|&c| c == b'\r') {
        Some(cr) if cr + 1 < buf.len() => &buf[..cr + 2],
        found => {
            let p = b"PROXY ";
            let n = buf.len().min(p.len());
            return if buf[..n] != p[..n] {
                Parse::Invalid(Invalid::new(format!(
                    "not a PROXY protocol header (starts with {})",
                    quote(buf)
                )))
            } else if found.is_none() && buf.len() >= V1_MAX_LEN {
                Parse::Invalid(Invalid::new(format!(
                    "PROXY v1 header longer than {V1_MAX_LEN} bytes"
                )))
            } else {
                Parse::NeedMore
            };
        }
    };
    match v1::Header::try_from(line) {
        Ok(h) => {
            let consumed = h.header.len();
            let addresses = match h.addresses {
                v1::Addresses::Unknown => None,
                v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                    SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                )),
                v1::Addresses::Tcp6(a) => Some((
                    canonical(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
                    canonical(SocketAddr::new(
                        IpAddr::V6(a.destination_address),
                        a.destination_port,
                    )),
                )),
            };
            Parse::Complete {
                header: ProxyHeader {
                    version: Version::V1,
                    command: Command::Proxy,
                    addresses,
                    tlvs: Tlvs::default(),
                },
                consumed,
            }
        }
        // A whole line that ppp still finds incomplete is a truncated header.
        Err(e) if ppp::PartialResult::is_incomplete(&e) => {
            Parse::Invalid(Invalid::new(format!("truncated PROXY v1 header: {e}")))
        }
        Err(v1::BinaryParseError::Parse(v1::ParseError::InvalidPrefix)) => {
            Parse::Invalid(Invalid::new(format!(
                "not a PROXY protocol header (starts with {})",
                quote(buf)
            )))
        }
        Err(e) => Parse::Invalid(Invalid::new(format!("bad PROXY v1 header: {e}"))),
    }
}

fn parse_v2(buf: &[u8]) -> Parse {
    let h = match v2::Header::try_from(buf) {
        Ok(h) => h,
        Err(v2::ParseError::Incomplete(_)) => return Parse::NeedMore,
        Err(v2::ParseError::Partial(_, length)) => {
            return if length > V2_MAX_PAYLOAD {
                Parse::Invalid(too_long(length))
            } else {
                Parse::NeedMore
            };
        }
        Err(v2::ParseError::Prefix) => {
            return Parse::Invalid(Invalid::new(format!(
                "not a PROXY protocol header (starts with {})",
                quote(buf)
            )))
        }
        Err(e) => return Parse::Invalid(Invalid::new(format!("bad PROXY v2 header: {e}"))),
    };
    if h.length() > V2_MAX_PAYLOAD {
        return Parse::Invalid(too_long(h.length()));
    }
    let consumed = h.len();
    let command = match h.command {
        v2::Command::Local => Command::Local,
        v2::Command::Proxy => Command::Proxy,
    };
    let addresses = match (command, h.addresses) {
        // LOCAL: addresses, if any, are to be ignored (§2.2).
        (Command::Local, _) => None,
        (_, v2::Addresses::IPv4(a)) => Some((
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        (_, v2::Addresses::IPv6(a)) => Some((
            canonical(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
            canonical(SocketAddr::new(
                IpAddr::V6(a.destination_address),
                a.destination_port,
            )),
        )),
        // UNSPEC and AF_UNIX: "the receiver must use the real endpoints".
        (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
    };
    // Addresses relayed for a TCP listener must describe a stream.
    if addresses.is_some() && h.protocol != v2::Protocol::Stream {
        return Parse::Invalid(Invalid::new(format!(
            "PROXY v2 header for a {:?} transport on a TCP listener",
            h.protocol
        )));
    }
    let tlvs = match tlvs_of(&h) {
        Ok(t) => t,
        Err(e) => return Parse::Invalid(e),
    };
    Parse::Complete {
        header: ProxyHeader {
            version: Version::V2,
            command,
            addresses,
            tlvs,
        },
        consumed,
    }
}

fn too_long(length: usize) -> Invalid {
    Invalid::new(format!(
        "PROXY v2 header of {} bytes is over the {MAX_LEN}-byte limit",
        V2_FIXED_LEN + length
    ))
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn bounded(name: &str, value: &[u8], max: usize) -> Result<TlvValue, Invalid> {
    if value.len() > max {
        return Err(Invalid::new(format!(
            "PROXY v2 {name} TLV of {} bytes is over the {max}-byte limit",
            value.len()
        )));
    }
    Ok(TlvValue::Bytes(value.to_vec()))
}

fn tlvs_of(h: &v2::Header<'_>) -> Result<Tlvs, Invalid> {
    let mut out = Tlvs::default();
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|e| Invalid::new(format!("bad PROXY v2 TLV: {e}")))?;
        let v: &[u8] = &tlv.value;
        match tlv.kind {
            tlv_type::ALPN => out.insert("alpn".into(), bounded("ALPN", v, MAX_ALPN)?),
            tlv_type::AUTHORITY => {
                out.insert("authority".into(), bounded("authority", v, MAX_AUTHORITY)?)
            }
            tlv_type::UNIQUE_ID => {
                out.insert("unique_id".into(), bounded("unique ID", v, MAX_UNIQUE_ID)?)
            }
            // Not verified (optional in the specification); not for Lua.
            tlv_type::CRC32C | tlv_type::NOOP => {}
            tlv_type::NETNS => out.insert("netns".into(), TlvValue::Bytes(v.to_vec())),
            tlv_type::SSL => ssl_tlvs(v, &mut out)?,
            kind => out.insert(format!("tlv_0x{kind:02x}"), TlvValue::Bytes(v.to_vec())),
        }
    }
    Ok(out)
}

/// PP2_TYPE_SSL: client flags (1 byte), verify result (4 bytes), sub-TLVs.
fn ssl_tlvs(v: &[u8], out: &mut Tlvs) -> Result<(), Invalid> {
    if v.len() < 5 {
        return Err(Invalid::new(format!(
            "PROXY v2 SSL TLV of {} bytes is shorter than 5",
            v.len()
        )));
    }
    out.insert("ssl_client".into(), TlvValue::Int(u32::from(v[0])));
    out.insert(
        "ssl_verify".into(),
        TlvValue::Int(u32::from_be_bytes([v[1], v[2], v[3], v[4]])),
    );
    for sub in v2::TypeLengthValues::from(&v[5..]) {
        let sub = sub.map_err(|e| Invalid::new(format!("bad PROXY v2 SSL sub-TLV: {e}")))?;
        let name = match sub.kind {
            tlv_type::SSL_VERSION => "ssl_version".to_string(),
            tlv_type::SSL_CN => "ssl_cn".to_string(),
            tlv_type::SSL_CIPHER => "ssl_cipher".to_string(),
            tlv_type::SSL_SIG_ALG => "ssl_sig_alg".to_string(),
            tlv_type::SSL_KEY_ALG => "ssl_key_alg".to_string(),
            kind => format!("ssl_0x{kind:02x}"),
        };
        out.insert(name, TlvValue::Bytes(sub.value.to_vec()));
    }
    Ok(())
}

/// A v1 header naming `source` -> `destination` over TCP; `PROXY UNKNOWN`
/// when the two are of different families (v1 cannot mix them).
pub fn build_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (s, d) = (canonical(source), canonical(destination));
    v1::Addresses::from((s, d)).to_string().into_bytes()
}

/// A v2 PROXY-command header naming `source` -> `destination` over TCP, with
/// `tlvs` (type, value) appended. Of mixed families, the IPv4 one is sent
/// IPv4-mapped so both fit the IPv6 form, as HAProxy does.
pub fn build_v2(
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: &[(u8, &[u8])],
) -> std::io::Result<Vec<u8>> {
    let (s, d) = (canonical(source), canonical(destination));
    let (s, d) = match (s, d) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (s, d),
        _ => (mapped(s), mapped(d)),
    };
    let mut b = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        v2::Addresses::from((s, d)),
    );
    for (kind, value) in tlvs {
        b = b.write_tlv(*kind, value)?;
    }
    b.build()
}

/// A v2 PROXY-command header without addresses (AF_UNSPEC): the receiver
/// uses the connection's real endpoints. For a destination we only know by
/// name (an upstream proxy resolved it).
pub fn build_v2_unspec() -> Vec<u8> {
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .expect("a 16-byte header always fits")
}

/// A v2 LOCAL header (no addresses): what a balancer's health check sends.
pub fn build_v2_local() -> Vec<u8> {
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Local,
        v2::Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .expect("a 16-byte header always fits")
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

/// `send_proxy_protocol = 'v1' | 'v2'`: which header to send a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    V1,
    V2,
}

impl SendProxy {
    /// `'v1'` / `'v2'`; the error lists what is accepted.
    pub fn parse(s: &str) -> Result<SendProxy, String> {
        match s {
            "v1" => Ok(SendProxy::V1),
            "v2" => Ok(SendProxy::V2),
            other => Err(format!(
                "must be 'v1' or 'v2', got '{}'",
                other.escape_debug()
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SendProxy::V1 => "v1",
            SendProxy::V2 => "v2",
        }
    }

    /// The header for `client` -> `destination`. `destination` is `None` when
    /// only a name is known (an upstream proxy resolved it): v1 then says
    /// UNKNOWN and v2 carries no addresses, so the receiver uses the real
    /// endpoints (what the specification prescribes for such cases).
    pub fn header(self, client: SocketAddr, destination: Option<SocketAddr>) -> Vec<u8> {
        match (self, destination) {
            (SendProxy::V1, Some(d)) => build_v1(client, d),
            (SendProxy::V1, None) => b"PROXY UNKNOWN\r\n".to_vec(),
            (SendProxy::V2, Some(d)) => {
                build_v2(client, d, &[]).expect("a header without TLVs always fits")
            }
            (SendProxy::V2, None) => build_v2_unspec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Parse::Complete { header, consumed } => (header, consumed),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    fn invalid(buf: &[u8]) -> String {
        match parse(buf) {
            Parse::Invalid(e) => e.to_string(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    /// Every strict prefix of a complete header asks for more bytes.
    fn prefixes_need_more(buf: &[u8], n: usize) {
        for k in 0..n {
            assert_eq!(parse(&buf[..k]), Parse::NeedMore, "prefix {k} of {n}");
        }
    }

    #[test]
    fn v1_tcp4_with_trailing_data() {
        let buf = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 1080\r\n\x05\x01\x00";
        let (h, n) = complete(buf);
        assert_eq!(n, buf.len() - 3);
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.source(), Some(sa("192.0.2.1:56324")));
        assert_eq!(h.destination(), Some(sa("198.51.100.2:1080")));
        assert!(h.tlvs.is_empty());
        prefixes_need_more(buf, n);
    }

    #[test]
    fn v1_tcp6_and_mapped() {
        let (h, _) = complete(b"PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 1 2\r\n");
        assert_eq!(h.source(), Some(sa("[2001:db8::1]:1")));
        assert_eq!(h.destination(), Some(sa("127.0.0.1:2")));
    }

    #[test]
    fn v1_unknown() {
        let (h, n) = complete(b"PROXY UNKNOWN\r\nrest");
        assert_eq!(n, 15);
        assert_eq!(h.addresses, None);
        let (h, _) = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(h.addresses, None);
    }

    #[test]
    fn v1_bad_input() {
        assert!(invalid(b"GET / HTTP/1.1\r\n").contains("not a PROXY protocol header"));
        assert!(invalid(b"\x05\x01\x00").contains("starts with \"\\x05\\x01\\x00\""));
        assert!(invalid(b"PROXY TCP5 1 2 3 4\r\n").contains("bad PROXY v1"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n").contains("port for the source"));
        assert!(invalid(b"PROXY TCP4 ::1 ::1 1 1\r\n").contains("source"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 1 x\r\n").contains("bad PROXY v1"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4\r\n").contains("truncated"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX").contains("bad PROXY v1"));
        assert!(invalid(b"PROXX").contains("not a PROXY"));
        assert!(invalid(b"PROXY\r\n").contains("PROXY v1"));
        // No CRLF within 107 bytes: refused, however many more arrive.
        let long = [b"PROXY TCP6 ".as_slice(), &[b'1'; 200]].concat();
        for n in [V1_MAX_LEN, 150, 211] {
            assert!(invalid(&long[..n]).contains("107"), "{n}");
        }
        assert_eq!(parse(&long[..V1_MAX_LEN - 1]), Parse::NeedMore);
        // Control bytes are escaped in the reason.
        let r = invalid(b"PROXY \x1b[31m\r\n");
        assert!(!r.chars().any(|c| c.is_control()), "{r:?}");
    }

    #[test]
    fn v2_roundtrip_ipv4_ipv6() {
        for (s, d) in [
            ("127.0.0.2:40000", "127.0.0.1:1080"),
            ("[2001:db8::5]:1", "[::1]:443"),
        ] {
            let buf = build_v2(sa(s), sa(d), &[]).unwrap();
            let (h, n) = complete(&buf);
            assert_eq!(n, buf.len());
            assert_eq!(h.version, Version::V2);
            assert_eq!(h.command, Command::Proxy);
            assert_eq!(h.addresses, Some((sa(s), sa(d))));
            prefixes_need_more(&buf, n);
        }
    }

    #[test]
    fn v2_mixed_families_are_mapped_and_read_back_canonical() {
        let buf = build_v2(sa("127.0.0.3:5"), sa("[::1]:6"), &[]).unwrap();
        assert_eq!(buf[13], 0x21, "AF_INET6 + STREAM");
        let (h, _) = complete(&buf);
        assert_eq!(h.source(), Some(sa("127.0.0.3:5")));
        assert_eq!(h.destination(), Some(sa("[::1]:6")));
    }

    #[test]
    fn v1_builder() {
        assert_eq!(
            build_v1(sa("127.0.0.2:1234"), sa("127.0.0.1:80")),
            b"PROXY TCP4 127.0.0.2 127.0.0.1 1234 80\r\n"
        );
        assert_eq!(
            build_v1(sa("[::1]:1"), sa("[2001:db8::1]:2")),
            b"PROXY TCP6 ::1 2001:db8::1 1 2\r\n"
        );
        assert_eq!(
            build_v1(sa("127.0.0.2:1234"), sa("[::1]:80")),
            b"PROXY UNKNOWN\r\n"
        );
        let b = build_v1(sa("[::ffff:10.0.0.1]:1"), sa("10.0.0.2:2"));
        assert_eq!(b, b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n");
        assert_eq!(complete(&b).0.source(), Some(sa("10.0.0.1:1")));
    }

    #[test]
    fn v2_local() {
        let buf = build_v2_local();
        assert_eq!(buf.len(), 16);
        let (h, n) = complete(&buf);
        assert_eq!(n, 16);
        assert_eq!(h.command, Command::Local);
        assert_eq!(h.addresses, None);
        // LOCAL with addresses: they are ignored.
        let mut b = build_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[]).unwrap();
        b[12] = 0x20;
        let (h, _) = complete(&b);
        assert_eq!((h.command, h.addresses), (Command::Local, None));
    }

    #[test]
    fn v2_tlvs() {
        let mut ssl = vec![0x07, 0, 0, 0, 0];
        ssl.extend([tlv_type::SSL_VERSION, 0, 7]);
        ssl.extend(b"TLSv1.3");
        ssl.extend([tlv_type::SSL_CN, 0, 6]);
        ssl.extend(b"client");
        let buf = build_v2(
            sa("10.1.2.3:9"),
            sa("10.0.0.1:1080"),
            &[
                (tlv_type::ALPN, b"h2"),
                (tlv_type::AUTHORITY, b"example.com"),
                (tlv_type::UNIQUE_ID, b"id-1"),
                (tlv_type::NOOP, b"\0\0"),
                (tlv_type::SSL, &ssl),
                (0xEA, b"\x01vpce-1"),
            ],
        )
        .unwrap();
        let (h, n) = complete(&buf);
        assert_eq!(n, buf.len());
        let t = &h.tlvs;
        let bytes = |k: &str| match t.get(k) {
            Some(TlvValue::Bytes(b)) => b.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(bytes("alpn"), b"h2");
        assert_eq!(bytes("authority"), b"example.com");
        assert_eq!(bytes("unique_id"), b"id-1");
        assert_eq!(bytes("ssl_version"), b"TLSv1.3");
        assert_eq!(bytes("ssl_cn"), b"client");
        assert_eq!(bytes("tlv_0xea"), b"\x01vpce-1");
        assert_eq!(t.get("ssl_client"), Some(&TlvValue::Int(7)));
        assert_eq!(t.get("ssl_verify"), Some(&TlvValue::Int(0)));
        assert_eq!(t.len(), 8, "{t:?}");
        prefixes_need_more(&buf, n);
    }

    #[test]
    fn v2_bad_input() {
        let good = build_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[]).unwrap();
        // Wrong signature byte.
        let mut b = good.clone();
        b[5] = b'X';
        assert!(invalid(&b).contains("not a PROXY protocol header"));
        // Version 1 in the binary form, unknown command, unknown family.
        let mut b = good.clone();
        b[12] = 0x11;
        assert!(invalid(&b).contains("version"));
        let mut b = good.clone();
        b[12] = 0x2F;
        assert!(invalid(&b).contains("command"));
        let mut b = good.clone();
        b[13] = 0x41;
        assert!(invalid(&b).contains("Address Family"));
        // Datagram addresses on a TCP listener.
        let mut b = good.clone();
        b[13] = 0x12;
        assert!(invalid(&b).contains("Datagram"));
        // Length too small for the addresses.
        let mut b = good.clone();
        b[15] = 4;
        assert!(invalid(&b).contains("address family"));
        // A TLV running past the end of the header.
        let mut b = build_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[(0x05, b"abc")]).unwrap();
        let len = b.len();
        b[len - 4] = 0x40;
        assert!(invalid(&b).contains("TLV"), "{}", invalid(&b));
        // Leftover bytes too short for a TLV.
        let mut b = good.clone();
        b.extend([0x01, 0x00]);
        b[15] += 2;
        assert!(invalid(&b).contains("leftover"), "{}", invalid(&b));
        // Truncated SSL TLV.
        let b = build_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[(0x20, b"\x01")]).unwrap();
        assert!(invalid(&b).contains("SSL"));
    }

    #[test]
    fn v2_oversized_refused_from_the_fixed_part() {
        // The length field alone condemns the header: no waiting for 64 KiB.
        let mut b = build_v2_local();
        b[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        assert!(invalid(&b).contains("limit"));
        // At the limit: accepted once complete (NOOP padding).
        let pad = vec![0u8; V2_MAX_PAYLOAD - 12 - 3];
        let b = build_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[(tlv_type::NOOP, &pad)]).unwrap();
        assert_eq!(b.len(), MAX_LEN);
        assert_eq!(complete(&b).1, MAX_LEN);
        assert_eq!(parse(&b[..MAX_LEN - 1]), Parse::NeedMore);
        // Oversized known TLVs.
        let id = vec![b'x'; MAX_UNIQUE_ID + 1];
        let b = build_v2(
            sa("1.2.3.4:1"),
            sa("5.6.7.8:2"),
            &[(tlv_type::UNIQUE_ID, &id)],
        )
        .unwrap();
        assert!(invalid(&b).contains("unique ID TLV of 129 bytes"));
        let a = vec![b'a'; MAX_AUTHORITY + 1];
        let b = build_v2(
            sa("1.2.3.4:1"),
            sa("5.6.7.8:2"),
            &[(tlv_type::AUTHORITY, &a)],
        )
        .unwrap();
        assert!(invalid(&b).contains("authority"));
    }

    #[test]
    fn v2_unspec_and_unix_use_real_endpoints() {
        let (h, n) = complete(&build_v2_unspec());
        assert_eq!((n, h.command, h.addresses), (16, Command::Proxy, None));
        let mut b = build_v2_local();
        b[12] = 0x21; // PROXY, UNSPEC family
        let (h, _) = complete(&b);
        assert_eq!((h.command, h.addresses), (Command::Proxy, None));
        let mut b = build_v2_local();
        b[12] = 0x21;
        b[13] = 0x31;
        b[14..16].copy_from_slice(&216u16.to_be_bytes());
        b.extend([0u8; 216]);
        assert_eq!(complete(&b).0.addresses, None);
    }
    #[test]
    fn send_proxy_headers_parse_back() {
        let c: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let d: SocketAddr = "127.0.0.1:80".parse().unwrap();
        for v in [SendProxy::V1, SendProxy::V2] {
            let Parse::Complete { header, .. } = parse(&v.header(c, Some(d))) else {
                panic!()
            };
            assert_eq!(header.addresses, Some((c, d)));
            let Parse::Complete { header, .. } = parse(&v.header(c, None)) else {
                panic!()
            };
            assert_eq!(header.addresses, None);
        }
        assert_eq!(SendProxy::parse("v2"), Ok(SendProxy::V2));
        assert!(SendProxy::parse("v3").unwrap_err().contains("'v1' or 'v2'"));
    }
}
