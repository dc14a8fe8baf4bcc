-- baton.router against the local fixture HTTP server answering as OpenAI, Anthropic and
-- Gemini do (spec/fixtures/http/server.py, /llm/...): each class of failure gets its
-- action (429 + Retry-After cools the deployment down for exactly that long and the next
-- serves; 529 moves on at once; 500 is retried, then the next; context length goes to the
-- larger-context group; 401 fails at once), ONE deadline covers the whole chain, a
-- saturated group's queued request is granted by whichever deployment frees first, rpm and
-- tpm hold (estimates corrected from the usage), hedging returns the fast copy and aborts
-- the slow one (its transfer removed), usage() sums what the ledgers say; the same over a
-- store (the memory store and the remote-like test double); classification of each
-- provider's errors, MCP's and baton's kinds; misuse.
local baton = require "baton"
local H = require "spec.helper"
local Double = require "spec.store_double"

local http = baton.http
local server = H.http_server()

-- A deployment whose call asks the fixture server for `path` (a string, or a function of
-- the attempt count giving one), with the attempt's own timeout.
local function dep(name, path, extra)
  local n = 0
  local d = { name = name, model = "m", call = function(_, ctx)
    n = n + 1
    local p = type(path) == "function" and path(n) or path
    return http.request { url = server:url(p), timeout_ms = ctx.timeout_ms }
  end }
  for k, v in pairs(extra or {}) do d[k] = v end
  return d
end

local function whys(ledger)
  local out = {}
  for i, row in ipairs(ledger) do
    out[i] = ("%s:%s:%s:%s"):format(row.deployment, row.why, tostring(row.class), row.action)
  end
  return out
end

