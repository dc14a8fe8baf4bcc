-- baton.breaker: configuration, transitions on a controllable clock, the in-memory and Lua
-- backends shared between breakers, per-service independence, failure reporting (the error
-- convention), cancellation, half-open probes.
local baton = require "baton"
local H = require "spec.helper"

local raises = H.raises
local misuse = H.raises_misuse

local function fail() error("fail") end
local function ok(v) return v end

-- A clock the spec moves by hand.
local function manual_clock(t)
  local c = { t = t or 1000 }
  function c.now() return c.t end
  return c
end

-- The backend's six methods as a plain Lua table; each method awaits, as a remote store's
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
    misuse("baton.breaker", 1, "threshold", "expected integer >= 1, got 0", baton.breaker,
           { service = "svc", threshold = 0, recovery_ms = 1000 })
  end)

  it("rejects a missing service, a bad half_open_max, an unknown key", function()
    misuse("baton.breaker", 1, "service", "expected string, got nil", baton.breaker,
           { threshold = 1, recovery_ms = 1 })
    misuse("baton.breaker", 1, "service", "expected non%-empty string, got ''", baton.breaker,
           { service = "", threshold = 1, recovery_ms = 1 })
    misuse("baton.breaker", 1, "half_open_max", "expected integer >= 1, got 0", baton.breaker,
           { service = "s", threshold = 1, recovery_ms = 1, half_open_max = 0 })
    misuse("baton.breaker", 1, "recovery_ms", "got %-1", baton.breaker,
           { service = "s", threshold = 1, recovery_ms = -1 })
    raises("baton.breaker: bad argument #1 'treshold' %(unknown option%)", baton.breaker,
           { service = "s", treshold = 1, recovery_ms = 1 })
    misuse("baton.breaker", 1, "counts", "expected function, got 'yes'", baton.breaker,
           { service = "s", threshold = 1, recovery_ms = 1, counts = "yes" })
  end)

  it("rejects a backend that lacks a method, naming it", function()
    local be = lua_backend()
    be.get_open_at = nil
    misuse("baton.breaker", 1, "backend", "expected object with a method 'get_open_at'",
           baton.breaker, { service = "s", threshold = 1, recovery_ms = 1, backend = be })
  end)

  it("rejects a call without a function, and a bad in-memory backend argument", function()
    local b = baton.breaker{ service = "s", threshold = 1, recovery_ms = 1 }
    misuse("baton.breaker:call", 1, "fn", "expected function, got 'f'", b.call, b, "f")
    local be = baton.breaker_backend()
    misuse("baton.breaker_backend:get_failures", 1, "service", "expected string, got no value",
           be.get_failures, be)
    misuse("baton.breaker_backend:set_open_at", 2, "ms", "expected number, got 'soon'",
           be.set_open_at, be, "s", "soon")
  end)

  it("raises, naming the method, when the clock or a Lua backend answers a non-number",
     H.async(function()
    local b = baton.breaker{ service = "s", threshold = 1, recovery_ms = 1,
                             clock = function() return "later" end }
    raises("baton.breaker:state: clock%(%) returned 'later' %(expected a number%)", b.state, b)
    local be = lua_backend()
    be.get_failures = function() return {} end
    local b2 = baton.breaker{ service = "s", threshold = 1, recovery_ms = 1, backend = be }
    raises("baton.breaker:failures: the backend's get_failures returned table", b2.failures, b2)
  end))
end)

