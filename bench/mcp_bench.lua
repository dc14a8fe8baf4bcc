-- baton.mcp against the reference server-everything (spec/fixtures/mcp): the time of n
-- sequential `echo` calls and of n calls with 16 in flight (16 callers, n/16 calls each),
-- after a warm-up of 100 calls. Not a test: it measures. Prints one JSON line per workload,
-- like bench/mcp_node_client.js, its peer (a bare Node client: no SDK, the same workloads).
--   build/baton bench/mcp_bench.lua [n]          (bench/mcp_run.sh runs both, interleaved)
local baton = require "baton"
local mcp = require "baton.mcp"

local n = math.tointeger(tonumber(arg and arg[1] or "1000"))
local server = "spec/fixtures/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
local c = assert(mcp.connect { command = { "node", server, "stdio" } })

local args = { message = "hello" }
local function echo() assert(c:call("echo", args)) end

local function sequential(count)
  for _ = 1, count do echo() end
end

local function parallel(count, width)
  local g = baton.group()
  for w = 1, width do
    local mine = count // width + (w <= count % width and 1 or 0)
    g:spawn(function() for _ = 1, mine do echo() end end)
  end
  for _, t in ipairs(g:join_all()) do assert(t.ok, t.error) end
end

-- ms: wall time; cpu_ms: this client's CPU time (user + system), the server's excluded.
local function report(workload, ms, cpu_ms)
  print(baton.json.encode { impl = "baton", workload = workload, n = n, ms = ms,
                            cpu_ms = cpu_ms })
end

sequential(100)  -- warm-up: the server's JIT, the client's caches
local t0, c0 = baton.clock(), os.clock()
sequential(n)
report("echo_sequential", baton.clock() - t0, (os.clock() - c0) * 1000)
t0, c0 = baton.clock(), os.clock()
parallel(n, 16)
report("echo_16_in_flight", baton.clock() - t0, (os.clock() - c0) * 1000)
c:close()
