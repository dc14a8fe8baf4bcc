-- baton.race, baton.first_ok, baton.hedge and baton.interval: compositions that leave no
-- task behind (the losers are aborted and awaited before they return).
local baton = require "baton"
local H = require "spec.helper"

-- A function that sleeps `ms` then returns `v`, noting in `log` when its <close> ran.
local function worker(log, name, ms, v)
  return function()
    local _ <close> = setmetatable({}, { __close = function() log[#log + 1] = name end })
    baton.sleep(ms)
    return v
  end
end

describe("baton.race", function()
  it("race aborts and awaits the losers (their <close> handlers ran before it returns)",
     H.async(function()
    local log = {}
    local a, b = baton.race(worker(log, "slow1", 10000, "s1"),
                            function() baton.sleep(10) return "won", 2 end,
                            worker(log, "slow2", 10000, "s2"))
    assert.same({ "won", 2 }, { a, b })
    table.sort(log)
    assert.same({ "slow1", "slow2" }, log)
    assert.equal(0, H.leftovers().tasks)  -- nothing left to unwind
  end))

  it("re-raises the error of the first to finish", H.async(function()
    local log = {}
    local ok, err = pcall(baton.race, worker(log, "slow", 10000),
                          function() baton.sleep(5) error({ kind = "io", message = "lost" }) end)
    assert.is_false(ok)
    assert.equal("io", err.kind)
    assert.same({ "slow" }, log)
    H.raises_misuse("baton.race", 2, "fn", "expected function, got 2%)", baton.race, print, 2)
    H.raises_misuse("baton.race", 1, "fn", "expected function, got no value%)", baton.race)
  end))

  it("aborted itself, aborts what it started", H.async(function()
    local log = {}
    local t = baton.spawn(baton.race, worker(log, "x", 10000), worker(log, "y", 10000))
    baton.sleep(10)
    t:abort()
    assert.equal("cancelled", select(2, t:join()).kind)
    H.settle()
    table.sort(log)
    assert.same({ "x", "y" }, log)
  end))
end)

describe("baton.first_ok", function()
  it("returns the first success; failures, raised or returned, do not win", H.async(function()
    local log = {}
    local v = baton.first_ok(function() error("boom") end,
                             function() return nil, "refused", "connect" end,
                             function() baton.sleep(20) return "ok" end,
                             worker(log, "slow", 10000))
    assert.equal("ok", v)
    assert.same({ "slow" }, log)
  end))

  it("returns every error when all fail", H.async(function()
    local v, msg, kind, detail = baton.first_ok(
      function() baton.sleep(10) return nil, "refused", "connect" end,
      function() error({ kind = "connect", message = "no route" }) end)
    assert.is_nil(v)
    assert.equal("baton.first_ok: all 2 functions failed (the first: refused)", msg)
    assert.equal("connect", kind)     -- they agree
    assert.equal("refused", detail.errors[1].message)
    assert.equal("connect", detail.errors[1].kind)
    assert.equal("no route", detail.errors[2].message)
    assert.equal("no route", tostring(detail.errors[2]))
    v, msg, kind, detail = baton.first_ok(function() error("plain", 0) end,
                                          function() return nil, "t/o", "timeout" end)
    assert.is_nil(v)
    assert.matches("^baton.first_ok: all 2 functions failed %(the first: plain%)$", msg)
    assert.equal("error", kind)       -- they do not
    assert.equal("plain", detail.errors[1].message)
    assert.equal("error", detail.errors[1].kind)
  end))
end)

describe("baton.hedge", function()
  it("hedge with a slow first attempt returns the second's result in about after_ms + its "
     .. "time and aborts the first", H.async(function()
    local log, started = {}, {}
    local elapsed, v = H.timed(baton.hedge, function(attempt)
      started[#started + 1] = attempt
      local _ <close> = setmetatable({}, { __close = function() log[#log + 1] = attempt end })
      baton.sleep(attempt == 1 and 10000 or 30)
      return "attempt " .. attempt
    end, { after_ms = 50 })
    assert.equal("attempt 2", v)
    assert.same({ 1, 2 }, started)
    table.sort(log)
    assert.same({ 1, 2 }, log)        -- 2 returned, 1 was aborted and awaited
    assert.is_true(elapsed >= 75 and elapsed < 400, "took " .. elapsed .. " ms")
  end))

  it("starts no copy when the first is quick, the next at once on a failure, at most max",
     H.async(function()
    local n = 0
    assert.equal("quick", baton.hedge(function() n = n + 1 return "quick" end, { after_ms = 50 }))
    assert.equal(1, n)
    n = 0
    local elapsed, v = H.timed(baton.hedge, function(attempt)
      n = n + 1
      if attempt < 3 then error("fail " .. attempt, 0) end
      return "third"
    end, { after_ms = 1000, max = 3 })
    assert.equal("third", v)
    assert.equal(3, n)
    assert.is_true(elapsed < 500)
    local msg, kind, detail
    v, msg, kind, detail = baton.hedge(function(attempt)
      baton.sleep(5)
      return nil, "down " .. attempt, "connect"
    end, { after_ms = 1, max = 4 })
    assert.is_nil(v)
    assert.equal("connect", kind)
    assert.matches("^baton.hedge: all 4 attempts failed", msg)
    for i = 1, 4 do assert.equal("down " .. i, detail.errors[i].message) end
  end))

  it("raises on misuse", H.async(function()
    local f = function() end
    H.raises_misuse("baton.hedge", 1, "fn", "got 1%)", baton.hedge, 1, { after_ms = 1 })
    H.raises_misuse("baton.hedge", 2, "opts", "expected table, got nil%)", baton.hedge, f)
    H.raises_misuse("baton.hedge", 2, "after", "unknown option", baton.hedge, f, { after = 1 })
    H.raises_misuse("baton.hedge", 2, "after_ms", "expected milliseconds >= 0, got nil%)",
                    baton.hedge, f, {})
    H.raises_misuse("baton.hedge", 2, "max", "expected integer >= 1, got 0%)",
                    baton.hedge, f, { after_ms = 1, max = 0 })
    H.raises_misuse("baton.hedge", 2, "max", "expected integer >= 1, got 2.5%)",
                    baton.hedge, f, { after_ms = 1, max = 2.5 })
    H.raises_misuse("baton.hedge", 2, "max", "expected integer >= 1, got '2'%)",
                    baton.hedge, f, { after_ms = 1, max = "2" })
  end))

  it("takes a float with an integer's value as a count, as the C functions do", H.async(function()
    local v = baton.hedge(function(i) return i end, { after_ms = 1, max = 1e9 })
    assert.equal(1, v)
  end))
end)

describe("baton.interval", function()
  it("interval coalesces missed ticks", H.async(function()
    -- Generous margins: a loaded machine may run the first tick late (then it already
    -- counts two), so the properties are checked as bounds, not exact counts.
    local iv = baton.interval(20)
    local start = baton.now()
    assert.is_true(iv:tick() >= 1)
    local t1 = baton.now() - start
    assert.is_true(t1 >= 19, "first tick at " .. t1)
    baton.sleep(75)                    -- misses at least three ticks
    local t = baton.now()
    local n = iv:tick()
    assert.is_true(baton.now() - t < 15, "a due tick waits")   -- at once
    assert.is_true(n >= 3 and n <= 10, "coalesced " .. n)
    t = baton.now()
    assert.is_true(iv:tick() >= 1)     -- then back on the original schedule, no burst:
    assert.is_true(baton.now() - t >= 1, "the tick after a coalesced one did not wait")
    local phase = (baton.now() - start) % 20
    assert.is_true(phase <= 15, "phase " .. phase)
    iv:reset()
    t = baton.now()
    assert.equal(1, iv:tick())
    assert.is_true(baton.now() - t >= 19)
    H.raises_misuse("baton.interval", 1, "ms", "expected milliseconds > 0, got 0%)",
                    baton.interval, 0)
    H.raises_misuse("baton.interval:tick", 0, "self", "expected baton.Interval, got nil%)", iv.tick)
    H.raises_misuse("baton.interval:reset", 0, "self", "expected baton.Interval, got table%)",
                    iv.reset, {})
  end))

  it("tick() is a cancellation point even when already due", H.async(function()
    local iv = baton.interval(1)
    local t = baton.spawn(function()
      baton.sleep(5)
      baton.current():abort()
      return iv:tick()
    end)
    assert.equal("cancelled", select(2, t:join()).kind)
  end))
end)
