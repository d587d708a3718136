-- A proxy for fd_exhaust.py, run under a low `ulimit -n`. Prints its address,
-- then answers "stats" lines on stdin with one line of listener counters; ends
-- at stdin EOF. Needs no Lua decision (loopback clients, no auth), so blocking
-- on stdin never stalls a session.
local kp = require 'kumoproxy'
local l = kp.start_proxy_listener { listen = '127.0.0.1:0', timeout = '60 seconds',
  allow_private_destinations = true }
print('READY ' .. l:local_addr())
io.stdout:flush()
for line in io.lines() do
  if line == 'stats' then
    local s = l:stats()
    print(('STATS accepted=%d active=%d completed=%d failed=%d accept_errors=%d accepting=%s')
      :format(s.accepted, s.active, s.completed, s.failed, s.accept_errors, tostring(s.accepting)))
    io.stdout:flush()
  end
end
l:close()
