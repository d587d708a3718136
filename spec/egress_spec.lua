-- Egress sources: make_egress_source, src:connect, connection objects,
-- src:forward, and listener upstream chaining. Real sockets throughout; every
-- port is OS-assigned (microsocks takes a just-freed one), nothing sleeps to
-- synchronise.
local H = require 'spec.support.helpers'
local kp = H.kp
local socket = H.socket

local AUTH = 'proxy_server_auth_rfc1929'

local function mk_err(params)
  local ok, err = pcall(kp.make_egress_source, params)
  assert.is_false(ok, 'expected an error')
  return tostring(err)
end

local function free_port()
  local s = assert(socket.bind('127.0.0.1', 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute('mkdir -m 700 ' .. d))
  return d
end

local function write_file(path, data)
  local f = assert(io.open(path, 'wb'))
  f:write(data)
  f:close()
end

local function read_file(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

local function must(conn, err)
  assert(conn, 'connect failed: ' .. tostring(err))
  return conn
end

-- A CA and a leaf for 'localhost' / 127.0.0.1 signed by it, plus an unrelated
-- CA; made at test time, removed in teardown.
local function make_pki(dir)
  local function ossl(args)
    local _, rc, err = H.sh('openssl ' .. args .. ' 2>&1')
    assert(rc == 0, 'openssl ' .. args .. ': ' .. tostring(err))
  end
  local ec = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
  ossl(('req -x509 %s -keyout %s/ca.key -out %s/ca.pem -subj /CN=egress-test-ca -days 2'):format(ec, dir, dir))
  ossl(('req -x509 %s -keyout %s/other.key -out %s/other.pem -subj /CN=other-ca -days 2'):format(ec, dir, dir))
  ossl(('req %s -keyout %s/leaf.key -out %s/leaf.csr -subj /CN=localhost'):format(ec, dir, dir))
  write_file(dir .. '/leaf.ext', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n')
  ossl(('x509 -req -in %s/leaf.csr -CA %s/ca.pem -CAkey %s/ca.key -CAcreateserial -out %s/leaf.pem -days 2 -extfile %s/leaf.ext')
    :format(dir, dir, dir, dir, dir))
end

-- A TLS front for `to` (host:port): spec/support/tls_terminator.py.
local function start_tls_front(dir, to)
  local f = assert(io.popen(('exec python3 spec/support/tls_terminator.py --cert %s/leaf.pem --key %s/leaf.key --to %s --parent-pid %d')
    :format(dir, dir, to, H.pid()), 'r'))
  local line = assert(f:read('*l'), 'tls_terminator.py did not start')
  local t = { pipe = f, pid = tonumber(line:match('pid=(%d+)')), port = tonumber(line:match('port=(%d+)')) }
  function t.stop()
    os.execute('kill ' .. t.pid .. ' 2>/dev/null')
    f:close()
  end
  return t
end

describe('make_egress_source parameters', function()
  it('names an unknown key', function()
    assert.matches('make_egress_source: unknown parameter sock5_proxy_server',
      mk_err { name = 'a', sock5_proxy_server = '127.0.0.1:1080' })
  end)

  it('requires a name', function()
    assert.matches('name: is required', mk_err { source_address = '127.0.0.1' })
    assert.matches('expected a parameter table', mk_err(nil))
  end)

  it('requires username and password together', function()
    assert.matches('socks5_proxy_password: is required when socks5_proxy_username is set',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_username = 'alice' })
    assert.matches('socks5_proxy_username: is required when socks5_proxy_password is set',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_password = 'pw' })
  end)

  it('limits username and password to 255 bytes, naming the right one', function()
    local long = ('x'):rep(256)
    assert.matches('socks5_proxy_username: must be 1 to 255 bytes %(RFC 1929%), got 256',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_username = long, socks5_proxy_password = 'p' })
    assert.matches('socks5_proxy_password: must be at most 255 bytes %(RFC 1929%), got 256',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_username = 'u', socks5_proxy_password = long })
    assert.matches('socks5_proxy_username: must be 1 to 255',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_username = '', socks5_proxy_password = 'p' })
    kp.make_egress_source { name = 'a', socks5_proxy_server = '127.0.0.1:1080',
      socks5_proxy_username = ('u'):rep(255), socks5_proxy_password = ('p'):rep(255) }
  end)

  it('rejects a source address family that can never reach the proxy', function()
    assert.matches('source_address: ::1 cannot reach socks5_proxy_server 127.0.0.1',
      mk_err { name = 'a', source_address = '::1', socks5_proxy_server = '127.0.0.1:1080' })
    -- a DNS name may resolve to either family: allowed
    kp.make_egress_source { name = 'a', source_address = '::1', socks5_proxy_server = 'localhost:1080' }
    assert.matches("source_address: 'nope' is not an IP address", mk_err { name = 'a', source_address = 'nope' })
  end)

  it('rejects proxy and TLS options without a proxy server', function()
    for _, key in ipairs { 'socks5_proxy_tls', 'socks5_proxy_tls_insecure' } do
      assert.matches(key .. ': requires socks5_proxy_server', mk_err { name = 'a', [key] = true })
    end
    assert.matches('socks5_proxy_tls_ca: requires socks5_proxy_server', mk_err { name = 'a', socks5_proxy_tls_ca = '/x' })
    assert.matches('socks5_proxy_tls_server_name: requires socks5_proxy_server',
      mk_err { name = 'a', socks5_proxy_tls_server_name = 'x' })
    assert.matches('socks5_proxy_source_address: requires socks5_proxy_server',
      mk_err { name = 'a', socks5_proxy_source_address = '127.0.0.2' })
    assert.matches('socks5_proxy_username: requires socks5_proxy_server',
      mk_err { name = 'a', socks5_proxy_username = 'u', socks5_proxy_password = 'p' })
    assert.matches('socks5_proxy_tls_ca: requires socks5_proxy_tls = true',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_tls_ca = '/x' })
    assert.matches('socks5_proxy_tls_insecure: cannot be combined with socks5_proxy_tls_ca',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_tls = true,
        socks5_proxy_tls_insecure = true, socks5_proxy_tls_ca = '/x' })
  end)

  it('names bad values', function()
    assert.matches("socks5_proxy_server: 'proxy' is not host:port",
      mk_err { name = 'a', socks5_proxy_server = 'proxy' })
    assert.matches('socks5_proxy_server:', mk_err { name = 'a', socks5_proxy_server = '::1:1080' })
    assert.matches('connect_timeout:', mk_err { name = 'a', connect_timeout = 'soon' })
    assert.matches('connect_timeout: must be greater than zero', mk_err { name = 'a', connect_timeout = 0 })
    assert.matches('socks5_proxy_tls: expected a boolean',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_tls = 'yes' })
    assert.matches('socks5_proxy_tls_ca: cannot read /nonexistent/ca.pem',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_tls = true,
        socks5_proxy_tls_ca = '/nonexistent/ca.pem' })
    assert.matches('socks5_proxy_tls_ca: inline PEM: no CERTIFICATE found',
      mk_err { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_tls = true,
        socks5_proxy_tls_ca = '-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n' })
  end)

  it('takes the password as a string, key_data or key_file', function()
    local base = { name = 'a', socks5_proxy_server = '127.0.0.1:1080', socks5_proxy_username = 'u' }
    local function with(pw)
      local t = {}
      for k, v in pairs(base) do t[k] = v end
      t.socks5_proxy_password = pw
      return t
    end
    kp.make_egress_source(with { key_data = 'secret' })
    local dir = tmpdir()
    write_file(dir .. '/pw', 'secret\n')
    kp.make_egress_source(with { key_file = dir .. '/pw' })
    os.remove(dir .. '/pw')
    os.remove(dir)
    assert.matches('socks5_proxy_password: key_file: cannot read /nonexistent/pw',
      mk_err(with { key_file = '/nonexistent/pw' }))
    assert.matches('socks5_proxy_password: key_data: give exactly one of key_data or key_file',
      mk_err(with {}))
    assert.matches('socks5_proxy_password: unknown parameter vault_path', mk_err(with { key_data = 'x', vault_path = 'y' }))
    assert.matches('socks5_proxy_password: expected a string', mk_err(with(42)))
  end)

  it('is an object with a name', function()
    local src = kp.make_egress_source { name = 'ip-1', connect_timeout = '30 seconds' }
    assert.are.equal('ip-1', src:name())
    assert.are.equal('kumoproxy.egress_source(ip-1)', tostring(src))
  end)

  it('start_proxy_listener names a bad egress_source', function()
    local ok, err = pcall(kp.start_proxy_listener, { listen = '127.0.0.1:0', egress_source = 'ip-1' })
    assert.is_false(ok)
    assert.matches('start_proxy_listener: egress_source: expected an egress source', tostring(err))
  end)
