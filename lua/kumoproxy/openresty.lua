-- kumoproxy's event pump for OpenResty / nginx workers.
--
--   init_by_lua_block        { kumoproxy = require 'kumoproxy' }   -- starts nothing
--   init_worker_by_lua_block {
--     kumoproxy.on('proxy_server_auth_rfc1929', function(user, pass, meta) ... end)
--     kumoproxy.start_proxy_listener { listen = '0.0.0.0:1080', reuse_port = true }
--     require('kumoproxy.openresty').start()
--   }
--
-- How it works: the module's runtime writes a byte to a per-worker unix socket
-- whenever decisions are queued. A timer-spawned light thread waits on that socket
-- with a cosocket, so an idle worker uses no CPU and nginx's event loop never
-- blocks. Each batch of events runs in its own timer, one light thread per event:
-- a handler may use cosockets (ngx.socket.tcp, lua-resty-http, ...) and delays only
-- its own decision; answers go back in any order.
--
-- When the worker exits (nginx -s reload / quit), the worker's listeners close and
-- sessions get `drain_timeout` seconds to finish before the worker is let go.
local kumoproxy = require 'kumoproxy'

local ngx = ngx
local M = {}

local started = false

local function run_one(ev)
  local name = ev:name()
  local handler = kumoproxy.handler(name)
  if not handler then
    return ev:fail('no handler registered for ' .. name)
  end
  -- LuaJIT lets a handler yield (cosockets) across this pcall.
  local ok, res = pcall(handler, ev:args())
  if ok then
    ev:reply(res)
  else
    ev:fail(res)
  end
end

local function run_batch(premature, events)
  if premature then
    -- nginx is shutting down before the timer ran: deny rather than wait.
    for i = 1, #events do
      events[i]:fail('nginx worker exiting')
    end
    return
  end
  local threads = {}
  for i = 1, #events do
    local th, err = ngx.thread.spawn(run_one, events[i])
    if th then
      threads[#threads + 1] = th
    else
      ngx.log(ngx.ERR, 'kumoproxy: cannot spawn a handler thread: ', err)
      events[i]:fail('cannot spawn a handler thread: ' .. tostring(err))
    end
  end
  -- Waiting reaps every thread, so this timer leaves nothing behind.
  for i = 1, #threads do
    ngx.thread.wait(threads[i])
  end
end

local function dispatch()
  local events = kumoproxy.take_events()
  if #events == 0 then
    return
  end
  local ok, err = ngx.timer.at(0, run_batch, events)
  if not ok then
    -- Too many running timers (lua_max_running_timers): fail closed now.
    ngx.log(ngx.ERR, 'kumoproxy: cannot schedule ', #events, ' decision(s): ', err)
    for i = 1, #events do
      events[i]:fail('cannot schedule handler: ' .. tostring(err))
    end
  end
end

local function active_sessions()
  local n = 0
  for _, l in ipairs(kumoproxy.listeners()) do
    n = n + l:stats().active
  end
  return n
end

local reader

-- Worker exiting: stop accepting, keep answering decisions while sessions drain.
local function drain(opts)
  for _, l in ipairs(kumoproxy.listeners()) do
    l:close()
  end
  local deadline = ngx.now() + opts.drain_timeout
  while active_sessions() > 0 and ngx.now() < deadline do
    dispatch()
    ngx.sleep(0.05)
  end
  dispatch()
end

-- Waits on the wake socket and dispatches; runs as a light thread of the
-- reader timer. Returns why it stopped reading ('closed', ...).
local function wait_for_wakeups(sock)
  while true do
    local data, err = sock:receiveany(4096)
    if not data then
      return err
    end
    dispatch()
  end
end

function reader(premature, opts)
  if premature then
    -- The worker exits before this (re)scheduled reader ran: stop accepting and
    -- answer what is queued; premature timers must not wait.
    for _, l in ipairs(kumoproxy.listeners()) do
      l:close()
    end
    return dispatch()
  end
  local sock = ngx.socket.tcp()
  local ok, err = sock:connect('unix:' .. opts.path)
  if not ok then
    ngx.log(ngx.ERR, 'kumoproxy: cannot connect to ', opts.path, ': ', err)
    ngx.timer.at(1, reader, opts)
    return
  end
  -- A cosocket read that times out logs "[error] ... lua tcp socket read timed
  -- out" (unless lua_socket_log_errors is off), so the read never times out:
  -- a light thread waits on the socket while this one sleeps, checks for the
  -- worker exiting and kills the reader (which logs nothing). The read timeout
  -- is only a backstop (24 days, the largest nginx takes); the reader is
  -- renewed long before it, and every check also dispatches, which covers a
  -- wakeup that went to an old connection.
  sock:settimeout(2 ^ 31 - 1)
  local thread = ngx.thread.spawn(wait_for_wakeups, sock)
  local renew_at = ngx.now() + opts.renew_interval
  while true do
    dispatch() -- also covers events queued before we connected
    if ngx.worker.exiting() then
      ngx.thread.kill(thread)
      sock:close()
      return drain(opts)
    end
    ngx.sleep(opts.exit_check_interval)
    -- ngx.thread.wait would block; a finished thread is "dead" to kill().
    local running = coroutine.status(thread) ~= 'dead'
    if not running or ngx.now() >= renew_at then
      ngx.thread.kill(thread)
      sock:close()
      if not running then
        ngx.log(ngx.WARN, 'kumoproxy: wake socket closed; reconnecting')
      end
      ngx.timer.at(0, reader, opts)
      return
    end
  end
end

--- Starts this worker's event pump. Call from init_worker_by_lua*.
-- opts.socket_dir: directory for the wake socket (default $TMPDIR or /tmp); it
--   must be writable by the worker's user.
-- opts.drain_timeout: seconds sessions get when the worker exits (default 10).
-- opts.exit_check_interval: seconds between exit checks while idle (default 1).
function M.start(opts)
  if started then
    return true
  end
  opts = opts or {}
  if ngx.get_phase() == 'init' then
    error('kumoproxy.openresty.start: call it in init_worker_by_lua, not init_by_lua', 2)
  end
  local o = {
    path = kumoproxy.event_socket(opts.socket_dir),
    drain_timeout = opts.drain_timeout or 10,
    exit_check_interval = opts.exit_check_interval or 1,
    renew_interval = 86400,
  }
  local ok, err = ngx.timer.at(0, reader, o)
  if not ok then
    error('kumoproxy.openresty.start: cannot start the pump timer: ' .. tostring(err), 2)
  end
  started = true
  return true
end

return M
