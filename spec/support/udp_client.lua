-- A raw SOCKS5 UDP ASSOCIATE client on luasocket, for specs that hold an
-- association open while they look at the proxy (limits, live sessions).
-- Blocking: only for listeners whose sessions need no Lua handler. `src`
-- picks the client's loopback address (127.0.0.x), so that per-IP limit keys
-- of different tests stay apart.
local socket = require 'socket'
local H = require 'spec.support.helpers'

local M = {}

local function split(addr)
  local host, port = addr:match('^(.*):(%d+)$')
  return host, tonumber(port)
end

local function port_bytes(p)
  return string.char(math.floor(p / 256), p % 256)
end

local function connect(proxy, src)
  local host, port = split(proxy)
  local c = assert(socket.tcp())
  assert(c:bind(src or '127.0.0.1', 0))
  c:settimeout(5)
  assert(c:connect(host, port))
  assert(c:send('\5\1\0'))
  assert(assert(c:receive(2)) == '\5\0', 'no-auth method refused')
  return c
end

-- Reads a SOCKS5 reply: code, bound address (IPv4 only here).
local function reply(c)
  local head, err = c:receive(4)
  if not head then return nil, err end
  local rest = assert(c:receive(head:byte(4) == 4 and 18 or 6))
  return head:byte(2), ('%d.%d.%d.%d'):format(rest:byte(1, 4)), rest:byte(5) * 256 + rest:byte(6)
end

-- CONNECT to 127.0.0.1:port; returns the reply code (the connection is closed).
function M.connect_code(proxy, port, src)
  local c = connect(proxy, src)
  assert(c:send('\5\1\0\1\127\0\0\1' .. port_bytes(port)))
  local code = reply(c)
  c:close()
  return code
end

-- An association, or nil and the reply code.
function M.associate(proxy, src)
  src = src or '127.0.0.1'
  local c = connect(proxy, src)
  assert(c:send('\5\3\0\1\0\0\0\0\0\0'))
  local code, ip, port = reply(c)
  if code ~= 0 then
    c:close()
    return nil, code
  end
  local u = assert(socket.udp())
  assert(u:setsockname(src, 0))
  local a = { ctl = c, udp = u, relay_ip = ip, relay_port = port }
  -- One datagram to 127.0.0.1:`to`.
  function a:send(to, payload)
    return self.udp:sendto('\0\0\0\1\127\0\0\1' .. port_bytes(to) .. payload, self.relay_ip, self.relay_port)
  end
  -- The next datagram's payload, or nil, 'timeout'.
  function a:recv(timeout)
    self.udp:settimeout(timeout or 2)
    local d, err = self.udp:receive()
    if not d then return nil, err end
    return d:sub(11)
  end
  -- Sends `payload` to the echo at `to` and waits for it back.
  function a:echo(to, payload, timeout)
    assert(self:send(to, payload))
    return self:recv(timeout)
  end
  -- True once the proxy closed the control connection (within `timeout` s).
  function a:ctl_closed(timeout)
    self.ctl:settimeout(timeout or 5)
    local d, err = self.ctl:receive(1)
    return d == nil and err == 'closed'
  end
  function a:close()
    self.udp:close()
    self.ctl:close()
  end
  return a
end

-- spec/support/udp.py's peers (UDP echo and DNS responder on 127.0.0.1 and
-- ::1): a table of their ports, and stop().
function M.start_peers()
  local f = assert(io.popen(('exec python3 spec/support/udp.py peers --parent-pid %d'):format(H.pid()), 'r'))
  local line = assert(f:read('*l'), 'udp.py peers did not start')
  local p = { pipe = f }
  for k, v in line:gmatch('(%w+)=(%d+)') do
    p[k] = tonumber(v)
  end
  function p.stop()
    os.execute('kill ' .. p.pid .. ' 2>/dev/null')
    f:close()
  end
  return p
end

return M
