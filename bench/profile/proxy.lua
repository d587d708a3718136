-- One plain SOCKS5 listener, for profiling connection set-up (bench/profile/cycles.sh).
--   LUA_CPATH='DIR/?.so;;' lua5.4 bench/profile/proxy.lua
-- Prints "READY ADDR" and serves until SIGTERM (run() then returns and the
-- process exits normally, so callgrind writes its profile).
-- KUMOPROXY_PROFILE_LIMITS=local|fleet adds per-identity limits (issue 14) far
-- above what the profile reaches; fleet needs KUMOPROXY_PROFILE_REDIS (a URL).
local kumoproxy = require 'kumoproxy'
local scope = os.getenv('KUMOPROXY_PROFILE_LIMITS')
if scope == 'fleet' then
  kumoproxy.configure_redis { url = assert(os.getenv('KUMOPROXY_PROFILE_REDIS')) }
end
local l = kumoproxy.start_proxy_listener {
  listen = '127.0.0.1:0', timeout = '120 seconds', allow_private_destinations = true,
  limits = scope and {
    max_sessions = 1000000, connect_rate = '1000000/s', quota = '1000 TB/day', scope = scope,
  } or nil,
}
print('READY ' .. l:local_addr())
io.stdout:flush()
kumoproxy.run { grace = 0 }
