//! Destination ACLs: which `host:port` a session may reach.
//!
//! Pattern syntax (one string per rule):
//! - `host:port`          exact name (case-insensitive) or IP literal, one port
//! - `*.example.com:443`  any name strictly below example.com (not example.com itself)
//! - `example.com:*`      any port; a pattern without a port also means any port
//! - `10.0.0.0/8`         CIDR block (IPv4 or IPv6), any port
//! - `[2001:db8::/32]:25` IPv6 address or block with a port: brackets required
//! - `*:1024-65535`       any destination, a port range
//!
//! A request is checked against every layer (listener, then user): deny wins over
//! allow, and a layer with an empty allow list allows everything it does not deny.
//! Names match the name the client asked for; CIDR and IP rules match the
//! resolved addresses (and IP literals), so a name that resolves to a denied
//! address is denied. No I/O here: callers resolve and pass the addresses.

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPat {
    /// `*`: every name and every address.
    Any,
    /// `example.com` (lowercase, no trailing dot).
    Name(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    text: String,
    host: HostPat,
    ports: (u16, u16),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Rule {
    pub fn parse(s: &str) -> Result<Rule, String> {
        let text = s.trim();
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        let (host, port) = split(text)?;
        let ports = match port {
            None | Some("*") => (0, u16::MAX),
            Some(p) => parse_ports(p).map_err(|e| format!("'{text}': {e}"))?,
        };
        let host = parse_host(host).map_err(|e| format!("'{text}': {e}"))?;
        Ok(Rule {
            text: text.to_string(),
            host,
            ports,
        })
    }

    fn port_ok(&self, port: u16) -> bool {
        self.ports.0 <= port && port <= self.ports.1
    }

    /// Matches the requested name (never an IP literal: those go through `matches_ip`).
    fn matches_name(&self, name: &str, port: u16) -> bool {
        self.port_ok(port)
            && match &self.host {
                HostPat::Any => true,
                HostPat::Name(n) => n == name,
                HostPat::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
                HostPat::Net(_) => false,
            }
    }

    fn matches_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.port_ok(port)
            && match &self.host {
                HostPat::Any => true,
                HostPat::Net(n) => n.contains(&ip),
                HostPat::Name(_) | HostPat::Suffix(_) => false,
            }
    }
}

/// `[v6]:port`, `[v6]`, bare IPv6 (two or more colons: no port), `host:port`, `host`.
fn split(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("'{s}': missing ']'"))?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(format!("'{s}': expected ':port' after ']'")),
            },
        };
    }
    if s.matches(':').count() >= 2 {
        return Ok((s, None));
    }
    match s.split_once(':') {
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((s, None)),
    }
}

fn parse_ports(p: &str) -> Result<(u16, u16), String> {
    let one = |x: &str| {
        x.trim()
            .parse::<u16>()
            .map_err(|_| format!("'{x}' is not a port (0-65535 or '*')"))
    };
    match p.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("port range {a}-{b} is empty"));
            }
            Ok((a, b))
        }
        None => {
            let n = one(p)?;
            Ok((n, n))
        }
    }
}

fn parse_host(h: &str) -> Result<HostPat, String> {
    if h == "*" {
        return Ok(HostPat::Any);
    }
    if h.contains('/') {
        return h
            .parse::<IpNet>()
            .map(|n| HostPat::Net(canonical_net(n).trunc()))
            .map_err(|_| format!("'{h}' is not a CIDR block"));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(HostPat::Net(IpNet::from(canonical(ip))));
    }
    let (suffix, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    let name = normalize_name(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "'{h}' is not a host name, '*.domain', IP address or CIDR block"
        ));
    }
    Ok(if suffix {
        HostPat::Suffix(format!(".{name}"))
    } else {
        HostPat::Name(name)
    })
}