end)

describe('direct egress', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)

  it('connects, sends and receives lines, counts and everything', function()
    local src = kp.make_egress_source { name = 'direct' }
    local conn = must(src:connect('127.0.0.1', origin.echo))
    assert.is_nil(conn:proxy_bound_address())
    local ip, port, family = conn:getpeername()
    assert.are.same({ '127.0.0.1', origin.echo, 'inet' }, { ip, port, family })
    assert.are.equal('127.0.0.1', (conn:getsockname()))
    assert.are.equal(21, conn:send('EHLO me\r\nsecond\rline\n'))
    assert.are.equal('EHLO me', conn:receive('*l'))
    assert.are.equal('secondline', conn:receive())     -- every CR dropped, like LuaSocket
    assert.are.equal(4, conn:send('abcdef', 2, 4))   -- LuaSocket: index of the last byte sent
    assert.are.equal('bc', conn:receive(2))
    assert.are.equal('>>d', conn:receive(1, '>>'))
    conn:send('tail')
    assert.are.equal(1, conn:shutdown('send'))     -- echo half-closes back on our EOF
    assert.are.equal('tail', conn:receive('*a'))
    local data, err, partial = conn:receive('*l')
    assert.are.same({ nil, 'closed', '' }, { data, err, partial })
    conn:close()
    assert.are.same({ nil, 'closed', 0 }, { conn:send('x') })
    assert.matches('closed%)$', tostring(conn))
  end)

  it('returns the partial data on timeout', function()
    local src = kp.make_egress_source { name = 'direct' }
    local conn = must(src:connect('127.0.0.1', origin.echo))
    assert.are.equal(1, conn:settimeout(0.2))
    conn:send('no newline')
    local data, err, partial = conn:receive('*l')
    assert.is_nil(data)
    assert.are.equal('timeout', err)
    assert.are.equal('no newline', partial)
    conn:settimeout(nil)
    conn:send('x\n')
    assert.are.equal('x', conn:receive('*l'))
    conn:close()
  end)

  it('binds source_address', function()
    local src = kp.make_egress_source { name = 'lo2', source_address = '127.0.0.2' }
    local conn = must(src:connect('127.0.0.1', origin.peer))
    local seen = conn:receive('*l')
    local ip, port = conn:getsockname()
    assert.are.equal('127.0.0.2:' .. port, seen)
    assert.are.equal('127.0.0.2', ip)
    conn:close()
  end)

  it('reports a refused destination as a value', function()
    local port = free_port()
    local src = kp.make_egress_source { name = 'direct' }
    local conn, err = src:connect('127.0.0.1', port)
    assert.is_nil(conn)
    assert.matches('^connect to 127%.0%.0%.1:' .. port .. ': .*[Rr]efused', err)
  end)

  it('resolves names and checks its arguments', function()
    local src = kp.make_egress_source { name = 'direct' }
    local conn = must(src:connect('localhost', origin.echo))
    conn:close()
    assert.has_error(function() src:connect('127.0.0.1', 0) end)
    assert.has_error(function() src:connect('127.0.0.1', 25, { timeout = 1 }) end)
    assert.has_error(function() src:connect(('a'):rep(256), 25) end)
    -- (no unresolvable-name case: it would send a DNS query off this machine)
  end)
