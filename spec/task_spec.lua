-- Tasks and the running functions: baton.run, spawn, sleep, yield, now, timeout, and the
-- task object (join, abort, status, results, error), with cancellation semantics.
local baton = require "baton"
local H = require "spec.helper"

describe("baton.run", function()
  it("returns the main task's results", function()
    local a, b = baton.run(function(x, y) baton.sleep(1) return x + 1, y end, 41, "b")
    assert.equal(42, a)
    assert.equal("b", b)
  end)

  it("raises the main task's error with its traceback", function()
    local ok, err = pcall(baton.run, function() error("boom") end)
    assert.is_false(ok)
    assert.matches("boom", err)
    assert.matches("stack traceback", err)
  end)

  it("refuses to nest", H.async(function()
    local ok, err = pcall(baton.run, function() end)
    assert.is_false(ok)
    assert.matches("cannot nest", err)
  end))

  it("aborts tasks still running when the main task ends", function()
    local closed = false
    local t
    baton.run(function()
      t = baton.spawn(function()
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        baton.sleep(60000)
      end)
      baton.sleep(1)
    end)
    assert.is_true(closed)
    assert.equal("cancelled", t:status())
    assert.equal(0, baton.stats().tasks)
  end)

  it("reports a deadlock instead of hanging", function()
    local ok, err = pcall(baton.run, function()
      local s = baton.semaphore(1)
      local p = s:acquire()
      s:acquire()
    end)
    assert.is_false(ok)
    assert.matches("deadlock", err)
  end)

  it("can be called again after it returned", function()
    assert.equal(1, baton.run(function() return 1 end))
    assert.equal(2, baton.run(function() return 2 end))
  end)
end)

describe("awaiting outside a task", function()
  it("raises an error that says how to fix it", function()
    local ok, err = pcall(baton.sleep, 1)
    assert.is_false(ok)
    assert.matches("baton.sleep", err)
    assert.matches("baton.run", err)
  end)

  it("explains that a foreign coroutine cannot carry baton's waits", H.async(function()
    local co = coroutine.wrap(function() baton.sleep(1) end)
    local ok, err = pcall(co)
    assert.is_false(ok)
    assert.matches("coroutine", err)
  end))

  it("explains that a C boundary cannot be crossed", H.async(function()
    local ok, err = pcall(table.sort, { 3, 2, 1 }, function(a, b) baton.yield() return a < b end)
    assert.is_false(ok)
    assert.matches("cannot wait here", err)
  end))
end)

