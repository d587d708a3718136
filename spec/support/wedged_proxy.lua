-- A proxy whose auth handler never returns (for wedge.py): the first login
-- wedges the host thread for good. Prints READY, then WEDGED when the handler
-- starts looping. Stopped with SIGKILL: nothing on the host thread runs again.
local kp = require 'kumoproxy'
kp.on('proxy_server_auth_rfc1929', function()
  print('WEDGED')
  io.stdout:flush()
  while true do end
end)
local l = kp.start_proxy_listener { listen = '127.0.0.1:0', timeout = os.getenv('KUMOPROXY_TIMEOUT') or 1,
  allow_private_destinations = true }
print('READY ' .. l:local_addr())
io.stdout:flush()
kp.run()
