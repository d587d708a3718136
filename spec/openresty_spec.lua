-- kumoproxy inside real nginx workers (Debian's libnginx-mod-http-lua, LuaJIT),
-- pumped by lua/kumoproxy/openresty.lua. The spec process only drives nginx from
-- outside, so it runs under either interpreter; nginx loads build/luajit/.
local H = require 'spec.support.helpers'

local LUA_MODULE = '/usr/lib/nginx/modules/ngx_http_lua_module.so'
local NDK_MODULE = '/usr/lib/nginx/modules/ndk_http_module.so'

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local function free_port()
  local s = assert(H.socket.bind('127.0.0.1', 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function read(path)
  local f = io.open(path)
  if not f then return '' end
  local s = f:read('*a')
  f:close()
  return s
end

local function pid_alive(pid)
  return os.execute('kill -0 ' .. pid .. ' 2>/dev/null') == true
    or os.execute('kill -0 ' .. pid .. ' 2>/dev/null') == 0
end

local function nginx_conf(o)
  return ([[
user nobody nogroup;
worker_processes 2;
daemon on;
master_process on;
pid %s/nginx.pid;
error_log %s/error.log info;
load_module %s;
load_module %s;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %s/tmp;
  lua_package_path '%s/lua/?.lua;;';
  lua_package_cpath '%s/build/luajit/?.so;;';
  init_by_lua_block {
    kumoproxy = require 'kumoproxy'
    -- Harmless in the master: registering a handler starts nothing.
    kumoproxy.on('proxy_server_auth_rfc1929', function() return false end)
    local ok, err = pcall(kumoproxy.start_proxy_listener, { listen = '127.0.0.1:0' })
    MASTER_LISTENER_ERROR = tostring(err)
    -- Start the runtime in the master on purpose: forked workers must build
    -- their own (the master's threads do not exist in them).
    local out, code = kumoproxy.run_command('echo master-runtime')
    assert(code == 0 and out == 'master-runtime\n', 'run_command in master failed')
    assert(kumoproxy.runtime_stats().runtime_started)
  }
  init_worker_by_lua_block {
    ngx.log(ngx.NOTICE, 'master listener attempt: ', MASTER_LISTENER_ERROR)
    kumoproxy.on('proxy_server_auth_rfc1929', function(user, pass, meta)
      -- A cosocket round trip to this nginx's own /auth location.
      local sock = ngx.socket.tcp()
      sock:settimeout(5000)
      assert(sock:connect('127.0.0.1', %d))
      sock:send('GET /auth?user=' .. ngx.escape_uri(user) .. '&pass=' .. ngx.escape_uri(pass)
        .. ' HTTP/1.0\r\nHost: auth\r\n\r\n')
      local status = sock:receive('*l')
      sock:close()
      local ok = status and status:match(' 200 ') ~= nil
      ngx.log(ngx.NOTICE, 'kumoproxy auth user=', user, ' ok=', tostring(ok), ' worker=', ngx.worker.pid())
      return ok
    end)
    kumoproxy.start_proxy_listener {
      listen = '127.0.0.1:%d', reuse_port = true, require_auth = true,%s
    }
    require('kumoproxy.openresty').start { socket_dir = '%s/sock', drain_timeout = 5 }
  }
  server {
    listen 127.0.0.1:%d;
    location = /auth {
      content_by_lua_block {
        if ngx.var.arg_user == 'alice' and ngx.var.arg_pass == 'secret' then
          ngx.say('yes')
        else
          ngx.exit(403)
        end
      }
    }
    location = /hello { return 200 'hello from nginx\n'; }
  }
}
]]):format(o.prefix, o.prefix, NDK_MODULE, LUA_MODULE, o.prefix, o.repo, o.repo,
    o.http, o.socks, o.extra or '', o.prefix, o.http)
end

local available = exists(LUA_MODULE) and exists('/usr/sbin/nginx') and exists('build/luajit/kumoproxy.so')

describe('OpenResty embedding (real nginx, 2 workers)', function()
  if not available then
    it('needs nginx, libnginx-mod-http-lua and build/luajit (bash .ci/setup installs them)', function()
      error('nginx or its lua module is missing')
    end)
    return
  end

  local origin, o
  local function nginx(args)
    return H.sh(('/usr/sbin/nginx -p %s -c %s/nginx.conf %s'):format(o.prefix, o.prefix, args or ''))
  end
  local function master_pid()
    return tonumber(read(o.prefix .. '/nginx.pid'):match('%d+'))
  end
  local function curl(user, pass, path)
    return H.sh(('curl -sS -m 10 --proxy socks5h://%s:%s@127.0.0.1:%d http://127.0.0.1:%d%s')
      :format(user, pass, o.socks, origin.http, path or '/'))
  end

  setup(function()
    origin = H.start_origin()
    local repo = H.sh('pwd'):gsub('%s+$', '')
    o = { repo = repo, socks = free_port(), http = free_port() }
    o.prefix = os.tmpname()
    os.remove(o.prefix)
    assert(os.execute(('mkdir -p %s/tmp %s/sock && chmod 1777 %s/sock && chmod 755 %s'):format(o.prefix, o.prefix, o.prefix, o.prefix)))
    -- A stale socket from a worker that no longer exists must be cleaned up.
    -- (It belongs to the worker user, as a dead worker's socket would.)
    assert(io.open(o.prefix .. '/sock/kumoproxy-999999.sock', 'w')):close()
    assert(os.execute('chown nobody:nogroup ' .. o.prefix .. '/sock/kumoproxy-999999.sock'))
    -- Listeners deny private destinations by default once the permissions work
    -- is in; this spec's origin is on loopback.
    local probe = { listen = '127.0.0.1:0', allow_private_destinations = true }
    local ok, l = pcall(H.kp.start_proxy_listener, probe)
    if ok then
      l:close()
      o.extra = ' allow_private_destinations = true,'
    end
    local f = assert(io.open(o.prefix .. '/nginx.conf', 'w'))
    f:write(nginx_conf(o))
    f:close()
    local out, rc, err
    out, rc, err = nginx()
    assert(rc == 0, 'nginx failed to start: ' .. tostring(out) .. tostring(err) .. read(o.prefix .. '/error.log'))
    H.eventually(function()
      local _, code = curl('alice', 'secret')
      return code == 0
    end, 20, 'nginx serving SOCKS5')
  end)

  teardown(function()
    local pid = master_pid()
    if pid and pid_alive(pid) then
      os.execute('kill -TERM ' .. pid)
    end
    origin.stop()
    os.execute('rm -rf ' .. o.prefix)
  end)

  it('refuses a listener in the master and serves from workers', function()
    local log = read(o.prefix .. '/error.log')
    assert.matches('start listeners in init_worker_by_lua', log)
    local out, rc, err = curl('alice', 'secret')
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\n', out)
  end)

  it('leaves the error log empty while the proxy is quiet', function()
    -- Each idle worker waits on its wake socket; that wait must not log (it
    -- once logged "lua tcp socket read timed out" every second per worker).
    -- The log level here is info, so any line at all counts.
    local quiet_seconds = 4 -- four exit checks per worker
    local before = read(o.prefix .. '/error.log')
    H.kp.run_until(quiet_seconds)
    local added = read(o.prefix .. '/error.log'):sub(#before + 1)
    local _, lines = added:gsub('\n', '')
    assert.are.equal(0, lines, added)
    -- And the pump still answers after the quiet spell.
    local out, rc, err = curl('alice', 'secret')
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\n', out)
  end)

  it('checks credentials with a cosocket round trip and refuses a wrong password', function()
    local _, rc = curl('alice', 'wrong')
    assert.are_not.equal(0, rc)
    local log = read(o.prefix .. '/error.log')
    assert.matches('kumoproxy auth user=alice ok=false', log)
    assert.matches('kumoproxy auth user=alice ok=true', log)
  end)

  it('removes stale wake sockets and creates them as the worker user', function()
    assert.is_false(exists(o.prefix .. '/sock/kumoproxy-999999.sock'))
    local listing = H.sh('ls -l ' .. o.prefix .. '/sock')
    assert.matches('nobody', listing)
    assert.matches('kumoproxy%-%d+%.sock', listing)
  end)

  it('both workers serve', function()
    H.eventually(function()
      curl('alice', 'secret')
      local workers = {}
      for pid in read(o.prefix .. '/error.log'):gmatch('ok=true worker=(%d+)') do
        workers[pid] = true
      end
      local n = 0
      for _ in pairs(workers) do n = n + 1 end
      return n >= 2
    end, 60, 'auth decisions from two different workers')
  end)

  it('keeps answering plain HTTP while 50 tunnels transfer', function()
    local out, rc = H.sh(('python3 spec/support/tunnels.py --proxy 127.0.0.1:%d --user alice --password secret --target 127.0.0.1:%d -n 50 --probe http://127.0.0.1:%d/hello')
      :format(o.socks, origin.echo, o.http), { timeout = 120 })
    assert.are.equal(0, rc, out)
    assert.matches('tunnels=50 ok=50', out)
    assert.matches('probe=200 hello from nginx', out)
  end)

  it('keeps serving across a HUP reload, and exits on QUIT', function()
    local before = H.sh('pgrep -P ' .. master_pid()):gsub('%s+$', '')
    assert.are.equal(0, select(2, nginx('-s reload')))
    -- New workers replace the old ones.
    H.eventually(function()
      local now = H.sh('pgrep -P ' .. master_pid()):gsub('%s+$', '')
      for pid in before:gmatch('%d+') do
        if now:find(pid, 1, true) then return false end
      end
      return now ~= ''
    end, 30, 'old workers replaced')
    local out, rc, err = curl('alice', 'secret')
    assert.are.equal(0, rc, err)
    assert.are.equal('hello from origin\n', out)

    local pid = master_pid()
    assert.are.equal(0, select(2, nginx('-s quit')))
    H.eventually(function() return not pid_alive(pid) end, 30, 'nginx exited')
  end)
end)
