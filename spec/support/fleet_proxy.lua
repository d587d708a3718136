-- One kumoproxy process of a fleet, for spec/limits_spec.lua: fleet limits on
-- the Redis at $REDIS_URL, RFC 1929 and HTTP Basic users from a table, a status
-- listener. Prints "READY <proxy addr> status=<addr>", serves until SIGTERM.
--
--   REDIS_URL    redis://127.0.0.1:PORT/0
--   REDIS_CLUSTER  instead: space-separated node URLs of a Redis Cluster
--   LIMITS       a Lua table constructor for the listener's `limits`
--   ON_ERROR     'allow' | 'deny'           LEASE_TTL  duration
--   KEY          the limit key alice and bob share (default 'acme')
local kp = require 'kumoproxy'

local cluster
if os.getenv('REDIS_CLUSTER') then
  cluster = {}
  for u in os.getenv('REDIS_CLUSTER'):gmatch('%S+') do cluster[#cluster + 1] = u end
end
kp.configure_redis {
  url = not cluster and assert(os.getenv('REDIS_URL'), 'REDIS_URL or REDIS_CLUSTER') or nil,
  cluster = cluster,
  timeout = '300 ms',
  on_error = os.getenv('ON_ERROR') or 'deny',
  lease_ttl = os.getenv('LEASE_TTL') or '30 seconds',
}

-- alice and bob share the budget of customer 'acme'; carol has her own limits;
-- mallory's limits are malformed (her logins are refused and logged). Any
-- user named k-<something> is their own limit key (the default: the username).
local shared_key = os.getenv('KEY') or 'acme'
local users = {
  alice = { key = shared_key },
  bob = { key = shared_key },
  carol = { limits = { max_sessions = 1, scope = 'fleet' } },
  mallory = { limits = { max_sessions = 'many' } },
}

local function auth_info(user, password, context)
  local u = users[user] or (user:match('^k%-') and {})
  if not u or password ~= 'secret' then
    return false
  end
  return {
    identities = { { identity = user, context = context } },
    limit_key = u.key,
    limits = u.limits,
  }
end

kp.on('proxy_server_auth_rfc1929', function(user, password)
  return auth_info(user, password, 'ProxyAuthRfc1929')
end)
kp.on('http_server_validate_auth_basic', function(user, password)
  return auth_info(user, password, 'HttpBasicAuth')
end)

local limits = assert(load('return ' .. assert(os.getenv('LIMITS'))))()
local l = kp.start_proxy_listener {
  listen = '127.0.0.1:0',
  protocols = { 'socks5', 'http' },
  require_auth = true,
  trusted_hosts = {},
  allow_private_destinations = true,
  auth_failure_delay = false,
  limits = limits,
}
local status = kp.start_http_listener { listen = '127.0.0.1:0' }
print(('READY %s status=%s'):format(l:local_addr(), status:local_addr()))
io.stdout:flush()
kp.run { grace = '1 second' }
