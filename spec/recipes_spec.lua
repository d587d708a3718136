-- Certificate recipes from the docs, run exactly as written (extracted from the
-- Markdown), then used the way the docs say: by a TLS listener, with the
-- module's own egress source and with curl as clients.
local H = require 'spec.support.helpers'
local kp = H.kp

local function read(path)
  local f = assert(io.open(path))
  local s = f:read('*a')
  f:close()
  return s
end

-- The ```sh blocks of a docs page that contain `needle`.
local function sh_blocks(page, needle)
  local blocks = {}
  for body in read(page):gmatch('```sh\n(.-)```') do
    if body:find(needle, 1, true) then
      blocks[#blocks + 1] = body
    end
  end
  return blocks
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute('mkdir -p ' .. d))
  return d
end

local function run_in(dir, script)
  local out, rc, err = H.sh({ 'bash', '-euo', 'pipefail', '-c', 'cd "$1" && eval "$2"', 'recipe', dir, script })
  assert.are.equal(0, rc, 'recipe failed:\n' .. script .. '\n' .. tostring(out) .. tostring(err))
end

describe('docs/tls.md certificate recipe', function()
  local origin, dir

  setup(function()
    origin = H.start_origin()
    dir = tmpdir()
  end)

  teardown(function()
    origin.stop()
    os.execute('rm -rf ' .. dir)
  end)

  local function listener(d)
    return kp.start_proxy_listener {
      listen = '127.0.0.1:0', use_tls = true, protocols = { 'socks5', 'http' },
      tls_certificate = d .. '/proxy.pem', tls_private_key = d .. '/proxy.key',
      allow_private_destinations = true,
    }
  end

  local function egress_echo(l, d)
    local src = kp.make_egress_source {
      name = 'recipe-' .. l:local_addr(), socks5_proxy_server = l:local_addr(), socks5_proxy_tls = true,
      socks5_proxy_tls_ca = d .. '/proxy.pem', socks5_proxy_tls_server_name = 'proxy.example.com',
    }
    local conn, err = src:connect('127.0.0.1', origin.echo)
    if not conn then
      return nil, err
    end
    conn:settimeout(10)
    conn:send('through the recipe\n')
    local line, rerr = conn:receive('*l')
    conn:close()
    return line, rerr
  end

  it('makes a certificate the egress source and curl accept', function()
    local blocks = sh_blocks('docs/tls.md', 'openssl req -x509')
    assert.are.equal(1, #blocks, 'expected one `openssl req -x509` recipe in docs/tls.md')
    run_in(dir, blocks[1])
    local l = listener(dir)
    finally(function() l:close() end) -- (busted keeps one finally per test)

    local line, err = egress_echo(l, dir)
    assert.are.equal('through the recipe', line, err)

    local port = l:local_addr():match(':(%d+)$')
    local out, rc, cerr = H.sh(('curl -sS -m 10 --proxytunnel --proxy https://proxy.example.com:%s --proxy-cacert %s/proxy.pem '
      .. '--resolve proxy.example.com:%s:127.0.0.1 http://127.0.0.1:%d/'):format(port, dir, port, origin.http))
    assert.are.equal(0, rc, cerr)
    assert.are.equal('hello from origin\n', out)
  end)

  it('(the recipe without CA:FALSE is what the egress source refuses)', function()
    -- OpenSSL's default `req -x509` certificate is a CA; rustls will not take a
    -- CA certificate as the server's own. Keeps the fix above honest.
    local d, l = tmpdir(), nil
    finally(function()
      if l then l:close() end
      os.execute('rm -rf ' .. d)
    end)
    run_in(d, [[
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -keyout proxy.key -out proxy.pem -subj /CN=proxy.example.com \
  -addext subjectAltName=DNS:proxy.example.com 2>/dev/null
]])
    l = listener(d)
    local line, err = egress_echo(l, d)
    assert.is_nil(line)
    assert.matches('CaUsedAsEndEntity', err)
  end)
end)

describe('docs/start_proxy_listener/tls_client_ca.md client certificate recipe', function()
  it('issues a certificate a mutual-TLS listener accepts from curl, with its name as identity', function()
    local origin = H.start_origin()
    local pki = H.make_pki()
    local d, l = tmpdir(), nil
    -- busted keeps only the last finally of a test: one for everything.
    finally(function()
      kp.on('proxy_server_request', nil)
      if l then l:close() end
      origin.stop()
      H.remove_pki(pki)
      os.execute('rm -rf ' .. d)
    end)
    -- The recipe starts from "a CA in ca.pem/ca.key".
    assert(os.execute(('cp %s/ca1.pem %s/ca.pem && cp %s/ca1.key %s/ca.key'):format(pki, d, pki, d)))
    local blocks = sh_blocks('docs/start_proxy_listener/tls_client_ca.md', 'openssl x509 -req')
    assert.are.equal(1, #blocks)
    run_in(d, blocks[1])

    local seen
    kp.on('proxy_server_request', function(request, auth_info)
      local id = auth_info.identities[1]
      seen = id.identity .. '/' .. id.context
      return true
    end)
    l = kp.start_proxy_listener {
      listen = '127.0.0.1:0', use_tls = true, protocols = { 'socks5', 'http' },
      tls_certificate = pki .. '/server.pem', tls_private_key = pki .. '/server.key',
      tls_client_ca = d .. '/ca.pem', trusted_hosts = {}, allow_private_destinations = true,
    }
    local port = l:local_addr():match(':(%d+)$')
    local out, rc, err = H.sh(('curl -sS -m 10 --proxytunnel --proxy https://localhost:%s --proxy-cacert %s/ca1.pem '
      .. '--proxy-cert %s/alice.pem --proxy-key %s/alice.key http://127.0.0.1:%d/'):format(port, pki, d, d, origin.http))
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\n', out)
    assert.are.equal('alice/TlsClientCertificate', seen)
  end)
end)
