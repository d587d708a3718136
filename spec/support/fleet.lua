-- Fleet spec helpers (spec/limits_spec.lua, spec/limits_cluster_spec.lua):
-- a real redis-server, kumoproxy fleet members (spec/support/fleet_proxy.lua
-- in their own interpreters), a SOCKS5 client with RFC 1929, an echo loop.
local H = require 'spec.support.helpers'
local socket = H.socket
local F = {}

function F.free_port()
  local s = assert(socket.bind('127.0.0.1', 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function sh(cmd)
  local out, rc, err = H.sh(cmd)
  return out, rc, err
end

-- A redis-server on a free 127.0.0.1 port, persistence off; restartable on the same port.
function F.start_redis()
  local r = { port = F.free_port() }
  function r.start()
    local f = assert(io.popen(("echo $$; exec redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --logfile /dev/null")
      :format(r.port), 'r'))
    r.pipe = f
    r.pid = tonumber(f:read('*l'))
    H.eventually(function()
      local out = sh { 'redis-cli', '-p', tostring(r.port), 'ping' }
      return out and out:find('PONG')
    end, 10, 'redis-server up')
  end
  function r.stop()
    os.execute('kill ' .. r.pid .. ' 2>/dev/null')
    r.pipe:close()
    H.eventually(function()
      local _, rc = sh { 'redis-cli', '-p', tostring(r.port), 'ping' }
      return rc ~= 0
    end, 10, 'redis-server down')
  end
  r.url = ('redis://127.0.0.1:%d/0'):format(r.port)
  r.proxy_env = { REDIS_URL = r.url }
  r.start()
  return r
end

-- One fleet member: a separate interpreter running fleet_proxy.lua.
function F.start_proxy(redis, env)
  local log = os.tmpname()
  local vars = { 'KUMOPROXY_LOG=warn' }
  local all = {}
  for k, v in pairs(redis.proxy_env) do all[k] = v end
  for k, v in pairs(env) do all[k] = v end
  for k, v in pairs(all) do
    vars[#vars + 1] = ("%s='%s'"):format(k, (v:gsub("'", "'\\''")))
  end
  local f = assert(io.popen(('echo $$; exec env %s %s spec/support/fleet_proxy.lua 2>%s')
    :format(table.concat(vars, ' '), H.lua, log), 'r'))
  local p = { pipe = f, log = log }
  p.pid = tonumber(f:read('*l'))
  local ready = assert(f:read('*l'), 'fleet_proxy.lua did not start')
  p.addr, p.status = ready:match('^READY (%S+) status=(%S+)')
  assert(p.addr, ready)
  -- Idempotent: also called from `finally`, so a failed test leaves no
  -- process behind (closing the pipe waits for it to exit).
  function p.kill(sig)
    if p.killed then return end
    p.killed = true
    os.execute(('kill -%s %d 2>/dev/null'):format(sig or 'TERM', p.pid))
    f:close()
  end
  function p.logs()
    local lf = io.open(log)
    local s = lf and lf:read('*a') or ''
    if lf then lf:close() end
    return s
  end
  function p.get(path)
    local out, rc = sh { 'curl', '-sS', '--max-time', '10', 'http://' .. p.status .. path }
    assert(rc == 0, 'GET ' .. path)
    return out
  end
  -- /proxy/limits?key=K as a table of numbers (fleet-wide values).
  function p.limits(key)
    local body = p.get('/proxy/limits?key=' .. key)
    local t = {}
    for k, v in body:gmatch('"([%w_]+)":(%d+)') do
      t[k] = tonumber(v)
    end
    return t, body
  end
  return p
end

-- SOCKS5 with RFC 1929 from this process (the proxies are other processes, so
-- blocking here is fine). Returns the socket, or nil and the reply code.
function F.socks(proxy, user, host, port)
  local phost, pport = proxy:match('^(.*):(%d+)$')
  local c = assert(socket.tcp())
  c:settimeout(10)
  assert(c:connect(phost, tonumber(pport)))
  c:send('\5\1\2')
  assert(c:receive(2) == '\5\2', 'method selection')
  c:send('\1' .. string.char(#user) .. user .. '\6secret')
  local st = c:receive(2)
  if st ~= '\1\0' then
    c:close()
    return nil, 'auth'
  end
  local a, b, cc, d = host:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
  c:send('\5\1\0\1' .. string.char(tonumber(a), tonumber(b), tonumber(cc), tonumber(d))
    .. string.char(math.floor(port / 256), port % 256))
  local head = c:receive(4)
  local rep = head and head:byte(2)
  if rep ~= 0 then
    c:close()
    return nil, rep
  end
  c:receive(6)
  return c
end

-- Echoes `total` bytes in 8 KB steps; returns bytes echoed back before the end.
function F.echo(c, total)
  local got = 0
  local block = string.rep('x', 8192)
  while got < total do
    local n = math.min(8192, total - got)
    if not c:send(block:sub(1, n)) then break end
    local r = c:receive(n)
    if not r then break end
    got = got + #r
  end
  return got
end


return F
