-- Auth primitives and policy: auth_http, permissions, proxy_server_request,
-- auth_cache, auth_failure_delay. Real curl, a real Python auth service.
local H = require 'spec.support.helpers'
local kp = H.kp

local AUTH = 'proxy_server_auth_rfc1929'
local REQUEST = 'proxy_server_request'

-- Starts spec/support/auth_service.py; `allow_port` goes into alice's permissions.
local function start_auth_service(allow_port, slow_seconds)
  local cmd = ('exec python3 spec/support/auth_service.py --parent-pid %d --max-seconds 600 --allow-port %d --slow-seconds %s')
    :format(H.pid(), allow_port or 1, slow_seconds or 30)
  local f = assert(io.popen(cmd, 'r'))
  local line = assert(f:read('*l'), 'auth_service.py did not start')
  local s = { pipe = f, pid = tonumber(line:match('pid=(%d+)')), port = tonumber(line:match('port=(%d+)')) }
  s.url = function(path) return ('http://127.0.0.1:%d%s'):format(s.port, path) end
  function s.get(path)
    local out, rc = H.sh { 'curl', '-sS', s.url(path) }
    assert(rc == 0, 'GET ' .. path .. ' failed')
    return out
  end
  -- POSTs so far to `path`.
  function s.calls(path)
    return tonumber(s.get('/calls'):match('"' .. path .. '": (%d+)')) or 0
  end
  function s.stop()
    os.execute('kill ' .. s.pid .. ' 2>/dev/null')
    f:close()
  end
  return s
end