describe("baton.spawn", function()
  it("only enqueues: the task first runs when the spawner waits", H.async(function()
    local ran = false
    local t = baton.spawn(function() ran = true end)
    assert.is_false(ran)
    assert.equal("pending", t:status())
    baton.yield()
    assert.is_true(ran)
    assert.equal("done", t:status())
  end))

  it("timeout, race and first_ok outside a task raise under their own names", function()
    for name, call in pairs {
      ["baton.timeout"] = function() return baton.timeout(10, function() end) end,
      ["baton.race"] = function() return baton.race(function() end) end,
      ["baton.first_ok"] = function() return baton.first_ok(function() end) end,
    } do
      H.raises("^[^:]*:?%d*:? ?" .. name:gsub("%.", "%%.") .. ": not inside a baton task", call)
    end
    assert.equal(0, baton.stats().tasks)  -- nothing was spawned
    local args = {}
    for i = 1, 300 do args[i] = i end
    H.raises("baton%.timeout: too many arguments %(300, at most 250%)",
             baton.timeout, 10, function() end, table.unpack(args))
  end)

  it("a task that catches its cancellation and returns ends cancelled, its join says so",
     H.async(function()
    local t = baton.spawn(function()
      pcall(baton.sleep, 60000)
      return "returned normally"
    end)
    baton.sleep(5)
    t:abort()
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal("cancelled", t:status())
  end))

  it("results() of an unfinished task raises naming it", H.async(function()
    local t = baton.spawn(baton.sleep, 50)
    H.raises("^baton%.task:results: task " .. t.id .. " has not finished$", t.results, t)
    t:abort()
    t:join()
  end))

  it("a method called without self says it got no value", H.async(function()
    local objs = { baton.channel(1), baton.semaphore(1), baton.group(), baton.future(),
                   baton.watch(1), baton.notify(), baton.spawn(function() end) }
    for _, o in ipairs(objs) do
      local mt = getmetatable(o)
      local methods = type(mt.__index) == "table" and mt.__index or mt
      for name, f in pairs(methods) do
        if type(f) == "function" and name:sub(1, 2) ~= "__" then
          local ok, err = pcall(f)
          if not ok then
            assert.matches("got no value", tostring(err), 1, true)
          end
        end
      end
    end
  end))

  it("passes arguments and keeps results after the coroutine is gone", H.async(function()
    local t = baton.spawn(function(a, b) return a * b, "x", nil end, 6, 7)
    local ok, a, x, n = t:join()
    assert.is_true(ok)
    assert.equal(42, a)
    assert.equal("x", x)
    assert.is_nil(n)
    assert.is_true(t.ok)
    assert.same({ 42, "x" }, { t:results() })
    assert.is_number(t.id)
  end))

  it("runs tasks in FIFO order", H.async(function()
    local order = {}
    local g = baton.group()
    for i = 1, 10 do g:spawn(function() order[#order + 1] = i end) end
    g:join_all()
    assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, order)
  end))

  it("passes up to 250 arguments, and refuses more", H.async(function()
    local args = {}
    for i = 1, 250 do args[i] = i end
    local t = baton.spawn(function(...) return select("#", ...), (select(250, ...)) end,
                          table.unpack(args))
    assert.same({ true, 250, 250 }, { t:join() })
    args[251] = 251
    local ok, err = pcall(baton.spawn, function() end, table.unpack(args))
    assert.is_false(ok)
    assert.matches("at most 250", err)
  end))

  -- What C holds is anchored in slots of several stacks (ltask.c): tens of thousands of
  -- pending tasks cross from one to the next, slots freed are reused, and a full
  -- collection in between frees none of them, nor their arguments, nor the coroutines of
  -- more suspended tasks than the pool keeps.
  it("keeps 80,000 pending tasks, their arguments and 300 suspended coroutines alive",
     H.async(function()
    for _ = 1, 2 do
      local g = baton.group()
      for i = 1, 80000 do g:spawn(function(t) return t[1] * 2 end, { i }) end
      local sleepers = baton.group()
      for i = 1, 300 do
        sleepers:spawn(function(t) baton.sleep(2); collectgarbage(); return t.i end, { i = i })
      end
      collectgarbage()
      local sum = 0
      for _, t in ipairs(g:join_all()) do sum = sum + select(2, t:join()) end
      assert.equal(80000 * 80001, sum)
      sum = 0
      for _, t in ipairs(sleepers:join_all()) do sum = sum + select(2, t:join()) end
      assert.equal(300 * 301 // 2, sum)
    end
    assert.equal(1, baton.stats().tasks)  -- the test's own
  end))

  it("rejects a non-function with an error naming the function", function()
    local ok, err = pcall(baton.spawn, 42)
    assert.is_false(ok)
    assert.matches("spawn", err)
  end)
end)

describe("baton.sleep and baton.now", function()
  it("sleeps at least the given time", H.async(function()
    local t0 = baton.now()
    baton.sleep(30)
    assert.is_true(baton.now() - t0 >= 29)
  end))

  it("rejects a negative duration", H.async(function()
    assert.has_error(function() baton.sleep(-1) end)
    assert.has_error(function() baton.sleep("x") end)
  end))

  it("wakes sleepers in deadline order", H.async(function()
    local order = {}
    local g = baton.group()
    for _, d in ipairs { 30, 10, 20 } do
      g:spawn(function() baton.sleep(d) order[#order + 1] = d end)
    end
    g:join_all()
    assert.same({ 10, 20, 30 }, order)
  end))
end)

describe("a failed task", function()
  it("carries its message and the traceback from where it was raised", H.async(function()
    local function inner() error("deep failure") end
    local t = baton.spawn(function() inner() end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("failed", t:status())
    assert.matches("deep failure", err)
    assert.matches("stack traceback", err)
    assert.matches("inner", err)
    assert.equal(err, t.error)
  end))

  it("keeps a table error and adds its traceback", H.async(function()
    local t = baton.spawn(function() error({ kind = "io", message = "nope" }) end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("io", err.kind)
    assert.matches("stack traceback", err.traceback)
  end))

  it("does not stop the loop or other tasks", H.async(function()
    local g = baton.group()
    g:spawn(function() error("one") end)
    local good = g:spawn(function() baton.sleep(5) return "fine" end)
    local tasks = g:join_all()
    assert.equal(2, #tasks)
    assert.same({ true, "fine" }, { good:join() })
  end))
end)

describe("task:join", function()
  it("waits for the task", H.async(function()
    local t = baton.spawn(function() baton.sleep(10) return "late" end)
    assert.same({ true, "late" }, { t:join() })
  end))

  it("returns nil, msg, 'timeout', { task, timeout_ms } and leaves the task running",
     H.async(function()
    local t = baton.spawn(function() baton.sleep(200) return 1 end)
    local msg, _, d = H.assert_failure("baton.task:join", "timeout", t:join(10))
    assert.equal(("baton.task:join: task %d still running after 10 ms"):format(t.id), msg)
    assert.same({ task = t.id, timeout_ms = 10 }, d)
    assert.equal("waiting", t:status())
    assert.same({ true, 1 }, { t:join() })
  end))

  it("refuses to join the running task itself", H.async(function()
    local t
    t = baton.spawn(function() return pcall(t.join, t) end)
    local _, ok, err = t:join()
    assert.is_false(ok)
    assert.matches("itself", err)
  end))
end)

describe("cancellation", function()
  it("abort wakes a waiting task, runs its close handlers and reports cancelled",
    H.async(function()
      local closed = false
      local t = baton.spawn(function()
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        baton.sleep(60000)
      end)
      baton.yield()
      assert.equal("waiting", t:status())
      t:abort()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      assert.equal("cancelled", t:status())
      assert.is_true(closed)
    end))

  it("a pending task aborted before it runs never runs", H.async(function()
    local ran = false
    local t = baton.spawn(function() ran = true end)
    t:abort()
    t:join()
    assert.is_false(ran)
    assert.equal("cancelled", t:status())
  end))

  it("is level-triggered: a task that catches it with pcall is cancelled again at its next await",
    H.async(function()
      local caught, second = nil, nil
      local t = baton.spawn(function()
        local ok, err = pcall(baton.sleep, 60000)
        caught = not ok and err.kind
        local ok2, err2 = pcall(baton.sleep, 1)
        second = not ok2 and err2.kind
        return "survived"
      end)
      baton.yield()
      t:abort()
      t:join()
      assert.equal("cancelled", caught)
      assert.equal("cancelled", second)
      assert.equal("cancelled", t:status())
    end))

  it("a task that aborts itself sees it at its next await", H.async(function()
    local t = baton.spawn(function()
      baton.current():abort()
      baton.yield()
      return "unreachable"
    end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
  end))

  it("a task in a <close> variable is aborted when the scope ends", H.async(function()
    local t
    do
      local tt <close> = baton.spawn(function() baton.sleep(60000) end)
      t = tt
      baton.yield()
    end
    t:join()
    assert.equal("cancelled", t:status())
  end))
end)

describe("baton.timeout", function()
  it("returns fn's results when it finishes in time", H.async(function()
    assert.same({ 1, 2 }, { baton.timeout(1000, function(a) return a, 2 end, 1) })
  end))

  it("returns nil, msg, 'timeout', { timeout_ms } and aborts the inner task", H.async(function()
    local closed = false
    local r = table.pack(H.timed(baton.timeout, 30, function()
      local _ <close> = setmetatable({}, { __close = function() closed = true end })
      baton.sleep(60000)
    end))
    local elapsed = r[1]
    local msg, _, d = H.assert_failure("baton.timeout", "timeout", table.unpack(r, 2, r.n))
    assert.equal("baton.timeout: fn did not finish within 30 ms", msg)
    assert.same({ timeout_ms = 30 }, d)
    assert.is_true(closed)
    assert.is_true(elapsed >= 29 and elapsed < 5000)
  end))

  it("re-raises fn's error", H.async(function()
    local ok, err = pcall(baton.timeout, 100, function() error("inner boom") end)
    assert.is_false(ok)
    assert.matches("inner boom", err)
  end))

  it("rejects bad arguments naming the function", H.async(function()
    local ok, err = pcall(baton.timeout, "x", function() end)
    assert.is_false(ok)
    assert.matches("baton.timeout", err)
  end))

  it("refuses NaN, negative and infinite milliseconds, naming itself and the argument",
     H.async(function()
    for _, ms in ipairs { 0 / 0, -1, math.huge } do
      local ok, err = pcall(baton.timeout, ms, function() end)
      assert.is_false(ok)
      assert.matches("baton.timeout: bad argument #1 'ms' %(expected milliseconds >= 0, got", err)
    end
    H.raises_misuse("baton.timeout", 2, "fn", "%(expected function, got 2%)", baton.timeout, 1, 2)
  end))

  it("has every milliseconds argument refuse NaN, naming its function", H.async(function()
    local t = baton.spawn(function() end)
    local nan = 0 / 0
    for _, case in ipairs {
      { "baton.sleep: bad argument #1", baton.sleep, nan },
      { "baton.task:join: bad argument #1", function() return t:join(nan) end },
      { "baton.semaphore:acquire: bad argument #2",
        function() return baton.semaphore(1):acquire(1, nan) end },
      { "baton.future:wait: bad argument #1", function() return baton.future():wait(nan) end },
      { "baton.group:join_next: bad argument #1",
        function() return baton.group():join_next(nan) end },
      { "baton.group:wait_within: bad argument #1",
        function() return baton.group():wait_within(nan) end },
    } do
      local ok, err = pcall(case[2], case[3])
      assert.is_false(ok)
      assert.matches(case[1] .. " '[%w_]+' %(expected milliseconds >= 0, got NaN%)", err)
    end
  end))
end)

describe("plain coroutine.yield inside a task", function()
  it("behaves like baton.yield", H.async(function()
    local steps = {}
    local t = baton.spawn(function()
      steps[#steps + 1] = "a"
      coroutine.yield()
      steps[#steps + 1] = "b"
    end)
    baton.yield()
    assert.same({ "a" }, steps)
    t:join()
    assert.same({ "a", "b" }, steps)
  end))
end)

describe("baton.coroutine.wrap", function()
  it("passes baton's waits through a user coroutine", H.async(function()
    local gen = baton.coroutine.wrap(function(n)
      for i = 1, n do
        baton.sleep(1)
        coroutine.yield(i)
      end
      return "end"
    end)
    assert.same({ 1, 2, 3, "end" }, { gen(3), gen(), gen(), gen() })
  end))

  it("an abort while the wrapped coroutine waits unwinds it and runs its close handlers",
    H.async(function()
      local closed = false
      local t = baton.spawn(function()
        local w = baton.coroutine.wrap(function()
          local _ <close> = setmetatable({}, { __close = function() closed = true end })
          baton.sleep(60000)
        end)
        w()
      end)
      baton.sleep(5)
      t:abort()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      assert.is_true(closed)
    end))

  it("refuses a second call while the generator waits in another task", H.async(function()
    local ch = baton.channel(1)
    local gen = baton.coroutine.wrap(function()
      while true do coroutine.yield(ch:recv()) end
    end)
    local a = baton.spawn(gen)  -- parks in ch:recv inside the generator
    baton.sleep(5)
    local b = baton.spawn(gen)
    local ok, err = b:join()
    assert.is_false(ok)
    assert.matches("baton.coroutine.wrap: the generator is already running", tostring(err), 1, true)
    collectgarbage()
    assert.is_true(ch:send("v"))
    assert.same({ true, "v" }, { a:join() })  -- the wait of the task that made it, untouched
    assert.equal("w", (function() ch:send("w"); return gen() end)())  -- usable again
  end))

  it("re-raises the coroutine's error", H.async(function()
    local w = baton.coroutine.wrap(function() baton.yield() error("inside") end)
    local ok, err = pcall(w)
    assert.is_false(ok)
    assert.matches("inside", err)
  end))
end)

describe("baton.warn", function()
  it("reports through the baton.on_warning handler, and survives a failing one", function()
    local seen = {}
    baton.on_warning(function(msg) seen[#seen + 1] = msg end)
    baton.warn("disk nearly full")
    baton.on_warning(function() error("handler broke") end)
    baton.warn("still reported")  -- the failure goes to stderr; nothing raises
    baton.on_warning(nil)
    assert.same({ "disk nearly full" }, seen)
    H.raises_misuse("baton.warn", 1, "msg", "expected string, got table", baton.warn, {})
  end)

  it("a debug hook a task set does not follow its pooled coroutine into a later task",
     H.async(function()
    local fired = 0
    baton.spawn(function() debug.sethook(function() fired = fired + 1 end, "", 1) end):join()
    local before = fired
    for _ = 1, 3 do
      baton.spawn(function() local x = 0 for i = 1, 100 do x = x + i end return x end):join()
    end
    assert.equal(before, fired)
  end))

  it("a handler raising a table, or nothing: stderr says what it raised and the warning too",
     function()
    local script = H.write_temp([[
      local baton = require "baton"
      baton.on_warning(function() error({}) end)
      baton.warn("first")
      baton.on_warning(function() error(setmetatable({}, { __tostring = function() return "custom" end })) end)
      baton.warn("second")
      baton.on_warning(function() error(setmetatable({}, { __tostring = function() error("x") end })) end)
      baton.warn("third")
      print("went on")
    ]])
    local r = H.run(H.q(script))
    os.remove(script)
    assert.equal(0, r.code, r.err)
    assert.equal("went on\n", r.out)
    assert.matches("warning handler failed: table: 0x%x+\nbaton: warning: first\n", r.err)
    assert.matches("warning handler failed: custom\nbaton: warning: second\n", r.err)
    assert.matches("warning handler failed: a table whose __tostring failed\nbaton: warning: third", r.err)
    assert.is_nil(r.err:find("(null)", 1, true))
  end)
end)