end)

describe('egress through a kumoproxy listener', function()
  local origin, proxy, proxy_addr
  setup(function()
    origin = H.start_origin()
    proxy = H.listener { allow_private_destinations = true }
    proxy_addr = proxy:local_addr()
  end)
  teardown(function()
    proxy:close()
    origin.stop()
  end)

  it('connects by IP and by name and reports the proxy bound address', function()
    local src = kp.make_egress_source { name = 'via', socks5_proxy_server = proxy_addr }
    for _, host in ipairs { '127.0.0.1', 'localhost' } do
      local conn = must(src:connect(host, origin.peer))
      local seen = conn:receive('*l')
      assert.are.equal(seen, conn:proxy_bound_address())
      local pip, pport = conn:getpeername()
      assert.are.equal(proxy_addr, pip .. ':' .. pport)
      conn:close()
    end
  end)

  it('asks the proxy for a source address (BIND then CONNECT)', function()
    local src = kp.make_egress_source { name = 'ip-2', socks5_proxy_server = proxy_addr,
      socks5_proxy_source_address = '127.0.0.2' }
    local conn = must(src:connect('127.0.0.1', origin.peer))
    local seen = conn:receive('*l')
    assert.matches('^127%.0%.0%.2:%d+$', seen)
    assert.are.equal(seen, conn:proxy_bound_address())
    conn:close()
  end)

  it('passes the destination failure on with the reply code', function()
    local port = free_port()
    local src = kp.make_egress_source { name = 'via', socks5_proxy_server = proxy_addr }
    local conn, err = src:connect('127.0.0.1', port)
    assert.is_nil(conn)
    assert.are.equal('socks5: connection refused by destination (0x05) connecting to 127.0.0.1:'
      .. port .. ' via proxy ' .. proxy_addr, err)
  end)

  it('names the hop when the proxy is not there', function()
    local port = free_port()
    local src = kp.make_egress_source { name = 'via', socks5_proxy_server = '127.0.0.1:' .. port }
    local _, err = src:connect('127.0.0.1', origin.echo)
    assert.matches('^connect to proxy 127%.0%.0%.1:' .. port .. ': .*[Rr]efused', err)
  end)

  it('times out naming the step when the proxy says nothing', function()
    local mute = assert(socket.bind('127.0.0.1', 0))   -- listens, never accepts
    local _, port = mute:getsockname()
    local src = kp.make_egress_source { name = 'mute', socks5_proxy_server = '127.0.0.1:' .. port,
      connect_timeout = 0.3 }
    local t0 = socket.gettime()
    local conn, err = src:connect('127.0.0.1', origin.echo)
    assert.is_nil(conn)
    assert.are.equal('timeout in SOCKS5 handshake with proxy 127.0.0.1:' .. port, err)
    assert.is_true(socket.gettime() - t0 < 5)
    _, err = src:connect('127.0.0.1', origin.echo, { connect_timeout = 0.1 })
    assert.matches('^timeout', err)
    mute:close()
  end)

  describe('with credentials checked by a Lua handler', function()
    local authed
    before_each(function()
      authed = {}
      kp.on(AUTH, function(user, pass)
        authed[#authed + 1] = user
        return user == 'alice' and pass == 'secret'
      end)
    end)
    after_each(function() kp.on(AUTH, nil) end)

    it('authenticates while connect() pumps events', function()
      local l = H.listener { allow_private_destinations = true, require_auth = true }
      local src = kp.make_egress_source { name = 'auth', socks5_proxy_server = l:local_addr(),
        socks5_proxy_username = 'alice', socks5_proxy_password = { key_data = 'secret' } }
      local conn = must(src:connect('127.0.0.1', origin.echo))
      conn:send('hi\n')
      assert.are.equal('hi', conn:receive('*l'))
      conn:close()
      assert.are.same({ 'alice' }, authed)
      l:close()
    end)

    it('reports wrong credentials with the auth error text', function()
      local l = H.listener { allow_private_destinations = true, require_auth = true }
      local src = kp.make_egress_source { name = 'auth', socks5_proxy_server = l:local_addr(),
        socks5_proxy_username = 'alice', socks5_proxy_password = 'wrong' }
      local conn, err = src:connect('127.0.0.1', origin.echo)
      assert.is_nil(conn)
      assert.are.equal("socks5 auth: rejected by proxy " .. l:local_addr() .. " (user 'alice')", err)
      H.eventually(function() return l:stats().auth_failures == 1 end, 10, 'auth failure counted')
      l:close()
    end)

    it('says which method was missing when credentials are required', function()
      local l = H.listener { allow_private_destinations = true, require_auth = true }
      local src = kp.make_egress_source { name = 'anon', socks5_proxy_server = l:local_addr() }
      local _, err = src:connect('127.0.0.1', origin.echo)
      assert.matches('^socks5 auth: proxy .* accepted none of our methods %(offered no authentication', err)
      l:close()
    end)
  end)
end)

describe('TLS to the proxy', function()
  local origin, proxy, front, dir
  setup(function()
    origin = H.start_origin()
    proxy = H.listener { allow_private_destinations = true }
    dir = tmpdir()
    make_pki(dir)
    front = start_tls_front(dir, proxy:local_addr())
  end)
  teardown(function()
    front.stop()
    proxy:close()
    origin.stop()
    os.execute('rm -rf ' .. dir)
  end)

  local function tls_src(extra)
    local p = { name = 'tls', socks5_proxy_server = '127.0.0.1:' .. front.port, socks5_proxy_tls = true }
    for k, v in pairs(extra) do p[k] = v end
    return kp.make_egress_source(p)
  end

  local function check_echo(src)
    local conn = must(src:connect('127.0.0.1', origin.echo))
    assert.matches('^127%.0%.0%.1:%d+$', conn:proxy_bound_address())
    conn:send(('z'):rep(100000) .. '\n')
    assert.are.equal(100000, #conn:receive('*l'))
    conn:close()
  end

  it('verifies the proxy against a CA file (IP SAN) or inline PEM (DNS name)', function()
    check_echo(tls_src { socks5_proxy_tls_ca = dir .. '/ca.pem' })
    check_echo(tls_src { socks5_proxy_tls_ca = read_file(dir .. '/ca.pem'),
      socks5_proxy_tls_server_name = 'localhost' })
  end)

  it('connects without verification when insecure', function()
    check_echo(tls_src { socks5_proxy_tls_insecure = true })
  end)

  it('refuses an untrusted certificate or a wrong name', function()
    for _, extra in ipairs {
      { socks5_proxy_tls_ca = dir .. '/other.pem' },
      {},   -- default roots (webpki-roots) do not know our test CA
      { socks5_proxy_tls_ca = dir .. '/ca.pem', socks5_proxy_tls_server_name = 'wrong.example' },
    } do
      local conn, err = tls_src(extra):connect('127.0.0.1', origin.echo)
      assert.is_nil(conn)
      assert.matches('^tls: certificate not trusted: proxy 127%.0%.0%.1:' .. front.port, err)
    end
  end)

  it('carries RFC 1929 credentials inside TLS', function()
    local l = H.listener { allow_private_destinations = true, require_auth = true }
    local f = start_tls_front(dir, l:local_addr())
    local users = {}
    kp.on(AUTH, function(user, pass) users[#users + 1] = user; return pass == 'tls-secret' end)
    local src = kp.make_egress_source { name = 'tls-auth', socks5_proxy_server = 'localhost:' .. f.port,
      socks5_proxy_tls = true, socks5_proxy_tls_ca = dir .. '/ca.pem',
      socks5_proxy_username = 'bob', socks5_proxy_password = 'tls-secret' }
    local conn = must(src:connect('localhost', origin.echo))
    conn:send('over tls\n')
    assert.are.equal('over tls', conn:receive('*l'))
    conn:close()
    kp.on(AUTH, nil)
    assert.are.same({ 'bob' }, users)
    f.stop()
    l:close()
  end)
end)

describe("TLS to the module's own TLS listener", function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)

  local function src_for(l, extra)
    local p = { name = 'own-tls', socks5_proxy_server = l:local_addr(), socks5_proxy_tls = true }
    for k, v in pairs(extra) do p[k] = v end
    return kp.make_egress_source(p)
  end

  local function echo_once(src)
    local conn = must(src:connect('127.0.0.1', origin.echo))
    conn:send('own tls\n')
    assert.are.equal('own tls', conn:receive('*l'))
    assert.matches('^127%.0%.0%.1:%d+$', conn:proxy_bound_address())
    conn:close()
  end

  it('trusts its self-signed certificate through the CA option', function()
    local l = H.listener { allow_private_destinations = true, use_tls = true, hostname = 'proxy.test' }
    local pem = assert(l:certificate_pem())
    echo_once(src_for(l, { socks5_proxy_tls_ca = pem, socks5_proxy_tls_server_name = 'proxy.test' }))
    l:close()
  end)

  it('connects insecurely, and refuses a wrong CA or name', function()
    local l = H.listener { allow_private_destinations = true, use_tls = true, hostname = 'proxy.test' }
    echo_once(src_for(l, { socks5_proxy_tls_insecure = true }))
    local other = H.listener { allow_private_destinations = true, use_tls = true, hostname = 'proxy.test' }
    for _, extra in ipairs {
      { socks5_proxy_tls_ca = other:certificate_pem(), socks5_proxy_tls_server_name = 'proxy.test' },
      { socks5_proxy_tls_ca = l:certificate_pem(), socks5_proxy_tls_server_name = 'other.test' },
    } do
      local conn, err = src_for(l, extra):connect('127.0.0.1', origin.echo)
      assert.is_nil(conn)
      assert.matches('^tls: certificate not trusted: proxy ' .. l:local_addr():gsub('%.', '%%.'), err)
    end
    other:close()
    l:close()
  end)

  it('authenticates with credentials inside TLS, wrong ones refused', function()
    local l = H.listener { allow_private_destinations = true, use_tls = true, hostname = 'proxy.test', require_auth = true }
    kp.on(AUTH, function(user, pass) return user == 'carol' and pass == 'tls-pw' end)
    local base = { socks5_proxy_tls_ca = l:certificate_pem(), socks5_proxy_tls_server_name = 'proxy.test',
      socks5_proxy_username = 'carol' }
    base.socks5_proxy_password = 'tls-pw'
    echo_once(src_for(l, base))
    base.socks5_proxy_password = 'nope'
    local _, err = src_for(l, base):connect('127.0.0.1', origin.echo)
    kp.on(AUTH, nil)
    assert.matches('^socks5 auth: rejected by proxy', err)
    l:close()
  end)
end)

describe('interop with microsocks', function()
  local origin, port, pid
  setup(function()
    origin = H.start_origin()
    port = free_port()
    local p = assert(io.popen(('timeout 300 microsocks -i 127.0.0.1 -p %d -u alice -P s3cret >/dev/null 2>&1 & echo $!')
      :format(port)))
    pid = tonumber(p:read('*l'))
    p:close()
    H.eventually(function()
      local c = socket.connect('127.0.0.1', port)
      if c then c:close() return true end
    end, 10, 'microsocks listening')
  end)
  teardown(function()
    os.execute('kill ' .. pid .. ' 2>/dev/null')
    origin.stop()
  end)

  it('connects by IP and by domain with username/password', function()
    local src = kp.make_egress_source { name = 'micro', socks5_proxy_server = '127.0.0.1:' .. port,
      socks5_proxy_username = 'alice', socks5_proxy_password = 's3cret' }
    for _, host in ipairs { '127.0.0.1', 'localhost' } do
      local conn = must(src:connect(host, origin.echo))
      conn:send('via microsocks ' .. host .. '\n')
      assert.are.equal('via microsocks ' .. host, conn:receive('*l'))
      assert.is_string(conn:proxy_bound_address())
      conn:close()
    end
  end)

  it('reports rejected credentials', function()
    local src = kp.make_egress_source { name = 'micro', socks5_proxy_server = '127.0.0.1:' .. port,
      socks5_proxy_username = 'alice', socks5_proxy_password = 'nope' }
    local conn, err = src:connect('127.0.0.1', origin.echo)
    assert.is_nil(conn)
    assert.matches('^socks5 auth: rejected by proxy 127%.0%.0%.1:' .. port, err)
  end)
end)

describe('interop with Dante', function()
  -- Dante's username method checks system accounts, so this proxy runs
  -- without authentication; microsocks covers RFC 1929 interop.
  local origin, port, pid, dir
  setup(function()
    origin = H.start_origin()
    dir = tmpdir()
    port = free_port()
    write_file(dir .. '/danted.conf', ([[
logoutput: stderr
internal: 127.0.0.1 port = %d
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }
]]):format(port))
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
    origin.stop()
    os.execute('rm -rf ' .. dir)
  end)

  it('connects by IP and by domain', function()
    local src = kp.make_egress_source { name = 'dante', socks5_proxy_server = '127.0.0.1:' .. port }
    for _, host in ipairs { '127.0.0.1', 'localhost' } do
      local conn = must(src:connect(host, origin.peer))
      local seen = assert(conn:receive('*l'))
      assert.matches('^127%.0%.0%.1:%d+$', seen)
      assert.are.equal(seen, conn:proxy_bound_address())
      conn:close()
    end
  end)

  it('passes on its refusal', function()
    local src = kp.make_egress_source { name = 'dante', socks5_proxy_server = '127.0.0.1:' .. port }
    local _, err = src:connect('127.0.0.1', free_port())
    assert.matches('^socks5: connection refused by destination %(0x05%)', err)
  end)
end)

describe('src:forward', function()
  local origin, proxy
  setup(function()
    origin = H.start_origin()
    proxy = H.listener { allow_private_destinations = true }
  end)
  teardown(function()
    proxy:close()
    origin.stop()
  end)

  it('is a plain TCP endpoint for curl, relayed through the source', function()
    local src = kp.make_egress_source { name = 'fwd', socks5_proxy_server = proxy:local_addr(),
      socks5_proxy_source_address = '127.0.0.2' }
    local fwd = src:forward { listen = '127.0.0.1:0', to = '127.0.0.1:' .. origin.http }
    assert.matches('^kumoproxy.listener%(127%.0%.0%.1:%d+%)$', tostring(fwd))
    local out, rc = H.sh(('curl -sS -D - http://%s/'):format(fwd:local_addr()))
    assert.are.equal(0, rc)
    assert.matches('hello from origin', out)
    assert.matches('X%-Peer: 127%.0%.0%.2:%d+', out)   -- left the proxy from the BIND source
    H.eventually(function()
      local s = fwd:stats()
      return s.completed == 1 and s.active == 0
    end, 10, 'forwarded session completed')
    local s = fwd:stats()
    assert.is_true(s.bytes_to_client > #'hello from origin')
    H.eventually(function() return proxy:stats().completed >= 1 end, 10, 'proxy session completed')
    fwd:close()
    H.eventually(function() return not fwd:stats().accepting end, 10, 'forwarder closed')
  end)

  it('lists its connections as live sessions, closes them on request, and reports their end', function()
    local ends = {}
    -- The upstream proxy is in this process too: keep the forwarder's ends only.
    kp.on('proxy_session_end', function(e)
      if e.protocol == 'forward' then ends[#ends + 1] = e end
    end)
    local src = kp.make_egress_source { name = 'fwd', socks5_proxy_server = proxy:local_addr() }
    local fwd = src:forward { listen = '127.0.0.1:0', to = '127.0.0.1:' .. origin.echo }
    local host, port = fwd:local_addr():match('^(.*):(%d+)$')
    local c = assert(socket.connect(host, tonumber(port)))
    c:settimeout(5)
    assert(c:send('hello\n'))
    assert.are.equal('hello', c:receive('*l'))
    -- The relay counts a write after making it: the echo may arrive first.
    H.eventually(function()
      local l = fwd:sessions()
      return #l == 1 and l[1].bytes_down == 6
    end, 10, 'the echo counted')
    local list = fwd:sessions()
    assert.are.equal('forward', list[1].protocol)
    assert.are.equal('127.0.0.1:' .. origin.echo, list[1].destination)
    assert.are.equal(6, list[1].bytes_up)
    assert.are.equal(1, fwd:close_sessions { all = true })
    c:settimeout(0)
    H.eventually(function()
      local _, e = c:receive(1)
      return e == 'closed'
    end, 10, 'forwarded connection closed')
    c:close()
    H.eventually(function() return #ends == 1 end, 10, 'proxy_session_end for the forwarded session')
    kp.on('proxy_session_end', nil)
    assert.are.equal('forward', ends[1].protocol)
    assert.are.equal('cut', ends[1].outcome)
    assert.are.equal('127.0.0.1:' .. origin.echo, ends[1].destination)
    assert.are.equal('fwd', ends[1].egress)
    assert.are.equal(6, ends[1].bytes_up)
    assert.are.equal(0, #fwd:sessions())
    fwd:close()
  end)

  it('counts a failed upstream connect and keeps serving', function()
    local src = kp.make_egress_source { name = 'fwd', socks5_proxy_server = proxy:local_addr() }
    local fwd = src:forward { listen = '127.0.0.1:0', to = '127.0.0.1:' .. free_port() }
    local _, rc = H.sh(('curl -sS http://%s/'):format(fwd:local_addr()))
    assert.are_not.equal(0, rc)
    H.eventually(function() return fwd:stats().failed == 1 end, 10, 'failure counted')
    fwd:close()
  end)

  it('names bad parameters', function()
    local src = kp.make_egress_source { name = 'fwd' }
    local function ferr(p)
      local ok, err = pcall(src.forward, src, p)
      assert.is_false(ok)
      return tostring(err)
    end
    assert.matches('egress_source:forward: to: is required', ferr { listen = '127.0.0.1:0' })
    assert.matches("egress_source:forward: to: 'example.com' is not host:port",
      ferr { listen = '127.0.0.1:0', to = 'example.com' })
    assert.matches('egress_source:forward: listen: is required', ferr { to = 'a:1' })
    assert.matches('egress_source:forward: unknown parameter too', ferr { listen = '127.0.0.1:0', to = 'a:1', too = 1 })
  end)
end)

describe('upstream chaining: listener -> egress source -> listener', function()
  local origin, dir
  setup(function()
    origin = H.start_origin()
    dir = tmpdir()
    make_pki(dir)
  end)
  teardown(function()
    origin.stop()
    os.execute('rm -rf ' .. dir)
  end)

  local function chain_check(front, back)
    local url = ('http://127.0.0.1:%d/bytes/200000'):format(origin.http)
    local out, rc, err = H.sh(('curl -sS --socks5 %s %s | wc -c'):format(front:local_addr(), url))
    assert.are.equal(0, rc, err)
    assert.are.equal('200000', out:match('%d+'))
    for _, l in ipairs { front, back } do
      H.eventually(function()
        local s = l:stats()
        return s.completed == 1 and s.bytes_to_client > 200000 and s.bytes_to_remote > 50
      end, 10, 'bytes counted on ' .. l:local_addr())
    end
  end

  it('relays through the second listener and counts bytes on both', function()
    local back = H.listener { allow_private_destinations = true }
    local src = kp.make_egress_source { name = 'upstream', socks5_proxy_server = back:local_addr() }
    local front = H.listener { allow_private_destinations = true, egress_source = src }
    chain_check(front, back)
    front:close()
    back:close()
  end)

  it('relays over a TLS upstream leg', function()
    local back = H.listener { allow_private_destinations = true }
    local tls = start_tls_front(dir, back:local_addr())
    local src = kp.make_egress_source { name = 'upstream-tls', socks5_proxy_server = '127.0.0.1:' .. tls.port,
      socks5_proxy_tls = true, socks5_proxy_tls_ca = dir .. '/ca.pem' }
    local front = H.listener { allow_private_destinations = true, egress_source = src }
    chain_check(front, back)
    front:close()
    back:close()
    tls.stop()
  end)

  it('relays a TLS client leg to a TLS upstream leg', function()
    local back = H.listener { allow_private_destinations = true, use_tls = true, hostname = 'back.test' }
    local up = kp.make_egress_source { name = 'back', socks5_proxy_server = back:local_addr(),
      socks5_proxy_tls = true, socks5_proxy_tls_ca = back:certificate_pem(), socks5_proxy_tls_server_name = 'back.test' }
    local front = H.listener { allow_private_destinations = true, use_tls = true, hostname = 'front.test', egress_source = up }
    local client = kp.make_egress_source { name = 'client', socks5_proxy_server = front:local_addr(),
      socks5_proxy_tls = true, socks5_proxy_tls_ca = front:certificate_pem(), socks5_proxy_tls_server_name = 'front.test' }
    local conn = must(client:connect('127.0.0.1', origin.echo))
    local payload = ('0123456789'):rep(10000)
    assert.are.equal(#payload, conn:send(payload))
    assert.are.equal(payload, conn:receive(#payload))
    conn:close()
    for _, l in ipairs { front, back } do
      H.eventually(function()
        local st = l:stats()
        return st.completed == 1 and st.bytes_to_remote == #payload and st.bytes_to_client == #payload
      end, 10, 'bytes counted on ' .. l:local_addr())
    end
    front:close()
    back:close()
  end)

  it('passes the upstream reply code to the client, and refuses BIND-chosen sources', function()
    local back = H.listener { allow_private_destinations = true }
    local src = kp.make_egress_source { name = 'upstream', socks5_proxy_server = back:local_addr() }
    local front = H.listener { allow_private_destinations = true, egress_source = src }
    local c, code = H.socks_connect(front:local_addr(), '127.0.0.1', free_port())
    assert.is_nil(c)
    assert.are.equal(5, code)
    local out = H.socks_py(('connect --proxy %s --target 127.0.0.1:%d --bind-source 127.0.0.1')
      :format(front:local_addr(), origin.echo))
    assert.matches('reply=0x00', out)   -- BIND itself answered
    assert.matches('reply=0x02', out)   -- CONNECT: not allowed
    front:close()
    back:close()
  end)
end)

describe('secrets in logs', function()
  it('never logs the proxy password, even at trace level', function()
    local origin = H.start_origin()
    local dir = tmpdir()
    local script = dir .. '/log.lua'
    write_file(script, ([[
      local kp = require 'kumoproxy'
      kp.on('proxy_server_auth_rfc1929', function(u, p) return p == 'pw-right-0123' end)
      local l = kp.start_proxy_listener { listen = '127.0.0.1:0', require_auth = true, allow_private_destinations = true }
      for _, pw in ipairs { 'pw-right-0123', 'pw-wrong-4567' } do
        local src = kp.make_egress_source { name = 'logcheck', socks5_proxy_server = l:local_addr(),
          socks5_proxy_username = 'alice', socks5_proxy_password = pw }
        local c, err = src:connect('127.0.0.1', %d)
        print(c and 'connected' or err)
        if c then c:close() end
      end
    ]]):format(origin.echo))
    local out, rc, err = H.sh(('KUMOPROXY_LOG=trace %s %s'):format(H.lua, script))
    os.execute('rm -rf ' .. dir)
    origin.stop()
    assert.are.equal(0, rc, err)
    assert.matches('connected\nsocks5 auth: rejected by proxy', out)
    assert.matches("egress 'logcheck'", err)   -- trace output really was on
    assert.is_nil(err:find('pw%-right'))
    assert.is_nil(err:find('pw%-wrong'))
  end)
end)

describe('examples/egress.lua', function()
  it('runs to completion', function()
    local out, rc, err = H.sh({ H.lua, 'examples/egress.lua' })
    assert.are.equal(0, rc, err)
    assert.matches('client: banner: 220 demo destination ready', out)
    assert.matches('destination sees us as 127%.0%.0%.1:%d+', out)
    assert.matches('destination: got: hello through the forwarder', out)
    assert.matches('\ndone\n$', out)
  end)
end)
