-- baton.breaker: configuration, transitions (seed 003's CircuitBreaker tests) on a
-- controllable clock, the in-memory and Lua backends shared between breakers, per-service
-- independence, failure reporting, cancellation; seed defect 6.
local baton = require "baton"
local H = require "spec.helper"

local raises = H.raises

local function fail() error("fail") end
local function ok(v) return v end

-- A clock the spec moves by hand.
local function manual_clock(t)
  local c = { t = t or 1000 }
  function c.now() return c.t end
  return c
end

-- The seed's backend trait as a plain Lua table; each method awaits, as a remote store's
-- would. `log` records the calls.
local function lua_backend()
  local failures, open_at, log = {}, {}, {}
  local be = { log = log }
  function be:increment_failures(s)
    baton.yield()
    log[#log + 1] = "inc"
    failures[s] = (failures[s] or 0) + 1
    return failures[s]
  end
  function be:reset_failures(s) baton.yield(); failures[s] = 0 end
  function be:get_failures(s) baton.yield(); return failures[s] or 0 end
  function be:set_open_at(s, ms) baton.yield(); open_at[s] = ms end
  function be:clear_open_at(s) baton.yield(); open_at[s] = nil end
  function be:get_open_at(s) baton.yield(); return open_at[s] end
  return be
end

describe("baton.breaker configuration", function()
  it("rejects threshold = 0, naming the key", function()
    raises("threshold must be an integer >= 1", baton.breaker,
           { service = "svc", threshold = 0, recovery_ms = 1000 })
  end)

  it("rejects a missing service, a bad half_open_max, an unknown key", function()
    raises("service must be a non%-empty string", baton.breaker, { threshold = 1, recovery_ms = 1 })
    raises("half_open_max must be an integer >= 1", baton.breaker,
           { service = "s", threshold = 1, recovery_ms = 1, half_open_max = 0 })
    raises("recovery_ms", baton.breaker, { service = "s", threshold = 1, recovery_ms = -1 })
    raises("unknown option 'treshold'", baton.breaker,
           { service = "s", treshold = 1, recovery_ms = 1 })
    raises("counts must be a function", baton.breaker,
           { service = "s", threshold = 1, recovery_ms = 1, counts = "yes" })
  end)

  it("rejects a backend that lacks a method, naming it", function()
    local be = lua_backend()
    be.get_open_at = nil
    raises("backend has no method 'get_open_at'", baton.breaker,
           { service = "s", threshold = 1, recovery_ms = 1, backend = be })
  end)
end)

describe("breaker transitions", function()
  it("starts closed, and a success keeps it closed", H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 3, recovery_ms = 60000 }
    assert.equal("closed", b:state())
    assert.equal(42, b:call(ok, 42))
    assert.equal("closed", b:state())
  end))

  it("opens after threshold consecutive failures", H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 3, recovery_ms = 60000 }
    for _ = 1, 2 do b:call(fail) end
    assert.equal("closed", b:state())
    b:call(fail)
    assert.equal("open", b:state())
    assert.equal(3, b:failures())
  end))

  it("fast-fails while open, without running fn", H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 1, recovery_ms = 3600 * 1000 }
    b:call(fail)
    local ran = false
    local v, err, svc = b:call(function() ran = true end)
    assert.is_nil(v)
    assert.equal("circuit_open", err)
    assert.equal("svc", svc)
    assert.is_false(ran)
  end))

  it("resets the failure count on a success", H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 5, recovery_ms = 60000 }
    b:call(fail); b:call(fail)
    assert.equal(2, b:failures())
    b:call(ok, 1)
    assert.equal(0, b:failures())
  end))

  it("probes at once after a zero recovery window, and closes on success", H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 1, recovery_ms = 0 }
    b:call(fail)
    assert.equal(99, b:call(ok, 99))
    assert.equal("closed", b:state())
  end))

  it("goes half-open after the recovery window; a failed probe reopens it", H.async(function()
    local clock = manual_clock()
    local b = baton.breaker{ service = "svc", threshold = 2, recovery_ms = 500, clock = clock.now }
    b:call(fail); b:call(fail)
    assert.equal("open", b:state())
    clock.t = clock.t + 499
    assert.equal("open", b:state())
    assert.equal("circuit_open", select(2, b:call(ok, 1)))
    clock.t = clock.t + 1
    assert.equal("half_open", b:state())
    assert.equal("fail", select(2, b:call(fail)):match("fail$"))  -- the probe failed
    assert.equal("open", b:state())                                -- a fresh window
    clock.t = clock.t + 499
    assert.equal("open", b:state())
    clock.t = clock.t + 1
    assert.equal("yes", b:call(ok, "yes"))                         -- the probe succeeded
    assert.equal("closed", b:state())
    assert.equal(0, b:failures())
  end))

  it("opens under many concurrent failures", H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 5, recovery_ms = 60000 }
    local g <close> = baton.group()
    for _ = 1, 8 do
      g:spawn(function()
        for _ = 1, 2 do b:call(function() baton.yield(); error("fail") end) end
      end)
    end
    g:join_all()
    assert.equal("open", b:state())
  end))
end)

