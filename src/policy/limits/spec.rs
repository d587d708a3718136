//! `limits = {...}`: parsing into a plain-Rust [`LimitsSpec`].
//!
//! Both the Lua layer (listener defaults, AuthInfo tables) and `auth_http` JSON
//! replies convert their values into [`Raw`] first, so one parser decides what is
//! valid and every error names the key (`limits.bandwidth.up: ...`).
//!
//! Syntax:
//! - `max_sessions`: integer >= 1
//! - `connect_rate`: KumoMTA throttle syntax, `quantity/period[,max_burst=N]`;
//!   quantity may use `,` or `_` as digit separators (`1,000/hr`), period is
//!   `s|sec|second|m|min|minute|h|hr|hour|d|day`
//! - `bandwidth`: `'10 MB/s'`, `'100 Mbit/s'`, a number (bytes/s), or
//!   `{ up = ..., down = ... }` (either may be left out: that direction is free)
//! - `quota`: `'50 GB/day'`, period `hour|day|month` (UTC calendar windows)
//! - `scope`: `'local'` (default) or `'fleet'`

use std::fmt;
use std::time::Duration;

/// A value as handed over by Lua or JSON, before validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Int(i64),
    Num(f64),
    Str(String),
    Table(Vec<(String, Raw)>),
    /// Any other type, by name ("boolean", "array", "function"...), for the error.
    Other(&'static str),
}

impl Raw {
    /// From an `auth_http` JSON value.
    pub fn from_json(v: &serde_json::Value) -> Raw {
        use serde_json::Value as J;
        match v {
            J::Number(n) => match n.as_i64() {
                Some(i) => Raw::Int(i),
                None => Raw::Num(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Raw::Str(s.clone()),
            J::Object(m) => Raw::Table(
                m.iter()
                    .map(|(k, v)| (k.clone(), Raw::from_json(v)))
                    .collect(),
            ),
            J::Bool(_) => Raw::Other("boolean"),
            J::Null => Raw::Other("null"),
            J::Array(_) => Raw::Other("array"),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Raw::Int(_) | Raw::Num(_) => "number",
            Raw::Str(_) => "string",
            Raw::Table(_) => "table",
            Raw::Other(t) => t,
        }
    }
}

/// A refused `limits` value; `key` is the full path (`bandwidth.up`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsError {
    pub key: String,
    pub msg: String,
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "limits: {}", self.msg)
        } else {
            write!(f, "limits.{}: {}", self.key, self.msg)
        }
    }
}

impl std::error::Error for LimitsError {}

fn err(key: &str, msg: impl Into<String>) -> LimitsError {
    LimitsError {
        key: key.to_string(),
        msg: msg.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Local,
    Fleet,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Fleet => "fleet",
        }
    }
}

/// A GCRA rate: `limit` events per `period`, at most `burst()` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub period: Duration,
    pub max_burst: Option<u64>,
}

impl Rate {
    /// KumoMTA: max_burst defaults to the limit (the whole period's worth at once).
    pub fn burst(&self) -> u64 {
        self.max_burst.unwrap_or(self.limit)
    }
    /// Time one event "costs": period / limit.
    pub fn interval(&self) -> Duration {
        self.period / self.limit.min(u32::MAX as u64) as u32
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{}", self.limit, unit)?;
        if let Some(b) = self.max_burst {
            write!(f, ",max_burst={b}")?;
        }
        Ok(())
    }
}

/// Bytes per second in each direction; `None` = not shaped.
/// `up` is client -> remote, `down` is remote -> client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bandwidth {
    pub up: Option<u64>,
    pub down: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    Hour,
    Day,
    Month,
}

impl QuotaPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::Hour => "hour",
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        }
    }

    /// The UTC window containing `unix_secs`: (start, end) in Unix seconds.
    /// Hours and days are fixed lengths; months are calendar months.
    pub fn window(self, unix_secs: u64) -> (u64, u64) {
        match self {
            QuotaPeriod::Hour => {
                let s = unix_secs - unix_secs % 3600;
                (s, s + 3600)
            }
            QuotaPeriod::Day => {
                let s = unix_secs - unix_secs % 86400;
                (s, s + 86400)
            }
            QuotaPeriod::Month => {
                let (y, m, _) = civil_from_days((unix_secs / 86400) as i64);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let start = days_from_civil(y, m, 1) as u64 * 86400;
                let end = days_from_civil(ny, nm, 1) as u64 * 86400;
                (start, end)
            }
        }
    }
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub bytes: u64,
    pub period: QuotaPeriod,
}

