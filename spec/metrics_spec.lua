-- GET /metrics as real scrapers see it: the official Python client's classic
-- (text 0.0.4) and OpenMetrics parsers, and a real Prometheus server (Debian's
-- `prometheus`) scraping the status listener and answering PromQL.
local H = require 'spec.support.helpers'
local kp = H.kp
local json = require 'dkjson'

-- Debian's python3-prometheus-client is installed for the system interpreter.
local PY = '/usr/bin/python3'

local function free_port()
  local s = assert(H.socket.bind('127.0.0.1', 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

describe('/metrics', function()
  local origin, proxy, status, tmp

  local function scrape(accept)
    local out, rc, err = H.sh(('curl -sS -m 10 -D %s/headers -H %q http://%s/metrics')
      :format(tmp, 'Accept: ' .. accept, status:local_addr()))
    assert.are.equal(0, rc, err)
    local f = assert(io.open(tmp .. '/headers'))
    local headers = f:read('*a')
    f:close()
    return out, headers:match('[Cc]ontent%-[Tt]ype: ([^\r\n]+)')
  end

  local function parse(format, text)
    local f = assert(io.open(tmp .. '/metrics.txt', 'w'))
    f:write(text)
    f:close()
    local out, rc, err = H.sh(('%s spec/support/prom_parse.py %s < %s/metrics.txt'):format(PY, format, tmp))
    assert.are.equal(0, rc, format .. ' parser failed: ' .. tostring(err) .. '\n' .. text)
    return assert(json.decode(out))
  end

  setup(function()
    origin = H.start_origin()
    tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute('mkdir -p ' .. tmp))
    proxy = kp.start_proxy_listener { listen = '127.0.0.1:0', allow_private_destinations = true }
    status = kp.start_http_listener { listen = '127.0.0.1:0' }
    for _ = 1, 2 do
      local out, rc, err = H.sh(('curl -sS -m 10 --socks5-hostname %s http://127.0.0.1:%d/')
        :format(proxy:local_addr(), origin.http))
      assert.are.equal(0, rc, err)
      assert.are.equal('hello from origin\n', out)
    end
    H.quiesce()
  end)

  teardown(function()
    proxy:close()
    status:close()
    origin.stop()
    os.execute('rm -rf ' .. tmp)
  end)

  local function common_checks(m)
    local lbl = ('{listener=%s}'):format(proxy:local_addr())
    assert.are.equal('counter', m.types.kumoproxy_listener_accepted_total)
    assert.are.equal(2, m.values['kumoproxy_listener_accepted_total' .. lbl])
    assert.are.equal('counter', m.types.kumoproxy_listener_to_client_bytes_total)
    assert.are.equal('counter', m.types.kumoproxy_listener_to_remote_bytes_total)
    assert.is_true(m.values['kumoproxy_listener_to_client_bytes_total' .. lbl] > 2 * 18)
    assert.is_true(m.values['kumoproxy_listener_to_remote_bytes_total' .. lbl] > 2 * 20)
    assert.are.equal('gauge', m.types.kumoproxy_listener_active)
    assert.are.equal('counter', m.types.process_cpu_seconds_total)
    assert.are.equal('gauge', m.types.process_open_fds)
    assert.is_true(m.values['process_open_fds{}'] >= 5)
    assert.is_true(m.values['process_resident_memory_bytes{}'] > 1e6)
    assert.is_true(m.values['process_max_fds{}'] >= m.values['process_open_fds{}'])
    local start = m.values['process_start_time_seconds{}']
    assert.is_true(start > os.time() - 3600 and start <= os.time() + 1, tostring(start))
  end

  it('serves text format 0.0.4 to classic scrapers, which keep every type', function()
    for _, accept in ipairs { 'text/plain', 'text/plain;version=0.0.4', '*/*' } do
      local text, ctype = scrape(accept)
      assert.are.equal('text/plain; version=0.0.4; charset=utf-8', ctype, accept)
      assert.is_nil(text:find('# EOF', 1, true))
      local m = parse('text', text)
      common_checks(m)
      -- Classic has no info type: the build is a gauge that is always 1.
      assert.are.equal('gauge', m.types.kumoproxy_build_info)
      local lua = jit and 'luajit' or ('lua' .. _VERSION:gsub('%D', ''))
      assert.are.equal(1, m.values[('kumoproxy_build_info{lua=%s,version=%s}'):format(lua, kp.VERSION)])
    end
  end)

  it('serves OpenMetrics to scrapers that ask for it', function()
    local text, ctype = scrape('application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1')
    assert.are.equal('application/openmetrics-text; version=1.0.0; charset=utf-8', ctype)
    assert.matches('# EOF\n$', text)
    local m = parse('openmetrics', text)
    common_checks(m)
    assert.are.equal('info', m.types.kumoproxy_build_info)
  end)

  it('is scraped by a real Prometheus server, which answers PromQL over the counters', function()
    local dir = tmp .. '/prometheus'
    assert(os.execute('mkdir -p ' .. dir .. '/data'))
    local port = free_port()
    local f = assert(io.open(dir .. '/prometheus.yml', 'w'))
    f:write(([[
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: kumoproxy
    static_configs:
      - targets: ['%s']
]]):format(status:local_addr()))
    f:close()
    local pid_out, rc, err = H.sh(('prometheus --config.file=%s/prometheus.yml --storage.tsdb.path=%s/data '
      .. '--web.listen-address=127.0.0.1:%d >%s/log 2>&1 & echo $!'):format(dir, dir, port, dir))
    assert.are.equal(0, rc, err)
    local pid = assert(tonumber(pid_out:match('%d+')))
    finally(function() os.execute('kill ' .. pid .. ' 2>/dev/null') end)

    local function query(q)
      local out, qrc = H.sh(('curl -sS -m 5 --data-urlencode %q http://127.0.0.1:%d/api/v1/query'):format('query=' .. q, port))
      if qrc ~= 0 then return nil end
      local r = json.decode(out)
      if not r or r.status ~= 'success' or #r.data.result == 0 then return nil end
      return r.data.result
    end

    local accepted = H.eventually(function()
      return query(('kumoproxy_listener_accepted_total{listener="%s"}'):format(proxy:local_addr()))
    end, 60, 'Prometheus scraped the status listener')
    assert.are.equal('2', accepted[1].value[2])
    local bytes = assert(query('sum(kumoproxy_listener_to_client_bytes_total) > 36'))
    assert.is_true(tonumber(bytes[1].value[2]) > 36)
    local build = assert(query('kumoproxy_build_info'))
    assert.are.equal(kp.VERSION, build[1].metric.version)
    assert(query('process_open_fds > 0'), 'process_open_fds')
    assert(query('up{job="kumoproxy"} == 1'), 'the scrape is up')
    -- The scrape kept the counter's type (the metadata API reports per family).
    local out = H.sh(('curl -sS -m 5 http://127.0.0.1:%d/api/v1/metadata'):format(port))
    local meta = assert(json.decode(out)).data
    local fam = meta.kumoproxy_listener_accepted or meta.kumoproxy_listener_accepted_total
    assert.truthy(fam, out)
    assert.are.equal('counter', fam[1].type)
  end)
end)
