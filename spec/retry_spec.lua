-- baton.retry: configuration, the backoff delays (seed 003's RetryPolicy tests), jitter,
-- and call — which runs the function, waits between attempts and honours retry_after_ms —
-- with cancellation semantics; seed defect 9.
local baton = require "baton"
local H = require "spec.helper"

local raises = H.raises

describe("baton.retry configuration", function()
  it("rejects max_attempts = 0, naming the key", function()
    raises("max_attempts must be an integer >= 1", baton.retry, { max_attempts = 0, base_ms = 100 })
  end)

  it("rejects base_ms = 0 (a busy loop), naming the key", function()
    raises("base_ms must be an integer >= 1", baton.retry, { max_attempts = 3, base_ms = 0 })
  end)

  it("rejects a missing required key, a non-integer and a bad jitter", function()
    raises("max_attempts", baton.retry, { base_ms = 1 })
    raises("base_ms", baton.retry, { max_attempts = 1, base_ms = 1.5 })
    raises("base_ms", baton.retry, { max_attempts = 1, base_ms = "10" })
    raises('jitter must be "none", "full" or "equal"', baton.retry,
           { max_attempts = 1, base_ms = 1, jitter = "half" })
    raises("retry_on must be a function", baton.retry,
           { max_attempts = 1, base_ms = 1, retry_on = true })
  end)

  it("rejects max_delay_ms below base_ms", function()
    raises("max_delay_ms %(5%) must be >= base_ms %(10%)", baton.retry,
           { max_attempts = 2, base_ms = 10, max_delay_ms = 5 })
  end)

  it("rejects an unknown key, naming it", function()
    raises("unknown option 'max_attempt'", baton.retry, { max_attempt = 3, base_ms = 1 })
  end)
end)

describe("retry:delay_for", function()
  it("is the base delay for attempt 1", function()
    assert.equal(100, baton.retry{ max_attempts = 3, base_ms = 100 }:delay_for(1))
  end)

  it("doubles with each attempt", function()
    local r = baton.retry{ max_attempts = 5, base_ms = 100 }
    assert.same({ 200, 400, 800 }, { r:delay_for(2), r:delay_for(3), r:delay_for(4) })
  end)

  it("is capped at 60 s by default, and at max_delay_ms when given", function()
    assert.equal(60000, baton.retry{ max_attempts = 10, base_ms = 10000 }:delay_for(10))
    local r = baton.retry{ max_attempts = 10, base_ms = 1000 }
    for n = 1, 10 do assert.is_true(r:delay_for(n) <= 60000) end
    local capped = baton.retry{ max_attempts = 9, base_ms = 10, max_delay_ms = 250 }
    assert.equal(250, capped:delay_for(9))
  end)

  it("never overflows, whatever the attempt number", function()
    local r = baton.retry{ max_attempts = 3, base_ms = 7 }
    for _, n in ipairs { 62, 63, 64, 65, 10000, math.maxinteger } do
      assert.equal(60000, r:delay_for(n))
    end
    local big = baton.retry{ max_attempts = 3, base_ms = 10^15 // 2, max_delay_ms = 10^15 }
    assert.equal(10^15, big:delay_for(2))
    assert.equal(10^15, big:delay_for(math.maxinteger))
  end)

  it("rejects attempt numbers below 1", function()
    local r = baton.retry{ max_attempts = 3, base_ms = 7 }
    raises("attempt numbers start at 1", r.delay_for, r, 0)
    raises("number", r.delay_for, r, 1.5)
  end)

  it("applies full jitter: uniform in [0, d]", function()
    local r = baton.retry{ max_attempts = 3, base_ms = 1000, jitter = "full" }
    local seen = {}
    for _ = 1, 200 do
      local d = r:delay_for(2)
      assert.is_true(d >= 0 and d <= 2000)
      seen[d] = true
    end
    assert.is_true(next(seen, next(seen)) ~= nil, "full jitter should vary")
  end)

  it("applies equal jitter: d/2 plus uniform in [0, d/2]", function()
    local r = baton.retry{ max_attempts = 3, base_ms = 1001, jitter = "equal" }
    local lo, hi = math.huge, -1
    for _ = 1, 200 do
      local d = r:delay_for(1)
      lo, hi = math.min(lo, d), math.max(hi, d)
    end
    assert.is_true(lo >= 501 and hi <= 1001 and lo < hi)
  end)
end)

describe("retry:call", function()
  it("returns fn's results at the first success, without waiting", H.async(function()
    local r = baton.retry{ max_attempts = 3, base_ms = 60000 }
    local a, b, c = r:call(function(x, y) return x + y, "two", nil end, 1, 2)
    assert.equal(3, a)
    assert.equal("two", b)
    assert.is_nil(c)
  end))

  it("retries a raised error and returns the first success", H.async(function()
    local r = baton.retry{ max_attempts = 5, base_ms = 1 }
    local n = 0
    local v = r:call(function()
      n = n + 1
      if n < 3 then error("transient " .. n) end
      return "ok"
    end)
    assert.equal("ok", v)
    assert.equal(3, n)
  end))

  it("gives up after max_attempts with nil, the last error and the attempt count",
     H.async(function()
    local r = baton.retry{ max_attempts = 3, base_ms = 1 }
    local n = 0
    local v, err, attempts = r:call(function()
      n = n + 1
      return nil, "down " .. n  -- a failure of the world, by return value
    end)
    assert.is_nil(v)
    assert.equal("down 3", err)
    assert.equal(3, attempts)
    local _, raised, k = r:call(function() error({ code = 500 }) end)
    assert.equal(500, raised.code)
    assert.equal(3, k)
  end))

  it("asks retry_on about each error and stops when it says no", H.async(function()
    local seen = {}
    local r = baton.retry{ max_attempts = 5, base_ms = 1, retry_on = function(err)
      seen[#seen + 1] = err
      return err ~= "fatal"
    end }
    local n = 0
    local v, err, attempts = r:call(function()
      n = n + 1
      return nil, n == 1 and "flaky" or "fatal"
    end)
    assert.is_nil(v)
    assert.equal("fatal", err)
    assert.equal(2, attempts)
    assert.same({ "flaky", "fatal" }, seen)
  end))

  it("waits the backoff between attempts", H.async(function()
    local delays = {}
    local r = baton.retry{ max_attempts = 4, base_ms = 4,
                           on_retry = function(attempt, ms) delays[attempt] = ms end }
    local elapsed = H.timed(r.call, r, function() error("no") end)
    assert.same({ 4, 8, 16 }, delays)
    assert.is_true(elapsed >= 4 + 8 + 16 - 3, "waited only " .. elapsed .. " ms")
  end))

  it("honours retry_after_ms from the error, capped by max_delay_ms", H.async(function()
    local delays = {}
    local r = baton.retry{ max_attempts = 3, base_ms = 1, max_delay_ms = 40,
                           on_retry = function(_, ms) delays[#delays + 1] = ms end }
    local n = 0
    local elapsed, v = H.timed(r.call, r, function()
      n = n + 1
      if n == 1 then return nil, { status = 429, retry_after_ms = 25 } end
      if n == 2 then error({ status = 429, retry_after_ms = 10^9 }) end
      return "served"
    end)
    assert.equal("served", v)
    assert.same({ 25, 40 }, delays)
    assert.is_true(elapsed >= 25 + 40 - 2, "waited only " .. elapsed .. " ms")
  end))

  it("raises the cancellation error when aborted while waiting", H.async(function()
    local r = baton.retry{ max_attempts = 3, base_ms = 60000 }
    local calls = 0
    local t = baton.spawn(r.call, r, function() calls = calls + 1; error("boom") end)
    baton.sleep(1)
    assert.equal("waiting", t:status())
    t:abort()
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal("cancelled", t:status())
    assert.equal(1, calls)
  end))

  it("never retries a cancellation raised by fn", H.async(function()
    local r = baton.retry{ max_attempts = 5, base_ms = 1 }
    local calls = 0
    local t = baton.spawn(r.call, r, function() calls = calls + 1; baton.sleep(60000) end)
    baton.sleep(1)
    t:abort()
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal(1, calls)
  end))

  it("explains that waiting needs a task", function()
    local r = baton.retry{ max_attempts = 2, base_ms = 1 }
    assert.equal(7, r:call(function() return 7 end))  -- no wait: fine anywhere
    raises("retry:call: not inside a baton task", r.call, r, function() error("x") end)
  end)

  it("fixes seed defect 9: jitter, a predicate, and a helper that actually waits",
     H.async(function()
    local waits = {}
    local r = baton.retry{ max_attempts = 6, base_ms = 2, jitter = "equal",
                           retry_on = function(err) return err.transient end,
                           on_retry = function(_, ms) waits[#waits + 1] = ms end }
    local n = 0
    local elapsed, v, err, attempts = H.timed(r.call, r, function()
      n = n + 1
      baton.yield()  -- attempts may await
      if n <= 3 then return nil, { transient = true } end
      return nil, { transient = false, message = "bad request" }
    end)
    assert.is_nil(v)
    assert.equal("bad request", err.message)
    assert.equal(4, attempts)
    assert.equal(3, #waits)
    local total = 0
    for i, ms in ipairs(waits) do
      local d = 2 * 2 ^ (i - 1)
      assert.is_true(ms >= d / 2 and ms <= d)
      total = total + ms
    end
    assert.is_true(elapsed >= total - 3, "waited only " .. elapsed .. " ms")
  end))
end)
