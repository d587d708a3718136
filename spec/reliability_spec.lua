-- Reliability and security: fd exhaustion, slowloris and stalled peers, soak
-- without leaks, event-queue overload, abuse controls, secure defaults and
-- graceful shutdown under load. docs/reliability.md maps each promise to its test.
--
-- Heavy variants: KUMOPROXY_SOAK=1 runs the soak with 100,000 sessions (default
-- 3,000); KUMOPROXY_SOAK_SESSIONS=N picks any size.
local H = require 'spec.support.helpers'
local kp = H.kp

local AUTH = 'proxy_server_auth_rfc1929'
local SOAK_N = tonumber(os.getenv('KUMOPROXY_SOAK_SESSIONS'))
  or (os.getenv('KUMOPROXY_SOAK') == '1' and 100000 or 3000)

-- Runs spec/support/SCRIPT with python3 while pumping events.
local function py(script, args, timeout)
  return H.sh(('python3 spec/support/%s %s'):format(script, args), { timeout = timeout or 120 })
end

-- key=value pairs from a script's output; numbers become numbers.
local function kv(out)
  local t = {}
  for k, v in out:gmatch('([%w_]+)=([^%s]+)') do
    t[k] = tonumber(v) or v
  end
  return t
end

-- Figures for docs/reliability.md, on stderr next to the test lines.
local function figure(fmt, ...)
  io.stderr:write(('  [figure %s] '):format(H.lua), fmt:format(...), '\n')
end

local function users_handler(user, pass)
  return user == 'alice' and pass == 'secret'
end

local function rss_kib()
  local f = assert(io.open('/proc/self/status'))
  local s = f:read('*a')
  f:close()
  return tonumber(s:match('VmRSS:%s*(%d+)'))
end

-- fds of this process, not counting idle splice pipes (kept for reuse by design).
local function session_fds()
  collectgarbage()
  collectgarbage()
  return H.fd_count() - 2 * kp.runtime_stats().pooled_pipes
end

