//! SOCKS5 (RFC 1928) and username/password (RFC 1929) wire codec.
//!
//! Pure: bytes in, typed values out. No I/O, no allocation beyond the values
//! themselves. Every `parse_*` function looks at a buffer that may hold a
//! partial frame and answers one of:
//! - `Ok(None)`: need more bytes;
//! - `Ok(Some((value, consumed)))`: a whole frame, `consumed` bytes long;
//! - `Err(CodecError)`: the bytes can never form a valid frame.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const VERSION: u8 = 0x05;
pub const AUTH_VERSION: u8 = 0x01;

/// Authentication method codes (RFC 1928 §3).
pub mod method {
    pub const NO_AUTH: u8 = 0x00;
    pub const GSSAPI: u8 = 0x01;
    pub const USERNAME_PASSWORD: u8 = 0x02;
    pub const NO_ACCEPTABLE: u8 = 0xFF;
}

/// Reply codes (RFC 1928 §6).
pub mod reply {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// Longest frames the server accepts: greeting 2+255, auth 3+255+255, request 7+255.
pub const MAX_FRAME: usize = 513;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// First byte was not 0x05 (or 0x01 for RFC 1929).
    BadVersion(u8),
    /// RFC 1929 frame with a zero-length username.
    EmptyUsername,
    /// Request with an unknown command byte.
    UnknownCommand(u8),
    /// Request with an unknown address type byte.
    UnknownAddressType(u8),
    /// Domain name of length zero, not valid UTF-8, or with control characters.
    BadDomain,
    /// Reply frame (client side) with a reserved byte or field out of range.
    Malformed(&'static str),
}

impl CodecError {
    /// The reply code a server sends before closing, when the RFC defines one.
    pub fn reply_code(&self) -> Option<u8> {
        match self {
            CodecError::UnknownCommand(_) => Some(reply::COMMAND_NOT_SUPPORTED),
            CodecError::UnknownAddressType(_) => Some(reply::ADDRESS_TYPE_NOT_SUPPORTED),
            CodecError::BadDomain => Some(reply::GENERAL_FAILURE),
            _ => None,
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::BadVersion(v) => write!(f, "unsupported protocol version 0x{v:02x}"),
            CodecError::EmptyUsername => write!(f, "empty username in RFC 1929 request"),
            CodecError::UnknownCommand(c) => write!(f, "unknown command 0x{c:02x}"),
            CodecError::UnknownAddressType(a) => write!(f, "unknown address type 0x{a:02x}"),
            CodecError::BadDomain => {
                write!(f, "empty, non-UTF-8 or control characters in domain name")
            }
            CodecError::Malformed(what) => write!(f, "malformed frame: {what}"),
        }
    }
}

impl std::error::Error for CodecError {}

pub type Parsed<T> = Result<Option<(T, usize)>, CodecError>;

/// Client greeting: the methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub methods: Vec<u8>,
}

impl Greeting {
    pub fn offers(&self, method: u8) -> bool {
        self.methods.contains(&method)
    }
}

pub fn parse_greeting(buf: &[u8]) -> Parsed<Greeting> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(CodecError::BadVersion(ver));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let end = 2 + n as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Greeting {
            methods: buf[2..end].to_vec(),
        },
        end,
    )))
}

pub fn encode_greeting(methods: &[u8], out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(methods.len() as u8);
    out.extend_from_slice(methods);
}

pub fn encode_method_selection(method: u8) -> [u8; 2] {
    [VERSION, method]
}

pub fn parse_method_selection(buf: &[u8]) -> Parsed<u8> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(CodecError::BadVersion(buf[0]));
    }
    Ok(Some((buf[1], 2)))
}

/// RFC 1929 credentials. Raw bytes: the RFC does not restrict the charset.
#[derive(Clone, PartialEq, Eq)]
pub struct UserPass {
    pub username: Vec<u8>,
    pub password: Vec<u8>,
}

impl fmt::Debug for UserPass {
    // Never let a password reach a log line, whatever the level.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPass")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<redacted>")
            .finish()
    }
}

pub fn parse_userpass(buf: &[u8]) -> Parsed<UserPass> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != AUTH_VERSION {
        return Err(CodecError::BadVersion(ver));
    }
    let Some(&ulen) = buf.get(1) else {
        return Ok(None);
    };
    if ulen == 0 {
        return Err(CodecError::EmptyUsername);
    }
    let ulen = ulen as usize;
    let Some(&plen) = buf.get(2 + ulen) else {
        return Ok(None);
    };
    let end = 3 + ulen + plen as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        UserPass {
            username: buf[2..2 + ulen].to_vec(),
            password: buf[3 + ulen..end].to_vec(),
        },
        end,
    )))
}

