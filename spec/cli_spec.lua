-- bin/kumoproxy, the command the rock installs, run as a user would: a real
-- interpreter (the one running this spec) with the built module on LUA_CPATH,
-- real curl through it, real signals.
local H = require 'spec.support.helpers'

-- Runs the CLI with `args` (a shell word list), waits for its "serving" log
-- line, runs `body` (bash; $port is the first listening port, $ports all of
-- them), then SIGTERMs it.
-- Returns everything printed and the CLI's exit status as "exit=N".
local function serve(args, body)
  local script = ([[
    coproc P { KUMOPROXY_LOG=info exec "$0" bin/kumoproxy %s 2>&1; }
    pid=$P_PID
    # bash closes the coproc's own fds once it reaps the process: read a copy.
    exec 3<&"${P[0]}"
    port= ports=
    while read -r line <&3; do
      echo "$line"
      case $line in 'kumoproxy: listening on '*) ports="$ports ${line##*:}"; port=${port:-${line##*:}} ;; esac
      # SIGTERM only once run() has its handlers in place (it logs that line).
      case $line in *'kumoproxy.run: serving'*) break ;; esac
    done
    %s
    kill -TERM "$pid" 2>/dev/null
    cat <&3
    wait "$pid"
    echo "exit=$?"
  ]]):format(args, body)
  local out, rc, err = H.sh({ 'bash', '-c', script, H.lua }, { timeout = 60 })
  assert.are.equal(0, rc, out .. err)
  return out
end

local function cli(args)
  local out, rc, err = H.sh(('%s bin/kumoproxy %s'):format(H.lua, args), { timeout = 30 })
  return out, rc, err
end

