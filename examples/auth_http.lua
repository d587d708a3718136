-- A SOCKS5 proxy whose logins are checked by an HTTP service, with per-user
-- permissions from the service's reply, an auth cache, and a Lua policy.
--
--   AUTH_URL=https://auth.internal/verify lua5.4 examples/auth_http.lua   (or luajit)
--   curl --socks5-hostname alice:secret@127.0.0.1:1080 https://example.com/
--
-- The service gets a JSON POST {"username","password","peer_address","local_address"}
-- for each login and answers 2xx to accept (anything else refuses), optionally with
--   {"identity": "alice@corp", "groups": ["staff"],
--    "permissions": {"allow": ["*.example.com:443"], "deny": []}}
-- spec/support/auth_service.py is a small one (the spec runs this example with it).
local kumoproxy = require 'kumoproxy'

local listener = kumoproxy.start_proxy_listener {
  listen = os.getenv('KUMOPROXY_LISTEN') or '127.0.0.1:1080',
  require_auth = true,
  trusted_hosts = {},            -- everyone logs in, even from this machine
  auth_http = {
    url = os.getenv('AUTH_URL') or 'http://127.0.0.1:8080/verify',
    timeout = '5 seconds',
    headers = { ['X-Api-Key'] = os.getenv('AUTH_API_KEY') or 'demo-key' },
  },
  -- Accepted logins are reused for a minute, refusals for 5 seconds.
  auth_cache = { ttl = '60 seconds', negative_ttl = '5 seconds' },
  -- For everyone, whatever the service says: no SSH, no internal network.
  permissions = { deny = { '*:22', '10.0.0.0/8' } },
  -- Lets clients reach services on this machine, as the demo and its test do.
  -- By default loopback, link-local and the cloud metadata address
  -- (169.254.169.254) are denied: leave this out in production.
  allow_private_destinations = true,
}

-- Called for each request that passed the login and the permissions; Lua is
-- only involved because this handler is registered.
kumoproxy.on('proxy_server_request', function(request, auth_info, conn_meta)
  local who = auth_info.identities[1].identity
  print(('%s %s %s:%d from %s'):format(who, request.command, request.host, request.port,
    conn_meta.peer_address))
  io.stdout:flush()
  return true
end)

print('proxy listener on ' .. listener:local_addr())
io.stdout:flush()

kumoproxy.run { grace = '5 seconds' }

local s = listener:stats()
print(('stopped: %d completed, %d auth failures, %d denied'):format(s.completed, s.auth_failures, s.denied))
