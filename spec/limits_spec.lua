-- Per-identity limits: local (this process) and fleet-wide on a REAL redis-server
-- shared by two kumoproxy processes (spec/support/fleet_proxy.lua), driven by
-- real clients (LuaSocket SOCKS5, curl for HTTP CONNECT and the status port).
local H = require 'spec.support.helpers'
local kp = H.kp
local socket = H.socket

local F = require 'spec.support.fleet'
local start_redis, start_proxy, socks, echo = F.start_redis, F.start_proxy, F.socks, F.echo

local function sh(cmd)
  local out, rc, err = H.sh(cmd)
  return out, rc, err
end

local function curl_connect(proxy, user, url)
  local out, rc, err = sh { 'curl', '-sS', '-v', '--max-time', '10', '-p', '-x',
    ('http://%s:secret@%s'):format(user, proxy), url, '-o', '/dev/null', '-w', '%{http_connect}' }
  return out, rc, err
end

describe('limits: parameters', function()
  it('validates limits, naming the key', function()
    local cases = {
      { { max_sessions = 0 }, 'limits.max_sessions: must be at least 1, got 0' },
      { { max_sessions = -2 }, 'limits.max_sessions: must be at least 1' },
      { { max_sessions = 1.5 }, 'limits.max_sessions: expected a whole number' },
      { { connect_rate = '20 per second' }, 'limits.connect_rate:' },
      { { connect_rate = '0/s' }, 'limits.connect_rate: must be at least 1' },
      { { connect_rate = '20/fortnight' }, "limits.connect_rate: unknown period 'fortnight'" },
      { { bandwidth = '10 MB/min' }, "limits.bandwidth: bandwidth is per second" },
      { { bandwidth = { sideways = '1 MB/s' } }, 'limits.bandwidth.sideways: unknown key' },
      { { bandwidth = { up = true } }, 'limits.bandwidth.up: expected a string' },
      { { quota = '50 GB/week' }, "limits.quota: unknown period 'week'" },
      { { quota = '-1 GB/day' }, 'limits.quota: must be more than 0' },
      { { scope = 'galaxy' }, "limits.scope: expected 'local' or 'fleet', got 'galaxy'" },
      { { max_session = 1 }, 'limits.max_session: unknown key' },
      { { scope = 'fleet', max_sessions = 1 }, "limits.scope: 'fleet' needs kumoproxy.configure_redis{} first" },
      { 'lots', 'limits: expected a table, got string' },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(kp.start_proxy_listener, { listen = '127.0.0.1:0', limits = c[1] })
      assert.is_false(ok)
      assert.truthy(tostring(err):find('start_proxy_listener: ' .. c[2], 1, true), tostring(err))
    end
  end)

  it('validates configure_redis, naming the key', function()
    local cases = {
      { {}, 'configure_redis: give url or cluster' },
      { { url = 'redis://127.0.0.1:1/0', on_error = 'maybe' }, "configure_redis: on_error: expected 'allow' or 'deny', got 'maybe'" },
      { { url = 'redis://127.0.0.1:1/0', urll = 1 }, 'urll' },
      { { url = 'not a url' }, 'configure_redis: url:' },
      { { url = 'redis://127.0.0.1:1/0', lease_ttl = '10 ms' }, 'lease_ttl' },
      { { cluster = 'redis://x' }, 'configure_redis: cluster: expected a list' },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(kp.configure_redis, c[1])
      assert.is_false(ok)
      assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
    end
  end)
end)

describe('limits: local scope', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)

  it('caps sessions per trusted host, refuses with 0x02, counts, and frees on close', function()
    local l = H.listener { allow_private_destinations = true, limits = { max_sessions = 2 } }
    local addr = l:local_addr()
    local a = assert(H.socks_connect(addr, '127.0.0.1', origin.echo))
    local b = assert(H.socks_connect(addr, '127.0.0.1', origin.echo))
    local c, code = H.socks_connect(addr, '127.0.0.1', origin.echo)
    assert.is_nil(c)
    assert.equals(2, code)
    local s = assert(l:limit_stats('127.0.0.1'))
    assert.equals(2, s.sessions)
    assert.equals(1, s.connect_refused)
    a:close()
    H.eventually(function() return l:limit_stats('127.0.0.1').sessions == 1 end, 10, 'session released')
    local d = assert(H.socks_connect(addr, '127.0.0.1', origin.echo))
    d:close()
    b:close()
    l:close()
  end)

  -- Both relays ask the limits before each write: splice's copy-then-splice
  -- loop, and the userspace copy (use_splice = false, as for TLS). Each takes its
  -- own client address, so its own limit key (quota state lives per key).
  for _, relay in ipairs { { name = 'splice', splice = true, ip = '127.0.0.1' },
    { name = 'userspace copy', splice = false, ip = '127.0.0.2' } } do
  local ip = relay.ip

  it('shapes bandwidth, still through the relay, and counts bytes (' .. relay.name .. ')', function()
    local l = H.listener { allow_private_destinations = true, use_splice = relay.splice,
      limits = { bandwidth = { down = '400 KB/s' } } }
    local before = l:limit_stats(ip)
    local t0 = socket.gettime()
    local out, rc = sh { 'curl', '-sS', '--max-time', '20', '--interface', ip, '--socks5', l:local_addr(),
      ('http://127.0.0.1:%d/bytes/800000'):format(origin.http), '-o', '/dev/null', '-w', '%{size_download}' }
    local took = socket.gettime() - t0
    assert.equals(0, rc)
    assert.equals('800000', out)
    -- 800 KB at 400 KB/s: ~2 s less the 50 ms burst
    assert.truthy(took > 1.7 and took < 4, 'took ' .. took)
    H.eventually(function() return l:limit_stats(ip).bytes_down >= before.bytes_down + 800000 end, 10,
      'bytes counted')
    l:close()
  end)

  it('cuts a session when the quota runs out, and refuses the next (' .. relay.name .. ')', function()
    local l = H.listener { allow_private_destinations = true, use_splice = relay.splice,
      limits = { quota = '100 KB/hour' } }
    -- Counters are per key and process: earlier tests moved bytes as 127.0.0.1 too.
    local before = l:limit_stats(ip)
    local c = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo, { source = ip }))
    c:settimeout(5)
    local got = echo(c, 200000)
    c:close()
    -- up + down never exceed the quota
    assert.truthy(got <= 50000, 'echoed ' .. got)
    H.eventually(function()
      local s = l:limit_stats(ip)
      return s.sessions == 0 and s.quota_remaining == 0
    end, 10, 'quota used up')
    local s = l:limit_stats(ip)
    local moved = s.bytes_up + s.bytes_down - before.bytes_up - before.bytes_down
    assert.truthy(moved <= 100000 and moved >= 90000, 'moved ' .. moved)
    local d, code = H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo, { source = ip })
    assert.is_nil(d)
    assert.equals(2, code)
    l:close()
  end)
  end
