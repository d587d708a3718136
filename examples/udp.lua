-- UDP ASSOCIATE: a SOCKS5 listener that relays UDP (DNS, QUIC, ...) for
-- authenticated users, and an egress source sending datagrams through it
-- from Lua.
--
--   lua5.4 examples/udp.lua        (or luajit; needs lua-socket for the demo peer)
--
-- Everything runs on 127.0.0.1 with free ports. Any SOCKS5 UDP client works
-- against such a listener, e.g. Python's PySocks:
--   s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
--   s.set_proxy(socks.SOCKS5, '127.0.0.1', port, username='alice', password='s3cret')
--   s.sendto(b'hi', ('127.0.0.1', 5353)); s.recvfrom(4096)
local kumoproxy = require 'kumoproxy'
local socket = require 'socket'

kumoproxy.on('proxy_server_auth_rfc1929', function(user, password)
  return user == 'alice' and password == 's3cret'
end)

-- Asked once per association (never per datagram): who may use UDP at all.
kumoproxy.on('proxy_server_request', function(request, auth_info)
  if request.command == 'udp_associate' then
    print(('proxy: %s asks for a UDP association'):format(auth_info.identities[1].identity))
  end
  return true
end)

-- 1. The proxy, with UDP. Each datagram's destination obeys the same
--    permissions as a CONNECT would; here the demo peer is on 127.0.0.1.
local proxy = kumoproxy.start_proxy_listener {
  listen = '127.0.0.1:0',
  require_auth = true,
  udp = true,
  udp_idle_timeout = '2 minutes',
  max_udp_associations = 1000,
  allow_private_destinations = true,
  -- Behind NAT, the address clients must send datagrams to:
  -- udp_advertise_address = '203.0.113.7',
}

-- 2. A demo UDP peer (it answers below, on this same thread: the kernel
--    queues the datagram until it reads it).
local peer = assert(socket.udp())
assert(peer:setsockname('127.0.0.1', 0))
peer:settimeout(5)
local _, peer_port = peer:getsockname()

-- 3. An egress source through the proxy, and a UDP association over it.
local src = kumoproxy.make_egress_source {
  name = 'example',
  socks5_proxy_server = proxy:local_addr(),
  socks5_proxy_username = 'alice',
  socks5_proxy_password = 's3cret',
}
local a = assert(src:udp_associate())
print('association relay: ' .. a:relay_address())

a:sendto('hello over UDP', '127.0.0.1', peer_port)
local got, from_ip, from_port = peer:receivefrom()
print(('peer: got %q from %s:%d (the proxy)'):format(got, from_ip, from_port))
peer:sendto('hello back', from_ip, from_port)

local reply, host, port = a:receivefrom(5)
print(('client: %q from %s:%d'):format(reply, host, port))
a:close()

-- Counters are updated by the runtime as datagrams go; wait for the reply's.
kumoproxy.run_until(function() return proxy:stats().udp_datagrams_to_client == 1 end, 5)
local s = proxy:stats()
print(('proxy: %d datagram(s) out, %d back'):format(s.udp_datagrams_to_remote, s.udp_datagrams_to_client))
proxy:close()
print('done')
