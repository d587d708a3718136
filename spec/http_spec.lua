-- HTTP CONNECT on the proxy listener (protocols = {'socks5', 'http'}) and the
-- status/metrics listener (start_http_listener). Real clients: curl for HTTP and
-- HTTPS proxies and for the status endpoints, LuaSocket for raw heads and for
-- tunnels held open while another protocol runs on the same port.
local H = require 'spec.support.helpers'
local kp = H.kp
local json = require 'dkjson'

local AUTH = 'http_server_validate_auth_basic'

-- Status code of the proxy's CONNECT response, curl's exit code, body.
local function curl_connect(proxy_url, target_url, extra)
  local out, rc, err = H.sh(('curl -sS --max-time 20 -w "\\n%%{http_connect}" -x %s --proxytunnel %s %s')
    :format(proxy_url, extra or '', target_url))
  local body, code = out:match('^(.*)\n(%d+)$')
  return tonumber(code), rc, body, err
end

-- A raw client: sends `req`, returns everything the proxy sends until it closes.
local function raw(addr, req)
  local host, port = addr:match('^(.*):(%d+)$')
  local c = assert(H.socket.tcp())
  c:settimeout(5)
  assert(c:connect(host, tonumber(port)))
  assert(c:send(req))
  local data, err, partial = c:receive('*a')
  c:close()
  return data or partial, err
end

local function status_of(resp)
  return tonumber(resp:match('^HTTP/1%.1 (%d%d%d) '))
end

-- Opens an HTTP CONNECT tunnel with LuaSocket (trusted host, no handler needed).
local function http_tunnel(addr, target)
  local host, port = addr:match('^(.*):(%d+)$')
  local c = assert(H.socket.tcp())
  c:settimeout(5)
  assert(c:connect(host, tonumber(port)))
  assert(c:send(('CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n'):format(target, target)))
  local line = assert(c:receive('*l'))
  -- LuaSocket's '*l' drops the CR.
  assert.are.equal('HTTP/1.1 200 Connection established', line)
  assert.are.equal('', c:receive('*l'))
  return c
end

