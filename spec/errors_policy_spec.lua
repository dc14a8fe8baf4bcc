-- The error convention (docs/errors.md) for the policy components: engine, limiter, retry,
-- breaker, dedup, backpressure, pipeline, runner. Table-driven: every documented failure
-- of each is provoked and its shape checked with H.assert_failure (nil, a message that
-- starts with the function's name, a kind of baton.kinds, an optional detail table), then
-- its detail; every misuse raises "<fname>: bad argument #n 'name' (expected X, got Y)";
-- a typo'd option is named, before any missing required option.
local baton = require "baton"
local H = require "spec.helper"

local FIXTURES = (os.getenv("BATON_SRC") or ".") .. "/spec/fixtures/limiter/"

local function fail(msg, kind, detail) return function() return nil, msg, kind, detail end end
-- A store whose every single-flight operation fails, as a remote one whose connection broke.
local BROKEN = { claim = fail("redis: connection reset", "io"), complete = fail("redis: connection reset", "io"),
                 fail = fail("redis: connection reset", "io") }

-- A clock the rows move by hand.
local function manual_clock()
  local c = { t = 1000 }
  function c.now() return c.t end
  return c
end

-- Each row: the function as the user calls it, the kind, a function that provokes the
-- failure (inside a task) and returns what the call returned, and what the detail must be
-- (a table compared with assert.same, or a function given the message and the detail).
local failures = {
  { "baton.retry:call", "timeout", function()
      local r = baton.retry { max_attempts = 2, base_ms = 1 }
      return r:call(fail("baton.http.request: timed out after 5 ms", "timeout", { timeout_ms = 5 }))
    end,
    function(msg, detail)
      assert.equal("baton.retry:call: gave up after 2 attempts: " ..
                   "baton.http.request: timed out after 5 ms", msg)
      assert.same({ attempts = 2, last = { timeout_ms = 5 } }, detail)
    end },
  { "baton.retry:call", "error", function()  -- a raised string: kind "error"
      return baton.retry { max_attempts = 1, base_ms = 1 }:call(function() error("bug", 0) end)
    end, { attempts = 1 } },
  { "baton.retry:call", "rate_limited", function()  -- retry_on says no: gives up at once
      local r = baton.retry { max_attempts = 5, base_ms = 1,
                              retry_on = function(_, kind) return kind ~= "rate_limited" end }
      return r:call(function() error(baton.error("rate_limited", "429", { status = 429 })) end)
    end, { attempts = 1, last = { status = 429 } } },

  { "baton.breaker:call", "circuit_open", function()
      local clock = manual_clock()
      local b = baton.breaker { service = "svc", threshold = 1, recovery_ms = 500,
                                clock = clock.now }
      b:call(fail("down", "io"))
      clock.t = clock.t + 100
      return b:call(function() error("must not run") end)
    end,
    function(msg, detail)
      assert.equal("baton.breaker:call: circuit 'svc' is open", msg)
      assert.same({ service = "svc", state = "open", failures = 1, retry_after_ms = 400 }, detail)
    end },
  { "baton.breaker:call", "circuit_open", function()  -- half-open, the probe slot taken
      local clock = manual_clock()
      local b = baton.breaker { service = "svc", threshold = 1, recovery_ms = 10,
                                clock = clock.now }
      b:call(fail("down", "io"))
      clock.t = clock.t + 10
      local probe <close> = baton.spawn(b.call, b, baton.sleep, 60000)
      baton.yield()
      return b:call(function() error("must not run") end)
    end, { service = "svc", state = "half_open", failures = 1 } },
  { "baton.process.run", "io", function()  -- fn's failure, passed through with its kind
      local b = baton.breaker { service = "svc", threshold = 5, recovery_ms = 10 }
      return b:call(fail("baton.process.run: cannot start 'x'", "io", { argv0 = "x" }))
    end, { argv0 = "x" } },

  { "baton.dedup:run", "busy", function()
      local d = baton.dedup { ttl_ms = 1000 }
      d:check("k")
      return d:run("k", function() error("must not run") end)
    end,
    function(msg, detail)
      assert.equal("baton.dedup:run: key 'k' is in progress (claimed by check)", msg)
      assert.same({ key = "k" }, detail)
    end },

  -- over a store: a value that is not a dedup result, and the store's own failures
  { "baton.dedup:run", "malformed", function()
      local s = baton.store.memory()
      s:complete("dedup:k", "not packed", 1000)
      return baton.dedup { ttl_ms = 1000, store = s }:run("k", function() error("must not run") end)
    end,
    function(msg, detail)
      assert.equal("baton.dedup:run: the store's value for 'k' is not a dedup result (got 'not packed')", msg)
      assert.same({ key = "k" }, detail)
    end },
  { "baton.dedup:check", "malformed", function()
      local s = baton.store.memory()
      s:complete("dedup:k", 5, 1000)
      return baton.dedup { ttl_ms = 1000, store = s }:check("k")
    end, { key = "k" } },
  { "baton.dedup:run", "io", function()
      return baton.dedup { ttl_ms = 1000, store = BROKEN }:run("k", function() error("must not run") end)
    end,
    function(msg) assert.equal("baton.dedup:run: redis: connection reset", msg) end },
  { "baton.dedup:check", "io", function()
      return baton.dedup { ttl_ms = 1000, store = BROKEN }:check("k")
    end },
  { "baton.dedup:complete", "io", function()
      return baton.dedup { ttl_ms = 1000, store = BROKEN }:complete("k", 1)
    end },
  { "baton.dedup:fail", "io", function()
      return baton.dedup { ttl_ms = 1000, store = BROKEN }:fail("k")
    end },

  { "baton.backpressure:try_acquire", "shed", function()
      local bp = baton.backpressure { capacity = 2, soft = 1 }
      baton.on_warning(function() end)
      local a <close> = bp:try_acquire()
      local b <close> = bp:try_acquire()
      baton.on_warning(nil)
      return bp:try_acquire()
    end, { depth = 2, capacity = 2, soft = 1 } },

  { "baton.pipeline:run", "connect", function()
      return baton.pipeline()
        :stage("render", function(v) return v end)
        :stage("fetch", fail("baton.http.request: cannot connect", "connect", { url = "u" }))
        :run(1)
    end,
    function(msg, detail)
      assert.equal("baton.pipeline:run: stage 'fetch' failed: baton.http.request: cannot connect",
                   msg)
      assert.same({ stage = "fetch", detail = { url = "u" } }, detail)
    end },
  { "baton.pipeline:run_timed", "error", function()
      return baton.pipeline():stage("s", function() error("bug", 0) end):run_timed(1)
    end, { stage = "s" } },
  { "baton.pipeline:run", "error", function()  -- a stage raised a string: kind "error"
      return baton.pipeline():stage("parse", function() error("bug", 0) end):run(1)
    end,
    function(msg, detail)
      assert.equal("baton.pipeline:run: stage 'parse' failed: bug", msg)
      assert.equal("parse", detail.stage)
    end },
  { "baton.pipeline:run", "tool_error", function()  -- the handler declines with its own
      return baton.pipeline()
        :stage("s", fail("x", "io"))
        :on_error(fail("no fallback for s", "tool_error"))
        :run(1)
    end, { stage = "s" } },

  { "baton.limiter:acquire", "queue_wait", function()
      local lim = baton.limiter { models = { ["p/m"] = 1 } }
      local g <close> = lim:acquire("p/m")
      return lim:acquire("p/m")
    end,
    function(msg, detail)
      assert.equal("baton.limiter:acquire: 'p/m' is at its limit (1 of 1 in use)", msg)
      assert.same({ key = "p/m", capacity = 1, in_use = 1, waiting = 0, reason = "models" }, detail)
    end },
  { "baton.limiter:acquire", "queue_wait", function()  -- max_agents, not the key, is full
      local lim = baton.limiter { max_agents = 1, models = { ["p/a"] = 2, ["p/b"] = 2 } }
      local g <close> = lim:acquire("p/a")
      return lim:acquire("p/b")
    end, { key = "p/b", capacity = 2, in_use = 0, waiting = 0, reason = "max_agents" } },
  { "baton.limiter:acquire", "queue_wait", function()  -- a limit of 0, even with wait
      return baton.limiter { models = { ["p/off"] = 0 } }:acquire("p/off", { wait = true })
    end, { key = "p/off", capacity = 0, in_use = 0, waiting = 0, reason = "models" } },
  { "baton.limiter:acquire", "timeout", function()
      local lim = baton.limiter { models = { ["p/m"] = 1 } }
      local g <close> = lim:acquire("p/m")
      return lim:acquire("p/m", { wait = true, timeout_ms = 5 })
    end, { key = "p/m", timeout_ms = 5 } },
  { "baton.limiter:acquire", "closed", function()  -- finalized under a waiter
      local lim = baton.limiter { models = { ["p/m"] = 1 } }
      local g <close> = lim:acquire("p/m")
      local t = baton.spawn(lim.acquire, lim, "p/m", { wait = true })
      baton.yield()
      getmetatable(lim).__gc(lim)
      return select(2, t:join())
    end },
  { "baton.limiter.from_json", "io", function()
      return baton.limiter.from_json(FIXTURES .. "missing.json")
    end, { path = FIXTURES .. "missing.json" } },
  { "baton.limiter.from_json", "malformed", function()
      return baton.limiter.from_json(FIXTURES .. "malformed.json")
    end,
    function(_, detail) assert.equal(FIXTURES .. "malformed.json", detail.path) end },

  { "baton.runner:poke", "closed", function()
      local r = baton.runner { handler = function() return "idle" end }
      r:start()
      r:stop()
      return r:poke("late")
    end },
  { "baton.runner:poke_session", "closed", function()
      local r = baton.runner { handler = function() return "idle" end }
      getmetatable(r).__close(r)  -- a closed runner is a stopped one
      return r:poke_session("s1", "late")
    end },
  { "baton.runner:complete_session", "closed", function()
      local r = baton.runner { handler = function() return "idle" end }
      r:stop()
      return r:complete_session("s1", "late")
    end },
}

describe("policy failures of the world: nil, message, kind, detail", function()
  for i, row in ipairs(failures) do
    local fname, kind, provoke, want = row[1], row[2], row[3], row[4]
    it(("%d: %s -> %s"):format(i, fname, kind), H.async(function()
      local msg, _, detail = H.assert_failure(fname, kind, provoke())
      if type(want) == "function" then want(msg, detail)
      elseif want ~= nil then assert.same(want, detail) end
    end))
  end

  -- Out of memory cannot be provoked without an allocator that fails.
  local exempt = { ["baton.limiter:acquire resource"] = true, ["baton.runner:poke resource"] = true,
                   ["baton.runner:poke_session resource"] = true,
                   ["baton.runner:complete_session resource"] = true }
  it("provokes every failure docs/errors.md lists under 'Policy components'", function()
    local listed = assert(H.errors_doc().sections["Policy components"], "no section")
    local covered, missing = {}, {}
    for _, row in ipairs(failures) do covered[row[1] .. " " .. row[2]] = true end
    for fname, kinds in pairs(listed) do
      for kind in pairs(kinds) do
        local key = fname .. " " .. kind
        if not covered[key] and not exempt[key] then missing[#missing + 1] = key end
      end
    end
    table.sort(missing)
    assert(#missing == 0, "no row provokes: " .. table.concat(missing, ", "))
  end)
end)

-- The engine returns no failure itself: a dispatcher's failure is an outcome whose error is
-- a baton.Error. Returned and raised, with or without a kind, each row gives the same shape.
describe("engine outcomes: a dispatcher's failure, returned or raised, by one rule", function()
  local rows = {
    { "returned", fail("baton.http.request: timed out after 5 ms", "timeout", { timeout_ms = 5 }),
      "timeout", { timeout_ms = 5 } },
    { "raised", function()
        error(baton.error("timeout", "baton.http.request: timed out after 5 ms", { timeout_ms = 5 }))
      end, "timeout", { timeout_ms = 5 } },
    { "returned without a kind", fail("no answer"), "error" },
    { "raised string", function() error("bug") end, "error" },
    { "raised table with a kind", function() error({ kind = "io", message = "reset" }) end, "io" },
    { "aborted", function() baton.current():abort(); baton.yield() end, "cancelled" },
  }
  it("gives a baton.Error { kind, message, detail } for each", H.async(function()
    local by_tool = {}
    for _, row in ipairs(rows) do by_tool[row[1]] = row[2] end
    local e <close> = baton.engine { max_parallel = #rows, timeout_ms = 2000,
                                     dispatcher = function(tool) return by_tool[tool]() end }
    local reqs = {}
    for i, row in ipairs(rows) do reqs[i] = { tool = row[1] } end
    assert.same({}, e:dispatch(reqs))
    local out = {}
    for _, o in ipairs(e:wait_within()) do out[o.tool] = o end
    for _, row in ipairs(rows) do
      local o = assert(out[row[1]], row[1])
      assert.equal("failed", o.status, row[1])
      assert.equal("baton.Error", getmetatable(o.error).__name, row[1])
      assert.equal(row[3], o.error.kind, row[1])
      assert.is_true(H.is_kind(o.error.kind), row[1])
      assert.is_string(o.error.message, row[1])
      if row[4] then assert.same(row[4], o.error.detail, row[1]) end
    end
    assert.equal("baton.http.request: timed out after 5 ms", out.returned.error.message)
  end))
end)

-- Misuse: fname, argument number, argument name, the text in parentheses (a pattern), and
-- the call. Options are argument #1 of a constructor (#2 of limiter:acquire), named by key.
local d = function() end
local function make(kind)
  if kind == "retry" then return baton.retry { max_attempts = 1, base_ms = 1 } end
  if kind == "breaker" then return baton.breaker { service = "s", threshold = 1, recovery_ms = 1 } end
  if kind == "dedup" then return baton.dedup { ttl_ms = 1 } end
  if kind == "pipeline" then return baton.pipeline() end
  if kind == "limiter" then return baton.limiter { models = { ["p/m"] = 1 } } end
  if kind == "engine" then return baton.engine { max_parallel = 1, timeout_ms = 1, dispatcher = d } end
  if kind == "runner" then return baton.runner { handler = d } end
  if kind == "backend" then return baton.breaker_backend() end
end
local function method(kind, name, ...)
  local obj = make(kind)
  local args = table.pack(...)
  return function() return obj[name](obj, table.unpack(args, 1, args.n)) end
end
local function ctor(fn, ...)
  local args = table.pack(...)
  return function() return fn(table.unpack(args, 1, args.n)) end
end

local misuse = {
  { "baton.retry", 1, "options", "expected table, got no value", ctor(baton.retry) },
  { "baton.retry", 1, "max_attempts", "expected integer >= 1, got 0",
    ctor(baton.retry, { max_attempts = 0, base_ms = 1 }) },
  { "baton.retry", 1, "jitter", "expected one of 'none', 'full', 'equal', got 'half'",
    ctor(baton.retry, { max_attempts = 1, base_ms = 1, jitter = "half" }) },
  { "baton.retry:call", 1, "fn", "expected function, got 5", method("retry", "call", 5) },
  { "baton.retry:delay_for", 1, "n", "expected integer >= 1, got 0", method("retry", "delay_for", 0) },
  { "baton.retry:call", 0, "self", "expected baton.Retry, got table",
    function() return make("retry").call({}, d) end },

  { "baton.breaker", 1, "service", "expected non%-empty string, got ''",
    ctor(baton.breaker, { service = "", threshold = 1, recovery_ms = 1 }) },
  { "baton.breaker", 1, "backend", "expected table or object, got 5",
    ctor(baton.breaker, { service = "s", threshold = 1, recovery_ms = 1, backend = 5 }) },
  { "baton.breaker:call", 1, "fn", "expected function, got no value", method("breaker", "call") },
  { "baton.breaker_backend:increment_failures", 1, "service", "expected string, got 5",
    method("backend", "increment_failures", 5) },

  { "baton.dedup", 1, "ttl_ms", "expected integer >= 0, got '1s'", ctor(baton.dedup, { ttl_ms = "1s" }) },
  { "baton.dedup:run", 1, "key", "expected string, got table", method("dedup", "run", {}, d) },
  { "baton.dedup:run", 2, "fn", "expected function, got no value", method("dedup", "run", "k") },
  { "baton.dedup:complete", 1, "key", "expected string, got no value", method("dedup", "complete") },
  { "baton.dedup", 1, "store", "expected a store %(docs/store.md%), got 5", ctor(baton.dedup, { ttl_ms = 1, store = 5 }) },
  { "baton.dedup", 1, "clock", "expected nil with a store",
    ctor(baton.dedup, { ttl_ms = 1, store = {}, clock = os.clock }) },
  { "baton.dedup", 1, "key_prefix", "expected nil without a store", ctor(baton.dedup, { ttl_ms = 1, key_prefix = "p:" }) },
  { "baton.dedup", 1, "poll_ms", "expected milliseconds > 0, got 0",
    ctor(baton.dedup, { ttl_ms = 1, store = {}, poll_ms = 0 }) },
  { "baton.dedup:check", 2, "ttl_ms", "expected milliseconds >= 0, got %-1",
    function() local x = baton.dedup { ttl_ms = 1, store = baton.store.memory() } return x:check("k", -1) end },

  { "baton.backpressure", 1, "capacity", "expected integer >= 1, got nil", ctor(baton.backpressure, {}) },
  { "baton.backpressure", 1, "soft", "expected integer below the capacity 2, got 2",
    ctor(baton.backpressure, { capacity = 2, soft = 2 }) },

  { "baton.pipeline:stage", 1, "name", "expected non%-empty string, got ''",
    method("pipeline", "stage", "", d) },
  { "baton.pipeline:stage", 2, "fn", "expected function, got 1", method("pipeline", "stage", "s", 1) },
  { "baton.pipeline:on_error", 1, "fn", "expected function or nil, got true",
    method("pipeline", "on_error", true) },

  { "baton.limiter", 1, "config", "expected table, got 'x'", ctor(baton.limiter, "x") },
  { "baton.limiter", 1, "max_agents", "expected integer >= 1, got 0", ctor(baton.limiter, { max_agents = 0 }) },
  { "baton.limiter", 1, "providers[1].models[2]", "expected model name, got ''",
    ctor(baton.limiter, { providers = { { name = "p", models = { "m", "" } } } }) },
  { "baton.limiter:acquire", 1, "primary", "expected 'provider/model' key, got 'pm'",
    method("limiter", "acquire", "pm") },
  { "baton.limiter:acquire", 2, "chain[1]", "expected 'provider/model' key, got 'x'",
    method("limiter", "acquire", "p/m", { chain = { "x" } }) },
  { "baton.limiter:acquire", 2, "timeout_ms", "expected milliseconds >= 0, got %-1",
    method("limiter", "acquire", "p/m", { wait = true, timeout_ms = -1 }) },
  { "baton.limiter:limit", 1, "key", "expected 'provider/model' key, got nil", method("limiter", "limit") },
  { "baton.limiter.from_json", 1, "path", "expected string, got no value", ctor(baton.limiter.from_json) },
  { "baton.parse_key", 1, "s", "expected string, got 5", ctor(baton.parse_key, 5) },

  { "baton.engine", 1, "timeout_ms", "expected milliseconds >= 0, got %-1",
    ctor(baton.engine, { max_parallel = 1, timeout_ms = -1, dispatcher = d }) },
  { "baton.engine", 1, "dispatcher", "expected function, got nil",
    ctor(baton.engine, { max_parallel = 1, timeout_ms = 1 }) },
  { "baton.engine:dispatch", 1, "requests", "expected table, got no value", method("engine", "dispatch") },
  { "baton.engine:dispatch", 1, "requests[1].tool", "expected string, got nil",
    method("engine", "dispatch", { {} }) },
  { "baton.engine:wait_within", 1, "timeout_ms", "expected milliseconds >= 0, got 'soon'",
    method("engine", "wait_within", "soon") },

  { "baton.runner", 1, "handler", "expected function, got 'h'", ctor(baton.runner, { handler = "h" }) },
  { "baton.runner", 1, "poll_ms", "expected integer >= 1, got 0",
    ctor(baton.runner, { handler = d, poll_ms = 0 }) },
  { "baton.runner:poke", 1, "reason", "expected string, got nil", method("runner", "poke", nil) },
  { "baton.runner:poke_session", 1, "session_id", "expected string, got false",
    method("runner", "poke_session", false, "r") },
}

describe("policy misuse: <fname>: bad argument #n 'name' (expected X, got Y)", function()
  for i, row in ipairs(misuse) do
    it(("%d: %s #%d '%s'"):format(i, row[1], row[2], row[3]), H.async(function()
      local err = H.raises_misuse(row[1], row[2], row[3], row[4], row[5])
      assert.equal(1, select(2, err:gsub("bad argument", "")), err)
    end))
  end
end)

-- A typo'd option is named, and before any missing required option (which every table
-- here also lacks).
local typos = {
  { "baton.retry", 1, "max_attempt", ctor(baton.retry, { max_attempt = 3 }) },
  { "baton.breaker", 1, "treshold", ctor(baton.breaker, { treshold = 1 }) },
  { "baton.dedup", 1, "tll_ms", ctor(baton.dedup, { tll_ms = 1 }) },
  { "baton.backpressure", 1, "capacty", ctor(baton.backpressure, { capacty = 1 }) },
  { "baton.engine", 1, "max_paralel", ctor(baton.engine, { max_paralel = 1 }) },
  { "baton.runner", 1, "handlr", ctor(baton.runner, { handlr = d }) },
  { "baton.limiter", 1, "max_agnets", ctor(baton.limiter, { max_agnets = 1, models = 5 }) },
  { "baton.limiter", 1, "providers[1].modles", ctor(baton.limiter, { providers = { { modles = {} } } }) },
  { "baton.limiter", 1, "default_concurrency.luxury",
    ctor(baton.limiter, { default_concurrency = { luxury = 1 } }) },
  { "baton.limiter:acquire", 2, "wiat", method("limiter", "acquire", "p/m", { wiat = true }) },
  { "baton.engine:dispatch", 1, "requests[1].tol", method("engine", "dispatch", { { tol = "x" } }) },
}

describe("policy options: a typo is named, before a missing option", function()
  for i, row in ipairs(typos) do
    it(("%d: %s '%s'"):format(i, row[1], row[3]), H.async(function()
      local ok, err = pcall(row[4])
      assert.is_false(ok)
      assert.matches(("%s: bad argument #%d '%s' (unknown option)"):format(row[1], row[2], row[3]),
                     tostring(err), 1, true)
    end))
  end
end)