/// Encodes an RFC 1929 request. Callers validate lengths (1..=255, 0..=255) first.
pub fn encode_userpass(username: &[u8], password: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!username.is_empty() && username.len() <= 255 && password.len() <= 255);
    out.push(AUTH_VERSION);
    out.push(username.len() as u8);
    out.extend_from_slice(username);
    out.push(password.len() as u8);
    out.extend_from_slice(password);
}

pub fn encode_auth_status(success: bool) -> [u8; 2] {
    [AUTH_VERSION, if success { 0x00 } else { 0x01 }]
}

pub fn parse_auth_status(buf: &[u8]) -> Parsed<bool> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] != AUTH_VERSION {
        return Err(CodecError::BadVersion(buf[0]));
    }
    Ok(Some((buf[1] == 0, 2)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
}

impl Command {
    fn from_byte(b: u8) -> Result<Self, CodecError> {
        match b {
            0x01 => Ok(Command::Connect),
            0x02 => Ok(Command::Bind),
            0x03 => Ok(Command::UdpAssociate),
            other => Err(CodecError::UnknownCommand(other)),
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Command::Connect => 0x01,
            Command::Bind => 0x02,
            Command::UdpAssociate => 0x03,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "connect",
            Command::Bind => "bind",
            Command::UdpAssociate => "udp_associate",
        }
    }
}

/// A destination as the client named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    Ip(SocketAddr),
    Domain(String, u16),
}

impl TargetAddr {
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Domain(_, p) => *p,
        }
    }

    pub fn host(&self) -> String {
        match self {
            TargetAddr::Ip(a) => a.ip().to_string(),
            TargetAddr::Domain(d, _) => d.clone(),
        }
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            // The name is the client's: escaped, so it can go in log lines.
            TargetAddr::Domain(d, p) => write!(f, "{}:{p}", crate::proto::text::client(d)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub target: TargetAddr,
}

/// Parses an address (ATYP, ADDR, PORT) starting at `buf[0]` = ATYP. Shared by
/// TCP requests and UDP datagram headers (`proto::socks5_udp`).
pub(crate) fn parse_addr(buf: &[u8]) -> Parsed<TargetAddr> {
    let Some(&atyp) = buf.first() else {
        return Ok(None);
    };
    let (addr_end, make): (usize, fn(&[u8], u16) -> Result<TargetAddr, CodecError>) = match atyp {
        ATYP_IPV4 => (5, |b, port| {
            let ip = Ipv4Addr::new(b[1], b[2], b[3], b[4]);
            Ok(TargetAddr::Ip(SocketAddr::new(IpAddr::V4(ip), port)))
        }),
        ATYP_IPV6 => (17, |b, port| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..17]);
            Ok(TargetAddr::Ip(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(o)),
                port,
            )))
        }),
        ATYP_DOMAIN => {
            let Some(&len) = buf.get(1) else {
                return Ok(None);
            };
            if len == 0 {
                return Err(CodecError::BadDomain);
            }
            (2 + len as usize, |b, port| {
                let name = std::str::from_utf8(&b[2..]).map_err(|_| CodecError::BadDomain)?;
                // No host name has them, and the name goes into log lines and
                // Lua: a CR/LF or escape in it would forge or garble both.
                if name.chars().any(char::is_control) {
                    return Err(CodecError::BadDomain);
                }
                Ok(TargetAddr::Domain(name.to_string(), port))
            })
        }
        other => return Err(CodecError::UnknownAddressType(other)),
    };
    let end = addr_end + 2;
    if buf.len() < end {
        return Ok(None);
    }
    let port = u16::from_be_bytes([buf[addr_end], buf[addr_end + 1]]);
    Ok(Some((make(&buf[..addr_end], port)?, end)))
}