/// Lowercase without the trailing dot: `Example.COM.` and `example.com` are one name.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// `::ffff:127.0.0.1` is 127.0.0.1 on the wire: match it as such.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// `::ffff:a.b.c.d/N` (N >= 96) is the IPv4 block `a.b.c.d/(N-96)`: destinations
/// are matched in their IPv4 form ([`canonical`]), so the rule must be too or it
/// would never match anything.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// The IPv4 address an IPv6 address stands for on some path, for deny rules:
/// the NAT64 well-known prefix `64:ff9b::/96` (RFC 6052: a NAT64 gateway
/// dials the embedded address) and the deprecated IPv4-compatible `::a.b.c.d`
/// (RFC 4291; `::` and `::1` excluded, they are not IPv4). A deny rule that
/// matches the embedded address denies the IPv6 form too, so
/// `64:ff9b::127.0.0.1` is as private as `127.0.0.1`.
pub fn embedded_v4(ip: IpAddr) -> Option<std::net::Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let compat = s[..6] == [0; 6] && u32::from(low) > 1;
    (nat64 || compat).then_some(low)
}

/// One layer of allow and deny rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// Destinations denied unless `allow_private_destinations = true`: loopback,
/// the unspecified address (which reaches loopback on Linux), link-local
/// (with the 169.254.169.254 cloud metadata service) and AWS's IPv6 metadata.
pub const PRIVATE_DESTINATIONS: &[&str] = &[
    "127.0.0.0/8",
    "0.0.0.0/8",
    "::1/128",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    // RFC 6761: `localhost` and names below it are loopback whoever resolves
    // them; denied by name too, for names an upstream proxy resolves.
    "localhost",
    "*.localhost",
    // RFC 8215 local-use NAT64: translated by the site's own gateway into its
    // internal IPv4 networks, with an embedding we cannot know. (The
    // well-known 64:ff9b::/96 and ::a.b.c.d are judged by their embedded IPv4
    // address: see `embedded_v4`.)
    "64:ff9b:1::/48",
];

impl Permissions {
    /// Errors name the list and 1-based index, e.g. `allow[2]: '...' ...`.
    pub fn parse<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<Self, String> {
        let list = |name: &str, v: &[S]| -> Result<Vec<Rule>, String> {
            v.iter()
                .enumerate()
                .map(|(i, s)| {
                    Rule::parse(s.as_ref()).map_err(|e| format!("{name}[{}]: {e}", i + 1))
                })
                .collect()
        };
        Ok(Permissions {
            allow: list("allow", allow)?,
            deny: list("deny", deny)?,
        })
    }

    pub fn private_destinations() -> Self {
        Permissions {
            allow: Vec::new(),
            deny: PRIVATE_DESTINATIONS
                .iter()
                .map(|s| Rule::parse(s).expect("built-in pattern"))
                .collect(),
        }
    }

    /// Adds `other`'s rules to this layer.
    pub fn extend(&mut self, other: &Permissions) {
        self.allow.extend(other.allow.iter().cloned());
        self.deny.extend(other.deny.iter().cloned());
    }

    /// A deny rule that matches the name alone: checked before resolving, so a
    /// denied name is never even looked up.
    pub fn denies_name(&self, host: &str, port: u16) -> Option<&Rule> {
        if host.parse::<IpAddr>().is_ok() {
            return None;
        }
        let name = normalize_name(host);
        self.deny.iter().find(|r| r.matches_name(&name, port))
    }

