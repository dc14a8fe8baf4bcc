-- baton's side of the HTTP benchmark (bench/http_run.sh): n GETs with `conc` in flight
-- against a local keep-alive server, one task per in-flight slot. Not a test: it measures.
-- usage: baton bench/http_bench.lua <port> <n> <conc>
local baton = require "baton"
local port, n, conc = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3])
local url = ("http://127.0.0.1:%d/"):format(port)
local request = baton.http.request

local function worker(count)
  for _ = 1, count do
    local r = assert(request { url = url })
    assert(r.status == 200)
  end
end

worker(50)  -- warm-up: open a connection
local per = n // conc
local g = baton.group()
local t0 = baton.clock()
for _ = 1, conc do g:spawn(worker, per) end
for _, t in ipairs(g:join_all()) do assert(t.ok, t.error) end
local s = (baton.clock() - t0) / 1000
print(baton.json.encode { peer = "baton", workload = "http_get", n = per * conc, conc = conc,
                          seconds = s, ops_per_s = per * conc / s })