impl Quota {
    /// Bytes a session takes from the shared count at a time. Large enough that
    /// a busy session asks rarely, small enough that what live sessions hold
    /// unused (at most ~1.5 chunks each) is a small share of the quota.
    pub fn chunk(&self) -> u64 {
        (self.bytes / 256)
            .clamp(64 * 1024, 4 * 1024 * 1024)
            .min(self.bytes)
    }
}

/// Parsed `limits`. All `None`: no limit of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitsSpec {
    pub max_sessions: Option<u64>,
    pub connect_rate: Option<Rate>,
    pub bandwidth: Bandwidth,
    pub quota: Option<Quota>,
    pub scope: Scope,
}

pub const KEYS: &[&str] = &[
    "max_sessions",
    "connect_rate",
    "bandwidth",
    "quota",
    "scope",
];

impl LimitsSpec {
    /// From a table's entries (Lua or JSON). Unknown keys are refused.
    pub fn from_entries(entries: &[(String, Raw)]) -> Result<LimitsSpec, LimitsError> {
        let mut spec = LimitsSpec::default();
        for (k, v) in entries {
            match k.as_str() {
                "max_sessions" => spec.max_sessions = Some(positive_int(k, v)?),
                "connect_rate" => spec.connect_rate = Some(parse_rate_value(k, v)?),
                "bandwidth" => spec.bandwidth = parse_bandwidth_value(k, v)?,
                "quota" => spec.quota = Some(parse_quota_value(k, v)?),
                "scope" => {
                    spec.scope = match v {
                        Raw::Str(s) if s == "local" => Scope::Local,
                        Raw::Str(s) if s == "fleet" => Scope::Fleet,
                        Raw::Str(s) => {
                            return Err(err(
                                k,
                                format!("expected 'local' or 'fleet', got {}", quoted(s)),
                            ))
                        }
                        other => {
                            return Err(err(
                                k,
                                format!("expected 'local' or 'fleet', got a {}", other.type_name()),
                            ))
                        }
                    }
                }
                _ => {
                    return Err(LimitsError {
                        key: escape(k),
                        msg: format!("unknown key (valid keys: {})", KEYS.join(", ")),
                    })
                }
            }
        }
        Ok(spec)
    }

    /// From an `auth_http` reply's `limits` value (must be an object).
    pub fn from_json(v: &serde_json::Value) -> Result<LimitsSpec, LimitsError> {
        match Raw::from_json(v) {
            Raw::Table(entries) => LimitsSpec::from_entries(&entries),
            other => Err(LimitsError {
                key: String::new(),
                msg: format!("expected an object, got a {}", other.type_name()),
            }),
        }
    }

    /// True when nothing is limited: sessions skip the limiter entirely.
    pub fn is_empty(&self) -> bool {
        self.max_sessions.is_none()
            && self.connect_rate.is_none()
            && self.bandwidth == Bandwidth::default()
            && self.quota.is_none()
    }

    /// True when the relay must ask before moving bytes (shaping or quota).
    pub fn meters_bytes(&self) -> bool {
        self.bandwidth != Bandwidth::default() || self.quota.is_some()
    }
}

/// For error messages: client-supplied text, quoted and escaped, bounded.
fn quoted(s: &str) -> String {
    let mut e = escape(s);
    if e.len() > 80 {
        let mut cut = 77;
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        e.truncate(cut);
        e.push_str("...");
    }
    format!("'{e}'")
}

fn escape(s: &str) -> String {
    s.escape_default().collect()
}

