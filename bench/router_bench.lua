-- router_bench.lua — what the router and the rate limiter cost in-process, in CPU time:
--   router    r:call through a router of one deployment whose call does nothing: the
--             router's own work a request (the attempt task, admission, classification,
--             the ledger row, usage), best of 3 runs of n calls; the target is <= 5 us;
--   router+   the same with rpm, tpm (an estimate, corrected from the usage) and
--             max_parallel on the deployment;
--   ratelimit try_acquire of one unit on a limiter that always has room, a second;
--   acquire   acquire of one unit (no waiting), a second.
-- One task, one core; CPU time from os.clock.
--
--   baton bench/router_bench.lua [n]        (default n = 100000)
local baton = require "baton"

local n = math.tointeger(tonumber(arg and arg[1] or "") or 100000) or 100000

local function best_of(runs, fn)
  local best = math.huge
  for _ = 1, runs do
    local c0 = os.clock()
    fn()
    local t = os.clock() - c0
    if t < best then best = t end
  end
  return best
end

baton.run(function()
  local plain = baton.router { deployments = { { name = "a", model = "m", call = function() return true end } } }
  local limited = baton.router { deployments = { {
    name = "a", model = "m", rpm = 1e12, tpm = 1e12, max_parallel = 64,
    call = function() return true, { input = 10, output = 5 } end } } }
  for _ = 1, 1000 do
    plain:call("m", nil)
    limited:call("m", nil, { estimate_tokens = 20 })
  end
  local t = best_of(3, function() for _ = 1, n do plain:call("m", nil) end end)
  print(("router     %7.2f us CPU a request (no-op call, %d requests)"):format(t / n * 1e6, n))
  t = best_of(3, function() for _ = 1, n do limited:call("m", nil, { estimate_tokens = 20 }) end end)
  print(("router+    %7.2f us CPU a request (rpm, tpm with adjust, max_parallel)"):format(t / n * 1e6))

  local rl = baton.ratelimit { rate = 1e12, per_ms = 1000, burst = 1e9 }
  local m = n * 20
  t = best_of(3, function() for _ = 1, m do rl:try_acquire(1) end end)
  print(("ratelimit  %7.2f M try_acquire a second"):format(m / t / 1e6))
  t = best_of(3, function() for _ = 1, m do rl:acquire(1) end end)
  print(("acquire    %7.2f M acquire a second (no wait)"):format(m / t / 1e6))
end)