-- Sockets of this process in CLOSE_WAIT (state 08 in /proc/net/tcp{,6}).
local function close_wait_count()
  local ours = {}
  local p = io.popen('ls -l /proc/' .. H.pid() .. '/fd 2>/dev/null')
  for inode in p:read('*a'):gmatch('socket:%[(%d+)%]') do
    ours[inode] = true
  end
  p:close()
  local n = 0
  for _, file in ipairs { '/proc/net/tcp', '/proc/net/tcp6' } do
    local f = io.open(file)
    if f then
      f:read('*l') -- header
      for line in f:lines() do
        local fields = {}
        for w in line:gmatch('%S+') do fields[#fields + 1] = w end
        if fields[4] == '08' and ours[fields[10]] then
          n = n + 1
        end
      end
      f:close()
    end
  end
  return n
end

describe('fd exhaustion', function()
  it('backs off without spinning under ulimit -n 64, then the same listener serves again', function()
    local out, rc = py('fd_exhaust.py', '--lua ' .. H.lua .. ' --limit 64 --window 3', 120)
    assert.are.equal(0, rc, out)
    local r = kv(out)
    assert.is_nil(r.error, out)
    -- Really exhausted: fewer connections held than the limit, accept(2) failing.
    assert.is_true(r.held_at_exhaustion < 64, out)
    assert.is_true(r.accept_errors_in_window >= 1, out)
    -- Back-off, no spin: a handful of accept attempts and little CPU while exhausted.
    assert.is_true(r.accept_errors_in_window <= 20, out)
    assert.is_true(r.cpu_seconds / r.window_seconds < 0.10, out)
    assert.are.equal(0, r.accepted_in_window, out)
    assert.are.equal('true', r.accepting_while_exhausted, out)
    -- Recovery on the same listener, then a clean exit.
    assert.are.equal('True', r.served_after, out)
    assert.is_true(r.final_accepted > r.accepted_at_exhaustion, out)
    assert.are.equal(0, r.proxy_exit, out)
    figure('fd exhaustion: held %d conns at limit 64; %d accept errors and %.3f s CPU over %.1f s exhausted; served again after %.2f s',
      r.held_at_exhaustion, r.accept_errors_in_window, r.cpu_seconds, r.window_seconds, r.recovery_seconds)
  end)
end)

describe('slowloris and stalled peers', function()
  after_each(function() kp.on(AUTH, nil) end)

  it('cuts 500 silent/one-byte clients at timeout and stalled tunnels at idle timeout, serving real clients meanwhile', function()
    kp.on(AUTH, users_handler)
    local timeout = 2
    local l = H.listener { require_auth = true, timeout = timeout, allow_private_destinations = true }
    local out, rc = py('slowloris.py',
      ('--proxy %s --timeout %d --silent 250 --one-byte 250 --stalled 20 --user alice --password secret')
        :format(l:local_addr(), timeout), 180)
    assert.are.equal(0, rc, out)
    local r = kv(out)
    assert.are.equal(520, r.stallers_open, out)
    assert.are.equal(20, r.data_stallers_relaying, out)
    assert.are.equal(250, r.silent_cut, out)
    assert.are.equal(250, r.one_byte_cut, out)
    assert.are.equal(20, r.stalled_cut, out)
    -- Cut at the timeout: not before it (the client starts its clock before the
    -- proxy can), and not long after.
    for _, k in ipairs { 'silent', 'one_byte', 'stalled' } do
      assert.is_true(r[k .. '_min'] >= timeout - 0.01, k .. ' cut early: ' .. out)
      assert.is_true(r[k .. '_max'] <= timeout + 8, k .. ' cut late: ' .. out)
    end
    -- Real clients were served all along, many while every staller was held.
    assert.are.equal(0, r.real_fail, out)
    assert.is_true(r.real_ok_while_held >= 20, out)
    local s = H.eventually(function()
      local s = l:stats()
      return s.active == 0 and s.accepted == 520 + r.real_ok and s
    end, 20, 'all sessions over')
    assert.are.equal(520, s.timeouts)
    assert.are.equal(520, s.failed)
    assert.are.equal(r.real_ok, s.completed)
    assert.are.equal(0, s.auth_failures)
    figure('slowloris: 500 handshake stallers cut after %.2f..%.2f s, 20 idle tunnels after %.2f..%.2f s (timeout %d s); %d real sessions ok (%d while all were held), 0 failed',
      math.min(r.silent_min, r.one_byte_min), math.max(r.silent_max, r.one_byte_max), r.stalled_min, r.stalled_max,
      timeout, r.real_ok, r.real_ok_while_held)
    l:close()
  end)
end)

describe('soak', function()
  after_each(function() kp.on(AUTH, nil) end)

  it(('%d mixed sessions: fds and threads back to baseline, bounded RSS, no CLOSE_WAIT'):format(SOAK_N), function()
    kp.on(AUTH, users_handler)
    -- The soak counts leaks, not brute force: with auth_failure_delay on, every
    -- 7th session failing from 127.0.0.1 would slow all of them to its 5 s cap.
    local l = H.listener { require_auth = true, timeout = 10, allow_private_destinations = true,
      auth_failure_delay = false }
    H.quiesce()
    local fds0, threads0, rss0 = session_fds(), H.thread_count(), rss_kib()

    local out, rc = py('soak.py', ('--proxy %s -n %d --concurrency 8 --user alice --password secret')
      :format(l:local_addr(), SOAK_N), 3600)
    assert.are.equal(0, rc, out)
    local r = kv(out)
    assert.are.equal(0, r.unexpected, out)
    local per_kind = {}
    for i = 0, SOAK_N - 1 do
      local k = i % 7
      per_kind[k] = (per_kind[k] or 0) + 1
    end
    assert.are.equal(per_kind[0], r.ok, out)
    assert.are.equal(per_kind[1], r.auth_fail, out)
    assert.are.equal(per_kind[6], r.late_bye_received, out)

    local s = H.eventually(function()
      local s = l:stats()
      return s.active == 0 and s.accepted == SOAK_N and s
    end, 30, 'all soak sessions over')
    assert.are.equal(SOAK_N, s.completed + s.failed)
    assert.are.equal(per_kind[1], s.auth_failures)
    -- ok, half_client and half_server end with EOF both ways: completed.
    assert.are.equal(per_kind[0] + per_kind[5] + per_kind[6], s.completed)

    -- Back to baseline: tokio's blocking pool may keep a thread a few seconds.
    H.eventually(function() return math.abs(session_fds() - fds0) <= 2 end, 15, 'fds back to baseline')
    H.eventually(function() return math.abs(H.thread_count() - threads0) <= 2 end, 30, 'threads back to baseline')
    local fds1, threads1, rss1 = session_fds(), H.thread_count(), rss_kib()
    assert.are.equal(0, close_wait_count())
    -- RSS bound: 64 MiB over the baseline, whatever the session count.
    assert.is_true(rss1 - rss0 < 64 * 1024, ('RSS grew %d KiB'):format(rss1 - rss0))
    figure('soak: %d sessions in %s s; fds %d -> %d, threads %d -> %d, RSS %d -> %d KiB, CLOSE_WAIT 0',
      SOAK_N, r.seconds, fds0, fds1, threads0, threads1, rss0, rss1)
    l:close()
  end)
end)

describe('event-queue overload', function()
  local max0
  before_each(function() max0 = kp.runtime_stats().max_pending_events end)
  after_each(function()
    kp.set_max_pending_events(max0)
    kp.on(AUTH, nil)
  end)

  it('refuses decisions beyond max_pending_events at once, keeps serving, and recovers', function()
    kp.set_max_pending_events(4)
    local handled = 0
    kp.on(AUTH, function(user, pass)
      handled = handled + 1
      return users_handler(user, pass)
    end)
    local l = H.listener { timeout = 60, allow_private_destinations = true }
    local over0 = kp.runtime_stats().overloaded_events
    local p = io.popen(('python3 spec/support/overload.py --proxy %s --auth 20 --pending 4 --noauth 10 --after 2 2>&1')
      :format(l:local_addr()))
    -- This read blocks the host: nothing dispatches events until it returns.
    local held = p:read('*l')
    assert.are.equal('HELD refused=16 pending=4 noauth_ok=10', held)
    assert.are.equal(0, handled)
    assert.are.equal(over0 + 16, kp.runtime_stats().overloaded_events)
    assert.are.equal(4, kp.pending_events())
    -- The host pumps again: the 4 queued logins and 2 fresh ones are decided.
    H.eventually(function() return handled == 6 end, 30, 'queued decisions answered')
    local done = p:read('*a')
    p:close()
    assert.matches('DONE pending_ok=4 after_ok=2 failures=0', done)
    assert.are.equal(over0 + 16, kp.runtime_stats().overloaded_events)
    H.eventually(function()
      local s = l:stats()
      return s.active == 0 and s.auth_failures == 16 and s.completed == 16
    end, 10, 'counters settled')
    l:close()
  end)

  it('a handler that never returns cannot wedge the listener', function()
    local out, rc = py('wedge.py', '--lua ' .. H.lua .. ' --timeout 1 --logins 3 --noauth 5', 60)
    assert.are.equal(0, rc, out)
    local r = kv(out)
    assert.are.equal('True', r.handler_wedged, out)
    assert.are.equal(5, r.noauth_ok_while_wedged, out)
    assert.are.equal(4, r.logins_refused, out)
    -- Each refused once its decision was `timeout` overdue, not left hanging.
    assert.is_true(r.refused_after_min >= 0.9, out)
    assert.is_true(r.refused_after_max <= 10, out)
    assert.are.equal('True', r.proxy_alive, out)
  end)
end)

describe('abuse controls', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)

  -- A NOAUTH CONNECT to the echo server from a chosen source address.
  local function client_from(source, proxy)
    local host, port = proxy:match('^(.*):(%d+)$')
    local c = assert(H.socket.tcp())
    c:settimeout(5)
    assert(c:bind(source, 0))
    assert(c:connect(host, tonumber(port)))
    local echo = origin.echo
    c:send('\5\1\0' .. '\5\1\0\1\127\0\0\1' .. string.char(math.floor(echo / 256), echo % 256))
    local got = c:receive(12)
    if got ~= '\5\0\5\0\0\1\127\0\0\1' .. got:sub(11, 12) then
      c:close()
      return nil
    end
    assert(c:send('hi\n'))
    assert.are.equal('hi', c:receive('*l'))
    return c
  end

  it('max_connections_per_ip refuses a client IP beyond its share and counts it', function()
    local l = H.listener { max_connections_per_ip = 2, allow_private_destinations = true }
    local a = assert(client_from('127.0.0.1', l:local_addr()))
    local b = assert(client_from('127.0.0.1', l:local_addr()))
    -- The third from the same IP is closed at once, without a SOCKS5 byte.
    local got, ending = H.raw(l:local_addr(), '050100', 5)
    assert.are.equal('', got)
    assert.are.equal('EOF', ending)
    H.eventually(function() return l:stats().rejected == 1 end)
    -- Another IP has its own share.
    local c = assert(client_from('127.0.0.2', l:local_addr()))
    -- A slot comes back when its session ends.
    a:close()
    H.eventually(function() return l:stats().active == 2 end)
    local d = assert(client_from('127.0.0.1', l:local_addr()))
    for _, x in ipairs { b, c, d } do x:close() end
    H.quiesce()
    local s = l:stats()
    assert.are.equal(1, s.rejected)
    assert.are.equal(s.accepted, s.completed + s.failed + s.rejected)
    l:close()
  end)

  it('max_connections_per_ip is validated', function()
    for _, v in ipairs { 0, -1, 1.5, 'ten' } do
      local ok, err = pcall(kp.start_proxy_listener, { listen = '127.0.0.1:0', max_connections_per_ip = v })
      assert.is_false(ok)
      assert.matches('start_proxy_listener: max_connections_per_ip: ', tostring(err))
    end
  end)
end)

