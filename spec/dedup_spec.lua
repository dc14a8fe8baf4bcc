-- baton.dedup: configuration, check/complete/fail and TTL expiry on a controllable clock,
-- bounded expiry, single-flight run with its cancellation rules, and its failures.
local baton = require "baton"
local H = require "spec.helper"

local raises = H.raises
local misuse = H.raises_misuse

local function manual_clock(t)
  local c = { t = t or 0 }
  function c.now() return c.t end
  return c
end

-- Yields until cond() holds, at most n times.
local function until_(cond, n)
  for _ = 1, n or 100 do
    if cond() then return true end
    baton.yield()
  end
  return cond()
end

describe("baton.dedup configuration", function()
  it("rejects a missing or negative ttl_ms and an unknown key, naming them", function()
    misuse("baton.dedup", 1, "ttl_ms", "expected integer >= 0, got nil", baton.dedup, {})
    misuse("baton.dedup", 1, "ttl_ms", "expected integer >= 0, got %-1", baton.dedup, { ttl_ms = -1 })
    raises("baton.dedup: bad argument #1 'ttl' %(unknown option%)", baton.dedup, { ttl = 10 })
    misuse("baton.dedup", 1, "clock", "expected function, got 5", baton.dedup,
           { ttl_ms = 1, clock = 5 })
  end)

  it("rejects a key that is not a string or a number, and a clock that is not a clock",
     H.async(function()
    local d = baton.dedup{ ttl_ms = 1 }
    misuse("baton.dedup:run", 1, "key", "expected string, got table", d.run, d, {}, print)
    misuse("baton.dedup:check", 1, "key", "expected string, got no value", d.check, d)
    misuse("baton.dedup:run", 2, "fn", "expected function, got 'f'", d.run, d, "k", "f")
    assert.equal("new", d:check(42))  -- numbers are keys ("42")
    local bad = baton.dedup{ ttl_ms = 1, clock = function() return "noon" end }
    raises("baton.dedup:check: clock%(%) returned 'noon' %(expected a number%)", bad.check, bad, "k")
  end))
end)

