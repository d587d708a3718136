-- Hosts with their own scheduler: handlers that yield (take_events + ev:reply),
-- and luv driving the pump through event_fd().
local H = require 'spec.support.helpers'
local kp = H.kp

local AUTH = 'proxy_server_auth_rfc1929'

local function private_ok(params)
  -- Loopback destinations: opt in where the permissions work has landed.
  local ok, l = pcall(kp.start_proxy_listener, { listen = '127.0.0.1:0', allow_private_destinations = true })
  if ok then
    l:close()
    params.allow_private_destinations = true
  end
  return params
end

describe('embedding', function()
  local origin
  setup(function() origin = H.start_origin() end)
  teardown(function() origin.stop() end)
  after_each(function() kp.on(AUTH, nil) end)

  local function client(l, user)
    return io.popen(('python3 spec/support/socks.py connect --proxy %s --target 127.0.0.1:%d --user %s --password pw 2>&1')
      :format(l:local_addr(), origin.echo, user))
  end

  it('lets a handler yield; answers come back in any order', function()
    local l = H.listener(private_ok { require_auth = true, timeout = 20 })
    local parked = {}
    kp.on(AUTH, function(user)
      if user == 'first' then
        -- Wait for something the host's scheduler provides later.
        parked[#parked + 1] = coroutine.running()
        local verdict = coroutine.yield()
        return verdict
      end
      return true
    end)
    local a = client(l, 'first')
    local b = client(l, 'second')

    local waiting = {}
    local taken = 0
    while taken < 2 do
      assert(kp.wait_events(10) > 0, 'no events arrived')
      for _, ev in ipairs(kp.take_events()) do
        taken = taken + 1
        local co = coroutine.create(function()
          local ok, res = pcall(kp.handler(ev:name()), ev:args())
          if ok then ev:reply(res) else ev:fail(res) end
        end)
        assert(coroutine.resume(co))
        if coroutine.status(co) == 'suspended' then
          waiting[#waiting + 1] = { co = co, ev = ev }
        end
      end
    end
    -- 'second' was answered while 'first' is still pending.
    assert.are.equal(1, #waiting)
    assert.is_true(waiting[1].ev:pending())
    local out_b = b:read('*a')
    b:close()
    assert.matches('data=ping', out_b)

    -- Now resume the parked handler: 'first' is let in too.
    assert(coroutine.resume(waiting[1].co, true))
    assert.are.equal('dead', coroutine.status(waiting[1].co))
    local out_a = a:read('*a')
    a:close()
    assert.matches('data=ping', out_a)
    assert.are.equal(1, #parked)
    H.eventually(function() return l:stats().completed == 2 end)
    l:close()
  end)

  it('an event object dropped unanswered fails closed, and cannot be answered twice', function()
    local l = H.listener(private_ok { require_auth = true, timeout = 20 })
    kp.on(AUTH, function() return true end)
    local a = client(l, 'dropped')
    assert(kp.wait_events(10) > 0)
    local evs = kp.take_events()
    assert.are.equal(1, #evs)
    assert.are.equal(AUTH, evs[1]:name())
    local user, pass, meta = evs[1]:args()
    assert.are.equal('dropped', user)
    assert.are.equal('pw', pass)
    assert.matches('^127%.0%.0%.1:', meta.peer_address)
    evs = nil
    collectgarbage()
    collectgarbage()
    local out = a:read('*a')
    a:close()
    assert.matches('auth', out)
    assert.is_nil(out:match('data=ping'))
    H.eventually(function() return l:stats().auth_failures == 1 end)

    local b = client(l, 'twice')
    assert(kp.wait_events(10) > 0)
    local ev = kp.take_events()[1]
    assert.is_true(ev:reply(true))
    local ok, err = pcall(ev.reply, ev, true)
    assert.is_false(ok)
    assert.matches('already answered', tostring(err))
    assert.matches('data=ping', b:read('*a'))
    b:close()
    l:close()
  end)

  it('ev:fail denies with the given reason', function()
    local l = H.listener(private_ok { require_auth = true })
    kp.on(AUTH, function() return true end)
    local a = client(l, 'x')
    assert(kp.wait_events(10) > 0)
    kp.take_events()[1]:fail('policy service unavailable')
    assert.is_nil(a:read('*a'):match('data=ping'))
    a:close()
    H.eventually(function() return l:stats().auth_failures == 1 end)
    l:close()
  end)

  it('take_events(max) leaves the rest queued', function()
    local l = H.listener(private_ok { require_auth = true, timeout = 20 })
    kp.on(AUTH, function() return true end)
    local a, b = client(l, 'a'), client(l, 'b')
    assert.are.equal(2, kp.wait_events(10, 2))
    local first = kp.take_events(1)
    assert.are.equal(1, #first)
    assert.are.equal(1, kp.pending_events())
    first[1]:reply(true)
    local rest = kp.take_events()
    assert.are.equal(1, #rest)
    rest[1]:reply(true)
    assert.matches('data=ping', a:read('*a'))
    assert.matches('data=ping', b:read('*a'))
    a:close()
    b:close()
    l:close()
  end)

  it('a handler yielding inside poll() fails closed with a clear message', function()
    local l = H.listener(private_ok { require_auth = true })
    kp.on(AUTH, function() coroutine.yield() return true end)
    local a = client(l, 'y')
    assert.are.equal(1, kp.poll(10))
    assert.is_nil(a:read('*a'):match('data=ping'))
    a:close()
    H.eventually(function() return l:stats().auth_failures == 1 end)
    l:close()
  end)

  it('makes an auth decision inside a luv callback driven by event_fd()', function()
    local has_luv, uv = pcall(require, 'luv')
    assert(has_luv, 'lua-luv is required (bash .ci/setup installs it)')
    local l = H.listener(private_ok { require_auth = true })
    local decided_in_callback = false
    kp.on(AUTH, function(user, pass)
      decided_in_callback = true
      return user == 'alice' and pass == 'pw'
    end)
    local poll = uv.new_poll(kp.event_fd())
    poll:start('r', function()
      kp.poll(0)
    end)
    local stdout = uv.new_pipe(false)
    local output, exit_code = '', nil
    local proc = uv.spawn('python3', {
      args = { 'spec/support/socks.py', 'connect', '--proxy', l:local_addr(), '--target',
        '127.0.0.1:' .. origin.echo, '--user', 'alice', '--password', 'pw' },
      stdio = { nil, stdout, nil },
    }, function(code)
      exit_code = code
      poll:stop()
      poll:close()
    end)
    assert(proc, 'spawn failed')
    stdout:read_start(function(_, data)
      if data then output = output .. data else stdout:close() end
    end)
    uv.run()
    assert.are.equal(0, exit_code, output)
    assert.is_true(decided_in_callback)
    assert.matches('data=ping', output)
    l:close()
  end)
end)
