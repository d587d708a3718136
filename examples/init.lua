-- A complete standalone SOCKS5 proxy on 127.0.0.1:1080 with a small Lua user table.
--
--   lua5.4 examples/init.lua        (or luajit)
--   curl --socks5-hostname alice:secret@127.0.0.1:1080 http://example.com/
--
-- Ctrl-C (SIGINT) or SIGTERM stops it: listeners close, in-flight sessions get
-- a grace period, then the script ends with exit status 0.
local kumoproxy = require 'kumoproxy'

-- In real deployments, keep hashes in a database; this is a demo table.
local users = {
  alice = 'secret',
  bob = 'hunter2',
}

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
}
print('proxy listener on ' .. listener:local_addr())
io.stdout:flush()

kumoproxy.run { grace = '5 seconds' }

local s = listener:stats()
print(('stopped: %d sessions completed, %d failed, %d auth failures'):format(
  s.completed, s.failed, s.auth_failures))
