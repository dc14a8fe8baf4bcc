-- runner.lua — baton.runner draining a queue of jobs, one session at a time, with a progress
-- line: each job is a real command; the handler submits the next job of the session it is
-- asked about (or of any session), the job's task completes the session, which drives the
-- runner again. A job whose command fails is counted as failed.
--
--   baton examples/runner.lua [jobs]
local baton = require "baton"

local N = tonumber(arg and arg[1]) or 12
local queue = {}
for i = 1, N do
  queue[#queue + 1] = { id = i, session = "s" .. (i % 3 + 1), fails = i % 5 == 0 }
end

local progress = baton.progress { total = N, label = "jobs" }
local finished = baton.notify()

local function take(session)
  for i, job in ipairs(queue) do
    if session == nil or job.session == session then return table.remove(queue, i) end
  end
  if session ~= nil then return take(nil) end
end

local r
r = baton.runner {
  poll_ms = 50,
  handler = function(request)
    local job = take(request.session_id)
    if not job then return "idle" end
    baton.spawn { name = "job-" .. job.id, function()
      local res = assert(baton.process.run { "sh", "-c", job.fails and "exit 3" or "exit 0" })
      if res.code == 0 then progress:advance() else progress:fail() end
      if select(1, progress:counts()) + select(2, progress:counts()) == N then finished:notify_one() end
      r:complete_session(job.session, "job_done")
    end }
    return { submitted = job.session }
  end,
}
r:start()
finished:notified()
r:stop()
local done, failed = progress:done()
print(("runner: %d jobs, %d done, %d failed, %d in flight, %d queued")
  :format(N, done, failed, #r:inflight(), #queue))