describe("dedup:check", function()
  it("says new for a new key", function()
    assert.equal("new", baton.dedup{ ttl_ms = 60000 }:check("key-1"))
  end)

  it("says in_progress for the second check", function()
    local d = baton.dedup{ ttl_ms = 60000 }
    d:check("key-1")
    assert.equal("in_progress", d:check("key-1"))
  end)

  it("says cached, with the value, after complete", function()
    local d = baton.dedup{ ttl_ms = 60000 }
    d:check("key-1")
    d:complete("key-1", "result-value")
    assert.same({ "cached", "result-value" }, { d:check("key-1") })
  end)

  it("keeps keys independent", function()
    local d = baton.dedup{ ttl_ms = 60000 }
    d:check("key-a")
    assert.equal("new", d:check("key-b"))
    local many = {}
    for _, k in ipairs { "key-x", "key-y", "key-z" } do many[#many + 1] = d:check(k) end
    assert.same({ "new", "new", "new" }, many)
  end)

  it("treats an entry past its TTL as new (a zero TTL expires at once)", function()
    local d = baton.dedup{ ttl_ms = 0 }
    d:check("key-1")
    d:complete("key-1", "old")
    assert.equal("new", d:check("key-1"))
  end)

  it("expires cached and in-progress entries after ttl_ms", function()
    local clock = manual_clock(100)
    local d = baton.dedup{ ttl_ms = 50, clock = clock.now }
    d:check("a")
    d:complete("a", 1)
    d:check("b")
    clock.t = 149
    assert.same({ "cached", 1 }, { d:check("a") })
    assert.equal("in_progress", d:check("b"))
    clock.t = 150
    assert.equal("new", d:check("a"))
    assert.equal("new", d:check("b"))
  end)

  it("honours a TTL given to check for that pending key, in expiry order with the others", function()
    local clock = manual_clock(100)
    local d = baton.dedup{ ttl_ms = 50, clock = clock.now }
    d:check("long", 500)        -- its own TTL: pending until 600
    d:check("default")          -- the table's: until 150
    d:check("short", 10)        -- until 110: linked before "default"
    clock.t = 120
    assert.equal("new", d:check("short"))  -- expired, and "short" again pending until 170
    clock.t = 160
    assert.equal("new", d:check("default"))
    assert.equal("in_progress", d:check("long"))
    clock.t = 600
    assert.equal("new", d:check("long"))
    -- the sweep pops the head while it is due: every expired key goes, the live ones stay
    clock.t = 10000
    for i = 1, 20 do d:check("s" .. i, i % 2 == 0 and 5 or 5000) end
    clock.t = 10010
    d:check("x")
    d:check("y")
    d:check("z")  -- each call pops up to 8 expired entries from the head
    assert.is_true(d:size() <= 20, "size " .. d:size())
    misuse("baton.dedup:check", 2, "ttl_ms", "milliseconds >= 0", d.check, d, "k", -5)
  end)

  it("fail clears an in-progress key so the next caller is not blocked", function()
    local d = baton.dedup{ ttl_ms = 60000 }
    d:check("k")
    d:fail("k")
    assert.equal("new", d:check("k"))
    d:complete("k", "v")
    d:fail("k")  -- a cached value stays
    assert.same({ "cached", "v" }, { d:check("k") })
  end)
end)

describe("bounded expiry and waiting", function()
  it("expires entries without sweeping the whole table on each call", function()
    local clock = manual_clock(0)
    local d = baton.dedup{ ttl_ms = 10, clock = clock.now }
    for i = 1, 1000 do d:complete("k" .. i, i) end
    assert.equal(1000, d:size())
    clock.t = 10
    assert.equal("new", d:check("k500"))  -- an expired key reads as absent at once
    local size = d:size()
    assert.is_true(size >= 1000 - 8 and size < 1000, "one call did bounded work: " .. size)
    for _ = 1, 200 do d:check("k500") end  -- each call sweeps a little more
    assert.equal(1, d:size())             -- only k500, now in progress
  end)

  it("lets a caller wait for an execution in progress instead of failing", H.async(function()
    local d = baton.dedup{ ttl_ms = 60000 }
    local runs = 0
    local first = baton.spawn(d.run, d, "k", function()
      runs = runs + 1
      baton.sleep(5)
      return "v"
    end)
    baton.yield()
    assert.equal("in_progress", d:check("k"))
    assert.equal("v", d:run("k", function() runs = runs + 1 end))  -- waits for the first
    assert.same({ true, "v" }, { first:join() })
    assert.equal(1, runs)
  end))
end)

describe("dedup:run", function()
  it("runs fn once for 100 concurrent callers, and all get its results", H.async(function()
    local d = baton.dedup{ ttl_ms = 60000 }
    local runs = 0
    local g <close> = baton.group()
    for _ = 1, 100 do
      g:spawn(d.run, d, "same", function(a, b)
        runs = runs + 1
        baton.sleep(2)
        return a .. b, runs
      end, "x", "y")
    end
    for _, t in ipairs(g:join_all()) do assert.same({ "xy", 1 }, { t:results() }) end
    assert.equal(1, runs)
  end))

  it("returns cached values without running fn, until the TTL passes", H.async(function()
    local clock = manual_clock(0)
    local d = baton.dedup{ ttl_ms = 100, clock = clock.now }
    local runs = 0
    local function fn() runs = runs + 1; return "r" .. runs, nil end
    assert.same({ "r1", nil }, { d:run("k", fn) })
    clock.t = 99
    assert.same({ "r1", nil }, { d:run("k", fn) })
    assert.same({ "cached", "r1", nil }, { d:check("k") })
    assert.equal(1, runs)
    clock.t = 100
    assert.equal("r2", d:run("k", fn))
    assert.equal(2, runs)
  end))

  it("raises fn's error in every waiter and caches nothing", H.async(function()
    local d = baton.dedup{ ttl_ms = 60000 }
    local runs = 0
    local g <close> = baton.group()
    for _ = 1, 3 do
      g:spawn(d.run, d, "k", function() runs = runs + 1; baton.sleep(1); error({ code = 500 }) end)
    end
    for _, t in ipairs(g:join_all()) do
      assert.is_false(t.ok)
      assert.equal(500, t.error.code)
    end
    assert.equal(1, runs)
    assert.equal("new", d:check("k"))
  end))

  it("returns a nil, err failure to every waiter and caches nothing", H.async(function()
    local d = baton.dedup{ ttl_ms = 60000 }
    local a = baton.spawn(d.run, d, "k", function()
      baton.sleep(1)
      return nil, "fn: refused", "protocol", { status = 403 }
    end)
    baton.yield()  -- a starts the execution
    local _, _, detail = H.assert_failure("fn", "protocol",
                                          d:run("k", function() error("not run") end))
    assert.same({ status = 403 }, detail)
    assert.same({ true, nil, "fn: refused", "protocol", { status = 403 } }, { a:join() })
    assert.equal("again", d:run("k", function() return "again" end))
  end))

  it("does not cancel the execution for the others when one caller is cancelled",
     H.async(function()
    local d = baton.dedup{ ttl_ms = 60000 }
    local runs, unwound = 0, false
    local function fn()
      runs = runs + 1
      local _ <close> = setmetatable({}, { __close = function() unwound = true end })
      baton.sleep(10)
      return "shared"
    end
    local a = baton.spawn(d.run, d, "k", fn)  -- a starts the execution
    local b = baton.spawn(d.run, d, "k", fn)
    local c = baton.spawn(d.run, d, "k", fn)
    baton.sleep(1)
    a:abort()
    local ok, err = a:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.is_false(unwound)
    assert.same({ true, "shared" }, { b:join() })
    assert.same({ true, "shared" }, { c:join() })
    assert.equal(1, runs)
    assert.same({ "cached", "shared" }, { d:check("k") })
  end))

  it("cancels the execution when every waiter is gone, and forgets the key", H.async(function()
    local d = baton.dedup{ ttl_ms = 60000 }
    local unwound = false
    local function fn()
      local _ <close> = setmetatable({}, { __close = function() unwound = true end })
      baton.sleep(60000)
    end
    local a = baton.spawn(d.run, d, "k", fn)
    local b = baton.spawn(d.run, d, "k", fn)
    baton.sleep(1)
    a:abort(); a:join()
    assert.is_false(unwound)
    b:abort(); b:join()
    assert.equal("new", d:check("k"))  -- at once, before the execution has unwound
    d:fail("k")
    assert.is_true(until_(function() return unwound end))
    assert.equal("fresh", d:run("k", function() return "fresh" end))
  end))

  it("returns a \"busy\" failure for a key check() put in progress", H.async(function()
    local d = baton.dedup{ ttl_ms = 60000 }
    d:check("k")
    local ran = false
    local msg, _, detail = H.assert_failure("baton.dedup:run", "busy",
                                            d:run("k", function() ran = true end))
    assert.equal("baton.dedup:run: key 'k' is in progress (claimed by check)", msg)
    assert.same({ key = "k" }, detail)
    assert.is_false(ran)
  end))

  it("needs a task to wait, but not to return a cached value", function()
    local d = baton.dedup{ ttl_ms = 60000 }
    raises("baton.dedup:run: not inside a baton task", d.run, d, "k", function() return 1 end)
    assert.equal("new", d:check("k"))  -- the failed run left nothing behind
    d:complete("k", "v")
    assert.equal("v", d:run("k", function() return "other" end))
  end)

  it("refuses to let the execution wait for itself", H.async(function()
    local d = baton.dedup{ ttl_ms = 60000 }
    local v, err = pcall(d.run, d, "k", function() return d:run("k", function() end) end)
    assert.is_false(v)
    assert.matches("wait for itself", tostring(err))
  end))
end)
