-- HTTP CONNECT and SOCKS5 on one port, and a status/metrics listener.
--
--   lua5.4 examples/http_proxy.lua        (or luajit; needs curl)
--
-- Everything runs on 127.0.0.1 with free ports. The proxy wants Basic
-- credentials from everyone (checked by a Lua handler); curl reaches the status
-- listener *through* the proxy's tunnel, then reads /metrics directly (loopback
-- is a trusted host of the status listener by default).
local kumoproxy = require 'kumoproxy'

-- 1. One handler checks Basic credentials for both listeners: the proxy's
--    Proxy-Authorization and the status listener's Authorization.
--    true = valid, false = 407/401, an error or any other value = 500.
kumoproxy.on('http_server_validate_auth_basic', function(user, password, conn_meta)
  print(('auth: %s from %s'):format(user, conn_meta.peer_address))
  return user == 'alice' and password == 'secret'
end)

-- 2. The proxy: the first byte of each connection picks the protocol.
--    trusted_hosts = {}: nobody gets in without credentials (the default
--    lets loopback in, which would make this demo pointless).
local proxy = kumoproxy.start_proxy_listener {
  listen = '127.0.0.1:0',
  protocols = { 'socks5', 'http' },
  trusted_hosts = {},
  -- The demo tunnels to the status listener on 127.0.0.1. Loopback, link-local
  -- and 169.254.169.254 are denied by default: leave this out in production.
  allow_private_destinations = true,
}

-- 3. The status listener: /metrics, /proxy/status, /proxy/listeners.
local status = kumoproxy.start_http_listener { listen = '127.0.0.1:0' }

-- run_command keeps answering events while curl runs, so the handler above
-- is called from this very thread.
local function connect_code(creds)
  local out = kumoproxy.run_command(
    ('curl -sS -o /dev/null --max-time 10 -w "%%{http_connect}" -x http://%s@%s --proxytunnel http://%s/proxy/status')
      :format(creds, proxy:local_addr(), status:local_addr()))
  return out
end

print('curl via HTTP CONNECT: ' .. connect_code('alice:secret'))
print('wrong password: ' .. connect_code('alice:guess'))

-- The tunnel ends when both sides have closed; wait for it, then scrape.
assert(kumoproxy.run_until(function() return proxy:stats().completed == 1 end, 10))
local metrics = kumoproxy.run_command('curl -sS --max-time 10 http://' .. status:local_addr() .. '/metrics')
for line in metrics:gmatch('[^\n]+') do
  if line:match('^kumoproxy_listener_completed_total') or line:match('^kumoproxy_listener_auth_failures_total') then
    print(line)
  end
end
print('status: ' .. kumoproxy.run_command('curl -sS --max-time 10 http://' .. status:local_addr() .. '/proxy/status'))

proxy:close()
status:close()
print('done')
