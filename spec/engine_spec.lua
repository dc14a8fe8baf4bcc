-- baton.engine: speculative prefetch. Budgets per host, skips, host slots that always come
-- back, max_parallel across dispatches, outcomes and their errors (one rule for returned and
-- raised failures), the one-deadline wait, lifetime (shutdown, <close>, collection, the end
-- of baton.run), stats and configuration errors.
local baton = require "baton"
local H = require "spec.helper"

-- A dispatcher that sleeps `delay_ms` (or args.ms), then fails for `fail_for` or returns a
-- body naming the tool; `calls.n` counts its calls and `calls.closed` its unwindings.
local function mock(delay_ms, fail_for)
  local calls = { n = 0, closed = 0 }
  local function dispatcher(tool, args)
    calls.n = calls.n + 1
    local _ <close> = setmetatable({}, { __close = function() calls.closed = calls.closed + 1 end })
    baton.sleep(type(args) == "table" and args.ms or delay_ms)
    if tool == fail_for then error(baton.error("io", "simulated failure")) end
    return "mock-body for " .. tool
  end
  return dispatcher, calls
end

local function engine(opts, dispatcher)
  opts.dispatcher = dispatcher
  opts.timeout_ms = opts.timeout_ms or 500
  opts.max_parallel = opts.max_parallel or 10
  return baton.engine(opts)
end

local function req(tool, host, extra)
  local r = { tool = tool, args = { x = 1 }, host = host, cost_tokens = 256 }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

local function count(list, status, reason)
  local n = 0
  for _, o in ipairs(list) do
    if o.status == status and (reason == nil or o.reason == reason) then n = n + 1 end
  end
  return n
end

local function by_tool(list)
  local t = {}
  for _, o in ipairs(list) do t[o.tool] = o end
  return t
end

