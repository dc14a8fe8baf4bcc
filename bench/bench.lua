-- baton's side of the benchmark workloads (bench/README.md), same definitions as the
-- peers' (copied in by bench/run.sh from PEERS_DIR). Not a test: it measures. Prints one JSON line like the peers.
-- usage: baton bench/bench.lua <workload> <n>, or the same with lua5.4 and baton.so on LUA_CPATH
local baton = require "baton"

local function noop() end

-- W1: n no-op tasks spawned into one group, then all joined.
local function spawn_join(n)
  local g = baton.group()
  for _ = 1, n do g:spawn(noop) end
  return #g:join_all()
end

-- W2b: n jobs, at most 8 at once (a semaphore of 8 via bounded spawn: a job gets its
-- coroutine only once it holds a permit), each yields once, then releases.
local function sem_contention_bounded(n)
  local sem = baton.semaphore(8)
  local g = baton.group { limit = sem }
  local yield = baton.yield
  for _ = 1, n do g:spawn(yield) end
  local done = #g:join_all()
  assert(sem:available() == 8)
  return done
end

-- W2, written the way the peers write it: every task spawned at once acquires one of 8
-- permits inside its body, yields once, then releases.
local function sem_contention(n)
  local sem = baton.semaphore(8)
  local g = baton.group()
  local yield = baton.yield
  local function worker()
    local _ <close> = sem:acquire()  -- held until the worker ends
    yield()
  end
  for _ = 1, n do g:spawn(worker) end
  local done = #g:join_all()
  assert(sem:available() == 8)
  return done
end

-- W3: n tasks each sleeping x mod 101 ms, x from the LCG seeded with 42; all joined.
local function timers(n)
  local x, total = 42, 0
  local sleep = baton.sleep
  local g = baton.group()
  for _ = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    local d = x % 101
    total = total + d
    g:spawn(sleep, d)
  end
  g:join_all()
  return total
end

-- W4: rounds; each spawns 8 tasks (a yield, or a real 0 ms timer) collected under one
-- 50 ms deadline.
local function deadline_fanout(rounds, sleep0)
  local child = baton.yield
  if sleep0 then child = function() baton.sleep(0) end end
  local timeouts = 0
  for _ = 1, rounds do
    local g = baton.group()
    for _ = 1, 8 do g:spawn(child) end
    if #g:wait_within(50) < 8 then
      timeouts = timeouts + 1
      g:shutdown()
    end
  end
  return timeouts
end

-- W5: one producer task and one consumer task pass n integers through a channel of
-- capacity 64; the check is how many the consumer received.
local function channel(n)
  local ch = baton.channel(64)
  local producer = baton.spawn(function()
    local send = ch.send
    for i = 1, n do send(ch, i) end
    ch:close()
  end)
  local consumer = baton.spawn(function()
    local got = 0
    for _ in ch:iter() do got = got + 1 end
    return got
  end)
  producer:join()
  return select(2, consumer:join())
end

-- W5b: the same through the batch forms: the producer fills a list of up to 64 values and
-- hands it over with send_many, the consumer takes lists of up to 64 with recv_many (Tokio's
-- peer passes them one by one: its 1.24 in Debian has no recv_many). Written as W5 is: the
-- methods in locals, and the list filled from a base (i + k - 1 was 30 instructions a value
-- of the producer's own).
local function channel_batch(n)
  local ch = baton.channel(64)
  local producer = baton.spawn(function()
    local send_many = ch.send_many
    local buf, i = {}, 1
    while i <= n do
      local m = n - i + 1 < 64 and n - i + 1 or 64
      local base = i - 1
      for k = 1, m do buf[k] = base + k end
      local k = 1
      while k <= m do k = k + send_many(ch, buf, k, m) end
      i = i + m
    end
    ch:close()
  end)
  local consumer = baton.spawn(function()
    local recv_many = ch.recv_many
    local got = 0
    while true do
      local k = recv_many(ch, nil, 64)  -- k, a list of k values
      if not k then return got end
      got = got + k
    end
  end)
  producer:join()
  return select(2, consumer:join())
end

local WORKLOADS = {
  spawn_join = spawn_join,
  sem_contention = sem_contention,
  sem_contention_bounded = sem_contention_bounded,
  timers = timers,
  deadline_fanout = function(n) return deadline_fanout(n, false) end,
  deadline_fanout_sleep0 = function(n) return deadline_fanout(n, true) end,
  channel = channel,
  channel_batch = channel_batch,
}

local workload, n = arg[1], math.tointeger(tonumber(arg[2] or ""))
local fn = WORKLOADS[workload]
if not fn or not n then
  io.stderr:write("usage: baton bench/bench.lua <workload> <n>\nworkloads:")
  for k in pairs(WORKLOADS) do io.stderr:write(" ", k) end
  io.stderr:write("\n")
  os.exit(2)
end
-- The executable runs this chunk as a task already; a stock lua5.4 with baton.so needs
-- baton.run. The clock starts inside, so both time the same work.
local function main()
  local t0 = baton.clock()
  local check = fn(n)
  return (baton.clock() - t0) / 1000, check
end
local secs, check
if baton.current() then secs, check = main() else secs, check = baton.run(main) end
print(string.format(
  '{"peer":"%s","workload":"%s","n":%d,"seconds":%.6f,"ops_per_s":%.1f,"check":%d}',
  baton.current() and "baton" or "baton-module", workload, n, secs, n / secs, check))
