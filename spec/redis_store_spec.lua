-- baton.redis.store beyond the contract (spec/store_spec.lua runs that against it): two
-- stores on two clients sharing one rate limit and one lease capacity, as two processes
-- would; the key layout and its expiries; a redis-server killed mid-run with on_outage
-- "fail" (ops fail with closed/connect) and "open" (ops pass and are counted), and recovery
-- on reconnect = true once it is back; three baton processes sharing a lease capacity and
-- a rate limit; misuse. Against a private redis-server of this run.
local baton = require "baton"
local H = require "spec.helper"

local server, why = H.redis_server()
if not server then H.loud("redis_store_spec", why) end
local it = H.gated(why)
local async = H.async

local n = 0
local function pair(opts)
  opts = opts or {}
  n = n + 1
  local prefix = ("rs%d:"):format(n)
  local ra = assert(baton.redis.connect { url = server.url, reconnect = opts.reconnect })
  local rb = assert(baton.redis.connect { url = server.url, reconnect = opts.reconnect })
  return baton.redis.store { redis = ra, prefix = prefix, on_outage = opts.on_outage },
         baton.redis.store { redis = rb, prefix = prefix, on_outage = opts.on_outage }, ra, rb, prefix
end

describe("baton.redis.store", function()
  lazy_teardown(function() if server then server:stop() end end)

  it("shares a rate limit between two clients", async(function()
    local sa, sb, ra, rb = pair()
    local a = baton.ratelimit { rate = 50, per_ms = 1000, burst = 5, store = sa, key = "rpm" }
    local b = baton.ratelimit { rate = 50, per_ms = 1000, burst = 5, store = sb, key = "rpm" }
    -- 60 acquires split over the two limiters: 5 at once, then 50/s for both together
    local ms = H.timed(function()
      local g <close> = baton.group()
      for i = 1, 60 do g:spawn(function() assert((i % 2 == 0 and a or b):acquire(1)) end) end
      g:join_all()
    end)
    assert.is_true(ms >= 1000 and ms < 1000 + 800, ("60 acquires at 50/s burst 5 took %.0f ms"):format(ms))
    H.assert_failure("baton.ratelimit:try_acquire", "rate_limited", a:try_acquire(5))
    ra:close()
    rb:close()
  end))

  it("shares a lease capacity between two clients: never more holders than the limit", async(function()
    local sa, sb, ra, rb = pair()
    local inside, peak, done = 0, 0, 0
    local g <close> = baton.group()
    for i = 1, 40 do
      local s = i % 2 == 0 and sa or sb
      g:spawn(function()
        local holder = "h" .. i
        while true do
          local ok, _, kind, detail = s:lease_acquire("cap", holder, 3, 5000)
          if ok then break end
          assert.equal("busy", kind)
          assert.is_true(detail.holders <= 3)
          baton.sleep(2)
        end
        inside = inside + 1
        if inside > peak then peak = inside end
        assert.is_true(s:lease_holders("cap") <= 3)
        baton.sleep(5)
        inside = inside - 1
        assert.is_true(s:lease_release("cap", holder))
        done = done + 1
      end)
    end
    g:join_all()
    assert.equal(40, done)
    assert.equal(3, peak)
    assert.equal(0, sa:lease_holders("cap"))
    ra:close()
    rb:close()
  end))

  it("keeps its keys under the prefix, each with an expiry (a counter without ttl excepted)", async(function()
    local s, _, ra, rb, prefix = pair()
    assert(s:gcra_take("g", 10, 1000, 5, 1))
    assert(s:lease_acquire("l", "me", 2, 5000))
    assert(s:incr("c", 1, 5000))
    assert(s:incr("forever", 1))
    assert(s:set_cooldown("d", 5000))
    assert.equal("new", s:claim("f", 5000))
    assert.equal("new", s:claim("r", 5000))
    assert(s:complete("r", { ok = true }, 5000))
    local keys = assert(ra:call("KEYS", prefix .. "*"))
    table.sort(keys)
    assert.same({ prefix .. "cd:d", prefix .. "cnt:c", prefix .. "cnt:forever", prefix .. "fl:f",
                  prefix .. "lease:l", prefix .. "res:r", prefix .. "tat:g" }, keys)
    for _, k in ipairs(keys) do
      local pttl = ra:call("PTTL", k)
      if k == prefix .. "cnt:forever" then
        assert.equal(-1, pttl)
      else
        assert.is_true(pttl > 0 and pttl <= 5000, k .. " " .. pttl)
      end
    end
    assert.equal("zset", ra:call("TYPE", prefix .. "lease:l"))
    assert(s:del("l"), s:del("g"), s:del("c"), s:del("forever"), s:del("d"), s:del("f"), s:del("r"))
    assert.same({}, ra:call("KEYS", prefix .. "*"))
    assert.equal(0, s:stats().outage_open)
    assert.is_true(s:stats().calls >= 14)
    ra:close()
    rb:close()
  end))

  it("fails (on_outage 'fail') or passes (on_outage 'open') while Redis is down, and recovers",
     async(function()
    local fail_s, _, fra, frb = pair { reconnect = true }
    local open_s, _, ora, orb = pair { reconnect = true, on_outage = "open" }
    assert(fail_s:lease_acquire("cap", "x", 1, 60000))
    assert(open_s:lease_acquire("cap", "x", 1, 60000))
    H.assert_failure("baton.redis.store:lease_acquire", "busy", open_s:lease_acquire("cap", "y", 1, 60000))
    server:kill()
    local function outage(...)
      local _, k = H.assert_failure(select(1, ...), nil, select(2, ...))
      assert.is_true(k == "closed" or k == "connect" or k == "io", k)
    end
    outage("baton.redis.store:lease_acquire", fail_s:lease_acquire("cap", "y", 1, 60000))
    outage("baton.redis.store:gcra_take", fail_s:gcra_take("g", 1, 1000, 1, 1))
    outage("baton.redis.store:claim", fail_s:claim("k", 1000))
    outage("baton.redis.store:now", fail_s:now())
    assert.equal(0, fail_s:stats().outage_open)
    assert.is_true(fail_s:stats().outage_failed >= 3)
    -- open: answered as allowed, and counted
    assert.is_true(open_s:lease_acquire("cap", "y", 1, 60000))
    assert.equal(0, open_s:gcra_take("g", 1, 1000, 1, 1))
    assert.equal(0, open_s:cooldown("d"))
    assert.equal("new", open_s:claim("k", 1000))
    assert.equal(1, open_s:incr("c", 1))
    assert.is_true(open_s:stats().outage_open >= 5)
    local rl = baton.ratelimit { rate = 1, per_ms = 60000, burst = 1, store = open_s, key = "rl" }
    assert(rl:try_acquire(1))
    assert(rl:try_acquire(1))                                  -- the limit is open
    -- back: both recover on their own (the clients reconnect, after their backoff)
    server:start()
    local function eventually(fn)
      for _ = 1, 200 do
        if fn() then return true end
        baton.sleep(25)
      end
      error("did not recover")
    end
    eventually(function() return fail_s:gcra_take("g", 1, 1000, 1, 1) end)
    eventually(function() return open_s:lease_holders("cap") == 0 and open_s:stats().outage_open > 0 end)
    -- the restarted server lost its state: the lease is free again, and held once more
    assert(open_s:lease_acquire("cap", "y", 1, 60000))
    H.assert_failure("baton.redis.store:lease_acquire", "busy", open_s:lease_acquire("cap", "z", 1, 60000))
    assert.equal(1, open_s:lease_holders("cap"))
    fra:close(); frb:close(); ora:close(); orb:close()
  end))

  -- Three baton processes against the one server: each of 30 tasks a process takes a lease
  -- of capacity 4 (counting the holders inside it with INCR/DECR on the server), and takes
  -- from a rate limit of 20/s with a burst of 5 shared by all three.
  it("holds a lease capacity and a rate limit across three baton processes", function()
    local script = H.write_temp([==[
local baton = require "baton"
local url, prefix, id = arg[1], arg[2], arg[3]
local r = assert(baton.redis.connect { url = url })
local s = baton.redis.store { redis = r, prefix = prefix }
local peak = 0
local g <close> = baton.group()
for i = 1, 30 do
  g:spawn(function()
    local holder = id .. ":" .. i
    while not s:lease_acquire("cap", holder, 4, 10000) do baton.sleep(3) end
    local inside = r:call("INCR", prefix .. "inside")
    if inside > peak then peak = inside end
    baton.sleep(5 + i % 10)
    r:call("DECR", prefix .. "inside")
    assert(s:lease_release("cap", holder))
  end)
end
g:join_all()
local rl = baton.ratelimit { rate = 20, per_ms = 1000, burst = 5, store = s, key = "rps" }
local t0, took, from = baton.clock(), 0, assert(s:now())
while baton.clock() - t0 < 1000 do
  if rl:try_acquire(1) then took = took + 1 end
  baton.sleep(5)
end
print(("peak=%d took=%d from=%.3f to=%.3f"):format(peak, took, from, assert(s:now())))
]==])
    n = n + 1
    local prefix = ("mp%d:"):format(n)
    local cmd = {}
    for id = 1, 3 do
      cmd[#cmd + 1] = ("%s %s %s %s p%d &"):format(H.EXE, H.q(script), H.q(server.url), H.q(prefix), id)
    end
    local p = assert(io.popen("(" .. table.concat(cmd, " ") .. " wait) 2>&1"))
    local out = p:read("a")
    p:close()
    local peaks, took, lines, from, to = 0, 0, 0, math.huge, 0
    for pk, tk, f, t in out:gmatch("peak=(%d+) took=(%d+) from=([%d.]+) to=([%d.]+)") do
      lines = lines + 1
      peaks = math.max(peaks, tonumber(pk))
      took = took + tonumber(tk)
      from, to = math.min(from, tonumber(f)), math.max(to, tonumber(t))
    end
    assert.equal(3, lines, out)
    assert.is_true(peaks >= 2 and peaks <= 4, "peak holders " .. peaks)
    -- all three took for a second each, within [from, to] on the server's clock: at most the
    -- burst and 20/s over that span were admitted (+1 for the unit at its edge), not 3 × it
    local cap = 5 + 20 * (to - from) / 1000 + 1
    assert.is_true(took >= 15 and took <= cap, ("admitted %d over %.0f ms (cap %.1f)\n%s"):format(took, to - from, cap, out))
    os.remove(script)
  end)

  it("keeps a breaker's open time on the server's clock (TIME), not the process's", async(function()
    local sa, _, ra, rb, prefix = pair()
    local b = baton.breaker { service = "api", threshold = 1, recovery_ms = 60, backend = baton.store.breaker_backend(sa) }
    assert.equal("io", select(3, b:call(function() return nil, "down", "io" end)))
    local t = ra:call("TIME")
    local server_ms = tonumber(t[1]) * 1000 + tonumber(t[2]) // 1000
    local at = tonumber(ra:call("GET", prefix .. "cnt:breaker:api:open_at"))
    assert.is_true(at and math.abs(server_ms - at) < 1000, ("open at %s, the server's clock %d"):format(at, server_ms))
    H.assert_failure("baton.breaker:call", "circuit_open", b:call(function() return 1 end))
    baton.sleep(80)                                 -- the window passes on the server's clock
    assert.equal("half_open", b:state())
    assert.equal(1, b:call(function() return 1 end))
    assert.equal("closed", b:state())
    ra:close()
    rb:close()
  end))

  -- Two breakers on two clients, each with a backend of its own: two processes, as far as
  -- the probe slots go (a breaker counts its own probes); the lease makes it one probe.
  it("lets one process of the fleet probe a half-open breaker; the others fast-fail", async(function()
    local sa, sb, ra, rb = pair()
    local function breaker(s)
      return baton.breaker { service = "api", threshold = 1, recovery_ms = 50,
                             backend = baton.store.breaker_backend(s, nil, { probe_ttl_ms = 5000 }) }
    end
    local a, b = breaker(sa), breaker(sb)
    assert.equal("io", select(3, a:call(function() return nil, "down", "io" end)))
    H.assert_failure("baton.breaker:call", "circuit_open", b:call(function() return 1 end))  -- a opened b's
    baton.sleep(70)
    local gate, probed = baton.notify(), 0
    local probe = baton.spawn(a.call, a, function()
      probed = probed + 1
      gate:notified()
      return nil, "still down", "io"
    end)
    for _ = 1, 500 do if probed == 1 then break end baton.sleep(2) end
    assert.equal(1, probed)
    local msg, _, detail = H.assert_failure("baton.breaker:call", "circuit_open",
                                               b:call(function() probed = probed + 1 end))
    assert.matches("half%-open and its probes are busy", msg)
    assert.equal("half_open", detail.state)
    assert.equal(1, probed)
    gate:notify_one()
    assert.equal("io", select(4, probe:join()))     -- the probe failed: reopened for a window
    local _, _, d2 = H.assert_failure("baton.breaker:call", "circuit_open", b:call(function() probed = probed + 1 end))
    assert.equal("open", d2.state)
    baton.sleep(70)
    assert.equal("ok", b:call(function() return "ok" end))      -- b's turn: the probe closes it
    assert.equal("closed", a:state())
    assert.equal(1, a:call(function() return 1 end))
    -- a probe cancelled midway gives the lease back at once
    assert.equal("io", select(3, a:call(function() return nil, "down", "io" end)))
    baton.sleep(70)
    local hang = baton.spawn(a.call, a, function() baton.sleep(60000) end)
    baton.sleep(30)
    H.assert_failure("baton.breaker:call", "circuit_open", b:call(function() return 1 end))
    hang:abort()
    pcall(hang.join, hang)
    assert.equal(2, b:call(function() return 2 end))
    ra:close()
    rb:close()
  end))

  it("wakes dedup waiters of other processes by pub/sub when the key settles", async(function()
    local sa, sb, ra, rb = pair()
    local da = baton.dedup { ttl_ms = 5000, store = sa }
    local db = baton.dedup { ttl_ms = 5000, store = sb, poll_ms = 5000 }
    local dc = baton.dedup { ttl_ms = 5000, store = sb, poll_ms = 5000 }
    local runs = 0
    local claimer = baton.spawn(da.run, da, "k", function() runs = runs + 1; baton.sleep(300); return 42 end)
    baton.sleep(20)
    local before = sb:stats().calls
    local g <close> = baton.group()
    local b = g:spawn(function() return H.timed(db.run, db, "k", function() runs = runs + 1 end) end)
    local c = g:spawn(function() return H.timed(dc.run, dc, "k", function() runs = runs + 1 end) end)
    local _, ms_b, vb = b:join()
    local _, ms_c, vc = c:join()
    assert.same({ true, 42 }, { claimer:join() })
    assert.equal(42, vb)
    assert.equal(42, vc)
    assert.equal(1, runs)
    -- told at once, not after their 5 s poll; a claim or two each, not one every poll
    assert.is_true(ms_b < 1500 and ms_c < 1500, ("waited %.0f and %.0f ms"):format(ms_b, ms_c))
    assert.is_true(sb:stats().calls - before <= 6, "claims: " .. (sb:stats().calls - before))
    -- a released claim (the claimer failed) tells them too: one of them runs it
    local failing = baton.spawn(da.run, da, "f", function() baton.sleep(200); error("no") end)
    baton.sleep(20)
    local ms, v = H.timed(db.run, db, "f", function() return "mine" end)
    assert.equal("mine", v)
    assert.is_true(ms < 1500, ("waited %.0f ms"):format(ms))
    assert.is_false((failing:join()))
    ra:close()
    rb:close()
  end))

  it("checks its options and arguments", async(function()
    local r <close> = assert(baton.redis.connect { url = server.url })
    local F = "baton.redis.store"
    H.raises_misuse(F, 1, "opts", "table", baton.redis.store, nil)
    H.raises_misuse(F, 1, "redis", "a baton.redis client", baton.redis.store, { redis = {} })
    H.raises_misuse(F, 1, "on_outage", "'fail' or 'open'", baton.redis.store, { redis = r, on_outage = "maybe" })
    H.raises_misuse(F, 1, "opts", "known options", baton.redis.store, { redis = r, prefx = "x" })
    local s = baton.redis.store { redis = r }
    H.raises_misuse(F .. ":gcra_take", 5, "cost", "a cost <= burst", s.gcra_take, s, "k", 1, 1000, 2, 3)
    H.raises_misuse(F .. ":lease_acquire", 3, "limit", "integer >= 1", s.lease_acquire, s, "k", "h", 0, 10)
    H.raises_misuse(F .. ":complete", 2, "value", "JSON", s.complete, s, "k", print, 10)
    assert.matches("^baton.redis.Store %(prefix 'baton:', on_outage fail%)$", tostring(s))
    -- an error reply is not an outage: a key of the wrong type
    assert(r:call("SET", "baton:lease:wrong", "x"))
    local _, kind = H.assert_failure(F .. ":lease_holders", "redis", s:lease_holders("wrong"))
    assert.equal("redis", kind)
    assert.equal(1, s:stats().errors)
    r:call("DEL", "baton:lease:wrong")
  end))
end)
