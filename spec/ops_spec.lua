-- Operations (issue 17): access log, rotation, live sessions, revocation,
-- reload. Real clients (socks.py, curl, LuaSocket), real logrotate, real signals.
local H = require 'spec.support.helpers'
local kp = H.kp
local json = require 'dkjson'

local AUTH = 'proxy_server_auth_rfc1929'
local HTTP_AUTH = 'http_server_validate_auth_basic'
local REQUEST = 'proxy_server_request'

local function read_file(path)
  local f = io.open(path)
  if not f then return '' end
  local s = f:read('*a')
  f:close()
  return s
end

local function count_lines(paths)
  local n = 0
  for _, p in ipairs(paths) do
    for _ in read_file(p):gmatch('[^\n]*\n') do n = n + 1 end
  end
  return n
end

-- Every line of the files, validated by Python's strict JSON parser (one
-- object per line), then decoded for the assertions.
local function json_lines(paths)
  local quoted = {}
  for i, p in ipairs(paths) do quoted[i] = "'" .. p .. "'" end
  local check = [[python3 -c 'import json,sys
n = 0
for f in sys.argv[1:]:
    for line in open(f, encoding="utf-8"):
        assert line.endswith("\n"), "unterminated line"
        assert isinstance(json.loads(line), dict)
        n += 1
print(n)' ]] .. table.concat(quoted, ' ')
  local out, rc, err = H.sh(check)
  assert.are.equal(0, rc, err)
  local lines = {}
  for _, p in ipairs(paths) do
    for line in read_file(p):gmatch('([^\n]*)\n') do
      local v = assert(json.decode(line), line)
      lines[#lines + 1] = v
    end
  end
  assert.are.equal(tonumber(out), #lines)
  return lines
end

local function free_port()
  local s = assert(H.socket.bind('127.0.0.1', 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- SOCKS5 + RFC 1929 over LuaSocket, pipelined (greeting, credentials and
-- CONNECT in one write) so the in-process proxy's handlers run while we pump.
local function socks_auth_connect(proxy, user, pass, port)
  local phost, pport = proxy:match('^(.*):(%d+)$')
  local c = assert(H.socket.tcp())
  c:settimeout(5)
  assert(c:connect(phost, tonumber(pport)))
  c:send('\5\1\2' .. '\1' .. string.char(#user) .. user .. string.char(#pass) .. pass
    .. '\5\1\0\1\127\0\0\1' .. string.char(math.floor(port / 256), port % 256))
  c:settimeout(0)
  local got = ''
  H.eventually(function()
    local s, _, partial = c:receive(14 - #got)
    got = got .. (s or partial or '')
    return #got >= 14
  end, 10, 'SOCKS5 replies')
  assert.are.equal('\5\2\1\0\5\0', got:sub(1, 6))
  return c
end

-- Sends a line and waits (pumping) for the echo; returns it, or nil, 'closed'.
local function echo(c, msg)
  c:settimeout(0)
  local _, err = c:send(msg)
  if err then return nil, err end
  local got = ''
  local closed
  H.eventually(function()
    local s, e, partial = c:receive(#msg - #got)
    got = got .. (s or partial or '')
    if e == 'closed' then closed = true end
    return #got >= #msg or closed
  end, 10, 'echo')
  if closed and #got < #msg then return nil, 'closed' end
  return got
end

local function wait_closed(c)
  c:settimeout(0)
  return H.eventually(function()
    local _, e = c:receive(1)
    return e == 'closed'
  end, 10, 'connection closed by the proxy')
end

-- ops_proxy.lua under kumoproxy.run() in its own process.
local function start_proxy(dir, env)
  local out = dir .. '/out.txt'
  local vars = { 'OPS_OUT=' .. out }
  for k, v in pairs(env) do vars[#vars + 1] = k .. "='" .. v .. "'" end
  local cmd = ('%s %s spec/support/ops_proxy.lua >%s/stderr.txt 2>&1 &')
    :format(table.concat(vars, ' '), H.lua, dir)
  -- Inherit LUA_CPATH/LUA_PATH from spec/run.sh.
  assert(os.execute(cmd))
  local addr, pid
  H.eventually(function()
    addr, pid = read_file(out):match('READY (%S+) (%d+)')
    return addr
  end, 20, 'ops_proxy READY')
  pid = tonumber(pid)
  local P = { addr = addr, pid = pid, out = out, dir = dir }
  function P.output() return read_file(out) end
  function P.alive()
    local r = os.execute('kill -0 ' .. pid .. ' 2>/dev/null')
    return r == true or r == 0
  end
  function P.signal(sig) os.execute(('kill -%s %d'):format(sig, pid)) end
  function P.stop()
    P.signal('TERM')
    H.eventually(function() return P.output():match('STOPPED') end, 20, 'ops_proxy stopped')
  end
  return P
end

describe('access log', function()
  local origin, dir

  setup(function()
    origin = H.start_origin()
  end)
  teardown(function()
    origin.stop()
  end)
  before_each(function()
    dir = H.tempdir()
  end)
  after_each(function()
    kp.on(AUTH, nil)
    kp.on(HTTP_AUTH, nil)
    kp.on(REQUEST, nil)
    kp.on('proxy_session_end', nil)
    -- Closed listeners' writers go with their objects (else a later reopen
    -- would try this removed directory).
    collectgarbage()
    collectgarbage()
    os.execute('rm -rf ' .. dir)
  end)

  it('validates access_log, naming the key', function()
    local function e(v)
      local ok, err = pcall(H.listener, { access_log = v })
      assert.is_false(ok)
      return tostring(err)
    end
    assert.matches('access_log.path: is required', e({}))
    assert.matches('access_log: unknown parameter pth', e({ path = dir .. '/a', pth = 1 }))
    assert.matches("access_log: cannot open '/nonexistent/x.jsonl'", e({ path = '/nonexistent/x.jsonl' }))
    assert.matches('access_log: expected', e('x'))
  end)

  it('writes one JSON line per session, for every outcome and protocol', function()
    local path = dir .. '/access.jsonl'
    local closed = free_port()
    kp.on(AUTH, function(u, p) return u == 'alice' and p == 'secret' end)
    kp.on(HTTP_AUTH, function(u, p) return u == 'alice' and p == 'secret' end)
    kp.on(REQUEST, function(req) return req.port ~= origin.peer end)
    local ends = {}
    kp.on('proxy_session_end', function(s) ends[#ends + 1] = s end)
    local l = H.listener {
      require_auth = true,
      allow_private_destinations = true,
      protocols = { 'socks5', 'http' },
      access_log = { path = path },
    }
    local proxy = l:local_addr()
    local function socks(target, user, pass)
      local out, _, err = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --user %q --password %s')
        :format(proxy, target, user, pass))
      return out .. (err or '')
    end
    local function curl(target, creds)
      -- The proxy's answer to CONNECT, then the origin's (000 when none).
      local out = H.sh(('curl -sS -o /dev/null -w "%%{http_connect} %%{http_code}" --max-time 20 -p -x http://%s@%s http://127.0.0.1:%d/')
        :format(creds, proxy, target))
      return out
    end
    assert.matches('data=ping', socks(origin.echo, 'alice', 'secret'))         -- ok
    assert.matches('reply=0x02', socks(origin.peer, 'alice', 'secret'))        -- denied by policy
    assert.matches('reply=0x05', socks(closed, 'alice', 'secret'))             -- failed: refused
    socks(origin.echo, 'mallory"\\n{"outcome":"ok"}', 'x')                     -- denied: bad credentials
    assert.are.equal('200 200', curl(origin.http, 'alice:secret'))             -- ok
    assert.are.equal('403 000', curl(origin.peer, 'alice:secret'))             -- denied
    assert.matches('^5%d%d 000', curl(closed, 'alice:secret'))                 -- failed
    assert.are.equal('407 000', curl(origin.http, 'alice:wrong'))              -- denied: auth
    H.eventually(function() return count_lines { path } >= 8 end, 10, '8 access log lines')
    H.quiesce()
    local lines = json_lines { path }
    assert.are.equal(8, #lines)

    local by = {}
    for _, v in ipairs(lines) do
      local k = v.protocol .. ' ' .. v.outcome
      by[k] = by[k] or {}
      table.insert(by[k], v)
      assert.are.equal(proxy, v.listener)
      assert.matches('^127%.0%.0%.1:%d+$', v.peer)
      assert.matches('^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$', v.start)
      assert.is_true(v['end'] >= v.start)
      assert.is_true(v.duration >= 0)
      assert.are.equal('table', type(v.groups))
      if v.outcome ~= 'ok' then assert.are.equal('string', type(v.reason)) end
    end
    assert.are.equal(1, #by['socks5 ok'])
    assert.are.equal(1, #by['socks5 failed'])
    assert.are.equal(2, #by['socks5 denied'])
    assert.are.equal(1, #by['http ok'])
    assert.are.equal(1, #by['http failed'])
    assert.are.equal(2, #by['http denied'])

    local ok = by['socks5 ok'][1]
    assert.are.equal('connect', ok.command)
    assert.are.equal('alice', ok.identity)
    assert.are.equal('ProxyAuthRfc1929', ok.context)
    assert.are.equal('127.0.0.1:' .. origin.echo, ok.destination)
    assert.are.equal('127.0.0.1:' .. origin.echo, ok.connected)
    assert.matches('^127%.0%.0%.1:%d+$', ok.source)
    assert.are.equal(5, ok.bytes_up)   -- "ping\n"
    assert.are.equal(5, ok.bytes_down)
    assert.is_nil(ok.reason)

    local hok = by['http ok'][1]
    assert.are.equal('alice', hok.identity)
    assert.are.equal('127.0.0.1:' .. origin.http, hok.destination)
    assert.is_true(hok.bytes_up > 0 and hok.bytes_down > #'hello from origin\n')

    local sf = by['socks5 failed'][1]
    assert.are.equal('127.0.0.1:' .. closed, sf.destination)
    assert.matches('connect to', sf.reason)
    assert.are.equal(0, sf.bytes_up)

    local forged, policy
    for _, v in ipairs(by['socks5 denied']) do
      if v.identity == nil then forged = v else policy = v end
    end
    -- The forged name stays inside the reason string, escaped, on one line.
    assert.matches('authentication failed', forged.reason)
    -- (Client text in messages is proto::text::ClientText: quotes escaped too.)
    assert.truthy(forged.reason:find([[user 'mallory\"\\n{\"outcome\":\"ok\"}']], 1, true), forged.reason)
    assert.are.equal('alice', policy.identity)
    assert.matches('denied', policy.reason)
    assert.are.equal('127.0.0.1:' .. origin.peer, policy.destination)

    -- proxy_session_end saw the same sessions.
    H.eventually(function() return #ends == 8 end, 10, '8 proxy_session_end events')
    local outcomes = {}
    for _, s in ipairs(ends) do outcomes[s.protocol .. ' ' .. s.outcome] = (outcomes[s.protocol .. ' ' .. s.outcome] or 0) + 1 end
    assert.are.same({ ['socks5 ok'] = 1, ['socks5 failed'] = 1, ['socks5 denied'] = 2,
      ['http ok'] = 1, ['http failed'] = 1, ['http denied'] = 2 }, outcomes)
    assert.are.equal(0, kp.runtime_stats().access_log_dropped)
    l:close()
  end)

  it('logs connections refused by max_connections as denied', function()
    local path = dir .. '/access.jsonl'
    local l = H.listener { allow_private_destinations = true, max_connections = 1, access_log = { path = path } }
    local held = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
    local c, err = H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo)
    assert.is_nil(c, 'second session refused')
    H.eventually(function() return count_lines { path } == 1 end, 10, 'the refusal logged')
    local v = json_lines { path }[1]
    assert.are.equal('denied', v.outcome)
    assert.are.equal('max_connections (1) reached', v.reason)
    assert.is_nil(v.command)
    held:close()
    H.quiesce()
    H.eventually(function() return count_lines { path } == 2 end, 10, 'the held session logged')
    assert.are.equal('ok', json_lines { path }[2].outcome)
    assert.is_not_nil(err)
    l:close()
  end)

  it('behind a balancer: peer is the client the PROXY header named, proxy_peer the balancer', function()
    local path = dir .. '/access.jsonl'
    local l = H.listener {
      allow_private_destinations = true,
      proxy_protocol = { from = { '127.0.0.1' } },
      trusted_hosts = { '192.0.2.0/24' },
      access_log = { path = path },
    }
    local phost, pport = l:local_addr():match('^(.*):(%d+)$')
    local c = assert(H.socket.tcp())
    c:settimeout(5)
    assert(c:connect(phost, tonumber(pport)))
    local port = origin.echo
    -- PROXY v1 header, SOCKS5 greeting and CONNECT, pipelined; then one byte.
    assert(c:send(('PROXY TCP4 192.0.2.7 127.0.0.1 51514 %s\r\n'):format(pport)
      .. '\5\1\0' .. '\5\1\0\1\127\0\0\1' .. string.char(math.floor(port / 256), port % 256)))
    assert.are.equal('\5\0', c:receive(2))
    assert.are.equal('\5\0', c:receive(10):sub(1, 2))
    c:send('z')
    assert.are.equal('z', c:receive(1))
    c:close()
    H.eventually(function() return count_lines { path } == 1 end, 10, 'one line')
    local v = json_lines { path }[1]
    assert.are.equal('ok', v.outcome)
    assert.are.equal('192.0.2.7:51514', v.peer)
    assert.matches('^127%.0%.0%.1:%d+$', v.proxy_peer)
    assert.are.equal('192.0.2.7', v.identity)
    assert.are.equal('TrustedHost', v.context)
    l:close()
  end)

  it('reopen_logs() moves new lines to a new file, none lost', function()
    local path = dir .. '/access.jsonl'
    local l = H.listener { allow_private_destinations = true, access_log = { path = path } }
    local function session()
      local c = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
      c:send('x')
      assert.are.equal('x', c:receive(1))
      c:close()
    end
    session()
    H.eventually(function() return count_lines { path } == 1 end, 10, 'first line')
    assert(os.rename(path, path .. '.1'))
    assert.is_true(kp.reopen_logs() >= 1)
    session()
    session()
    H.eventually(function() return count_lines { path } == 2 end, 10, 'lines in the new file')
    assert.are.equal(1, count_lines { path .. '.1' })
    assert.are.equal(3, #json_lines { path .. '.1', path })
    l:close()
  end)

  it('is complete when run() returns, with the sessions cut at shutdown', function()
    local users = dir .. '/users'
    local f = assert(io.open(users, 'w'))
    f:write('alice secret\n')
    f:close()
    local path = dir .. '/access.jsonl'
    local P = start_proxy(dir, { OPS_USERS = users, OPS_ACCESS_LOG = path, OPS_GRACE = '0' })
    f = assert(io.open(dir .. '/hold.py', 'w'))
    f:write([[
import sys
sys.path.insert(0, "spec/support")
import socks
s = socks.open_proxy(sys.argv[1], timeout=30)
socks.greet(s, "alice", "secret")
socks.request(s, socks.CMD_CONNECT, "127.0.0.1", int(sys.argv[2]))
s.sendall(b"x")
assert s.recv(1) == b"x"
print("relaying", flush=True)
print("closed" if s.recv(1) == b"" else "data", flush=True)
]])
    f:close()
    local hold = io.popen(('python3 %s/hold.py %s %d 2>&1'):format(dir, P.addr, origin.echo))
    assert.are.equal('relaying', hold:read('*l'))
    P.stop()
    assert.are.equal('closed', hold:read('*l'))
    hold:close()
    -- Read as soon as run() returned: nothing left for the writer to do.
    local lines = json_lines { path }
    assert.are.equal(1, #lines)
    assert.are.equal('cut', lines[1].outcome)
    assert.are.equal('alice', lines[1].identity)
    assert.are.equal(1, lines[1].bytes_up)
    assert.matches('grace period', lines[1].reason)
  end)

  it('logrotate + SIGUSR1 under load: no line lost or duplicated', function()
    local users = dir .. '/users'
    local f = assert(io.open(users, 'w'))
    f:write('* pw\n')
    f:close()
    local path = dir .. '/access.jsonl'
    local P = start_proxy(dir, { OPS_USERS = users, OPS_ACCESS_LOG = path })
    local N = 1500
    local load = io.popen(('python3 spec/support/ops_load.py --proxy %s --target 127.0.0.1:%d -n %d -c 6 --password pw 2>&1')
      :format(P.addr, origin.echo, N))
    local rotations = 0
    for _ = 1, 4 do
      -- Rotate only a file that has lines (and exists again after the last reopen).
      H.eventually(function() return count_lines { path } > 0 end, 30, 'lines in the current file')
      local out, rc, err = H.logrotate(dir, path, P.pid)
      assert.are.equal(0, rc, out .. err)
      rotations = rotations + 1
    end
    local result = load:read('*a')
    load:close()
    assert.matches('ok=' .. N .. ' fail=0', result)
    local files = { path }
    for i = 1, rotations do files[#files + 1] = path .. '.' .. i end
    H.eventually(function() return count_lines(files) >= N end, 30, 'every session logged')
    local seen, dup = {}, 0
    for _, v in ipairs(json_lines(files)) do
      if seen[v.identity] then dup = dup + 1 end
      seen[v.identity] = true
      assert.are.equal('ok', v.outcome)
    end
    assert.are.equal(0, dup)
    for i = 1, N do assert.is_true(seen['u' .. i], 'u' .. i .. ' logged') end
    assert.are.equal(N, count_lines(files))
    -- Each rotated file got lines: the rotations really split the log.
    for i = 1, rotations do assert.is_true(count_lines { path .. '.' .. i } > 0) end
    assert.is_true(P.alive())
    P.stop()
  end)
end)

describe('live sessions', function()
  local origin

  setup(function()
    origin = H.start_origin()
  end)
  teardown(function()
    origin.stop()
  end)
  after_each(function()
    kp.on(AUTH, nil)
  end)

  it('lists, filters, and revokes one user while another keeps relaying', function()
    local dir = H.tempdir()
    local path = dir .. '/access.jsonl'
    kp.on(AUTH, function(u)
      return { identities = { { identity = u } }, groups = { u == 'bob' and 'ops' or 'staff' } }
    end)
    local l = H.listener {
      require_auth = true,
      allow_private_destinations = true,
      access_log = { path = path },
    }
    local status = kp.start_http_listener { listen = '127.0.0.1:0' }
    local a = socks_auth_connect(l:local_addr(), 'alice', 'x', origin.echo)
    local b = socks_auth_connect(l:local_addr(), 'bob', 'x', origin.echo)
    assert.are.equal('hello\n', echo(a, 'hello\n'))
    assert.are.equal('hi\n', echo(b, 'hi\n'))

    local all = l:sessions()
    assert.are.equal(2, #all)
    local s = l:sessions { identity = 'alice' }
    assert.are.equal(1, #s)
    assert.are.equal('alice', s[1].identity)
    assert.are.equal('127.0.0.1:' .. origin.echo, s[1].destination)
    assert.are.equal(6, s[1].bytes_up)
    assert.are.equal(6, s[1].bytes_down)
    assert.matches('^127%.0%.0%.1:%d+$', s[1].peer)
    assert.is_true(s[1].started <= os.time() + 1)
    assert.are.equal('bob', l:sessions { group = 'ops' }[1].identity)
    assert.are.equal(2, #l:sessions { peer = '127.0.0.0/8' })
    assert.are.equal(0, #l:sessions { destination = 'example.com' })
    assert.are.equal(2, #l:sessions { destination = '127.0.0.1' })

    -- The status listener lists them too.
    local out, rc = H.sh(('curl -sS --max-time 10 http://%s/proxy/sessions'):format(status:local_addr()))
    assert.are.equal(0, rc)
    local list = json.decode(out)
    assert.are.equal(2, #list)
    assert.are.equal(l:local_addr(), list[1].listener)

    local ok, err = pcall(l.close_sessions, l, {})
    assert.is_false(ok)
    assert.matches('all = true', tostring(err))
    assert.are.equal(1, kp.close_sessions { identity = 'alice' })
    wait_closed(a)
    a:close()
    -- Bob's session is untouched and keeps relaying.
    assert.are.equal('still here\n', echo(b, 'still here\n'))
    assert.are.equal(1, #l:sessions())
    assert.are.equal(1, l:close_sessions { all = true })
    wait_closed(b)
    b:close()
    H.quiesce()
    assert.are.equal(0, #l:sessions())

    H.eventually(function() return count_lines { path } == 2 end, 10, 'two lines')
    for _, v in ipairs(json_lines { path }) do
      assert.are.equal('cut', v.outcome)
      assert.are.equal('closed by policy', v.reason)
      if v.identity == 'bob' then
        assert.are.equal(14, v.bytes_up)
        assert.are.same({ 'ops' }, v.groups)
      end
    end
    status:close()
    l:close()
    os.execute('rm -rf ' .. dir)
  end)
end)

describe('listener:reconfigure', function()
  local origin

  setup(function()
    origin = H.start_origin()
  end)
  teardown(function()
    origin.stop()
  end)

  it('names keys that cannot change, unknown keys and bad values', function()
    local l = H.listener { allow_private_destinations = true }
    local function e(p)
      local ok, err = pcall(l.reconfigure, l, p)
      assert.is_false(ok)
      return tostring(err)
    end
    assert.matches('reconfigure: backlog, listen cannot change on a running listener', e { listen = '127.0.0.1:1', backlog = 5 })
    assert.matches('reconfigure: use_tls cannot change', e { use_tls = true })
    assert.matches('reconfigure: unknown parameter tiemout', e { tiemout = 5 })
    assert.matches('reconfigure: timeout: must be greater than zero', e { timeout = 0 })
    assert.matches('reconfigure: max_connections: ', e { max_connections = 'x' })
    assert.matches('expected a parameter table', e(5))
    -- A failed reconfigure changes nothing.
    local c = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
    c:close()
    l:close()
  end)

  it('applies new rules to the next session; running sessions keep theirs, none dropped', function()
    local l = H.listener { allow_private_destinations = true, timeout = '60 seconds' }
    local held = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
    assert.are.equal('a\n', echo(held, 'a\n'))
    local N = 400
    local load = io.popen(('python3 spec/support/socks.py sessions --proxy %s --target 127.0.0.1:%d -n %d 2>&1')
      :format(l:local_addr(), origin.echo, N))
    -- Swap settings back and forth while sessions come and go.
    for i = 1, 20 do
      l:reconfigure { permissions = { deny = { '127.0.0.1:' .. origin.peer } }, timeout = (i % 2 == 0) and '60 seconds' or '30 seconds' }
      l:reconfigure { permissions = false }
    end
    l:reconfigure { permissions = { deny = { '127.0.0.1:' .. origin.peer } }, timeout = '1 seconds' }
    local out = load:read('*a')
    load:close()
    assert.matches('ok=' .. N .. ' fail=0', out)
    -- New sessions: the new permissions...
    local c, code = H.socks_connect(l:local_addr(), '127.0.0.1', origin.peer)
    assert.is_nil(c)
    assert.are.equal(2, code)
    -- ...and the new idle timeout: a fresh idle session is cut after 1 s,
    local fresh = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
    wait_closed(fresh)
    fresh:close()
    -- while the session from before keeps its 60 s and still relays.
    assert.are.equal('b\n', echo(held, 'b\n'))
    -- require_auth for new sessions: no credentials, no method; held goes on.
    l:reconfigure { require_auth = true }
    assert.is_nil((H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo)))
    assert.are.equal('c\n', echo(held, 'c\n'))
    held:close()
    H.quiesce()
    local s = l:stats()
    assert.are.equal(s.accepted, s.completed + s.failed + s.rejected)
    l:close()
  end)
end)

describe('reload', function()
  local origin

  setup(function()
    origin = H.start_origin()
  end)
  teardown(function()
    origin.stop()
  end)

  local function write(path, s)
    local f = assert(io.open(path, 'w'))
    f:write(s)
    f:close()
  end

  it('SIGHUP during run() calls the reload handler; it can revoke users', function()
    local dir = H.tempdir()
    local users = dir .. '/users'
    write(users, 'alice secret\nbob pw\n')
    local P = start_proxy(dir, { OPS_USERS = users, OPS_RELOAD = '1' })
    local function connect(user, pass)
      local out, _, err = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --user %s --password %s')
        :format(P.addr, origin.echo, user, pass))
      return out .. (err or '')
    end
    assert.matches('data=ping', connect('alice', 'secret'))
    -- A long session of bob's, open across the reload.
    write(dir .. '/hold.py', [[
import sys
sys.path.insert(0, "spec/support")
import socks
s = socks.open_proxy(sys.argv[1], timeout=30)
socks.greet(s, "bob", "pw")
rep, _ = socks.request(s, socks.CMD_CONNECT, "127.0.0.1", int(sys.argv[2]))
s.sendall(b"x")
assert s.recv(1) == b"x"
print("relaying", flush=True)
print("closed" if s.recv(1) == b"" else "data", flush=True)
]])
    local bob = io.popen(('python3 %s/hold.py %s %d 2>&1'):format(dir, P.addr, origin.echo))
    assert.are.equal('relaying', bob:read('*l'))
    write(users, 'alice secret\ncarol pw2\n')
    P.signal('HUP')
    H.eventually(function() return P.output():match('RELOADED users=2 closed=1') end, 20, 'reload')
    assert.are.equal('closed', bob:read('*l'))
    bob:close()
    assert.matches('auth failed', connect('bob', 'pw'))
    assert.matches('data=ping', connect('carol', 'pw2'))
    -- SIGUSR1 without an access log, and another SIGHUP: still serving.
    P.signal('USR1')
    P.signal('HUP')
    H.eventually(function() return select(2, P.output():gsub('RELOADED', '')) == 2 end, 20, 'second reload')
    assert.is_true(P.alive())
    assert.matches('data=ping', connect('alice', 'secret'))
    P.stop()
    os.execute('rm -rf ' .. dir)
  end)

  it('SIGHUP without a reload handler is logged and ignored', function()
    local dir = H.tempdir()
    local users = dir .. '/users'
    write(users, 'alice secret\n')
    local P = start_proxy(dir, { OPS_USERS = users, KUMOPROXY_LOG = 'info' })
    P.signal('HUP')
    H.eventually(function()
      return read_file(dir .. '/stderr.txt'):match("SIGHUP: no 'reload' handler registered; ignored")
    end, 20, 'SIGHUP logged')
    assert.is_true(P.alive())
    assert.matches('data=ping', (H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --user alice --password secret')
      :format(P.addr, origin.echo))))
    P.stop()
    os.execute('rm -rf ' .. dir)
  end)

  it('examples/init.lua re-reads its users file on SIGHUP', function()
    local dir = H.tempdir()
    local users = dir .. '/users.txt'
    write(users, 'alice secret\n')
    local log = dir .. '/log'
    assert(os.execute(('KUMOPROXY_LOG=info KUMOPROXY_LISTEN=127.0.0.1:0 KUMOPROXY_USERS=%s %s examples/init.lua >%s 2>&1 & echo $! >%s/pid')
      :format(users, H.lua, log, dir)))
    local addr = H.eventually(function()
      local s = read_file(log)
      return s:match('kumoproxy.run: serving') and s:match('proxy listener on (%S+)')
    end, 20, 'example started')
    local pid = tonumber(read_file(dir .. '/pid'))
    local function connect(user, pass)
      local out, _, err = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --user %s --password %s')
        :format(addr, origin.echo, user, pass))
      return out .. (err or '')
    end
    assert.matches('auth failed', connect('dave', 'pw'))
    write(users, 'alice secret\ndave pw\n')
    os.execute('kill -HUP ' .. pid)
    H.eventually(function() return read_file(log):match('reloaded 2 users') end, 20, 'reloaded')
    assert.matches('data=ping', connect('dave', 'pw'))
    os.execute('kill -TERM ' .. pid)
    H.eventually(function() return read_file(log):match('stopped:') end, 20, 'example stopped')
    os.execute('rm -rf ' .. dir)
  end)
end)

describe('KUMOPROXY_LOG_FORMAT=json', function()
  it('writes the tracing log as one JSON object per line', function()
    local code = [[
      local kp = require 'kumoproxy'
      local l = kp.start_proxy_listener { listen = '127.0.0.1:0' }
      l:close()
      kp.run_until(function() return not l:stats().accepting end, 5)
    ]]
    local out, rc, err = H.sh({ 'env', 'KUMOPROXY_LOG=info', 'KUMOPROXY_LOG_FORMAT=json', H.lua, '-e', code })
    assert.are.equal(0, rc, err)
    local n = 0
    for line in err:gmatch('[^\n]+') do
      local v = assert(json.decode(line), line)
      assert.are.equal('INFO', v.level)
      assert.are.equal('string', type(v.message))
      n = n + 1
    end
    assert.is_true(n >= 2, err)
    assert.matches('proxy listener on 127%.0%.0%.1', err)
    assert.are.equal('', out)
  end)
end)
