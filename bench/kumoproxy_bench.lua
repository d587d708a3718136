-- kumoproxy as bench/run.sh measures it: three listeners in one process.
--
--   LUA_CPATH='build/lua5.4/?.so;;' lua5.4 bench/kumoproxy_bench.lua CERT_FILE
--
--   plain: no authentication (loopback clients are trusted hosts)
--   auth:  require_auth, no trusted hosts, RFC 1929 checked by a Lua handler
--   authcache: the same with auth_cache, so repeat logins skip Lua (where supported)
--   tls:   use_tls with a self-signed certificate for 'localhost', written to CERT_FILE
--   copy:  use_splice = false (userspace copy, as the TLS relay does), for reference
--   udp:   udp = true (UDP ASSOCIATE), where the build has it
--   pp:    proxy_protocol from 127.0.0.1: clients send a PROXY v2 header first
--          (socksbench --proxy-v2), as behind a load balancer
--   limits: as plain, with per-identity limits in this process (scope 'local'):
--          every session is admitted against max_sessions, connect_rate and a
--          quota (all far above what the bench reaches, so none refuses)
--   fleet: the same limits with scope 'fleet', on the Redis at $KUMOPROXY_BENCH_REDIS
--          (a URL; bench/run.sh starts a redis-server), when it is set
--
--   bwfar, bw100m, bw1g: limits = { bandwidth = '100 Gbit/s' | '100 Mbit/s' | '1 Gbit/s' }
--
-- Prints one line "READY plain=ADDR auth=ADDR tls=ADDR copy=ADDR [authcache=ADDR] [udp=ADDR]
-- [pp=ADDR] [limits=ADDR] [fleet=ADDR] [bwfar=ADDR bw100m=ADDR bw1g=ADDR]" and serves
-- until SIGTERM.
-- and serves until SIGTERM.
local kumoproxy = require 'kumoproxy'

local cert_file = assert(arg[1], 'usage: kumoproxy_bench.lua CERT_FILE')

local users = { bench = 'benchpass' }
kumoproxy.on('proxy_server_auth_rfc1929', function(username, password)
  return users[username] ~= nil and users[username] == password
end)

-- The sink is on 127.0.0.1: allow private destinations where the listener has a
-- policy for them (older builds reject the unknown key, so try without it too).
local function listener(params)
  local with = {}
  for k, v in pairs(params) do with[k] = v end
  with.allow_private_destinations = true
  local ok, l = pcall(kumoproxy.start_proxy_listener, with)
  if ok then return l end
  if not tostring(l):find('allow_private_destinations', 1, true) then error(l, 0) end
  return kumoproxy.start_proxy_listener(params)
end

local timeout = '120 seconds'
local plain = listener { listen = '127.0.0.1:0', timeout = timeout }
local auth = listener {
  listen = '127.0.0.1:0', timeout = timeout, require_auth = true, trusted_hosts = {},
}
local tls = listener {
  listen = '127.0.0.1:0', timeout = timeout, use_tls = true, hostname = 'localhost',
}

local copy = listener { listen = '127.0.0.1:0', timeout = timeout, use_splice = false }

-- Behind a load balancer: every connection from 127.0.0.1 starts with a PROXY
-- header (socksbench --proxy-v2). Builds without proxy_protocol skip it.
local okpp, pp = pcall(listener, {
  listen = '127.0.0.1:0', timeout = timeout, proxy_protocol = { from = { '127.0.0.1' } },
})
if not okpp then
  io.stderr:write('no proxy_protocol listener: ', tostring(pp), '\n')
  pp = nil
end

-- Builds without auth_cache reject the key: measure the uncached handler only.
local ok, authcache = pcall(listener, {
  listen = '127.0.0.1:0', timeout = timeout, require_auth = true, trusted_hosts = {},
  auth_cache = { ttl = '10 minutes' },
})
if not ok then
  io.stderr:write('no auth_cache listener: ', tostring(authcache), '\n')
  authcache = nil
end

-- UDP ASSOCIATE (issue 15); builds without it reject the key: no udp target then.
local okudp, udp = pcall(listener, { listen = '127.0.0.1:0', timeout = timeout, udp = true })
if not okudp then
  io.stderr:write('no udp listener: ', tostring(udp), '\n')
  udp = nil
end

-- Per-identity limits (issue 14). Loopback clients are trusted hosts, so the
-- limit key is the peer IP: every session of the bench shares one key, the
-- hardest case for a shared counter.
local function limits(scope)
  return {
    max_sessions = 1000000, connect_rate = '1000000/s', quota = '1000 TB/day', scope = scope,
  }
end
local oklim, lim = pcall(listener, { listen = '127.0.0.1:0', timeout = timeout, limits = limits('local') })
if not oklim then
  io.stderr:write('no limits listener: ', tostring(lim), '\n')
  lim = nil
end
-- Shaping (issue 14): a bandwidth far above the link (the unthrottled fast path
-- must stay as fast as no limits), and two rates whose accuracy is measured.
local shaped = {}
if oklim then
  for name, rate in pairs { bwfar = '100 Gbit/s', bw100m = '100 Mbit/s', bw1g = '1 Gbit/s' } do
    shaped[name] = listener {
      listen = '127.0.0.1:0', timeout = timeout, limits = { bandwidth = rate },
    }
  end
end
local fleet
local redis_url = os.getenv('KUMOPROXY_BENCH_REDIS')
if oklim and redis_url and redis_url ~= '' then
  kumoproxy.configure_redis { url = redis_url, on_error = 'deny' }
  fleet = listener { listen = '127.0.0.1:0', timeout = timeout, limits = limits('fleet') }
end

local f = assert(io.open(cert_file, 'w'))
f:write(tls:certificate_pem())
f:close()

print(('READY plain=%s auth=%s tls=%s copy=%s%s%s%s%s%s'):format(
  plain:local_addr(), auth:local_addr(), tls:local_addr(), copy:local_addr(),
  authcache and (' authcache=' .. authcache:local_addr()) or '',
  udp and (' udp=' .. udp:local_addr()) or '',
  pp and (' pp=' .. pp:local_addr()) or '',
  lim and (' limits=' .. lim:local_addr()) or '',
  fleet and (' fleet=' .. fleet:local_addr()) or '')
  .. (shaped.bwfar and (' bwfar=%s bw100m=%s bw1g=%s'):format(
    shaped.bwfar:local_addr(), shaped.bw100m:local_addr(), shaped.bw1g:local_addr()) or ''))
io.stdout:flush()
kumoproxy.run { grace = 0 }