fn encode_addr(addr: &TargetAddr, out: &mut Vec<u8>) {
    match addr {
        TargetAddr::Ip(SocketAddr::V4(a)) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.ip().octets());
        }
        TargetAddr::Ip(SocketAddr::V6(a)) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.ip().octets());
        }
        TargetAddr::Domain(d, _) => {
            debug_assert!(!d.is_empty() && d.len() <= 255);
            out.push(ATYP_DOMAIN);
            out.push(d.len() as u8);
            out.extend_from_slice(d.as_bytes());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    if buf.len() < 4 {
        // Check what we can early so garbage fails fast instead of waiting.
        if let Some(&v) = buf.first() {
            if v != VERSION {
                return Err(CodecError::BadVersion(v));
            }
        }
        if let Some(&c) = buf.get(1) {
            Command::from_byte(c)?;
        }
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(CodecError::BadVersion(buf[0]));
    }
    let command = Command::from_byte(buf[1])?;
    // buf[2] is RSV; RFC says 0x00, but real clients are not all strict, so ignore it.
    match parse_addr(&buf[3..])? {
        None => Ok(None),
        Some((target, n)) => Ok(Some((Request { command, target }, 3 + n))),
    }
}

pub fn encode_request(req: &Request, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, req.command.to_byte(), 0x00]);
    encode_addr(&req.target, out);
}

/// A server reply: code plus the bound address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u8,
    pub bound: TargetAddr,
}

impl Reply {
    pub fn failure(code: u8) -> Self {
        Reply {
            code,
            bound: TargetAddr::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
        }
    }

    pub fn success(bound: SocketAddr) -> Self {
        Reply {
            code: reply::SUCCEEDED,
            bound: TargetAddr::Ip(bound),
        }
    }
}

pub fn encode_reply(r: &Reply, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, r.code, 0x00]);
    encode_addr(&r.bound, out);
}

pub fn parse_reply(buf: &[u8]) -> Parsed<Reply> {
    if buf.len() < 4 {
        if let Some(&v) = buf.first() {
            if v != VERSION {
                return Err(CodecError::BadVersion(v));
            }
        }
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(CodecError::BadVersion(buf[0]));
    }
    let code = buf[1];
    match parse_addr(&buf[3..])? {
        None => Ok(None),
        Some((bound, n)) => Ok(Some((Reply { code, bound }, 3 + n))),
    }
}

/// Human text for a reply code, used in client-side error messages.
pub fn reply_text(code: u8) -> &'static str {
    match code {
        reply::SUCCEEDED => "succeeded",
        reply::GENERAL_FAILURE => "general failure",
        reply::NOT_ALLOWED => "connection not allowed by ruleset",
        reply::NETWORK_UNREACHABLE => "network unreachable",
        reply::HOST_UNREACHABLE => "host unreachable",
        reply::CONNECTION_REFUSED => "connection refused by destination",
        reply::TTL_EXPIRED => "TTL expired (timeout)",
        reply::COMMAND_NOT_SUPPORTED => "command not supported",
        reply::ADDRESS_TYPE_NOT_SUPPORTED => "address type not supported",
        _ => "unknown reply code",
    }
}

/// Maps a connect error to the RFC 1928 reply code a client should see.
pub fn reply_code_for_io_error(err: &std::io::Error) -> u8 {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => reply::CONNECTION_REFUSED,
        Some(libc::ENETUNREACH) | Some(libc::ENETDOWN) => reply::NETWORK_UNREACHABLE,
        Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => reply::HOST_UNREACHABLE,
        Some(libc::ETIMEDOUT) => reply::TTL_EXPIRED,
        _ if err.kind() == std::io::ErrorKind::TimedOut => reply::TTL_EXPIRED,
        _ => reply::GENERAL_FAILURE,
    }
}

