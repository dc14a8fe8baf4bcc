-- The store interface (docs/store.md), one contract run against every implementation: the
-- memory store (baton.store.memory), the test double (spec/store_double.lua: a "remote"
-- store whose operations await, whose values cross as JSON and whose clock is its own) and
-- the Redis store (baton.redis.store, on a private redis-server). Then the rate limiter over a store
-- (baton.ratelimit{ store =, key = }) against each.
local baton = require "baton"
local H = require "spec.helper"
local Double = require "spec.store_double"

local IMPLS = {
  { "the memory store", function() return baton.store.memory() end },
  { "the test double", function() return Double.new() end },
}

-- The Redis store (baton.redis.store) on a private redis-server of this run, each store on
-- a prefix of its own; skipped loudly when redis-server is not installed.
local server, why = H.redis_server()
if server then
  local n = 0
  IMPLS[#IMPLS + 1] = { "the Redis store", function()
    n = n + 1
    local r = assert(baton.redis.connect { url = server.url })
    local s = baton.redis.store { redis = r, prefix = ("spec%d:"):format(n) }
    s.close = function() r:close() end
    return s
  end }
  lazy_teardown(function() server:stop() end)
else
  H.loud("store_spec", why)
end

-- A store for the body, closed (the double's server task stopped) when it ends.
local function with_store(make, body)
  return H.async(function()
    local s = make()
    local ok, err = pcall(body, s)
    if s.close then s:close() end
    if not ok then error(err, 0) end
  end)
end

for _, impl in ipairs(IMPLS) do
  local name, make = impl[1], impl[2]
  local function it_(what, body) it(what, with_store(make, body)) end

  describe(name, function()
    it_("has a monotonic clock in milliseconds", function(s)
      local a = s:now()
      baton.sleep(20)
      local b = s:now()
      assert.is_number(a)
      assert.is_true(b - a >= 19 and b - a < 200, "the clock moved " .. (b - a))
    end)

    describe("gcra_take", function()
      it_("takes a burst at once, then refuses with rate_limited and retry_after_ms", function(s)
        assert.equal(2, s:gcra_take("k", 10, 1000, 3, 1))   -- 10/s, burst 3: 2 left
        assert.equal(0, s:gcra_take("k", 10, 1000, 3, 2))
        local v, msg, kind, detail = s:gcra_take("k", 10, 1000, 3, 1)
        assert.is_nil(v)
        assert.is_string(msg)
        assert.equal("rate_limited", kind)
        -- Bounds, not exact figures: on a loaded machine a few ms pass between the calls.
        assert.is_true(detail.retry_after_ms > 0 and detail.retry_after_ms <= 100, detail.retry_after_ms)
        assert.equal(math.tointeger(detail.retry_after_ms), detail.retry_after_ms)
        baton.sleep(detail.retry_after_ms)
        local left = s:gcra_take("k", 10, 1000, 3, 1)     -- fits then (a late timer: more)
        assert.is_true(left ~= nil and left <= 1, tostring(left))
        assert.equal(3, s:gcra_take("other", 10, 1000, 3, 0))  -- keys are independent
      end)

      it_("peeks without taking, and forces charges and give-backs", function(s)
        assert.equal(900, s:gcra_take("t", 1000, 60000, 1000, 100))
        assert.equal(800, s:gcra_take("t", 1000, 60000, 1000, 100, "peek"))
        assert.equal(800, s:gcra_take("t", 1000, 60000, 1000, 100, "peek"))
        assert.equal(0, s:gcra_take("t", 1000, 60000, 1000, 1500, "force"))  -- owed past the burst
        local _, _, kind, detail = s:gcra_take("t", 1000, 60000, 1000, 1, "peek")
        assert.equal("rate_limited", kind)
        assert.is_true(detail.retry_after_ms > 36000)       -- 600 owed + 1, at 60 ms a unit
        assert.equal(900, s:gcra_take("t", 1000, 60000, 1000, -1500, "force"))
        assert.equal(1000, s:gcra_take("t", 1000, 60000, 1000, -5000, "force"))  -- never more than a burst
      end)
    end)

    describe("leases", function()
      it_("admit up to the limit, refuse with busy, and renew for the same holder", function(s)
        assert.is_true(s:lease_acquire("db", "a", 2, 1000))
        assert.is_true(s:lease_acquire("db", "b", 2, 1000))
        assert.is_true(s:lease_acquire("db", "a", 2, 1000))  -- a renews; still two holders
        assert.equal(2, s:lease_holders("db"))
        local v, msg, kind, detail = s:lease_acquire("db", "c", 2, 1000)
        assert.is_nil(v)
        assert.is_string(msg)
        assert.equal("busy", kind)
        assert.equal(2, detail.holders)
        assert.equal(2, detail.limit)
        assert.is_true(detail.retry_after_ms > 900 and detail.retry_after_ms <= 1000)
        assert.is_true(s:lease_release("db", "b"))
        assert.is_true(s:lease_release("db", "b"))           -- idempotent
        assert.is_true(s:lease_acquire("db", "c", 2, 1000))
        assert.equal(0, s:lease_holders("nothing"))
      end)

      it_("expire: a holder that stops renewing loses the lease", function(s)
        assert.is_true(s:lease_acquire("l", "a", 1, 30))
        assert.is_true(s:lease_renew("l", "a", 30))
        baton.sleep(45)
        assert.equal(0, s:lease_holders("l"))
        local v, _, kind, detail = s:lease_renew("l", "a", 30)
        assert.is_nil(v)
        assert.equal("closed", kind)
        assert.equal("a", detail.holder)
        assert.is_true(s:lease_acquire("l", "b", 1, 30))
      end)
    end)

    describe("counters", function()
      it_("count, and expire a fixed window after they were made", function(s)
        assert.equal(0, s:get("c"))
        assert.equal(1, s:incr("c", 1, 40))
        assert.equal(4, s:incr("c", 3, 1000))  -- a later ttl does not move the window
        assert.equal(4, s:get("c"))
        baton.sleep(55)
        assert.equal(0, s:get("c"))
        assert.equal(2, s:incr("c", 2))
        assert.equal(-1, s:incr("c", -3))
        assert.equal(1, s:incr("nottl", 1))
      end)
    end)

    describe("cooldowns", function()
      it_("hold a flag for a while; a shorter one never cuts a longer one", function(s)
        assert.equal(0, s:cooldown("d"))
        assert.is_true(s:set_cooldown("d", 60))
        local left = s:cooldown("d")
        assert.is_true(left > 40 and left <= 60, left)
        assert.is_true(s:set_cooldown("d", 5))
        assert.is_true(s:cooldown("d") > 40)
        baton.sleep(70)
        assert.equal(0, s:cooldown("d"))
      end)
    end)

    describe("single flight", function()
      it_("claims once, shares the result, forgets a failure", function(s)
        assert.equal("new", s:claim("q", 1000))
        assert.equal("in_progress", s:claim("q", 1000))
        assert.is_true(s:complete("q", { answer = 42, list = { 1, 2 } }, 1000))
        local state, v = s:claim("q", 1000)
        assert.equal("cached", state)
        assert.same({ answer = 42, list = { 1, 2 } }, v)
        assert.equal("new", s:claim("r", 1000))
        assert.is_true(s:fail("r"))
        assert.equal("new", s:claim("r", 1000))     -- a failure is not cached
        assert.is_true(s:fail("q"))                 -- a cached result stays
        assert.equal("cached", (s:claim("q", 1000)))
      end)

      it_("lets a claim and a result expire", function(s)
        assert.equal("new", s:claim("p", 30))
        baton.sleep(45)
        assert.equal("new", s:claim("p", 30))       -- the claimer died: the key is free again
        assert.is_true(s:complete("p", "v", 30))
        baton.sleep(45)
        assert.equal("new", s:claim("p", 30))
      end)
    end)

    it_("deletes a key from every family", function(s)
      s:incr("x", 5)
      s:set_cooldown("x", 1000)
      s:gcra_take("x", 1, 1000, 1, 1)
      assert.is_true(s:del("x"))
      assert.equal(0, s:get("x"))
      assert.equal(0, s:cooldown("x"))
      assert.equal(0, s:gcra_take("x", 1, 1000, 1, 1))
    end)

    it_("backs breakers that share their state (baton.store.breaker_backend)", function(s)
      local backend = baton.store.breaker_backend(s, "svc:")
      local clock = 1000
      local function breaker()
        return baton.breaker { service = "search", threshold = 2, recovery_ms = 100, backend = backend,
                               clock = function() return clock end }
      end
      local a, b = breaker(), breaker()
      local function fail() return nil, "down", "io" end
      assert.equal("io", select(3, a:call(fail)))
      assert.equal(1, b:failures())
      assert.equal("io", select(3, b:call(fail)))
      assert.equal("open", a:state())                         -- b's failure opened a's circuit
      H.assert_failure("baton.breaker:call", "circuit_open", a:call(function() return 1 end))
      clock = clock + 150
      assert.equal("half_open", b:state())
      assert.equal(1, a:call(function() return 1 end))        -- the probe closes it for both
      assert.equal("closed", b:state())
      assert.equal(0, b:failures())
    end)

    describe("under baton.dedup", function()
      -- Two dedup objects on one store stand for two processes sharing it.
      local function pair(s, ttl)
        return baton.dedup { ttl_ms = ttl or 60000, store = s }, baton.dedup { ttl_ms = ttl or 60000, store = s }
      end

      it_("runs fn once for 20 concurrent callers across two dedups, and all get its results", function(s)
        local a, b = pair(s)
        local runs = 0
        local function fn(x)
          runs = runs + 1
          baton.sleep(30)
          return x, nil, { list = { 1, 2 }, n = runs }
        end
        local g <close> = baton.group()
        for i = 1, 20 do g:spawn((i % 2 == 0 and a or b).run, i % 2 == 0 and a or b, "k", fn, "v") end
        for _, t in ipairs(g:join_all()) do
          local r = table.pack(t:results())
          assert.equal(3, r.n)
          assert.equal("v", r[1])
          assert.is_nil(r[2])
          assert.same({ list = { 1, 2 }, n = 1 }, r[3])
        end
        assert.equal(1, runs)
        local r = table.pack(b:check("k"))
        assert.equal("cached", r[1])
        assert.equal(4, r.n)
        assert.equal("v", r[2])
        assert.equal("v", (a:run("k", error)))                 -- cached: fn not run
        assert.equal("new", (s:claim("dedup:k2", 1000)))        -- the default key prefix
        assert.equal("in_progress", a:check("k2"))
      end)

      it_("releases a failure to a new claim: a waiter runs fn itself", function(s)
        local a, b = pair(s)
        local runs = 0
        local first = baton.spawn(a.run, a, "k", function()
          runs = runs + 1
          baton.sleep(20)
          return nil, "fn: refused", "protocol", { status = 403 }
        end)
        baton.yield()
        local ms, v = H.timed(b.run, b, "k", function() runs = runs + 1; return "second" end)
        assert.equal("second", v)
        assert.is_true(ms < 1000, "the waiter ran after " .. ms .. " ms")   -- not the ttl
        assert.same({ true, nil, "fn: refused", "protocol", { status = 403 } }, { first:join() })
        assert.equal(2, runs)
        -- a raise is released too, and raised again in the caller that ran fn
        local ok, err = pcall(a.run, a, "r", function() error({ code = 500 }) end)
        assert.is_false(ok)
        assert.equal(500, err.code)
        assert.equal("new", b:check("r"))
      end)

      it_("lets an abandoned claim expire after ttl_ms, then runs fn", function(s)
        local a, b = pair(s, 80)
        assert.equal("new", a:check("k"))                       -- its holder "dies": no complete
        assert.equal("in_progress", b:check("k"))
        local ms, v = H.timed(b.run, b, "k", function() return "fresh" end)
        assert.equal("fresh", v)
        assert.is_true(ms >= 60 and ms < 80 + 600, "waited " .. ms .. " ms")
        assert.same({ "cached", "fresh" }, { a:check("k") })
        assert.equal("new", a:check("t", 30))                   -- a TTL of this claim's own
        baton.sleep(45)
        assert.equal("new", b:check("t", 30))
      end)

      it_("an aborted waiter leaves nothing behind; the run goes on for the others", function(s)
        local a, b = pair(s)
        local runs = 0
        local fn = function() runs = runs + 1; baton.sleep(40); return "shared" end
        local runner = baton.spawn(a.run, a, "k", fn)
        local waiter = baton.spawn(b.run, b, "k", fn)
        local other = baton.spawn(b.run, b, "k", fn)
        baton.sleep(10)
        waiter:abort()
        local ok, err = waiter:join()
        assert.is_false(ok)
        assert.equal("cancelled", err.kind)
        local timed_out = table.pack(baton.timeout(5, b.run, b, "k", fn))  -- a deadline: the same
        assert.equal("timeout", timed_out[3])
        assert.same({ true, "shared" }, { runner:join() })
        assert.same({ true, "shared" }, { other:join() })
        assert.equal(1, runs)
        assert.is_nil(next(b.bells))
        assert.is_nil(next(a.bells))
      end)

      it_("a cancelled runner releases its claim: the next caller runs fn", function(s)
        local a, b = pair(s)
        local runs, unwound = 0, false
        local runner = baton.spawn(a.run, a, "k", function()
          runs = runs + 1
          local _ <close> = setmetatable({}, { __close = function() unwound = true end })
          baton.sleep(60000)
        end)
        local waiter = baton.spawn(b.run, b, "k", function() runs = runs + 1; return "after" end)
        baton.sleep(10)
        runner:abort()
        local ok, err = runner:join()
        assert.is_false(ok)
        assert.equal("cancelled", err.kind)
        assert.is_true(unwound)
        local ms, okw, v = H.timed(waiter.join, waiter)
        assert.is_true(okw and v == "after")
        assert.is_true(ms < 1000, "the waiter ran after " .. ms .. " ms")
        assert.equal(2, runs)
        assert.same({ "cached", "after" }, { a:check("k") })
      end)

      it_("shares check/complete/fail, and refuses values JSON cannot hold", function(s)
        local a, b = pair(s)
        assert.equal("new", a:check(42))                         -- numbers are keys ("42")
        assert.equal("in_progress", b:check("42"))
        assert.is_true(a:complete(42, { answer = 1 }, "two"))
        assert.same({ "cached", { answer = 1 }, "two" }, { b:check(42) })
        assert.equal("new", a:check("f"))
        assert.is_true(b:fail("f"))
        assert.equal("new", a:check("f"))
        H.raises_misuse("baton.dedup:complete", 2, "value", "a value JSON can encode, got a function",
                        a.complete, a, "f", function() end)
        -- a result the store cannot hold goes to the caller that ran fn, and is not shared
        local runs = 0
        local fn = function() runs = runs + 1; return print end
        assert.equal(print, a:run("u", fn))
        assert.equal(print, b:run("u", fn))
        assert.equal(2, runs)
      end)

      it_("reports a value that is not a dedup result as malformed", function(s)
        local d = baton.dedup { ttl_ms = 1000, store = s, key_prefix = "p:" }
        assert.equal("new", s:claim("p:k", 1000))
        s:complete("p:k", "not packed", 1000)
        local _, _, detail = H.assert_failure("baton.dedup:run", "malformed", d:run("k", error))
        assert.same({ key = "k" }, detail)
        H.assert_failure("baton.dedup:check", "malformed", d:check("k"))
      end)
    end)

    describe("under baton.ratelimit", function()
      it_("holds the rate: 30 at 100/s with a burst of 1 take >= 0.29 s", function(s)
        local rl = baton.ratelimit { rate = 100, per_ms = 1000, burst = 1, store = s, key = "rpm" }
        local ms = H.timed(function()
          for _ = 1, 30 do assert(rl:acquire(1)) end
        end)
        assert.is_true(ms >= 290 and ms < 290 + 400, ("30 acquires took %.1f ms"):format(ms))
      end)

      it_("shares one rate between limiters on the same key", function(s)
        local a = baton.ratelimit { rate = 10, per_ms = 1000, burst = 2, store = s, key = "k" }
        local b = baton.ratelimit { rate = 10, per_ms = 1000, burst = 2, store = s, key = "k" }
        local c = baton.ratelimit { rate = 10, per_ms = 1000, burst = 2, store = s, key = "other" }
        assert.equal(2, a:try_acquire(2))
        local msg, _, detail = H.assert_failure("baton.ratelimit:try_acquire", "rate_limited", b:try_acquire(1))
        assert.is_true(detail.retry_after_ms > 90 and detail.retry_after_ms <= 100, msg)
        assert.equal(2, c:available())
        assert.equal(0, b:available())
      end)

      it_("queues FIFO, and an aborted waiter takes nothing and blocks nobody", function(s)
        local rl = baton.ratelimit { rate = 20, per_ms = 1000, burst = 3, store = s, key = "f" }  -- 50 ms a unit
        assert(rl:acquire(3))
        local order = {}
        local g <close> = baton.group()
        local big = g:spawn(function() rl:acquire(3) order[#order + 1] = "big" end)
        g:spawn(function() rl:acquire(1) order[#order + 1] = "small" end)
        baton.yield()
        assert.equal(2, rl:waiting())
        H.assert_failure("baton.ratelimit:try_acquire", "rate_limited", rl:try_acquire(1))
        baton.sleep(20)
        big:abort()
        g:join_all()
        assert.same({ "small" }, order)
        assert.equal(0, rl:waiting())
        -- only small's unit was taken after the first 3: 3 units fit again within ~150 ms
        -- (300 if the aborted big one had taken its 3)
        assert.is_true(rl:retry_after(3) <= 160, "retry after " .. rl:retry_after(3))
      end)

      it_("times out, corrects estimates with adjust, and answers retry_after", function(s)
        local tpm = baton.ratelimit { rate = 1000, per_ms = 60000, burst = 1000, store = s, key = "tpm" }
        assert.equal(800, tpm:acquire(800))
        tpm:adjust(800, 300)
        assert.equal(700, tpm:available())
        assert.equal(0, tpm:retry_after(700))
        assert(tpm:acquire(700))
        local _, _, d = H.assert_failure("baton.ratelimit:acquire", "timeout", tpm:acquire(10, { timeout_ms = 30 }))
        assert.equal(30, d.timeout_ms)
        assert.equal(0, tpm:waiting())
        assert.is_true(tpm:retry_after(10) > 500)
        assert.matches("store key 'tpm'", tostring(tpm))
      end)

      it_("a give-back lets the queued head go at once", function(s)
        local rl = baton.ratelimit { rate = 1, per_ms = 60000, burst = 10, store = s, key = "g" }
        local grant = rl:acquire(10)
        local t = baton.spawn(function() return rl:acquire(4) end)
        baton.sleep(5)
        assert.equal(1, rl:waiting())
        rl:adjust(grant, 5)
        local ms, ok, got = H.timed(function() return t:join() end)
        assert.is_true(ok and got == 4)
        assert.is_true(ms < 100, "woken after " .. ms)
      end)
    end)
  end)
end

describe("baton.store.memory", function()
  it("checks its arguments", function()
    local s = baton.store.memory()
    local M = "baton.store.memory:"
    H.raises_misuse(M .. "gcra_take", 1, "key", "string", s.gcra_take, s, nil, 1, 1, 1, 1)
    H.raises_misuse(M .. "gcra_take", 5, "cost", "a cost <= burst", s.gcra_take, s, "k", 1, 1000, 2, 3)
    H.raises_misuse(M .. "gcra_take", 6, "mode", "nil, 'peek' or 'force'", s.gcra_take, s, "k", 1, 1000, 2, 1, "x")
    H.raises_misuse(M .. "lease_acquire", 3, "limit", "integer >= 1", s.lease_acquire, s, "k", "h", 0, 10)
    H.raises_misuse(M .. "incr", 3, "ttl_ms", "milliseconds >= 0", s.incr, s, "k", 1, -1)
    H.raises_misuse(M .. "complete", 2, "value", "other than nil", s.complete, s, "k", nil, 10)
    assert.matches("^baton.store.Memory %(%d+ entries%)$", tostring(s))
  end)

  it("blames the caller's line for misuse, through the store and the policies over it",
     H.async(function()
    local s = baton.store.memory()
    local d = baton.dedup { store = s, ttl_ms = 100 }
    local rl = baton.ratelimit { rate = 10, per_ms = 1000, store = s, key = "k" }
    local here = debug.getinfo(1, "S").short_src
    for _, f in ipairs {
      function() s:gcra_take("k", "x", 1000, 1, 1) end,
      function() d:check({}) end,
      function() rl:acquire(0 / 0) end,
    } do
      local _, err = pcall(f)
      assert.equal(here, err:match("^(.-):%d+: baton%."), err)
    end
  end))

  it("forgets expired entries as it grows (memory follows the live keys)", H.async(function()
    local s = baton.store.memory()
    for i = 1, 1000 do s:set_cooldown("k" .. i, 1) end
    baton.sleep(5)
    for i = 1, 1000 do s:incr("c" .. i, 1, 1) end
    baton.sleep(5)
    for i = 1, 2100 do s:claim("f" .. i, 1000) end  -- the store doubles: a sweep
    local n = 0
    for _ in pairs(s.cooldowns) do n = n + 1 end
    for _ in pairs(s.counters) do n = n + 1 end
    assert.equal(0, n)
  end))

  it("backs baton.ratelimit only with a key, and only a store", function()
    local s = baton.store.memory()
    H.raises_misuse("baton.ratelimit", 1, "key", "string", baton.ratelimit, { rate = 1, store = s })
    H.raises_misuse("baton.ratelimit", 1, "store", "a store", baton.ratelimit, { rate = 1, store = 5, key = "k" })
    local rl = baton.ratelimit { rate = 5, burst = 2, store = s, key = "k" }
    H.raises_misuse("baton.ratelimit:acquire", 1, "cost", "integer <= the burst 2", rl.acquire, rl, 3)
    H.raises_misuse("baton.ratelimit:adjust", 2, "actual", "integer >= 0", rl.adjust, rl, 1, -1)
    H.raises_misuse("baton.ratelimit:acquire", 2, "timeoutms", "unknown option", rl.acquire, rl, 1, { timeoutms = 1 })
  end)
end)
