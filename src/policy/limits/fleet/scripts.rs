//! The Lua scripts run in Redis (one per admission, renewal, release, quota
//! chunk, stats) and the naming of a limit key's Redis keys.

use redis::Script;
use std::fmt::Write as _;

/// The Redis key prefix of a limit key: `{kp:<escaped>}`. Bytes outside
/// `[A-Za-z0-9._@+-]` are %-escaped (so `{`, `}` and `:` never appear and the
/// hash tag cannot be broken); keys longer than 64 bytes escaped are replaced
/// by `#` + SHA-256 (`#` is itself always escaped, so the two forms never meet).
/// Distinct limit keys therefore never share Redis keys.
pub fn redis_tag(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    out.push_str("{kp:");
    let start = out.len();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"._@+-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.len() - start > 64 {
        out.truncate(start);
        out.push('#');
        for b in ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref() {
            let _ = write!(out, "{b:02x}");
        }
    }
    out.push('}');
    out
}

const ADMIT: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local max = tonumber(ARGV[3])
local T = tonumber(ARGV[4])
local limit = tonumber(ARGV[6])
local n = 0
local function refuse(kind, retry_ms)
  redis.call('HINCRBY', KEYS[4], 'connect_refused', 1)
  redis.call('EXPIRE', KEYS[4], 3024000)
  return {0, kind, retry_ms, 0, n}
end
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
  n = redis.call('ZCARD', KEYS[1])
  if n >= max then
    return refuse('max_sessions', 1000)
  end
end
local used = 0
if limit > 0 then
  used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used >= limit then
    return refuse('quota', math.max(0, tonumber(ARGV[9]) * 1000 - now_ms))
  end
end
local new_tat = 0
if T > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat < now_us then tat = now_us end
  new_tat = tat + T
  local tau = T * tonumber(ARGV[5])
  if new_tat - now_us > tau then
    return refuse('connect_rate', math.ceil((new_tat - now_us - tau) / 1000))
  end
  redis.call('SET', KEYS[2], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now_us) / 1000) + 1)
end
local grant = 0
if limit > 0 then
  grant = math.min(tonumber(ARGV[7]), limit - used)
  redis.call('INCRBY', KEYS[3], grant)
  redis.call('EXPIREAT', KEYS[3], ARGV[8])
end
if max > 0 then
  local ttl = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], string.format('%.0f', now_ms + ttl), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  n = n + 1
end
return {1, '', 0, grant, n}
"#;

/// Renews every live lease of one key and adds the bytes relayed since the last tick.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local exp = string.format('%.0f', now_ms + ttl)
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', exp, ARGV[i])
end
if #ARGV >= 4 then
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if tonumber(ARGV[2]) > 0 or tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'bytes_up', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'bytes_down', ARGV[3])
  redis.call('EXPIRE', KEYS[2], 3024000)
end
return 1
"#;

/// Ends a session: drops its lease, gives back unused quota, adds its last bytes.
const RELEASE: &str = r#"
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
local unused = tonumber(ARGV[2])
if unused > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DECRBY', KEYS[2], unused)
end
if tonumber(ARGV[3]) > 0 or tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[3], 'bytes_up', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'bytes_down', ARGV[4])
  redis.call('EXPIRE', KEYS[3], 3024000)
end
return 1
"#;

/// Takes the next quota chunk: returns the grant (0 = exhausted).
const CHUNK: &str = r#"
local limit = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= limit then return 0 end
local grant = math.min(tonumber(ARGV[2]), limit - used)
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return grant
"#;

const STATS: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')
local h = redis.call('HMGET', KEYS[2], 'connect_refused', 'bytes_up', 'bytes_down')
local q = redis.call('GET', KEYS[3]) or '0'
return {n, tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0'), tonumber(q)}
"#;

/// The scripts, hashed once; `invoke_async` loads one into Redis (every
/// primary, on a cluster) the first time EVALSHA says NOSCRIPT.
pub(super) struct Scripts {
    pub admit: Script,
    pub renew: Script,
    pub release: Script,
    pub chunk: Script,
    pub stats: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            admit: Script::new(ADMIT),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            chunk: Script::new(CHUNK),
            stats: Script::new(STATS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_cannot_collide_or_break_out() {
        assert_eq!(redis_tag("acme"), "{kp:acme}");
        assert_eq!(redis_tag("a}b"), "{kp:a%7Db}");
        assert_eq!(redis_tag("a:b{c"), "{kp:a%3Ab%7Bc}");
        assert_ne!(redis_tag("a%7Db"), redis_tag("a}b"));
        let long = "x".repeat(100);
        let t = redis_tag(&long);
        assert!(t.starts_with("{kp:#") && t.len() == 4 + 1 + 64 + 1, "{t}");
        assert_ne!(redis_tag("#abc"), "{kp:#abc}");
        for k in ["a}b", "{x}", "\r\nFLUSHALL\r\n", &long] {
            let t = redis_tag(k);
            assert_eq!(t.matches('{').count(), 1);
            assert_eq!(t.matches('}').count(), 1);
            assert!(t.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
