-- work_queue.lua — one process of a fleet sharing a work queue on a Redis stream
-- (baton.redis.queue, baton.runner{ queue = }): the producer enqueues the jobs, each worker
-- takes them as fast as its 4 slots free up, and counts each job with its ack, atomically
-- (delivery:ack{ commands }), so the fleet's count is each job exactly once. A worker that
-- died would have its jobs claimed by the others after claim_idle_ms. Each worker stops
-- once the fleet has done them all and prints its share.
--
--   examples/work_queue.sh                       (a producer, 3 workers, a private redis-server)
--   baton examples/work_queue.lua redis://127.0.0.1:6379 producer 300
--   baton examples/work_queue.lua redis://127.0.0.1:6379 worker-1
local baton = require "baton"

local url, name, count = arg[1] or "redis://127.0.0.1:6379", arg[2] or "worker", tonumber(arg[3] or 300)
local r <close> = assert(baton.redis.connect { url = url, reconnect = true })
local q = baton.redis.queue { redis = r, stream = "work_queue:jobs", consumer = name,
                              claim_idle_ms = 2000, max_deliveries = 3 }

if name == "producer" then
  local jobs = {}
  for i = 1, count do jobs[i] = { n = i, word = ("job-%03d"):format(i) } end
  assert(r:call("SET", "work_queue:total", count))
  assert(q:enqueue_all(jobs))
  print(("producer: %d jobs enqueued"):format(count))
  return
end

local mine = 0
local w = baton.runner { queue = q, concurrency = 4, handler = function(job, delivery)
  baton.sleep(10 + job.n % 5)                                  -- the work
  assert(delivery:ack { { "INCR", "work_queue:done" } })      -- counted with the ack
  mine = mine + 1
end }
w:start()
local total = tonumber(r:call("GET", "work_queue:total"))
while tonumber(r:call("GET", "work_queue:done") or 0) < total do baton.sleep(20) end
w:stop()
print(("%s: %d jobs"):format(name, mine))
