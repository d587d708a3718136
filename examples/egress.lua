-- Egress sources: leave the host through a SOCKS5 proxy, from Lua.
--
--   lua5.4 examples/egress.lua        (or luajit; needs lua-socket for the demo destination)
--
-- Everything runs on 127.0.0.1 with free ports: a kumoproxy listener that wants
-- a username and password (checked by a Lua handler), a tiny LuaSocket
-- destination, and an egress source that reaches the destination through the
-- listener. Then the same source as a plain TCP forwarder.
local kumoproxy = require 'kumoproxy'
local socket = require 'socket'

-- 1. The proxy. Its auth handler runs on this thread: it is called while
--    src:connect() below waits, because blocking kumoproxy calls keep
--    dispatching events.
kumoproxy.on('proxy_server_auth_rfc1929', function(username, password, conn_meta)
  print(('proxy: auth request from %s for %s'):format(conn_meta.peer_address, username))
  return username == 'alice' and password == 'secret'
end)
local proxy = kumoproxy.start_proxy_listener {
  listen = '127.0.0.1:0',
  require_auth = true,
  -- The demo destination is on 127.0.0.1; loopback is denied unless allowed.
  allow_private_destinations = true,
}

-- 2. A demo destination. The kernel completes TCP handshakes on a listening
--    socket before accept(), so this one thread can play both ends.
local dest = assert(socket.bind('127.0.0.1', 0))
local _, dest_port = dest:getsockname()

-- 3. The egress source: via the proxy, with credentials, asking the proxy to
--    connect from 127.0.0.1 (BIND-then-CONNECT, as KumoMTA does).
local src = kumoproxy.make_egress_source {
  name = 'example',
  socks5_proxy_server = proxy:local_addr(),
  socks5_proxy_username = 'alice',
  socks5_proxy_password = { key_data = 'secret' },
  socks5_proxy_source_address = '127.0.0.1',
  connect_timeout = '10 seconds',
}

local conn, err = src:connect('127.0.0.1', dest_port)
if not conn then
  error('egress connect failed: ' .. err)
end
print(('client: connected to proxy %s:%d; destination sees us as %s'):format(
  conn:getpeername(), select(2, conn:getpeername()), conn:proxy_bound_address()))

local peer = assert(dest:accept())
peer:send('220 demo destination ready\r\n')
print('client: banner: ' .. assert(conn:receive('*l')))
conn:send('QUIT\r\n')
print('destination: got: ' .. assert(peer:receive('*l')))
peer:close()
conn:close()

-- 4. The same source as a local port forwarder: any plain TCP client can use
--    the proxy chain. The forwarder's connect needs the auth handler, so wait
--    for the destination's accept with run_until, which dispatches events.
local fwd = src:forward { listen = '127.0.0.1:0', to = '127.0.0.1:' .. dest_port }
local fhost, fport = fwd:local_addr():match('^(.*):(%d+)$')
local client = assert(socket.connect(fhost, tonumber(fport)))
dest:settimeout(0)
local fpeer = assert(kumoproxy.run_until(function() return dest:accept() end, 10))
client:send('hello through the forwarder\n')
print('destination: got: ' .. assert(fpeer:receive('*l')))
client:close()
fpeer:close()
kumoproxy.run_until(function() return fwd:stats().completed == 1 end, 10)
print(('forwarder: %d byte(s) relayed to the destination'):format(fwd:stats().bytes_to_remote))

fwd:close()
proxy:close()
dest:close()
print('done')
