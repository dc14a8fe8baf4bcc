-- baton.semaphore and baton.budget: FIFO hand-off, permits as closable values, timeouts,
-- cancellation of queued waiters, close, and per-key budgets.
local baton = require "baton"
local H = require "spec.helper"

describe("baton.semaphore", function()
  it("grants waiters in FIFO order", H.async(function()
    local s = baton.semaphore(1)
    local p = s:acquire()
    local order = {}
    local g = baton.group()
    for i = 1, 5 do
      g:spawn(function()
        local q <close> = s:acquire()
        order[#order + 1] = i
        baton.yield()
      end)
    end
    baton.yield()
    assert.equal(5, s:waiting())
    p:release()
    g:join_all()
    assert.same({ 1, 2, 3, 4, 5 }, order)
    assert.equal(1, s:available())
  end))

  it("try_acquire fails while anyone is queued (fairness)", H.async(function()
    local s = baton.semaphore(2)
    local a = s:acquire()
    local t = baton.spawn(function() return s:acquire(2) end)
    baton.yield()
    assert.equal(1, s:available())
    assert.is_nil(s:try_acquire())  -- one permit free, but the queued task comes first
    a:release()
    local _, p = t:join()
    assert.equal(0, s:available())
    p:release()
    assert.equal(2, s:available())
  end))

  it("acquires k permits at once", H.async(function()
    local s = baton.semaphore(5)
    local p = s:acquire(3)
    assert.equal(2, s:available())
    p:release()
    assert.equal(5, s:available())
  end))

  describe("a permit held in a <close> variable comes back when its task", function()
    local function check(abort, body)
      return H.async(function()
        local s = baton.semaphore(1)
        local t = baton.spawn(function()
          local p <close> = s:acquire()
          baton.sleep(20)
          body()
        end)
        baton.yield()
        assert.equal(0, s:available())
        if abort then t:abort() end
        t:join()
        assert.equal(1, s:available())
      end)
    end
    it("is aborted", check(true, function() baton.sleep(60000) end))
    it("errors", check(false, function() error("fail while holding") end))
    it("finishes", check(false, function() end))
  end)

  it("release is idempotent", H.async(function()
    local s = baton.semaphore(1)
    local p = s:acquire()
    p:release()
    p:release()
    assert.equal(1, s:available())
    assert.is_false(p:held())
  end))

  it("aborting a task queued in acquire unlinks it and the next waiter is granted",
    H.async(function()
      local s = baton.semaphore(1)
      local p = s:acquire()
      local first = baton.spawn(function() return s:acquire() end)
      local second = baton.spawn(function()
        local q <close> = s:acquire()
        return "second got it"
      end)
      baton.yield()
      assert.equal(2, s:waiting())
      first:abort()
      first:join()
      assert.equal(1, s:waiting())
      p:release()
      assert.same({ true, "second got it" }, { second:join() })
      assert.equal(1, s:available())
      assert.equal(0, s:waiting())
    end))

  it("a cancelled large request at the head lets smaller ones through", H.async(function()
    local s = baton.semaphore(3)
    local p = s:acquire(2)
    local big = baton.spawn(function() return s:acquire(3) end)
    local small = baton.spawn(function() local q <close> = s:acquire(1) return "small" end)
    baton.yield()
    assert.equal(2, s:waiting())
    big:abort()
    assert.same({ true, "small" }, { small:join() })
    p:release()
    assert.equal(3, s:available())
  end))

  it("weighted acquire is FIFO-fair: small requests never overtake a large one at the head",
    H.async(function()
      local s = baton.semaphore(4)
      local events = {}
      local g = baton.group()
      for w = 1, 3 do  -- three workers churning one permit each
        g:spawn(function()
          for _ = 1, 10 do
            local p <close> = s:acquire(1)
            events[#events + 1] = "small" .. w
            baton.sleep(1)
          end
        end)
      end
      baton.yield()
      assert.equal(1, s:available())
      local big = g:spawn(function()
        events[#events + 1] = "big queued"
        local p <close> = s:acquire(4)
        events[#events + 1] = "big granted"
        baton.sleep(1)
      end)
      g:join_all()
      assert.is_true(big:join())
      local queued, granted
      for i, e in ipairs(events) do
        if e == "big queued" then queued = i elseif e == "big granted" then granted = i end
      end
      -- once the large request is queued, no small one is granted before it
      assert.equal(queued + 1, granted)
      assert.equal(30 + 2, #events)  -- and the small ones all ran afterwards
      assert.equal(4, s:available())
    end))

  it("add_permits refuses to take the capacity past 2^53 (counts stay exact)", function()
    local s = baton.semaphore(10)
    H.raises("baton%.semaphore:add_permits: bad argument #1 'n' %(expected integer <= "
             .. "9007199254740982 %(2%^53 %- the capacity%), got 9007199254740983%)",
             s.add_permits, s, (1 << 53) - 9)
    s:add_permits((1 << 53) - 10)
    assert.equal(1 << 53, s:capacity())
    H.raises("expected integer <= 2%^53, got 4611686018427387904", baton.semaphore, 1 << 62)
  end)

  it("add_permits grows the capacity and wakes waiters in FIFO order", H.async(function()
    local s = baton.semaphore(2)
    local all = s:acquire(2)  -- a request must fit the capacity when it is made
    local order, held = {}, {}
    local g = baton.group()
    for i = 1, 5 do
      g:spawn(function()
        held[i] = s:acquire(i == 4 and 2 or 1)  -- the 4th asks for 2
        order[#order + 1] = i
      end)
    end
    baton.yield()
    assert.equal(5, s:waiting())
    s:add_permits(3)
    assert.equal(5, s:capacity())
    baton.yield()
    assert.same({ 1, 2, 3 }, order)
    assert.equal(2, s:waiting())
    s:add_permits(1)  -- the head wants 2: the 5th, which would fit, waits behind it
    baton.yield()
    assert.same({ 1, 2, 3 }, order)
    assert.equal(1, s:available())
    s:add_permits(2)
    g:join_all()
    assert.same({ 1, 2, 3, 4, 5 }, order)
    assert.equal(8, s:capacity())
    for _, p in pairs(held) do p:release() end
    all:release()
    assert.equal(8, s:available())
  end))

  it("forget removes only available permits, says how many, and shrinks the capacity",
    H.async(function()
      local s = baton.semaphore(3)
      local p = s:acquire(2)
      assert.equal(1, s:forget(5))  -- one is available: the two held are not taken
      assert.equal(2, s:capacity())
      assert.equal(0, s:available())
      assert.equal(0, s:forget(1))
      p:release()  -- the held permits come back, and no more
      assert.equal(2, s:available())
      assert.equal(2, s:capacity())
      assert.has_error(function() s:acquire(3) end)  -- past the new capacity: misuse
      assert.equal(2, s:forget(2))
      assert.equal(0, s:capacity())
      s:add_permits(1)
      assert.equal(1, s:capacity())
      assert.equal(1, s:available())
    end))

  it("a group limit forgotten down to 0 pauses it: jobs spawned then wait for add_permits",
    H.async(function()
      local s = baton.semaphore(1)
      local g = baton.group { limit = s }
      assert.equal(1, s:forget(1))
      local t = g:spawn(function() return "ran" end)
      local t2 = g:spawn(function() return "ran too" end)
      baton.sleep(5)
      assert.equal("pending", t:status())   -- waiting on the gate, not failed
      assert.equal("pending", t2:status())
      s:add_permits(1)
      assert.same({ true, "ran" }, { t:join() })
      assert.same({ true, "ran too" }, { t2:join() })
      assert.equal(1, s:available())
    end))

  it("add_permits and forget reject bad arguments and a closed semaphore", H.async(function()
    local s = baton.semaphore(1)
    for _, bad in ipairs({ function() s:add_permits(-1) end, function() s:add_permits("x") end,
                           function() s:add_permits() end, function() s:forget(1.5) end,
                           function() s:forget() end }) do
      local ok, err = pcall(bad)
      assert.is_false(ok)
      assert.matches("baton.semaphore:[af][do][dr]", err)
    end
    s:close()
    assert.has_error(function() s:add_permits(1) end, "baton.semaphore:add_permits: the semaphore is closed")
    assert.has_error(function() s:forget(1) end, "baton.semaphore:forget: the semaphore is closed")
  end))

  it("acquire with a timeout returns nil, msg, 'timeout' and leaves the queue clean",
    H.async(function()
      local s = baton.semaphore(1)
      local p = s:acquire()
      local r = table.pack(H.timed(s.acquire, s, 1, 20))
      local elapsed = r[1]
      H.assert_failure("baton.semaphore:acquire", "timeout", table.unpack(r, 2, r.n))
      assert.is_true(elapsed >= 19)
      assert.equal(0, s:waiting())
      p:release()
      assert.equal(1, s:available())
    end))

  it("close fails all waiters with nil, msg, 'closed'", H.async(function()
    local s = baton.semaphore(1)
    local p = s:acquire()
    local g = baton.group()
    for _ = 1, 3 do g:spawn(function() return s:acquire() end) end
    baton.yield()
    s:close()
    for _, t in ipairs(g:join_all()) do
      local r = table.pack(t:join())
      assert.is_true(r[1])
      local msg = H.assert_failure("baton.semaphore:acquire", "closed", table.unpack(r, 2, r.n))
      assert.matches("closed while waiting", msg)
    end
    assert.equal(0, s:waiting())
    assert.has_error(function() s:acquire() end)
    p:release()
  end))

  it("rejects bad arguments naming the method", H.async(function()
    local s = baton.semaphore(2)
    local ok, err = pcall(s.acquire, s, 3)
    assert.is_false(ok)
    assert.matches("semaphore:acquire", err)
    ok, err = pcall(s.try_acquire, s, 0)
    assert.is_false(ok)
    assert.matches("try_acquire", err)
    assert.has_error(function() baton.semaphore(-1) end)
    assert.has_error(function() baton.semaphore("x") end)
    assert.has_error(function() s:acquire(1, -1) end)
  end))

  it("shows large counts in full in tostring", H.async(function()
    local s = baton.semaphore(2 ^ 53)
    assert.equal("baton.Semaphore (9007199254740992/9007199254740992 available, 0 waiting)",
                 tostring(s))
    local p = s:try_acquire(1 << 40)
    assert.equal("baton.Permit (1099511627776, held)", tostring(p))
    p:release()
    local g = baton.group { limit = 1 << 40 }
    assert.equal("baton.Group (0 live, 0 finished)", tostring(g))
    assert.matches("depth 0, capacity 4294967296%)",
                   tostring(baton.backpressure { capacity = 1 << 32 }))
    assert.matches("%(4294967295 attempts",
                   tostring(baton.retry { max_attempts = (1 << 32) - 1, base_ms = 1 }))
  end))

  it("a permit has a finalizer only while held", H.async(function()
    local s = baton.semaphore(2)
    local p, q = s:acquire(), s:try_acquire()
    assert.is_function(getmetatable(p).__gc)
    do local _ <close> = p end
    q:release()
    for _, r in ipairs({ p, q }) do
      local mt = getmetatable(r)
      assert.is_nil(mt.__gc)
      assert.equal("baton.Permit", mt.__name)
      assert.is_false(r:held())
      assert.equal("baton.Permit (1, released)", tostring(r))
      r:release()
      mt.__close(r)
    end
    assert.equal(2, s:available())
  end))

  it("a permit collected while held is released with a warning", H.async(function()
    local warnings = {}
    baton.on_warning(function(m) warnings[#warnings + 1] = m end)
    local s = baton.semaphore(1)
    do local _ = s:acquire() end
    collectgarbage()
    collectgarbage()
    baton.on_warning(nil)
    assert.equal(1, s:available())
    assert.equal(1, #warnings)
    assert.matches("permit", warnings[1])
  end))
end)

describe("baton.budget", function()
  it("counts in-flight uses per key up to the cap", H.async(function()
    local b = baton.budget { cap = 2 }
    local p1 = b:try_acquire("api.example")
    local p2 = b:try_acquire("api.example")
    assert.is_nil(b:try_acquire("api.example"))
    local other = b:try_acquire("other.host")
    assert.is_truthy(other)
    assert.same({ ["api.example"] = 2, ["other.host"] = 1 }, b:snapshot())
    p1:release()
    assert.is_truthy(b:try_acquire("api.example", 2))
    p2:release()
    other:release()
  end))

  it("drops a key when its count reaches zero", H.async(function()
    local b = baton.budget { cap = 1 }
    do local p <close> = b:try_acquire("k") end
    assert.same({}, b:snapshot())
    assert.equal(0, b:count("k"))
  end))

  it("a per-call cap overrides the default; cap 0 blocks the key", H.async(function()
    local b = baton.budget { cap = 1 }
    assert.is_nil(b:try_acquire("blocked", 0))
    local a = b:try_acquire("wide", 3)
    local c = b:try_acquire("wide", 3)
    assert.equal(2, b:count("wide"))
    a:release()
    c:release()
  end))

  it("rejects bad config", function()
    H.raises_misuse("baton.budget", 1, "cap", "expected integer >= 0, got %-1", baton.budget,
                    { cap = -1 })
    H.raises_misuse("baton.budget", 1, "capp", "unknown option", baton.budget, { capp = 1 })
    H.raises_misuse("baton.budget", 1, "opts", "expected string keys, got 1", baton.budget, { 5 })
  end)
end)