describe("breaker:call outcomes", function()
  it("returns a raised error as nil, err and passes a returned failure through",
     H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 10, recovery_ms = 1 }
    local v, err = b:call(function() error({ code = 503 }) end)
    assert.is_nil(v)
    assert.equal(503, err.code)
    local a, e, kind = b:call(function() return nil, "timeout", "timeout" end)
    assert.same({ nil, "timeout", "timeout" }, { a, e, kind })
    assert.equal(2, b:failures())
    assert.same({ 1, 2 }, { b:call(function() return 1, 2 end) })
  end))

  it("counts only the failures the predicate approves", H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 2, recovery_ms = 60000,
                             counts = function(err) return err ~= "not_found" end }
    for _ = 1, 5 do b:call(function() return nil, "not_found" end) end
    assert.equal(0, b:failures())
    assert.equal("closed", b:state())
    b:call(function() return nil, "unavailable" end)
    b:call(function() return nil, "unavailable" end)
    assert.equal("open", b:state())
  end))

  it("does not count a cancelled call, and frees its probe slot", H.async(function()
    local clock = manual_clock()
    local b = baton.breaker{ service = "svc", threshold = 1, recovery_ms = 10, clock = clock.now }
    b:call(fail)
    clock.t = clock.t + 10
    local t = baton.spawn(b.call, b, function() baton.sleep(60000) end)
    baton.sleep(1)
    assert.equal("circuit_open", select(2, b:call(ok, 1)))  -- the probe slot is taken
    t:abort()
    local okj, err = t:join()
    assert.is_false(okj)
    assert.equal("cancelled", err.kind)
    assert.equal(1, b:failures())
    assert.equal("half_open", b:state())
    assert.equal("back", b:call(ok, "back"))                -- the slot was freed
  end))
end)

describe("breaker backends", function()
  it("in-memory: counts per service, open-at round trip", function()
    local be = baton.breaker_backend()
    assert.equal(0, be:get_failures("svc"))
    assert.equal(1, be:increment_failures("svc"))
    assert.equal(2, be:increment_failures("svc"))
    be:reset_failures("svc")
    assert.equal(0, be:get_failures("svc"))
    assert.is_nil(be:get_open_at("svc"))
    be:set_open_at("svc", 1234)
    assert.equal(1234, be:get_open_at("svc"))
    be:clear_open_at("svc")
    assert.is_nil(be:get_open_at("svc"))
  end)

  it("two breakers over one in-memory backend see each other's state", H.async(function()
    local be = baton.breaker_backend()
    local b1 = baton.breaker{ service = "svc", threshold = 2, recovery_ms = 60000, backend = be }
    local b2 = baton.breaker{ service = "svc", threshold = 2, recovery_ms = 60000, backend = be }
    b1:call(fail)
    assert.equal(1, b2:failures())
    b1:call(fail)
    assert.equal("open", b2:state())
    assert.equal("circuit_open", select(2, b2:call(ok, 1)))
  end))

  it("two breakers over one Lua backend see each other's state; services are independent",
     H.async(function()
    local clock = manual_clock()
    local be = lua_backend()
    local function mk(svc)
      return baton.breaker{ service = svc, threshold = 3, recovery_ms = 100, backend = be,
                            clock = clock.now }
    end
    local a1, a2, b = mk("service-a"), mk("service-a"), mk("service-b")
    a1:call(fail); a2:call(fail); a1:call(fail)
    assert.equal(3, a2:failures())
    assert.equal("open", a1:state())
    assert.equal("open", a2:state())
    assert.equal("closed", b:state())
    assert.equal("b ok", b:call(ok, "b ok"))
    clock.t = clock.t + 100
    assert.equal("half_open", a1:state())
    assert.equal("probe ok", a2:call(ok, "probe ok"))
    assert.equal("closed", a1:state())
    assert.equal(0, a1:failures())
    assert.equal(3, #be.log)  -- three increments went through the Lua backend
  end))
end)

describe("seed defect 6", function()
  it("half-open admits one probe at a time and fast-fails the rest", H.async(function()
    local clock = manual_clock()
    local b = baton.breaker{ service = "svc", threshold = 1, recovery_ms = 50, clock = clock.now }
    b:call(fail)
    clock.t = clock.t + 50
    local gate = baton.semaphore(1)
    local held <close> = gate:try_acquire()
    local probes = 0
    local probe = baton.spawn(b.call, b, function()
      probes = probes + 1
      local p <close> = assert(gate:acquire())
      return "recovered"
    end)
    baton.sleep(1)
    assert.equal("waiting", probe:status())
    for _ = 1, 10 do
      local v, err, svc = b:call(function() probes = probes + 1 end)
      assert.same({ nil, "circuit_open", "svc" }, { v, err, svc })
    end
    assert.equal(1, probes)
    gate:close()  -- the probe's acquire fails ("closed"): a failed probe reopens the circuit
    probe:join()
    assert.equal("open", b:state())
  end))

  it("admits up to half_open_max concurrent probes", H.async(function()
    local clock = manual_clock()
    local b = baton.breaker{ service = "svc", threshold = 1, recovery_ms = 50, half_open_max = 2,
                             clock = clock.now }
    b:call(fail)
    clock.t = clock.t + 50
    local gate = baton.semaphore(2)
    local held = { gate:try_acquire(), gate:try_acquire() }
    local g <close> = baton.group()
    for i = 1, 2 do
      g:spawn(b.call, b, function() local p <close> = gate:acquire(); return i end)
    end
    baton.sleep(1)
    assert.equal("circuit_open", select(2, b:call(ok, 3)))
    for _, p in ipairs(held) do p:release() end
    local got = {}
    for _, t in ipairs(g:join_all()) do got[#got + 1] = select(2, t:join()) end
    table.sort(got)
    assert.same({ 1, 2 }, got)
    assert.equal("closed", b:state())
  end))
end)
