-- A complete standalone SOCKS5 proxy on 127.0.0.1:1080 with a small Lua user table.
--
--   lua5.4 examples/init.lua        (or luajit)
--   curl --socks5-hostname alice:secret@127.0.0.1:1080 http://example.com/
--
-- Ctrl-C (SIGINT) or SIGTERM stops it: listeners close, in-flight sessions get
-- a grace period, then the script ends with exit status 0. SIGHUP re-reads the
-- users file (and cuts the sessions of users removed from it); SIGUSR1 reopens
-- the access log after rotation.
local kumoproxy = require 'kumoproxy'

-- "name password" lines; KUMOPROXY_USERS overrides the path. In real
-- deployments, keep hashes in a database; this is a demo table.
local users_file = os.getenv('KUMOPROXY_USERS')
  or ((arg and arg[0] or ''):match('^(.*)/') or '.') .. '/users.txt'

local function read_users()
  local f, err = io.open(users_file)
  if not f then return nil, err end
  local t = {}
  for line in f:lines() do
    local name, password = line:match('^%s*([^#%s]%S*)%s+(%S+)%s*$')
    if name then t[name] = password end
  end
  f:close()
  return t
end

local users = assert(read_users())

kumoproxy.on('proxy_server_auth_rfc1929', function(username, password, conn_meta)
  local ok = users[username] ~= nil and users[username] == password
  if not ok then
    print(('denied %s from %s'):format(username, conn_meta.peer_address))
  end
  return ok
end)

local listener = kumoproxy.start_proxy_listener {
  -- KUMOPROXY_LISTEN lets tests run this example on a free port.
  listen = os.getenv('KUMOPROXY_LISTEN') or '127.0.0.1:1080',
  require_auth = true,
  timeout = '30 seconds',
  -- Lets clients reach services on this machine (127.0.0.1), as the demo and its
  -- test do. By default loopback, link-local and the cloud metadata address
  -- (169.254.169.254) are denied: leave this out in production.
  allow_private_destinations = true,
  -- One JSON line per finished session (who, where, bytes, outcome).
  access_log = os.getenv('KUMOPROXY_ACCESS_LOG') and { path = os.getenv('KUMOPROXY_ACCESS_LOG') } or nil,
}
print('proxy listener on ' .. listener:local_addr())
io.stdout:flush()

-- `kill -HUP <pid>`: new users can log in at once; removed users are cut off.
kumoproxy.on('reload', function()
  local fresh, err = read_users()
  if not fresh then
    print('reload failed, keeping the current users: ' .. tostring(err))
    return
  end
  local n, cut = 0, 0
  for name in pairs(fresh) do n = n + 1 end
  for name in pairs(users) do
    if not fresh[name] then cut = cut + kumoproxy.close_sessions { identity = name } end
  end
  users = fresh
  print(('reloaded %d users from %s (%d sessions cut)'):format(n, users_file, cut))
  io.stdout:flush()
end)

kumoproxy.run { grace = '5 seconds' }

local s = listener:stats()
print(('stopped: %d sessions completed, %d failed, %d auth failures'):format(
  s.completed, s.failed, s.auth_failures))