-- curl through the proxy; returns rc, body, stderr.
local function curl(proxy, userpass, url, extra)
  local cmd = { 'curl', '-sS', '--max-time', '20', '--socks5', (userpass and (userpass .. '@') or '') .. proxy, url }
  for _, a in ipairs(extra or {}) do cmd[#cmd + 1] = a end
  local out, rc, err = H.sh(cmd)
  return rc, out, err
end

local function curl_host(proxy, userpass, url)
  local out, rc, err = H.sh { 'curl', '-sS', '--max-time', '20', '--socks5-hostname', userpass .. '@' .. proxy, url }
  return rc, out, err
end

-- A port nobody listens on.
local function closed_port()
  local s = assert(H.socket.bind('127.0.0.1', 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function start_err(params)
  params.listen = params.listen or '127.0.0.1:0'
  local ok, err = pcall(kp.start_proxy_listener, params)
  assert.is_false(ok, 'expected an error')
  return tostring(err)
end

describe('auth_http', function()
  local origin, svc
  setup(function()
    origin = H.start_origin()
    svc = start_auth_service(origin.http)
  end)
  teardown(function()
    svc.stop()
    origin.stop()
  end)

  local function listener(path, extra)
    local p = {
      require_auth = true,
      trusted_hosts = {},
      allow_private_destinations = true,
      auth_http = { url = svc.url(path), timeout = '2 seconds', headers = { ['X-Api-Key'] = 'k-123' } },
      auth_failure_delay = false,
    }
    for k, v in pairs(extra or {}) do p[k] = v end
    return H.listener(p)
  end

  it('checks the URL and other settings at start, naming the key', function()
    assert.matches('auth_http%.url: .*not an absolute http%(s%) URL', start_err { auth_http = { url = '/verify' } })
    assert.matches('auth_http%.url:', start_err { auth_http = { url = 'auth.internal/verify' } })
    assert.matches("auth_http%.url: .*scheme 'ftp'", start_err { auth_http = { url = 'ftp://auth.internal/' } })
    assert.matches('auth_http%.url: .*credentials in the URL', start_err { auth_http = { url = 'https://u:p@auth.internal/' } })
    assert.matches('auth_http%.url: is required', start_err { auth_http = {} })
    assert.matches('auth_http%.timeout:', start_err { auth_http = { url = 'https://a.example/', timeout = 'soon' } })
    assert.matches("auth_http%.headers%['bad header'%]", start_err { auth_http = { url = 'https://a.example/', headers = { ['bad header'] = 'x' } } })
    assert.matches('auth_http%.tls_ca: .*cannot read', start_err { auth_http = { url = 'https://a.example/', tls_ca = '/nonexistent/ca.pem' } })
    assert.matches('auth_http: unknown parameter urll', start_err { auth_http = { url = 'https://a.example/', urll = 1 } })
  end)

  it('accepts on 2xx and applies the permissions in the reply; denied gets 0x02', function()
    local l = listener('/check')
    local rc, out, err = curl(l:local_addr(), 'alice:secret', ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\n', out)
    -- What the service was sent: JSON credentials, addresses, our static header.
    local last = svc.get('/last')
    assert.matches('"username":"alice"', (last:gsub('\\"', '"')))
    assert.matches('peer_address', last)
    assert.matches('local_address', last)
    assert.matches(l:local_addr(), last, 1, true)
    assert.matches('"x%-api%-key": "k%-123"', last)
    -- alice may reach only 127.0.0.1:<http>: the echo port is refused with 0x02.
    rc, out, err = curl(l:local_addr(), 'alice:secret', ('telnet://127.0.0.1:%d'):format(origin.echo))
    assert.are.equal(97, rc)
    assert.matches('SOCKS5 connection to 127%.0%.0%.1%. %(2%)', err)
    H.quiesce()
    local s = l:stats()
    assert.are.equal(1, s.denied)
    assert.are.equal(1, s.completed)
    assert.are.equal(0, s.auth_failures)
    l:close()
  end)

  it('an empty 2xx body is full access (within the listener defaults)', function()
    local l = listener('/empty')
    local rc, out, err = curl(l:local_addr(), 'bob:anything', ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\n', out)
    l:close()
    -- Without allow_private_destinations the default denial still applies.
    l = listener('/empty', { allow_private_destinations = false })
    rc, out, err = curl(l:local_addr(), 'bob:anything', ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(97, rc, err)
    assert.matches('%(2%)', err)
    l:close()
  end)

  local function refused(path, opts)
    local l = listener(path, opts)
    local rc, _, err = curl(l:local_addr(), 'alice:secret', ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(97, rc, err)
    assert.matches('User was rejected by the SOCKS5 server', err)
    H.quiesce()
    assert.are.equal(1, l:stats().auth_failures)
    l:close()
  end

  it('fails closed on 401', function()
    refused('/deny')
  end)

  it('fails closed on a redirect, which is never followed', function()
    local before = svc.calls('/yes')
    refused('/redirect')
    assert.are.equal(1, svc.calls('/redirect') > 0 and 1 or 0)
    assert.are.equal(before, svc.calls('/yes'))
  end)

  it('fails closed when the service does not answer in time', function()
    local l2 = H.listener {
      require_auth = true, trusted_hosts = {}, allow_private_destinations = true, auth_failure_delay = false,
      auth_http = { url = svc.url('/slow'), timeout = 0.5 },
    }
    local rc, _, err = curl(l2:local_addr(), 'alice:secret', ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(97, rc, err)
    assert.matches('User was rejected', err)
    l2:close()
  end)

  it('fails closed when the service is down', function()
    local l = H.listener {
      require_auth = true, trusted_hosts = {}, allow_private_destinations = true, auth_failure_delay = false,
      auth_http = { url = ('http://127.0.0.1:%d/check'):format(closed_port()) },
    }
    local rc, _, err = curl(l:local_addr(), 'alice:secret', ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(97, rc, err)
    assert.matches('User was rejected', err)
    l:close()
  end)

  it('fails closed on a malformed JSON body and on 5xx', function()
    refused('/malformed')
    refused('/error')
  end)

  it('does not consult the Lua proxy_server_auth_rfc1929 handler', function()
    local calls = 0
    kp.on(AUTH, function() calls = calls + 1; return true end)
    refused('/deny')
    local l = listener('/check')
    local rc, _, err = curl(l:local_addr(), 'bob:hunter2', ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc, err)
    l:close()
    kp.on(AUTH, nil)
    assert.are.equal(0, calls)
  end)

  it('logs each failure once with its reason, and never the password', function()
    local dead = closed_port()
    local script = ([[
      local kp = require 'kumoproxy'
      local function try(url, timeout)
        local l = kp.start_proxy_listener { listen = '127.0.0.1:0', require_auth = true, trusted_hosts = {},
          allow_private_destinations = true, auth_failure_delay = false,
          auth_http = { url = url, timeout = timeout or 2 } }
        kp.run_command({ 'curl', '-sS', '--max-time', '10', '--socks5', 'alice:pw-S3cr3t-77@' .. l:local_addr(),
          'http://127.0.0.1:%d/' }, { timeout = 20 })
        l:close()
      end
      for _, p in ipairs { '/deny', '/redirect', '/malformed', '/error' } do try('%s' .. p) end
      try('%s/slow', 0.3)
      try('http://127.0.0.1:%d/check')
    ]]):format(origin.http, svc.url(''), svc.url(''), dead)
    local _, rc, err = H.sh({ 'env', 'KUMOPROXY_LOG=trace', H.lua, '-e', script }, { timeout = 60 })
    assert.are.equal(0, rc, err)
    assert.is_nil(err:find('pw%-S3cr3t'), 'password in the log')
    _, rc, err = H.sh({ 'env', 'KUMOPROXY_LOG=warn', H.lua, '-e', script }, { timeout = 60 })
    assert.are.equal(0, rc, err)
    local function once(pat)
      local n = select(2, err:gsub(pat, ''))
      assert.are.equal(1, n, pat .. ' logged ' .. n .. ' times in:\n' .. err)
    end
    once('status 401')
    once('status 302 [^\n]*redirects are not followed')
    once('unparsable reply')
    once('status 500')
    once('no reply within')
    once('cannot connect')
    assert.is_nil(err:find('pw%-S3cr3t'), 'password in the log')
  end)
end)

describe('permissions', function()
  local origin
  setup(function() origin = H.start_origin() end)
  after_each(function() kp.on(AUTH, nil) end)
  teardown(function() origin.stop() end)

  local function connect(l, host, port, user, pass)
    local args = ('connect --proxy %s --target %s:%d'):format(l:local_addr(), host, port)
    if user then args = args .. (' --user %s --password %s'):format(user, pass) end
    if not host:match('^[%d%.]+$') then args = args .. ' --domain' end
    local out = H.socks_py(args)
    return out:match('reply=0x(%x%x)'), out
  end

  it('from a Lua AuthInfo: allowed passes, others get 0x02', function()
    kp.on(AUTH, function(user)
      return { identities = { user }, permissions = { allow = { '127.0.0.1:' .. origin.echo } } }
    end)
    local l = H.listener { require_auth = true, allow_private_destinations = true }
    assert.are.equal('00', (connect(l, '127.0.0.1', origin.echo, 'u', 'p')))
    assert.are.equal('02', (connect(l, '127.0.0.1', origin.peer, 'u', 'p')))
    H.quiesce()
    assert.are.equal(1, l:stats().denied)
    kp.on(AUTH, nil)
    l:close()
  end)

  it('rejects a bad pattern in an AuthInfo (fails closed)', function()
    kp.on(AUTH, function(user)
      return { identities = { user }, permissions = { allow = { 'bad:port' } } }
    end)
    local l = H.listener { require_auth = true, allow_private_destinations = true }
    local _, out = connect(l, '127.0.0.1', origin.echo, 'u', 'p')
    assert.matches('auth', out)
    H.quiesce()
    assert.are.equal(1, l:stats().auth_failures)
    kp.on(AUTH, nil)
    l:close()
  end)

  it('denies loopback, link-local and the metadata address by default, without Lua', function()
    local l = H.listener {}   -- trusted loopback client, NOAUTH: no Lua involved
    for _, t in ipairs { { '127.0.0.1', origin.echo }, { '169.254.169.254', 80 }, { '169.254.1.1', 80 }, { '0.0.0.0', origin.echo } } do
      local c, code = H.socks_connect(l:local_addr(), t[1], t[2])
      assert.is_nil(c, t[1])
      assert.are.equal(2, code, t[1])
    end
    H.quiesce()
    assert.are.equal(4, l:stats().denied)
    l:close()
  end)

  it('denies a name that resolves to loopback (no DNS-rebinding bypass)', function()
    local l = H.listener {}
    local c, code = H.socks_connect(l:local_addr(), 'localhost', origin.echo)
    assert.is_nil(c)
    assert.are.equal(2, code)
    local rc, _, err = curl_host(l:local_addr(), 'x:y', ('http://localhost:%d/'):format(origin.http))
    assert.are.equal(97, rc)
    assert.matches('%(2%)', err)
    l:close()
  end)

  it('listener permissions apply to everyone; deny wins; names are denied before DNS', function()
    local l = H.listener {
      allow_private_destinations = true,
      permissions = {
        allow = { '127.0.0.0/8', '*.blocked.test:*' },
        deny = { '127.0.0.1:' .. origin.peer, '*.blocked.test' },
      },
    }
    assert.truthy((H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo)))
    local c, code = H.socks_connect(l:local_addr(), '127.0.0.1', origin.peer)
    assert.is_nil(c)
    assert.are.equal(2, code)
    -- A denied name is refused as such (the name does not even exist).
    c, code = H.socks_connect(l:local_addr(), 'db.blocked.test', 80)
    assert.are.equal(2, code)
    l:close()
  end)

  it('names bad listener permissions', function()
    assert.matches("permissions: allow%[2%]: 'x:y'", start_err { permissions = { allow = { 'ok.example', 'x:y' } } })
    assert.matches('permissions: unknown key', start_err { permissions = { alow = {} } })
    assert.matches('permissions: expected a table', start_err { permissions = 'all' })
    assert.matches('allow_private_destinations: expected a boolean', start_err { allow_private_destinations = 1 })
    assert.matches('allowed_source_addresses%[1%]', start_err { allowed_source_addresses = { 'nope' } })
  end)

  it('checks BIND source addresses against allowed_source_addresses', function()
    local l = H.listener { allow_private_destinations = true, allowed_source_addresses = { '127.0.0.2' } }
    local out = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --bind-source 127.0.0.3'):format(l:local_addr(), origin.peer))
    assert.matches('^reply=0x02', out)
    out = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --bind-source 127.0.0.2'):format(l:local_addr(), origin.peer))
    assert.matches('reply=0x00 bound=127%.0%.0%.2:%d+\nreply=0x00', out)
    assert.matches('data=127%.0%.0%.2:', out)
    H.quiesce()
    assert.are.equal(1, l:stats().denied)
    l:close()
  end)
end)

describe('proxy_server_request', function()
  local origin
  setup(function() origin = H.start_origin() end)
  after_each(function()
    kp.on(REQUEST, nil)
    kp.on(AUTH, nil)
  end)
  teardown(function()
    kp.on(REQUEST, nil)
    kp.on(AUTH, nil)
    origin.stop()
  end)

  it('sees the request, auth_info and conn_meta; rewrites the destination and picks the source', function()
    local seen
    kp.on(AUTH, function(user) return { identities = { user }, groups = { 'g1' } } end)
    kp.on(REQUEST, function(request, auth_info, conn_meta)
      seen = { request.command, request.host, request.port, auth_info.identities[1].identity,
        auth_info.identities[1].context, auth_info.groups[1], conn_meta.peer_address }
      return { destination = '127.0.0.1:' .. origin.peer, source_address = '127.0.0.2' }
    end)
    local l = H.listener { require_auth = true, allow_private_destinations = true }
    local dead = closed_port()
    local out = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --user alice --password x'):format(l:local_addr(), dead))
    assert.matches('reply=0x00 bound=127%.0%.0%.2:%d+', out)
    assert.matches('data=127%.0%.0%.2:%d+', out)   -- the peer server saw our chosen source
    local unpack = table.unpack or unpack
    assert.same({ 'connect', '127.0.0.1', dead, 'alice', 'ProxyAuthRfc1929', 'g1' }, { unpack(seen, 1, 6) })
    assert.matches('^127%.0%.0%.1:%d+$', seen[7])
    l:close()
  end)

  it('false, an error, or a bad table deny with 0x02', function()
    local l = H.listener { allow_private_destinations = true }
    for _, h in ipairs {
      function() return false end,
      function() error('policy store down') end,
      function() return { destinaton = 'x:1' } end,
      function() return { destination = 'no-port' } end,
      function() return 'yes' end,
      function() return { egress_source = 'no-such-source' } end,
    } do
      kp.on(REQUEST, h)
      local out = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d'):format(l:local_addr(), origin.echo))
      assert.matches('^reply=0x02', out)
    end
    H.quiesce()
    assert.are.equal(6, l:stats().denied)
    kp.on(REQUEST, nil)
    l:close()
  end)

  it('a rewrite is held to the permissions', function()
    kp.on(REQUEST, function() return { destination = '169.254.169.254:80' } end)
    local l = H.listener { allow_private_destinations = true, permissions = { deny = { '169.254.0.0/16' } } }
    local out = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d'):format(l:local_addr(), origin.echo))
    assert.matches('^reply=0x02', out)
    kp.on(REQUEST, nil)
    l:close()
  end)

  it('is asked for BIND too, and may change the source address', function()
    local cmds = {}
    kp.on(REQUEST, function(request)
      cmds[#cmds + 1] = request.command .. ' ' .. request.host .. ':' .. request.port
      if request.command == 'bind' then return { source_address = '127.0.0.2' } end
      return true
    end)
    local l = H.listener { allow_private_destinations = true }
    local out = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --bind-source 127.0.0.1'):format(l:local_addr(), origin.peer))
    assert.matches('reply=0x00 bound=127%.0%.0%.2:', out)
    assert.matches('data=127%.0%.0%.2:', out)
    assert.same({ 'bind 127.0.0.1:0', 'connect 127.0.0.1:' .. origin.peer }, cmds)
    kp.on(REQUEST, nil)
    l:close()
  end)

  it('picks an egress source by name', function()
    local back = H.listener { allow_private_destinations = true }
    local src = kp.make_egress_source { name = 'spec-via-back', socks5_proxy_server = back:local_addr() }
    local front = H.listener { allow_private_destinations = true }
    -- The handler serves every listener: route only the front one's requests.
    kp.on(REQUEST, function(_, _, meta)
      if meta.local_address == front:local_addr() then return { egress_source = 'spec-via-back' } end
      return true
    end)
    local rc, out, err = curl(front:local_addr(), nil, ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\n', out)
    H.quiesce()
    assert.are.equal(1, back:stats().completed)
    kp.on(REQUEST, nil)
    assert.truthy(src)
    front:close()
    back:close()
  end)

  it('is only asked when registered: other sessions never wait on Lua', function()
    local l = H.listener { allow_private_destinations = true, timeout = 0.5 }
    -- LuaSocket blocks this thread without dispatching events: it can only
    -- succeed if the session needs no Lua decision.
    local c = H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo)
    assert.truthy(c)
    c:close()
    kp.on(REQUEST, function() return true end)
    local c2, code = H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo)
    assert.is_nil(c2)
    assert.are.equal(2, code)   -- no answer within the timeout: fail closed
    kp.on(REQUEST, nil)
    l:close()
  end)
end)

describe('auth_cache', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function()
    kp.on(AUTH, nil)
    origin.stop()
  end)

  local function try(l, user, pass)
    local out = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --user %s --password %s'):format(l:local_addr(), origin.echo, user, pass))
    return out:match('^reply=0x00') ~= nil
  end

  it('remembers Lua decisions by username and password; a changed password misses', function()
    local calls = 0
    kp.on(AUTH, function(_, pass) calls = calls + 1; return pass == 'right' or pass == 'also-right' end)
    local l = H.listener { require_auth = true, allow_private_destinations = true, auth_failure_delay = false,
      auth_cache = { ttl = '60 seconds', negative_ttl = '60 seconds', max_entries = 100 } }
    assert.is_true(try(l, 'alice', 'right'))
    assert.is_true(try(l, 'alice', 'right'))
    assert.are.equal(1, calls)
    assert.is_true(try(l, 'alice', 'also-right'))
    assert.are.equal(2, calls)
    assert.is_false(try(l, 'alice', 'wrong'))
    assert.is_false(try(l, 'alice', 'wrong'))
    assert.are.equal(3, calls)   -- negative_ttl: the refusal was remembered too
    assert.are.equal(3, l:flush_auth_cache())
    assert.is_true(try(l, 'alice', 'right'))
    assert.are.equal(4, calls)
    l:close()
  end)

  it('expires entries after ttl', function()
    local calls = 0
    kp.on(AUTH, function() calls = calls + 1; return true end)
    local l = H.listener { require_auth = true, allow_private_destinations = true, auth_cache = { ttl = 0.2 } }
    assert.is_true(try(l, 'bob', 'pw'))
    assert.are.equal(1, calls)
    -- Keep connecting: the handler is asked again once the entry has expired.
    H.eventually(function()
      assert.is_true(try(l, 'bob', 'pw'))
      return calls == 2
    end, 10, 'cache entry expired')
    l:close()
  end)

  it('caches auth_http decisions (counted at the service)', function()
    local svc = start_auth_service(origin.http)
    finally(svc.stop)
    local l = H.listener { require_auth = true, allow_private_destinations = true,
      auth_http = { url = svc.url('/check') }, auth_cache = {} }
    assert.is_true(try(l, 'bob', 'hunter2'))
    assert.is_true(try(l, 'bob', 'hunter2'))
    assert.are.equal(1, svc.calls('/check'))
    assert.is_false(try(l, 'bob', 'hunter3'))
    assert.are.equal(2, svc.calls('/check'))
    l:flush_auth_cache()
    assert.is_true(try(l, 'bob', 'hunter2'))
    assert.are.equal(3, svc.calls('/check'))
    l:close()
  end)

  it('names bad settings', function()
    assert.matches('auth_cache%.ttl:', start_err { auth_cache = { ttl = 'long' } })
    assert.matches('auth_cache%.max_entries:', start_err { auth_cache = { max_entries = 0 } })
    assert.matches('auth_cache: unknown parameter tl', start_err { auth_cache = { tl = 1 } })
    assert.matches('auth_failure_delay%.max: must be at least initial', start_err { auth_failure_delay = { initial = 2, max = 1 } })
    assert.matches('auth_failure_delay: expected', start_err { auth_failure_delay = 5 })
  end)
end)

describe('auth_failure_delay', function()
  it('delays a failing peer progressively without blocking other peers', function()
    local origin = H.start_origin()
    local svc = start_auth_service(origin.http)
    local slow
    -- A helper left running would keep this process from exiting.
    finally(function()
      if slow then slow:close() end
      svc.stop()
      origin.stop()
    end)
    -- auth_http: no Lua on the path, so this thread may block reading a pipe.
    local l = H.listener { require_auth = true, trusted_hosts = {}, allow_private_destinations = true,
      auth_http = { url = svc.url('/check') },
      auth_failure_delay = { initial = '4 seconds', max = '4 seconds' } }
    local url = ('http://127.0.0.1:%d/'):format(origin.http)
    -- First failure from 127.0.0.1: answered at once.
    local rc = curl(l:local_addr(), 'bob:wrong', url)
    assert.are.equal(97, rc)
    -- The next attempt from 127.0.0.1 waits before it is even checked.
    slow = assert(io.popen(('curl -sS --max-time 30 --socks5 bob:hunter2@%s %s 2>&1; echo "rc=$?"'):format(l:local_addr(), url)))
    H.eventually(function() return l:stats().active == 1 end, 10, 'delayed session accepted')
    -- Another peer (127.0.0.2) is served meanwhile.
    local rc2, out2, err2 = curl(l:local_addr(), 'bob:hunter2', url, { '--interface', '127.0.0.2' })
    assert.are.equal(0, rc2, err2)
    assert.are.equal('hello from origin\n', out2)
    H.eventually(function() return l:stats().completed == 1 end, 10, 'the other peer done')
    assert.are.equal(1, l:stats().active, 'the delayed attempt is still waiting')
    -- The delayed one goes through in the end (right password).
    local res = slow:read('*a')
    slow:close()
    slow = nil
    assert.matches('hello from origin\nrc=0', res)
    l:close()
  end)
end)

describe('examples/auth_http.lua', function()
  it('serves curl with a login checked by the HTTP service, then stops on SIGTERM', function()
    local origin = H.start_origin()
    local svc = start_auth_service(origin.http)
    finally(function()
      svc.stop()
      origin.stop()
    end)
    local script = [[
      coproc P { KUMOPROXY_LOG=warn KUMOPROXY_LISTEN=127.0.0.1:0 AUTH_URL="$1" exec "$0" examples/auth_http.lua 2>&1; }
      pid=$P_PID
      # Our own copy of the pipe: bash drops P once the example has exited.
      exec 3<&"${P[0]}"
      while read -r line <&3; do
        echo "$line"
        case $line in "proxy listener on "*) addr=${line#proxy listener on }; break ;; esac
      done
      curl -sS --max-time 10 --socks5 "alice:secret@$addr" "http://127.0.0.1:$2/"; echo "ok=$?"
      curl -sS --max-time 10 --socks5 "alice:wrong@$addr" "http://127.0.0.1:$2/" 2>/dev/null; echo "wrong=$?"
      curl -sS --max-time 10 --socks5 "alice:secret@$addr" "http://127.0.0.1:$3/" 2>/dev/null; echo "other=$?"
      kill -TERM "$pid"
      cat <&3
      wait "$pid"
    ]]
    local out, rc, err = H.sh({ 'bash', '-c', script, H.lua, svc.url('/check'), tostring(origin.http), tostring(origin.echo) }, { timeout = 60 })
    assert.are.equal(0, rc, out .. err)
    assert.matches('hello from origin\nok=0', out)
    assert.matches('wrong=97', out)
    assert.matches('other=97', out)   -- alice's permissions from the service: http port only
    assert.matches('alice@corp connect 127%.0%.0%.1:' .. origin.http .. ' from 127%.0%.0%.1:%d+', out)
    assert.matches('stopped: 1 completed, 1 auth failures, 1 denied', out)
    assert.matches('"x%-api%-key": "demo%-key"', svc.get('/last'))
  end)
end)
