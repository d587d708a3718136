-- Core: module, event pump, listener, SOCKS5, RFC 1929, relay.
local H = require 'spec.support.helpers'
local kp = H.kp

local AUTH = 'proxy_server_auth_rfc1929'

describe('kumoproxy module', function()
  it('loads without starting a thread', function()
    local code = [[
      local function threads()
        local f = io.open('/proc/self/status'); local s = f:read('*a'); f:close()
        return tonumber(s:match('Threads:%s*(%d+)'))
      end
      local before = threads()
      local kp = require 'kumoproxy'
      kp.on('proxy_server_auth_rfc1929', function() return true end)
      print(before, threads(), type(kp.start_proxy_listener))
    ]]
    local out, rc = H.sh({ H.lua, '-e', code })
    assert.are.equal(0, rc)
    assert.are.equal('1\t1\tfunction', out:match('[^\n]+'))
  end)

  it('rejects unknown events and lists the known ones', function()
    local ok, err = pcall(kp.on, 'proxy_server_auth', function() end)
    assert.is_false(ok)
    assert.matches("unknown event 'proxy_server_auth'", tostring(err))
    assert.matches(AUTH, tostring(err))
  end)

  it('rejects a handler that is not a function', function()
    local ok, err = pcall(kp.on, AUTH, 42)
    assert.is_false(ok)
    assert.matches('must be a function', tostring(err))
  end)

  it('poll(0) returns 0 when nothing is pending, without blocking', function()
    assert.are.equal(0, kp.poll(0))
    assert.are.equal(0, kp.poll())
  end)

  it('event_fd is a file descriptor', function()
    local fd = kp.event_fd()
    assert.is_true(math.type == nil or math.type(fd) == 'integer')
    assert.is_true(fd > 2)
  end)
end)

describe('start_proxy_listener parameters', function()
  local function start_err(params)
    local ok, err = pcall(kp.start_proxy_listener, params)
    assert.is_false(ok, 'expected an error')
    return tostring(err)
  end

  it('names an unknown key', function()
    assert.matches('unknown parameter lisen', start_err { lisen = '127.0.0.1:0' })
    assert.matches('unknown parameter requre_auth',
      start_err { listen = '127.0.0.1:0', requre_auth = true })
  end)

  it('names a bad value', function()
    assert.matches('listen: is required', start_err {})
    assert.matches("listen: 'nowhere' is not an address", start_err { listen = 'nowhere' })
    assert.matches('timeout:', start_err { listen = '127.0.0.1:0', timeout = 'soon' })
    assert.matches('timeout:', start_err { listen = '127.0.0.1:0', timeout = -1 })
    assert.matches('require_auth: expected a boolean', start_err { listen = '127.0.0.1:0', require_auth = 'yes' })
    assert.matches('trusted_hosts%[2%]', start_err { listen = '127.0.0.1:0', trusted_hosts = { '10.0.0.0/8', 'bogus' } })
    assert.matches('tcp_keepalive: time:', start_err { listen = '127.0.0.1:0', tcp_keepalive = { time = 'x' } })
    assert.matches('tcp_keepalive: unknown parameter intervl',
      start_err { listen = '127.0.0.1:0', tcp_keepalive = { intervl = 5 } })
    assert.matches('max_connections:', start_err { listen = '127.0.0.1:0', max_connections = 0 })
    assert.matches('expected a parameter table', start_err(nil))
  end)

  it('accepts durations as seconds or strings', function()
    for _, t in ipairs { 30, 1.5, '30 seconds', '2m', '500ms' } do
      local l = H.listener { allow_private_destinations = true, timeout = t, tcp_keepalive = { enabled = true, time = '1 minute', interval = 5, retries = 3 } }
      l:close()
    end
  end)

  it('reports a port already in use', function()
    local l = H.listener { allow_private_destinations = true }
    local msg = start_err { listen = l:local_addr() }
    assert.matches('cannot listen on ' .. l:local_addr():gsub('%.', '%%.'), msg)
    l:close()
  end)

  it('binds IPv6 and picks a free port with port 0', function()
    local l = kp.start_proxy_listener { listen = '[::1]:0', allow_private_destinations = true }
    assert.matches('^%[::1%]:%d+$', l:local_addr())
    assert.is_not.equal('[::1]:0', l:local_addr())
    l:close()
  end)
end)

