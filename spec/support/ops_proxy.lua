-- A standalone proxy for ops_spec: kumoproxy.run() with an access log, RFC 1929
-- users read from a file, and (OPS_RELOAD=1) a `reload` handler that re-reads
-- the file and closes the sessions of users no longer in it.
--   OPS_USERS       file of "user password" lines; "* password" accepts any user
--   OPS_ACCESS_LOG  access log path (optional)
--   OPS_OUT         file this script appends its READY/RELOADED/STOPPED lines to
--   OPS_GRACE       run()'s grace period (default 5 seconds)
local kp = require 'kumoproxy'

local function say(line)
  local f = assert(io.open(os.getenv('OPS_OUT'), 'a'))
  f:write(line, '\n')
  f:close()
end

local users = {}
local function load_users()
  local t, n = {}, 0
  for line in io.lines(os.getenv('OPS_USERS')) do
    local u, p = line:match('^(%S+)%s+(%S+)$')
    if u then
      t[u] = p
      n = n + 1
    end
  end
  users = t
  return n
end
load_users()

kp.on('proxy_server_auth_rfc1929', function(user, pass)
  local want = users[user] or users['*']
  return want ~= nil and want == pass
end)

local log = os.getenv('OPS_ACCESS_LOG')
local l = kp.start_proxy_listener {
  listen = '127.0.0.1:0',
  require_auth = true,
  allow_private_destinations = true,
  timeout = '60 seconds',
  access_log = log and { path = log } or nil,
}

if os.getenv('OPS_RELOAD') == '1' then
  kp.on('reload', function()
    local n = load_users()
    local closed = 0
    for _, s in ipairs(l:sessions()) do
      if s.identity and not users[s.identity] and not users['*'] then
        closed = closed + l:close_sessions { identity = s.identity }
      end
    end
    say(('RELOADED users=%d closed=%d'):format(n, closed))
  end)
end

local f = assert(io.open('/proc/self/stat'))
local pid = f:read('*l'):match('^(%d+)')
f:close()
say(('READY %s %s'):format(l:local_addr(), pid))
kp.run { grace = os.getenv('OPS_GRACE') or '5 seconds' }
local s = l:stats()
say(('STOPPED completed=%d failed=%d'):format(s.completed, s.failed))
