-- PROXY protocol v1/v2 (issue 16) with a real HAProxy (Debian's haproxy,
-- spec/support/haproxy.lua): in front of a listener (send-proxy,
-- send-proxy-v2), behind it (an accept-proxy frontend reporting the address
-- it saw), and as KumoMTA-style egress (ha_proxy_server).
local H = require 'spec.support.helpers'
local HA = require 'spec.support.haproxy'
local kp = H.kp
local socket = H.socket
local REQUEST = 'proxy_server_request'

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

-- A SOCKS5 NOAUTH CONNECT from `source` through `port` (no Lua decision
-- involved, so a blocking LuaSocket client is fine). Returns the socket, or
-- nil and why.
local function socks_from(port, source, host, dport)
  local c = assert(socket.tcp())
  c:settimeout(5)
  assert(c:bind(source, 0))
  local ok, err = c:connect('127.0.0.1', port)
  if not ok then return nil, err end
  c:send('\5\1\0')
  local sel, err2 = c:receive(2)
  if sel ~= '\5\0' then
    c:close()
    return nil, sel and ('method ' .. sel:byte(2)) or err2
  end
  local a, b, cc, d = host:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
  c:send('\5\1\0\1' .. string.char(tonumber(a), tonumber(b), tonumber(cc), tonumber(d),
    math.floor(dport / 256), dport % 256))
  local rep, err3 = c:receive(10)
  if not rep or rep:byte(2) ~= 0 then
    c:close()
    return nil, rep and ('reply ' .. rep:byte(2)) or err3
  end
  return c
end

local function echo_ok(c)
  c:send('ping\n')
  return c:receive('*l') == 'ping'
end

