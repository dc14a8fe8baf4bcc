-- A fleet of four `baton` processes against one private redis-server, sharing the Redis
-- store (baton.redis.store) as a fleet of gateway workers would (issue 14's soak):
--   1. a lease semaphore of capacity 10, 200 tasks a process each holding it 5-20 ms: the
--      holders, counted inside the leases on the server, never exceed 10; one process is
--      kill -9'ed while it holds leases, and the fleet has its capacity back within the
--      lease TTL (its leases expire; nobody releases them);
--   2. meanwhile a shared rate limit of 20/s (burst 5) taken by all four for 4 s: what they
--      admitted, stamped on the server's clock, stays within burst + 20/s in every window;
--   3. (four fresh processes) a shared breaker opened by one process fast-fails the others,
--      and in half-open exactly one call of the fleet probes;
--   4. a dedup key asked for by 5 tasks in each process is computed once;
--   5. redis-server killed and started again mid-run: calls fail with closed/connect/io
--      (on_outage "fail") or pass (on_outage "open"), and recover on their own; the
--      recovery time is measured and printed.
-- Skipped loudly without redis-server. Takes about 11 s.
local baton = require "baton"
local H = require "spec.helper"

local server, why = H.redis_server()
if not server then H.loud("redis_soak_spec", why) end
local it = H.gated(why)

local WORKER = [==[
local baton = require "baton"
local url, prefix, id, mode = arg[1], arg[2], arg[3], arg[4]
local r = assert(baton.redis.connect { url = url, reconnect = true })
local s = baton.redis.store { redis = r, prefix = prefix,
                              on_outage = (mode == "later" and (id == "p3" or id == "p4")) and "open" or "fail" }
local function say(fmt, ...) io.stdout:write(fmt:format(...), "\n"); io.stdout:flush() end

-- Every process INCRs the barrier's key, then waits until all four have.
local function barrier(name)
  local key = prefix .. "bar:" .. name
  assert(r:call("INCR", key))
  while tonumber(assert(r:call("GET", key))) < 4 do baton.sleep(3) end
end

-- Entering the leased section: the holder joins the set `inside`; the holders counted are
-- those of the set whose lease is live on the server (a dead process's holders stay in the
-- set: they count while their leases live, as they hold the capacity); the peak is kept.
-- A holder of a live process found without a live lease is an error (counted in `stale`).
local ENTER = [[
redis.call('SADD', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local sc = redis.call('ZSCORE', KEYS[2], m)
  if sc and tonumber(sc) > now then n = n + 1
  elseif string.sub(m, 1, 3) ~= ARGV[2] then redis.call('INCR', KEYS[4]) end
end
if n > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], n) end
return n
]]

if mode == "fleet" then
  say("ready %s", id)
  barrier("start")
  local done, admitted = 0, 0
  local g <close> = baton.group()
  local leases <close> = baton.group { limit = 10 }
  for i = 1, 200 do
    leases:spawn(function()
      local holder = id .. ":" .. i
      while true do
        local ok, msg, kind = s:lease_acquire("cap", holder, 10, 1500)
        if ok then break end
        assert(kind == "busy", msg)
        baton.sleep(1 + math.random(0, 4))
      end
      assert(r:eval(ENTER, { prefix .. "inside", prefix .. "lease:cap", prefix .. "peak", prefix .. "stale" },
                    { holder, "p4:" }))
      baton.sleep(5 + math.random(0, 15))
      assert(r:call("SREM", prefix .. "inside", holder))
      assert(s:lease_release("cap", holder))
      done = done + 1
    end)
  end
  g:spawn(function()
    local rl = baton.ratelimit { rate = 20, per_ms = 1000, burst = 5, store = s, key = "rps" }
    local t0 = baton.clock()
    while baton.clock() - t0 < 4000 do
      local before = assert(s:now())  -- the admit happened between the two readings
      if rl:try_acquire(1) then
        admitted = admitted + 1
        assert(r:call("RPUSH", prefix .. "admits", ("%.3f %.3f"):format(before, assert(s:now()))))
      end
      baton.sleep(2 + math.random(0, 4))
    end
  end)
  leases:join_all()
  g:join_all()
  say("result %s leases=%d admitted=%d", id, done, admitted)
  return
end

-- mode "later": the breaker, dedup, and the outage
barrier("start")
local b = baton.breaker { service = "soak", threshold = 1, recovery_ms = 1000,
                          backend = baton.store.breaker_backend(s, nil, { probe_ttl_ms = 5000 }) }
if id == "p1" then
  local _, _, kind = b:call(function() return nil, "down", "io" end)
  assert(kind == "io", kind)
end
barrier("opened")
local ran_open = 0
local _, _, kind, detail = b:call(function() ran_open = ran_open + 1 end)
local fast_failed = kind == "circuit_open" and detail.state == "open"
baton.sleep(1100)                                  -- the window (1 s) has passed for all
barrier("half")
local probed, busy = 0, 0
local g <close> = baton.group()
for _ = 1, 5 do
  g:spawn(function()
    local v, _, k, d = b:call(function()
      assert(r:call("INCR", prefix .. "probes"))
      baton.sleep(1000)                            -- long enough for all 20 calls to come
      return "ok"
    end)
    if v == "ok" then probed = probed + 1
    elseif k == "circuit_open" and d.state == "half_open" then busy = busy + 1 end
  end)
end
g:join_all()
barrier("probed")
local closed_ok = b:call(function() return "after" end) == "after"

barrier("dedup")
local d = baton.dedup { ttl_ms = 10000, store = s }
local answers = 0
for _ = 1, 5 do
  g:spawn(function()
    local v = d:run("answer", function()
      assert(r:call("INCR", prefix .. "computed"))
      baton.sleep(200)
      return 42
    end)
    if v == 42 then answers = answers + 1 end
  end)
end
g:join_all()
say("phases %s fast_failed=%s ran_open=%d probed=%d busy=%d closed_ok=%s answers=%d", id,
    tostring(fast_failed), ran_open, probed, busy, tostring(closed_ok), answers)

-- The outage: a take every 10 ms for 4 s; the spec kills the server and starts it again.
barrier("outage")
say("outage-ready %s", id)
local kinds, first_bad, recovered, failed, passed = {}, nil, nil, 0, 0
local t0 = baton.clock()
while baton.clock() - t0 < 4000 do
  local open_before = s:stats().outage_open
  local v, _, k = s:gcra_take("o", 1000, 1000, 1000, 1)
  local outage = v == nil or s:stats().outage_open > open_before
  if outage then
    first_bad = first_bad or baton.clock()
    if v == nil then failed = failed + 1; kinds[k] = true else passed = passed + 1 end
  elseif first_bad and not recovered then
    recovered = baton.clock()
  end
  baton.sleep(10)
end
local ks = {}
for k in pairs(kinds) do ks[#ks + 1] = k end
table.sort(ks)
say("outage %s mode=%s failed=%d passed=%d kinds=%s first_bad=%.1f recovered=%.1f", id, s.on_outage, failed,
    passed, table.concat(ks, ","), first_bad or -1, recovered or -1)
]==]

-- Starts the worker as four processes; returns them, and a table of their output lines
-- and exit codes (procs.exits[id]), filled by a reader task each.
local function launch(script, prefix, mode, lines)
  local procs = { exits = {} }
  for i = 1, 4 do
    local id = "p" .. i
    local p = assert(baton.process.spawn { H.EXE, script, server.url, prefix, id, mode })
    procs[id] = p
    baton.spawn(function()
      while true do
        local line = p:read_line()
        if not line then break end
        lines[#lines + 1] = line
      end
      procs.exits[id] = p:wait()
    end)
  end
  return procs
end

-- Waits for the process to exit; its exit code.
local function exit_of(procs, id)
  while procs.exits[id] == nil do baton.sleep(5) end
  return procs.exits[id]
end

local function count(lines, pattern)
  local n = 0
  for _, l in ipairs(lines) do if l:match(pattern) then n = n + 1 end end
  return n
end

local function until_ok(what, ms, fn)
  local t0 = baton.clock()
  while baton.clock() - t0 < ms do
    if fn() then return end
    baton.sleep(5)
  end
  error(what .. " did not happen within " .. ms .. " ms")
end

local function server_ms(r)
  local t = assert(r:call("TIME"))
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function stderr_of(procs)
  local out = {}
  for i = 1, 4 do out[#out + 1] = "p" .. i .. ": " .. (procs["p" .. i]:stderr() or "") end
  return table.concat(out, "\n")
end

describe("a fleet of four baton processes on one Redis", function()
  lazy_teardown(function() if server then server:stop() end end)

  it("holds leases, a rate limit, a breaker and a dedup key together, survives a kill -9 and a restart",
     H.async(function()
    local script = H.write_temp(WORKER)
    local r = assert(baton.redis.connect { url = server.url, reconnect = true })
    local s = baton.redis.store { redis = r, prefix = "soak1:" }

    -- 1 + 2: leases and the rate limit; p4 is killed once it holds 3 leases or more
    local lines = {}
    local procs = launch(script, "soak1:", "fleet", lines)
    until_ok("four processes starting", 20000, function() return count(lines, "^ready") == 4 end)
    local killed_at, expiries
    until_ok("p4 holding 3 leases", 20000, function()
      local m = assert(r:call("ZRANGE", "soak1:lease:cap", 0, -1))
      local n = 0
      for _, h in ipairs(m) do if h:match("^p4:") then n = n + 1 end end
      if n < 3 then return false end
      procs.p4:kill(9)
      killed_at = server_ms(r)
      return true
    end)
    exit_of(procs, "p4")
    -- what p4 holds now nobody renews nor releases: each expires by its score
    local m = assert(r:call("ZRANGE", "soak1:lease:cap", 0, -1, "WITHSCORES"))
    expiries = {}
    for i = 1, #m, 2 do
      if m[i]:match("^p4:") then expiries[#expiries + 1] = tonumber(m[i + 1]) end
    end
    assert.is_true(#expiries >= 1, "p4 held no lease when it was killed")
    local regained = math.max(table.unpack(expiries)) - killed_at
    for i = 1, 3 do assert.equal(0, exit_of(procs, "p" .. i), stderr_of(procs)) end
    assert.equal(3, count(lines, "^result p[123] leases=200 "), table.concat(lines, "\n") .. stderr_of(procs))
    -- the fleet's capacity is back within the TTL: p4's leases were gone 1500 ms after the
    -- kill at the latest, and all 10 slots can be taken
    assert.is_true(regained <= 1500 + 50, ("p4's leases lived %.0f ms after the kill"):format(regained))
    until_ok("p4's leases expiring", 3000, function() return s:lease_holders("cap") == 0 end)
    for i = 1, 10 do assert(s:lease_acquire("cap", "check" .. i, 10, 1000)) end
    H.assert_failure("baton.redis.store:lease_acquire", "busy", s:lease_acquire("cap", "check11", 10, 1000))
    local peak = tonumber(assert(r:call("GET", "soak1:peak")))
    assert.is_true(peak >= 5 and peak <= 10, "peak holders " .. peak)
    assert.is_nil(r:call("GET", "soak1:stale"))
    -- the rate limit: each admit happened within [b, e] on the server's clock (read before
    -- and after it); in any window [x, y], the admits known to lie inside it (b >= x, e <= y)
    -- are at most 5 + 20 * (y - x) / 1000 (+1 for the unit at the window's edge)
    local admits = assert(r:call("LRANGE", "soak1:admits", 0, -1))
    for i, a in ipairs(admits) do
      local b, e = a:match("^(%S+) (%S+)$")
      admits[i] = { tonumber(b), tonumber(e) }
    end
    table.sort(admits, function(p, q) return p[1] < q[1] end)
    local worst = -math.huge
    for i = 1, #admits do
      local x = admits[i][1]
      local ends = {}
      for j = i, #admits do ends[#ends + 1] = admits[j][2] end
      table.sort(ends)
      for n, y in ipairs(ends) do   -- the n admits from i on that ended by y
        local over = n - (5 + 20 * (y - x) / 1000)
        if over > worst then worst = over end
      end
    end
    local span = admits[#admits][2] - admits[1][1]
    assert.is_true(#admits >= 5 + 20 * 3 and #admits <= 5 + 20 * span / 1000 + 1,
                   ("%d admits over %.0f ms"):format(#admits, span))
    assert.is_true(worst <= 1, ("a window admitted %.2f over burst + rate"):format(worst))

    -- 3 + 4 + 5: four fresh processes, the breaker, dedup, then the outage
    lines = {}
    procs = launch(script, "soak2:", "later", lines)
    until_ok("the breaker and dedup phases", 30000, function() return count(lines, "^outage%-ready") == 4 end)
    local phases = {}
    for _, l in ipairs(lines) do
      local id = l:match("^phases (p%d)")
      if id then phases[id] = l end
    end
    local probed, busy = 0, 0
    for i = 1, 4 do
      local l = assert(phases["p" .. i], table.concat(lines, "\n"))
      if i > 1 then assert.matches("fast_failed=true ran_open=0", l) end   -- p1's failure opened theirs
      assert.matches("closed_ok=true answers=5", l)
      probed = probed + tonumber(l:match("probed=(%d+)"))
      busy = busy + tonumber(l:match("busy=(%d+)"))
    end
    assert.equal(1, probed)                                       -- one probe in the fleet
    assert.equal(19, busy)                                        -- the others: half-open, busy
    assert.equal("1", r:call("GET", "soak2:probes"))
    assert.equal("1", r:call("GET", "soak2:computed"))            -- dedup: computed once

    baton.sleep(300)
    local down_at = baton.clock()
    server:kill()
    baton.sleep(700)
    local up_at = baton.clock()  -- recovery counts from here: redis-server's start included
    server:start()
    for i = 1, 4 do assert.equal(0, exit_of(procs, "p" .. i), stderr_of(procs)) end
    local recoveries = {}
    for _, l in ipairs(lines) do
      local id, mode, failed, passed, kinds, rec = l:match(
        "^outage (p%d) mode=(%a+) failed=(%d+) passed=(%d+) kinds=(%S*) first_bad=[%d.-]+ recovered=([%d.-]+)")
      if id then
        failed, passed, rec = tonumber(failed), tonumber(passed), tonumber(rec)
        if mode == "fail" then
          assert.is_true(failed > 0 and passed == 0, l)
          for k in kinds:gmatch("[^,]+") do
            assert.is_true(k == "closed" or k == "connect" or k == "io", l)
          end
        else
          assert.is_true(passed > 0 and failed == 0, l)
        end
        assert.is_true(rec > up_at, l)                            -- recovered, after the restart
        recoveries[#recoveries + 1] = ("%s %s %.0f ms"):format(id, mode, rec - up_at)
        assert.is_true(rec - up_at < 3000, "recovered " .. (rec - up_at) .. " ms after the restart")
      end
    end
    assert.equal(4, #recoveries, table.concat(lines, "\n"))
    table.sort(recoveries)
    io.stderr:write(("\n[redis_soak] p4 killed holding %d leases, capacity back %.0f ms later (TTL 1500); "
                     .. "peak holders %d/10; %d admits in %.0f ms (20/s, burst 5); outage %.0f ms, "
                     .. "recovered after the restart: %s\n")
                    :format(#expiries, regained, peak, #admits, span, up_at - down_at,
                            table.concat(recoveries, ", ")))
    r:close()
    os.remove(script)
  end))
end)