describe("baton.router", function()
  lazy_setup(function() server:start() end)
  lazy_teardown(function() server:stop() end)

  it("is loaded on first use; a reference taken before still works", function()
    local script = H.write_temp([[
      local r, s = baton.router, baton.store   -- the proxies: nothing compiled yet
      print(tostring(r))
      local router = r { deployments = { { name = "a", call = function() return 1 end } } }
      baton.run(function() print((router:call("a", {}))) end)
      print(rawequal(baton.router, r), s.memory == baton.store.memory, (baton.router.classify(nil, "x", "timeout")))
    ]])
    local res = H.run(H.q(script))
    os.remove(script)
    assert.equal("", res.err)
    assert.equal("baton.router (not loaded yet)\n1\nfalse\ttrue\ttimeout\n", res.out)
  end)

  describe("acts on the class of each failure", function()
    it("429 + Retry-After: cools the deployment down for exactly that long; the next serves", H.http_async(function()
      local r = baton.router { deployments = {
        dep("a", function(n) return n == 1 and "/llm/429?retry_after=1" or "/llm/ok" end),
        dep("b", "/llm/ok"),
      } }
      local res, ledger = r:call("m", {})
      assert.equal(200, res.status)
      assert.same({ "a:primary:rate_limited:cooldown", "b:next:nil:ok" }, whys(ledger))
      assert.equal(1000, ledger[1].retry_after_ms)
      local t0 = baton.now()
      assert.equal(1000, r:usage().a.cooldown_ms)
      -- while a cools down, calls go straight to b
      local _, l2 = r:call("m", {})
      assert.same({ "b:primary:nil:ok" }, whys(l2))
      baton.sleep(math.max(0, 900 - (baton.now() - t0)))
      assert.same({ "b:primary:nil:ok" }, whys(select(2, r:call("m", {}))))
      baton.sleep(math.max(0, 1060 - (baton.now() - t0)))
      assert.same({ "a:primary:nil:ok" }, whys(select(2, r:call("m", {}))))  -- back, and serving
    end))

    it("Anthropic's 429 too, and cooldown_ms when there is no Retry-After", H.http_async(function()
      local r = baton.router { cooldown_ms = 300, deployments = {
        dep("a", "/llm/429?retry_after=2&style=anthropic"),
        { name = "x", model = "m", call = function() return nil, "slow down", "rate_limited" end },
        dep("b", "/llm/ok"),
      } }
      local _, ledger = r:call("m", {})
      assert.same({ "a:primary:rate_limited:cooldown", "x:next:rate_limited:cooldown", "b:next:nil:ok" },
                  whys(ledger))
      assert.equal(2000, ledger[1].retry_after_ms)
      assert.equal(2000, r:usage().a.cooldown_ms)
      assert.equal(300, r:usage().x.cooldown_ms)
    end))

    it("529 overloaded: the next at once, no cooldown", H.http_async(function()
      local r = baton.router { deployments = { dep("a", "/llm/529"), dep("b", "/llm/ok") } }
      local ms, res, ledger = H.timed(r.call, r, "m", {})
      assert.equal(200, res.status)
      assert.same({ "a:primary:overloaded:next", "b:next:nil:ok" }, whys(ledger))
      assert.is_true(ms < 300, "took " .. ms)
      assert.same({ "a:primary:overloaded:next", "b:next:nil:ok" }, whys(select(2, r:call("m", {}))))
      assert.equal(0, r:usage().a.cooldown_ms)
    end))

    it("500 twice: retried, then the next", H.http_async(function()
      local r = baton.router { retry = { max = 1, base_ms = 20 },
                               deployments = { dep("a", "/llm/500"), dep("b", "/llm/ok") } }
      local res, ledger = r:call("m", {})
      assert.equal(200, res.status)
      assert.same({ "a:primary:server_error:retry", "a:retry:server_error:next", "b:next:nil:ok" }, whys(ledger))
      local u = r:usage()
      assert.equal(2, u.a.errors.server_error)
      assert.equal(1, u.b.ok)
    end))

    for _, style in ipairs { "openai", "anthropic", "gemini" } do
      it(("context length (%s): the larger-context group serves"):format(style), H.http_async(function()
        local r = baton.router {
          deployments = { dep("small", "/llm/context?style=" .. style), dep("other", "/llm/ok"),
                          dep("large", "/llm/ok?in=9000") },
          groups = { chat = { "small", "other" }, long = { "large" } },
          context_fallbacks = { chat = { "long" } },
        }
        local res, ledger = r:call("chat", {})
        assert.equal(200, res.status)
        assert.same({ "small:primary:context_length:fallback", "large:context_fallback:nil:ok" }, whys(ledger))
        assert.equal("long", ledger[2].group)
        assert.equal(9000, ledger[2].tokens_in)
      end))
    end

    it("context length with no context fallback fails as rejected", H.http_async(function()
      local r = baton.router { deployments = { dep("small", "/llm/context"), dep("b", "/llm/ok") } }
      local _, _, detail = H.assert_failure("baton.router:call", "rejected", r:call("m", {}))
      assert.equal("context_length", detail.class)
      assert.equal(1, #detail.ledger)
    end))

    it("401: fails at once without trying the others", H.http_async(function()
      local r = baton.router { deployments = { dep("a", "/llm/401"), dep("b", "/llm/ok") } }
      local msg, _, detail = H.assert_failure("baton.router:call", "auth", r:call("m", {}))
      assert.matches("Incorrect API key", msg)
      assert.same({ "a:primary:auth:fail" }, whys(detail.ledger))
      assert.equal(0, r:usage().b.attempts)
    end))

    it("content filter: fails at once, as rejected", H.http_async(function()
      local r = baton.router { deployments = { dep("a", "/llm/filter"), dep("b", "/llm/ok") } }
      local _, _, detail = H.assert_failure("baton.router:call", "rejected", r:call("m", {}))
      assert.same({ "a:primary:content_filter:fail" }, whys(detail.ledger))
    end))

    it("an `on` table changes the actions", H.http_async(function()
      local r = baton.router { on = { auth = "next", overloaded = "fail" },
                               deployments = { dep("a", "/llm/401"), dep("b", "/llm/529"), dep("c", "/llm/ok") } }
      local _, _, detail = H.assert_failure("baton.router:call", "unavailable", r:call("m", {}))
      assert.same({ "a:primary:auth:next", "b:next:overloaded:fail" }, whys(detail.ledger))
    end))

    it("every deployment failing: the last class's kind, with the whole ledger", H.http_async(function()
      local r = baton.router { deployments = { dep("a", "/llm/503"), dep("b", "/llm/529") } }
      local msg, _, detail = H.assert_failure("baton.router:call", "unavailable", r:call("m", {}))
      assert.matches("failed after 2 attempts", msg)
      assert.same({ "a:primary:unavailable:next", "b:next:overloaded:next" }, whys(detail.ledger))
      assert.equal("overloaded", detail.class)
    end))
  end)

  it("ONE deadline covers the chain: 300 ms over three slow deployments is a timeout in ~300 ms",
    H.http_async(function()
      local slow = "/llm/ok?ms=2000"
      local r = baton.router { deployments = { dep("a", slow, { timeout_ms = 100 }), dep("b", slow, { timeout_ms = 100 }),
                                               dep("c", slow, { timeout_ms = 100 }) } }
      local ms, _, msg, kind, detail = H.timed(r.call, r, "m", {}, { timeout_ms = 300 })
      assert.equal("timeout", kind, msg)
      assert.is_true(ms >= 295 and ms < 500, ("took %.1f ms"):format(ms))
      assert.same({ "a:primary:timeout:next", "b:next:timeout:next", "c:next:timeout:fail" }, whys(detail.ledger))
      assert.equal(0, baton.stats().transfers)  -- every slow transfer removed
      for _, d in pairs(r:usage()) do assert.equal(0, d.in_flight) end
    end))

  it("queues a request when every candidate is saturated; whichever frees first grants it", H.http_async(function()
    local r = baton.router { deployments = {
      dep("a", "/llm/ok?ms=600", { max_parallel = 1 }),  -- the primary frees last
      dep("b", "/llm/ok?ms=100", { max_parallel = 1 }),
    } }
    local g <close> = baton.group()
    local t1 = g:spawn(r.call, r, "m", {})
    local t2 = g:spawn(r.call, r, "m", {})
    baton.sleep(20)
    local ms, res, ledger = H.timed(r.call, r, "m", {})
    assert.equal(200, res.status)
    assert.same({ "b:primary:nil:ok" }, whys(ledger))
    assert.is_true(ms >= 150 and ms < 450, ("granted after %.1f ms"):format(ms))  -- b's 100 ms, then its own
    assert.is_true(ledger[1].queued_ms >= 50, "queued " .. tostring(ledger[1].queued_ms))
    g:join_all()
    assert.same({ "a:primary:nil:ok" }, whys(select(3, t1:join())))
    assert.same({ "b:primary:nil:ok" }, whys(select(3, t2:join())))
  end))

  it("a queued request that reaches its deadline times out; its place is given up", H.async(function()
    local release = baton.notify()
    local r = baton.router { deployments = { { name = "a", model = "m", max_parallel = 1, call = function(req)
      if req.hold then release:notified() end
      return "done"
    end } } }
    local t = baton.spawn(r.call, r, "m", { hold = true })
    baton.yield()
    local _, _, detail = H.assert_failure("baton.router:call", "timeout", r:call("m", {}, { timeout_ms = 50 }))
    assert.equal(0, #detail.ledger)
    local w = baton.spawn(r.call, r, "m", {}, { timeout_ms = 5000 })
    baton.sleep(10)
    w:abort()                       -- a caller aborted while queued leaves the queue
    assert.equal("cancelled", select(2, w:join()).kind)
    release:notify_one()
    assert.equal("done", select(2, t:join()))
    assert.equal("done", r:call("m", {}))
    assert.matches("0 queued", tostring(r))
  end))

  describe("rate limits", function()
    it("rpm holds: 6000 a minute with a burst of 1 spaces 30 calls over >= 290 ms", H.async(function()
      local r = baton.router { deployments = { { name = "a", model = "m", rpm = 6000, rpm_burst = 1,
                                                 call = function() return true end } } }
      local ms = H.timed(function()
        for _ = 1, 30 do assert(r:call("m", {})) end
      end)
      assert.is_true(ms >= 290 and ms < 800, ("30 calls took %.1f ms"):format(ms))
    end))

    it("rpm: a request that cannot be served before its deadline fails at once, saying when", H.async(function()
      local r = baton.router { deployments = { { name = "a", model = "m", rpm = 1, call = function() return 1 end } } }
      assert(r:call("m", {}))
      local ms, _, msg, kind, detail = H.timed(r.call, r, "m", {}, { timeout_ms = 1000 })
      assert.equal("rate_limited", kind, msg)
      assert.is_true(ms < 50, "waited " .. ms)
      assert.is_true(detail.retry_after_ms > 59000)
    end))

    it("tpm holds with estimates corrected from the response's usage (adjust)", H.http_async(function()
      local r = baton.router { deployments = { dep("a", "/llm/ok?in=60&out=40", { tpm = 1000 }) } }
      local res, ledger = r:call("m", {}, { estimate_tokens = 800 })
      assert.equal(200, res.status)
      assert.equal(800, ledger[1].tokens_estimated)
      assert.equal(60, ledger[1].tokens_in)
      assert.equal(40, ledger[1].tokens_out)
      -- 100 used, not 800: another 800 fits at once (it would not without the correction)
      assert(r:call("m", {}, { estimate_tokens = 800 }))
      assert(r:call("m", {}, { estimate_tokens = 700 }))
      local _, _, detail = H.assert_failure("baton.router:call", "rate_limited",
                                            r:call("m", {}, { estimate_tokens = 800, timeout_ms = 200 }))
      assert.is_true(detail.retry_after_ms > 5000)  -- 100 tokens short, at 60 ms a token
      -- an estimate over a deployment's tpm or context window: never that deployment
      H.assert_failure("baton.router:call", "rejected", r:call("m", {}, { estimate_tokens = 5000 }))
    end))

    it("a request too long for a deployment's context window goes to one that takes it", H.async(function()
      local r = baton.router { deployments = {
        { name = "small", model = "m", context_window = 8000, call = function() return "small" end },
        { name = "big", model = "m", context_window = 200000, call = function() return "big" end },
      } }
      assert.equal("small", r:call("m", {}, { estimate_tokens = 100 }))
      assert.equal("big", r:call("m", {}, { estimate_tokens = 9000 }))
    end))
  end)

  it("hedging returns the fast copy and aborts the slow one (its transfer removed)", H.http_async(function()
    local r = baton.router { hedge = { after_ms = 100, max = 1, budget = 1 },
                             deployments = { dep("slow", "/llm/ok?ms=3000"), dep("fast", "/llm/ok?ms=20") } }
    local ms, res, ledger = H.timed(r.call, r, "m", {})
    assert.equal(200, res.status)
    assert.is_true(ms >= 100 and ms < 600, ("took %.1f ms"):format(ms))
    assert.equal(0, baton.stats().transfers)  -- the slow one's transfer is gone already
    table.sort(ledger, function(x, y) return x.deployment > y.deployment end)
    assert.same({ "slow:primary:nil:aborted", "fast:hedge:nil:ok" }, whys(ledger))
    local u = r:usage()
    assert.equal(1, u.slow.aborted)
    assert.equal(1, u.fast.ok)
  end))

  it("hedges at the deployment's p95 once it has 20 successes", H.async(function()
    local n = 0
    local r = baton.router { hedge = { after_ms = "p95", budget = 1 }, deployments = {
      { name = "a", model = "m", call = function() n = n + 1 baton.sleep(n == 25 and 2000 or 10) return "a" end },
      { name = "b", model = "m", call = function() baton.sleep(10) return "b" end },
    } }
    for _ = 1, 20 do assert.equal("a", r:call("m", {})) end  -- no samples yet: no hedge
    assert.equal(0, r:usage().b.attempts)
    for _ = 21, 24 do r:call("m", {}) end
    local ms, v, ledger = H.timed(r.call, r, "m", {})       -- a's 25th is stuck: b answers
    assert.equal("b", v)
    assert.equal("hedge", ledger[2].why)
    assert.is_true(ms < 300, ("took %.1f ms"):format(ms))
  end))

  it("hedges within its budget only", H.async(function()
    local hedged = 0
    local r = baton.router { hedge = { after_ms = 5, budget = 0.25 }, deployments = {
      { name = "a", model = "m", call = function() baton.sleep(20) return "a" end },
      { name = "b", model = "m", call = function() hedged = hedged + 1 baton.sleep(20) return "b" end },
    } }
    for _ = 1, 20 do assert(r:call("m", {})) end
    assert.is_true(hedged >= 4 and hedged <= 6, hedged .. " hedges in 20 calls")
  end))

  it("usage() sums what the ledgers say; on_attempt sees every row", H.http_async(function()
    local rows = {}
    local function answer(seed) return function(n) return ("/llm/random?seed=%d&n=%d"):format(seed, n) end end
    local r = baton.router {
      on_attempt = function(row) rows[#rows + 1] = row end,
      deployments = {
        dep("a", answer(1), { cost = { input = 0.001, output = 0.002 }, timeout_ms = 200 }),
        dep("b", answer(2), { cost = { input = 0.003, output = 0.004 }, timeout_ms = 200 }),
        dep("c", answer(3), { cost = { input = 0.01, output = 0.02 } }),
      } }
    local sums, nrows = {}, 0
    for _ = 1, 30 do
      local v, a2, a3, a4 = r:call("m", {}, { timeout_ms = 2000 })
      local ledger = v and a2 or a4.ledger
      for _, row in ipairs(ledger) do
        nrows = nrows + 1
        local s = sums[row.deployment] or { attempts = 0, ok = 0, aborted = 0, errors = {}, tin = 0, tout = 0, cost = 0 }
        sums[row.deployment] = s
        s.attempts = s.attempts + 1
        if row.action == "ok" then s.ok = s.ok + 1 end
        if row.action == "aborted" then s.aborted = s.aborted + 1 end
        if row.class then s.errors[row.class] = (s.errors[row.class] or 0) + 1 end
        s.tin, s.tout, s.cost = s.tin + (row.tokens_in or 0), s.tout + (row.tokens_out or 0), s.cost + (row.cost or 0)
      end
      local _ = a3
    end
    assert.equal(nrows, #rows)
    for name, u in pairs(r:usage()) do
      local s = sums[name] or { attempts = 0, ok = 0, aborted = 0, errors = {}, tin = 0, tout = 0, cost = 0 }
      assert.equal(s.attempts, u.attempts)
      assert.equal(s.ok, u.ok)
      assert.same(s.errors, u.errors)
      assert.equal(s.tin, u.tokens_in)
      assert.equal(s.tout, u.tokens_out)
      assert.is_true(math.abs(s.cost - u.cost) < 1e-9)
      if u.ok > 0 then assert.is_true(u.p50_ms <= u.p95_ms and u.p95_ms <= u.p99_ms) end
    end
    assert.is_true(nrows > 30)
  end))

  it("a caller aborted mid-attempt leaves nothing behind: slots back, transfers removed", H.http_async(function()
    local r = baton.router { deployments = { dep("a", "/llm/ok?ms=2000", { max_parallel = 1 }) } }
    local t = baton.spawn(r.call, r, "m", {})
    baton.sleep(50)
    assert.equal(1, r:usage().a.in_flight)
    t:abort()
    assert.equal("cancelled", select(2, t:join()).kind)
    assert.equal(0, r:usage().a.in_flight)
    H.settle()
    assert.equal(0, baton.stats().transfers)
  end))

  it("strategies: least_busy spreads, lowest_latency prefers the fast one", H.async(function()
    local function d(name, ms) return { name = name, model = "m", call = function() baton.sleep(ms) return name end } end
    local r = baton.router { deployments = { d("a", 30), d("b", 5) },
                             groups = { busy = { "a", "b", strategy = "least_busy" },
                                        fast = { "a", "b", strategy = "lowest_latency" } } }
    local g <close> = baton.group()
    local t1, t2 = g:spawn(r.call, r, "busy", {}), g:spawn(r.call, r, "busy", {})
    g:join_all()
    assert.same({ "a", "b" }, { (select(2, t1:join())), (select(2, t2:join())) })
    for _ = 1, 3 do r:call("fast", {}) end  -- both measured
    assert.equal("b", r:call("fast", {}))
    assert.equal("b", r:call("fast", {}))
  end))

  it("falls back to the fallback groups when a group is exhausted", H.async(function()
    local r = baton.router {
      deployments = { { name = "a", model = "m", call = function() return nil, "down", "connect" end },
                      { name = "z", model = "z", call = function() return "z" end } },
      fallbacks = { m = { "z" } },
    }
    local v, ledger = r:call("m", {})
    assert.equal("z", v)
    assert.same({ "a:primary:unavailable:next", "z:fallback:nil:ok" }, whys(ledger))
  end))

  for _, impl in ipairs { { "the memory store", baton.store.memory }, { "the test double", Double.new } } do
    it("shares cooldowns and parallel slots between routers over " .. impl[1], H.async(function()
      local s = impl[2]()
      local release = baton.notify()
      local function deps(tag)
        return {
          { name = "a", model = "m", max_parallel = 1, call = function(req)
              if req.limited then return nil, "slow down", "rate_limited", { retry_after_ms = 200 } end
              if req.hold then release:notified() end
              return tag .. ":a"
            end },
          { name = "b", model = "m", call = function() return tag .. ":b" end },
        }
      end
      local r1 = baton.router { store = s, name = "shared", deployments = deps("r1") }
      local r2 = baton.router { store = s, name = "shared", deployments = deps("r2") }
      assert.equal("r2:b", r1:call("m", { limited = true }) and r2:call("m", {}))  -- a cools down for both
      baton.sleep(220)
      local holder = baton.spawn(r1.call, r1, "m", { hold = true })  -- takes a's one slot
      baton.sleep(10)
      assert.equal("r2:b", r2:call("m", {}))                        -- r2 sees the slot taken
      release:notify_one()
      assert.equal("r1:a", select(2, holder:join()))
      assert.equal("r2:a", r2:call("m", {}))
      if s.close then s:close() end
    end))
  end

  it("returns a store's failure as the call's, with the ledger", H.async(function()
    local s = baton.store.memory()
    local broken = setmetatable({ cooldown = function() return nil, "redis: connection reset", "io" end },
                                { __index = s })
    local r = baton.router { store = broken, deployments = { { name = "a", model = "m", call = function() return 1 end } } }
    local msg, _, detail = H.assert_failure("baton.router:call", "io", r:call("m", {}))
    assert.matches("the store failed: redis: connection reset", msg)
    assert.equal("store", detail.class)
    assert.same({}, detail.ledger)
    H.raises_misuse("baton.router:call", 1, "group", "a group of this router", r.call, r, "nope", {})
  end))

  describe("classify", function()
    local classify = baton.router.classify

    it("reads the fixture server's answers as each provider's class", H.http_async(function()
      local cases = {
        { "/llm/ok", nil }, { "/llm/429?retry_after=3", "rate_limited", 3000 },
        { "/llm/429?retry_after=1&style=anthropic", "rate_limited", 1000 }, { "/llm/529", "overloaded" },
        { "/llm/503", "unavailable" }, { "/llm/500", "server_error" }, { "/llm/context", "context_length" },
        { "/llm/context?style=anthropic", "context_length" }, { "/llm/context?style=gemini", "context_length" },
        { "/llm/401", "auth" }, { "/llm/filter", "content_filter" },
      }
      for _, c in ipairs(cases) do
        local resp = assert(http.request { url = server:url(c[1]) })
        local class, ra = classify(resp)
        assert.equal(c[2], class, c[1])
        assert.equal(c[3], ra, c[1])
        local decoded = assert(http.json { url = server:url(c[1]) })  -- a decoded body too
        assert.equal(c[2], (classify(decoded)), c[1] .. " (json)")
      end
    end))

    it("reads statuses, bodies and headers", function()
      local function resp(status, body, headers) return { status = status, body = body, headers = headers or {} } end
      assert.same({ "rate_limited", 1500 }, { classify(resp(429, "", { ["retry-after-ms"] = "1500" })) })
      assert.same({ "rate_limited", 20 }, { classify(resp(429, '{"error":{"message":"Please try again in 20ms."}}')) })
      assert.same({ "rate_limited", 1500 },
                  { classify(resp(429, '{"error":{"message":"Please try again in 1.5s."}}')) })
      assert.equal("rate_limited", (classify(resp(400, '{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}'))))
      assert.equal("overloaded", (classify(resp(500, { type = "error", error = { type = "overloaded_error" } }))))
      assert.equal("context_length", (classify(resp(413, { type = "error", error = { type = "request_too_large",
                                                                                      message = "Request exceeds" } }))))
      assert.equal("auth", (classify(resp(403, "forbidden"))))
      assert.equal("auth", (classify(resp(400, '{"error":{"code":400,"message":"API key not valid."}}'))))
      assert.equal("timeout", (classify(resp(408, ""))))
      assert.equal("unavailable", (classify(resp(502, ""))))
      assert.equal("bad_request", (classify(resp(404, "no such model"))))
      assert.equal("bad_request", (classify(resp(422, '{"error":{"message":"bad field"}}'))))
      assert.equal("content_filter", (classify(resp(200, { promptFeedback = { blockReason = "SAFETY" } }))))
      assert.is_nil(classify(resp(200, { candidates = { { finishReason = "STOP" } } })))
      assert.is_nil(classify("any value"))
      assert.is_nil(classify(false))
    end)

    it("reads baton's kinds and MCP's failures", function()
      assert.same({ "timeout" }, { classify(nil, "x", "timeout", { timeout_ms = 5 }) })
      assert.equal("unavailable", (classify(nil, "refused", "connect")))
      assert.equal("unavailable", (classify(nil, "bad cert", "tls")))
      assert.equal("unavailable", (classify(nil, "EMFILE", "resource")))
      assert.same({ "rate_limited", 250 }, { classify(nil, "slow", "rate_limited", { retry_after_ms = 250 }) })
      assert.same({ "unavailable", 900 }, { classify(nil, "open", "circuit_open", { retry_after_ms = 900 }) })
      assert.equal("bad_request", (classify(nil, "tool failed", "tool_error", { tool = "x" })))
      assert.equal("server_error", (classify(nil, "oops", "rpc_error", { code = -32603 })))
      assert.equal("bad_request", (classify(nil, "no method", "rpc_error", { code = -32601 })))
      assert.equal("context_length", (classify(nil, "prompt is too long: 9000 tokens", "error")))
      assert.equal("error", (classify(nil, "bug", "error")))
      assert.equal("rate_limited", (classify(nil, "x", "io", { status = 429, headers = {}, body = "" })))
      assert.equal("quota", (classify(nil, "x", "quota")))  -- a word of the caller's own passes
    end)

    it("can be replaced by the classify option", H.async(function()
      local r = baton.router {
        classify = function(v, msg) if v == "busy" or msg == "busy" then return "overloaded" end end,
        deployments = { { name = "a", model = "m", call = function() return "busy" end },
                        { name = "b", model = "m", call = function() return "fine" end } } }
      local v, ledger = r:call("m", {})
      assert.equal("fine", v)
      assert.same({ "a:primary:overloaded:next", "b:next:nil:ok" }, whys(ledger))
    end))
  end)

  it("reports misuse", function()
    local F = "baton.router"
    local ok = { name = "a", call = function() end }
    H.raises_misuse(F, 1, "opts", "table", baton.router, 5)
    H.raises_misuse(F, 1, "deploymnts", "unknown option", baton.router, { deploymnts = {} })
    H.raises_misuse(F, 1, "deployments", "non%-empty list", baton.router, { deployments = {} })
    H.raises_misuse(F, 1, "deployments[1].call", "function", baton.router, { deployments = { { name = "a" } } })
    H.raises_misuse(F, 1, "deployments[1].rpm", "a number > 0", baton.router,
                    { deployments = { { name = "a", call = print, rpm = 0 } } })
    H.raises_misuse(F, 1, "deployments[2].name", "a name not used before", baton.router, { deployments = { ok, ok } })
    H.raises_misuse(F, 1, "groups.g[1]", "a deployment name", baton.router, { deployments = { ok }, groups = { g = { "x" } } })
    H.raises_misuse(F, 1, "groups.g.strategy", "'ordered'", baton.router,
                    { deployments = { ok }, groups = { g = { "a", strategy = "random" } } })
    H.raises_misuse(F, 1, "fallbacks.a[1]", "a group name", baton.router, { deployments = { ok }, fallbacks = { a = { "nope" } } })
    H.raises_misuse(F, 1, "on.auth", "'retry'", baton.router, { deployments = { ok }, on = { auth = "ignore" } })
    H.raises_misuse(F, 1, "hedge.budget", "fraction", baton.router, { deployments = { ok }, hedge = { after_ms = 1, budget = 2 } })
    H.raises_misuse(F, 1, "hedge.max", "integer >= 1, got 1.5", baton.router, { deployments = { ok }, hedge = { after_ms = 1, max = 1.5 } })
    H.raises_misuse(F, 1, "retry.max", "integer >= 0, got '1'", baton.router, { deployments = { ok }, retry = { max = "1" } })
    -- a float with an integer's value counts as that integer, as in the C functions
    local rf = baton.router { deployments = { { name = "f", call = function() return "v" end, max_parallel = 2.0,
                                                rpm_burst = 3.0, rpm = 60 } },
                              retry = { max = 1.0 }, hedge = { after_ms = 1, max = 2.0 } }
    baton.run(function() assert.equal("v", (rf:call("f", {}, { estimate_tokens = 10.0 }))) end)
    local r = baton.router { deployments = { ok } }
    H.raises_misuse("baton.router:call", 1, "group", "a group of this router", r.call, r, "nope", {})
    H.raises_misuse("baton.router:call", 3, "estimate", "unknown option", r.call, r, "a", {}, { estimate = 1 })
    H.raises_misuse("baton.router:call", 3, "estimate_tokens", "integer >= 0", r.call, r, "a", {}, { estimate_tokens = -1 })
    H.raises_misuse("baton.router:call", 0, "self", "baton.Router", r.call, {}, "a", {})
  end)
end)

-- What a hostile provider or a broken hook cannot do: take a deployment's slot for good,
-- make call raise on a token count, or shut a deployment for ever with its Retry-After.
describe("baton.router against hostile answers and hooks", function()
  it("a classify hook that raises re-raises, with the attempt's slot given back",
     H.async(function()
    local boom = true
    local r = baton.router {
      deployments = { { name = "a", max_parallel = 1, call = function() return nil, "x", "io" end } },
      groups = { g = { "a" } },
      classify = function(...) if boom then error("classify boom") end return baton.router.classify(...) end,
    }
    local ok, err = pcall(r.call, r, "g", { prompt = "x" }, { timeout_ms = 200 })
    assert.is_false(ok)
    assert.matches("classify boom", tostring(err), 1, true)
    assert.equal(0, r:usage().a.in_flight)
    boom = false
    local v, msg, kind = r:call("g", { prompt = "x" }, { timeout_ms = 200 })
    assert.is_nil(v)
    assert.equal("unavailable", kind, msg)  -- tried: the slot was free
  end))

  for _, n in ipairs { 0.5, -5, 0 / 0 } do
    it("a token count of " .. tostring(n) .. " is taken as a whole number >= 0", H.async(function()
      local r = baton.router {
        deployments = { { name = "a", max_parallel = 1, tpm = 1000,
                          call = function() return { text = "ok" }, { input = n, output = 1 } end } },
        groups = { g = { "a" } },
      }
      for _ = 1, 3 do assert.same({ text = "ok" }, (assert(r:call("g", { prompt = "x" }, { timeout_ms = 300 })))) end
      assert.equal(0, r:usage().a.in_flight)
    end))
  end

  it("a Retry-After of 1e300 s keeps a deployment out for a day at most", H.async(function()
    local r = baton.router {
      deployments = { { name = "a", call = function()
        return { status = 429, headers = { ["retry-after"] = "1e300" }, body = "slow down" }
      end } },
      groups = { g = { "a" } },
    }
    local v, _, kind, detail = r:call("g", { prompt = "x" }, { timeout_ms = 300 })
    assert.is_nil(v)
    assert.equal("rate_limited", kind)
    assert.equal(86400000, detail.retry_after_ms)
    v, _, kind = r:call("g", { prompt = "x" }, { timeout_ms = 300 })
    assert.equal("rate_limited", kind)  -- said so, and no overflow printing it
  end))
end)