-- curl through a proxy URL from a source address; returns rc, body, stderr.
local function curl(proxy_url, source, url, extra)
  local cmd = { 'curl', '-sS', '--max-time', '15', '--interface', source, '-x', proxy_url, url }
  for _, a in ipairs(extra or {}) do cmd[#cmd + 1] = a end
  local out, rc, err = H.sh(cmd)
  return rc, out, err
end

describe('PROXY protocol in front of a listener (real HAProxy)', function()
  if not HA.available() then return end
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)
  after_each(function() kp.on(REQUEST, nil) end)

  -- A listener behind HAProxy (frontends v2 and v1), run(ha, l) then stops both.
  local function behind_haproxy(params, extra_frontends)
    params.proxy_protocol = params.proxy_protocol or { from = { '127.0.0.1' } }
    params.allow_private_destinations = true
    local l = H.listener(params)
    local to = l:local_addr()
    local fronts = {
      v2 = { 'send', to = to, proxy = 'v2', tlvs = 'unique-id,authority' },
      v1 = { 'send', to = to, proxy = 'v1' },
    }
    for k, v in pairs(extra_frontends or {}) do fronts[k] = v end
    local ha = HA.start(fronts)
    return l, ha
  end

  local function with(l, ha, fn)
    local ok, err = pcall(fn)
    ha.stop()
    H.quiesce()
    l:close()
    assert(ok, err)
  end

  it('trusted hosts see the original client (send-proxy-v2 and send-proxy)', function()
    local l, ha = behind_haproxy { trusted_hosts = { '127.0.0.2' } }
    with(l, ha, function()
      local url = ('http://127.0.0.1:%d/'):format(origin.http)
      for _, front in ipairs { 'v2', 'v1' } do
        local p = 'socks5://127.0.0.1:' .. ha.ports[front]
        local rc, out, err = curl(p, '127.0.0.2', url)
        assert.are.equal(0, rc, front .. ': ' .. tostring(err))
        assert.are.equal('hello from origin\n', out)
        -- 127.0.0.3 is not trusted and has no credentials: refused.
        rc = curl(p, '127.0.0.3', url)
        assert.are_not.equal(0, rc, front .. ': 127.0.0.3 was let in')
      end
      -- Straight from 127.0.0.2 (not a listed balancer): no header is read,
      -- and it is trusted as itself.
      local rc = curl('socks5://' .. l:local_addr(), '127.0.0.2', url)
      assert.are.equal(0, rc)
      -- Straight from 127.0.0.1 (a listed balancer) without a header: refused.
      rc = curl('socks5://' .. l:local_addr(), '127.0.0.1', url)
      assert.are_not.equal(0, rc)
    end)
  end)

  it('max_connections_per_ip counts the original clients, not the balancer', function()
    local l, ha = behind_haproxy { max_connections_per_ip = 1 }
    local base = H.socket_count()
    with(l, ha, function()
      local held = assert(socks_from(ha.ports.v2, '127.0.0.2', '127.0.0.1', origin.echo))
      assert.is_true(echo_ok(held))
      -- Same client again: over its cap (closed before any SOCKS5 byte).
      local again, why = socks_from(ha.ports.v2, '127.0.0.2', '127.0.0.1', origin.echo)
      assert.is_nil(again, 'second session from 127.0.0.2 allowed')
      assert.is_truthy(why)
      -- Another client through the same balancer: its own slot (v1 and v2).
      local other = assert(socks_from(ha.ports.v1, '127.0.0.3', '127.0.0.1', origin.echo))
      assert.is_true(echo_ok(other))
      other:close()
      held:close()
      H.quiesce()
      -- The slot came back when the session ended.
      local back = assert(socks_from(ha.ports.v2, '127.0.0.2', '127.0.0.1', origin.echo))
      assert.is_true(echo_ok(back))
      back:close()
      assert.is_true(l:stats().rejected >= 1)
      -- Every session's sockets are gone again (refused ones included).
      H.quiesce()
      H.eventually(function() return H.socket_count() == base end, 10, 'sockets back to ' .. base)
    end)
  end)

  it('the Lua handler sees the client, the balancer and the TLVs', function()
    local l, ha = behind_haproxy {}
    with(l, ha, function()
      local seen
      kp.on(REQUEST, function(_, _, meta)
        seen = {
          peer = meta.peer_address,
          balancer = meta.proxy_peer_address,
          tlvs = meta.proxy_tlvs,
        }
        return true
      end)
      local url = ('http://127.0.0.1:%d/'):format(origin.http)
      local rc, out, err = curl('socks5://127.0.0.1:' .. ha.ports.v2, '127.0.0.3', url)
      assert.are.equal(0, rc, err)
      assert.are.equal('hello from origin\n', out)
      assert.matches('^127%.0%.0%.3:%d+$', seen.peer)
      assert.matches('^127%.0%.0%.1:%d+$', seen.balancer)
      -- unique-id-format %ci:%cp (spec/support/haproxy.lua): the client again.
      assert.are.equal(seen.peer, seen.tlvs.unique_id)
      seen = nil
      rc = curl('socks5://127.0.0.1:' .. ha.ports.v1, '127.0.0.2', url)
      assert.are.equal(0, rc)
      assert.matches('^127%.0%.0%.2:%d+$', seen.peer)
      assert.is_nil(seen.tlvs, 'v1 carries no TLVs')
      -- Not through a balancer: no proxy_* fields.
      seen = nil
      rc = curl('socks5://' .. l:local_addr(), '127.0.0.2', url)
      assert.are.equal(0, rc)
      assert.is_nil(seen.balancer)
      assert.is_nil(seen.tlvs)
    end)
  end)

  it('a v2 LOCAL header (a health check) is served as the balancer itself', function()
    local l = H.listener { allow_private_destinations = true, trusted_hosts = { '127.0.0.1' },
      proxy_protocol = { from = { '127.0.0.1' } } }
    local port = tonumber(l:local_addr():match(':(%d+)$'))
    local function method(header)
      local c = assert(socket.tcp())
      c:settimeout(5)
      assert(c:connect('127.0.0.1', port))
      c:send(header .. '\5\1\0')
      local r = c:receive(2)
      c:close()
      return r and r:byte(2)
    end
    -- LOCAL: the balancer (127.0.0.1, trusted) itself; its addresses are ignored.
    assert.are.equal(0, method(v2_header('127.0.0.9', 1, '127.0.0.1', 2, 0x20)))
    -- PROXY naming 127.0.0.9: not trusted, NOAUTH refused.
    assert.are.equal(255, method(v2_header('127.0.0.9', 1, '127.0.0.1', 2)))
    H.quiesce()
    l:close()
  end)

  it('works with use_tls and protocols {socks5, http}: header before the TLS handshake', function()
    local l, ha = behind_haproxy {
      use_tls = true, hostname = 'proxy.test', protocols = { 'socks5', 'http' },
      trusted_hosts = { '127.0.0.2' },
    }
    with(l, ha, function()
      local url = ('http://127.0.0.1:%d/'):format(origin.http)
      local p = 'https://127.0.0.1:' .. ha.ports.v2
      local rc, out, err = curl(p, '127.0.0.2', url, { '--proxy-insecure', '--proxytunnel' })
      assert.are.equal(0, rc, err)
      assert.are.equal('hello from origin\n', out)
      rc, out = curl(p, '127.0.0.3', url, { '--proxy-insecure', '--proxytunnel' })
      assert.are_not.equal(0, rc, '127.0.0.3 let in: ' .. tostring(out))
    end)
  end)

  it('the status listener reads the header too', function()
    local s = kp.start_http_listener {
      listen = '127.0.0.1:0', trusted_hosts = { '127.0.0.2' },
      proxy_protocol = { from = { '127.0.0.1' } },
    }
    local ha = HA.start { v1 = { 'send', to = s:local_addr(), proxy = 'v1' } }
    local ok, err = pcall(function()
      local function get(source)
        local out, rc = H.sh { 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10',
          '--interface', source, ('http://127.0.0.1:%d/metrics'):format(ha.ports.v1) }
        return rc, out
      end
      local rc, code = get('127.0.0.2')
      assert.are.equal(0, rc)
      assert.are.equal('200', code)
      rc, code = get('127.0.0.3')
      assert.are.equal('401', code)
    end)
    ha.stop()
    s:close()
    assert(ok, err)
  end)
end)

