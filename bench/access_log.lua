-- Two listeners in one process for bench/access_log.sh: `plain` (no access log)
-- and `logged` (access_log to the path in arg[1]); otherwise identical.
local kumoproxy = require 'kumoproxy'
local function listener(extra)
  local p = { listen = '127.0.0.1:0', timeout = '120 seconds', allow_private_destinations = true }
  for k, v in pairs(extra) do p[k] = v end
  return kumoproxy.start_proxy_listener(p)
end
local plain = listener {}
local logged = listener { access_log = { path = assert(arg[1], 'usage: access_log.lua LOGFILE') } }
print(('READY plain=%s logged=%s'):format(plain:local_addr(), logged:local_addr()))
io.stdout:flush()
kumoproxy.run { grace = 0 }
