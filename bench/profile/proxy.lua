-- One plain SOCKS5 listener, for profiling connection set-up (bench/profile/cycles.sh).
--   LUA_CPATH='DIR/?.so;;' lua5.4 bench/profile/proxy.lua
-- Prints "READY ADDR" and serves until SIGTERM (run() then returns and the
-- process exits normally, so callgrind writes its profile).
local kumoproxy = require 'kumoproxy'
local l = kumoproxy.start_proxy_listener {
  listen = '127.0.0.1:0', timeout = '120 seconds', allow_private_destinations = true,
}
print('READY ' .. l:local_addr())
io.stdout:flush()
kumoproxy.run { grace = 0 }