describe('PROXY protocol bad input', function()
  if not HA.available() then return end
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)

  it('closes each bad connection with a clear log line; the listener keeps serving', function()
    -- A child interpreter, so its warn log can be read.
    local script = ([[
      local kp = require 'kumoproxy'
      local socket = require 'socket'
      local l = kp.start_proxy_listener { listen = '127.0.0.1:0', timeout = 1, allow_private_destinations = true,
        proxy_protocol = { from = { '127.0.0.1' } } }
      local tl = kp.start_proxy_listener { listen = '127.0.0.1:0', timeout = 1, use_tls = true,
        proxy_protocol = { from = { '127.0.0.1' } } }
      local function port(x) return tonumber(x:local_addr():match(':(%%d+)$')) end
      -- Sends `bytes` from `source`; returns what came back before the close.
      local function try(name, bytes, source, p, keep_open)
        local c = socket.tcp()
        c:settimeout(5)
        if source then c:bind(source, 0) end
        assert(c:connect('127.0.0.1', p or port(l)))
        if bytes then c:send(bytes) end
        local got, err, partial = c:receive('*a')
        c:close()
        print(name .. '=' .. ((got or partial or ''):gsub('.', function(ch) return ('%%02x'):format(ch:byte()) end)) .. ':' .. tostring(err))
      end
      local sig = '\r\n\r\n\0\r\nQUIT\n'
      local v2 = sig .. '\x21\x11\0\12\127\0\0\2\127\0\0\1\0\1\4\56'
      try('nohdr', '\5\1\0')
      try('untrusted', v2 .. '\5\1\0', '127.0.0.2')
      try('truncated', v2:sub(1, 20))
      try('oversized', sig .. '\x21\x11\15\160' .. string.rep('\0', 64))
      try('badtlv', sig .. '\x21\x11\0\17\127\0\0\2\127\0\0\1\0\1\4\56\5\0\200\0\0')
      try('garbage', 'PROXY TCP4 300.1.1.1 1.1.1.1 1 1\r\n\5\1\0')
      try('longv1', 'PROXY TCP4 ' .. string.rep('1', 120))
      try('silent', nil)
      try('tlsfirst', '\22\3\1\0\5\1\0\0\1\0', nil, port(tl))
      -- Still serving: a good header, then SOCKS5 to the echo server.
      local c = socket.tcp()
      c:settimeout(5)
      assert(c:connect('127.0.0.1', port(l)))
      c:send(v2 .. '\5\1\0')
      assert(c:receive(2) == '\5\0')
      c:send('\5\1\0\1\127\0\0\1' .. string.char(math.floor(%d / 256), %d %% 256))
      assert(c:receive(10):byte(2) == 0)
      c:send('ping\n')
      print('good=' .. c:receive('*l'))
      c:close()
    ]]):format(origin.echo, origin.echo)
    local out, rc, err = H.sh({ 'env', 'KUMOPROXY_LOG=warn', H.lua, '-e', script }, { timeout = 60 })
    assert.are.equal(0, rc, tostring(out) .. tostring(err))
    assert.matches('good=ping', out)
    local function closed(name, log_pattern)
      assert.matches(name .. '=:closed', out, 1, true)
      assert.matches(log_pattern, err)
    end
    closed('nohdr', 'PROXY header: not a PROXY protocol header %(starts with "\\x05\\x01\\x00"%)')
    -- From an untrusted peer the header is never parsed: malformed SOCKS5.
    assert.matches('untrusted=:closed', out, 1, true)
    assert.matches('session from 127%.0%.0%.2:%d+ failed: malformed', err)
    closed('truncated', 'PROXY header: timeout')
    closed('oversized', 'PROXY v2 header of 4016 bytes is over the 2064%-byte limit')
    closed('badtlv', 'bad PROXY v2 TLV')
    closed('garbage', 'bad PROXY v1 header')
    closed('longv1', 'PROXY v1 header longer than 107 bytes')
    closed('silent', 'PROXY header: timeout')
    closed('tlsfirst', 'not a PROXY protocol header %(starts with "\\x16\\x03\\x01')
    -- Every line is one line, escaped: no control characters but the newline.
    assert.is_nil(err:find('[%z\1-\9\11-\31]'), 'control character in the log')
  end)

  it('names the key in parameter errors', function()
    local function e(params)
      params.listen = '127.0.0.1:0'
      local ok, err = pcall(kp.start_proxy_listener, params)
      assert.is_false(ok)
      return tostring(err)
    end
    assert.matches('proxy_protocol', e { proxy_protocol = 'yes' })
    assert.matches('proxy_protocol.from', e { proxy_protocol = { from = {} } })
    assert.matches("'lb.example' is not an IP address or CIDR", e { proxy_protocol = { from = { 'lb.example' } } })
    assert.matches('form', e { proxy_protocol = { form = { '127.0.0.1' } } })
    assert.matches("send_proxy_protocol: must be 'v1' or 'v2', got 'v3'", e { send_proxy_protocol = 'v3' })
  end)
