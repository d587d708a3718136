-- One process of a fleet: every process started with the same REDIS_URL shares
-- each customer's limits (sessions at once, new sessions per second, bytes per
-- day); bandwidth is shaped by each process. See docs/fleet.md.
--
--   redis-server --port 6379 --save '' --appendonly no &
--   REDIS_URL=redis://127.0.0.1:6379/0 KUMOPROXY_LISTEN=127.0.0.1:1080 KUMOPROXY_STATUS=127.0.0.1:8081 lua5.4 examples/fleet.lua &
--   REDIS_URL=redis://127.0.0.1:6379/0 KUMOPROXY_LISTEN=127.0.0.1:1081 KUMOPROXY_STATUS=127.0.0.1:8082 lua5.4 examples/fleet.lua &
--   curl --socks5-hostname alice:secret@127.0.0.1:1080 https://example.com/
--   curl http://127.0.0.1:8081/proxy/limits?key=acme     (the first process's status port)
-- (ALLOW_PRIVATE=1 lets the demo reach services on this machine, e.g. a local test server.)
local kumoproxy = require 'kumoproxy'

kumoproxy.configure_redis {
  url = os.getenv('REDIS_URL') or 'redis://127.0.0.1:6379/0',
  timeout = '500 ms',
  -- While Redis is unreachable: keep serving, without fleet checks.
  on_error = os.getenv('ON_ERROR') or 'allow',
  -- A killed process's sessions stop counting within this long.
  lease_ttl = os.getenv('LEASE_TTL') or '15 seconds',
}

-- Users and the customer whose budget they share. A real deployment would ask
-- a service (auth_http can return the same limit_key and limits).
local users = {
  alice = { password = 'secret', customer = 'acme' },
  bob = { password = 'hunter2', customer = 'acme' },
  carol = { password = 'pa55', customer = 'globex',
            limits = { max_sessions = 500, bandwidth = '100 Mbit/s', quota = '1 TB/month', scope = 'fleet' } },
}

kumoproxy.on('proxy_server_auth_rfc1929', function(user, password)
  local u = users[user]
  if not u or u.password ~= password then
    return false
  end
  return {
    identities = { { identity = user, context = 'ProxyAuthRfc1929' } },
    limit_key = u.customer,
    limits = u.limits,          -- nil: the listener's defaults below
  }
end)

-- HTTP CONNECT users get the same policy from the same table.
kumoproxy.on('http_server_validate_auth_basic', function(user, password)
  local u = users[user]
  if not u or u.password ~= password then
    return false
  end
  return {
    identities = { { identity = user, context = 'HttpAuthBasic' } },
    limit_key = u.customer,
    limits = u.limits,
  }
end)

local listener = kumoproxy.start_proxy_listener {
  listen = os.getenv('KUMOPROXY_LISTEN') or '127.0.0.1:1080',
  protocols = { 'socks5', 'http' },
  require_auth = true,
  trusted_hosts = {},
  -- Lets the demo reach services on this machine; leave out in production.
  allow_private_destinations = os.getenv('ALLOW_PRIVATE') == '1',
  limits = {
    max_sessions = tonumber(os.getenv('MAX_SESSIONS') or '100'),
    connect_rate = '20/s,max_burst=40',
    bandwidth = '10 MB/s',
    quota = '50 GB/day',
    scope = 'fleet',
  },
}

local status = kumoproxy.start_http_listener {
  listen = os.getenv('KUMOPROXY_STATUS') or '127.0.0.1:0',
}

print(('READY %s status=%s'):format(listener:local_addr(), status:local_addr()))
io.stdout:flush()
kumoproxy.run()