describe("baton.engine", function()
  it("returns settled outcomes for prefetches that land within the timeout", H.async(function()
    local d, calls = mock(10)
    local e = engine({ timeout_ms = 500, max_parallel = 5 }, d)
    assert.same({}, e:dispatch { req("Read"), req("Read") })
    local out = e:wait_within()
    assert.equal(2, #out)
    for _, o in ipairs(out) do
      assert.equal("settled", o.status)
      assert.matches("mock%-body", o.body)
    end
    assert.equal(2, calls.n)
  end))

  it("leaves a prefetch slower than the timeout pending", H.async(function()
    local e = engine({ timeout_ms = 50, max_parallel = 5 }, mock(5000))
    e:dispatch { req("SlowTool") }
    assert.same({}, e:wait_within())
    assert.equal(1, e:pending())
    e:shutdown()
  end))

  it("skips the requests over max_parallel", H.async(function()
    local e = engine({ timeout_ms = 500, max_parallel = 2 }, mock(5))
    local skips = e:dispatch { req("A"), req("B"), req("C"), req("D") }
    assert.equal(2, #skips)
    assert.equal(2, count(skips, "skipped", "max_parallel"))
    assert.same({ "C", "D" }, { skips[1].tool, skips[2].tool })
    assert.equal(2, #e:wait_within())
  end))

  it("observes host saturation across dispatches", H.async(function()
    local e = engine({ per_host_cap = 1 }, mock(100))
    assert.same({}, e:dispatch { req("ToolA", "api.github.com") })
    local skips = e:dispatch { req("ToolB", "api.github.com") }
    assert.equal(1, #skips)
    assert.equal("host_saturated", skips[1].reason)
    assert.equal("ToolB", skips[1].tool)
    e:wait_within()
    assert.same({}, e:dispatch { req("ToolC", "api.github.com") })
    assert.equal(1, #e:wait_within())
  end))

  it("takes per_host_cap as a table: a cap for each host, and a default", H.async(function()
    local e = engine({ per_host_cap = { default = 1, ["api.x"] = 3, ["blocked.example"] = 0 } }, mock(50))
    local skips = e:dispatch {
      req("A", "api.x"), req("B", "api.x"), req("C", "api.x"), req("D", "api.x"),
      req("E", "other"), req("F", "other"), req("G", "blocked.example"),
    }
    assert.same({ "D", "F", "G" }, { skips[1].tool, skips[2].tool, skips[3].tool })
    assert.equal(3, count(skips, "skipped", "host_saturated"))
    assert.same({ ["api.x"] = 3, other = 1 }, e:budget_snapshot())
    assert.equal(4, #e:wait_within())
    local d = mock(1)
    H.raises_misuse("baton.engine", 1, "per_host_cap.api.x", "integer >= 0", baton.engine,
                    { max_parallel = 1, timeout_ms = 1, dispatcher = d, per_host_cap = { ["api.x"] = -1 } })
    H.raises_misuse("baton.engine", 1, "per_host_cap", "host names as keys", baton.engine,
                    { max_parallel = 1, timeout_ms = 1, dispatcher = d, per_host_cap = { 5 } })
  end))

  it("gives different hosts separate budgets", H.async(function()
    local e = engine({ per_host_cap = 1 }, mock(5))
    assert.same({}, e:dispatch {
      req("A", "api.github.com"), req("B", "gitlab.example.com"), req("C", "api.openai.com") })
    assert.same({ ["api.github.com"] = 1, ["gitlab.example.com"] = 1, ["api.openai.com"] = 1 },
                e:budget_snapshot())
    assert.equal(3, count(e:wait_within(), "settled"))
  end))

  it("reports a dispatcher failure as a failed outcome", H.async(function()
    local e = engine({ max_parallel = 5 }, mock(5, "Bad"))
    e:dispatch { req("Bad"), req("Good") }
    local out = by_tool(e:wait_within())
    assert.equal("failed", out.Bad.status)
    assert.equal("io", out.Bad.error.kind)
    assert.equal("settled", out.Good.status)
  end))

  it("shutdown aborts pending prefetches", H.async(function()
    local d, calls = mock(10000)
    local e = engine({ timeout_ms = 50, max_parallel = 5 }, d)
    e:dispatch { req("LongRunning") }
    baton.yield()  -- it starts and waits
    e:shutdown()
    assert.equal(0, e:pending())
    assert.equal(1, calls.closed)
  end))

  it("releases the host slot after a failure", H.async(function()
    local e = engine({ per_host_cap = 1, max_parallel = 5 }, mock(5, "Failing"))
    e:dispatch { req("Failing", "host.example.org") }
    assert.equal(1, e:budget_snapshot()["host.example.org"])
    local out = e:wait_within()
    assert.equal("failed", out[1].status)
    assert.is_nil(e:budget_snapshot()["host.example.org"])
  end))

  it("keeps max_parallel and the host caps under 50 requests over 3 hosts", H.async(function()
    local hosts = { "api.github.com", "api.openai.com", "gitlab.com" }
    local function fifty()
      local list = {}
      for i = 1, 50 do list[i] = req("ToolX", hosts[(i - 1) % 3 + 1]) end
      return list
    end
    local e = engine({ timeout_ms = 2000, max_parallel = 6, per_host_cap = 2 }, mock(5))
    local skips = e:dispatch(fifty())
    assert.equal(44, #skips)
    assert.equal(44, count(skips, "skipped", "max_parallel"))
    local out = e:wait_within()
    assert.is_true(count(out, "settled") <= 6)
    e:shutdown()
    assert.equal(0, e:pending())
    -- with max_parallel out of the way, the host caps bind: 2 per host
    local e2 = engine({ timeout_ms = 2000, max_parallel = 100, per_host_cap = 2 }, mock(5))
    assert.equal(44, count(e2:dispatch(fifty()), "skipped", "host_saturated"))
    assert.equal(6, count(e2:wait_within(), "settled"))
    assert.equal(0, e2:pending())
  end))

  it("lets everything through with respect_rate_limits = false", H.async(function()
    local e = engine({ per_host_cap = 1, respect_rate_limits = false }, mock(5))
    assert.same({}, e:dispatch {
      req("A", "api.github.com"), req("B", "api.github.com"), req("C", "api.github.com") })
    assert.same({}, e:budget_snapshot())
    assert.equal(3, count(e:wait_within(), "settled"))
  end))
end)

describe("baton.engine slots and outcomes", function()
  it("shutdown releases the host slot of a task aborted while it ran",
     H.async(function()
    local d, calls = mock(10000)
    local e = engine({ per_host_cap = 2 }, d)
    e:dispatch { req("A", "h"), req("B", "h") }
    baton.sleep(5)  -- both are inside the dispatcher, waiting
    assert.same({ h = 2 }, e:budget_snapshot())
    e:shutdown()
    assert.same({}, e:budget_snapshot())
    assert.equal(2, calls.closed)
    assert.equal(2, e:stats().aborted)
    assert.same({}, e:dispatch { req("C", "h"), req("D", "h") })  -- the host is free again
    e:shutdown()
  end))

  it("shutdown releases the host slot of a task aborted before it ever ran",
     H.async(function()
    local d, calls = mock(10000)
    local e = engine({ per_host_cap = 1 }, d)
    e:dispatch { req("A", "h") }     -- only enqueued: it has not run
    e:shutdown()
    assert.equal(0, calls.n)
    assert.same({}, e:budget_snapshot())
    assert.equal(1, e:stats().aborted)
  end))

  it("a task aborted from inside its dispatcher gives its slot back",
     H.async(function()
    local e = engine({ per_host_cap = 1 }, function()
      baton.current():abort()
      baton.sleep(10000)
    end)
    e:dispatch { req("A", "h") }
    local out = e:wait_within()
    assert.equal("failed", out[1].status)
    assert.equal("cancelled", out[1].error.kind)
    assert.same({}, e:budget_snapshot())
  end))

  it("max_parallel counts the prefetches still in flight from earlier dispatches",
     H.async(function()
    local e = engine({ timeout_ms = 50, max_parallel = 2 }, mock())
    assert.same({}, e:dispatch { req("A", nil, { args = { ms = 100 } }),
                                 req("B", nil, { args = { ms = 100 } }) })
    local skips = e:dispatch { req("C"), req("D") }
    assert.equal(2, count(skips, "skipped", "max_parallel"))
    assert.equal(2, e:stats().in_flight)
    assert.equal(0, #e:wait_within())   -- 50 ms: A and B still run
    skips = e:dispatch { req("E") }
    assert.equal("max_parallel", skips[1].reason)
    assert.equal(2, #e:wait_within(2000))
    assert.same({}, e:dispatch { req("F", nil, { args = { ms = 1 } }) })
    assert.equal(1, #e:wait_within(2000))
  end))

  it("a failed or cancelled outcome keeps its tool name", H.async(function()
    local e = engine({}, function(tool)
      if tool == "Panics" then error("boom") end
      if tool == "Aborted" then baton.current():abort() end
      baton.sleep(1)
      return nil, "not today", "rate_limited"
    end)
    e:dispatch { req("Panics"), req("Aborted"), req("Rejects") }
    local out = by_tool(e:wait_within())
    assert.equal("error", out.Panics.error.kind)
    assert.equal("cancelled", out.Aborted.error.kind)
    assert.equal("rate_limited", out.Rejects.error.kind)
    for _, tool in ipairs { "Panics", "Aborted", "Rejects" } do
      assert.equal("failed", out[tool].status)
      assert.equal(tool, out[tool].tool)
    end
  end))
end)

describe("engine outcomes", function()
  it("a settled outcome carries tool, args, host, body, cost_tokens and elapsed_ms",
     H.async(function()
    local seen
    local e = engine({}, function(tool, args, request)
      seen = { tool, args, request }
      baton.sleep(20)
      return { rows = 3 }
    end)
    local r = { tool = "Search", args = { q = "lua" }, host = "api.example.com", cost_tokens = 42 }
    e:dispatch { r }
    local o = e:wait_within()[1]
    assert.same({ "Search", r.args, r }, seen)
    assert.equal("settled", o.status)
    assert.equal("Search", o.tool)
    assert.equal(r.args, o.args)
    assert.equal("api.example.com", o.host)
    assert.same({ rows = 3 }, o.body)
    assert.equal(42, o.cost_tokens)
    assert.is_true(o.elapsed_ms >= 19 and o.elapsed_ms < 1000, "elapsed " .. o.elapsed_ms)
    assert.is_nil(o.error)
  end))

  it("reads what a dispatcher raises or returns by one rule: a baton.Error each time",
     H.async(function()
    local raised_error = baton.error("timeout", "slow host", { host = "h" })
    local e = engine({}, function(tool)
      baton.yield()
      if tool == "plain" then error("plain trouble") end
      if tool == "raised" then error(raised_error) end
      if tool == "returned" then return nil, "slow host", "timeout", { host = "h" } end
      if tool == "table" then error({ kind = "io", message = "reset", code = 104 }) end
      if tool == "string" then return nil, "just a message" end
      return "ok"
    end)
    e:dispatch { req("plain"), req("raised"), req("returned"), req("table"), req("string"),
                 req("fine") }
    local out = by_tool(e:wait_within())
    for _, tool in ipairs { "plain", "raised", "returned", "table", "string" } do
      local err = out[tool].error
      assert.equal("failed", out[tool].status, tool)
      assert.equal("baton.Error", getmetatable(err).__name, tool)
      assert.is_true(H.is_kind(err.kind), tool)
      assert.is_string(err.message, tool)
      assert.matches(err.message, tostring(err), 1, true)
    end
    assert.equal("error", out.plain.error.kind)
    assert.matches("plain trouble", out.plain.error.message)
    assert.not_matches("stack traceback", out.plain.error.message)
    assert.matches("stack traceback", out.plain.error.traceback)
    -- Returned or raised: the same kind, message and detail (the returned kind is kept).
    for _, tool in ipairs { "raised", "returned" } do
      local err = out[tool].error
      assert.same({ "timeout", "slow host", { host = "h" } }, { err.kind, err.message, err.detail })
    end
    assert.equal(raised_error, out.raised.error)  -- a raised baton.Error keeps its identity
    assert.same({ "io", "reset" }, { out.table.error.kind, out.table.error.message })
    assert.equal(104, out.table.error.code)  -- a raised table's other fields are kept
    assert.matches("stack traceback", out.table.error.traceback)
    assert.same({ "error", "just a message" }, { out.string.error.kind, out.string.error.message })
    assert.equal("settled", out.fine.status)
    assert.equal("ok", out.fine.body)
  end))

  it("never lets a dispatcher error crash the engine or the loop", H.async(function()
    local e = engine({ max_parallel = 20 }, function(tool)
      if tool == "nil" then error(nil) end
      if tool == "table" then error({ code = 7 }) end
      if tool == "number" then error(42) end
      if tool == "deep" then local t = nil; return t.field end
      if tool == "bad_close" then
        local _ <close> = setmetatable({}, { __close = function() error("close failed") end })
        error("first")
      end
      return "fine"
    end)
    local warnings = {}
    baton.on_warning(function(msg) warnings[#warnings + 1] = msg end)
    e:dispatch { req("nil"), req("table"), req("number"), req("deep"), req("bad_close"),
                 req("ok") }
    local out = by_tool(e:wait_within())
    baton.on_warning(nil)
    for _, tool in ipairs { "nil", "table", "number", "deep", "bad_close" } do
      assert.equal("failed", out[tool].status, tool)
      assert.equal("error", out[tool].error.kind, tool)
      assert.is_string(out[tool].error.message, tool)
    end
    assert.equal(7, out.table.error.detail.value.code)  -- the raised table, kept as detail.value
    assert.matches("index", out.deep.error.message)
    assert.equal("settled", out.ok.status)
    assert.same({}, e:dispatch { req("again") })   -- still usable
    assert.equal("settled", e:wait_within()[1].status)
  end))

  it("names every skip reason; cap 0 blocks a host and no host is uncapped",
     H.async(function()
    local off = engine({ enabled = false }, mock(1))
    local skips = off:dispatch { req("A"), req("B", "h") }
    assert.equal(2, count(skips, "skipped", "disabled"))
    assert.equal(0, off:pending())
    local e = engine({ per_host_cap = 0, max_parallel = 100 }, mock(1))
    skips = e:dispatch { req("W", "h", { speculate = false }), req("X", "h"), req("Y"), req("Z") }
    assert.same({ "not_speculatable", "host_saturated" }, { skips[1].reason, skips[2].reason })
    assert.same({ "W", "X" }, { skips[1].tool, skips[2].tool })
    assert.equal(256, skips[1].cost_tokens)
    assert.equal("h", skips[2].host)
    assert.equal(2, #skips)
    assert.equal(2, count(e:wait_within(), "settled"))
  end))
end)

describe("engine:wait_within", function()
  it("returns within about timeout_ms, leaving the slow prefetches pending", H.async(function()
    local e = engine({ timeout_ms = 200 }, mock())
    local fast, slow = { ms = 10 }, { ms = 5000 }
    e:dispatch { req("f1", nil, { args = fast }), req("s1", nil, { args = slow }),
                 req("f2", nil, { args = fast }), req("s2", nil, { args = slow }),
                 req("f3", nil, { args = fast }) }
    local elapsed, out = H.timed(e.wait_within, e)
    assert.is_true(elapsed >= 190 and elapsed < 1500, "elapsed " .. elapsed)
    assert.equal(3, count(out, "settled"))
    assert.equal(3, #out)
    assert.equal(2, e:pending())
    e:shutdown()
    assert.equal(0, e:pending())
  end))

  it("uses ONE deadline for the whole call, not one per prefetch", H.async(function()
    -- five prefetches landing 100 ms apart: a 250 ms window holds exactly two
    local e = engine({ timeout_ms = 250 }, mock())
    local list = {}
    for i = 1, 5 do list[i] = req("T" .. i, nil, { args = { ms = 100 * i } }) end
    e:dispatch(list)
    local elapsed, out = H.timed(e.wait_within, e)
    assert.same({ "T1", "T2" }, { out[1].tool, out[2].tool })
    assert.equal(2, #out)
    assert.is_true(elapsed >= 245 and elapsed < 400, "elapsed " .. elapsed)
    assert.equal(3, e:pending())
    assert.equal(3, #e:wait_within(5000))  -- the rest land in a later wait
  end))

  it("returns as soon as every prefetch has landed", H.async(function()
    local e = engine({ timeout_ms = 5000 }, mock(1))
    e:dispatch { req("A"), req("B") }
    local elapsed, out = H.timed(e.wait_within, e)
    assert.equal(2, #out)
    assert.is_true(elapsed < 1000, "elapsed " .. elapsed)
  end))

  it("late results are collected by drain_pending, which never waits", H.async(function()
    local e = engine({ timeout_ms = 50 }, mock())
    e:dispatch { req("quick", nil, { args = { ms = 1 } }), req("late", nil, { args = { ms = 300 } }),
                 req("never", nil, { args = { ms = 10000 } }) }
    assert.equal("quick", e:wait_within()[1].tool)
    assert.equal(2, e:pending())
    baton.sleep(400)
    local elapsed, out = H.timed(e.drain_pending, e)
    assert.is_true(elapsed < 50, "elapsed " .. elapsed)
    assert.equal(1, #out)
    assert.equal("late", out[1].tool)
    assert.same({}, e:drain_pending())
    assert.equal(1, e:pending())
    local st = e:stats()
    assert.same({ 2, 1 }, { st.settled, st.won_race })
    e:shutdown()
  end))

  it("raises outside a task when it would have to wait", function()
    local e = baton.engine { max_parallel = 1, timeout_ms = 10, dispatcher = function() end }
    e:dispatch { { tool = "T" } }
    assert.has_error(function() e:wait_within() end)
    e:close()
    baton.run(function() end)  -- the aborted task, enqueued, ends on the loop's next run
    assert.equal(0, baton.stats().tasks)
  end)
end)

describe("engine lifetime", function()
  it("an engine collected with tasks in flight leaves no tasks and no host slots",
     H.async(function()
    local shared = baton.budget()
    local d, calls = mock(10000)
    local function start()  -- the engine is reachable only from this frame
      local e = baton.engine { max_parallel = 8, timeout_ms = 10, dispatcher = d, budget = shared }
      e:dispatch { req("A", "h1"), req("B", "h1"), req("C", "h2"), req("D") }
    end
    start()
    baton.sleep(5)  -- three of them are waiting inside the dispatcher
    start()         -- four more never run
    assert.same({ h1 = 4, h2 = 2 }, shared:snapshot())
    collectgarbage()
    collectgarbage()
    assert.same({}, shared:snapshot())
    baton.yield()   -- the aborted tasks unwind
    assert.equal(0, H.leftovers().tasks)
    assert.equal(4, calls.n)
    assert.equal(4, calls.closed)
  end))

  it("closing an engine (<close>) aborts its tasks and releases their slots", H.async(function()
    local shared = baton.budget()
    local d, calls = mock(10000)
    do
      local e <close> = engine({ budget = shared }, d)
      e:dispatch { req("A", "h"), req("B", "h") }
      baton.yield()
    end
    assert.same({}, shared:snapshot())
    baton.yield()
    assert.equal(2, calls.closed)
  end))

  it("later use of a closed engine raises, naming the method", H.async(function()
    local e = engine({}, mock(1))
    e:close()
    e:close()
    e:shutdown()
    assert.equal(0, e:pending())
    H.raises("baton.engine:dispatch: used after it was closed", function() e:dispatch {} end)
    H.raises("baton.engine:wait_within: used after it was closed", function() e:wait_within() end)
    assert.matches("closed", tostring(e))
  end))

  it("an engine closed by a metamethod in the middle of dispatch or wait_within: no crash, "
     .. "the call raises or returns what it collected", H.async(function()
    local e, reads = nil, 0
    local function closing(tool)   -- its third read of host (the outcome's copy) closes e
      return setmetatable({ tool = tool }, { __index = function(_, k)
        if k == "host" then
          reads = reads + 1
          if reads == 3 then e:close() end
        end
      end })
    end
    e = baton.engine { max_parallel = 2, timeout_ms = 1000, dispatcher = function() error("x") end }
    e:dispatch { closing("a") }
    local got = e:wait_within()    -- collecting the outcome closed it
    assert.equal(3, reads)
    assert.is_true(#got <= 1)
    assert.matches("closed", tostring(e))
    -- an error's fields are read raw: its metamethods are not run by the engine
    local e1 = baton.engine { max_parallel = 2, timeout_ms = 1000, dispatcher = function()
      error(setmetatable({}, { __index = function() error("ran") end,
                               __tostring = function() error("ran too") end }))
    end }
    e1:dispatch { { tool = "a" } }
    local out = e1:wait_within()
    assert.equal("failed", out[1].status)
    assert.equal("a table whose __tostring failed", out[1].error.message)
    local e2
    e2 = baton.engine { max_parallel = 4, timeout_ms = 100, dispatcher = function() return 1 end }
    local r2 = setmetatable({ tool = "t" }, { __index = function(_, k) if k == "host" then e2:close() end end })
    H.raises("baton.engine:dispatch: used after it was closed", function() e2:dispatch { r2 } end)
    local e3
    e3 = baton.engine { max_parallel = 4, timeout_ms = 100, dispatcher = function() return 1 end }
    local req3 = setmetatable({ tool = "t" }, { __index = function(_, k) if k == "args" then e3:close() end end })
    H.raises("baton.engine:dispatch: used after it was closed", function() e3:dispatch { req3 } end)
    assert.equal(1, baton.stats().tasks)  -- this spec's own task: nothing left running
  end))

  it("the end of baton.run aborts its tasks, whose slots come back", function()
    local e = baton.engine { max_parallel = 4, timeout_ms = 10, dispatcher = mock(60000) }
    local elapsed = H.timed(baton.run, function()
      e:dispatch { req("A", "h"), req("B", "h") }
      baton.sleep(5)
    end)
    assert.is_true(elapsed < 2000, "elapsed " .. elapsed)
    assert.same({}, e:budget_snapshot())
    assert.equal(2, e:stats().aborted)
    local out = e:drain_pending()
    assert.equal(2, #out)
    assert.same({ "cancelled", "cancelled" }, { out[1].error.kind, out[2].error.kind })
    e:close()
  end)
end)

describe("engine:stats", function()
  it("counts dispatched, settled, failed, skipped by reason, aborted, wasted, won_race",
     H.async(function()
    local e = engine({ max_parallel = 4, per_host_cap = 1, timeout_ms = 300 }, mock(1, "Bad"))
    e:dispatch { req("A", "h"), req("B", "h"), req("Bad"), req("C", nil, { speculate = false }),
                 req("Slow", nil, { args = { ms = 10000 } }), req("D"), req("E") }
    e:wait_within()
    e:shutdown()
    local s = e:stats()
    assert.same({ dispatched = 4, settled = 2, failed = 1, aborted = 1, wasted = 2, won_race = 2,
                  in_flight = 0,
                  skipped = { max_parallel = 1, host_saturated = 1, not_speculatable = 1,
                              disabled = 0 } }, s)
  end))
end)

describe("baton.engine configuration", function()
  local d = function() end
  local cases = {
    { { max_parallel = 1, timeout_ms = 1, dispatcher = d, max_paralel = 2 },
      "'max_paralel' (unknown option)" },
    { { max_paralel = 2 }, "'max_paralel' (unknown option)" },  -- the typo, before the missing keys
    { { timeout_ms = 1, dispatcher = d }, "'max_parallel' (expected integer >= 0, got nil)" },
    { { max_parallel = -1, timeout_ms = 1, dispatcher = d },
      "'max_parallel' (expected integer >= 0, got -1)" },
    { { max_parallel = 1.5, timeout_ms = 1, dispatcher = d },
      "'max_parallel' (expected integer >= 0, got 1.5)" },
    { { max_parallel = 1, dispatcher = d }, "'timeout_ms' (expected milliseconds >= 0, got nil)" },
    { { max_parallel = 1, timeout_ms = "soon", dispatcher = d },
      "'timeout_ms' (expected milliseconds >= 0, got 'soon')" },
    { { max_parallel = 1, timeout_ms = -5, dispatcher = d },
      "'timeout_ms' (expected milliseconds >= 0, got -5)" },
    { { max_parallel = 1, timeout_ms = 1 }, "'dispatcher' (expected function, got nil)" },
    { { max_parallel = 1, timeout_ms = 1, dispatcher = d, per_host_cap = "4" },
      "'per_host_cap' (expected integer >= 0, got '4')" },
    { { max_parallel = 1, timeout_ms = 1, dispatcher = d, enabled = 1 },
      "'enabled' (expected boolean, got 1)" },
    { { max_parallel = 1, timeout_ms = 1, dispatcher = d, respect_rate_limits = "no" },
      "'respect_rate_limits' (expected boolean, got 'no')" },
    { { max_parallel = 1, timeout_ms = 1, dispatcher = d, budget = {} },
      "'budget' (expected baton.budget, got table)" },
    { { 1, max_parallel = 1, timeout_ms = 1, dispatcher = d },
      "'options' (expected string keys, got 1)" },
  }
  it("raises on unknown keys and bad values, naming the key", function()
    for _, c in ipairs(cases) do
      local ok, err = pcall(baton.engine, c[1])
      assert.is_false(ok)
      assert.matches("baton.engine: bad argument #1 " .. c[2], err, 1, true)
    end
    H.raises_misuse("baton.engine", 1, "options", "expected table, got no value", baton.engine)
  end)

  it("raises on a bad request before starting any", H.async(function()
    local d2, calls = mock(1)
    local e = engine({}, d2)
    local bad = {
      { { { tool = "A" }, { tool = 5 } }, "'requests[2].tool' (expected string, got 5)" },
      { { { tool = "A", hots = "h" } }, "'requests[1].hots' (unknown option)" },
      { { { hots = "h" } }, "'requests[1].hots' (unknown option)" },  -- before the missing tool
      { { { tool = "A", host = 1 } }, "'requests[1].host' (expected string or nil, got 1)" },
      { { { tool = "A", cost_tokens = -1 } }, "'requests[1].cost_tokens' (expected integer >= 0, got -1)" },
      { { { tool = "A", speculate = "no" } }, "'requests[1].speculate' (expected boolean, got 'no')" },
      { { "A" }, "'requests[1]' (expected table, got 'A')" },
      { "A", "'requests' (expected table, got 'A')" },
      -- a single request where a list is expected raised nothing and did nothing before
      { { tool = "A", host = "h" }, "'requests' (expected a list of requests, got a single request" },
    }
    for _, c in ipairs(bad) do
      local ok, err = pcall(e.dispatch, e, c[1])
      assert.is_false(ok)
      assert.matches("baton.engine:dispatch: bad argument #1 " .. c[2], err, 1, true)
    end
    assert.equal(0, e:stats().dispatched)
    assert.equal(0, e:pending())
    baton.yield()
    assert.equal(0, calls.n)
  end))
end)