    /// Full check of a destination: the name as requested (a name or an IP
    /// literal) and every address it resolved to. `addrs` may be empty when
    /// the name is resolved elsewhere (upstream proxy): then only name rules
    /// and `*` can allow it.
    pub fn check(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Result<(), String> {
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(canonical);
        let name = match literal {
            Some(_) => None,
            None => Some(normalize_name(host)),
        };
        // The name is the client's: shown escaped in the refusal message.
        let shown = crate::proto::text::client(host);
        self.check_parsed(&shown, literal, name.as_deref(), port, addrs)
    }

    /// `check` for a destination given as an IP address: the same rules and
    /// messages as `check(&ip.to_string(), ..)`, without formatting the address
    /// and parsing it back on every request.
    pub fn check_ip(&self, ip: IpAddr, port: u16, addrs: &[IpAddr]) -> Result<(), String> {
        self.check_parsed(&ip, Some(canonical(ip)), None, port, addrs)
    }

    fn check_parsed(
        &self,
        host: &dyn std::fmt::Display,
        literal: Option<IpAddr>,
        name: Option<&str>,
        port: u16,
        addrs: &[IpAddr],
    ) -> Result<(), String> {
        let mut ips: Vec<IpAddr> = addrs.iter().map(|a| canonical(*a)).collect();
        if let Some(ip) = literal {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let dest = || format!("{host}:{port}");
        if let Some(n) = name {
            if let Some(r) = self.deny.iter().find(|r| r.matches_name(n, port)) {
                return Err(format!("{} is denied by '{r}'", dest()));
            }
        }
        for ip in &ips {
            let denied = |r: &&Rule| {
                r.matches_ip(*ip, port)
                    || embedded_v4(*ip).is_some_and(|v4| r.matches_ip(IpAddr::V4(v4), port))
            };
            if let Some(r) = self.deny.iter().find(denied) {
                return Err(if literal == Some(*ip) {
                    format!("{} is denied by '{r}'", dest())
                } else {
                    format!("{} resolves to {ip}, denied by '{r}'", dest())
                });
            }
        }
        if self.allow.is_empty() {
            return Ok(());
        }
        if let Some(n) = name {
            if self.allow.iter().any(|r| r.matches_name(n, port)) {
                return Ok(());
            }
        }
        let all_allowed = !ips.is_empty()
            && ips
                .iter()
                .all(|ip| self.allow.iter().any(|r| r.matches_ip(*ip, port)));
        if all_allowed {
            Ok(())
        } else {
            Err(format!("{} matches no allow rule", dest()))
        }
    }
}

/// Every layer must allow (listener rules, then the user's).
pub fn check(
    layers: &[&Permissions],
    host: &str,
    port: u16,
    addrs: &[IpAddr],
) -> Result<(), String> {
    for p in layers {
        p.check(host, port, addrs)?;
    }
    Ok(())
}

/// `check` for a destination given as an IP address (see [`Permissions::check_ip`]).
pub fn check_ip(
    layers: &[&Permissions],
    ip: IpAddr,
    port: u16,
    addrs: &[IpAddr],
) -> Result<(), String> {
    for p in layers {
        p.check_ip(ip, port, addrs)?;
    }
    Ok(())
}

/// The first name-only deny among the layers (see [`Permissions::denies_name`]).
pub fn denies_name(layers: &[&Permissions], host: &str, port: u16) -> Option<String> {
    layers
        .iter()
        .find_map(|p| p.denies_name(host, port))
        .map(|r| {
            format!(
                "{}:{port} is denied by '{r}'",
                crate::proto::text::client(host)
            )
        })
}

/// `allowed_source_addresses` for BIND and policy-chosen source addresses.
/// `None` = any address the host lets us bind. Ports below 1024 never.
pub fn check_source(allowed: Option<&[IpNet]>, ip: IpAddr, port: u16) -> Result<(), String> {
    if port != 0 && port < 1024 {
        return Err(format!(
            "source port {port}: privileged ports (below 1024) are never allowed"
        ));
    }
    let ip = canonical(ip);
    match allowed {
        Some(nets) if !nets.iter().any(|n| n.contains(&ip)) => Err(format!(
            "source address {ip} is not in allowed_source_addresses"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check_ip` is `check` on the address's text, without the text.
    #[test]
    fn check_ip_matches_check_on_text() {
        let layers = [
            Permissions::private_destinations(),
            Permissions::parse(
                &["10.0.0.0/8:25", "*.example.com", "2001:db8::/32"],
                &["10.9.0.0/16"],
            )
            .unwrap(),
            Permissions::parse(&["*:443"], &[] as &[&str]).unwrap(),
            Permissions::default(),
        ];
        let ips = [
            "127.0.0.1",
            "10.1.2.3",
            "10.9.1.1",
            "192.0.2.1",
            "::1",
            "2001:db8::5",
            "::ffff:10.1.2.3",
            "0.0.0.0",
        ];
        for p in &layers {
            for ip in ips {
                let ip: IpAddr = ip.parse().unwrap();
                for port in [25, 443, 80] {
                    assert_eq!(
                        p.check_ip(ip, port, &[ip]),
                        p.check(&ip.to_string(), port, &[ip]),
                        "{ip}:{port} against {p:?}"
                    );
                }
            }
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn perms(allow: &[&str], deny: &[&str]) -> Permissions {
        Permissions::parse(allow, deny).unwrap()
    }

    fn ok(p: &Permissions, host: &str, port: u16, addrs: &[&str]) -> bool {
        let a: Vec<IpAddr> = addrs.iter().map(|s| ip(s)).collect();
        p.check(host, port, &a).is_ok()
    }

    #[test]
    fn parse_forms() {
        let cases: &[(&str, HostPat, (u16, u16))] = &[
            (
                "example.com:443",
                HostPat::Name("example.com".into()),
                (443, 443),
            ),
            (
                "Example.COM.:25",
                HostPat::Name("example.com".into()),
                (25, 25),
            ),
            (
                "*.example.com:443",
                HostPat::Suffix(".example.com".into()),
                (443, 443),
            ),
            (
                "example.com:*",
                HostPat::Name("example.com".into()),
                (0, 65535),
            ),
            (
                "example.com",
                HostPat::Name("example.com".into()),
                (0, 65535),
            ),
            (
                "10.0.0.0/8",
                HostPat::Net("10.0.0.0/8".parse().unwrap()),
                (0, 65535),
            ),
            (
                "10.1.2.3/8:25",
                HostPat::Net("10.0.0.0/8".parse().unwrap()),
                (25, 25),
            ),
            (
                "[2001:db8::/32]:25",
                HostPat::Net("2001:db8::/32".parse().unwrap()),
                (25, 25),
            ),
            (
                "[2001:db8::1]",
                HostPat::Net("2001:db8::1/128".parse().unwrap()),
                (0, 65535),
            ),
            (
                "2001:db8::/32",
                HostPat::Net("2001:db8::/32".parse().unwrap()),
                (0, 65535),
            ),
            ("::1", HostPat::Net("::1/128".parse().unwrap()), (0, 65535)),
            ("*:1024-65535", HostPat::Any, (1024, 65535)),
            ("*", HostPat::Any, (0, 65535)),
            (
                "192.0.2.7:80",
                HostPat::Net("192.0.2.7/32".parse().unwrap()),
                (80, 80),
            ),
            (
                "::ffff:10.0.0.1",
                HostPat::Net("10.0.0.1/32".parse().unwrap()),
                (0, 65535),
            ),
            (
                "  mx_1.example.com:25 ",
                HostPat::Name("mx_1.example.com".into()),
                (25, 25),
            ),
        ];
        for (s, host, ports) in cases {
            let r = Rule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(&r.host, host, "{s}");
            assert_eq!(&r.ports, ports, "{s}");
        }
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "",
            "example.com:",
            "example.com:http",
            "example.com:70000",
            "*:2000-1000",
            "[2001:db8::/32",
            "[2001:db8::1]25",
            "10.0.0.0/33",
            "exa mple.com",
            "*.",
            "a..b",
            "*.*.example.com",
            "10.0.0.0/8:1-2-3",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad:?} should not parse");
        }
        let e = Permissions::parse(&["ok.com", "bad:port"], &[]).unwrap_err();
        assert!(e.starts_with("allow[2]: "), "{e}");
        let e = Permissions::parse(&[], &["ok.com:25", "ok.com:x"]).unwrap_err();
        assert!(e.starts_with("deny[2]: 'ok.com:x'"), "{e}");
    }

    #[test]
    fn empty_allows_everything() {
        let p = Permissions::default();
        assert!(ok(&p, "example.com", 443, &["93.184.216.34"]));
        assert!(ok(&p, "127.0.0.1", 80, &[]));
    }

    #[test]
    fn exact_name_and_port() {
        let p = perms(&["example.com:443"], &[]);
        assert!(ok(&p, "example.com", 443, &["192.0.2.1"]));
        assert!(ok(&p, "EXAMPLE.com.", 443, &["192.0.2.1"]));
        assert!(!ok(&p, "example.com", 80, &["192.0.2.1"]));
        assert!(!ok(&p, "www.example.com", 443, &["192.0.2.1"]));
        assert!(!ok(&p, "192.0.2.1", 443, &[]));
    }

    #[test]
    fn wildcard_suffix() {
        let p = perms(&["*.example.com:443"], &[]);
        assert!(ok(&p, "a.example.com", 443, &[]));
        assert!(ok(&p, "a.b.example.com", 443, &[]));
        assert!(!ok(&p, "example.com", 443, &[]));
        assert!(!ok(&p, "badexample.com", 443, &[]));
        assert!(!ok(&p, "a.example.com", 80, &[]));
    }

    #[test]
    fn any_port() {
        let p = perms(&["example.com:*"], &[]);
        assert!(ok(&p, "example.com", 1, &[]));
        assert!(ok(&p, "example.com", 65535, &[]));
        assert!(!ok(&p, "example.org", 1, &[]));
    }

    #[test]
    fn cidr_matches_literals_and_resolved() {
        let p = perms(&["10.0.0.0/8"], &[]);
        assert!(ok(&p, "10.1.2.3", 25, &[]));
        assert!(ok(&p, "internal.example", 25, &["10.9.9.9"]));
        // Every resolved address must be allowed.
        assert!(!ok(&p, "mixed.example", 25, &["10.9.9.9", "192.0.2.1"]));
        // A name with no known addresses cannot be allowed by a CIDR rule.
        assert!(!ok(&p, "internal.example", 25, &[]));
        assert!(!ok(&p, "11.0.0.1", 25, &[]));
        assert!(ok(&p, "::ffff:10.0.0.1", 25, &[]));
    }

    #[test]
    fn ipv6_cidr_with_port() {
        let p = perms(&["[2001:db8::/32]:25"], &[]);
        assert!(ok(&p, "2001:db8::25", 25, &[]));
        assert!(ok(&p, "[2001:db8:ffff::1]", 25, &[]));
        assert!(!ok(&p, "2001:db8::25", 587, &[]));
        assert!(!ok(&p, "2001:db9::25", 25, &[]));
        assert!(ok(&p, "mx.example", 25, &["2001:db8::1"]));
    }

    #[test]
    fn port_ranges() {
        let p = perms(&["*:1024-65535"], &[]);
        assert!(ok(&p, "example.com", 1024, &[]));
        assert!(ok(&p, "192.0.2.1", 65535, &[]));
        assert!(!ok(&p, "example.com", 1023, &[]));
        assert!(!ok(&p, "192.0.2.1", 22, &[]));
    }

    #[test]
    fn deny_wins() {
        let p = perms(&["*"], &["*.internal.example:*", "10.0.0.0/8"]);
        assert!(ok(&p, "example.com", 443, &["192.0.2.1"]));
        assert!(!ok(&p, "db.internal.example", 5432, &["192.0.2.9"]));
        assert!(!ok(&p, "10.0.0.1", 443, &[]));
        let p = perms(&["example.com:443"], &["example.com:443"]);
        assert!(!ok(&p, "example.com", 443, &[]));
    }

    #[test]
    fn deny_on_resolved_address() {
        let p = Permissions::private_destinations();
        // DNS rebinding: a harmless-looking name that resolves to loopback.
        let e = p
            .check("rebind.example", 80, &[ip("192.0.2.1"), ip("127.0.0.1")])
            .unwrap_err();
        assert!(e.contains("resolves to 127.0.0.1"), "{e}");
        assert!(!ok(&p, "localhost", 80, &["::1"]));
        assert!(!ok(&p, "169.254.169.254", 80, &[]));
        assert!(!ok(&p, "169.254.1.1", 80, &[]));
        assert!(!ok(&p, "0.0.0.0", 80, &[]));
        assert!(!ok(&p, "::", 80, &[]));
        assert!(!ok(&p, "fe80::1", 80, &[]));
        assert!(!ok(&p, "::ffff:127.0.0.1", 80, &[]));
        assert!(!ok(&p, "x", 80, &["::ffff:169.254.169.254"]));
        assert!(ok(&p, "example.com", 443, &["192.0.2.1", "2001:db8::1"]));
        assert!(ok(&p, "10.0.0.1", 25, &[]));
    }

    #[test]
    fn mapped_cidr_rules_are_ipv4_rules() {
        let r = Rule::parse("::ffff:127.0.0.0/104").unwrap();
        assert_eq!(r.host, HostPat::Net("127.0.0.0/8".parse().unwrap()));
        let r = Rule::parse("[::ffff:10.1.2.3/120]:25").unwrap();
        assert_eq!(r.host, HostPat::Net("10.1.2.0/24".parse().unwrap()));
        let r = Rule::parse("::ffff:0:0/96").unwrap();
        assert_eq!(r.host, HostPat::Net("0.0.0.0/0".parse().unwrap()));
        let p = perms(&[], &["::ffff:127.0.0.0/104"]);
        assert!(!ok(&p, "127.0.0.1", 80, &[]));
        assert!(!ok(&p, "::ffff:127.0.0.1", 80, &[]));
        assert!(!ok(&p, "localhost", 80, &["127.0.0.1"]));
        assert!(ok(&p, "192.0.2.1", 80, &[]));
        // Other IPv6 blocks are untouched.
        let r = Rule::parse("2001:db8::/96").unwrap();
        assert_eq!(r.host, HostPat::Net("2001:db8::/96".parse().unwrap()));
    }

    #[test]
    fn embedded_private_ipv4_is_private() {
        let p = Permissions::private_destinations();
        for bad in [
            "64:ff9b::7f00:1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::169.254.169.254",
            "::127.0.0.1",
            "::169.254.169.254",
            "::0.0.0.2",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:ffff::1",
        ] {
            assert!(!ok(&p, bad, 80, &[]), "{bad}");
            assert!(!ok(&p, "nat64.example", 80, &[bad]), "{bad}");
        }
        assert!(ok(&p, "64:ff9b::192.0.2.1", 80, &[]));
        assert!(ok(&p, "::192.0.2.1", 80, &[]));
        assert!(ok(&p, "2001:db8::7f00:1", 80, &[]));
        // Listener rules: denying an IPv4 block denies its NAT64 form.
        let p = perms(&[], &["10.0.0.0/8"]);
        assert!(!ok(&p, "64:ff9b::10.0.0.1", 80, &[]));
        assert_eq!(embedded_v4(ip("::1")), None);
        assert_eq!(embedded_v4(ip("::")), None);
    }

    #[test]
    fn denies_name_before_resolving() {
        let p = perms(&[], &["*.corp.example", "secret.example:22"]);
        assert!(p.denies_name("a.corp.example", 80).is_some());
        assert!(p.denies_name("secret.example", 22).is_some());
        assert!(p.denies_name("secret.example", 23).is_none());
        assert!(p.denies_name("10.0.0.1", 80).is_none());
    }

    #[test]
    fn layers_must_all_allow() {
        let listener = Permissions::private_destinations();
        let user = perms(&["*.example.com:443"], &[]);
        let layers = [&listener, &user];
        assert!(check(&layers, "www.example.com", 443, &[ip("192.0.2.1")]).is_ok());
        assert!(check(&layers, "www.example.com", 443, &[ip("127.0.0.1")]).is_err());
        assert!(check(&layers, "www.example.org", 443, &[ip("192.0.2.1")]).is_err());
        assert!(denies_name(&layers, "www.example.com", 443).is_none());
    }

    #[test]
    fn source_addresses() {
        assert!(check_source(None, ip("10.0.0.2"), 0).is_ok());
        assert!(check_source(None, ip("10.0.0.2"), 80).is_err());
        assert!(check_source(None, ip("10.0.0.2"), 1024).is_ok());
        let nets: Vec<IpNet> = vec!["127.0.0.2/32".parse().unwrap()];
        assert!(check_source(Some(&nets), ip("127.0.0.2"), 0).is_ok());
        assert!(check_source(Some(&nets), ip("::ffff:127.0.0.2"), 0).is_ok());
        assert!(check_source(Some(&nets), ip("127.0.0.3"), 0).is_err());
        assert!(check_source(Some(&[]), ip("127.0.0.2"), 0).is_err());
    }
}