fn positive_int(key: &str, v: &Raw) -> Result<u64, LimitsError> {
    let n = match v {
        Raw::Int(i) => *i,
        Raw::Num(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 9.0e15 => *f as i64,
        Raw::Num(f) => return Err(err(key, format!("expected a whole number, got {f}"))),
        other => {
            return Err(err(
                key,
                format!("expected a positive integer, got a {}", other.type_name()),
            ))
        }
    };
    if n <= 0 {
        return Err(err(key, format!("must be at least 1, got {n}")));
    }
    Ok(n as u64)
}

fn parse_rate_value(key: &str, v: &Raw) -> Result<Rate, LimitsError> {
    match v {
        Raw::Str(s) => parse_rate(s).map_err(|m| err(key, format!("{m} in {}", quoted(s)))),
        other => Err(err(
            key,
            format!(
                "expected a string like '20/s,max_burst=40', got a {}",
                other.type_name()
            ),
        )),
    }
}

/// KumoMTA throttle syntax: `quantity/period[,max_burst=N]`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("local:") {
        let _ = rest;
        return Err("the 'local:' prefix is not used here: set scope = 'local'".into());
    }
    let (qty, rest) = s
        .split_once('/')
        .ok_or("expected quantity/period, like '20/s'")?;
    let limit = parse_quantity(qty.trim())?;
    let mut parts = rest.split(',');
    let period = match parts.next().unwrap_or("").trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hr" | "hour" => 3600,
        "d" | "day" => 86400,
        "" => return Err("missing period after '/'".into()),
        p => {
            return Err(format!(
                "unknown period {} (use s, min, h or day)",
                quoted(p)
            ))
        }
    };
    let mut max_burst = None;
    for opt in parts {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| format!("expected max_burst=N, got {}", quoted(opt)))?;
        match k.trim() {
            "max_burst" => max_burst = Some(parse_quantity(v.trim())?),
            other => return Err(format!("unknown option {}", quoted(other))),
        }
    }
    Ok(Rate {
        limit,
        period: Duration::from_secs(period),
        max_burst,
    })
}