end)

describe('limits: listener:reconfigure', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)

  it('sets, replaces and removes limits for new sessions; running ones keep theirs', function()
    local l = H.listener { allow_private_destinations = true }
    local addr = l:local_addr()
    local function refused()
      local c, code = H.socks_connect(addr, '127.0.0.1', origin.echo)
      if c then c:close() end
      return c == nil and code == 2
    end
    local ok, e = pcall(l.limit_stats, l, '127.0.0.1')
    assert.is_false(ok)
    assert.truthy(tostring(e):find('this listener has no limits', 1, true), tostring(e))
    -- Admitted without limits: not counted, and not cut by the new ones.
    local free = assert(H.socks_connect(addr, '127.0.0.1', origin.echo))

    l:reconfigure { limits = { max_sessions = 1 } }
    local one = assert(H.socks_connect(addr, '127.0.0.1', origin.echo))
    assert.is_true(refused())
    assert.equals(1, l:limit_stats('127.0.0.1').sessions)
    assert.equals(5, echo(free, 5))

    -- Bad values: an error naming the key, and the limits in force stay.
    local bad = {
      { { max_sessions = 0 }, 'reconfigure: limits.max_sessions: must be at least 1, got 0' },
      { { max_sesions = 1 }, 'reconfigure: limits.max_sesions: unknown key' },
      { { quota = '5 GB/week' }, "reconfigure: limits.quota: unknown period 'week'" },
      { { scope = 'fleet', max_sessions = 1 }, "reconfigure: limits.scope: 'fleet' needs kumoproxy.configure_redis{} first" },
      { 'lots', 'reconfigure: limits: expected a table, got string' },
    }
    for _, c in ipairs(bad) do
      local rok, err = pcall(l.reconfigure, l, { limits = c[1] })
      assert.is_false(rok)
      assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
    end
    assert.is_true(refused())

    -- A new limit counts the session admitted under the old one.
    l:reconfigure { limits = { max_sessions = 2 } }
    local two = assert(H.socks_connect(addr, '127.0.0.1', origin.echo))
    assert.is_true(refused())

    -- false removes them: no limiter for new sessions.
    l:reconfigure { limits = false }
    local more = {}
    for i = 1, 3 do more[i] = assert(H.socks_connect(addr, '127.0.0.1', origin.echo)) end
    assert.is_false((pcall(l.limit_stats, l, '127.0.0.1')))
    for _, c in ipairs { free, one, two, more[1], more[2], more[3] } do
      assert.equals(3, echo(c, 3))
      c:close()
    end
    -- The sessions admitted with limits gave their slots back when they ended.
    l:reconfigure { limits = { max_sessions = 1 } }
    H.eventually(function() return l:limit_stats('127.0.0.1').sessions == 0 end, 10, 'slots released')
    local last = assert(H.socks_connect(addr, '127.0.0.1', origin.echo))
    assert.is_true(refused())
    last:close()
    l:close()
  end)
