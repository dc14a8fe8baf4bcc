-- baton.retry: configuration, the backoff delays, jitter, and call — which runs the
-- function, waits between attempts, honours retry_after_ms and gives up with the last
-- failure's kind (the error convention) — with cancellation semantics.
local baton = require "baton"
local H = require "spec.helper"

local raises = H.raises
local misuse = H.raises_misuse

describe("baton.retry configuration", function()
  it("rejects max_attempts = 0, naming the key", function()
    misuse("baton.retry", 1, "max_attempts", "expected integer >= 1, got 0", baton.retry,
           { max_attempts = 0, base_ms = 100 })
  end)

  it("rejects base_ms = 0 (a busy loop), naming the key", function()
    misuse("baton.retry", 1, "base_ms", "expected integer >= 1, got 0", baton.retry,
           { max_attempts = 3, base_ms = 0 })
  end)

  it("rejects a missing required key, a non-integer and a bad jitter", function()
    misuse("baton.retry", 1, "max_attempts", "got nil", baton.retry, { base_ms = 1 })
    misuse("baton.retry", 1, "base_ms", "got 1.5", baton.retry, { max_attempts = 1, base_ms = 1.5 })
    misuse("baton.retry", 1, "base_ms", "got '10'", baton.retry, { max_attempts = 1, base_ms = "10" })
    misuse("baton.retry", 1, "jitter", "expected one of 'none', 'full', 'equal', got 'half'",
           baton.retry, { max_attempts = 1, base_ms = 1, jitter = "half" })
    misuse("baton.retry", 1, "retry_on", "expected function, got true", baton.retry,
           { max_attempts = 1, base_ms = 1, retry_on = true })
  end)

  it("rejects max_delay_ms below base_ms", function()
    misuse("baton.retry", 1, "max_delay_ms", "expected integer >= base_ms 10, got 5", baton.retry,
           { max_attempts = 2, base_ms = 10, max_delay_ms = 5 })
  end)

  it("rejects an unknown key, naming it, before a missing one", function()
    raises("baton.retry: bad argument #1 'max_attempt' %(unknown option%)", baton.retry,
           { max_attempt = 3, base_ms = 1 })
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
    misuse("baton.retry:delay_for", 1, "n", "expected integer >= 1, got 0", r.delay_for, r, 0)
    misuse("baton.retry:delay_for", 1, "n", "got 1.5", r.delay_for, r, 1.5)
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

  it("gives up after max_attempts: the last failure's message and kind, and the attempts",
     H.async(function()
    local r = baton.retry{ max_attempts = 3, base_ms = 1 }
    local n = 0
    local msg, kind, detail = H.assert_failure("baton.retry:call", "timeout", r:call(function()
      n = n + 1
      return nil, "down " .. n, "timeout", { try = n }  -- a failure of the world, returned
    end))
    assert.equal("baton.retry:call: gave up after 3 attempts: down 3", msg)
    assert.equal("timeout", kind)       -- fn's kind is kept
    assert.same({ attempts = 3, last = { try = 3 } }, detail)
    -- A returned failure without a kind, and a raised string, have kind "error".
    local _, k1, d1 = H.assert_failure("baton.retry:call", "error",
                                       r:call(function() return nil, "no kind" end))
    assert.equal("error", k1)
    assert.equal(3, d1.attempts)
    local m2 = H.assert_failure("baton.retry:call", "error", r:call(function() error("x", 0) end))
    assert.matches("gave up after 3 attempts: x$", m2)
    -- A raised table without a kind is kept in the detail.
    local _, _, d3 = H.assert_failure("baton.retry:call", "error",
                                      r:call(function() error({ code = 500 }) end))
    assert.equal(500, d3.last.value.code)
    -- A raised baton.error gives its kind and detail.
    local _, k4, d4 = H.assert_failure("baton.retry:call", "rate_limited", r:call(function()
      error(baton.error("rate_limited", "slow down", { status = 429 }))
    end))
    assert.equal("rate_limited", k4)
    assert.same({ attempts = 3, last = { status = 429 } }, d4)
  end))

  it("asks retry_on(msg, kind, detail) about each failure and stops when it says no",
     H.async(function()
    local seen = {}
    local r = baton.retry{ max_attempts = 5, base_ms = 1, retry_on = function(msg, kind, detail)
      seen[#seen + 1] = { msg, kind, detail and detail.n }
      return kind ~= "protocol"
    end }
    local n = 0
    local msg, kind, detail = H.assert_failure("baton.retry:call", "protocol", r:call(function()
      n = n + 1
      if n == 1 then return nil, "flaky" end
      return nil, "fatal", "protocol", { n = n }
    end))
    assert.matches("gave up after 2 attempts: fatal$", msg)
    assert.equal("protocol", kind)
    assert.equal(2, detail.attempts)
    assert.same({ { "flaky", "error" }, { "fatal", "protocol", 2 } }, seen)
  end))

  it("keeps a string predicate written for retry_on(err) working", H.async(function()
    local r = baton.retry{ max_attempts = 5, base_ms = 1,
                           retry_on = function(err) return err ~= "fatal" end }
    local n = 0
    local _, _, detail = H.assert_failure("baton.retry:call", "error", r:call(function()
      n = n + 1
      return nil, n < 2 and "flaky" or "fatal"
    end))
    assert.equal(2, detail.attempts)
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
    local kinds = {}
    local r = baton.retry{ max_attempts = 3, base_ms = 1, max_delay_ms = 40,
                           on_retry = function(_, ms, _, kind)
                             delays[#delays + 1] = ms
                             kinds[#kinds + 1] = kind
                           end }
    local n = 0
    local elapsed, v = H.timed(r.call, r, function()
      n = n + 1
      if n == 1 then return nil, "429", "rate_limited", { retry_after_ms = 25 } end
      if n == 2 then error(baton.error("rate_limited", "429", { retry_after_ms = 10^9 })) end
      return "served"
    end)
    assert.same({ "rate_limited", "rate_limited" }, kinds)
    assert.equal("served", v)
    assert.same({ 25, 40 }, delays)
    assert.is_true(elapsed >= 25 + 40 - 2, "waited only " .. elapsed .. " ms")
  end))

  it("still reads retry_after_ms from an error table raised or returned as before",
     H.async(function()
    local delays = {}
    local r = baton.retry{ max_attempts = 3, base_ms = 1, max_delay_ms = 1000,
                           on_retry = function(_, ms) delays[#delays + 1] = ms end }
    local n = 0
    local v = r:call(function()
      n = n + 1
      if n == 1 then return nil, { status = 429, retry_after_ms = 7 } end
      if n == 2 then error({ kind = "rate_limited", retry_after_ms = 9 }) end
      return "served"
    end)
    assert.equal("served", v)
    assert.same({ 7, 9 }, delays)
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
    raises("baton.retry:call: not inside a baton task", r.call, r, function() error("x") end)
    misuse("baton.retry:call", 1, "fn", "expected function, got 42", r.call, r, 42)
  end)

  it("jitter, a predicate on the kind, and waits that actually wait",
     H.async(function()
    local waits = {}
    local r = baton.retry{ max_attempts = 6, base_ms = 2, jitter = "equal",
                           retry_on = function(_, kind) return kind == "io" end,
                           on_retry = function(_, ms) waits[#waits + 1] = ms end }
    local n = 0
    local elapsed, v, err, kind, detail = H.timed(r.call, r, function()
      n = n + 1
      baton.yield()  -- attempts may await
      if n <= 3 then return nil, "connection reset", "io" end
      return nil, "bad request", "protocol", { status = 400 }
    end)
    assert.is_nil(v)
    H.assert_failure("baton.retry:call", "protocol", v, err, kind, detail)
    assert.matches("gave up after 4 attempts: bad request$", err)
    assert.same({ attempts = 4, last = { status = 400 } }, detail)
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