end)

describe('PROXY protocol toward destinations (real HAProxy accept-proxy)', function()
  if not HA.available() then return end
  local origin, ha
  setup(function()
    origin = H.start_origin()
    ha = HA.start { seen = { 'report' }, egress = { 'egress' } }
  end)
  teardown(function()
    kp.on(REQUEST, nil)
    ha.stop()
    origin.stop()
  end)

  it('send_proxy_protocol names the original client and the destination', function()
    for _, v in ipairs { 'v1', 'v2' } do
      local l = H.listener { allow_private_destinations = true, send_proxy_protocol = v }
      local rc, out, err = curl('socks5://' .. l:local_addr(), '127.0.0.3', ('http://127.0.0.1:%d/'):format(ha.ports.seen))
      assert.are.equal(0, rc, v .. ': ' .. tostring(err))
      assert.matches('^127%.0%.0%.3:%d+ 127%.0%.0%.1:' .. ha.ports.seen .. '\n$', out, nil, v)
      l:close()
    end
  end)

  it('behind a balancer, the header names the client the balancer named', function()
    local l = H.listener { allow_private_destinations = true, send_proxy_protocol = 'v2',
      proxy_protocol = { from = { '127.0.0.1' } } }
    local front = HA.start { v1 = { 'send', to = l:local_addr(), proxy = 'v1' } }
    local ok, err = pcall(function()
      local rc, out, e = curl('socks5://127.0.0.1:' .. front.ports.v1, '127.0.0.2', ('http://127.0.0.1:%d/'):format(ha.ports.seen))
      assert.are.equal(0, rc, e)
      assert.matches('^127%.0%.0%.2:%d+ ', out)
    end)
    front.stop()
    l:close()
    assert(ok, err)
  end)

  it('proxy_server_request sets or clears it per request', function()
    local l = H.listener { allow_private_destinations = true, send_proxy_protocol = 'v1' }
    local url = ('http://127.0.0.1:%d/'):format(ha.ports.seen)
    kp.on(REQUEST, function() return { send_proxy_protocol = false } end)
    -- No header: the accept-proxy frontend refuses the connection.
    local rc, out = curl('socks5://' .. l:local_addr(), '127.0.0.2', url)
    assert.are_not.equal(0, rc, 'header sent though cleared: ' .. tostring(out))
    -- Set on a listener without it.
    local l2 = H.listener { allow_private_destinations = true }
    kp.on(REQUEST, function() return { send_proxy_protocol = 'v2' } end)
    local err
    rc, out, err = curl('socks5://' .. l2:local_addr(), '127.0.0.2', url)
    assert.are.equal(0, rc, err)
    assert.matches('^127%.0%.0%.2:%d+ ', out)
    kp.on(REQUEST, nil)
    l:close()
    l2:close()
  end)

  it('an ha_proxy_server egress source delivers the chosen source address', function()
    local src = kp.make_egress_source {
      name = 'ha-egress', ha_proxy_server = '127.0.0.1:' .. ha.ports.egress,
      ha_proxy_source_address = '127.0.0.3',
    }
    -- From Lua: connect, then ask the origin's peer server who we are.
    local conn, err = src:connect('127.0.0.1', origin.peer)
    assert.is_truthy(conn, err)
    local line = conn:receive('*l')
    assert.matches('^127%.0%.0%.3:%d+$', line)
    -- What the destination sees: the chosen address (HAProxy picks the port).
    assert.are.equal('127.0.0.3:0', conn:proxy_bound_address())
    conn:close()
    -- As a listener's egress source.
    local l = H.listener { allow_private_destinations = true, egress_source = src }
    local rc, out, e = curl('socks5://' .. l:local_addr(), '127.0.0.1', ('http://127.0.0.1:%d/'):format(origin.http), { '-D', '-' })
    assert.are.equal(0, rc, e)
    assert.matches('X%-Peer: 127%.0%.0%.3:%d+', out)
    l:close()
  end)

  it('names the key in make_egress_source errors', function()
    local function e(p)
      p.name = p.name or 'x'
      local ok, err = pcall(kp.make_egress_source, p)
      assert.is_false(ok)
      return tostring(err)
    end
    assert.matches('ha_proxy_source_address: is required', e { ha_proxy_server = '127.0.0.1:5000' })
    assert.matches('ha_proxy_source_address: requires ha_proxy_server', e { ha_proxy_source_address = '127.0.0.2' })
    assert.matches("ha_proxy_server: 'lb:5000' is not ip:port", e { ha_proxy_server = 'lb:5000', ha_proxy_source_address = '127.0.0.2' })
    assert.matches('ha_proxy_server: cannot be combined with socks5_proxy_server',
      e { ha_proxy_server = '127.0.0.1:5000', ha_proxy_source_address = '127.0.0.2', socks5_proxy_server = '127.0.0.1:1080' })
  end)
end)