end)

describe('limits: fleet scope on Redis, two processes', function()
  local origin, redis
  setup(function()
    origin = H.start_origin()
    redis = start_redis()
  end)
  teardown(function()
    redis.stop()
    origin.stop()
  end)

  it('max_sessions = 3 refuses the 4th wherever it arrives; limit_key is shared; 429 for HTTP', function()
    local env = { LIMITS = "{ max_sessions = 3, scope = 'fleet' }" }
    local a, b = start_proxy(redis, env), start_proxy(redis, env)
    finally(function() a.kill() b.kill() end) -- also when an assertion fails
    local s1 = assert(socks(a.addr, 'alice', '127.0.0.1', origin.echo))
    local s2 = assert(socks(a.addr, 'bob', '127.0.0.1', origin.echo)) -- bob shares 'acme'
    local s3 = assert(socks(b.addr, 'alice', '127.0.0.1', origin.echo))
    for _, p in ipairs { a, b } do
      local c, code = socks(p.addr, 'bob', '127.0.0.1', origin.echo)
      assert.is_nil(c)
      assert.equals(2, code)
    end
    local code, _, err = curl_connect(b.addr, 'alice', ('http://127.0.0.1:%d/'):format(origin.http))
    assert.equals('429', code)
    assert.truthy(err:lower():find('retry%-after: %d+'), err)
    local st = a.limits('acme')
    assert.equals(3, st.sessions)
    assert.equals(3, st.connect_refused)
    -- a key of its own (carol's limits replace the defaults)
    local c1 = assert(socks(b.addr, 'carol', '127.0.0.1', origin.echo))
    assert.is_nil((socks(a.addr, 'carol', '127.0.0.1', origin.echo)))
    -- freeing one session anywhere admits one more anywhere
    s1:close()
    H.eventually(function() return b.limits('acme').sessions == 2 end, 10, 'lease released')
    local s4 = assert(socks(b.addr, 'bob', '127.0.0.1', origin.echo))
    assert.equals(5, echo(s4, 5))
    -- malformed limits from a handler refuse the login
    assert.is_nil((socks(a.addr, 'mallory', '127.0.0.1', origin.echo)))
    for _, s in ipairs { s2, s3, s4, c1 } do s:close() end
    H.eventually(function()
      return a.logs():find("refused by limits: key 'acme': max_sessions %(max_sessions = 3%)")
        and a.logs():find('limits.max_sessions: expected a positive integer')
    end, 10, 'log lines')
    a.kill()
    b.kill()
  end)

  it('frees the leases of a killed process within lease_ttl', function()
    local env = { LIMITS = "{ max_sessions = 2, scope = 'fleet' }", LEASE_TTL = '2 seconds', KEY = 'crash' }
    local a, b = start_proxy(redis, env), start_proxy(redis, env)
    finally(function() a.kill() b.kill() end) -- also when an assertion fails
    local held = { assert(socks(a.addr, 'alice', '127.0.0.1', origin.echo)),
                   assert(socks(a.addr, 'alice', '127.0.0.1', origin.echo)) }
    assert.is_nil((socks(b.addr, 'alice', '127.0.0.1', origin.echo)))
    a.kill('KILL')
    local t0 = socket.gettime()
    local s
    H.eventually(function()
      s = socks(b.addr, 'alice', '127.0.0.1', origin.echo)
      return s
    end, 10, 'admitted after the crash')
    local took = socket.gettime() - t0
    -- lease_ttl (2 s), plus slack for polling on a busy machine
    assert.truthy(took <= 3, 'leases outlived their ttl: ' .. took)
    -- live sessions are renewed: b's lease still counts after several ttls
    -- the crashed process's second lease expires moments after its first
    local s2
    H.eventually(function()
      s2 = socks(b.addr, 'alice', '127.0.0.1', origin.echo)
      return s2
    end, 3, 'second lease freed')
    kp.run_until(5)
    assert.equals(2, b.limits('crash').sessions)
    assert.is_nil((socks(b.addr, 'alice', '127.0.0.1', origin.echo)))
    for _, c in ipairs(held) do c:close() end
    s:close()
    s2:close()
    b.kill()
  end)

  it('counts a quota across both processes and cuts the session that runs out', function()
    local env = { LIMITS = "{ quota = '300 KB/hour', scope = 'fleet' }", KEY = 'quota' }
    local a, b = start_proxy(redis, env), start_proxy(redis, env)
    finally(function() a.kill() b.kill() end) -- also when an assertion fails
    local sa = assert(socks(a.addr, 'alice', '127.0.0.1', origin.echo))
    sa:settimeout(5)
    assert.equals(100000, echo(sa, 100000)) -- 200 KB counted
    sa:close()
    H.eventually(function()
      local t = b.limits('quota')
      return t.sessions == 0 and t.quota_used == 200000
    end, 10, 'unused chunk given back')
    local sb = assert(socks(b.addr, 'bob', '127.0.0.1', origin.echo))
    sb:settimeout(5)
    local got = echo(sb, 100000)
    sb:close()
    assert.truthy(got < 100000 and got <= 50000, 'echoed ' .. got)
    H.eventually(function()
      local t = a.limits('quota')
      return t.quota_remaining == 0 and t.bytes_up + t.bytes_down <= 300000
    end, 10, 'quota used up fleet-wide')
    local c, code = socks(a.addr, 'alice', '127.0.0.1', origin.echo)
    assert.is_nil(c)
    assert.equals(2, code)
    assert.truthy(b.get('/metrics'):find('kumoproxy_limit_quota_cuts_total 1'))
    H.eventually(function() return b.logs():find('limits: quota used up') end, 10, 'cut logged')
    a.kill()
    b.kill()
  end)

  it('refuses the burst beyond max_burst', function()
    local env = { LIMITS = "{ connect_rate = '6/min,max_burst=3', scope = 'fleet' }", KEY = 'rate' }
    local a, b = start_proxy(redis, env), start_proxy(redis, env)
    finally(function() a.kill() b.kill() end) -- also when an assertion fails
    for i = 1, 3 do
      local c = assert(socks((i % 2 == 0) and b.addr or a.addr, 'alice', '127.0.0.1', origin.echo))
      c:close()
    end
    for _, p in ipairs { a, b } do
      local c, code = socks(p.addr, 'alice', '127.0.0.1', origin.echo)
      assert.is_nil(c)
      assert.equals(2, code)
    end
    assert.truthy(a.get('/metrics'):find('kumoproxy_limit_refusals_total{kind="connect_rate"} 1'))
    a.kill()
    b.kill()
  end)

  it("on_error: 'allow' admits and 'deny' refuses while Redis is down; both recover", function()
    local lim = "{ max_sessions = 1, scope = 'fleet' }"
    local allow = start_proxy(redis, { LIMITS = lim, ON_ERROR = 'allow', KEY = 'outage' })
    local deny = start_proxy(redis, { LIMITS = lim, ON_ERROR = 'deny', KEY = 'outage' })
    finally(function() allow.kill() deny.kill() end)
    local c = assert(socks(allow.addr, 'alice', '127.0.0.1', origin.echo))
    assert.is_nil((socks(deny.addr, 'alice', '127.0.0.1', origin.echo)))
    c:close()
    H.eventually(function() return deny.limits('outage').sessions == 0 end, 10, 'released')

    redis.stop()
    local x = assert(socks(allow.addr, 'alice', '127.0.0.1', origin.echo))
    local y = assert(socks(allow.addr, 'alice', '127.0.0.1', origin.echo))
    local z, code = socks(deny.addr, 'alice', '127.0.0.1', origin.echo)
    assert.is_nil(z)
    assert.equals(2, code)
    local m = allow.get('/metrics')
    assert.truthy(m:find('kumoproxy_limit_admitted_unchecked_total 2'), m)
    assert.truthy(tonumber(m:match('kumoproxy_limit_redis_errors_total (%d+)')) >= 2)
    x:close()
    y:close()
    H.eventually(function() return allow.logs():find('fleet limits: Redis unavailable') end, 10, 'warning')

    redis.start()
    local back
    H.eventually(function()
      back = socks(deny.addr, 'alice', '127.0.0.1', origin.echo)
      return back
    end, 15, 'deny process admits again')
    H.eventually(function()
      local s, cd = socks(allow.addr, 'alice', '127.0.0.1', origin.echo)
      if s then s:close() end
      return s == nil and cd == 2
    end, 15, 'allow process enforces again')
    back:close()
    allow.kill()
    deny.kill()
  end)
end)
