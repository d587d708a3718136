-- busted output handler for kumoproxy specs.
--
-- Usage: busted -o spec/support/summary_handler.lua [spec files...]
--
-- Prints one line per test ("ok   <name>" / "FAIL <name>" / "ERR  <name>" /
-- "skip <name>"), failure and error details (message + traceback) as they
-- happen, and as the very last line of output:
--
--   N passed, N failed
--
-- Errors (in tests, hooks, describe blocks or while loading spec files) count
-- as failed; pending tests are mentioned but not counted.
--
-- If KUMOPROXY_SUMMARY_FILE is set, one line "<passed> <failed>" is appended
-- to that file so a wrapper can add up several runs.

local pretty = require 'pl.pretty'

local function out(msg)
  io.write(msg, '\n')
  io.flush()
end

local function indent(text, prefix)
  return prefix .. tostring(text):gsub('\n', '\n' .. prefix)
end

return function(options)
  local busted = require 'busted'
  local handler = require 'busted.outputHandlers.base'()

  -- Own counters: the base handler resets its counts on every suite reset
  -- (--repeat), we want totals for the whole process.
  local passed, failed, pending = 0, 0, 0
  local finished = false

  local function location(element, trace)
    local t = (element and element.trace) or trace
    if t and t.short_src then
      return t.short_src .. ':' .. tostring(t.currentline)
    end
  end

  local function message_text(message)
    if message == nil then return 'Nil error' end
    if type(message) == 'string' then return message end
    return pretty.write(message)
  end

  local function on_test_end(element, parent, status)
    if status == 'success' then
      passed = passed + 1
      out('ok   ' .. handler.getFullName(element))
    elseif status == 'pending' then
      pending = pending + 1
      out('skip ' .. handler.getFullName(element))
    end
    -- failure/error of an `it` is reported (and counted) by on_problem
    return nil, true
  end

  -- Failures and errors of tests, hooks, describe blocks, files, and busted
  -- itself (e.g. "no test files found").
  local function on_problem(kind)
    return function(element, parent, message, trace)
      failed = failed + 1
      local name = handler.getFullName(element)
      if element.descriptor ~= 'it' then
        name = '[' .. tostring(element.descriptor or 'busted') .. '] ' .. name
      end
      out(string.format('%-4s %s', kind, name))
      local where = location(element, trace)
      if where then out('     at ' .. where) end
      out(indent(message_text(message), '     | '))
      if trace and trace.traceback then
        local tb = trace.traceback:gsub('^\n', ''):gsub('\n+$', '')
        if tb ~= '' then out(indent(tb, '     | ')) end
      end
      return nil, true
    end
  end

  local function on_suite_start(suite, count, total)
    if total and total > 1 then
      out(string.format('-- run %d of %d', count, total))
    end
    return nil, true
  end

  local function finish()
    if finished then return nil, true end
    finished = true
    if pending > 0 then
      out(string.format('(%d pending)', pending))
    end
    local path = os.getenv('KUMOPROXY_SUMMARY_FILE')
    if path and path ~= '' then
      local f, err = io.open(path, 'a')
      if f then
        f:write(string.format('%d %d\n', passed, failed))
        f:close()
      else
        out('summary_handler: cannot write ' .. path .. ': ' .. tostring(err))
      end
    end
    out(string.format('%d passed, %d failed', passed, failed))
    return nil, true
  end

  busted.subscribe({ 'suite', 'start' }, on_suite_start)
  busted.subscribe({ 'test', 'end' }, on_test_end, { predicate = handler.cancelOnPending })
  busted.subscribe({ 'failure' }, on_problem('FAIL'))
  busted.subscribe({ 'error' }, on_problem('ERR'))
  busted.subscribe({ 'exit' }, finish)

  return handler
end
