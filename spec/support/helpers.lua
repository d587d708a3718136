-- Shared helpers for kumoproxy specs. Real processes, real sockets, no sleeps:
-- every wait is on a condition (a READY line, a predicate via run_until, a
-- process exit via run_command).
local kp = require 'kumoproxy'
local socket = require 'socket'

local H = { kp = kp, socket = socket }

-- The interpreter running the specs, for child processes (Debian names: lua5.4, lua5.3...).
H.lua = jit and 'luajit' or ('lua' .. _VERSION:match('%d+%.%d+'))

function H.pid()
  local f = assert(io.open('/proc/self/stat'))
  local s = f:read('*l')
  f:close()
  return tonumber(s:match('^(%d+)'))
end

-- Starts spec/support/origin.py (HTTP, echo, peer, echo6 servers on 127.0.0.1:0).
function H.start_origin()
  local f = assert(io.popen(('exec python3 spec/support/origin.py --parent-pid %d --max-seconds 600'):format(H.pid()), 'r'))
  local line = assert(f:read('*l'), 'origin.py did not start')
  local o = { pipe = f }
  for k, v in line:gmatch('(%w+)=(%d+)') do
    o[k] = tonumber(v)
  end
  function o.stop()
    os.execute('kill ' .. o.pid .. ' 2>/dev/null')
    f:close()
  end
  return o
end

-- Runs a shell command while pumping kumoproxy events; returns stdout, code, stderr.
function H.sh(cmd, opts)
  opts = opts or {}
  opts.timeout = opts.timeout or 60
  return kp.run_command(cmd, opts)
end

function H.socks_py(args)
  return H.sh('python3 spec/support/socks.py ' .. args)
end

-- Number of open fds of this process.
function H.fd_count()
  local p = io.popen('ls /proc/' .. H.pid() .. '/fd | wc -l')
  local n = tonumber(p:read('*l'))
  p:close()
  return n
end

-- Number of open sockets of this process (session sockets; pooled pipes excluded).
function H.socket_count()
  collectgarbage()
  collectgarbage()
  local p = io.popen('ls -l /proc/' .. H.pid() .. '/fd | grep -c socket:')
  local n = tonumber(p:read('*l'))
  p:close()
  return n
end

-- Waits until no listener of this process has a session in flight.
function H.quiesce()
  H.eventually(function()
    for _, l in ipairs(kp.listeners()) do
      if l:stats().active > 0 then return false end
    end
    return true
  end, 10, 'all sessions finished')
end

function H.thread_count()

  local f = assert(io.open('/proc/self/status'))
  local s = f:read('*a')
  f:close()
  return tonumber(s:match('Threads:%s*(%d+)'))
end

-- Waits (pumping events) until fn() is truthy; fails the test after `timeout` s.
function H.eventually(fn, timeout, what)
  local v, err = kp.run_until(fn, timeout or 10)
  assert(v, (what or 'condition') .. ' not reached: ' .. tostring(err))
  return v
end

-- A plain LuaSocket SOCKS5 client for cases needing no Lua decision (NOAUTH).
-- Returns the connected socket and the reply's bound address, or nil, reply code.
-- opts: timeout (seconds), source (a local IP to connect from).
function H.socks_connect(proxy, host, port, opts)
  opts = opts or {}
  local phost, pport = proxy:match('^(.*):(%d+)$')
  local c = assert(socket.tcp())
  c:settimeout(opts.timeout or 5)
  if opts.source then
    -- Another loopback address: another trusted host, so another limit key.
    assert(c:bind(opts.source, 0))
  end
  local ok, err = c:connect(phost, tonumber(pport))
  if not ok then
    return nil, err
  end
  c:send('\5\1\0')
  local sel, err2 = c:receive(2)
  if sel ~= '\5\0' then
    c:close()
    return nil, sel and ('method ' .. sel:byte(2)) or err2
  end
  local a, b, cc, d = host:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
  local req
  if a then
    req = '\5\1\0\1' .. string.char(tonumber(a), tonumber(b), tonumber(cc), tonumber(d))
  else
    req = '\5\1\0\3' .. string.char(#host) .. host
  end
  req = req .. string.char(math.floor(port / 256), port % 256)
  c:send(req)
  local head = c:receive(4)
  if not head then
    c:close()
    return nil, 'no reply'
  end
  local rest = c:receive(head:byte(4) == 4 and 18 or 6)
  if head:byte(2) ~= 0 then
    c:close()
    return nil, head:byte(2)
  end
  return c, rest
end

-- Hex encode/decode for raw protocol tests.
function H.hex(s)
  return (s:gsub('.', function(ch) return ('%02x'):format(ch:byte()) end))
end

-- Sends raw bytes to the proxy; returns hex of the reply and 'EOF' or 'TIMEOUT'.
function H.raw(proxy, hexbytes, read_timeout)
  local out = H.socks_py(('raw --proxy %s --hex %s --read-timeout %s'):format(proxy, hexbytes, read_timeout or 3))
  local lines = {}
  for l in out:gmatch('[^\n]+') do
    lines[#lines + 1] = l
  end
  local last = table.remove(lines)
  return table.concat(lines), last
end

-- Throwaway test PKI (spec/support/make_certs.sh) in a fresh temp dir; returns
-- the dir. Remove it with H.remove_pki(dir).
function H.make_pki()
  local dir = os.tmpname()
  os.remove(dir)
  local _, rc, err = H.sh('bash spec/support/make_certs.sh ' .. dir)
  assert(rc == 0, err)
  return dir
end

function H.remove_pki(dir)
  os.execute('rm -rf ' .. dir)
end

-- A fresh private (0700) temp dir; logrotate refuses world-writable parents.
function H.tempdir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute('mkdir -m 700 ' .. dir))
  return dir
end

-- Rotates `path` with the real logrotate, as cron would but forced (-f), with
-- its own state file in `dir`: rename to path.1 (older ones shift), then the
-- postrotate script sends SIGUSR1 to `pid`. `extra` adds directives.
-- Returns stdout, exit code, stderr.
function H.logrotate(dir, path, pid, extra)
  local conf = dir .. '/logrotate.conf'
  local f = assert(io.open(conf, 'w'))
  f:write(('%s {\n  rotate 100\n  missingok\n  nocompress\n  nocreate\n%s  postrotate\n    kill -USR1 %d\n  endscript\n}\n')
    :format(path, extra or '', pid))
  f:close()
  return H.sh(('logrotate -f -s %s/logrotate.state %s'):format(dir, conf))
end

function H.listener(params)
  params.listen = params.listen or '127.0.0.1:0'
  return kp.start_proxy_listener(params)
end

return H
