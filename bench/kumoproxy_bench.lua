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
--
-- Prints one line "READY plain=ADDR auth=ADDR tls=ADDR copy=ADDR [authcache=ADDR] [udp=ADDR] [pp=ADDR]"
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

local f = assert(io.open(cert_file, 'w'))
f:write(tls:certificate_pem())
f:close()

print(('READY plain=%s auth=%s tls=%s copy=%s%s%s%s'):format(
  plain:local_addr(), auth:local_addr(), tls:local_addr(), copy:local_addr(),
  authcache and (' authcache=' .. authcache:local_addr()) or '',
  udp and (' udp=' .. udp:local_addr()) or '',
  pp and (' pp=' .. pp:local_addr()) or ''))
io.stdout:flush()
kumoproxy.run { grace = 0 }