describe('kumoproxy command', function()
  local origin

  setup(function()
    origin = H.start_origin()
  end)

  teardown(function()
    origin.stop()
  end)

  it('--help lists the options and exits 0; --version prints the module version', function()
    local out, rc = cli('--help')
    assert.are.equal(0, rc)
    for _, opt in ipairs { '--listen', '--no-splice', '--timeout-seconds', '--proxy-config', '--version' } do
      assert.truthy(out:find(opt, 1, true), opt .. ' missing from --help')
    end
    out, rc = cli('--version')
    assert.are.equal(0, rc)
    assert.are.equal(('kumoproxy %s (%s)\n'):format(H.kp.VERSION, jit and jit.version or _VERSION), out)
  end)

  it('exits 2 with a usage error on bad flags, before serving anything', function()
    local cases = {
      { '', 'nothing to serve' },
      { '--bogus', 'unknown option "--bogus"' },
      { '--listen', '--listen needs a value' },
      { '--listen 127.0.0.1:0 --timeout-seconds ten', '--timeout-seconds: "ten" is not a positive whole number' },
      { '--listen 127.0.0.1:0 --timeout-seconds=0', 'is not a positive whole number' },
      { '--listen nowhere', '--listen "nowhere": not an address' },
      { '--listen 127.0.0.1:0 --no-splice=yes', '--no-splice takes no value' },
      { '--listen 127.0.0.1:0 extra', 'unexpected argument "extra"' },
      { '--proxy-config x.lua --listen 127.0.0.1:0', '--listen cannot be combined with --proxy-config' },
      { '--proxy-config x.lua --no-splice', '--no-splice cannot be combined with --proxy-config' },
    }
    for _, c in ipairs(cases) do
      local out, rc, err = cli(c[1])
      assert.are.equal(2, rc, c[1] .. ': ' .. out .. err)
      assert.are.equal('', out, c[1])
      assert.truthy(err:find(c[2], 1, true), ('%s: expected %q in %q'):format(c[1], c[2], err))
      assert.truthy(err:find('kumoproxy --help', 1, true), c[1])
    end
  end)

  it('flags only: serves loopback clients without credentials on every --listen, SIGTERM exits 0', function()
    local out = serve('--listen 127.0.0.1:0 --listen 127.0.0.1:0 --allow-private-destinations', ([[
      for p in $ports; do
        curl -sS -m 10 --socks5-hostname 127.0.0.1:$p http://127.0.0.1:%d/ && echo "curl=ok"
      done
    ]]):format(origin.http))
    local ports = {}
    for p in out:gmatch('kumoproxy: listening on 127%.0%.0%.1:(%d+)') do
      ports[#ports + 1] = p
    end
    assert.are.equal(2, #ports, out)
    assert.are_not.equal(ports[1], ports[2])
    local _, oks = out:gsub('hello from origin\ncurl=ok', '')
    assert.are.equal(2, oks, out)
    assert.matches('stopping %(SIGTERM%)', out)
    assert.matches('exit=0\n$', out)
  end)

  it('flags only: denies private destinations unless --allow-private-destinations', function()
    local out = serve('--listen 127.0.0.1:0', ([[
      curl -sS -m 10 --socks5-hostname 127.0.0.1:$port http://127.0.0.1:%d/ || echo "curl=failed"
    ]]):format(origin.http))
    assert.matches('curl=failed', out)
    assert.is_nil(out:find('hello from origin', 1, true))
    assert.matches('exit=0\n$', out)
  end)

  it('flags only: a client outside --trusted-host gets no unauthenticated access', function()
    local out = serve('--listen 127.0.0.1:0 --allow-private-destinations --trusted-host 192.0.2.0/24', ([[
      curl -sS -m 10 --socks5-hostname 127.0.0.1:$port http://127.0.0.1:%d/ || echo "curl=failed"
    ]]):format(origin.http))
    assert.matches('curl=failed', out)
    assert.is_nil(out:find('hello from origin', 1, true))
    assert.matches('exit=0\n$', out)
  end)

  it('--timeout-seconds bounds an idle handshake; --no-splice still relays', function()
    local out = serve('--listen 127.0.0.1:0 --timeout-seconds 1 --no-splice --allow-private-destinations', ([[
      # A client that connects and says nothing is closed after about 1 s.
      start=$(date +%%s%%N)
      python3 -c 'import socket,sys; s=socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.settimeout(20); print("idle-read=%%r" %% s.recv(10))' "$port"
      echo "idle-ms=$(( ($(date +%%s%%N) - start) / 1000000 ))"
      curl -sS -m 10 --socks5-hostname 127.0.0.1:$port http://127.0.0.1:%d/bytes/1000000 | wc -c
    ]]):format(origin.http))
    assert.matches("idle%-read=b''", out)
    local ms = tonumber(out:match('idle%-ms=(%d+)'))
    assert.truthy(ms and ms >= 900 and ms < 10000, out)
    assert.matches('\n%s*1000000\n', out)
    assert.matches('exit=0\n$', out)
  end)

  it("README's ten-line example: found through LUA_CPATH, prints its address through a pipe, serves", function()
    local readme = io.open('README.md'):read('*a')
    local code = readme:match('## Ten lines.-```lua\n(.-)```')
    assert.truthy(code, 'no Lua block under "## Ten lines" in README.md')
    assert.truthy(readme:match("## Ten lines.-LUA_CPATH='build/lua5%.4/%?%.so;;'"), 'README no longer says how require finds the module')
    -- The one change: a free port instead of 1080, so specs can run in parallel.
    local n
    code, n = code:gsub("'127%.0%.0%.1:1080'", "'127.0.0.1:0'")
    assert.are.equal(1, n)
    local path = os.tmpname()
    local f = assert(io.open(path, 'w'))
    f:write(code)
    f:close()
    finally(function() os.remove(path) end)
    -- stdout is a pipe here: without a flush the address line would only come at exit.
    local script = ([[
      coproc P { exec "$0" %s; }
      pid=$P_PID
      exec 3<&"${P[0]}"
      read -r line <&3; echo "$line"
      port=${line##*:}
      curl -sS -m 10 --socks5-hostname alice:secret@127.0.0.1:$port http://127.0.0.1:%d/ && echo "curl=ok"
      kill -TERM "$pid"; wait "$pid"; echo "exit=$?"
    ]]):format(path, origin.http)
    local out, rc, err = H.sh({ 'bash', '-c', script, H.lua }, { timeout = 60 })
    assert.are.equal(0, rc, out .. err)
    assert.matches('^proxy listener on 127%.0%.0%.1:%d+\nhello from origin\ncurl=ok\nexit=0\n$', out)
  end)

  describe('--proxy-config', function()
    local dir
    setup(function()
      dir = os.tmpname()
      os.remove(dir)
      assert(os.execute('mkdir -p ' .. dir) )
    end)
    teardown(function()
      os.execute('rm -rf ' .. dir)
    end)

    local function write(name, text)
      local f = assert(io.open(dir .. '/' .. name, 'w'))
      f:write(text)
      f:close()
      return dir .. '/' .. name
    end

    it('runs the policy file, then serves its listeners with its handlers', function()
      local policy = write('policy.lua', [[
        local kumoproxy = require 'kumoproxy'
        kumoproxy.on('proxy_server_auth_rfc1929', function(user, password)
          return user == 'alice' and password == 'secret'
        end)
        kumoproxy.start_proxy_listener {
          listen = '127.0.0.1:0', require_auth = true, allow_private_destinations = true,
        }
      ]])
      local out = serve('--proxy-config ' .. policy, ([[
        curl -sS -m 10 --socks5-hostname alice:secret@127.0.0.1:$port http://127.0.0.1:%d/ && echo "alice=ok"
        curl -sS -m 10 --socks5-hostname alice:wrong@127.0.0.1:$port http://127.0.0.1:%d/ || echo "wrong=failed"
        curl -sS -m 10 --socks5-hostname 127.0.0.1:$port http://127.0.0.1:%d/ || echo "anonymous=failed"
      ]]):format(origin.http, origin.http, origin.http))
      assert.matches('hello from origin\nalice=ok', out)
      assert.matches('wrong=failed', out)
      assert.matches('anonymous=failed', out)
      assert.matches('exit=0\n$', out)
    end)

    it('exits 1 naming the file when it fails or starts nothing', function()
      local bad = write('bad.lua', 'error("no such policy")\n')
      local out, rc, err = cli('--proxy-config ' .. bad)
      assert.are.equal(1, rc, out .. err)
      assert.matches('kumoproxy: %-%-proxy%-config .*bad%.lua: .*no such policy', err)
      local empty = write('empty.lua', '-- nothing\n')
      out, rc, err = cli('--proxy-config ' .. empty)
      assert.are.equal(1, rc, out .. err)
      assert.matches('started no listener', err)
      out, rc, err = cli('--proxy-config ' .. dir .. '/missing.lua')
      assert.are.equal(1, rc, out .. err)
      assert.matches('cannot open', err)
    end)
  end)
end)