/// Length of the reply frame at the start of `buf`, once its first 5 bytes are in
/// (`Ok(None)` before). Lets a client read exactly one reply and never a byte of
/// the payload behind it (an SMTP banner may follow a CONNECT reply at once).
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    if let Some(&v) = buf.first() {
        if v != VERSION {
            return Err(CodecError::BadVersion(v));
        }
    }
    if buf.len() < 5 {
        return Ok(None);
    }
    let addr = match buf[3] {
        ATYP_IPV4 => 4,
        ATYP_IPV6 => 16,
        ATYP_DOMAIN if buf[4] == 0 => return Err(CodecError::BadDomain),
        ATYP_DOMAIN => 1 + buf[4] as usize,
        other => return Err(CodecError::UnknownAddressType(other)),
    };
    Ok(Some(4 + addr + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole<T: fmt::Debug>(p: Parsed<T>) -> (T, usize) {
        p.expect("error").expect("incomplete")
    }

    #[test]
    fn greeting_whole_and_partial() {
        let g = [5, 2, 0, 2];
        assert_eq!(
            whole(parse_greeting(&g)),
            (
                Greeting {
                    methods: vec![0, 2]
                },
                4
            )
        );
        for n in 0..g.len() {
            assert_eq!(parse_greeting(&g[..n]), Ok(None), "prefix {n}");
        }
        // Trailing bytes (pipelined next frame) are left unconsumed.
        assert_eq!(whole(parse_greeting(&[5, 1, 0, 1, 2, 3])).1, 3);
    }

    #[test]
    fn greeting_zero_methods_is_valid_but_offers_nothing() {
        let (g, n) = whole(parse_greeting(&[5, 0]));
        assert_eq!(n, 2);
        assert!(!g.offers(method::NO_AUTH));
    }

    #[test]
    fn greeting_bad_version() {
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(CodecError::BadVersion(4)));
        // HTTP request line: fails at first byte.
        assert_eq!(parse_greeting(b"G"), Err(CodecError::BadVersion(b'G')));
    }

    #[test]
    fn greeting_max_methods() {
        let mut g = vec![5, 255];
        g.extend(0..255u8);
        let (gr, n) = whole(parse_greeting(&g));
        assert_eq!(n, 257);
        assert_eq!(gr.methods.len(), 255);
    }

    #[test]
    fn userpass_roundtrip() {
        let mut buf = Vec::new();
        encode_userpass(b"alice", b"s3cret", &mut buf);
        let (up, n) = whole(parse_userpass(&buf));
        assert_eq!(n, buf.len());
        assert_eq!(up.username, b"alice");
        assert_eq!(up.password, b"s3cret");
        for k in 0..buf.len() {
            assert_eq!(parse_userpass(&buf[..k]), Ok(None), "prefix {k}");
        }
    }

    #[test]
    fn userpass_empty_password_allowed() {
        let (up, n) = whole(parse_userpass(&[1, 1, b'a', 0]));
        assert_eq!(n, 4);
        assert!(up.password.is_empty());
    }

    #[test]
    fn userpass_errors() {
        assert_eq!(
            parse_userpass(&[5, 1, b'a', 0]),
            Err(CodecError::BadVersion(5))
        );
        assert_eq!(parse_userpass(&[1, 0, 0]), Err(CodecError::EmptyUsername));
        assert_eq!(parse_userpass(&[1, 0]), Err(CodecError::EmptyUsername));
    }

    #[test]
    fn userpass_debug_redacts_password() {
        let up = UserPass {
            username: b"bob".to_vec(),
            password: b"hunter2".to_vec(),
        };
        let s = format!("{up:?}");
        assert!(s.contains("bob"));
        assert!(!s.contains("hunter2"));
    }

    #[test]
    fn request_ipv4_ipv6_domain_roundtrip() {
        let targets = [
            TargetAddr::Ip("10.1.2.3:25".parse().unwrap()),
            TargetAddr::Ip("[2001:db8::1]:443".parse().unwrap()),
            TargetAddr::Domain("example.com".into(), 80),
        ];
        for t in targets {
            for command in [Command::Connect, Command::Bind, Command::UdpAssociate] {
                let req = Request {
                    command,
                    target: t.clone(),
                };
                let mut buf = Vec::new();
                encode_request(&req, &mut buf);
                let (got, n) = whole(parse_request(&buf));
                assert_eq!(got, req);
                assert_eq!(n, buf.len());
                for k in 0..buf.len() {
                    assert_eq!(parse_request(&buf[..k]), Ok(None), "{t} prefix {k}");
                }
            }
        }
    }

    #[test]
    fn request_errors() {
        assert_eq!(
            parse_request(&[4, 1, 0, 1, 1, 2, 3, 4, 0, 80]),
            Err(CodecError::BadVersion(4))
        );
        assert_eq!(parse_request(&[4]), Err(CodecError::BadVersion(4)));
        assert_eq!(
            parse_request(&[5, 9, 0, 1, 1, 2, 3, 4, 0, 80]),
            Err(CodecError::UnknownCommand(9))
        );
        assert_eq!(parse_request(&[5, 0]), Err(CodecError::UnknownCommand(0)));
        assert_eq!(
            parse_request(&[5, 1, 0, 7, 1, 2]),
            Err(CodecError::UnknownAddressType(7))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(CodecError::BadDomain)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80]),
            Err(CodecError::BadDomain)
        );
        // Found by fuzz/request: control characters would reach log lines as is.
        for name in [
            &b"a\nb"[..],
            b"a\rb",
            b"\x1b[2J",
            b"a\x00b",
            "a\u{85}b".as_bytes(),
        ] {
            let mut frame = vec![5, 1, 0, 3, name.len() as u8];
            frame.extend_from_slice(name);
            frame.extend_from_slice(&[0, 80]);
            assert_eq!(
                parse_request(&frame),
                Err(CodecError::BadDomain),
                "{name:?}"
            );
        }
        assert_eq!(
            CodecError::UnknownAddressType(7).reply_code(),
            Some(reply::ADDRESS_TYPE_NOT_SUPPORTED)
        );
        assert_eq!(
            CodecError::UnknownCommand(9).reply_code(),
            Some(reply::COMMAND_NOT_SUPPORTED)
        );
        assert_eq!(CodecError::BadVersion(4).reply_code(), None);
    }

    #[test]
    fn request_nonzero_reserved_byte_tolerated() {
        let (r, _) = whole(parse_request(&[5, 1, 7, 1, 127, 0, 0, 1, 0, 80]));
        assert_eq!(r.target, TargetAddr::Ip("127.0.0.1:80".parse().unwrap()));
    }

    #[test]
    fn reply_roundtrip() {
        for r in [
            Reply::success("127.0.0.2:40000".parse().unwrap()),
            Reply::success("[::1]:5".parse().unwrap()),
            Reply::failure(reply::CONNECTION_REFUSED),
        ] {
            let mut buf = Vec::new();
            encode_reply(&r, &mut buf);
            assert_eq!(whole(parse_reply(&buf)), (r.clone(), buf.len()));
            for k in 0..buf.len() {
                assert_eq!(parse_reply(&buf[..k]), Ok(None));
            }
        }
        assert_eq!(parse_reply(&[1, 0, 0, 1]), Err(CodecError::BadVersion(1)));
    }

    #[test]
    fn method_selection_and_auth_status() {
        assert_eq!(encode_method_selection(method::NO_ACCEPTABLE), [5, 0xff]);
        assert_eq!(whole(parse_method_selection(&[5, 2])), (2, 2));
        assert_eq!(parse_method_selection(&[5]), Ok(None));
        assert_eq!(encode_auth_status(false), [1, 1]);
        assert_eq!(whole(parse_auth_status(&[1, 0])), (true, 2));
        assert_eq!(whole(parse_auth_status(&[1, 1])), (false, 2));
    }

    #[test]
    fn io_errors_map_to_rfc_codes() {
        use std::io::Error;
        let code = |e| reply_code_for_io_error(&Error::from_raw_os_error(e));
        assert_eq!(code(libc::ECONNREFUSED), reply::CONNECTION_REFUSED);
        assert_eq!(code(libc::ENETUNREACH), reply::NETWORK_UNREACHABLE);
        assert_eq!(code(libc::EHOSTUNREACH), reply::HOST_UNREACHABLE);
        assert_eq!(code(libc::ETIMEDOUT), reply::TTL_EXPIRED);
        assert_eq!(code(libc::EACCES), reply::GENERAL_FAILURE);
    }

    #[test]
    fn max_frame_bound_holds() {
        let mut buf = Vec::new();
        encode_userpass(&[b'u'; 255], &[b'p'; 255], &mut buf);
        assert_eq!(buf.len(), MAX_FRAME);
    }

    #[test]
    fn reply_len_matches_encoded_replies() {
        for bound in [
            TargetAddr::Ip("10.1.2.3:25".parse().unwrap()),
            TargetAddr::Ip("[2001:db8::1]:587".parse().unwrap()),
            TargetAddr::Domain("mx.example.com".into(), 25),
        ] {
            let mut buf = Vec::new();
            encode_reply(&Reply { code: 0, bound }, &mut buf);
            let n = buf.len();
            buf.extend_from_slice(b"220 banner\r\n");
            assert_eq!(reply_len(&buf[..4]), Ok(None));
            assert_eq!(reply_len(&buf), Ok(Some(n)));
            assert_eq!(parse_reply(&buf).unwrap().unwrap().1, n);
        }
        assert_eq!(reply_len(&[4, 0, 0, 1, 0]), Err(CodecError::BadVersion(4)));
        assert_eq!(
            reply_len(&[5, 0, 0, 9, 0]),
            Err(CodecError::UnknownAddressType(9))
        );
    }
}
