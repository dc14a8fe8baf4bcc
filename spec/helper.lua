-- Shared by the specs: run a spec body as baton's main task and prove it left nothing
-- behind (no other task alive, no armed timer, no child process), the way luv's test
-- helper walks the loop's handles.
local baton = require "baton"

local H = {}

-- Counts of what is alive in the runtime, minus the calling main task.
function H.leftovers()
  collectgarbage()
  local s = baton.stats()
  return { tasks = s.tasks - (baton.current() and 1 or 0), timers = s.timers,
           processes = s.processes, ready = s.ready, handles = s.handles }
end

-- Closing a process or a pipe is asynchronous (libuv), and an aborted task unwinds on its
-- next turn: give the loop a bounded while to finish what is already under way, then
-- require that nothing is left.
function H.settle(ms)
  local deadline = baton.now() + (ms or 3000)
  local l = H.leftovers()
  while (l.processes > 0 or l.handles > 0 or l.timers > 0 or l.tasks > 0)
    and baton.now() < deadline do
    baton.sleep(1)
    l = H.leftovers()
  end
  return l
end

function H.assert_clean()
  local l = baton.current() and H.settle() or H.leftovers()
  assert(l.tasks == 0 and l.timers == 0 and l.processes == 0 and l.handles == 0,
         string.format("left behind: %d tasks, %d timers, %d processes, %d handles",
                       l.tasks, l.timers, l.processes, l.handles))
end

-- it("...", H.async(function() ... end)): the body runs inside baton.run and must clean up.
function H.async(fn)
  return function()
    baton.run(function()
      fn()
      H.assert_clean()
    end)
    local s = baton.stats()
    assert(s.tasks == 0 and s.timers == 0 and s.processes == 0 and s.handles == 0,
           "runtime not empty after run")
  end
end

-- Asserts that fn(...) raises an error whose text matches `pattern`.
function H.raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching " .. pattern)
  assert(tostring(err):match(pattern), ("error %q does not match %q"):format(tostring(err), pattern))
end

-- The error convention (docs/errors.md). A failure of the world is `nil, message, kind`
-- and optionally a detail table: H.assert_failure(fname, kind, f(...)) checks that shape
-- (the message starts with "<fname>: ", kind is `kind` and one of baton.kinds; kind nil:
-- any kind of the table) and returns the message, the kind and the detail.
function H.is_kind(k)
  for _, w in ipairs(baton.kinds) do
    if k == w then return true end
  end
  return false
end

function H.assert_failure(fname, kind, ...)
  local n, v, msg, k, detail = select("#", ...), ...
  local what = ("%s: %s"):format(fname, tostring(msg))
  assert(n == 3 or n == 4, ("%s: expected nil, message, kind[, detail], got %d values")
         :format(what, n))
  assert(v == nil, what .. ": the first value is not nil but " .. tostring(v))
  assert(type(msg) == "string", what .. ": the message is a " .. type(msg))
  assert(msg:sub(1, #fname + 2) == fname .. ": ",
         ("message %q does not start with %q"):format(msg, fname .. ": "))
  assert(H.is_kind(k), what .. ": kind " .. tostring(k) .. " is not in baton.kinds")
  assert(kind == nil or k == kind, ("%s: kind %s, expected %s"):format(what, tostring(k), kind))
  assert(n == 3 or detail == nil or type(detail) == "table",
         what .. ": the detail is a " .. type(detail))
  return msg, k, detail
end

-- Asserts that fn(...) raises the misuse error "<fname>: bad argument #n 'name' (expected
-- ..." (and, if given, that the text in parentheses matches `rest`); returns the message.
function H.raises_misuse(fname, n, name, rest, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, ("expected %s to raise bad argument #%d '%s'"):format(fname, n, name))
  err = tostring(err)
  local head = ("%s: bad argument #%d '%s' ("):format(fname, n, name)
  assert(err:find(head, 1, true), ("error %q does not contain %q"):format(err, head))
  if rest then
    assert(err:match(rest), ("error %q does not match %q"):format(err, rest))
  end
  return err
end

-- Elapsed milliseconds of fn(), with its results.
function H.timed(fn, ...)
  local t0 = baton.clock()
  local r = table.pack(fn(...))
  return baton.clock() - t0, table.unpack(r, 1, r.n)
end

return H
