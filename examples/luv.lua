-- kumoproxy on a libuv loop (luv): the loop wakes when decisions are pending.
--
--   lua5.4 examples/luv.lua      (Debian: apt-get install lua-luv)
local uv = require 'luv'
local kumoproxy = require 'kumoproxy'

kumoproxy.on('proxy_server_auth_rfc1929', function(user, pass)
  return user == 'alice' and pass == 'secret'
end)

local listener = kumoproxy.start_proxy_listener {
  listen = os.getenv('KUMOPROXY_LISTEN') or '127.0.0.1:1080',
  require_auth = true,
  -- Demo: lets clients reach services on this machine. Loopback, link-local and
  -- 169.254.169.254 are denied by default: leave this out in production.
  allow_private_destinations = true,
}
print('proxy listener on ' .. listener:local_addr())

-- event_fd() is readable while decisions wait; poll(0) answers them and returns.
local events = uv.new_poll(kumoproxy.event_fd())
events:start('r', function()
  kumoproxy.poll(0)
end)

-- The rest of your application shares the loop, e.g. a periodic stats line.
local timer = uv.new_timer()
timer:start(10000, 10000, function()
  local s = listener:stats()
  print(('active=%d completed=%d auth_failures=%d'):format(s.active, s.completed, s.auth_failures))
end)

local function stop()
  listener:close()
  events:stop()
  timer:stop()
  uv.stop()
end
for _, name in ipairs { 'sigint', 'sigterm' } do
  local sig = uv.new_signal()
  sig:start(name, stop)
end

uv.run()