fn parse_quantity(s: &str) -> Result<u64, String> {
    let digits: String = s.chars().filter(|c| *c != ',' && *c != '_').collect();
    if digits.is_empty() {
        return Err("missing quantity".into());
    }
    if digits.starts_with('-') {
        return Err(format!("must be at least 1, got {}", quoted(s)));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a whole number, got {}", quoted(s)))?;
    if n == 0 {
        return Err("must be at least 1, got 0".into());
    }
    Ok(n)
}

fn parse_bandwidth_value(key: &str, v: &Raw) -> Result<Bandwidth, LimitsError> {
    match v {
        Raw::Table(entries) => {
            let mut bw = Bandwidth::default();
            for (k, v) in entries {
                let path = format!("{key}.{}", escape(k));
                let rate = Some(parse_rate_bytes(&path, v)?);
                match k.as_str() {
                    "up" => bw.up = rate,
                    "down" => bw.down = rate,
                    _ => return Err(err(&path, "unknown key (valid keys: up, down)")),
                }
            }
            if bw == Bandwidth::default() {
                return Err(err(key, "empty table: give up and/or down"));
            }
            Ok(bw)
        }
        other => {
            let r = parse_rate_bytes(key, other)?;
            Ok(Bandwidth {
                up: Some(r),
                down: Some(r),
            })
        }
    }
}

/// `'10 MB/s'`, `'100 Mbit/s'`, or a number of bytes per second.
fn parse_rate_bytes(key: &str, v: &Raw) -> Result<u64, LimitsError> {
    match v {
        Raw::Int(_) | Raw::Num(_) => positive_int(key, v),
        Raw::Str(s) => {
            let (amount, per) = s.rsplit_once('/').ok_or_else(|| {
                err(
                    key,
                    format!("expected a rate like '10 MB/s', got {}", quoted(s)),
                )
            })?;
            match per.trim() {
                "s" | "sec" | "second" => {}
                p => {
                    return Err(err(
                        key,
                        format!("bandwidth is per second ('/s'), got {}", quoted(p)),
                    ))
                }
            }
            parse_size(amount).map_err(|m| err(key, format!("{m} in {}", quoted(s))))
        }
        other => Err(err(
            key,
            format!(
                "expected a string like '10 MB/s' or a table {{ up = ..., down = ... }}, got a {}",
                other.type_name()
            ),
        )),
    }
}

fn parse_quota_value(key: &str, v: &Raw) -> Result<Quota, LimitsError> {
    let s = match v {
        Raw::Str(s) => s,
        other => {
            return Err(err(
                key,
                format!(
                    "expected a string like '50 GB/day', got a {}",
                    other.type_name()
                ),
            ))
        }
    };
    let (amount, per) = s.rsplit_once('/').ok_or_else(|| {
        err(
            key,
            format!(
                "expected an amount per period like '50 GB/day', got {}",
                quoted(s)
            ),
        )
    })?;
    let period = match per.trim() {
        "h" | "hr" | "hour" => QuotaPeriod::Hour,
        "d" | "day" => QuotaPeriod::Day,
        "mo" | "month" => QuotaPeriod::Month,
        p => {
            return Err(err(
                key,
                format!("unknown period {} (use hour, day or month)", quoted(p)),
            ))
        }
    };
    let bytes = parse_size(amount).map_err(|m| err(key, format!("{m} in {}", quoted(s))))?;
    Ok(Quota { bytes, period })
}

/// A number with a byte or bit unit, in bytes (bits are divided by 8).
/// Decimal prefixes are powers of 1000 (MB, Mbit), binary ones of 1024 (MiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_' || c == ',' || c == '-'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: String = num.chars().filter(|c| *c != ',' && *c != '_').collect();
    if num.is_empty() {
        return Err("missing amount".into());
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad number {}", quoted(&num)))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("must be more than 0, got {}", quoted(&num)));
    }
    let unit = unit.trim();
    let (mult, bits): (f64, bool) = match unit.to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => (1.0, false),
        "kb" => (1e3, false),
        "mb" => (1e6, false),
        "gb" => (1e9, false),
        "tb" => (1e12, false),
        "kib" => (1024.0, false),
        "mib" => (1048576.0, false),
        "gib" => (1073741824.0, false),
        "tib" => (1099511627776.0, false),
        "bit" | "bits" => (1.0, true),
        "kbit" | "kbits" => (1e3, true),
        "mbit" | "mbits" => (1e6, true),
        "gbit" | "gbits" => (1e9, true),
        "tbit" | "tbits" => (1e12, true),
        _ => {
            return Err(format!(
                "unknown unit {} (use B, KB, MB, GB, TB, KiB..TiB, or bit, Kbit, Mbit, Gbit)",
                quoted(unit)
            ))
        }
    };
    let bytes = n * mult / if bits { 8.0 } else { 1.0 };
    if bytes < 1.0 {
        return Err("less than 1 byte".into());
    }
    if bytes > 9.0e18 {
        return Err("too large".into());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Raw {
        Raw::Str(v.into())
    }
    fn spec(entries: Vec<(&str, Raw)>) -> Result<LimitsSpec, LimitsError> {
        let e: Vec<(String, Raw)> = entries.into_iter().map(|(k, v)| (k.into(), v)).collect();
        LimitsSpec::from_entries(&e)
    }

    #[test]
    fn kumomta_throttle_syntax() {
        let r = parse_rate("20/s,max_burst=40").unwrap();
        assert_eq!((r.limit, r.period.as_secs(), r.burst()), (20, 1, 40));
        let r = parse_rate("100/min").unwrap();
        assert_eq!((r.limit, r.period.as_secs(), r.burst()), (100, 60, 100));
        assert_eq!(parse_rate("1,000/hr").unwrap().limit, 1000);
        assert_eq!(parse_rate("10_000/d").unwrap().period.as_secs(), 86400);
        assert_eq!(
            parse_rate("5/minute").unwrap().interval(),
            Duration::from_secs(12)
        );
        for bad in [
            "0/s",
            "-1/s",
            "20",
            "20/fortnight",
            "20/s,max_burst=0",
            "20/s,foo=1",
            "x/s",
            "/s",
            "local:20/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_size("10 MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("100 Mbit").unwrap(), 12_500_000);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5 KB").unwrap(), 1500);
        assert_eq!(parse_size("512").unwrap(), 512);
        for bad in ["0 MB", "-5 MB", "10 parsecs", "MB", "1 bit"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn full_spec() {
        let sp = spec(vec![
            ("max_sessions", Raw::Int(100)),
            ("connect_rate", s("20/s,max_burst=40")),
            ("bandwidth", s("10 MB/s")),
            ("quota", s("50 GB/day")),
            ("scope", s("fleet")),
        ])
        .unwrap();
        assert_eq!(sp.max_sessions, Some(100));
        assert_eq!(sp.bandwidth.up, Some(10_000_000));
        assert_eq!(sp.bandwidth.down, Some(10_000_000));
        assert_eq!(
            sp.quota,
            Some(Quota {
                bytes: 50_000_000_000,
                period: QuotaPeriod::Day
            })
        );
        assert_eq!(sp.scope, Scope::Fleet);
        assert!(!sp.is_empty() && sp.meters_bytes());
        assert!(spec(vec![]).unwrap().is_empty());

        let sp = spec(vec![(
            "bandwidth",
            Raw::Table(vec![("up".into(), s("100 Mbit/s"))]),
        )])
        .unwrap();
        assert_eq!(
            sp.bandwidth,
            Bandwidth {
                up: Some(12_500_000),
                down: None
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(Vec<(&str, Raw)>, &str)> = vec![
            (
                vec![("max_sessions", Raw::Int(0))],
                "limits.max_sessions: must be at least 1",
            ),
            (vec![("max_sessions", Raw::Int(-3))], "limits.max_sessions:"),
            (
                vec![("max_sessions", Raw::Num(2.5))],
                "limits.max_sessions:",
            ),
            (
                vec![("max_sessions", s("ten"))],
                "limits.max_sessions: expected a positive integer",
            ),
            (
                vec![("connect_rate", s("20 per second"))],
                "limits.connect_rate:",
            ),
            (
                vec![("connect_rate", Raw::Int(20))],
                "limits.connect_rate: expected a string",
            ),
            (
                vec![("bandwidth", s("10 MB/min"))],
                "limits.bandwidth: bandwidth is per second",
            ),
            (vec![("bandwidth", s("-10 MB/s"))], "limits.bandwidth:"),
            (
                vec![(
                    "bandwidth",
                    Raw::Table(vec![("sideways".into(), s("1 MB/s"))]),
                )],
                "limits.bandwidth.sideways: unknown key",
            ),
            (
                vec![(
                    "bandwidth",
                    Raw::Table(vec![("up".into(), Raw::Other("boolean"))]),
                )],
                "limits.bandwidth.up: expected a string",
            ),
            (
                vec![("quota", s("50 GB/week"))],
                "limits.quota: unknown period",
            ),
            (
                vec![("quota", s("0 GB/day"))],
                "limits.quota: must be more than 0",
            ),
            (
                vec![("scope", s("galaxy"))],
                "limits.scope: expected 'local' or 'fleet'",
            ),
            (
                vec![("max_session", Raw::Int(1))],
                "limits.max_session: unknown key",
            ),
        ];
        for (entries, want) in cases {
            let e = spec(entries.clone()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{entries:?}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn json_limits() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"max_sessions": 3, "quota": "1 MB/hour", "scope": "fleet"}"#)
                .unwrap();
        let sp = LimitsSpec::from_json(&v).unwrap();
        assert_eq!(sp.max_sessions, Some(3));
        assert_eq!(sp.quota.unwrap().bytes, 1_000_000);
        let v: serde_json::Value = serde_json::from_str(r#"{"max_sessions": "3"}"#).unwrap();
        assert!(LimitsSpec::from_json(&v)
            .unwrap_err()
            .to_string()
            .starts_with("limits.max_sessions:"));
        let v: serde_json::Value = serde_json::from_str(r#"{"max_sessions": true}"#).unwrap();
        assert!(LimitsSpec::from_json(&v)
            .unwrap_err()
            .to_string()
            .contains("boolean"));
        let v: serde_json::Value = serde_json::from_str(r#"[1]"#).unwrap();
        assert!(LimitsSpec::from_json(&v).is_err());
        // a hostile key is escaped in the message
        let v: serde_json::Value = serde_json::from_str(r#"{"a\nb\u001b": 1}"#).unwrap();
        let e = LimitsSpec::from_json(&v).unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e:?}");
    }

    #[test]
    fn quota_windows() {
        // 2026-12-01T11:00:00Z
        let t = 1_796_122_800;
        assert_eq!(QuotaPeriod::Hour.window(t + 59), (t, t + 3600));
        assert_eq!(QuotaPeriod::Day.window(t), (t - 11 * 3600, t + 13 * 3600));
        let (s, e) = QuotaPeriod::Month.window(t);
        assert_eq!(s, t - 11 * 3600); // Dec 1st
        assert_eq!(e - s, 31 * 86400);
        // February of a leap year
        let feb = days_from_civil(2028, 2, 10) as u64 * 86400;
        let (s, e) = QuotaPeriod::Month.window(feb);
        assert_eq!((e - s) / 86400, 29);
        assert_eq!(
            civil_from_days(days_from_civil(2026, 12, 31)),
            (2026, 12, 31)
        );
    }
}