describe('HTTP CONNECT on the proxy listener', function()
  local origin, pki

  setup(function()
    origin = H.start_origin()
    pki = H.make_pki()
  end)
  teardown(function()
    origin.stop()
    H.remove_pki(pki)
  end)
  after_each(function()
    kp.on(AUTH, nil)
  end)

  local function url() return ('http://127.0.0.1:%d/'):format(origin.http) end

  it('validates protocols, naming the key', function()
    local function e(p)
      local ok, err = pcall(kp.start_proxy_listener, { listen = '127.0.0.1:0', protocols = p })
      assert.is_false(ok)
      return tostring(err)
    end
    assert.matches("start_proxy_listener: protocols: expected a list such as {'socks5', 'http'}, got string", e('http'), 1, true)
    assert.matches("start_proxy_listener: protocols[2]: 'ftp' is not one of 'socks5', 'http'", e { 'http', 'ftp' }, 1, true)
    assert.matches('start_proxy_listener: protocols[1]: expected a string, got boolean', e { true }, 1, true)
    assert.matches('start_proxy_listener: protocols: must be a non-empty list', e {}, 1, true)
    assert.matches('start_proxy_listener: protocols: must be a non-empty list', e { http = true }, 1, true)
    -- The default stays SOCKS5 only: an HTTP client gets nothing it can parse.
    local l = H.listener { allow_private_destinations = true }
    local resp = raw(l:local_addr(), 'CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n')
    assert.is_nil(resp:match('^HTTP/'))
    l:close()
  end)

  it('tunnels curl with Basic credentials through http_server_validate_auth_basic', function()
    local l = H.listener { allow_private_destinations = true, protocols = { 'socks5', 'http' }, trusted_hosts = {} }
    local seen = {}
    kp.on(AUTH, function(user, password, meta)
      seen[#seen + 1] = { user = user, password = password, peer = meta.peer_address, loc = meta.local_address }
      return user == 'user' and password == 'pass'
    end)
    local code, rc, body, err = curl_connect('http://user:pass@' .. l:local_addr(), url())
    assert.are.equal(0, rc, err)
    assert.are.equal(200, code)
    assert.are.equal('hello from origin\n', body)
    assert.are.equal(1, #seen)
    assert.are.equal('user', seen[1].user)
    assert.are.equal('pass', seen[1].password)
    assert.matches('^127%.0%.0%.1:%d+$', seen[1].peer)
    assert.are.equal(l:local_addr(), seen[1].loc)

    -- Wrong password: 407 with the challenge; the tunnel never opens.
    local out, rc2 = H.sh(('curl -sS -i --max-time 20 -x http://user:nope@%s --proxytunnel %s'):format(l:local_addr(), url()))
    assert.are_not.equal(0, rc2)
    assert.matches('HTTP/1.1 407 Proxy Authentication Required\r\n', out, 1, true)
    assert.matches('Proxy-Authenticate: Basic realm="kumoproxy"\r\n', out, 1, true)
    assert.is_nil(out:find('hello from origin', 1, true))

    -- No credentials from a host that is not trusted: 407 without asking Lua.
    code = curl_connect('http://' .. l:local_addr(), url())
    assert.are.equal(407, code)
    assert.are.equal(2, #seen)

    H.eventually(function()
      local s = l:stats()
      return s.completed == 1 and s.failed == 2 and s.auth_failures == 2 and s.active == 0
    end)
    l:close()
  end)

  it('passes an empty or missing password as "" or nil', function()
    local l = H.listener { allow_private_destinations = true, protocols = { 'http' }, trusted_hosts = {} }
    local got
    kp.on(AUTH, function(user, password)
      got = { user = user, password = password }
      return user == 'solo'
    end)
    -- base64('solo') has no colon: password nil.
    local code = curl_connect('http://' .. l:local_addr(), url(), "--proxy-header 'Proxy-Authorization: Basic c29sbw=='")
    assert.are.equal(200, code)
    assert.are.same({ user = 'solo' }, got)
    -- base64('solo:'): empty password.
    code = curl_connect('http://' .. l:local_addr(), url(), "--proxy-header 'Proxy-Authorization: Basic c29sbzo='")
    assert.are.equal(200, code)
    assert.are.same({ user = 'solo', password = '' }, got)
    -- Not base64 at all: 400, and Lua is not asked.
    got = nil
    code = curl_connect('http://' .. l:local_addr(), url(), "--proxy-header 'Proxy-Authorization: Basic !!!'")
    assert.are.equal(400, code)
    assert.is_nil(got)
    -- Another scheme from an untrusted host: a challenge.
    code = curl_connect('http://' .. l:local_addr(), url(), "--proxy-header 'Proxy-Authorization: Bearer abc'")
    assert.are.equal(407, code)
    l:close()
  end)

  it('answers 500 when the handler errors or returns a non-boolean', function()
    local l = H.listener { allow_private_destinations = true, protocols = { 'socks5', 'http' }, trusted_hosts = {} }
    kp.on(AUTH, function(user)
      if user == 'boom' then error('handler exploded') end
      return 'yes'
    end)
    assert.are.equal(500, (curl_connect('http://boom:x@' .. l:local_addr(), url())))
    assert.are.equal(500, (curl_connect('http://str:x@' .. l:local_addr(), url())))
    H.eventually(function()
      local s = l:stats()
      return s.failed == 2 and s.auth_failures == 0
    end)
    l:close()
  end)

  it('logs a failing handler once, never the password', function()
    local script = os.tmpname()
    local f = assert(io.open(script, 'w'))
    f:write(([[
      local kp = require 'kumoproxy'
      kp.on('http_server_validate_auth_basic', function(user, password)
        if user == 'boom' then error('handler exploded') end
        return false
      end)
      local l = kp.start_proxy_listener { listen = '127.0.0.1:0', protocols = { 'http' }, trusted_hosts = {}, allow_private_destinations = true }
      for _, creds in ipairs { 'boom:pw-secret-1', 'bob:pw-secret-2' } do
        local out = kp.run_command(('curl -sS -o /dev/null -w "%%%%{http_connect}" -x http://%%s@%%s --proxytunnel http://127.0.0.1:%d/')
          :format(creds, l:local_addr()))
        print(out)
      end
    ]]):format(origin.http))
    f:close()
    local out, rc, err = H.sh(('KUMOPROXY_LOG=trace %s %s'):format(H.lua, script))
    os.remove(script)
    assert.are.equal(0, rc, err)
    assert.are.equal('500\n407\n', out)
    local _, n = err:gsub("http_server_validate_auth_basic handler failed %(user 'boom'%): [^\n]*handler exploded", '')
    assert.are.equal(1, n, err)
    assert.matches("user 'bob': rejected by handler", err, 1, true)
    assert.is_nil(err:find('pw%-secret'))
  end)

  it('lets trusted hosts in without credentials, unless require_auth', function()
    local l = H.listener { allow_private_destinations = true, protocols = { 'socks5', 'http' } }   -- default: loopback trusted
    local code, rc, body = curl_connect('http://' .. l:local_addr(), url())
    assert.are.equal(0, rc)
    assert.are.equal(200, code)
    assert.are.equal('hello from origin\n', body)
    l:close()
    l = H.listener { allow_private_destinations = true, protocols = { 'socks5', 'http' }, require_auth = true }
    assert.are.equal(407, (curl_connect('http://' .. l:local_addr(), url())))
    l:close()
  end)

  it('answers 405, 400 and 431 and keeps serving', function()
    local l = H.listener { allow_private_destinations = true, protocols = { 'socks5', 'http' } }
    local a = l:local_addr()
    local resp = raw(a, ('GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n'):format(origin.http))
    assert.are.equal(405, status_of(resp))
    assert.matches('\r\nAllow: CONNECT\r\n', resp, 1, true)
    assert.matches('this proxy serves CONNECT only\n$', resp)
    assert.are.equal(400, status_of(raw(a, 'CONNECT 127.0.0.1:80 HTTP/2.0\r\n\r\n')))
    assert.are.equal(400, status_of(raw(a, 'HELLO\r\n\r\n')))
    assert.are.equal(400, status_of(raw(a, 'CONNECT no-port HTTP/1.1\r\n\r\n')))
    assert.are.equal(400, status_of(raw(a, 'CONNECT 127.0.0.1:0 HTTP/1.1\r\n\r\n')))
    assert.are.equal(431, status_of(raw(a, 'CONNECT 127.0.0.1:80 HTTP/1.1\r\nX: ' .. ('a'):rep(20000) .. '\r\n\r\n')))
    -- A closed port: 502, a clean response rather than a dropped connection.
    local s = assert(H.socket.bind('127.0.0.1', 0))
    local _, closed_port = s:getsockname()
    s:close()
    assert.are.equal(502, (curl_connect('http://' .. a, ('http://127.0.0.1:%d/'):format(closed_port))))
    -- Still serving.
    assert.are.equal(200, (curl_connect('http://' .. a, url())))
    H.eventually(function()
      local st = l:stats()
      return st.completed == 1 and st.failed == 7 and st.active == 0
    end)
    l:close()
  end)

  it('serves SOCKS5 and HTTP clients on the same port at once', function()
    local l = H.listener { allow_private_destinations = true, protocols = { 'socks5', 'http' } }
    local a = l:local_addr()
    -- Two tunnels held open together, one of each protocol.
    local s5 = assert(H.socks_connect(a, '127.0.0.1', origin.echo))
    local ht = http_tunnel(a, '127.0.0.1:' .. origin.echo)
    H.eventually(function() return l:stats().active == 2 end)
    assert(s5:send('via socks5\n'))
    assert(ht:send('via http\n'))
    assert.are.equal('via http', ht:receive('*l'))
    assert.are.equal('via socks5', s5:receive('*l'))
    s5:close()
    ht:close()
    -- And two curl processes started together.
    local out, rc, err = H.sh(([[
      curl -sS --max-time 20 -x socks5h://%s %s > "$T.s" & p1=$!
      curl -sS --max-time 20 -x http://%s --proxytunnel %s > "$T.h" & p2=$!
      wait $p1 && wait $p2 && cat "$T.s" "$T.h"; rm -f "$T.s" "$T.h"
    ]]):gsub('%$T', os.tmpname()):format(a, url(), a, url()))
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\nhello from origin\n', out)
    H.eventually(function()
      local st = l:stats()
      return st.completed == 4 and st.active == 0
    end)
    l:close()
  end)

  it('an HTTP-only port answers a SOCKS5 greeting with 400', function()
    local l = H.listener { allow_private_destinations = true, protocols = { 'http' } }
    local resp = raw(l:local_addr(), '\5\1\0')
    assert.are.equal(400, status_of(resp))
    l:close()
  end)

  it('serves curl --proxy https:// inside TLS, and SOCKS5 on the same TLS port', function()
    local l = H.listener {
      allow_private_destinations = true,
      protocols = { 'socks5', 'http' },
      use_tls = true, tls_certificate = pki .. '/server.pem', tls_private_key = pki .. '/server.key',
    }
    kp.on(AUTH, function(user, password) return user == 'tls' and password == 'secret' end)
    local port = l:local_addr():match(':(%d+)$')
    local cacert = '--proxy-cacert ' .. pki .. '/ca1.pem'
    local code, rc, body, err = curl_connect('https://tls:secret@localhost:' .. port, url(), cacert)
    assert.are.equal(0, rc, err)
    assert.are.equal(200, code)
    assert.are.equal('hello from origin\n', body)
    -- Credentials, when given, are checked even from a trusted host.
    assert.are.equal(407, (curl_connect('https://tls:wrong@localhost:' .. port, url(), cacert)))
    -- Without the CA, curl refuses the proxy's certificate: TLS really is on.
    local _, rc3 = curl_connect('https://tls:secret@localhost:' .. port, url())
    assert.are_not.equal(0, rc3)
    -- SOCKS5 inside TLS on the same port (trusted host, NOAUTH).
    local out, rc4, err4 = H.sh(('python3 spec/support/tls_socks.py --proxy %s --target 127.0.0.1:%d --cafile %s --server-name localhost')
      :format(l:local_addr(), origin.echo, pki .. '/ca1.pem'))
    assert.are.equal(0, rc4, out .. err4)
    assert.matches('data=ping', out, 1, true)
    H.eventually(function()
      local s = l:stats()
      return s.completed == 2 and s.failed == 2 and s.tls_handshake_failures == 1 and s.active == 0
    end)
    l:close()
  end)
end)

describe('start_http_listener', function()
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

  local function get(l, path, extra)
    local out, rc, err = H.sh(('curl -sS --max-time 20 -w "\\n%%{http_code}" %s http://%s%s')
      :format(extra or '', l:local_addr(), path))
    assert.are.equal(0, rc, err)
    local body, code = out:match('^(.*)\n(%d+)$')
    return tonumber(code), body
  end

  -- Prometheus text -> { ['name{labels}'] = number }
  local function parse_metrics(text)
    local m = {}
    for line in text:gmatch('[^\n]+') do
      if not line:match('^#') then
        local k, v = line:match('^(%S+) (%S+)$')
        assert(k, 'unparsable metrics line: ' .. line)
        m[k] = tonumber(v)
      end
    end
    return m
  end

  it('validates its parameters, naming the key', function()
    local function e(p)
      local ok, err = pcall(kp.start_http_listener, p)
      assert.is_false(ok)
      return tostring(err)
    end
    assert.matches('start_http_listener: listen: is required', e {}, 1, true)
    assert.matches('start_http_listener: unknown parameter lisen', e { lisen = '127.0.0.1:0' }, 1, true)
    assert.matches("start_http_listener: listen: 'nope' is not an address", e { listen = 'nope' }, 1, true)
    assert.matches("start_http_listener: trusted_hosts[1]: 'x' is neither", e { listen = '127.0.0.1:0', trusted_hosts = { 'x' } }, 1, true)
    assert.matches('start_http_listener: tls_certificate: requires use_tls = true',
      e { listen = '127.0.0.1:0', tls_certificate = '/x.pem', tls_private_key = '/x.key' }, 1, true)
    assert.matches('start_http_listener: tls_certificate: cannot read /nonexistent.pem',
      e { listen = '127.0.0.1:0', use_tls = true, tls_certificate = '/nonexistent.pem', tls_private_key = '/x.key' }, 1, true)
    assert.matches('start_http_listener: timeout: must be greater than zero', e { listen = '127.0.0.1:0', timeout = 0 }, 1, true)
  end)

  it('exports metrics whose counters follow the sessions', function()
    local p = H.listener { allow_private_destinations = true, protocols = { 'socks5', 'http' }, trusted_hosts = {} }
    local s = kp.start_http_listener { listen = '127.0.0.1:0' }
    local lbl = ('{listener="%s"}'):format(p:local_addr())
    local om = "-H 'Accept: application/openmetrics-text'"
    local code, text = get(s, '/metrics', om)
    assert.are.equal(200, code)
    assert.matches('# TYPE kumoproxy_listener_accepted counter', text, 1, true)
    assert.matches('# EOF\n$', text)
    local before = parse_metrics(text)
    assert.are.equal(0, before['kumoproxy_listener_accepted_total' .. lbl])
    assert.are.equal(1, before['kumoproxy_listener_accepting' .. lbl])
    assert.are.equal(0, before['kumoproxy_pending_events'])

    local calls = 0
    kp.on(AUTH, function(user, password)
      calls = calls + 1
      return password == 'ok'
    end)
    local N = 3
    for _ = 1, N do
      assert.are.equal(200, (curl_connect('http://u:ok@' .. p:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))))
    end
    assert.are.equal(407, (curl_connect('http://u:bad@' .. p:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))))
    H.quiesce()
    local after = parse_metrics(select(2, get(s, '/metrics', om)))
    local function d(name) return after[name .. lbl] - before[name .. lbl] end
    assert.are.equal(N + 1, d('kumoproxy_listener_accepted_total'))
    assert.are.equal(N, d('kumoproxy_listener_completed_total'))
    assert.are.equal(1, d('kumoproxy_listener_failed_total'))
    assert.are.equal(1, d('kumoproxy_listener_auth_failures_total'))
    assert.are.equal(0, after['kumoproxy_listener_active' .. lbl])
    -- Each origin response is 18 body bytes plus headers, each request a GET head.
    assert.is_true(d('kumoproxy_listener_to_client_bytes_total') > N * 18)
    assert.is_true(d('kumoproxy_listener_to_remote_bytes_total') > N * 20)
    local ev = '{event="http_server_validate_auth_basic"}'
    local c0 = before['kumoproxy_lua_event_duration_seconds_count' .. ev] or 0
    assert.are.equal(N + 1, after['kumoproxy_lua_event_duration_seconds_count' .. ev] - c0)
    assert.are.equal(N + 1, calls)
    assert.is_true(after['kumoproxy_lua_event_duration_seconds_sum' .. ev] > 0)
    s:close()
    p:close()
  end)

  it('lists listeners with their protocols and stats', function()
    local p = H.listener { allow_private_destinations = true, protocols = { 'socks5', 'http' }, use_tls = true }
    local s = kp.start_http_listener { listen = '127.0.0.1:0' }
    local code, body = get(s, '/proxy/listeners')
    assert.are.equal(200, code)
    local mine
    for _, l in ipairs(assert(json.decode(body))) do
      if l.address == p:local_addr() then mine = l end
    end
    assert(mine, body)
    assert.are.same({ 'socks5', 'http' }, mine.protocols)
    assert.are.equal('proxy', mine.kind)
    assert.is_true(mine.tls)
    assert.is_true(mine.accepting)
    assert.are.equal(0, mine.stats.accepted)
    assert.are.equal(0, mine.stats.completed)
    p:close()
    s:close()
  end)

  it('reports status false once a listener stops accepting', function()
    -- In a process of its own: /proxy/status covers every listener of the
    -- process, and other specs' closed listeners may not be collected yet.
    local script = os.tmpname()
    local f = assert(io.open(script, 'w'))
    f:write([[
      local kp = require 'kumoproxy'
      local a = kp.start_proxy_listener { listen = '127.0.0.1:0', protocols = { 'socks5', 'http' } }
      local b = kp.start_proxy_listener { listen = '127.0.0.1:0' }
      local s = kp.start_http_listener { listen = '127.0.0.1:0' }
      local function status()
        return (kp.run_command('curl -sS --max-time 10 -w " %{http_code}\n" http://' .. s:local_addr() .. '/proxy/status'))
      end
      io.write(status())
      b:close()
      assert(kp.run_until(function() return not b:stats().accepting end, 10))
      io.write(status())
      print(b:local_addr())
    ]])
    f:close()
    local out, rc, err = H.sh({ H.lua, script })
    os.remove(script)
    assert.are.equal(0, rc, err)
    local up, up_code, down, down_code, closed = out:match('^(%b{})\n (%d+)\n(%b{})\n (%d+)\n(%S+)\n$')
    assert(up, out)
    assert.are.equal('200', up_code)
    local st0 = json.decode(up)
    assert.is_true(st0.ok)
    assert.are.equal(2, st0.listeners)
    assert.are.equal(0, #st0.not_accepting)
    assert.are.equal('503', down_code)
    local st = json.decode(down)
    assert.is_false(st.ok)
    assert.are.same({ closed }, st.not_accepting)
  end)

  it('guards every endpoint with Basic auth or trusted_hosts', function()
    local s = kp.start_http_listener { listen = '127.0.0.1:0', trusted_hosts = {} }
    local seen
    kp.on(AUTH, function(user, password, meta)
      seen = { user = user, password = password, peer = meta.peer_address }
      if user == 'boom' then error('kaboom') end
      return user == 'scraper' and password == 'pw'
    end)
    local code, body = get(s, '/metrics', '-u scraper:pw')
    assert.are.equal(200, code)
    assert.matches('kumoproxy_pending_events', body, 1, true)
    assert.are.equal('scraper', seen.user)
    assert.matches('^127%.0%.0%.1:%d+$', seen.peer)
    assert.are.equal(401, (get(s, '/metrics', '-u scraper:wrong')))
    assert.are.equal(500, (get(s, '/metrics', '-u boom:x')))
    -- No header and not trusted: 401 with a challenge.
    local out = H.sh(('curl -sS -i --max-time 20 http://%s/proxy/status'):format(s:local_addr()))
    assert.matches('^HTTP/1%.1 401', out)
    assert.matches('[Ww][Ww][Ww]%-[Aa]uthenticate: Basic realm="kumoproxy"', out)
    -- Authenticated but unknown path / method.
    assert.are.equal(404, (get(s, '/nope', '-u scraper:pw')))
    assert.are.equal(405, (get(s, '/metrics', '-u scraper:pw -X POST')))
    local st = s:stats()
    assert.are.equal(6, st.requests)
    assert.are.equal(3, st.auth_failures)
    s:close()

    -- Default trusted_hosts: loopback gets in without a header, and Lua is not asked.
    seen = nil
    s = kp.start_http_listener { listen = '127.0.0.1:0' }
    assert.are.equal(200, (get(s, '/proxy/listeners')))
    assert.is_nil(seen)
    s:close()
  end)

  it('caches Basic decisions with auth_cache; a changed password misses', function()
    local s = kp.start_http_listener {
      listen = '127.0.0.1:0', trusted_hosts = {}, auth_cache = { ttl = 60, negative_ttl = 60 },
    }
    local calls = 0
    kp.on(AUTH, function(user, password)
      calls = calls + 1
      return user == 'scraper' and password == 'pw'
    end)
    assert.are.equal(200, (get(s, '/metrics', '-u scraper:pw')))
    assert.are.equal(200, (get(s, '/metrics', '-u scraper:pw')))
    assert.are.equal(1, calls)
    assert.are.equal(401, (get(s, '/metrics', '-u scraper:wrong')))
    assert.are.equal(401, (get(s, '/metrics', '-u scraper:wrong')))
    assert.are.equal(2, calls)
    local ok, err = pcall(kp.start_http_listener, { listen = '127.0.0.1:0', auth_cache = { tll = 1 } })
    assert.is_false(ok)
    assert.matches('auth_cache', err, 1, true)
    s:close()
  end)

  it('serves over TLS', function()
    local pki = H.make_pki()
    local s = kp.start_http_listener {
      listen = '127.0.0.1:0', use_tls = true,
      tls_certificate = pki .. '/server.pem', tls_private_key = pki .. '/server.key',
    }
    local port = s:local_addr():match(':(%d+)$')
    local out, rc2, err2 = H.sh(('curl -sS --max-time 20 --cacert %s/ca1.pem https://localhost:%s/proxy/status'):format(pki, port))
    assert.are.equal(0, rc2, err2)
    assert.is_boolean(json.decode(out).ok)
    local _, rc3 = H.sh(('curl -sS --max-time 20 http://127.0.0.1:%s/proxy/status'):format(port))
    assert.are_not.equal(0, rc3)
    s:close()
    H.remove_pki(pki)
  end)

  it('stops accepting on close', function()
    local s = kp.start_http_listener { listen = '127.0.0.1:0' }
    local addr = s:local_addr()
    s:close()
    H.eventually(function() return not s:stats().accepting end)
    local _, rc = H.sh(('curl -sS --max-time 5 http://%s/metrics'):format(addr))
    assert.are_not.equal(0, rc)
  end)
end)

describe('examples/http_proxy.lua', function()
  it('runs to completion', function()
    local out, rc, err = H.sh({ H.lua, 'examples/http_proxy.lua' })
    assert.are.equal(0, rc, err)
    assert.matches('curl via HTTP CONNECT: 200', out, 1, true)
    assert.matches('wrong password: 407', out, 1, true)
    assert.matches('kumoproxy_listener_completed_total{listener="127.0.0.1:%d+"} 1', out)
    assert.matches('\ndone\n$', out)
  end)
end)
