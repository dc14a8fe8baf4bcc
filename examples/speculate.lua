-- speculate.lua — speculative tool-call prefetch for an agent, over three turns. While the
-- model is still thinking, the planner's likely tool calls are prefetched under per-host
-- caps (2 per host) and a bound on prefetches in flight; each turn waits ONE deadline for
-- what lands, late results are drained on the next turn instead of being lost, and the
-- session ends with shutdown(), which aborts what is left and gives every host slot back.
-- The "tools" sleep for varied times (one is a real child process); one always fails.
--
--   baton examples/speculate.lua
local baton = require "baton"

-- tool → { host (nil: a local tool, uncapped), latency in ms }
local TOOLS = {
  get_issue     = { host = "api.github.com", ms = 40 },
  list_prs      = { host = "api.github.com", ms = 90 },
  get_ci_status = { host = "api.github.com", ms = 60 },
  search_docs   = { host = "docs.example.com", ms = 250 },   -- lands after turn 1's deadline
  embed_query   = { host = "api.openai.com", ms = 30 },
  read_file     = { ms = 5 },
  run_linter    = { ms = 10 },
  flaky_metrics = { host = "metrics.example.com", ms = 20 },  -- fails: host rejects it
  big_report    = { host = "reports.example.com", ms = 60000 },  -- still running at the end
}

local t0 = baton.now()
local function say(fmt, ...) print(("[%4d ms] " .. fmt):format(baton.now() - t0, ...)) end

local engine <close> = baton.engine {
  max_parallel = 6,       -- prefetches in flight, across turns
  per_host_cap = 2,       -- per rate-limit host
  timeout_ms = 150,       -- each turn waits at most this long, in total
  dispatcher = function(tool, args)
    if tool == "uname" then  -- real work: a child process (argv, never a shell)
      local r = baton.process.run { "uname", "-sr" }
      return (r.stdout:gsub("%s+$", ""))
    end
    baton.sleep(TOOLS[tool].ms)
    if tool == "flaky_metrics" then  -- a failure of the world: nil, message, kind, detail
      return nil, "flaky_metrics: 429 from host", "rate_limited", { status = 429 }
    end
    return ("%s(%s): ok"):format(tool, args and args.id or "")
  end,
}

local function plan(names)
  local list = {}
  for i, name in ipairs(names) do
    local spec = TOOLS[name] or {}
    list[i] = { tool = name, args = { id = i }, host = spec.host, cost_tokens = 100 * i,
                speculate = name ~= "write_file" }   -- side effects are never speculated
  end
  return list
end

local function report(label, outcomes)
  for _, o in ipairs(outcomes) do
    if o.status == "skipped" then
      say("%-6s %-14s skipped: %s", label, o.tool, o.reason)
    elseif o.status == "settled" then
      say("%-6s %-14s settled after %d ms: %s", label, o.tool, o.elapsed_ms, tostring(o.body))
    else
      say("%-6s %-14s failed after %d ms: %s (%s)", label, o.tool, o.elapsed_ms,
          o.error.message, o.error.kind)
    end
  end
end

-- Turn 1: nine predicted calls. api.github.com takes two, the third is skipped
-- (host_saturated); the write is not speculatable; six fill max_parallel and the last one
-- is skipped for it.
say("turn 1: dispatch")
report("skip", engine:dispatch(plan { "get_issue", "list_prs", "get_ci_status", "write_file",
                                      "search_docs", "embed_query", "read_file",
                                      "flaky_metrics", "run_linter" }))
report("turn 1", engine:wait_within())
say("turn 1: deadline passed, %d prefetch(es) still pending", engine:pending())

baton.sleep(200)  -- the model answers; late prefetches keep running meanwhile

-- Turn 2: what landed late is drained, not lost; new predictions reuse the freed slots.
report("late", engine:drain_pending())
say("turn 2: dispatch")
report("skip", engine:dispatch(plan { "get_ci_status", "big_report", "uname" }))
report("turn 2", engine:wait_within())
say("turn 2: %d pending; host slots in use: %s", engine:pending(),
    baton.json.encode(engine:budget_snapshot()))

-- End of session: abort what is still running; every host slot comes back.
engine:shutdown()
local s = engine:stats()
say("shutdown: %d pending; host slots in use: %s", engine:pending(),
    baton.json.encode(engine:budget_snapshot()))
say("stats: dispatched %d, settled %d (won the race: %d), failed %d, aborted %d, wasted %d",
    s.dispatched, s.settled, s.won_race, s.failed, s.aborted, s.wasted)
say("skipped: max_parallel %d, host_saturated %d, not_speculatable %d",
    s.skipped.max_parallel, s.skipped.host_saturated, s.skipped.not_speculatable)
