-- baton's side of bench/redis_limits_run.sh: the Redis store's operations on a private
-- redis-server, as the peers (bench/peers_redis/limits.js) do theirs on the same one.
--   baton bench/redis_limits.lua <url> <workload> <n> <conc>
--   workload lease: n acquire + release pairs of a lease of capacity conc (store:lease_acquire,
--     store:lease_release), by conc tasks on one client;
--   workload rate: n takes of a GCRA rate limit that never runs dry (store:gcra_take).
-- One warm-up round first (the scripts loaded). Prints one JSON line: { peer = "baton",
-- workload, conc, n, ops_per_s }.
local baton = require "baton"
local url, workload, n, conc = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])

local r = assert(baton.redis.connect { url = url })
local s = baton.redis.store { redis = r, prefix = ("bench%d:"):format(math.random(1 << 30)) }

local ops = {
  lease = function(i)
    local holder = "h" .. i
    assert(s:lease_acquire("sem", holder, conc, 30000))
    assert(s:lease_release("sem", holder))
  end,
  rate = function()
    assert(s:gcra_take("rps", 1e9, 1000, 1e9, 1))
  end,
}
local op = assert(ops[workload], "unknown workload")

local function loops()
  local left = n
  local t0 = baton.clock()
  local g <close> = baton.group()
  for w = 1, conc do
    g:spawn(function()
      while left > 0 do
        left = left - 1
        op(w)
      end
    end)
  end
  g:join_all()
  return (baton.clock() - t0) / 1000
end

loops()
local secs = loops()
print(('{"peer":"baton","workload":"%s","conc":%d,"n":%d,"ops_per_s":%.1f}'):format(workload, conc, n, n / secs))
r:close()
