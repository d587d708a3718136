-- Issue 13: nothing a client sends may get past the policy. Each test plays a
-- hostile client (spec/support/hostile.py: raw Python sockets; curl) against
-- the built module and asserts what the handler or the rules would decide.
-- No test sends traffic outside 127.0.0.0/8 and ::1: destinations that would
-- leave the host (NAT64, IPv4-compatible IPv6) go to a guard upstream that
-- refuses them, and the test checks the request never reached it.
local H = require 'spec.support.helpers'
local kp = H.kp
local socket = H.socket

local AUTH = 'proxy_server_auth_rfc1929'
local BASIC = 'http_server_validate_auth_basic'
local REQUEST = 'proxy_server_request'

local function hex(s) return H.hex(s) end

-- hostile.py with an argv table (no shell quoting of hostile bytes).
local function hostile(args)
  local argv = { 'python3', 'spec/support/hostile.py' }
  for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
  local out, rc, err = H.sh(argv, { timeout = 30 })
  return out or '', rc, err
end

-- One SOCKS5 login + CONNECT; returns auth ('ok'/'fail'/nil), reply ('00'...), out.
local function socks(l, o)
  local args = { 'socks', '--proxy', type(l) == 'string' and l or l:local_addr(), '--port', o.port }
  if o.user then
    args[#args + 1] = '--user-hex'; args[#args + 1] = hex(o.user)
    args[#args + 1] = '--pass-hex'; args[#args + 1] = hex(o.pass or '')
  end
  if o.host_hex then
    args[#args + 1] = '--host-hex'; args[#args + 1] = hex(o.host_hex)
  else
    args[#args + 1] = '--host'; args[#args + 1] = o.host or '127.0.0.1'
  end
  if o.domain then args[#args + 1] = '--domain' end
  if o.source then args[#args + 1] = '--source'; args[#args + 1] = o.source end
  local out = hostile(args)
  return out:match('auth=(%a+)'), out:match('reply=0x(%x%x)'), out
end

-- One HTTP CONNECT; `basic` is the decoded Basic token (nil: no header).
local function http(l, target, basic, source)
  local args = { 'http', '--proxy', l:local_addr(), '--target', target }
  if basic then args[#args + 1] = '--basic-hex'; args[#args + 1] = hex(basic) end
  if source then args[#args + 1] = '--source'; args[#args + 1] = source end
  local out = hostile(args)
  return out:match('status=(%w+)'), out
end

local function free_port()
  local s = assert(socket.bind('127.0.0.1', 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Runs a Lua script in a child interpreter; returns stdout, exit code, stderr.
local function child(script, env, timeout)
  local argv = { 'timeout', '-k', '2', tostring(timeout or 20), 'env' }
  for _, e in ipairs(env or {}) do argv[#argv + 1] = e end
  argv[#argv + 1] = H.lua
  argv[#argv + 1] = '-e'
  argv[#argv + 1] = script
  return H.sh(argv, { timeout = (timeout or 20) + 10 })
end

describe('security (issue 13)', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)
  after_each(function()
    kp.on(AUTH, nil)
    kp.on(BASIC, nil)
    kp.on(REQUEST, nil)
  end)

  describe('1: auth_cache reuses a verdict only for the inputs the handler saw', function()
    it('peer IP: alice admitted from 127.0.0.2 is not admitted from 127.0.0.3 by the cache', function()
      local calls = 0
      kp.on(AUTH, function(user, pass, meta)
        calls = calls + 1
        return user == 'alice' and pass == 'pw' and meta.peer_address:match('^127%.0%.0%.2:') ~= nil
      end)
      local l = H.listener { require_auth = true, trusted_hosts = {}, allow_private_destinations = true,
        auth_failure_delay = false, auth_cache = { ttl = '60 seconds', negative_ttl = '60 seconds' } }
      local a, r = socks(l, { user = 'alice', pass = 'pw', port = origin.echo, source = '127.0.0.2' })
      assert.are.equal('ok', a)
      assert.are.equal('00', r)
      a = socks(l, { user = 'alice', pass = 'pw', port = origin.echo, source = '127.0.0.3' })
      assert.are.equal('fail', a, 'a verdict for 127.0.0.2 was replayed for 127.0.0.3')
      assert.are.equal(2, calls)
      -- The same peer IP from another port is the same input: a hit.
      a = socks(l, { user = 'alice', pass = 'pw', port = origin.echo, source = '127.0.0.2' })
      assert.are.equal('ok', a)
      assert.are.equal(2, calls)
      l:close()
    end)

    it("TLS client certificate: alice's verdict is not replayed for a connection with bob's certificate", function()
      local pki = H.make_pki()
      finally(function() H.remove_pki(pki) end)
      local function f(n) return pki .. '/' .. n end
      -- bob: a second client of the same CA.
      local _, rc, err = H.sh(([[cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out bob.key 2>/dev/null &&
        openssl req -new -key bob.key -out bob.csr -subj /CN=bob 2>/dev/null &&
        printf 'extendedKeyUsage=clientAuth\n' > bob.ext &&
        openssl x509 -req -in bob.csr -CA ca1.pem -CAkey ca1.key -CAcreateserial -days 2 -out bob.pem -extfile bob.ext 2>/dev/null]]):format(pki))
      assert.are.equal(0, rc, err)
      local calls = 0
      -- The documented pattern: the certificate must be the user's own.
      kp.on(AUTH, function(user, pass, meta)
        calls = calls + 1
        return pass == 'pw' and meta.tls_client_identity == user
      end)
      local l = H.listener { allow_private_destinations = true, use_tls = true,
        tls_certificate = f('server.pem'), tls_private_key = f('server.key'), tls_client_ca = f('ca1.pem'),
        require_auth = true, require_password = true, trusted_hosts = {}, auth_failure_delay = false,
        auth_cache = { ttl = '60 seconds', negative_ttl = '60 seconds' } }
      local function tls(who)
        local out = H.sh(('python3 spec/support/tls_socks.py --proxy %s --target 127.0.0.1:%d --cafile %s --cert %s --key %s --user alice --password pw')
          :format(l:local_addr(), origin.echo, f('ca1.pem'), f(who .. '.pem'), f(who .. '.key')))
        return out:match('auth=(%a+)'), out
      end
      assert.are.equal('ok', (tls('alice')))
      local a, out = tls('bob')
      assert.are.equal('fail', a, "alice admitted with bob's certificate: " .. out)
      assert.are.equal(2, calls)
      l:close()
    end)
    it('auth_http verdicts likewise; cache_scope = credentials (Lua or auth_http) widens an acceptance on purpose', function()
      local f = assert(io.popen(('exec python3 spec/support/auth_service.py --parent-pid %d --max-seconds 300 --allow-port 1'):format(H.pid())))
      local line = assert(f:read('*l'))
      local pid, port = line:match('pid=(%d+)'), line:match('port=(%d+)')
      finally(function() os.execute('kill ' .. pid .. ' 2>/dev/null'); f:close() end)
      local function calls(path)
        local out = H.sh { 'curl', '-sS', ('http://127.0.0.1:%s/calls'):format(port) }
        return tonumber(out:match('"' .. path .. '": (%d+)')) or 0
      end
      local function three(l)
        for _, src in ipairs { '127.0.0.2', '127.0.0.3', '127.0.0.2' } do
          local a = socks(l, { user = 'bob', pass = 'hunter2', port = origin.echo, source = src })
          assert.are.equal('ok', a, src)
        end
      end
      local function listener(path)
        return H.listener { require_auth = true, trusted_hosts = {}, allow_private_destinations = true,
          auth_failure_delay = false, auth_cache = { ttl = '60 seconds' },
          auth_http = { url = ('http://127.0.0.1:%s%s'):format(port, path) } }
      end
      local l = listener('/check')
      three(l)
      assert.are.equal(2, calls('/check'), 'auth_http asked once per peer IP')
      l:close()
      l = listener('/wide')
      three(l)
      assert.are.equal(1, calls('/wide'), '"cache_scope": "credentials" reused from any address')
      l:close()
      -- Lua: the same opt-in.
      local n = 0
      kp.on(AUTH, function(user) n = n + 1; return { identities = { user }, cache_scope = 'credentials' } end)
      l = H.listener { require_auth = true, trusted_hosts = {}, allow_private_destinations = true,
        auth_failure_delay = false, auth_cache = { ttl = '60 seconds' } }
      three(l)
      assert.are.equal(1, n)
      l:close()
      -- A bad value makes the AuthInfo invalid (fails closed).
      kp.on(AUTH, function(user) return { identities = { user }, cache_scope = 'everything' } end)
      l = H.listener { require_auth = true, trusted_hosts = {}, allow_private_destinations = true, auth_failure_delay = false }
      assert.are.equal('fail', (socks(l, { user = 'bob', pass = 'x', port = origin.echo })))
      l:close()
    end)
  end)

  describe('2: one cache entry per event, nil and "" distinct', function()
    it('a SOCKS login is not replayed for HTTP Basic on the same listener', function()
      local basic_calls, contexts = 0, {}
      kp.on(AUTH, function(user, pass) return user == 'alice' and pass == 'pw' end)
      kp.on(BASIC, function() basic_calls = basic_calls + 1; return false end)
      kp.on(REQUEST, function(_, auth_info)
        contexts[#contexts + 1] = auth_info.identities[1].context
        return true
      end)
      local l = H.listener { protocols = { 'socks5', 'http' }, require_auth = true, trusted_hosts = {},
        allow_private_destinations = true, auth_failure_delay = false, auth_cache = { ttl = '60 seconds' } }
      local a, r = socks(l, { user = 'alice', pass = 'pw', port = origin.echo })
      assert.are.equal('ok', a)
      assert.are.equal('00', r)
      local status = http(l, '127.0.0.1:' .. origin.echo, 'alice:pw')
      assert.are.equal('407', status, 'the HTTP Basic handler was not asked')
      assert.are.equal(1, basic_calls)
      assert.same({ 'ProxyAuthRfc1929' }, contexts)
      l:close()
    end)

    it('HTTP Basic "alice" (no colon, password nil) and "alice:" (empty password) are different keys', function()
      local seen = {}
      kp.on(BASIC, function(user, pass)
        seen[#seen + 1] = pass == nil and 'nil' or ('"' .. pass .. '"')
        return user == 'alice' and pass == ''   -- an empty password is this user's; no password is not
      end)
      local l = H.listener { protocols = { 'http' }, require_auth = true, trusted_hosts = {},
        allow_private_destinations = true, auth_failure_delay = false,
        auth_cache = { ttl = '60 seconds', negative_ttl = '60 seconds' } }
      assert.are.equal('200', (http(l, '127.0.0.1:' .. origin.echo, 'alice:')))
      assert.are.equal('407', (http(l, '127.0.0.1:' .. origin.echo, 'alice')), 'password nil admitted from the cache')
      assert.same({ '""', 'nil' }, seen)
      l:close()
    end)
  end)

  describe('3: no private destination by any name or path', function()
    local mport, mpid
    setup(function()
      mport = free_port()
      local p = assert(io.popen(('timeout 300 microsocks -i 127.0.0.1 -p %d >/dev/null 2>&1 & echo $!'):format(mport)))
      mpid = tonumber(p:read('*l'))
      p:close()
      H.eventually(function()
        local c = socket.connect('127.0.0.1', mport)
        if c then c:close() return true end
      end, 10, 'microsocks listening')
    end)
    teardown(function() os.execute('kill ' .. mpid .. ' 2>/dev/null') end)

    local function micro() return kp.make_egress_source { name = 'spec-sec-micro', socks5_proxy_server = '127.0.0.1:' .. mport } end

    it('direct: localhost and 127.1 are refused (0x02)', function()
      local l = H.listener {}
      for _, name in ipairs { 'localhost', '127.1', 'LocalHost' } do
        local _, r = socks(l, { host = name, domain = true, port = origin.echo })
        assert.are.equal('02', r, name)
      end
      l:close()
    end)

    it('listener egress_source (microsocks upstream): localhost and 127.1 are refused, never sent upstream', function()
      local l = H.listener { egress_source = micro() }
      for _, name in ipairs { 'localhost', '127.1' } do
        local _, r, out = socks(l, { host = name, domain = true, port = origin.echo })
        assert.are.equal('02', r, name .. ' relayed through the egress source: ' .. out)
      end
      H.quiesce()
      assert.are.equal(2, l:stats().denied)
      l:close()
    end)

    it('HTTP CONNECT through an egress source: localhost and 127.1 get 403', function()
      local l = H.listener { protocols = { 'http' }, egress_source = micro() }
      for _, name in ipairs { 'localhost', '127.1' } do
        local status, out = http(l, name .. ':' .. origin.echo)
        assert.are.equal('403', status, name .. ': ' .. out)
      end
      l:close()
    end)

    it('a proxy_server_request rewrite to localhost / 127.1 through an egress source is refused', function()
      local src = micro()
      local l = H.listener { permissions = { allow = { '*' } } }
      for _, name in ipairs { 'localhost', '127.1' } do
        kp.on(REQUEST, function() return { destination = name .. ':' .. origin.echo, egress_source = src } end)
        -- 192.0.2.1 (TEST-NET) passes the first check and is never dialled: the rewrite replaces it.
        local _, r, out = socks(l, { host = '192.0.2.1', port = 80 })
        assert.are.equal('02', r, name .. ': ' .. out)
      end
      l:close()
    end)

    it('what an upstream proxy is asked: the checked address by default; the name only with socks5_proxy_remote_dns, never localhost or numeric names', function()
      -- The guard upstream is a listener of this process: its proxy_server_request
      -- handler records the addresses it is asked for and refuses; names are
      -- refused by its name rule before any lookup (nothing resolved or dialled).
      local guard = H.listener { allow_private_destinations = true, permissions = { deny = { 'upstream-only.test' } } }
      local asked = {}
      kp.on(REQUEST, function(request, _, meta)
        if meta.local_address == guard:local_addr() then
          asked[#asked + 1] = request.host
          return false
        end
        return true
      end)
      local by_ip = kp.make_egress_source { name = 'spec-sec-by-ip', socks5_proxy_server = guard:local_addr() }
      local by_name = kp.make_egress_source { name = 'spec-sec-by-name', socks5_proxy_server = guard:local_addr(),
        socks5_proxy_remote_dns = true }
      -- Default: the name is resolved and checked here, the address goes upstream.
      local l = H.listener { allow_private_destinations = true, egress_source = by_ip }
      socks(l, { host = 'LocalHost', domain = true, port = origin.echo })
      assert.same({ '127.0.0.1' }, asked)
      l:close()
      H.quiesce()
      assert.are.equal(1, guard:stats().denied)
      -- Opt-in: names go upstream as they are (the guard refuses this one by name)...
      l = H.listener { egress_source = by_name }
      socks(l, { host = 'upstream-only.test', domain = true, port = 80 })
      H.quiesce()
      assert.are.equal(2, guard:stats().denied)
      -- ...but localhost names are refused by name, and numeric names are
      -- resolved (and refused) here: the guard sees none of them.
      for _, name in ipairs { 'localhost', 'LOCALHOST.', 'db.localhost', '127.1', '0x7f.1', '2130706433' } do
        local _, r = socks(l, { host = name, domain = true, port = origin.echo })
        assert.are.equal('02', r, name)
      end
      H.quiesce()
      assert.are.equal(2, guard:stats().accepted)
      assert.same({ '127.0.0.1' }, asked)
      l:close()
      guard:close()
      local ok, e = pcall(kp.make_egress_source, { name = 'x', socks5_proxy_remote_dns = true })
      assert.is_false(ok)
      assert.matches('socks5_proxy_remote_dns: requires socks5_proxy_server', tostring(e))
    end)

    it('probes: other spellings of loopback and "this host" never reach an upstream', function()
      local guard = H.listener { allow_private_destinations = true, permissions = { allow = { '127.0.0.1' } } }
      local src = kp.make_egress_source { name = 'spec-sec-probe', socks5_proxy_server = guard:local_addr() }
      local remote = kp.make_egress_source { name = 'spec-sec-probe-r', socks5_proxy_server = guard:local_addr(),
        socks5_proxy_remote_dns = true }
      for _, egress in ipairs { src, remote } do
        local l = H.listener { protocols = { 'socks5', 'http' }, egress_source = egress }
        for _, name in ipairs { '0177.0.0.1', '0x7f000001', '127.0.0.1', '0', '0.0.0.0', 'localhost.localdomain.localhost' } do
          local _, r = socks(l, { host = name, domain = true, port = origin.echo })
          assert.are.equal('02', r, name)
        end
        for _, ip in ipairs { '::ffff:127.0.0.1', '::ffff:0.0.0.0', '::', '::1', '0.0.0.0' } do
          local _, r = socks(l, { host = ip, port = origin.echo })
          assert.are.equal('02', r, ip)
        end
        for _, target in ipairs { '[::ffff:127.0.0.1]', '[::1]', '127.1', 'LOCALHOST', '[64:ff9b::7f00:1]', '0177.1' } do
          local status = http(l, target .. ':' .. origin.echo)
          assert.are.equal('403', status, target)
        end
        l:close()
      end
      H.quiesce()
      assert.are.equal(0, guard:stats().accepted, 'a private destination was sent upstream')
      guard:close()
    end)

    it('NAT64 (64:ff9b::/96) and IPv4-compatible (::a.b.c.d) forms of private IPv4 are refused before anything is sent', function()
      -- The guard upstream only allows loopback: were the front to pass these
      -- on, the guard would see (and refuse) them. It must see nothing.
      local guard = H.listener { allow_private_destinations = true, permissions = { allow = { '127.0.0.0/8', '::1' } } }
      local src = kp.make_egress_source { name = 'spec-sec-guard', socks5_proxy_server = guard:local_addr() }
      local l = H.listener { egress_source = src }
      for _, ip in ipairs { '64:ff9b::7f00:1', '64:ff9b::a9fe:a9fe', '::127.0.0.1', '::169.254.169.254', '64:ff9b:1::7f00:1' } do
        local _, r = socks(l, { host = ip, port = origin.echo })
        assert.are.equal('02', r, ip)
      end
      -- Names too: a rewrite to such a literal.
      kp.on(REQUEST, function() return { destination = '[64:ff9b::7f00:1]:' .. origin.echo } end)
      local _, r = socks(l, { host = '192.0.2.1', port = 80 })
      assert.are.equal('02', r)
      H.quiesce()
      assert.are.equal(0, guard:stats().accepted, 'a private destination was sent upstream')
      l:close()
      guard:close()
    end)
  end)

  it('4: no client text forges a log line at any level (SOCKS user, HTTP user, domain, handler strings; NUL)', function()
    -- Newline, NUL, ESC, U+2028 (line separator), U+202E (bidi override), a
    -- byte that is not UTF-8, DEL.
    local forged = '\n2026-01-01T00:00:00.000000Z  INFO forged-%s\0nul\27[2J\226\128\168\226\128\174\255\127'
    -- A Lua string literal of pure ASCII (argv must be UTF-8).
    local quoted = '"' .. forged:gsub('[%c\128-\255"\\]', function(c) return ('\\%03d'):format(c:byte()) end) .. '"'
    local script = ([[
      local kp = require 'kumoproxy'
      local function hex(s) return (s:gsub('.', function(c) return ('%%02x'):format(c:byte()) end)) end
      local forged = %s
      kp.on('proxy_server_auth_rfc1929', function(user)
        -- (Identities are Lua strings made UTF-8: no \255 there.)
        local f = forged:gsub('\255', '')
        if user == 'h' then return { identities = { { identity = 'h' .. f:format('handler'), context = 'X' .. f:format('ctx') } } } end
        return true
      end)
      kp.on('http_server_validate_auth_basic', function() return true end)
      local l = kp.start_proxy_listener { listen = '127.0.0.1:0', protocols = { 'socks5', 'http' },
        require_auth = true, trusted_hosts = {}, allow_private_destinations = true }
      local function run(args)
        local argv = { 'python3', 'spec/support/hostile.py' }
        for _, a in ipairs(args) do argv[#argv + 1] = a end
        local out = kp.run_command(argv, { timeout = 20 })
        io.write(out)
      end
      local proxy = l:local_addr()
      run { 'socks', '--proxy', proxy, '--user-hex', hex('u' .. forged:format('socks')), '--pass-hex', hex('pw'), '--host', '127.0.0.1', '--port', '%d' }
      run { 'socks', '--proxy', proxy, '--user-hex', hex('h'), '--pass-hex', hex('pw'), '--host', '127.0.0.1', '--port', '%d' }
      run { 'socks', '--proxy', proxy, '--user-hex', hex('d'), '--pass-hex', hex('pw'), '--host-hex', hex('x' .. forged:format('domain')), '--port', '80' }
      run { 'http', '--proxy', proxy, '--target', '127.0.0.1:%d', '--basic-hex', hex('b' .. forged:format('http') .. ':pw') }
      kp.on('proxy_server_auth_rfc1929', function() return false end)
      run { 'socks', '--proxy', proxy, '--user-hex', hex('r' .. forged:format('refused')), '--pass-hex', hex('pw'), '--host', '127.0.0.1', '--port', '%d' }
      kp.on('http_server_validate_auth_basic', function() error('boom' .. forged:format('error')) end)
      run { 'http', '--proxy', proxy, '--target', '127.0.0.1:%d', '--basic-hex', hex('e' .. forged:format('http-error') .. ':pw') }
      l:close()
    ]]):format(quoted, origin.echo, origin.echo, origin.echo, origin.echo, origin.echo)
    for _, level in ipairs { 'trace', 'debug', 'info', 'warn', 'error' } do
      local out, rc, err = child(script, { 'KUMOPROXY_LOG=' .. level }, 60)
      assert.are.equal(0, rc, err)
      assert.matches('data=ping', out)
      assert.is_nil(err:find('\0', 1, true), level .. ': a raw NUL in the log')
      assert.is_nil(err:find('\27', 1, true), level .. ': a raw ESC in the log')
      for _, raw in ipairs { '\226\128\168', '\226\128\174', '\255', '\127' } do
        assert.is_nil(err:find(raw, 1, true), level .. ': a raw ' .. H.hex(raw) .. ' in the log')
      end
      for line in err:gmatch('[^\n]+') do
        assert.is_nil(line:find('^2026%-01%-01T00:00:00%.000000Z'), level .. ': forged line: ' .. line)
        assert.truthy(line:find('^%d%d%d%d%-%d%d%-%d%dT'), level .. ': a line not made by the logger: ' .. line)
      end
      if level == 'debug' then
        -- The client text is there, escaped: the test looked at real lines.
        for _, what in ipairs { 'socks', 'handler' } do
          assert.truthy(err:find('\\n2026-01-01T00:00:00.000000Z  INFO forged-' .. what, 1, true), what .. ' not logged:\n' .. err)
        end
        -- Basic splits user and password at the first colon.
        assert.truthy(err:find("authenticated as b\\n2026-01-01T00 (", 1, true), 'http not logged:\n' .. err)
      end
    end
  end)

  describe('5: nested pumps', function()
    it('a nested run_until dispatches the events of the batch it came from', function()
      local c_done, waited, got = false, nil, nil
      kp.on(AUTH, function(user)
        if user == 'b' then
          local t0 = socket.gettime()
          got = kp.run_until(function() return c_done end, 3)
          waited = socket.gettime() - t0
          return got == true
        end
        c_done = true
        return true
      end)
      local l = H.listener { require_auth = true, trusted_hosts = {}, allow_private_destinations = true }
      local cmd = 'python3 spec/support/hostile.py socks --proxy %s --user-hex %s --pass-hex 7077 --host 127.0.0.1 --port %d'
      -- Queue b's then c's question without dispatching either: one batch.
      local pb = assert(io.popen(cmd:format(l:local_addr(), hex('b'), origin.echo)))
      assert.are.equal(1, kp.wait_events(10, 1))
      local pc = assert(io.popen(cmd:format(l:local_addr(), hex('c'), origin.echo)))
      assert.are.equal(2, kp.wait_events(10, 2))
      -- b's handler runs first; c's runs inside b's run_until (counted there).
      assert.are.equal(1, kp.poll())
      local ob, oc = pb:read('*a'), pc:read('*a')
      pb:close()
      pc:close()
      assert.is_true(got, "b's nested run_until timed out waiting for c")
      assert.is_true(waited < 2, 'b waited ' .. waited .. ' s')
      assert.matches('auth=ok', ob)
      assert.matches('auth=ok', oc)
      l:close()
    end)

    it('a nested run() inside a handler raises a clear error', function()
      local script = ([[
        local kp = require 'kumoproxy'
        local l = kp.start_proxy_listener { listen = '127.0.0.1:0', require_auth = true, trusted_hosts = {} }
        kp.on('proxy_server_auth_rfc1929', function()
          local ok, err = pcall(kp.run)
          print('nested run: ' .. tostring(ok) .. ' ' .. tostring(err))
          return false
        end)
        kp.run_command({ 'python3', 'spec/support/hostile.py', 'socks', '--proxy', l:local_addr(),
          '--user-hex', '61', '--pass-hex', '62', '--host', '127.0.0.1', '--port', '%d' }, { timeout = 10 })
      ]]):format(origin.echo)
      local out, rc, err = child(script, {}, 8)
      assert.are.equal(0, rc, 'nested run() served instead of raising: ' .. tostring(out) .. tostring(err))
      assert.matches('nested run: false [^\n]*run%(%) [^\n]*handler', out)
    end)
  end)

  it("6: an IPv4-mapped CIDR rule ('::ffff:127.0.0.0/104') matches IPv4 destinations, or is refused by name", function()
    local ok, l = pcall(H.listener, { allow_private_destinations = true, permissions = { deny = { '::ffff:127.0.0.0/104' } } })
    if not ok then
      assert.matches('::ffff:127%.0%.0%.0/104', tostring(l))
      return
    end
    local _, r = socks(l, { port = origin.echo })
    assert.are.equal('02', r, 'the mapped rule blocked nothing')
    local _, r6 = socks(l, { host = '::ffff:127.0.0.1', port = origin.echo })
    assert.are.equal('02', r6)
    l:close()
    -- A user's rule is normalised the same way.
    kp.on(AUTH, function(user) return { identities = { user }, permissions = { deny = { '[::ffff:127.0.0.1]' } } } end)
    l = H.listener { require_auth = true, allow_private_destinations = true }
    local a, r2 = socks(l, { user = 'u', pass = 'p', port = origin.echo })
    assert.are.equal('ok', a)
    assert.are.equal('02', r2)
    l:close()
  end)

  describe('7: smaller ones', function()
    it('SOCKS CONNECT to port 0 is refused before dialling (0x02), like HTTP CONNECT (400)', function()
      local l = H.listener { protocols = { 'socks5', 'http' }, allow_private_destinations = true }
      for _, host in ipairs { '127.0.0.1', 'localhost' } do
        local _, r = socks(l, { host = host, domain = host == 'localhost', port = 0 })
        assert.are.equal('02', r, host)
      end
      assert.are.equal('400', (http(l, '127.0.0.1:0')))
      H.quiesce()
      local s = l:stats()
      assert.are.equal(2, s.denied)
      assert.are.equal(0, s.bytes_to_remote)
      l:close()
    end)

    it('max_connections refusals are logged aggregated; the counter stays exact', function()
      local script = [[
        local kp = require 'kumoproxy'
        local socket = require 'socket'
        local l = kp.start_proxy_listener { listen = '127.0.0.1:0', max_connections = 1, timeout = 30 }
        local l2 = kp.start_proxy_listener { listen = '127.0.0.1:0', max_connections_per_ip = 1, timeout = 30 }
        local holds = {}
        for _, x in ipairs { l, l2 } do
          local c = assert(socket.connect('127.0.0.1', tonumber(x:local_addr():match(':(%d+)$'))))
          holds[#holds + 1] = c
          assert(kp.run_until(function() return x:stats().active == 1 end, 10))
          local out = kp.run_command({ 'python3', 'spec/support/hostile.py', 'flood', '--proxy', x:local_addr(), '-n', '60' }, { timeout = 30 })
          io.write(out)
        end
        print(('rejected=%d,%d'):format(l:stats().rejected, l2:stats().rejected))
        for _, c in ipairs(holds) do c:close() end
        l:close(); l2:close()
      ]]
      local out, rc, err = child(script, { 'KUMOPROXY_LOG=warn' }, 60)
      assert.are.equal(0, rc, err)
      assert.matches('closed=60\nclosed=60\nrejected=60,60', out)
      local n1 = select(2, err:gsub('max_connections %(', ''))
      local n2 = select(2, err:gsub('max_connections_per_ip %(', ''))
      assert.is_true(n1 >= 1 and n1 <= 3, n1 .. ' max_connections lines:\n' .. err)
      assert.is_true(n2 >= 1 and n2 <= 3, n2 .. ' max_connections_per_ip lines:\n' .. err)
    end)
  end)

  it("docs/run.md: a session cut at the end of run()'s grace period is logged and counted as failed", function()
    local script = [[
      local kp = require 'kumoproxy'
      local socket = require 'socket'
      -- A destination that accepts (kernel backlog) and never answers.
      local mute = assert(socket.bind('127.0.0.1', 0))
      local _, mport = mute:getsockname()
      local l = kp.start_proxy_listener { listen = '127.0.0.1:0', require_auth = true, trusted_hosts = {},
        allow_private_destinations = true }
      kp.on('proxy_server_auth_rfc1929', function() kp.stop(); return true end)
      local p = io.popen(('python3 spec/support/hostile.py socks --proxy %s --user-hex 61 --pass-hex 62 --host 127.0.0.1 --port %d'):format(l:local_addr(), mport))
      kp.run { grace = 0.3 }
      local s = l:stats()
      print(('failed=%d completed=%d active=%d'):format(s.failed, s.completed, s.active))
      p:close()
    ]]
    local out, rc, err = child(script, { 'KUMOPROXY_LOG=warn' }, 30)
    assert.are.equal(0, rc, err)
    assert.matches('failed=1 completed=0 active=0', out)
    assert.matches('cut at the end of the shutdown grace period', err)
  end)
end)
