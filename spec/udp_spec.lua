-- UDP ASSOCIATE (RFC 1928 §7): listener parameters, the relay with real
-- clients (PySocks' UDP socket and a raw Python client) against a UDP echo and
-- a tiny DNS responder on 127.0.0.1 and ::1, the issue's bad inputs, limits,
-- policy, and egress: through our own listener and through Dante's UDP relay.
-- Every port is OS-assigned; waits are on conditions, never sleeps.
local H = require 'spec.support.helpers'
local U = require 'spec.support.udp_client'
local kp = H.kp
local socket = H.socket

local AUTH = 'proxy_server_auth_rfc1929'
local REQUEST = 'proxy_server_request'

local function lerr(params)
  params.listen = params.listen or '127.0.0.1:0'
  local ok, err = pcall(kp.start_proxy_listener, params)
  assert.is_false(ok, 'expected an error')
  return tostring(err)
end

local function udp_py(args)
  local out, rc, err = H.sh('python3 spec/support/udp.py ' .. args)
  assert(out, rc)
  return out, rc, err
end

local function v6_available()
  local s = socket.udp6 and socket.udp6()
  if not s then return false end
  local ok = s:setsockname('::1', 0)
  s:close()
  return ok == 1
end

local function udp_listener(params)
  params.udp = params.udp == nil and true or params.udp
  if params.allow_private_destinations == nil then
    params.allow_private_destinations = true
  end
  return H.listener(params)
end

describe('udp listener parameters', function()
  it('udp settings without udp = true are errors naming the key', function()
    for _, k in ipairs { 'udp_advertise_address', 'udp_idle_timeout', 'udp_filter', 'max_udp_associations' } do
      local v = ({ udp_advertise_address = '127.0.0.1', udp_idle_timeout = 5,
        udp_filter = 'endpoint-independent', max_udp_associations = 5 })[k]
      assert.matches('start_proxy_listener: ' .. k .. ': requires udp = true', lerr { [k] = v })
    end
  end)

  it('bad values name the key', function()
    assert.matches('udp: expected a boolean', lerr { udp = 'yes' })
    assert.matches("udp_filter: unknown filter \"full%-cone\"", lerr { udp = true, udp_filter = 'full-cone' })
    assert.matches('udp_idle_timeout: must be greater than zero', lerr { udp = true, udp_idle_timeout = 0 })
    assert.matches('max_udp_associations: 0 is out of range', lerr { udp = true, max_udp_associations = 0 })
    assert.matches('udp_advertise_address: must be an address clients can send to',
      lerr { udp = true, udp_advertise_address = '0.0.0.0' })
    assert.matches("udp_advertise_address: 'nope' is not an IP address",
      lerr { udp = true, udp_advertise_address = 'nope' })
  end)

  it('stats carry the udp counters, zero at start', function()
    local l = udp_listener {}
    local s = l:stats()
    for _, k in ipairs { 'udp_associations_active', 'udp_associations_total', 'udp_datagrams_to_remote',
      'udp_bytes_to_remote', 'udp_datagrams_to_client', 'udp_bytes_to_client', 'udp_dropped_malformed',
      'udp_dropped_fragmented', 'udp_dropped_foreign_source', 'udp_dropped_denied',
      'udp_dropped_unsolicited', 'udp_dropped_oversize', 'udp_dropped_limit', 'udp_associations_refused' } do
      assert.are.equal(0, s[k], k)
    end
    l:close()
  end)
end)

describe('udp associate', function()
  local peers
  setup(function() peers = U.start_peers() end)
  teardown(function()
    kp.on(REQUEST, nil)
    kp.on(AUTH, nil)
    peers.stop()
  end)
  after_each(function()
    kp.on(REQUEST, nil)
    kp.on(AUTH, nil)
  end)

  it('is refused with 0x07 on a listener without udp, which keeps serving', function()
    local l = H.listener { allow_private_destinations = true }
    local out = udp_py(('raw --proxy %s'):format(l:local_addr()))
    assert.matches('^reply=0x07', out)
    H.eventually(function() return l:stats().failed == 1 end, 10, 'refusal counted')
    -- A CONNECT (to the listener itself) still works.
    local c = assert(H.socks_connect(l:local_addr(), '127.0.0.1', tonumber(l:local_addr():match(':(%d+)$'))))
    c:close()
    l:close()
  end)

  it("works with PySocks' UDP client, to IPv4 and IPv6 destinations", function()
    local l = udp_listener {}
    local out = udp_py(('pysocks --proxy %s --target 127.0.0.1:%d -n 3'):format(l:local_addr(), peers.echo4))
    assert.are.equal(('ok=3 from=127.0.0.1:%d\n'):format(peers.echo4), out)
    if v6_available() then
      out = udp_py(('pysocks --proxy %s --target [::1]:%d -n 2'):format(l:local_addr(), peers.echo6))
      assert.are.equal(('ok=2 from=[::1]:%d\n'):format(peers.echo6), out)
    end
    H.eventually(function()
      local s = l:stats()
      return s.udp_associations_active == 0 and s.completed >= 1
    end, 10, 'associations ended with their control connections')
    local s = l:stats()
    local n = v6_available() and 5 or 3
    assert.are.equal(n, s.udp_datagrams_to_remote)
    assert.are.equal(n, s.udp_datagrams_to_client)
    assert.are.equal(s.udp_bytes_to_remote, s.udp_bytes_to_client)
    assert.are.equal(v6_available() and 2 or 1, s.udp_associations_total)
    l:close()
  end)

  it('replies with the address the client connected to, IPv4 and IPv6, and relays both ways', function()
    local l = udp_listener {}
    local out = udp_py(('raw --proxy %s --target 127.0.0.1:%d -n 20 --size 1200'):format(l:local_addr(), peers.echo4))
    assert.matches('^reply=0x00 bound=127%.0%.0%.1:%d+\necho', out)
    assert.matches('echoed=20', out)
    l:close()
    if not v6_available() then return end
    local l6 = udp_listener { listen = '[::1]:0' }
    out = udp_py(('raw --proxy %s --family 6 --target [::1]:%d -n 5'):format(l6:local_addr(), peers.echo6))
    assert.matches('^reply=0x00 bound=%[::1%]:%d+\n', out)
    assert.matches('echoed=5', out)
    -- IPv6 client, IPv4 destination.
    out = udp_py(('raw --proxy %s --family 6 --target 127.0.0.1:%d -n 2'):format(l6:local_addr(), peers.echo4))
    assert.matches('echoed=2', out)
    l6:close()
  end)

  it('works on a TLS listener: control connection in TLS, datagrams plain UDP', function()
    local l = udp_listener { use_tls = true }
    local out = udp_py(('raw --tls --proxy %s --target 127.0.0.1:%d -n 3 --close-control')
      :format(l:local_addr(), peers.echo4))
    assert.matches('^reply=0x00 bound=127%.0%.0%.1:%d+\nechoed=3\nafter_close=0\n$', out)
    H.eventually(function()
      local s = l:stats()
      -- >= 3: a 'late' datagram may still be relayed while the close is on its way.
      return s.completed == 1 and s.udp_associations_active == 0 and s.udp_datagrams_to_client >= 3
    end, 10, 'association over TLS ended')
    l:close()
  end)

  it('carries DNS to a responder on 127.0.0.1 and ::1', function()
    local l = udp_listener {}
    local out = udp_py(('dns --proxy %s --server 127.0.0.1:%d --name kumo.test'):format(l:local_addr(), peers.dns4))
    assert.are.equal(('answer=127.0.0.1 from=127.0.0.1:%d\n'):format(peers.dns4), out)
    if v6_available() then
      out = udp_py(('dns --proxy %s --server [::1]:%d --name kumo.test --qtype AAAA')
        :format(l:local_addr(), peers.dns6))
      assert.are.equal(('answer=::1 from=[::1]:%d\n'):format(peers.dns6), out)
    end
    l:close()
  end)

  it('drops and counts bad datagrams; the association goes on', function()
    local l = udp_listener {}
    local out = udp_py(('raw --proxy %s --target 127.0.0.1:%d --bad'):format(l:local_addr(), peers.echo4))
    assert.matches('bad_answered=0\nechoed=1\n', out)
    H.eventually(function()
      local s = l:stats()
      return s.udp_dropped_malformed == 5 and s.udp_dropped_fragmented == 2
    end, 10, 'bad datagrams counted')
    assert.are.equal(1, l:stats().udp_datagrams_to_remote)
    l:close()
  end)

  it('ignores datagrams from another port or another IP', function()
    local l = udp_listener {}
    local out = udp_py(('raw --proxy %s --target 127.0.0.1:%d --intruders'):format(l:local_addr(), peers.echo4))
    assert.matches('echoed=1\nintruder_answered=0\n', out)
    H.eventually(function() return l:stats().udp_dropped_foreign_source == 2 end, 10, 'intruders counted')
    l:close()
  end)

  it('keeps to the DST.PORT the request named', function()
    local l = udp_listener {}
    local s = assert(socket.udp())
    assert(s:setsockname('127.0.0.1', 0))
    local _, port = s:getsockname()
    s:close()
    local out = udp_py(('raw --proxy %s --port %d --target 127.0.0.1:%d --intruders')
      :format(l:local_addr(), port, peers.echo4))
    assert.matches('echoed=1\nintruder_answered=0\n', out)
    l:close()
  end)

  it('ends with the control connection', function()
    local l = udp_listener {}
    local out = udp_py(('raw --proxy %s --target 127.0.0.1:%d --close-control'):format(l:local_addr(), peers.echo4))
    assert.matches('echoed=1\nafter_close=0\n', out)
    H.eventually(function()
      local s = l:stats()
      return s.udp_associations_active == 0 and s.active == 0 and s.completed == 1
    end, 10, 'association and session ended')
    l:close()
  end)

  it('ends after udp_idle_timeout without datagrams, closing the control connection', function()
    local l = udp_listener { udp_idle_timeout = '300ms' }
    local c = assert(socket.connect('127.0.0.1', tonumber(l:local_addr():match(':(%d+)$'))))
    c:settimeout(5)
    c:send('\5\1\0')
    assert.are.equal('\5\0', c:receive(2))
    c:send('\5\3\0\1\0\0\0\0\0\0')
    local head = assert(c:receive(10))
    assert.are.equal(0, head:byte(2))
    H.eventually(function() return l:stats().udp_associations_total == 1 end, 10, 'association started')
    -- The proxy closes the control connection once idle.
    local data, err = c:receive(1)
    assert.is_nil(data)
    assert.are.equal('closed', err)
    c:close()
    H.eventually(function() return l:stats().udp_associations_active == 0 end, 10, 'association ended')
    l:close()
  end)

  it('max_udp_associations refuses the one too many with 0x01 and counts it', function()
    local l = udp_listener { max_udp_associations = 2 }
    local out = udp_py(('raw --proxy %s --associations 3'):format(l:local_addr()))
    assert.are.equal('reply=0x00\nreply=0x00\nreply=0x01\n', out)
    H.eventually(function() return l:stats().udp_associations_refused == 1 end, 10, 'refusal counted')
    -- Slots come back when associations end.
    H.eventually(function() return l:stats().active == 0 end, 10, 'sessions ended')
    out = udp_py(('raw --proxy %s --associations 2'):format(l:local_addr()))
    assert.are.equal('reply=0x00\nreply=0x00\n', out)
    l:close()
  end)

  it('holds datagrams to the private-destination rule and permissions', function()
    local l = udp_listener { allow_private_destinations = false }
    local out = udp_py(('raw --proxy %s --target 127.0.0.1:%d --recv-timeout 0.5'):format(l:local_addr(), peers.echo4))
    assert.matches('^reply=0x00', out)
    assert.matches('error=TimeoutError', out)
    H.eventually(function() return l:stats().udp_dropped_denied == 1 end, 10, 'denied datagram counted')
    assert.are.equal(0, l:stats().udp_datagrams_to_remote)
    l:close()
    local l2 = udp_listener { permissions = { deny = { '127.0.0.1:' .. peers.echo4 } } }
    -- By address, and by a name resolving to it: both refused, one decision each.
    for _, host in ipairs { '127.0.0.1', 'localhost' } do
      out = udp_py(('raw --proxy %s --target %s:%d --recv-timeout 0.5'):format(l2:local_addr(), host, peers.echo4))
      assert.matches('error=TimeoutError', out)
    end
    H.eventually(function() return l2:stats().udp_dropped_denied == 2 end, 10, 'denied datagrams counted')
    out = udp_py(('dns --proxy %s --server 127.0.0.1:%d --name kumo.test'):format(l2:local_addr(), peers.dns4))
    assert.matches('^answer=127.0.0.1', out)
    l2:close()
  end)

  it('asks proxy_server_request once per association, with authentication', function()
    local calls = {}
    kp.on(AUTH, function(user, password) return user == 'alice' and password == 's3cret' end)
    kp.on(REQUEST, function(request, auth_info)
      calls[#calls + 1] = request.command .. ' ' .. auth_info.identities[1].identity
      return true
    end)
    local l = udp_listener { require_auth = true }
    local out = udp_py(('pysocks --proxy %s --target 127.0.0.1:%d -n 4 --user alice --password s3cret')
      :format(l:local_addr(), peers.echo4))
    assert.matches('^ok=4', out)
    assert.same({ 'udp_associate alice' }, calls)
    out = udp_py(('raw --proxy %s --user alice --password wrong'):format(l:local_addr()))
    assert.matches('error=OSError: auth failed', out)
    kp.on(REQUEST, function() return false end)
    out = udp_py(('raw --proxy %s --user alice --password s3cret'):format(l:local_addr()))
    assert.matches('^reply=0x02', out)
    H.eventually(function() return l:stats().denied == 1 end, 10, 'denial counted')
    l:close()
  end)

  it('udp_advertise_address replaces the address in the reply', function()
    local l = udp_listener { udp_advertise_address = '127.0.0.5' }
    local out = udp_py(('raw --proxy %s'):format(l:local_addr()))
    assert.matches('^reply=0x00 bound=127%.0%.0%.5:%d+\n', out)
    l:close()
  end)

  it('relays through an egress source: a listener chained to another, and src:udp_associate()', function()
    local back = udp_listener {}
    local src = kp.make_egress_source { name = 'udp-back', socks5_proxy_server = back:local_addr() }
    local front = udp_listener { egress_source = src }
    local out = udp_py(('pysocks --proxy %s --target 127.0.0.1:%d -n 3'):format(front:local_addr(), peers.echo4))
    assert.are.equal(('ok=3 from=127.0.0.1:%d\n'):format(peers.echo4), out)
    H.eventually(function() return back:stats().udp_datagrams_to_client == 3 end, 10, 'relayed by the back listener')

    local a = assert(src:udp_associate())
    assert.matches('^kumoproxy.udp_association%(udp%-back%)$', tostring(a))
    assert.matches('^127%.0%.0%.1:%d+$', a:relay_address())
    assert.are.equal(4, a:sendto('ping', '127.0.0.1', peers.echo4))
    local data, host, port = a:receivefrom(5)
    assert.are.same({ 'ping', '127.0.0.1', peers.echo4 }, { data, host, port })
    assert.are.equal(5, a:sendto('named', 'localhost', peers.echo4))
    data, host = a:receivefrom('5 seconds')
    assert.are.same({ 'named', '127.0.0.1' }, { data, host })
    local none, err = a:receivefrom(0.2)
    assert.is_nil(none)
    assert.are.equal('timeout', err)
    a:close()
    none, err = a:sendto('x', '127.0.0.1', peers.echo4)
    assert.is_nil(none)
    assert.are.equal('closed', err)
    H.eventually(function() return back:stats().udp_associations_active == 0 end, 10, 'back association ended')
    front:close()
    back:close()
  end)

  it('src:udp_associate() returns nil, err when the upstream refuses', function()
    local plain = H.listener { allow_private_destinations = true }
    local src = kp.make_egress_source { name = 'no-udp', socks5_proxy_server = plain:local_addr() }
    local a, err = src:udp_associate()
    assert.is_nil(a)
    assert.matches('^socks5: command not supported %(0x07%) for UDP ASSOCIATE via proxy 127%.0%.0%.1:%d+', err)
    plain:close()
  end)
end)

describe('udp interop with Dante', function()
  local peers, port, pid, dir
  local function free_port()
    local s = assert(socket.bind('127.0.0.1', 0))
    local _, p = s:getsockname()
    s:close()
    return tonumber(p)
  end
  setup(function()
    peers = U.start_peers()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute('mkdir -m 700 ' .. dir))
    port = free_port()
    local f = assert(io.open(dir .. '/danted.conf', 'w'))
    f:write(([[
logoutput: stderr
internal: 127.0.0.1 port = %d
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 command: connect udpassociate }
socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 command: udpreply }
]]):format(port))
    f:close()
    local p = assert(io.popen(('timeout 300 /usr/sbin/danted -f %s/danted.conf -p %s/danted.pid >%s/danted.log 2>&1 & echo $!')
      :format(dir, dir, dir)))
    pid = tonumber(p:read('*l'))
    p:close()
    H.eventually(function()
      local c = socket.connect('127.0.0.1', port)
      if c then c:close() return true end
    end, 10, 'danted listening')
  end)
  teardown(function()
    os.execute('kill ' .. pid .. ' 2>/dev/null')
    peers.stop()
    os.execute('rm -rf ' .. dir)
  end)

  it('src:udp_associate() through Dante', function()
    local src = kp.make_egress_source { name = 'dante', socks5_proxy_server = '127.0.0.1:' .. port }
    local a = assert(src:udp_associate())
    for i = 1, 3 do
      assert(a:sendto('dante ' .. i, '127.0.0.1', peers.echo4))
      local data, host, p = a:receivefrom(5)
      assert.are.same({ 'dante ' .. i, '127.0.0.1', peers.echo4 }, { data, host, p })
    end
    a:close()
  end)

  it('a listener chained to Dante relays PySocks and DNS datagrams both ways', function()
    local src = kp.make_egress_source { name = 'dante', socks5_proxy_server = '127.0.0.1:' .. port }
    local l = udp_listener { egress_source = src }
    local out = udp_py(('pysocks --proxy %s --target 127.0.0.1:%d -n 3'):format(l:local_addr(), peers.echo4))
    assert.are.equal(('ok=3 from=127.0.0.1:%d\n'):format(peers.echo4), out)
    out = udp_py(('dns --proxy %s --server 127.0.0.1:%d --name kumo.test'):format(l:local_addr(), peers.dns4))
    assert.are.equal(('answer=127.0.0.1 from=127.0.0.1:%d\n'):format(peers.dns4), out)
    H.eventually(function()
      local s = l:stats()
      return s.udp_datagrams_to_client == 4 and s.udp_associations_active == 0
    end, 10, 'counted and ended')
    l:close()
  end)
end)

describe('examples/udp.lua', function()
  it('runs to completion', function()
    local out, rc, err = H.sh({ H.lua, 'examples/udp.lua' })
    assert.are.equal(0, rc, err)
    assert.matches('proxy: alice asks for a UDP association', out)
    assert.matches('peer: got "hello over UDP" from 127%.0%.0%.1:%d+ %(the proxy%)', out)
    assert.matches('client: "hello back" from 127%.0%.0%.1:%d+', out)
    assert.matches('proxy: 1 datagram%(s%) out, 1 back', out)
    assert.matches('\ndone\n$', out)
  end)
end)
