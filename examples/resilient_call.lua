-- resilient_call.lua — a flaky tool (a real local command that fails on some runs) wrapped
-- in dedup -> breaker -> retry, inside a two-stage pipeline; every decision is printed:
-- retries and their waits, identical concurrent requests sharing one execution, cached
-- answers, the breaker opening on an outage, fast-failing, then probing and closing. Every
-- failure is baton's one shape, `nil, message, kind, detail`, through every layer: the
-- pipeline names the stage, retry the attempts, the breaker says when to come back.
--
--   baton examples/resilient_call.lua
local baton = require "baton"

local runs = 0
-- The tool: `sh` as a program (argv, no shell parsing of ours). Every third run is "busy"
-- (exit 75); the query "outage" always fails.
local function flaky_tool(query)
  runs = runs + 1
  local r, err, kind = baton.process.run {
    "sh", "-c", [[
      if [ "$2" = outage ] || [ $(( $1 % 3 )) -eq 1 ]; then echo "upstream busy" >&2; exit 75; fi
      echo "answer($2)"]], "sh", tostring(runs), query }
  if not r then return nil, err, kind end
  if r.code ~= 0 then
    print(("    run #%d %-8s -> exit %d: %s"):format(runs, query, r.code, r.stderr:gsub("\n", "")))
    return nil, "flaky_tool: exit " .. r.code, "io", { code = r.code }
  end
  print(("    run #%d %-8s -> ok"):format(runs, query))
  return (r.stdout:gsub("\n", ""))
end

local retry = baton.retry {
  max_attempts = 3, base_ms = 20,
  on_retry = function(attempt, delay, msg, kind)
    print(("    retry: attempt %d failed (%s: %s), next in %d ms"):format(attempt, kind, msg, delay))
  end,
}
local breaker = baton.breaker { service = "flaky-tool", threshold = 2, recovery_ms = 300 }
local dedup = baton.dedup { ttl_ms = 5000 }

local function lookup(query)
  return dedup:run(query, function()
    return breaker:call(function() return retry:call(flaky_tool, query) end)
  end)
end

local pipeline = baton.pipeline()
  :stage("lookup", lookup)
  :stage("format", function(answer) return ("<%s>"):format(answer) end)

local function ask(query)
  local out, msg, kind, detail = pipeline:run(query)
  if out then
    print(("  %-8s => %s   [breaker %s]"):format(query, out, breaker:state()))
  else
    local why = detail.detail or {}  -- the failed stage's own facts
    print(("  %-8s => %s in stage %s%s   [breaker %s]"):format(query, kind, detail.stage,
      why.attempts and (" after %d attempts"):format(why.attempts)
        or why.retry_after_ms and (", retry after %d ms"):format(why.retry_after_ms) or "",
      breaker:state()))
    print(("             %s"):format(msg))
  end
end

print("1. three identical requests at once share one execution (single-flight):")
local g = baton.group()
for _ = 1, 3 do g:spawn(ask, "weather") end
g:join_all()

print("2. asked again: served from the dedup cache, the tool does not run:")
ask("weather")

print("3. an outage: retries exhaust, the breaker counts failures and opens:")
ask("outage")
ask("outage")
ask("news")    -- fast-fails while open: the tool is not even run

print("4. after the recovery window a probe closes the breaker again:")
baton.sleep(350)
ask("news")
print(("\nthe tool ran %d times for 8 requests; breaker %s"):format(runs, breaker:state()))
