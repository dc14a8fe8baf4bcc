-- pipeline_channels.lua — a producer feeds jobs into a channel, N workers take them, a
-- collector gathers the results under ONE deadline; then a clean shutdown: the producer
-- stops, the workers are aborted (the job each was on is abandoned, the queued ones never
-- start), and every job is accounted for — none lost in a channel, none done twice.
--
--   baton examples/pipeline_channels.lua [workers] [deadline_ms]
local baton = require "baton"

local NJOBS = 40
local NWORKERS = tonumber(arg and arg[1]) or 4
local DEADLINE_MS = tonumber(arg and arg[2]) or 250

-- A job's cost in ms: uneven, like real work (10..69 ms, 40 ms on average).
local function cost(i) return 10 + (i * 37) % 60 end

baton.run(function()
  print(("pipeline: %d jobs -> %d workers -> collector, deadline %d ms")
        :format(NJOBS, NWORKERS, DEADLINE_MS))
  local start = baton.now()
  local deadline = start + DEADLINE_MS
  local jobs <close> = baton.channel(8)      -- producer -> workers
  local results <close> = baton.channel(8)   -- workers -> collector
  local produced, abandoned = 0, 0

  local producer = baton.spawn(function()
    for i = 1, NJOBS do
      if not jobs:send({ id = i, ms = cost(i) }) then return end  -- closed: shutting down
      produced = produced + 1
    end
    jobs:close()                             -- no more: the workers drain what is queued
  end)

  local workers = baton.group()
  for w = 1, NWORKERS do
    workers:spawn(function()
      local current
      local _ <close> = setmetatable({}, { __close = function()
        if current then abandoned = abandoned + 1 end   -- aborted in the middle of a job
      end })
      for job in jobs:iter() do
        current = job
        baton.sleep(job.ms)                  -- the work
        results:send({ id = job.id, worker = w, value = job.id * job.id, ms = job.ms })
        current = nil
      end
    end)
  end
  -- when the workers have drained a closed job channel, nothing more will come
  local closer = baton.spawn(function()
    workers:join_all()
    results:close()
  end)

  local collected, sum = 0, 0
  while true do
    local r, _, kind = results:recv(math.max(0, deadline - baton.now()))
    if r == nil then
      print(kind == "timeout" and ("deadline reached after %d ms: %d results collected")
                                  :format(baton.now() - start, collected)
            or ("all done after %d ms: %d results collected"):format(baton.now() - start, collected))
      break
    end
    collected = collected + 1
    sum = sum + r.value
    print(("  job %2d by worker %d: %4d (%d ms)"):format(r.id, r.worker, r.value, r.ms))
  end

  -- Shutdown. Closing the job channel stops the producer (its send fails) and keeps the
  -- queued jobs queued: the workers are aborted before they can take one, and a worker
  -- woken for a job but aborted before it ran gives the job back.
  jobs:close()
  producer:join()
  closer:abort()
  workers:abort_all()
  workers:join_all()                         -- their <close> handlers have run
  workers:close()
  local never_started = #jobs
  results:close()
  local late = 0                             -- finished before the abort, after the deadline
  for _ in results:iter() do late = late + 1 end
  print(("shutdown: %d in flight abandoned, %d queued never started, %d never produced, %d late")
        :format(abandoned, never_started, NJOBS - produced, late))
  local total = collected + late + abandoned + never_started + (NJOBS - produced)
  print(("accounted for: %d of %d jobs (sum of collected squares %d)"):format(total, NJOBS, sum))
  closer:join()
  local s = baton.stats()
  print(("clean: %d tasks left, jobs %s, results %s"):format(s.tasks - 1,
        jobs:closed() and "closed" or "open", results:closed() and "closed" or "open"))
end)
