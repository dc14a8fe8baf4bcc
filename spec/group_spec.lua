-- baton.group(): a JoinSet — join_next, wait_within (one deadline), drain, join_all,
-- abort_all, shutdown, #g, <close>/GC, and bounded spawn.
local baton = require "baton"
local H = require "spec.helper"

local function sleeper(ms, v) return function() baton.sleep(ms) return v end end

describe("group:join_next", function()
  it("returns tasks in completion order", H.async(function()
    local g = baton.group()
    for _, d in ipairs { 40, 10, 30, 20 } do g:spawn(sleeper(d, d)) end
    local got = {}
    for t in function() return g:join_next() end do got[#got + 1] = t:results() end
    assert.same({ 10, 20, 30, 40 }, got)
    assert.equal(0, #g)
  end))

  it("returns nil when the group is empty", H.async(function()
    local g = baton.group()
    assert.is_nil(g:join_next())
  end))

  it("returns nil, msg, 'timeout' when nothing finishes in time", H.async(function()
    local g = baton.group()
    g:spawn(sleeper(500))
    local msg = H.assert_failure("baton.group:join_next", "timeout", g:join_next(10))
    assert.equal("baton.group:join_next: timed out after 10 ms", msg)
    assert.equal(1, #g)
    g:abort_all()
    assert.equal("cancelled", g:join_next():status())
  end))
end)

describe("group:wait_within", function()
  it("uses ONE deadline for the whole call", H.async(function()
    -- five tasks finishing 100 ms apart; a 250 ms window holds exactly two of them
    local g = baton.group()
    for i = 1, 5 do g:spawn(sleeper(100 * i, i)) end
    local elapsed, done = H.timed(g.wait_within, g, 250)
    assert.equal(2, #done)
    assert.same({ 1, 2 }, { done[1]:results(), done[2]:results() })
    assert.equal(3, g:live())
    assert.equal(3, #g)
    assert.is_true(elapsed >= 245 and elapsed < 400, "elapsed " .. elapsed)
    -- the rest stay pending for a later call
    local rest = g:join_all()
    assert.equal(3, #rest)
  end))

  it("returns early when every task has finished", H.async(function()
    local g = baton.group()
    for i = 1, 3 do g:spawn(sleeper(i, i)) end
    local elapsed, done = H.timed(g.wait_within, g, 5000)
    assert.equal(3, #done)
    assert.is_true(elapsed < 1000)
  end))

  it("requires a number of milliseconds", H.async(function()
    local g = baton.group()
    assert.has_error(function() g:wait_within() end)
    assert.has_error(function() g:wait_within(-5) end)
  end))
end)

describe("group:drain", function()
  it("never waits", H.async(function()
    local g = baton.group()
    g:spawn(sleeper(0, "quick"))
    g:spawn(sleeper(10000))
    baton.sleep(5)
    local elapsed, done = H.timed(g.drain, g)
    assert.equal(1, #done)
    assert.equal("quick", done[1]:results())
    assert.is_true(elapsed < 5)
    assert.same({}, g:drain())
    g:shutdown()
    baton.yield()
  end))
end)

describe("group:abort_all", function()
  it("makes joins report cancelled", H.async(function()
    local g = baton.group()
    for _ = 1, 4 do g:spawn(sleeper(60000)) end
    g:spawn(function() end)  -- pending: never runs
    baton.yield()
    g:abort_all()
    local tasks = g:join_all()
    assert.equal(5, #tasks)
    local cancelled = 0
    for _, t in ipairs(tasks) do if t:status() == "cancelled" then cancelled = cancelled + 1 end end
    assert.is_true(cancelled >= 4)
    for _, t in ipairs(tasks) do
      if t:status() == "cancelled" then
        local ok, err = t:join()
        assert.is_false(ok)
        assert.equal("cancelled", err.kind)
      end
    end
  end))
end)

describe("group:shutdown", function()
  it("aborts and forgets every task", H.async(function()
    local g = baton.group()
    local t = g:spawn(sleeper(60000))
    g:spawn(sleeper(0))
    baton.sleep(5)
    g:shutdown()
    assert.equal(0, #g)
    t:join()
    assert.equal("cancelled", t:status())
  end))
end)

describe("closing a group", function()
  it("with <close> aborts its tasks", H.async(function()
    local t
    do
      local g <close> = baton.group()
      t = g:spawn(sleeper(60000))
      baton.yield()
    end
    t:join()
    assert.equal("cancelled", t:status())
  end))

  it("by garbage collection aborts its tasks", H.async(function()
    local closed = false
    local t
    do
      local g = baton.group()
      t = g:spawn(function()
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        baton.sleep(60000)
      end)
      baton.yield()
    end
    collectgarbage()
    collectgarbage()
    t:join()
    assert.equal("cancelled", t:status())
    assert.is_true(closed)
  end))

  it("reports a failure nobody joined", H.async(function()
    local warnings = {}
    baton.on_warning(function(msg) warnings[#warnings + 1] = msg end)
    do
      local g <close> = baton.group()
      g:spawn(function() error("unseen failure") end)
      baton.yield()
      baton.yield()
    end
    baton.on_warning(nil)
    assert.equal(1, #warnings)
    assert.matches("unseen failure", warnings[1])
  end))

  it("reports a baton.Error nobody joined by its message", H.async(function()
    local warnings = {}
    baton.on_warning(function(msg) warnings[#warnings + 1] = msg end)
    local g = baton.group()
    g:spawn(function() error(baton.error("io", "disk full")) end)
    baton.yield()
    g:close()
    baton.on_warning(nil)
    assert.equal(1, #warnings)
    assert.matches("nobody joined it: disk full$", warnings[1])
  end))

  it("survives a warning handler that closes the group being shut down or closed",
     H.async(function()
    local function two_failures()
      local g = baton.group()
      g:spawn(function() error("boom1") end)
      g:spawn(function() error("boom2") end)
      baton.yield()
      baton.yield()
      return g
    end
    for _, how in ipairs { "shutdown", "close", "<close>", "__gc" } do
      local g = two_failures()
      local seen = 0
      baton.on_warning(function() seen = seen + 1; g:close() end)
      if how == "shutdown" then
        g:shutdown()
      elseif how == "close" then
        g:close()
      elseif how == "<close>" then
        do local _ <close> = g end
      else
        getmetatable(g).__gc(g)
      end
      baton.on_warning(nil)
      assert.equal(2, seen, how)  -- each failure reported once, the nested closes included
      assert.matches("closed", tostring(g), how)
      assert.equal(1, baton.stats().tasks, how)
    end
  end))

  it("makes later use raise", H.async(function()
    local g = baton.group()
    g:close()
    local ok, err = pcall(g.spawn, g, function() end)
    assert.is_false(ok)
    assert.matches("closed", err)
  end))
end)

describe("#group", function()
  it("counts tasks not yet joined, running or finished", H.async(function()
    local g = baton.group()
    g:spawn(sleeper(0))
    g:spawn(sleeper(10000))
    assert.equal(2, #g)
    baton.sleep(5)
    assert.equal(2, #g)
    assert.equal(1, g:live())
    g:join_next()
    assert.equal(1, #g)
    g:shutdown()
    baton.yield()
  end))
end)

describe("bounded spawn", function()
  it("runs at most `limit` tasks at once", H.async(function()
    local g = baton.group { limit = 3 }
    local now, peak = 0, 0
    for _ = 1, 20 do
      g:spawn(function()
        now = now + 1
        peak = math.max(peak, now)
        baton.sleep(1)
        now = now - 1
      end)
    end
    local tasks = g:join_all()
    assert.equal(20, #tasks)
    assert.equal(3, peak)
  end))

  it("gives a job a coroutine only once its permit is granted", H.async(function()
    local s = baton.semaphore(2)
    local g = baton.group()
    for _ = 1, 1000 do g:spawn_bounded(s, baton.yield) end
    baton.yield()
    local st = baton.stats()
    assert.is_true(st.pooled_coroutines <= 64)
    g:join_all()
    assert.equal(2, s:available())
  end))

  it("releases the permit however the task ends", H.async(function()
    local s = baton.semaphore(2)
    local g = baton.group()
    g:spawn_bounded(s, function() error("x") end)
    g:spawn_bounded(s, function() return 1 end)
    local t = g:spawn_bounded(s, function() baton.sleep(60000) end)
    g:spawn_bounded(s, function() end)  -- queued behind the sleeper
    baton.sleep(5)
    t:abort()
    g:join_all()
    assert.equal(2, s:available())
    assert.equal(0, s:waiting())
  end))

  it("tasks still queued for a permit are cancelled by abort_all without running",
    H.async(function()
      local s = baton.semaphore(1)
      local g = baton.group()
      local ran = 0
      for _ = 1, 5 do g:spawn_bounded(s, function() ran = ran + 1 baton.sleep(60000) end) end
      baton.yield()
      g:abort_all()
      local tasks = g:join_all()
      assert.equal(5, #tasks)
      assert.equal(1, ran)
      assert.equal(1, s:available())
    end))

  it("rejects a bad limit", H.async(function()
    H.raises_misuse("baton.group", 1, "limit", "expected integer >= 1, got 0", baton.group,
                    { limit = 0 })
    H.raises_misuse("baton.group", 1, "limit", "got 0 permits", baton.group,
                    { limit = baton.semaphore(0) })
    local closed = baton.semaphore(1)
    closed:close()
    local ok, err = pcall(baton.group().spawn_bounded, baton.group(), closed, print)
    assert.is_false(ok)
    assert.matches("baton.group:spawn_bounded: bad argument #1 'sem' (expected an open " ..
                   "semaphore, got a closed one)", err, 1, true)
    H.raises_misuse("baton.group", 1, "limit", "expected integer >= 1 or baton.Semaphore, " ..
                    "got 'x'", baton.group, { limit = "x" })
    H.raises_misuse("baton.group", 1, "limti", "%(unknown option%)", baton.group, { limti = 2 })
  end))
end)

describe("baton.group structure", function()
  -- A child that records when its <close> handler ran, then sleeps until aborted.
  local function closer(log, name, ms)
    return function()
      local _ <close> = setmetatable({}, { __close = function() log[#log + 1] = name end })
      baton.sleep(ms or 60000)
    end
  end
  -- The same, with a slow unwinding: the abort is caught, then a 30 ms shielded cleanup
  -- (a __close handler cannot wait during error unwinding), then the <close> handler.
  local function slow(log, name)
    return function()
      local _ <close> = setmetatable({}, { __close = function() log[#log + 1] = name end })
      pcall(baton.sleep, 60000)
      baton.shield(function() baton.sleep(30) end)
    end
  end

  it("a detached group outlives the task that made it; its tasks keep running",
    H.async(function()
      local owned, detached, child
      baton.spawn(function()
        owned = baton.group()
        detached = baton.group { detached = true }
        child = owned:spawn(closer({}, "owned"))
        detached:spawn(function() baton.sleep(20) return "still here" end)
      end):join()
      assert.equal("cancelled", child:status())  -- the owned group's child was aborted
      local t = assert(detached:join_next(1000))
      assert.is_true(t.ok)
      assert.equal("still here", t:results())
      detached:close()
      owned:close()
    end))

  it("fail_fast aborts the siblings and join_all re-raises the first error", H.async(function()
    local g <close> = baton.group { fail_fast = true }
    local log = {}
    local b = g:spawn(closer(log, "b"))
    local c = g:spawn(closer(log, "c"))
    g:spawn(function() baton.sleep(5) error({ kind = "io", message = "first" }) end)
    g:spawn(function() baton.sleep(30) error("second, never: aborted") end)
    local t0 = baton.now()
    local ok, err = pcall(g.join_all, g)
    assert.is_false(ok)
    assert.equal("first", err.message)          -- the task's own error value
    assert.is_string(err.traceback)
    assert.is_true(baton.now() - t0 < 1000)     -- not the siblings' 60 s
    table.sort(log)
    assert.same({ "b", "c" }, log)              -- they unwound before join_all raised
    assert.equal("cancelled", b:status())
    assert.equal("cancelled", c:status())
    assert.equal(0, #g)
  end))

  it("fail_fast: wait_within raises too; join_next hands the failure out as a task",
    H.async(function()
      local g = baton.group { fail_fast = true }
      g:spawn(closer({}, "x"))
      g:spawn(function() error("boom") end)
      assert.has_error(function() g:wait_within(5000) end)
      local h = baton.group { fail_fast = true }
      local log = {}
      h:spawn(closer(log, "y"))
      h:spawn(function() error("bang") end)
      local t = h:join_next()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.matches("bang", err)
      local rest = h:join_all()  -- handed out already: not raised again
      assert.equal(1, #rest)
      assert.equal("cancelled", rest[1]:status())
      assert.same({ "y" }, log)
    end))

  it("without fail_fast a failure leaves the siblings running", H.async(function()
    local g = baton.group()
    local other = g:spawn(function() baton.sleep(20) return "fine" end)
    g:spawn(function() error("alone") end)
    local tasks = g:join_all()
    assert.equal(2, #tasks)
    assert.same({ true, "fine" }, { other:join() })
  end))

  it("close() from a task returns only after every child's <close> handler ran",
    H.async(function()
      local g = baton.group()
      local log = {}
      for i = 1, 3 do g:spawn(slow(log, i)) end
      baton.yield()
      g:close()
      table.sort(log)
      assert.same({ 1, 2, 3 }, log)
      assert.has_error(function() g:spawn(print) end)
    end))

  it("a task's join returns only after the children of its groups unwound", H.async(function()
    local log = {}
    local parent = baton.spawn(function()
      local g = baton.group()  -- owned by this task; not closed, not joined
      g:spawn(slow(log, "child unwound"))
      baton.yield()
      return "parent done"
    end)
    local r = { parent:join() }
    log[#log + 1] = "joined"
    assert.same({ true, "parent done" }, r)
    assert.same({ "child unwound", "joined" }, log)
  end))

  it("a group closed by <close> aborts its children and the owner's join waits for them",
    H.async(function()
      local log = {}
      local parent = baton.spawn(function()
        local g <close> = baton.group()
        g:spawn(slow(log, "grandchild"))
        baton.yield()
        error("parent fails")  -- error unwinding: <close> cannot wait
      end)
      local ok = parent:join()
      log[#log + 1] = "joined"
      assert.is_false(ok)
      assert.equal("failed", parent:status())
      assert.same({ "grandchild", "joined" }, log)
    end))

  it("nested ownership: grandchildren unwind before the grandparent's join returns",
    H.async(function()
      local log = {}
      local top = baton.spawn(function()
        local g = baton.group()
        g:spawn(function()
          local h = baton.group()
          h:spawn(slow(log, "grandchild"))
          baton.sleep(60000)
        end)
        baton.sleep(60000)
      end)
      baton.sleep(5)  -- everyone started
      top:abort()
      top:join()
      assert.same({ "grandchild" }, log)
      assert.equal("cancelled", top:status())
    end))

  it("baton.spawn inside a task is detached: it outlives the task", H.async(function()
    local inner
    local outer = baton.spawn(function()
      inner = baton.spawn(function() baton.sleep(20) return "still here" end)
    end)
    outer:join()
    assert.equal("waiting", inner:status())
    assert.same({ true, "still here" }, { inner:join() })
  end))

  it("baton.timeout returns only after fn's group children unwound", H.async(function()
    local log = {}
    local r = { baton.timeout(10, function()
      local g = baton.group()
      g:spawn(slow(log, "child unwound"))
      baton.sleep(60000)
    end) }
    assert.is_nil(r[1])
    assert.equal("timeout", r[3])
    assert.same({ "child unwound" }, log)
  end))

  it("a finishing task reports 'finishing' until its children end", H.async(function()
    local parent = baton.spawn(function()
      local g = baton.group()
      g:spawn(slow({}, "child"))
      baton.yield()
    end)
    baton.sleep(10)
    assert.equal("finishing", parent:status())
    assert.is_true(parent:join())
    assert.equal("done", parent:status())
  end))
end)

describe("baton.group waited on by its own task", function()
  it("join_all, and join_next when the caller is the last one running, raise (they would "
     .. "wait for the caller itself)", H.async(function()
    local g = baton.group()
    local t = g:spawn(function() return g:join_all() end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.matches("baton.group:join_all: a task of the group cannot wait for all of it",
                   tostring(err), 1, true)
    local g2 = baton.group()
    local t2 = g2:spawn(function() return g2:join_next() end)
    ok, err = t2:join()
    assert.is_false(ok)
    assert.matches("baton.group:join_next: the only task of the group still running is the caller",
                   tostring(err), 1, true)
    -- a member collecting its siblings is fine
    local g3 = baton.group()
    g3:spawn(function() baton.sleep(5) return "sibling" end)
    local t3 = g3:spawn(function() return g3:join_next():join() end)
    assert.same({ true, true, "sibling" }, { t3:join() })
  end))
end)
