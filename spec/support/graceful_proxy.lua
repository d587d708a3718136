-- A standalone proxy for shutdown_load.py: RFC 1929 users, prints its address,
-- serves until SIGTERM, drains within KUMOPROXY_GRACE, prints final counters.
local kp = require 'kumoproxy'
kp.on('proxy_server_auth_rfc1929', function(user, pass)
  return user == 'alice' and pass == 'secret'
end)
local l = kp.start_proxy_listener {
  listen = '127.0.0.1:0',
  require_auth = true,
  allow_private_destinations = true,
  timeout = '60 seconds',
}
print('READY ' .. l:local_addr())
io.stdout:flush()
kp.run { grace = os.getenv('KUMOPROXY_GRACE') or '30 seconds' }
local s = l:stats()
print(('STOPPED accepted=%d completed=%d failed=%d active=%d accepting=%s'):format(
  s.accepted, s.completed, s.failed, s.active, tostring(s.accepting)))
