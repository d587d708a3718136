-- PROXY protocol v1/v2 (issue 16) with a real HAProxy (Debian's haproxy,
-- spec/support/haproxy.lua): in front of a listener (send-proxy,
-- send-proxy-v2), behind it (an accept-proxy frontend reporting the address
-- it saw), and as KumoMTA-style egress (ha_proxy_server).
local H = require 'spec.support.helpers'
local HA = require 'spec.support.haproxy'
local socket = H.socket

-- Builds a v2 PROXY header for TCP over IPv4 (what HAProxy's send-proxy-v2 writes).
local function v2_header(src, sport, dst, dport, cmd)
  local function ip(a)
    local t = {}
    for x in a:gmatch('%d+') do t[#t + 1] = string.char(tonumber(x)) end
    return table.concat(t)
  end
  local function u16(n) return string.char(math.floor(n / 256), n % 256) end
  return '\r\n\r\n\0\r\nQUIT\n' .. string.char(cmd or 0x21, 0x11) .. u16(12)
    .. ip(src) .. ip(dst) .. u16(sport) .. u16(dport)
end

-- An HTTP GET over a fresh TCP connection from `source` (nil: any); the body.
local function http_get(port, source, prefix)
  local c = assert(socket.tcp())
  c:settimeout(5)
  if source then assert(c:bind(source, 0)) end
  assert(c:connect('127.0.0.1', port))
  assert(c:send((prefix or '') .. 'GET / HTTP/1.0\r\nHost: t\r\n\r\n'))
  local resp = c:receive('*a')
  c:close()
  return resp and resp:match('\r\n\r\n(.*)$')
end

describe('HAProxy test harness (spec/support/haproxy.lua)', function()
  if not HA.available() then
    it('needs haproxy (bash .ci/setup installs it)', function()
      error('/usr/sbin/haproxy is missing')
    end)
    return
  end

  it('send-proxy-v2 / send-proxy name the client to an accept-proxy frontend', function()
    local seen = HA.free_port()
    local ha = HA.start {
      seen = { 'report', port = seen },
      v2 = { 'send', to = '127.0.0.1:' .. seen, proxy = 'v2' },
      v1 = { 'send', to = '127.0.0.1:' .. seen, proxy = 'v1' },
    }
    local ok, err = pcall(function()
      assert.matches('^127%.0%.0%.2:%d+ 127%.0%.0%.1:' .. ha.ports.v2 .. '\n$', http_get(ha.ports.v2, '127.0.0.2'))
      assert.matches('^127%.0%.0%.3:%d+ 127%.0%.0%.1:' .. ha.ports.v1 .. '\n$', http_get(ha.ports.v1, '127.0.0.3'))
      -- A header written by hand is read the same way.
      assert.are.equal('10.9.8.7:4242 192.0.2.1:25\n',
        http_get(seen, nil, v2_header('10.9.8.7', 4242, '192.0.2.1', 25)))
    end)
    ha.stop()
    assert(ok, err)
  end)

  it('an egress frontend connects from the source address in the header', function()
    local ha = HA.start { egress = { 'egress' } }
    local srv = assert(socket.bind('127.0.0.1', 0))
    local _, port = srv:getsockname()
    srv:settimeout(5)
    local ok, err = pcall(function()
      local c = assert(socket.tcp())
      c:settimeout(5)
      assert(c:connect('127.0.0.1', ha.ports.egress))
      assert(c:send(v2_header('127.0.0.3', 0, '127.0.0.1', tonumber(port)) .. 'ping'))
      local a = assert(srv:accept())
      a:settimeout(5)
      assert.are.equal('127.0.0.3', (a:getpeername()))
      assert.are.equal('ping', a:receive(4))
      a:close()
      c:close()
    end)
    srv:close()
    ha.stop()
    assert(ok, err)
  end)
end)