describe('secure defaults', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)
  after_each(function() kp.on(AUTH, nil) end)

  it('refuses NOAUTH to clients outside trusted_hosts', function()
    local l = H.listener { trusted_hosts = { '127.0.0.2/32' } }
    -- 127.0.0.1 is loopback but not trusted here.
    local got, ending = H.raw(l:local_addr(), '050100')
    assert.are.equal('05ff', got)
    assert.are.equal('EOF', ending)
    -- 127.0.0.2 is: served without credentials.
    local host, port = l:local_addr():match('^(.*):(%d+)$')
    local c = assert(H.socket.tcp())
    c:settimeout(5)
    assert(c:bind('127.0.0.2', 0))
    assert(c:connect(host, tonumber(port)))
    c:send('\5\1\0')
    assert.are.equal('\5\0', c:receive(2))
    c:close()
    H.eventually(function() return l:stats().auth_failures == 1 end)
    l:close()
  end)

  it('never lets method games bypass require_auth', function()
    local calls = 0
    kp.on(AUTH, function(user, pass)
      calls = calls + 1
      return users_handler(user, pass)
    end)
    local l = H.listener { require_auth = true }
    -- A destination nobody may reach in this test.
    local sentinel = assert(H.socket.bind('127.0.0.1', 0))
    local _, sport = sentinel:getsockname()
    sport = tonumber(sport)
    local connect = ('050100017f000001%04x'):format(sport)
    local alice_ok = '0105' .. H.hex('alice') .. '06' .. H.hex('secret')
    local alice_bad = '0105' .. H.hex('alice') .. '05' .. H.hex('wrong')
    local cases = {
      { '050100' .. connect, '05ff', 'NOAUTH only, then a request' },
      { '0500' .. connect, '05ff', 'no methods at all' },
      { '050101', '05ff', 'GSSAPI only' },
      { '0501ff', '05ff', 'method 0xFF offered' },
      { '050100' .. alice_ok .. connect, '05ff', 'NOAUTH offered, credentials sent anyway' },
      { '05020002' .. connect, '05020101', 'both offered, request instead of sub-negotiation' },
      { '050102' .. '050102', '05020101', 'a second greeting instead of sub-negotiation' },
      { '050102' .. '0100', '05020101', 'sub-negotiation with an empty username' },
      { '050102' .. '02' .. alice_ok:sub(3), '05020101', 'sub-negotiation version 2' },
      { '050102' .. 'ffffffffffff', '05020101', 'garbage sub-negotiation' },
      { '050102' .. alice_bad .. connect, '05020101', 'wrong password, request pipelined' },
      { '050102' .. '0105' .. H.hex('alice') .. '00' .. connect, '05020101', 'empty password' },
      { '0503000102' .. alice_bad .. connect, '05020101', 'every method offered, wrong password' },
    }
    for _, c in ipairs(cases) do
      local got, ending = H.raw(l:local_addr(), c[1])
      assert.are.equal(c[2], got, c[3])
      assert.are.equal('EOF', ending, c[3])
    end
    -- No handler at all: username/password is still required, and fails closed.
    kp.on(AUTH, nil)
    local got = H.raw(l:local_addr(), '050102' .. alice_ok .. connect)
    assert.are.equal('05020101', got, 'no handler registered')
    -- Nothing reached the destination, every session failed as an auth failure.
    sentinel:settimeout(0)
    assert.is_nil(sentinel:accept())
    sentinel:close()
    H.eventually(function()
      local s = l:stats()
      return s.active == 0 and s.auth_failures == #cases + 1
    end)
    assert.are.equal(0, l:stats().completed)
    -- The handler saw only the well-formed sub-negotiations (wrong, empty and
    -- wrong passwords): never the games.
    assert.are.equal(3, calls)
    l:close()
  end)

  it('never logs a password, even at KUMOPROXY_LOG=trace', function()
    local script = [[
      local kp = require 'kumoproxy'
      kp.on('proxy_server_auth_rfc1929', function(user, pass)
        return user == 'alice' and pass == 'Pw-5ecret-XYZ'
      end)
      local l = kp.start_proxy_listener { listen = '127.0.0.1:0', require_auth = true,
        allow_private_destinations = true }
      local proxy = l:local_addr()
      local echo = tonumber(os.getenv('ECHO_PORT'))
      for _, pw in ipairs { 'Pw-5ecret-XYZ', 'Wr0ng-Pw-QQQ' } do
        local out = kp.run_command(('python3 spec/support/socks.py connect --proxy %s --target 127.0.0.1:%d --user alice --password %s')
          :format(proxy, echo, pw))
        io.stdout:write(out)
      end
      -- The egress (client) side sends a password too.
      local src = kp.make_egress_source { name = 'via-self', socks5_proxy_server = proxy,
        socks5_proxy_username = 'alice', socks5_proxy_password = 'Pw-5ecret-XYZ' }
      local c = assert(src:connect('127.0.0.1', echo))
      c:send('egress\n')
      print('egress=' .. tostring(c:receive('*l')))
      c:close()
      local bad = kp.make_egress_source { name = 'bad', socks5_proxy_server = proxy,
        socks5_proxy_username = 'alice', socks5_proxy_password = 'Eg-Wr0ng-KKK' }
      print('egress_bad=' .. tostring(select(2, bad:connect('127.0.0.1', echo))))
      kp.run_until(function() return l:stats().active == 0 end, 10)
      print('stats ' .. l:stats().completed .. ' ' .. l:stats().auth_failures)
    ]]
    local out, rc, err = H.sh({ 'env', 'KUMOPROXY_LOG=trace', 'ECHO_PORT=' .. origin.echo, H.lua, '-e', script },
      { timeout = 60 })
    assert.are.equal(0, rc, out .. err)
    -- It really ran: good and bad logins on both sides, with logs at trace level.
    assert.matches('data=ping', out)
    assert.matches('egress=egress', out)
    assert.matches('egress_bad=.*rejected', out)
    assert.matches('stats 2 2', out)
    -- The module's most verbose lines are at debug; trace enables them all.
    assert.matches('DEBUG', err)
    assert.matches('authenticated as alice', err)
    for _, pw in ipairs { 'Pw-5ecret-XYZ', 'Wr0ng-Pw-QQQ', 'Eg-Wr0ng-KKK' } do
      assert.is_nil(err:find(pw, 1, true), pw .. ' in the log')
      assert.is_nil(err:lower():find(H.hex(pw), 1, true), pw .. ' (hex) in the log')
      assert.is_nil(out:find(pw, 1, true), pw .. ' on stdout')
    end
    figure('trace log of the password spec: %d lines, no password', select(2, err:gsub('\n', '')))
  end)

  it('lets no client text forge a log line (usernames, domain names, HTTP credentials)', function()
    local script = [[
      local kp = require 'kumoproxy'
      kp.on('proxy_server_auth_rfc1929', function(user)
        if user:find('raise') then error('no such user') end
        return false
      end)
      kp.on('http_server_validate_auth_basic', function() return false end)
      local strict = kp.start_proxy_listener { listen = '127.0.0.1:0', require_auth = true,
        protocols = { 'socks5', 'http' } }
      local open = kp.start_proxy_listener { listen = '127.0.0.1:0' }
      local function raw(l, bytes)
        local hex = bytes:gsub('.', function(c) return ('%02x'):format(c:byte()) end)
        kp.run_command(('python3 spec/support/socks.py raw --proxy %s --hex %s --read-timeout 5')
          :format(l:local_addr(), hex))
      end
      local function userpass(u) return '\5\1\2\1' .. string.char(#u) .. u .. '\2pw' end
      raw(strict, userpass('x\nFORGED-1 INFO line'))
      raw(strict, userpass('raise\nFORGED-2 INFO line'))
      local d = 'a\nFORGED-3 INFO line'
      raw(open, '\5\1\0\5\1\0\3' .. string.char(#d) .. d .. '\0\80')
      local b64 = 'dQpGT1JHRUQtNCBJTkZPIGxpbmU6cHc=' -- "u\nFORGED-4 INFO line:pw"
      raw(strict, 'CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: Basic ' .. b64 .. '\r\n\r\n')
      kp.run_until(function() return strict:stats().failed == 3 and open:stats().failed == 1 end, 10)
      print('failed ' .. strict:stats().failed .. ' ' .. open:stats().failed)
    ]]
    local out, rc, err = H.sh({ 'env', 'KUMOPROXY_LOG=info', H.lua, '-e', script }, { timeout = 60 })
    assert.are.equal(0, rc, out .. err)
    assert.matches('failed 3 1', out)
    -- Each attempt was logged, on one line, with the newline escaped.
    assert.matches("user 'x\\nFORGED%-1 INFO line'", err, 1, false)
    assert.matches("denying user 'raise\\nFORGED%-2 INFO line'", err, 1, false)
    assert.matches('control characters in domain name', err)
    assert.matches("user 'u\\nFORGED%-4 INFO line'", err, 1, false)
    assert.is_nil(err:find('\nFORGED', 1, true), err)
  end)
end)

describe('graceful shutdown under load', function()
  it('SIGTERM while 200 sessions transfer: port closed, transfers finish intact, exit 0', function()
    local out, rc = py('shutdown_load.py', '--lua ' .. H.lua .. ' --sessions 200 --bytes 262144 --grace 30', 180)
    assert.are.equal(0, rc, out)
    local r = kv(out)
    assert.are.equal(200, r.established, out)
    assert.are.equal('True', r.port_refused_after_sigterm, out)
    assert.are.equal(0, r.late_connections_accepted, out)
    assert.are.equal(200, r.transfers_intact, out)
    assert.are.equal(0, r.transfer_errors, out)
    assert.are.equal(0, r.proxy_exit, out)
    assert.are.equal('True', r.log_stopping, out)
    assert.are.equal('False', r.log_cut, out)
    local stopped = out:match('STOPPED ([^\n]+)')
    assert(stopped, out)
    local st = kv(stopped)
    assert.are.equal(0, st.active)
    assert.are.equal('false', st.accepting)
    assert.is_true(st.completed >= 200, out)
    figure('shutdown: 200 sessions x %d bytes each way, finished %.2f s after SIGTERM, checksums equal at both ends',
      262144, r.finished_after_sigterm_seconds)
  end)
end)
