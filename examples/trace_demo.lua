-- trace_demo.lua — a small fan-out written as a timeline: 8 fetchers, at most 3 at once (a
-- named semaphore), each waits its turn, sleeps, then runs a child process; the run is
-- written as Chrome trace-event JSON and read back to count what is in it.
--
--   baton examples/trace_demo.lua [out.json]
--   BATON_TRACE=out.json baton examples/trace_demo.lua
--
-- Open the file at https://ui.perfetto.dev ("Open trace file") or in chrome://tracing:
-- docs/observability.md says what it looks like. BATON_TRACE=out.json baton script.lua
-- traces any script the same way, without touching it; when a trace is already being
-- written (BATON_TRACE, or baton.trace.start before this file ran), the demo writes into
-- it, says so, and leaves it to whoever started it (baton closes it when it exits), so
-- there is nothing to read back yet.
local baton = require "baton"

local path = arg and arg[1] or ((os.getenv("TMPDIR") or "/tmp") .. "/baton_trace_demo.json")
local mine = not baton.trace.active()
if mine then
  assert(baton.trace.start(path))
else
  -- (baton consumed BATON_TRACE when it started: the path is not in the environment now)
  print("a trace is already being written (BATON_TRACE or baton.trace.start): the demo writes into it")
end

local slots = baton.semaphore(3, { name = "slots" })
local g = baton.group { name = "fetchers" }
for i = 1, 8 do
  g:spawn { name = "fetch-" .. i, function()
    local _ <close> = slots:acquire()
    baton.sleep(10 + (i * 7) % 30)
    local r = assert(baton.process.run { "sh", "-c", "echo " .. i })
    return tonumber(r.stdout)
  end }
end
local sum = 0
for _, t in ipairs(g:join_all()) do sum = sum + select(2, t:join()) end
g:close()
if not mine then
  print(("fan-out of 8: sum %d; the trace is complete when baton exits"):format(sum))
  print("open it: https://ui.perfetto.dev (Open trace file) or chrome://tracing")
  return
end
local n = assert(baton.trace.stop())

local f = assert(io.open(path))
local events = baton.json.decode(f:read("a"))
f:close()
local count = {}
for _, e in ipairs(events) do
  local k = e.ph .. ":" .. (e.cat or e.name) .. (e.tid >= 1e9 and ":own" or "")
  count[k] = (count[k] or 0) + 1
end
print(("fan-out of 8: sum %d; %d events written to %s"):format(sum, n, path))
print(("task spans %d, wait spans: semaphore %d, sleep %d, process %d; process tracks %d")
  :format(count["X:task"] or 0, count["X:semaphore"] or 0, count["X:sleep"] or 0,
          count["X:process"] or 0, count["X:process:own"] or 0))
print("open it: https://ui.perfetto.dev (Open trace file) or chrome://tracing")