describe('SOCKS5 proxy', function()
  local origin
  local users = { alice = 'secret', bob = 'hunter2' }

  setup(function()
    origin = H.start_origin()
  end)
  teardown(function()
    origin.stop()
  end)
  before_each(function()
    kp.on(AUTH, function(user, pass, meta)
      assert(meta.peer_address:match('^127%.0%.0%.1:%d+$'))
      assert(meta.local_address:match('^127%.0%.0%.1:%d+$'))
      return users[user] ~= nil and users[user] == pass
    end)
  end)
  after_each(function()
    kp.on(AUTH, nil)
  end)

  local function curl(proxy_url, url)
    return H.sh(('curl -sS -m 10 --proxy %s %s'):format(proxy_url, url))
  end

  it('serves curl --socks5-hostname with credentials checked by Lua', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local out, rc, err = curl('socks5h://alice:secret@' .. l:local_addr(),
      ('http://localhost:%d/'):format(origin.http))
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\n', out)
    local s = H.eventually(function()
      local s = l:stats()
      return s.completed == 1 and s
    end)
    assert.are.equal(1, s.accepted)
    assert.are.equal(0, s.failed)
    assert.is_true(s.bytes_to_remote > 0)
    assert.is_true(s.bytes_to_client > #'hello from origin\n')
    l:close()
  end)

  it('serves curl --socks5 (IP resolved by the client)', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local out, rc, err = curl('socks5://bob:hunter2@' .. l:local_addr(),
      ('http://127.0.0.1:%d/bytes/100000'):format(origin.http))
    assert.are.equal(0, rc, err)
    assert.are.equal(100000, #out)
    l:close()
  end)

  it('refuses a wrong password, counts it, and keeps serving', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local _, rc = curl('socks5h://alice:wrong@' .. l:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are_not.equal(0, rc)
    local out, rc2 = curl('socks5h://alice:secret@' .. l:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc2)
    assert.are.equal('hello from origin\n', out)
    H.eventually(function()
      local s = l:stats()
      return s.auth_failures == 1 and s.failed == 1 and s.completed == 1
    end)
    l:close()
  end)

  it('denies when the handler raises, and serves the next client', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local calls = 0
    kp.on(AUTH, function(user)
      calls = calls + 1
      if calls == 1 then error('database is down') end
      return user == 'alice'
    end)
    local _, rc = curl('socks5h://alice:x@' .. l:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are_not.equal(0, rc)
    local out, rc2 = curl('socks5h://alice:x@' .. l:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc2)
    assert.are.equal('hello from origin\n', out)
    assert.are.equal(2, calls)
    H.eventually(function() return l:stats().auth_failures == 1 end)
    l:close()
  end)

  it('denies when the handler returns a wrong type or empty AuthInfo', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    for _, ret in ipairs { 'yes', 1, { identities = {} }, { identities = 'x' } } do
      kp.on(AUTH, function() return ret end)
      local _, rc = curl('socks5h://alice:secret@' .. l:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
      assert.are_not.equal(0, rc)
    end
    H.eventually(function() return l:stats().auth_failures == 4 end)
    l:close()
  end)

  it('accepts an AuthInfo table', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    kp.on(AUTH, function(user)
      return { identities = { { identity = user .. '@corp', context = 'ProxyAuthRfc1929' } }, groups = { 'staff' } }
    end)
    local out, rc = curl('socks5h://carol:any@' .. l:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc)
    assert.are.equal('hello from origin\n', out)
    l:close()
  end)

  it('answers 0xFF to a client offering no password when require_auth is set', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local got, ending = H.raw(l:local_addr(), '050100')
    assert.are.equal('05ff', got)
    assert.are.equal('EOF', ending)
    -- Offering both still forces username/password.
    got = H.raw(l:local_addr(), '05020002')
    assert.are.equal('0502', got:sub(1, 4))
    l:close()
  end)

  it('lets trusted hosts in without credentials, and nobody else', function()
    kp.on(AUTH, nil)
    local open = H.listener { allow_private_destinations = true }
    local out, rc = curl('socks5://' .. open:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc)
    assert.are.equal('hello from origin\n', out)
    -- With no handler and auth not required, a client offering both methods gets NOAUTH.
    out, rc = curl('socks5://someone:pw@' .. open:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc)
    open:close()

    local closed = H.listener { allow_private_destinations = true, trusted_hosts = { '10.0.0.0/8' } }
    local got = H.raw(closed:local_addr(), '050100')
    assert.are.equal('05ff', got)
    H.eventually(function() return closed:stats().auth_failures == 1 end)
    closed:close()
  end)

  it('lets an untrusted client in with valid credentials when auth is optional', function()
    local l = H.listener { allow_private_destinations = true, trusted_hosts = {} }
    local out, rc = curl('socks5h://alice:secret@' .. l:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc)
    assert.are.equal('hello from origin\n', out)
    l:close()
  end)

  it('connects to IPv6 and domain destinations', function()
    local l = H.listener { allow_private_destinations = true }
    if origin.echo6 ~= 0 then
      local out, rc = H.socks_py(('connect --proxy %s --target [::1]:%d'):format(l:local_addr(), origin.echo6))
      assert.are.equal(0, rc, out)
      assert.matches('reply=0x00', out)
      assert.matches('data=ping', out)
    end
    local out, rc = H.socks_py(('connect --proxy %s --target localhost:%d --domain'):format(l:local_addr(), origin.echo))
    assert.are.equal(0, rc, out)
    assert.matches('data=ping', out)
    l:close()
  end)

  it('maps connect failures to RFC 1928 reply codes', function()
    local l = H.listener { allow_private_destinations = true }
    -- A port nobody listens on: bind one, note it, close it.
    local s = H.socket.bind('127.0.0.1', 0)
    local _, port = s:getsockname()
    s:close()
    local c, code = H.socks_connect(l:local_addr(), '127.0.0.1', tonumber(port))
    assert.is_nil(c)
    assert.are.equal(5, code)
    H.eventually(function() return l:stats().failed == 1 end)
    l:close()
  end)

  it('selects the source address with BIND then CONNECT (KumoMTA interop)', function()
    local l = H.listener { allow_private_destinations = true }
    local out, rc = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --bind-source 127.0.0.2'):format(l:local_addr(), origin.peer))
    assert.are.equal(0, rc, out)
    local bind_reply, connect_reply = out:match('reply=0x00 bound=([^\n]+)\nreply=0x00 bound=([^\n]+)')
    assert.matches('^127%.0%.0%.2:%d+$', bind_reply)
    assert.matches('^127%.0%.0%.2:%d+$', connect_reply)
    -- The destination saw the connection coming from 127.0.0.2.
    assert.matches('data=127%.0%.0%.2:', out)
    l:close()
  end)

  it('refuses a second BIND, BIND of a real port, and UDP ASSOCIATE', function()
    local l = H.listener { allow_private_destinations = true }
    local bind = '050200017f00000200' .. '00'
    local got = H.raw(l:local_addr(), '050100' .. bind .. bind)
    assert.matches('^0500050000017f000002', got)
    assert.are.equal('050100', got:sub(-20, -15))
    got = H.raw(l:local_addr(), '050100' .. '050200017f0000011f90')
    assert.are.equal('05000507', got:sub(1, 8))
    got = H.raw(l:local_addr(), '050100' .. '050300017f0000010000')
    assert.are.equal('05000507', got:sub(1, 8))
    l:close()
  end)

  it('closes on malformed input and keeps serving', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local cases = {
      { '0401', '', 'wrong SOCKS version' },
      { '474554202f20485454502f312e310d0a0d0a', '', 'HTTP on a SOCKS port' },
      { '05010202' .. '01', '0502', 'truncated then wrong auth version' },
      { '050102' .. '0200', '05020101', 'RFC 1929 wrong version' },
      { '050102' .. '010000', '05020101', 'RFC 1929 empty username' },
    }
    for _, c in ipairs(cases) do
      local got, ending = H.raw(l:local_addr(), c[1])
      assert.are.equal(c[2], got:sub(1, #c[2]), c[3])
      assert.are.equal('EOF', ending, c[3])
    end
    kp.on(AUTH, nil)
    local open = H.listener { allow_private_destinations = true }
    -- After the method selection (0500): reply 07 unknown command, 08 address type, 01 empty domain.
    assert.are.equal('05000507', H.raw(open:local_addr(), '050100' .. '05090001'):sub(1, 8))
    assert.are.equal('05000508', H.raw(open:local_addr(), '050100' .. '0501000907'):sub(1, 8))
    assert.are.equal('05000501', H.raw(open:local_addr(), '050100' .. '05010003000050'):sub(1, 8))
    local out, rc = curl('socks5://' .. open:local_addr(), ('http://127.0.0.1:%d/'):format(origin.http))
    assert.are.equal(0, rc)
    assert.are.equal('hello from origin\n', out)
    H.eventually(function() return l:stats().failed == #cases end)
    l:close()
    open:close()
  end)

  it('cuts a client that stalls in the handshake after timeout', function()
    local l = H.listener { allow_private_destinations = true, timeout = 0.3 }
    local got, ending = H.raw(l:local_addr(), '0502', 5)
    assert.are.equal('', got)
    assert.are.equal('EOF', ending)
    H.eventually(function()
      local s = l:stats()
      return s.timeouts == 1 and s.failed == 1
    end)
    l:close()
  end)

  it('fails closed when nobody pumps a pending decision', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true, timeout = 0.3 }
    -- io.popen blocks this thread without dispatching events.
    local p = io.popen(('python3 spec/support/socks.py connect --proxy %s --target 127.0.0.1:%d --user alice --password secret 2>&1')
      :format(l:local_addr(), origin.echo))
    local out = p:read('*a')
    p:close()
    assert.matches('auth', out)
    -- The stale event is discarded, not answered late.
    assert.are.equal(0, kp.poll(0))
    H.eventually(function() return l:stats().auth_failures == 1 end)
    l:close()
  end)

  it('propagates half-close in both directions', function()
    kp.on(AUTH, nil)
    local l = H.listener { allow_private_destinations = true }
    local c = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
    assert(c:send('half-closed payload'))
    c:shutdown('send')
    -- The echo server sees our EOF only if the proxy propagated it; it then
    -- echoes and closes, and we see its EOF only if that propagated back.
    local data, err, partial = c:receive('*a')
    assert.are.equal('half-closed payload', data or partial, err)
    c:close()
    H.eventually(function() return l:stats().completed == 1 end)
    l:close()
  end)

  it('relays bytes the client pipelines behind its request', function()
    local l = H.listener { allow_private_destinations = true }
    local c = H.socket.tcp()
    c:settimeout(5)
    assert(c:connect('127.0.0.1', tonumber(l:local_addr():match(':(%d+)$'))))
    local port = origin.echo
    c:send('\5\1\0' .. '\5\1\0\1\127\0\0\1' .. string.char(math.floor(port / 256), port % 256) .. 'early bytes')
    c:shutdown('send')
    local data = c:receive('*a')
    assert.are.equal('\5\0' .. '\5\0\0\1\127\0\0\1', data:sub(1, 10))
    assert.are.equal('early bytes', data:sub(13))
    c:close()
    l:close()
  end)

  it('closes connections beyond max_connections at once and counts them', function()
    local l = H.listener { allow_private_destinations = true, max_connections = 1 }
    local held = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
    local c2, why = H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo)
    assert.is_nil(c2)
    H.eventually(function() return l:stats().rejected == 1 end)
    held:close()
    H.eventually(function() return l:stats().active == 0 end)
    local c3 = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
    c3:close()
    l:close()
  end)

  it('returns fds to baseline after 1,000 sessions', function()
    kp.on(AUTH, nil)
    local l = H.listener { allow_private_destinations = true }
    H.quiesce()
    local before = H.socket_count()

    local out, rc = H.socks_py(('sessions --proxy %s --target 127.0.0.1:%d -n 1000'):format(l:local_addr(), origin.echo))
    assert.are.equal(0, rc, out)
    assert.matches('ok=1000 fail=0', out)
    H.eventually(function()
      local s = l:stats()
      return s.completed == 1000 and s.active == 0
    end)
    H.quiesce()
    assert.are.equal(before, H.socket_count())
    -- Splice pipes idle in the pool are kept for reuse, by design, and bounded:
    -- sequential sessions need at most one per direction.
    assert.is_true(kp.runtime_stats().pooled_pipes <= 2)

    assert.are.equal(16000, l:stats().bytes_to_remote)
    l:close()
  end)

  it('close() stops accepting while an established session keeps relaying', function()
    local l = H.listener { allow_private_destinations = true }
    local c = assert(H.socks_connect(l:local_addr(), '127.0.0.1', origin.echo))
    l:close()
    H.eventually(function() return l:stats().accepting == false end)
    local port = tonumber(l:local_addr():match(':(%d+)$'))
    local probe = H.socket.tcp()
    probe:settimeout(2)
    assert.is_nil(probe:connect('127.0.0.1', port))
    probe:close()
    assert(c:send('still here\n'))
    assert.are.equal('still here', c:receive('*l'))
    c:close()
  end)
end)

describe('run and stop', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)

  it('run() returns after kumoproxy.stop() from a handler', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local seen
    kp.on(AUTH, function(user)
      seen = user
      kp.stop()
      return true
    end)
    -- A client in the background; run() dispatches its auth event.
    local bg = io.popen(('python3 spec/support/socks.py connect --proxy %s --target 127.0.0.1:%d --user dave --password pw 2>&1')
      :format(l:local_addr(), origin.echo))
    kp.run { grace = 5 }
    local out = bg:read('*a')
    bg:close()
    kp.on(AUTH, nil)
    assert.are.equal('dave', seen)
    assert.matches('data=ping', out)
    -- run() closed every listener on the way out.
    assert.is_false(l:stats().accepting)
  end)

  it('poll(timeout) dispatches an event when it arrives', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local calls = 0
    kp.on(AUTH, function() calls = calls + 1; return true end)
    local bg = io.popen(('python3 spec/support/socks.py connect --proxy %s --target 127.0.0.1:%d --user u --password p 2>&1')
      :format(l:local_addr(), origin.echo))
    assert.are.equal(1, kp.poll(10))
    assert.matches('data=ping', bg:read('*a'))
    bg:close()
    assert.are.equal(1, calls)
    kp.on(AUTH, nil)
    l:close()
  end)

  it('SIGTERM to the example exits 0 within the grace period', function()
    -- The example prints its address once listening; the shell blocks on that line.
    local script = [[
      coproc P { KUMOPROXY_LOG=info KUMOPROXY_LISTEN=127.0.0.1:0 exec "$0" examples/init.lua 2>&1; }
      pid=$P_PID
      # bash closes the coproc's own fds once it reaps the process: read a copy.
      exec 3<&"${P[0]}"
      # SIGTERM only once run() has its handlers in place (it logs that line).
      while read -r line <&3; do
        echo "$line"
        case $line in *'kumoproxy.run: serving'*) break ;; esac
      done
      kill -TERM "$pid"
      cat <&3
      wait "$pid"
    ]]
    local out, rc, err = H.sh({ 'bash', '-c', script, H.lua }, { timeout = 30 })
    assert.are.equal(0, rc, out .. err)
    assert.matches('\nproxy listener on 127%.0%.0%.1:%d+', out)
    assert.matches('stopping %(SIGTERM%)', out)
    assert.matches('stopped: 0 sessions completed', out)
  end)
end)

describe('errors', function()
  it('reach Lua as plain strings with the caller position', function()
    local ok, err = pcall(function()
      kp.start_proxy_listener { lisen = '127.0.0.1:0' }
    end)
    assert.is_false(ok)
    assert.are.equal('string', type(err))
    assert.matches('core_spec%.lua:%d+: start_proxy_listener: unknown parameter lisen', err)
    assert.is_nil(err:find('stack traceback', 1, true))
  end)
end)
