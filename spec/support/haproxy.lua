-- A real HAProxy (Debian's haproxy) for PROXY protocol specs: started on free
-- 127.0.0.1 ports with a generated configuration, waited for (every frontend
-- accepting, with a deadline), and stopped (its pid gone, with a deadline).
--
--   local HA = require 'spec.support.haproxy'
--   local ha = HA.start {
--     -- name = { kind, ... }; each gets a free port: ha.ports.name
--     v2     = { 'send',   to = '127.0.0.1:1080', proxy = 'v2' },  -- send-proxy-v2
--     v1     = { 'send',   to = '127.0.0.1:1080', proxy = 'v1' },  -- send-proxy
--     plain  = { 'send',   to = '127.0.0.1:1080' },                -- no header
--     check  = { 'send',   to = '127.0.0.1:1080', proxy = 'v2',    -- + TLVs
--                tlvs = 'unique-id,authority' },
--     seen   = { 'report' },   -- accept-proxy; HTTP 200 body "src:port dst:port\n"
--     egress = { 'egress' },   -- accept-proxy; connects to the header's
--                              -- destination FROM the header's source address
--   }
--   ... ha.ports.v2 ...
--   ha.stop()
--
-- 'send' is a TCP frontend forwarding to `to` with the header HAProxy's
-- `send-proxy[-v2]` writes (naming the client as HAProxy saw it).
-- 'report' is an HTTP frontend with `accept-proxy`: it answers every request
-- with the source and destination taken from the PROXY header it received
-- (HAProxy's own `src`/`dst` fetches), so a spec sees what an origin saw.
-- 'egress' is KumoMTA's HAProxy egress pattern: `accept-proxy`, then a
-- transparent server (0.0.0.0:0: connect to the header's destination) with
-- `source 0.0.0.0 usesrc clientip` (bind to the header's source address).
local socket = require 'socket'

local HA = {}

HA.bin = '/usr/sbin/haproxy'

function HA.available()
  local f = io.open(HA.bin, 'r')
  if f then f:close() end
  return f ~= nil
end

function HA.free_port()
  local s = assert(socket.bind('127.0.0.1', 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function read(path)
  local f = io.open(path, 'r')
  if not f then return '' end
  local s = f:read('*a')
  f:close()
  return s
end

-- Alive and not a zombie (the spec's shell is gone; whoever reaps may be slow).
local function pid_alive(pid)
  local st = read('/proc/' .. pid .. '/stat')
  return st ~= '' and not st:match('^%d+ %b() Z')
end

-- Polls fn() every 20 ms until truthy or `timeout` seconds pass (no kumoproxy
-- events are pending while HAProxy starts or stops, so a plain wait is fine).
local function wait_for(fn, timeout, what)
  local deadline = socket.gettime() + timeout
  while socket.gettime() < deadline do
    local v = fn()
    if v then return v end
    socket.select(nil, nil, 0.02)
  end
  error(what .. ' not reached within ' .. timeout .. ' s', 2)
end

function HA.config(frontends, dir)
  local out = {
    'global',
    '  maxconn 512',
    '  nbthread 1',
    -- Errors (bad PROXY headers...) to a file the spec can read.
    '  log stderr format short local0 notice',
    'defaults',
    '  log global',
    '  timeout connect 5s',
    '  timeout client 30s',
    '  timeout server 30s',
    '',
  }
  local names = {}
  for name in pairs(frontends) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local f = frontends[name]
    local bind = ('127.0.0.1:%d'):format(f.port)
    local kind = f[1]
    if kind == 'send' then
      local opt = ({ v1 = ' send-proxy', v2 = ' send-proxy-v2' })[f.proxy or ''] or ''
      if f.tlvs then opt = opt .. ' proxy-v2-options ' .. f.tlvs end
      out[#out + 1] = ('listen %s\n  mode tcp\n  bind %s\n  unique-id-format %%ci:%%cp\n  server s %s%s\n'):format(
        name, bind, assert(f.to, name .. '.to'), opt)
    elseif kind == 'report' then
      out[#out + 1] = table.concat({
        'frontend ' .. name,
        '  mode http',
        '  bind ' .. bind .. ' accept-proxy',
        '  http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port] %[dst]:%[dst_port]\\n"',
        '',
      }, '\n')
    elseif kind == 'egress' then
      out[#out + 1] = table.concat({
        'listen ' .. name,
        '  mode tcp',
        '  bind ' .. bind .. ' accept-proxy',
        '  source 0.0.0.0 usesrc clientip',
        '  server s 0.0.0.0:0',
        '',
      }, '\n')
    else
      error('unknown HAProxy frontend kind ' .. tostring(kind))
    end
  end
  return table.concat(out, '\n') .. '\n'
end

-- Starts HAProxy with `frontends` (see the top of this file); returns
-- { ports = {name=port}, dir, pid, stop(), log() }.
function HA.start(frontends, opts)
  opts = opts or {}
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute('mkdir -p ' .. dir))
  local ports = {}
  for name, f in pairs(frontends) do
    f.port = f.port or HA.free_port()
    ports[name] = f.port
  end
  local cfg = dir .. '/haproxy.cfg'
  local fh = assert(io.open(cfg, 'w'))
  fh:write(HA.config(frontends, dir))
  fh:close()
  local log = dir .. '/haproxy.log'
  -- Foreground (-db) so its log goes to stderr, i.e. the log file; under
  -- `timeout` so a spec process that dies cannot leave it running for long.
  local pidfile = dir .. '/haproxy.pid'
  local cmd = ('(timeout -k 5 %d %s -db -f %s >%s 2>&1 & echo $! >%s)'):format(
    opts.max_seconds or 600, HA.bin, cfg, log, pidfile)
  local ok = os.execute(cmd)
  assert(ok == true or ok == 0, 'could not run haproxy')
  local ha = { ports = ports, dir = dir, config = cfg }
  ha.pid = wait_for(function()
    return tonumber(read(pidfile):match('%d+'))
  end, opts.timeout or 10, 'haproxy pid file')
  -- Ready when every frontend accepts a connection.
  for name, port in pairs(ports) do
    wait_for(function()
      local c = socket.tcp()
      c:settimeout(0.5)
      local okc = c:connect('127.0.0.1', port)
      c:close()
      if not okc then
        -- A config error ends HAProxy at once: fail with its own words.
        assert(pid_alive(ha.pid), 'haproxy exited: ' .. read(log) .. '\n' .. read(cfg))
      end
      return okc
    end, opts.timeout or 10, 'haproxy frontend ' .. name .. ' accepting')
  end
  function ha.log()
    return read(log)
  end
  function ha.stop()
    os.execute(('kill %d 2>/dev/null'):format(ha.pid))
    wait_for(function() return not pid_alive(ha.pid) end, 10, 'haproxy exit')
    os.execute('rm -rf ' .. dir)
  end
  return ha
end

return HA
