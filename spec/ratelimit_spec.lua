-- baton.ratelimit: GCRA rate limits. The rate holds (a burst of 1 spaces every unit; a
-- burst goes at once), waiting is FIFO and cancellable (an aborted or timed-out waiter takes
-- nothing and blocks nobody, a waiter granted and aborted before it ran gives its cost
-- back), try_acquire's failure has the convention's shape, adjust corrects an estimate, and
-- misuse raises. The limiter over a store (store =, key =) is in spec/store_spec.lua.
local baton = require "baton"
local H = require "spec.helper"

local FN = "baton.ratelimit"

describe("baton.ratelimit", function()
  it("spaces units by the interval with a burst of 1: 60 at 100/s take >= 0.59 s", H.async(function()
    local rl = baton.ratelimit { rate = 6000, per_ms = 60000, burst = 1 }
    local ms = H.timed(function()
      for _ = 1, 60 do assert(rl:acquire(1)) end
    end)
    assert.is_true(ms >= 590, ("60 acquires took %.1f ms"):format(ms))
    assert.is_true(ms < 590 + 400, ("60 acquires took %.1f ms (late)"):format(ms))
  end))

  it("holds 600 a minute with a burst of 1: 60 requests take >= 5.9 s", H.async(function()
    local rl = baton.ratelimit { rate = 600, per_ms = 60000, burst = 1 }
    local g <close> = baton.group()
    local done = 0
    for _ = 1, 60 do  -- concurrent callers, queued FIFO
      g:spawn(function()
        assert(rl:acquire(1))
        done = done + 1
      end)
    end
    local ms = H.timed(function() g:join_all() end)
    assert.equal(60, done)
    assert.is_true(ms >= 5900, ("60 acquires took %.1f ms"):format(ms))
    assert.is_true(ms < 5900 + 600, ("60 acquires took %.1f ms (late)"):format(ms))
  end))

  it("lets a burst go at once, then one unit an interval", H.async(function()
    local rl = baton.ratelimit { rate = 20, per_ms = 1000, burst = 5 }  -- one every 50 ms
    assert.equal(5, rl:available())
    local ms = H.timed(function()
      for _ = 1, 5 do assert(rl:acquire(1)) end
    end)
    assert.is_true(ms < 20, "the burst waited " .. ms)
    assert.equal(0, rl:available())
    ms = H.timed(function() assert.equal(3, rl:acquire(3)) end)
    assert.is_true(ms >= 148 and ms < 400, "3 units after the burst took " .. ms)
  end))

  it("defaults the burst to the rate", H.async(function()
    local rl = baton.ratelimit { rate = 7, per_ms = 60000 }
    assert.equal(7, rl:available())
    assert.equal(1, baton.ratelimit { rate = 0.5 }:available())
  end))

  it("try_acquire returns the grant or nil, msg, 'rate_limited', { retry_after_ms }", H.async(function()
    local rl = baton.ratelimit { rate = 10, per_ms = 1000, burst = 2 }
    assert.equal(2, rl:try_acquire(2))
    local msg, _, detail = H.assert_failure(FN .. ":try_acquire", "rate_limited", rl:try_acquire(1))
    assert.is_true(detail.retry_after_ms > 90 and detail.retry_after_ms <= 100, msg)
    assert.equal(detail.retry_after_ms, rl:retry_after(1))
    assert.equal(math.tointeger(detail.retry_after_ms), detail.retry_after_ms)
    baton.sleep(detail.retry_after_ms)
    assert.equal(1, rl:try_acquire(1))  -- exactly then it fits
  end))

  it("queues FIFO: a small cost never overtakes a large one (try_acquire fails too)", H.async(function()
    local rl = baton.ratelimit { rate = 100, per_ms = 1000, burst = 5 }  -- 10 ms a unit
    assert(rl:acquire(5))
    local order = {}
    local g <close> = baton.group()
    for i, cost in ipairs { 5, 1, 2 } do
      g:spawn(function()
        assert.equal(cost, rl:acquire(cost))
        order[#order + 1] = i
      end)
    end
    baton.yield()
    assert.equal(3, rl:waiting())
    baton.sleep(25)  -- 2 units are free, but the head wants 5
    assert.is_true(rl:available() >= 2)
    local _, _, detail = H.assert_failure(FN .. ":try_acquire", "rate_limited", rl:try_acquire(1))
    assert.is_true(detail.retry_after_ms > 40, "retry after " .. detail.retry_after_ms)  -- behind 8 queued
    g:join_all()
    assert.same({ 1, 2, 3 }, order)
    assert.equal(0, rl:waiting())
  end))

  it("an aborted waiter takes nothing and does not block the next", H.async(function()
    local rl = baton.ratelimit { rate = 10, per_ms = 1000, burst = 5 }  -- 100 ms a unit
    assert(rl:acquire(5))
    local big = baton.spawn(function() return rl:acquire(5) end)  -- 500 ms away
    local small = baton.spawn(function() return rl:acquire(1) end)
    baton.yield()
    assert.equal(2, rl:waiting())
    baton.sleep(30)
    big:abort()
    local ms, ok, got = H.timed(function() return small:join() end)
    assert.is_true(ok and got == 1)
    assert.is_true(ms < 120, "the next waited " .. ms)  -- its own 100 ms, not the big one's
    assert.equal("cancelled", select(2, big:join()).kind)
    assert.equal(0, rl:waiting())
    baton.sleep(450)
    assert.equal(4, rl:available())  -- only the small one's unit is missing
  end))

  it("a waiter granted and aborted before it ran gives the cost back", H.async(function()
    local rl = baton.ratelimit { rate = 10, per_ms = 1000, burst = 4 }
    assert(rl:acquire(4))
    local a = baton.spawn(function() return rl:acquire(3) end)
    local b = baton.spawn(function() return rl:acquire(2) end)
    baton.yield()
    assert.equal(2, rl:waiting())
    rl:adjust(4, 1)          -- 3 units back: a is granted at once (in this turn) ...
    assert.equal(1, rl:waiting())
    a:abort()                -- ... and aborted before it runs: its 3 go back, b gets 2
    assert.equal("cancelled", select(2, a:join()).kind)
    local ok, got = b:join()
    assert.is_true(ok and got == 2)
    assert.equal(1, rl:available())
  end))

  it("times out a waiter: nil, msg, 'timeout', { timeout_ms }, leaving nothing queued", H.async(function()
    local rl = baton.ratelimit { rate = 1, per_ms = 1000, burst = 1 }
    assert(rl:acquire(1))
    local detail
    local ms = H.timed(function()
      detail = select(3, H.assert_failure(FN .. ":acquire", "timeout", rl:acquire(1, { timeout_ms = 50 })))
    end)
    assert.equal(50, detail.timeout_ms)
    assert.is_true(ms >= 49 and ms < 400, "timed out after " .. ms)
    local _, _, d = H.assert_failure(FN .. ":acquire", "timeout", rl:acquire(1, { timeout_ms = 0 }))
    assert.equal(0, d.timeout_ms)
    assert.equal(0, rl:waiting())
  end))

  it("adjust charges what an estimate missed and gives back what it over-charged", H.async(function()
    local tpm = baton.ratelimit { rate = 1000, per_ms = 60000, burst = 1000 }
    local est = tpm:acquire(800)
    assert.equal(800, est)
    assert.equal(200, tpm:available())
    tpm:adjust(est, 300)     -- the response used 300
    assert.equal(700, tpm:available())
    local g = tpm:acquire(700)
    tpm:adjust(g, 900)       -- it used 200 more than the whole remaining budget
    assert.equal(0, tpm:available())
    assert.is_true(tpm:retry_after(1) > 12000)  -- 200 owed + 1 at 60 ms a token
    tpm:adjust(0, 0)
  end))

  it("a give-back lets a queued waiter go at once", H.async(function()
    local rl = baton.ratelimit { rate = 1, per_ms = 60000, burst = 10 }
    local g = rl:acquire(10)
    local t = baton.spawn(function() return rl:acquire(4) end)
    baton.yield()
    assert.equal(1, rl:waiting())
    rl:adjust(g, 5)
    local ok, got = t:join()
    assert.is_true(ok and got == 4)
  end))

  it("acquire is a cancellation point and needs a task only to wait", function()
    local rl = baton.ratelimit { rate = 1, per_ms = 1000, burst = 1 }
    assert.equal(1, rl:acquire(1))  -- fits: no task needed
    H.raises("not inside a baton task", rl.acquire, rl, 1)
  end)

  it("reports misuse", function()
    H.raises_misuse(FN, 1, "rate", "a number > 0", baton.ratelimit, { per_ms = 10 })
    H.raises_misuse(FN, 1, "rate", "a number > 0", baton.ratelimit, { rate = 0 })
    H.raises_misuse(FN, 1, "ratee", "unknown option", baton.ratelimit, { ratee = 1 })
    H.raises_misuse(FN, 1, "per_ms", "milliseconds > 0", baton.ratelimit, { rate = 1, per_ms = 0 })
    H.raises_misuse(FN, 1, "burst", "integer >= 1", baton.ratelimit, { rate = 1, burst = 0 })
    H.raises_misuse(FN, 1, "key", "nil without a store", baton.ratelimit, { rate = 1, key = "k" })
    H.raises_misuse(FN, 1, "opts", "table", baton.ratelimit, 5)
    local rl = baton.ratelimit { rate = 5, burst = 3 }
    H.raises_misuse(FN .. ":acquire", 1, "cost", "integer <= the burst 3", rl.acquire, rl, 4)
    H.raises_misuse(FN .. ":try_acquire", 1, "cost", "integer >= 0", rl.try_acquire, rl, -1)
    H.raises_misuse(FN .. ":try_acquire", 1, "cost", "integer >= 0", rl.try_acquire, rl, 1.5)
    H.raises_misuse(FN .. ":acquire", 2, "timeout_ms", "milliseconds", rl.acquire, rl, 1, { timeout_ms = -1 })
    H.raises_misuse(FN .. ":acquire", 2, "timeoutms", "unknown option", rl.acquire, rl, 1, { timeoutms = 1 })
    H.raises_misuse(FN .. ":adjust", 2, "actual", "integer >= 0", rl.adjust, rl, 1)
    H.raises_misuse(FN .. ":available", 0, "self", "baton.RateLimit", rl.available, {})
    assert.matches("^baton.RateLimit %(5.0 per 1000.0 ms, burst 3; 3 available, 0 waiting%)$", tostring(rl))
  end)

  it("keeps the rate under random aborts and timeouts, and leaks no units", H.async(function()
    local rl = baton.ratelimit { rate = 200, per_ms = 1000, burst = 4 }  -- 5 ms a unit
    local rng = 7
    local function rand(n)
      rng = (rng * 1103515245 + 12345) % 2147483648
      return rng % n
    end
    local g <close> = baton.group()
    local taken, t0 = 0, baton.clock()
    local tasks = {}
    for i = 1, 60 do
      tasks[i] = g:spawn(function()
        local got = rl:acquire(1 + rand(3), rand(4) == 0 and { timeout_ms = rand(40) } or nil)
        if got then taken = taken + got end
      end)
    end
    for _ = 1, 25 do
      baton.sleep(rand(8))
      local t = tasks[1 + rand(60)]
      t:abort()
    end
    g:join_all()
    local elapsed = baton.clock() - t0
    assert.is_true(taken <= 4 + 200 * elapsed / 1000 + 1e-6, ("%d units in %.1f ms"):format(taken, elapsed))
    assert.equal(0, rl:waiting())
    baton.sleep(25)
    assert.equal(4, rl:available())  -- every unit came back: nothing leaked to an abort
  end))
end)

describe("baton.ratelimit:adjust", function()
  it("huge charges pile up to the far future and never wrap around to free", H.async(function()
    local rl = baton.ratelimit { rate = 1, per_ms = 1000, burst = 5 }
    local g = assert(rl:acquire(1))
    for _ = 1, 4 do rl:adjust(g, 2 ^ 53) end
    assert.equal(0, rl:available())
    for _ = 1, 10 do assert.is_nil((rl:try_acquire(1))) end
  end))
end)
