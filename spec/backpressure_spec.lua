-- baton.backpressure: capacity, shedding (the "shed" failure and its facts), release, the
-- soft limit and its warning once per crossing, configuration errors, and permits that
-- cannot leak depth.
local baton = require "baton"
local H = require "spec.helper"

-- Runs fn with baton.on_warning collecting into a list; returns the list.
local function warnings_of(fn)
  local got = {}
  baton.on_warning(function(m) got[#got + 1] = m end)
  local ok, err = pcall(fn)
  baton.on_warning(nil)
  assert(ok, err)
  return got
end

describe("baton.backpressure", function()
  describe("configuration", function()
    it("rejects a zero capacity, naming the key", function()
      assert.has_error(function() baton.backpressure { capacity = 0 } end,
        "baton.backpressure: bad argument #1 'capacity' (expected integer >= 1, got 0)")
      assert.has_error(function() baton.backpressure {} end,
        "baton.backpressure: bad argument #1 'capacity' (expected integer >= 1, got nil)")
    end)

    it("rejects a soft limit at or above capacity", function()
      assert.has_error(function() baton.backpressure { capacity = 5, soft = 5 } end,
        "baton.backpressure: bad argument #1 'soft' (expected integer below the capacity 5, got 5)")
      assert.has_error(function() baton.backpressure { capacity = 5, soft = 6 } end,
        "baton.backpressure: bad argument #1 'soft' (expected integer below the capacity 5, got 6)")
      assert.has_error(function() baton.backpressure { capacity = 5, soft = 0 } end,
        "baton.backpressure: bad argument #1 'soft' (expected integer >= 1, got 0)")
    end)

    it("rejects unknown keys (before missing ones) and non-integers, naming them", function()
      assert.has_error(function() baton.backpressure { sofft = 1 } end,
        "baton.backpressure: bad argument #1 'sofft' (unknown option)")
      assert.has_error(function() baton.backpressure { capacity = 2.5 } end,
        "baton.backpressure: bad argument #1 'capacity' (expected integer >= 1, got 2.5)")
      assert.has_error(function() baton.backpressure() end,
        "baton.backpressure: bad argument #1 'options' (expected table, got no value)")
    end)

    it("reports the capacity it was built with", function()
      local bp = baton.backpressure { capacity = 7 }
      assert.equal(7, bp:capacity())
      assert.is_nil(bp:soft())
      assert.equal(3, baton.backpressure { capacity = 7, soft = 3 }:soft())
    end)
  end)

  it("acquires within capacity", function()
    local bp = baton.backpressure { capacity = 5 }
    local p = bp:try_acquire()
    assert.truthy(p)
    assert.equal(1, bp:depth())
    p:release()
  end)

  it("sheds when full: nil, msg, \"shed\", { depth, capacity }", function()
    local bp = baton.backpressure { capacity = 2 }
    local a, b = bp:try_acquire(), bp:try_acquire()
    local msg, _, detail = H.assert_failure("baton.backpressure:try_acquire", "shed",
                                            bp:try_acquire())
    assert.equal("baton.backpressure:try_acquire: at capacity (2 of 2 in use)", msg)
    assert.same({ depth = 2, capacity = 2 }, detail)
    assert.equal(2, bp:depth())  -- a shed changes nothing
    a:release(); b:release()
  end)

  it("decrements depth on release, and admits again", function()
    local bp = baton.backpressure { capacity = 3 }
    local a, b = bp:try_acquire(), bp:try_acquire()
    a:release()
    assert.equal(1, bp:depth())
    b:release()
    assert.equal(0, bp:depth())
  end)

  it("releases idempotently: a second release, on empty, is a no-op", function()
    local bp = baton.backpressure { capacity = 3 }
    local a = bp:try_acquire()
    a:release()
    a:release()
    assert.equal(0, bp:depth())
    assert.is_false(a:held())
    local b = bp:try_acquire()
    a:release()  -- a stale permit never takes b's slot
    assert.equal(1, bp:depth())
    b:release()
  end)

  describe("soft limit", function()
    it("accepts requests below soft without warning", function()
      local bp = baton.backpressure { capacity = 5, soft = 3 }
      local ps = {}
      local w = warnings_of(function()
        ps[1], ps[2] = bp:try_acquire(), bp:try_acquire()
      end)
      assert.equal(2, bp:depth())
      assert.same({}, w)
      for _, p in ipairs(ps) do p:release() end
    end)

    it("warns through baton.on_warning once per crossing, not per acquire", function()
      local bp = baton.backpressure { capacity = 5, soft = 2 }
      local ps = {}
      local w = warnings_of(function()
        ps[1] = bp:try_acquire()
        ps[2] = bp:try_acquire()  -- reaches soft: warns
        ps[3] = bp:try_acquire()  -- still above: silent
      end)
      assert.equal(1, #w)
      assert.matches("depth 2 reached the soft limit 2 %(capacity 5%)", w[1])
      w = warnings_of(function()
        ps[3]:release()
        ps[2]:release()           -- back below soft
        ps[2] = bp:try_acquire()  -- crosses again: warns again
      end)
      assert.equal(1, #w)
      ps[1]:release(); ps[2]:release()
    end)

    it("still sheds at hard capacity", function()
      local bp = baton.backpressure { capacity = 3, soft = 2 }
      local ps = {}
      warnings_of(function()
        for i = 1, 3 do ps[i] = assert(bp:try_acquire()) end
      end)
      local _, _, detail = H.assert_failure("baton.backpressure:try_acquire", "shed",
                                            bp:try_acquire())
      assert.same({ depth = 3, capacity = 3, soft = 2 }, detail)
      for _, q in ipairs(ps) do q:release() end
    end)

    it("reports depth / soft as soft_ratio, 0 without a soft limit", function()
      local bp = baton.backpressure { capacity = 10, soft = 4 }
      assert.equal(0, bp:soft_ratio())
      local ps = {}
      warnings_of(function()
        for i = 1, 6 do ps[i] = bp:try_acquire() end
      end)
      assert.equal(1.5, bp:soft_ratio())
      for _, p in ipairs(ps) do p:release() end
      local plain = baton.backpressure { capacity = 2 }
      local p = plain:try_acquire()
      assert.equal(0, plain:soft_ratio())
      p:release()
    end)
  end)

  it("counts concurrent acquires from many tasks exactly", H.async(function()
    local bp = baton.backpressure { capacity = 100 }
    local held = {}
    local g <close> = baton.group()
    for i = 1, 10 do
      g:spawn(function()
        baton.yield()
        held[i] = bp:try_acquire()
      end)
    end
    g:join_all()
    assert.equal(10, bp:depth())
    for _, p in pairs(held) do p:release() end
    assert.equal(0, bp:depth())
  end))

  describe("a permit cannot leak depth", function()
    it("comes back when an error is raised between acquire and release (<close>)",
       function()
      local bp = baton.backpressure { capacity = 1 }
      local ok = pcall(function()
        local p <close> = assert(bp:try_acquire())
        error("the work failed")
      end)
      assert.is_false(ok)
      assert.equal(0, bp:depth())
      assert.truthy(bp:try_acquire()):release()
    end)

    it("comes back when its task is aborted", H.async(function()
      local bp = baton.backpressure { capacity = 1 }
      local t = baton.spawn(function()
        local p <close> = assert(bp:try_acquire())
        baton.sleep(10000)
      end)
      baton.yield()
      assert.equal(1, bp:depth())
      t:abort()
      t:join()
      assert.equal("cancelled", t:status())
      assert.equal(0, bp:depth())
    end))

    it("comes back when its task fails", H.async(function()
      local bp = baton.backpressure { capacity = 1 }
      local t = baton.spawn(function()
        local p <close> = assert(bp:try_acquire())
        baton.yield()
        error("boom")
      end)
      local ok = t:join()
      assert.is_false(ok)
      assert.equal(0, bp:depth())
    end))

    it("comes back, with a warning, when it is collected while held", function()
      local bp = baton.backpressure { capacity = 1 }
      local w = warnings_of(function()
        do local _ = bp:try_acquire() end
        collectgarbage()
        collectgarbage()
      end)
      assert.equal(0, bp:depth())
      assert.equal(1, #w)
      assert.matches("collected while still held", w[1])
    end)

    it("keeps its guard alive while it exists", function()
      local p = baton.backpressure { capacity = 1 }:try_acquire()
      collectgarbage()
      collectgarbage()
      assert.is_true(p:held())
      p:release()
      assert.is_false(p:held())
    end)
  end)
end)
