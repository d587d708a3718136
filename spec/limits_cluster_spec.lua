-- Fleet limits on a REAL Redis Cluster: three redis-server primaries on free
-- 127.0.0.1 ports (persistence off, state in a temp dir), joined by
-- `redis-cli --cluster create`, shared by two kumoproxy processes
-- (spec/support/fleet_proxy.lua with REDIS_CLUSTER). The limit keys are chosen
-- so that their Redis keys land on different nodes: every script touches
-- several keys of one limit key, so a key outside its hash tag would fail
-- with CROSSSLOT, and a script sent to the wrong node with MOVED.
local H = require 'spec.support.helpers'
local F = require 'spec.support.fleet'
local socks, echo = F.socks, F.echo

local function sh(cmd)
  local out, rc, err = H.sh(cmd)
  return out, rc, err
end

local function cli(port, ...)
  local out, rc, err = sh { 'redis-cli', '-p', tostring(port), ... }
  return out, rc, err
end

-- n primaries, no replicas. Returns { nodes = { {port, pid} ... }, urls,
-- stop_nodes(), start_nodes() (same ports and cluster state), stop() }.
local function start_cluster(n)
  local dir = H.tempdir()
  local c = { dir = dir, nodes = {} }
  local function up(nd)
    local f = assert(io.popen(("echo $$; exec redis-server --port %d --cluster-port %d --bind 127.0.0.1"
      .. " --cluster-enabled yes --cluster-config-file %s/nodes-%d.conf --dir %s"
      .. " --appendonly no --save '' --logfile %s/redis-%d.log")
      :format(nd.port, nd.bus, dir, nd.port, dir, dir, nd.port), 'r'))
    nd.pipe, nd.pid = f, tonumber(f:read('*l'))
  end
  local function wait_ok()
    for _, nd in ipairs(c.nodes) do
      H.eventually(function()
        local info = cli(nd.port, 'cluster', 'info')
        return info and info:find('cluster_state:ok')
      end, 30, 'cluster_state:ok on ' .. nd.port)
    end
  end
  for i = 1, n do
    -- The bus port is given too: port + 10000 (the default) may not be free or valid.
    c.nodes[i] = { port = F.free_port(), bus = F.free_port() }
    up(c.nodes[i])
  end
  function c.stop_nodes()
    for _, nd in ipairs(c.nodes) do
      if nd.pipe then
        os.execute('kill ' .. nd.pid .. ' 2>/dev/null')
        nd.pipe:close()
        nd.pipe = nil
      end
    end
    for _, nd in ipairs(c.nodes) do
      H.eventually(function()
        local _, rc = cli(nd.port, 'ping')
        return rc ~= 0
      end, 10, 'redis-server down')
    end
  end
  -- Restarted nodes read their nodes-PORT.conf: the same cluster comes back
  -- (with no data: persistence is off).
  function c.start_nodes()
    for _, nd in ipairs(c.nodes) do up(nd) end
    wait_ok()
  end
  function c.stop()
    c.stop_nodes()
    os.execute("rm -rf '" .. dir .. "'")
  end
  -- A cluster that does not come up is stopped (and its dir removed) too.
  local ok, e = pcall(function()
    for _, nd in ipairs(c.nodes) do
      H.eventually(function()
        local out = cli(nd.port, 'ping')
        return out and out:find('PONG')
      end, 10, 'redis-server up')
    end
    local args = { 'redis-cli', '--cluster', 'create' }
    c.urls = {}
    for _, nd in ipairs(c.nodes) do
      args[#args + 1] = '127.0.0.1:' .. nd.port
      c.urls[#c.urls + 1] = 'redis://127.0.0.1:' .. nd.port
    end
    for _, a in ipairs { '--cluster-replicas', '0', '--cluster-yes' } do args[#args + 1] = a end
    local out, rc, err = sh(args)
    assert(rc == 0, 'redis-cli --cluster create: ' .. tostring(out) .. tostring(err))
    wait_ok()
    c.proxy_env = { REDIS_CLUSTER = table.concat(c.urls, ' ') }
    -- slot ranges by node port, from CLUSTER NODES
    c.ranges = {}
    for line in (cli(c.nodes[1].port, 'cluster', 'nodes')):gmatch('[^\n]+') do
      local port = tonumber(line:match(' 127%.0%.0%.1:(%d+)@'))
      for a, b in line:gmatch(' (%d+)%-(%d+)') do
        c.ranges[#c.ranges + 1] = { port = port, from = tonumber(a), to = tonumber(b) }
      end
    end
  end)
  if not ok then
    c.stop()
    error(e, 0)
  end
  return c
end

-- The node port that holds a limit key's Redis keys ({kp:<name>}: names here
-- need no escaping).
local function node_of(c, name)
  local slot = tonumber((cli(c.nodes[1].port, 'cluster', 'keyslot', '{kp:' .. name .. '}')))
  for _, r in ipairs(c.ranges) do
    if slot >= r.from and slot <= r.to then return r.port end
  end
  error('no node serves slot ' .. tostring(slot))
end

-- One user name (= limit key) per node: { {name, port}, ... }.
local function spread(c, prefix)
  local out, seen = {}, {}
  for i = 1, 200 do
    local name = prefix .. i
    local port = node_of(c, name)
    if not seen[port] then
      seen[port] = true
      out[#out + 1] = { name = name, port = port }
      if #out == #c.nodes then return out end
    end
  end
  error('could not spread keys over the nodes')
end

-- Limit keys whose Redis keys are stored on `port` (SCAN is per node).
local function names_on(port)
  local names = {}
  for k in (cli(port, '--scan', '--pattern', '{kp:*')):gmatch('[^\n]+') do
    names[k:match('^{kp:([^}]*)}')] = true
  end
  return names
end

describe('limits: fleet scope on a Redis Cluster of three nodes, two processes', function()
  local origin, cluster
  -- A session of `name` through `p`; a refusal fails with the proxy's log
  -- (a CROSSSLOT or MOVED error from Redis shows there).
  local function admit(p, name)
    local c, code = socks(p.addr, name, '127.0.0.1', origin.echo)
    assert(c, ('%s refused (%s); log: %s'):format(name, tostring(code), p.logs():sub(-800)))
    return c
  end
  setup(function()
    origin = H.start_origin()
    cluster = start_cluster(3)
  end)
  teardown(function()
    if cluster then cluster.stop() end
    origin.stop()
  end)

  it('max_sessions holds fleet-wide for keys on every node; leases are renewed there', function()
    local env = { LIMITS = "{ max_sessions = 2, connect_rate = '6/min,max_burst=100', quota = '1 GB/day', scope = 'fleet' }",
                  LEASE_TTL = '2 seconds' }
    local a, b = F.start_proxy(cluster, env), F.start_proxy(cluster, env)
    finally(function() a.kill() b.kill() end)
    local keys = spread(cluster, 'k-s')
    local held = {}
    for _, k in ipairs(keys) do
      held[#held + 1] = admit(a, k.name)
      held[#held + 1] = admit(b, k.name)
      for _, p in ipairs { a, b } do
        local c, code = socks(p.addr, k.name, '127.0.0.1', origin.echo)
        assert.is_nil(c)
        assert.equals(2, code)
      end
    end
    for _, k in ipairs(keys) do
      local st = b.limits(k.name)
      assert.equals(2, st.sessions, k.name)
      assert.equals(2, st.connect_refused, k.name)
      -- every Redis key of a limit key is on the node its hash tag maps to
      local here = names_on(k.port)
      assert.truthy(here[k.name], k.name .. ' not on ' .. k.port)
      for _, other in ipairs(keys) do
        if other.port ~= k.port then
          assert.is_nil(names_on(other.port)[k.name], k.name .. ' also on ' .. other.port)
        end
      end
      local ks = cli(k.port, '--scan', '--pattern', '{kp:' .. k.name .. '}*')
      assert.truthy(ks:find(':s\n', 1, true) and ks:find(':r\n', 1, true) and ks:find(':q:', 1, true), ks)
    end
    -- Past lease_ttl the leases still count: renewal scripts reach every node.
    H.kp.run_until(3)
    for _, k in ipairs(keys) do
      assert.equals(2, a.limits(k.name).sessions, k.name .. ' after lease_ttl')
      assert.is_nil((socks(b.addr, k.name, '127.0.0.1', origin.echo)))
    end
    for _, s in ipairs(held) do assert.equals(4, echo(s, 4)) end
    for _, s in ipairs(held) do s:close() end
    for _, k in ipairs(keys) do
      H.eventually(function() return a.limits(k.name).sessions == 0 end, 10, 'leases released on ' .. k.port)
      local s = admit(a, k.name)
      s:close()
    end
    assert.is_nil(a.logs():find('Redis unavailable'), a.logs())
    assert.is_nil(b.logs():find('Redis unavailable'), b.logs())
  end)

  it('counts a quota across both processes for keys on different nodes', function()
    local env = { LIMITS = "{ quota = '300 KB/hour', scope = 'fleet' }" }
    local a, b = F.start_proxy(cluster, env), F.start_proxy(cluster, env)
    finally(function() a.kill() b.kill() end)
    local keys = spread(cluster, 'k-q')
    for i = 1, 2 do
      local key = keys[i].name
      local sa = admit(a, key)
      sa:settimeout(5)
      assert.equals(100000, echo(sa, 100000)) -- 200 KB counted
      sa:close()
      H.eventually(function()
        local t = b.limits(key)
        return t.sessions == 0 and t.quota_used == 200000
      end, 10, 'unused chunk given back for ' .. key)
      local sb = admit(b, key)
      sb:settimeout(5)
      local got = echo(sb, 100000)
      sb:close()
      assert.truthy(got <= 50000, 'echoed ' .. got)
      H.eventually(function()
        local t = a.limits(key)
        return t.quota_remaining == 0 and t.bytes_up + t.bytes_down <= 300000
      end, 10, 'quota used up fleet-wide for ' .. key)
      local c, code = socks(a.addr, key, '127.0.0.1', origin.echo)
      assert.is_nil(c)
      assert.equals(2, code)
      assert.truthy(names_on(keys[i].port)[key], key .. ' not on ' .. keys[i].port)
    end
    -- the third key, on the third node, was never used: its whole quota is left
    assert.equals(300000, a.limits(keys[3].name).quota_remaining)
    assert.is_nil(a.logs():find('Redis unavailable'), a.logs())
  end)
  it("on_error = 'deny' refuses while the cluster is down; enforcement resumes when it is back", function()
    local a = F.start_proxy(cluster, { LIMITS = "{ max_sessions = 1, scope = 'fleet' }", ON_ERROR = 'deny' })
    finally(function() a.kill() end)
    local key = spread(cluster, 'k-o')[1].name
    admit(a, key):close()
    H.eventually(function() return a.limits(key).sessions == 0 end, 10, 'released')

    cluster.stop_nodes()
    local c, code = socks(a.addr, key, '127.0.0.1', origin.echo)
    assert.is_nil(c)
    assert.equals(2, code)
    H.eventually(function() return a.logs():find('fleet limits: Redis unavailable') end, 10, 'warning')

    cluster.start_nodes()
    local back
    H.eventually(function()
      back = socks(a.addr, key, '127.0.0.1', origin.echo)
      return back
    end, 20, 'admitted again')
    -- and counted again: the next one is refused by max_sessions, not by Redis
    local d, dcode = socks(a.addr, key, '127.0.0.1', origin.echo)
    assert.is_nil(d)
    assert.equals(2, dcode)
    assert.equals(1, a.limits(key).sessions)
    back:close()
  end)
end)
