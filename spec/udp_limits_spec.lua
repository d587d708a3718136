-- UDP associations under per-identity limits (issue 14 "as for CONNECT") and
-- in the live-session registry and access log (issue 17): a raw luasocket
-- client (spec/support/udp_client.lua) holds associations open against the
-- UDP echo of spec/support/udp.py. Each test uses its own client address
-- (127.0.0.x), so per-IP limit keys stay apart. Waits are on conditions.
local H = require 'spec.support.helpers'
local U = require 'spec.support.udp_client'
local json = require 'dkjson'
local kp = H.kp

local function udp_listener(params)
  params.udp = true
  params.allow_private_destinations = true
  return H.listener(params)
end

-- A counter from /metrics of a status listener (0 when absent).
local function metric(status, pattern)
  local out = assert(H.sh(('curl -sS --max-time 10 http://%s/metrics'):format(status:local_addr())))
  return tonumber(out:match(pattern .. ' (%d+)')) or 0
end

local function read_lines(path)
  local f = io.open(path)
  if not f then return {} end
  local t = {}
  for line in f:lines() do t[#t + 1] = assert(json.decode(line)) end
  f:close()
  return t
end

describe('udp associations under limits', function()
  local peers
  setup(function() peers = U.start_peers() end)
  teardown(function() peers.stop() end)

  it('max_sessions counts an association as a session: a second one and a CONNECT get 0x02', function()
    local src = '127.0.0.31'
    local l = udp_listener { limits = { max_sessions = 1 } }
    local proxy = l:local_addr()
    local status = kp.start_http_listener { listen = '127.0.0.1:0' }
    local refusals = 'kumoproxy_limit_refusals_total{kind="max_sessions"}'
    local before = metric(status, refusals)
    local a = assert(U.associate(proxy, src))
    assert.are.equal('one', a:echo(peers.echo4, 'one'))
    local none, code = U.associate(proxy, src)
    assert.is_nil(none)
    assert.are.equal(2, code)
    assert.are.equal(2, U.connect_code(proxy, peers.echo4, src))
    local s = assert(l:limit_stats(src))
    assert.are.equal(1, s.sessions)
    assert.are.equal(2, s.connect_refused)
    assert.are.equal(before + 2, metric(status, refusals))
    status:close()
    -- The refusals are failed sessions, and the association still relays.
    H.eventually(function() return l:stats().failed == 2 end, 10, 'refusals counted')
    assert.are.equal('two', a:echo(peers.echo4, 'two'))
    a:close()
    H.eventually(function() return l:limit_stats(src).sessions == 0 end, 10, 'lease released')
    local b = assert(U.associate(proxy, src))
    b:close()
    l:close()
  end)

  it('connect_rate counts associations', function()
    local src = '127.0.0.32'
    local l = udp_listener { limits = { connect_rate = '2/minute' } }
    local a = assert(U.associate(l:local_addr(), src))
    local b = assert(U.associate(l:local_addr(), src))
    local none, code = U.associate(l:local_addr(), src)
    assert.is_nil(none)
    assert.are.equal(2, code)
    assert.are.equal(1, l:limit_stats(src).connect_refused)
    a:close()
    b:close()
    l:close()
  end)

  it('counts datagram payload bytes each way in limit_stats', function()
    local src = '127.0.0.33'
    local l = udp_listener { limits = { max_sessions = 5 } }
    local a = assert(U.associate(l:local_addr(), src))
    for i = 1, 4 do
      assert.are.equal(('x'):rep(100 * i), a:echo(peers.echo4, ('x'):rep(100 * i)))
    end
    H.eventually(function()
      local s = l:limit_stats(src)
      return s.bytes_up == 1000 and s.bytes_down == 1000
    end, 10, '1000 bytes each way')
    assert.are.equal(1, l:limit_stats(src).sessions)
    a:close()
    l:close()
  end)

  it('drops and counts datagrams over the bandwidth limit, never queues them; the rest pass', function()
    local src = '127.0.0.34'
    -- 10 KB/s up: a 50 ms burst of 500 bytes, then 10 bytes per ms.
    local l = udp_listener { limits = { bandwidth = { up = '10 KB/s' } } }
    local a = assert(U.associate(l:local_addr(), src))
    local n = 40
    for _ = 1, n do assert(a:send(peers.echo4, ('b'):rep(200))) end
    H.eventually(function()
      local s = l:stats()
      return s.udp_datagrams_to_remote + s.udp_dropped_limit == n
    end, 10, 'every datagram relayed or dropped')
    local s = l:stats()
    assert.is_true(s.udp_dropped_limit >= n / 2, 'dropped ' .. s.udp_dropped_limit)
    assert.is_true(s.udp_datagrams_to_remote >= 2, 'relayed ' .. s.udp_datagrams_to_remote)
    -- What was relayed came back; nothing else did.
    local back = 0
    while a:recv(0.5) do back = back + 1 end
    assert.are.equal(s.udp_datagrams_to_remote, back)
    -- Once the bucket refills, datagrams pass again.
    H.eventually(function() return a:echo(peers.echo4, 'later', 0.2) == 'later' end, 10, 'a datagram passes')
    assert.are.equal(200 * s.udp_datagrams_to_remote + 5, l:limit_stats(src).bytes_up)
    -- Larger than the whole bucket (500 bytes): it goes once the bucket is full.
    local big = ('B'):rep(1400)
    H.eventually(function() return a:echo(peers.echo4, big, 0.2) == big end, 10, 'a 1,400-byte datagram passes')
    a:close()
    l:close()
  end)

  it('ends the association when the quota runs out, and says why in the log', function()
    local script = ([[
      local kp = require 'kumoproxy'
      local U = require 'spec.support.udp_client'
      local l = kp.start_proxy_listener { listen = '127.0.0.1:0', udp = true, allow_private_destinations = true,
        limits = { quota = '20000 bytes/hour' } }
      local a = assert(U.associate(l:local_addr(), '127.0.0.35'))
      local echoed = 0
      for _ = 1, 30 do
        if a:echo(%d, ('q'):rep(1000), 1) then echoed = echoed + 1 else break end
      end
      print('echoed=' .. echoed .. ' closed=' .. tostring(a:ctl_closed(5)))
      local s = l:limit_stats('127.0.0.35')
      print('up=' .. s.bytes_up .. ' down=' .. s.bytes_down .. ' remaining=' .. s.quota_remaining)
      local b, code = U.associate(l:local_addr(), '127.0.0.35')
      print('next=' .. tostring(code))
      a:close()
      l:close()
    ]]):format(peers.echo4)
    local out, rc, err = H.sh({ 'env', 'KUMOPROXY_LOG=warn', H.lua, '-e', script }, { timeout = 60 })
    assert.are.equal(0, rc, err)
    -- 1000 bytes up and 1000 down per echo: 10 fit in 20000 bytes.
    assert.matches('^echoed=10 closed=true\n', out)
    assert.matches('\nup=10000 down=10000 remaining=0\n', out)
    assert.matches('\nnext=2\n', out)
    assert.matches("session from 127%.0%.0%.35:%d+ ended: limits: quota used up %(quota = 20000 bytes/hour%)",
      err)
  end)
end)

describe('udp associations as live sessions', function()
  local peers
  setup(function() peers = U.start_peers() end)
  teardown(function() peers.stop() end)

  it('are listed with their bytes, closed by close_sessions, and logged with bytes and outcome', function()
    local dir = H.tempdir()
    local path = dir .. '/access.jsonl'
    local l = udp_listener { access_log = { path = path } }
    local status = kp.start_http_listener { listen = '127.0.0.1:0' }
    local a = assert(U.associate(l:local_addr(), '127.0.0.36'))
    for _ = 1, 3 do assert.are.equal('0123456789', a:echo(peers.echo4, '0123456789')) end
    H.eventually(function()
      local s = l:sessions()
      return #s == 1 and s[1].bytes_up == 30 and s[1].bytes_down == 30
    end, 10, 'listed with 30 bytes each way')
    local s = l:sessions()[1]
    assert.are.equal('socks5-udp', s.protocol)
    assert.are.equal('*', s.destination)
    assert.are.equal('127.0.0.36', s.identity)
    assert.matches('^127%.0%.0%.36:%d+$', s.peer)
    assert.are.equal(1, #l:sessions { peer = '127.0.0.36' })
    assert.are.equal(0, #l:sessions { destination = '127.0.0.1' })
    assert.are.equal(1, #l:sessions { destination = '*' })
    local out, rc = H.sh(('curl -sS --max-time 10 http://%s/proxy/sessions'):format(status:local_addr()))
    assert.are.equal(0, rc)
    local list = json.decode(out)
    assert.are.equal(1, #list)
    assert.are.equal('socks5-udp', list[1].protocol)

    assert.are.equal(1, l:close_sessions { all = true })
    assert.is_true(a:ctl_closed(5))
    a:close()
    H.eventually(function() return #l:sessions() == 0 and l:stats().udp_associations_active == 0 end, 10,
      'association ended')

    -- One that the client ends.
    local b = assert(U.associate(l:local_addr(), '127.0.0.36'))
    assert.are.equal('abcd', b:echo(peers.echo4, 'abcd'))
    b:close()
    H.eventually(function() return #read_lines(path) == 2 end, 10, 'two access log lines')
    local lines = read_lines(path)
    table.sort(lines, function(x, y) return x.bytes_up > y.bytes_up end)
    local cut, ok = lines[1], lines[2]
    assert.are.equal('socks5-udp', cut.protocol)
    assert.are.equal('udp_associate', cut.command)
    assert.are.equal('*', cut.destination)
    assert.are.equal('cut', cut.outcome)
    assert.are.equal('closed by policy', cut.reason)
    assert.are.equal(30, cut.bytes_up)
    assert.are.equal(30, cut.bytes_down)
    assert.are.equal('ok', ok.outcome)
    assert.are.equal(4, ok.bytes_up)
    assert.are.equal(4, ok.bytes_down)
    status:close()
    l:close()
    os.execute('rm -rf ' .. dir)
  end)
end)
