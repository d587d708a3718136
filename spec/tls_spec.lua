-- TLS and mutual TLS on the proxy listener. Clients: Python's ssl module and
-- LuaSec (both OpenSSL), never the module itself. Certificates are generated at
-- test time by spec/support/make_certs.sh.
local H = require 'spec.support.helpers'
local kp = H.kp
local ssl = require 'ssl'

local AUTH = 'proxy_server_auth_rfc1929'

describe('TLS listener', function()
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

  local function f(name) return pki .. '/' .. name end

  local function tls_socks(l, args)
    return H.sh(('python3 spec/support/tls_socks.py --proxy %s --target 127.0.0.1:%d %s')
      :format(l:local_addr(), origin.echo, args or ''))
  end

  local function read(path)
    local fh = assert(io.open(path))
    local s = fh:read('*a')
    fh:close()
    return s
  end

  -- LuaSec client: TLS, then SOCKS5 NOAUTH CONNECT to the echo server.
  local function luasec_session(l, cafile, extra)
    local port = tonumber(l:local_addr():match(':(%d+)$'))
    local sock = H.socket.tcp()
    sock:settimeout(5)
    assert(sock:connect('127.0.0.1', port))
    local params = { mode = 'client', protocol = 'any', verify = 'peer', cafile = cafile, options = { 'all' } }
    for k, v in pairs(extra or {}) do params[k] = v end
    local conn = assert(ssl.wrap(sock, params))
    conn:settimeout(5)
    local ok, err = conn:dohandshake()
    if not ok then
      conn:close()
      return nil, err
    end
    conn:send('\5\1\0')
    assert.are.equal('\5\0', conn:receive(2))
    local p = origin.echo
    conn:send('\5\1\0\1\127\0\0\1' .. string.char(math.floor(p / 256), p % 256))
    local reply = assert(conn:receive(10))
    assert.are.equal(0, reply:byte(2))
    return conn
  end

  it('serves SOCKS5 inside TLS with a certificate from files', function()
    local l = H.listener { allow_private_destinations = true, use_tls = true, tls_certificate = f('server.pem'), tls_private_key = f('server.key') }
    local out, rc = tls_socks(l, '--cafile ' .. f('ca1.pem') .. ' --server-name localhost')
    assert.are.equal(0, rc, out)
    assert.matches('tls=ok version=TLSv1%.3 cn=localhost', out)
    assert.matches('data=ping', out)
    H.eventually(function()
      local s = l:stats()
      return s.completed == 1 and s.bytes_to_remote == 5 and s.tls_handshake_failures == 0
    end)
    l:close()
  end)

  it('accepts PKCS#1 RSA and SEC1 EC keys, and inline PEM', function()
    for _, name in ipairs { 'rsa', 'ec' } do
      local l = H.listener { allow_private_destinations = true, use_tls = true, tls_certificate = f(name .. '.pem'), tls_private_key = f(name .. '.key') }
      local out, rc = tls_socks(l, '--cafile ' .. f('ca1.pem') .. ' --server-name localhost')
      assert.are.equal(0, rc, name .. ': ' .. out)
      l:close()
    end
    local l = H.listener {
     allow_private_destinations = true,
      allow_private_destinations = true,
      use_tls = true,
      tls_certificate = read(f('server.pem')),
      tls_private_key = { key_data = read(f('server.key')) },
    }
    local out, rc = tls_socks(l, '--cafile ' .. f('ca1.pem'))
    assert.are.equal(0, rc, out)
    l:close()
  end)

  it('generates a self-signed certificate a client can trust via certificate_pem()', function()
    local l = H.listener { allow_private_destinations = true, use_tls = true, hostname = 'proxy.test' }
    local pem = l:certificate_pem()
    assert.matches('^%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-', pem)
    local ca = os.tmpname()
    local fh = io.open(ca, 'w')
    fh:write(pem)
    fh:close()
    local out, rc = tls_socks(l, '--cafile ' .. ca .. ' --server-name proxy.test')
    os.remove(ca)
    assert.are.equal(0, rc, out)
    assert.matches('data=ping', out)
    -- The same certificate is served for the listener's lifetime, reloads included.
    l:reload_tls {}
    assert.are.equal(pem, l:certificate_pem())
    assert.is_nil(H.listener {}:certificate_pem())
    l:close()
  end)

  it('accepts a client certificate from the CA and shows its identity to Lua', function()
    local l = H.listener {
     allow_private_destinations = true,
      allow_private_destinations = true,
      use_tls = true, tls_certificate = f('server.pem'), tls_private_key = f('server.key'),
      tls_client_ca = f('ca1.pem'), require_auth = true, require_password = true, trusted_hosts = {},
    }
    local seen
    kp.on(AUTH, function(user, pass, meta)
      seen = meta
      return user == 'alice' and pass == 'pw'
    end)
    local out, rc = tls_socks(l, ('--cafile %s --cert %s --key %s --user alice --password pw')
      :format(f('ca1.pem'), f('alice.pem'), f('alice.key')))
    assert.are.equal(0, rc, out)
    assert.matches('data=ping', out)
    assert.are.equal('alice', seen.tls_client_identity)
    assert.are.same({ 'email:alice@example.test', 'DNS:alice.clients.test' }, seen.tls_client_sans)
    l:close()
  end)

  it('lets a verified client certificate stand in for a password under require_auth', function()
    local l = H.listener {
     allow_private_destinations = true,
      allow_private_destinations = true,
      use_tls = true, tls_certificate = f('server.pem'), tls_private_key = f('server.key'),
      tls_client_ca = f('ca1.pem'), require_auth = true, trusted_hosts = {},
    }
    local out, rc = tls_socks(l, ('--cafile %s --cert %s --key %s'):format(f('ca1.pem'), f('alice.pem'), f('alice.key')))
    assert.are.equal(0, rc, out)
    assert.matches('method=0x00', out)
    assert.matches('data=ping', out)
    l:close()
  end)

  it('refuses clients without a certificate or with one from another CA', function()
    local l = H.listener {
     allow_private_destinations = true,
      allow_private_destinations = true,
      use_tls = true, tls_certificate = f('server.pem'), tls_private_key = f('server.key'),
      tls_client_ca = f('ca1.pem'), require_auth = true, trusted_hosts = {},
    }
    local out, rc = tls_socks(l, '--cafile ' .. f('ca1.pem'))
    assert.are_not.equal(0, rc)
    assert.matches('error=', out)
    out, rc = tls_socks(l, ('--cafile %s --cert %s --key %s'):format(f('ca1.pem'), f('mallory.pem'), f('mallory.key')))
    assert.are_not.equal(0, rc)
    assert.matches('error=', out)
    H.eventually(function()
      local s = l:stats()
      return s.tls_handshake_failures == 2 and s.completed == 0
    end)
    -- Still serving the right client.
    out, rc = tls_socks(l, ('--cafile %s --cert %s --key %s'):format(f('ca1.pem'), f('alice.pem'), f('alice.key')))
    assert.are.equal(0, rc, out)
    l:close()
  end)

  it("tls_client_auth = 'optional' admits clients without a certificate", function()
    local l = H.listener {
     allow_private_destinations = true,
      allow_private_destinations = true,
      use_tls = true, tls_certificate = f('server.pem'), tls_private_key = f('server.key'),
      tls_client_ca = f('ca1.pem'), tls_client_auth = 'optional',
    }
    local out, rc = tls_socks(l, '--cafile ' .. f('ca1.pem'))
    assert.are.equal(0, rc, out)
    l:close()
  end)

  it('reload_tls serves the new certificate to new handshakes; established sessions keep going', function()
    local l = H.listener { allow_private_destinations = true, use_tls = true, tls_certificate = f('server.pem'), tls_private_key = f('server.key') }
    local old = assert(luasec_session(l, f('ca1.pem')))
    assert(old:send('before\n'))
    assert.are.equal('before', old:receive('*l'))

    l:reload_tls { tls_certificate = f('server2.pem'), tls_private_key = f('server2.key') }

    -- New handshakes see the rotated certificate (signed by ca2).
    local c, err = luasec_session(l, f('ca1.pem'))
    assert.is_nil(c)
    assert.is_string(err)
    local new = assert(luasec_session(l, f('ca2.pem')))
    assert.matches('rotated%.test', tostring(new:getpeercertificate():subject()[1].value))
    new:close()
    -- The session that started before the reload still transfers.
    assert(old:send('after\n'))
    assert.are.equal('after', old:receive('*l'))
    old:close()

    -- Invalid material raises and keeps the current certificate.
    local ok, msg = pcall(l.reload_tls, l, { tls_certificate = f('server.pem'), tls_private_key = f('server2.key') })
    assert.is_false(ok)
    assert.matches('tls_certificate', tostring(msg))
    local again = assert(luasec_session(l, f('ca2.pem')))
    again:close()
    l:close()
  end)

  it('fails a plain client on the TLS port fast and counts it', function()
    local l = H.listener { allow_private_destinations = true, use_tls = true }
    local got, ending = H.raw(l:local_addr(), '050100', 5)
    assert.is_nil(got:match('^0500'))
    assert.are.equal('EOF', ending)
    H.eventually(function()
      local s = l:stats()
      return s.tls_handshake_failures == 1 and s.failed == 1
    end)
    l:close()
  end)

  it('examples/tls.lua serves a client that trusts its printed certificate', function()
    local script = [[
      coproc P { KUMOPROXY_LOG=info KUMOPROXY_LISTEN=127.0.0.1:0 exec "$0" examples/tls.lua 2>&1; }
      pid=$P_PID ca=$(mktemp) addr=
      exec 3<&"${P[0]}"   # survives bash closing the coproc fds at exit
      while read -r line <&3; do
        case $line in
          'proxy listener (TLS) on '*) addr=${line#proxy listener (TLS) on } ;;
          -----BEGIN*|-----END*|[A-Za-z0-9+/]*) [ -n "$addr" ] && echo "$line" >>"$ca" ;;
        esac
        case $line in *'kumoproxy.run: serving'*) break ;; esac
      done
      python3 spec/support/tls_socks.py --proxy "$addr" --target 127.0.0.1:"$1" \
        --cafile "$ca" --server-name localhost --user alice --password secret
      rc=$?
      kill -TERM "$pid"; cat <&3 >/dev/null; wait "$pid"; rm -f "$ca"
      exit $rc
    ]]
    local out, rc, err = H.sh({ 'bash', '-c', script, H.lua, tostring(origin.echo) }, { timeout = 30 })
    assert.are.equal(0, rc, out .. err)
    assert.matches('auth=ok', out)
    assert.matches('data=ping', out)
  end)

  it('names the parameter and file in configuration errors', function()
    local function start_err(params)
      params.listen = '127.0.0.1:0'
      local ok, err = pcall(kp.start_proxy_listener, params)
      assert.is_false(ok)
      return tostring(err)
    end
    assert.matches('tls_certificate: requires use_tls = true', start_err { tls_certificate = f('server.pem') })
    assert.matches('tls_certificate: cannot read /nonexistent/cert%.pem',
      start_err { use_tls = true, tls_certificate = '/nonexistent/cert.pem', tls_private_key = f('server.key') })
    assert.matches('tls_private_key: .*' .. f('server.pem'):gsub('%p', '%%%0'),
      start_err { use_tls = true, tls_certificate = f('server.pem'), tls_private_key = f('server.pem') })
    assert.matches('tls_certificate %(file .*server%.pem with tls_private_key%)',
      start_err { use_tls = true, tls_certificate = f('server.pem'), tls_private_key = f('server2.key') })
    assert.matches('tls_private_key: required with tls_certificate',
      start_err { use_tls = true, tls_certificate = f('server.pem') })
    assert.matches("tls_client_auth: 'sometimes' is not one of",
      start_err { use_tls = true, tls_client_auth = 'sometimes' })
    assert.matches('require_password: requires use_tls = true', start_err { require_password = true })
    assert.matches('tls_client_auth: requires use_tls = true', start_err { tls_client_auth = 'optional' })
    assert.matches('tls_client_auth: requires tls_client_ca', start_err { use_tls = true, tls_client_auth = 'optional' })
    assert.matches('tls_client_ca: .*no CERTIFICATE',
      start_err { use_tls = true, tls_client_ca = f('server.key') })
  end)
end)