describe("breaker clocks at the extremes", function()
  it("a clock jumping across the whole int64 range: retry_after_ms saturates, never wraps",
     H.async(function()
    local c = manual_clock(9100000000000000000)
    local b = baton.breaker{ service = "x", threshold = 1, recovery_ms = 10, clock = c.now }
    b:call(fail)
    c.t = -9.1e18    -- run back by 1.8e19 ms: the window left is longer than any int64
    local v, _, kind, d = b:call(ok, 1)
    assert.is_nil(v)
    assert.equal("circuit_open", kind)
    assert.equal(math.maxinteger, d.retry_after_ms)
    c.t = 9100000000000000000 + 4096   -- past the window (the clock is read as a double)
    assert.equal(1, b:call(ok, 1))     -- the half-open probe passes: closed again
    assert.equal("closed", b:state())
  end))
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

  it("fast-fails while open, without running fn: circuit_open and the facts", H.async(function()
    local clock = manual_clock()
    local b = baton.breaker{ service = "svc", threshold = 1, recovery_ms = 3600 * 1000,
                             clock = clock.now }
    b:call(fail)
    clock.t = clock.t + 1000
    local ran = false
    local msg, _, detail = H.assert_failure("baton.breaker:call", "circuit_open",
                                            b:call(function() ran = true end))
    assert.equal("baton.breaker:call: circuit 'svc' is open", msg)
    assert.same({ service = "svc", state = "open", failures = 1,
                  retry_after_ms = 3600 * 1000 - 1000 }, detail)
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
    assert.equal("circuit_open", select(3, b:call(ok, 1)))
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
  it("returns fn's failure, raised or returned, the same way: nil, msg, kind, detail",
     H.async(function()
    local b = baton.breaker{ service = "svc", threshold = 10, recovery_ms = 1 }
    local _, _, d1 = H.assert_failure("baton.http.request", "timeout", b:call(function()
      return nil, "baton.http.request: timed out after 5 ms", "timeout", { timeout_ms = 5 }
    end))
    assert.same({ timeout_ms = 5 }, d1)
    local _, _, d2 = H.assert_failure("baton.http.request", "timeout", b:call(function()
      error(baton.error("timeout", "baton.http.request: timed out after 5 ms", { timeout_ms = 5 }))
    end))
    assert.same({ timeout_ms = 5 }, d2)
    local v, e, kind = b:call(function() error("plain", 0) end)
    assert.same({ nil, "plain", "error" }, { v, e, kind })
    local _, _, _, d3 = b:call(function() error({ code = 503 }) end)
    assert.equal(503, d3.value.code)  -- a raised table without a kind, kept
    assert.same({ nil, "down", "error" }, { b:call(function() return nil, "down" end) })
    assert.equal(5, b:failures())
    assert.same({ 1, 2 }, { b:call(function() return 1, 2 end) })
  end))

  it("counts only the failures the predicate approves: counts(msg, kind, detail)",
     H.async(function()
    local seen
    local b = baton.breaker{ service = "svc", threshold = 2, recovery_ms = 60000,
                             counts = function(msg, kind, detail)
                               seen = { msg, kind, detail }
                               return kind ~= "protocol"
                             end }
    for _ = 1, 5 do b:call(function() return nil, "not found", "protocol", { status = 404 } end) end
    assert.same({ "not found", "protocol", { status = 404 } }, seen)
    assert.equal(0, b:failures())
    assert.equal("closed", b:state())
    b:call(function() return nil, "unavailable", "io" end)
    b:call(function() error("crashed") end)
    assert.equal("error", seen[2])
    assert.equal("open", b:state())
  end))

  it("does not count a cancelled call, and frees its probe slot", H.async(function()
    local clock = manual_clock()
    local b = baton.breaker{ service = "svc", threshold = 1, recovery_ms = 10, clock = clock.now }
    b:call(fail)
    clock.t = clock.t + 10
    local t = baton.spawn(b.call, b, function() baton.sleep(60000) end)
    baton.sleep(1)
    assert.equal("circuit_open", select(3, b:call(ok, 1)))  -- the probe slot is taken
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
    assert.equal("circuit_open", select(3, b2:call(ok, 1)))
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

describe("half-open probes", function()
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
      local msg, _, detail = H.assert_failure("baton.breaker:call", "circuit_open",
                                              b:call(function() probes = probes + 1 end))
      assert.equal("baton.breaker:call: circuit 'svc' is half-open and its probes are busy", msg)
      assert.same({ service = "svc", state = "half_open", failures = 1 }, detail)
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
    assert.equal("circuit_open", select(3, b:call(ok, 3)))
    for _, p in ipairs(held) do p:release() end
    local got = {}
    for _, t in ipairs(g:join_all()) do got[#got + 1] = select(2, t:join()) end
    table.sort(got)
    assert.same({ 1, 2 }, got)
    assert.equal("closed", b:state())
  end))
end)
