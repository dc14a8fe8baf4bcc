-- baton's side of bench/redis_queue_run.sh: n jobs added (queue:enqueue_all, 1000 at a
-- time) and processed by one worker (baton.runner{ queue = }) of `conc` concurrency with a
-- handler that only acknowledges (delivery:ack(): XACK and XDEL). Timed from the first add
-- to the n-th ack. Prints one JSON line. usage: baton redis_queue_bench.lua <url> <n> <conc>
local baton = require "baton"
local url, n, conc = arg[1], math.tointeger(tonumber(arg[2])), math.tointeger(tonumber(arg[3]))
local r = assert(baton.redis.connect { url = url })
local stream = ("bench%d"):format(math.floor(baton.clock() * 1000))
local q = baton.redis.queue { redis = r, stream = stream }
assert(q:ensure())
local done, fin = 0, baton.notify()
local w = baton.runner { queue = q, concurrency = conc, handler = function(_, d)
  assert(d:ack())
  done = done + 1
  if done == n then fin:notify_one() end
end }
local t0 = baton.clock()
w:start()
local jobs = {}
for i = 1, n, 1000 do
  for j = 1, math.min(1000, n - i + 1) do jobs[j] = { n = i + j - 1 } end
  for j = math.min(1000, n - i + 1) + 1, #jobs do jobs[j] = nil end
  assert(q:enqueue_all(jobs))
end
fin:notified()
local ms = baton.clock() - t0
print(baton.json.encode { peer = "baton", n = n, conc = conc, ms = math.floor(ms + 0.5),
                          jobs_per_s = math.floor(n / ms * 1000 + 0.5) })
w:stop()
r:call("DEL", stream, stream .. ":dead")
r:close()
