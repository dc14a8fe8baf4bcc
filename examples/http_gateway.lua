-- http_gateway.lua — a model-gateway-shaped policy over real HTTP. A local web server
-- (python3 -m http.server on this checkout) stands in for two providers: the primary is an
-- address where nothing listens, so it fails fast with kind "connect"; each request falls
-- back to the second provider, under retry and a per-provider circuit breaker (which opens
-- and then fast-fails the primary). Six requests run through baton.engine with ONE 500 ms
-- deadline; a 404 is a response, not a failure. Then README.md is streamed line by line.
-- Everything is printed; the server is stopped and nothing is left running.
--
--   baton examples/http_gateway.lua        (from the repository's root)
local baton = require "baton"
local http = baton.http

local t0 = baton.clock()
local function say(fmt, ...) print(("[%4d ms] " .. fmt):format(math.floor(baton.clock() - t0), ...)) end

-- The stand-in provider: python's http.server on a free port, serving this checkout.
local srv <close> = assert(baton.process.spawn {
  "python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", "." })
local banner = assert(srv:read_line(5000), "http.server did not start")
local port = assert(banner:match("port (%d+)"), banner)
say("provider up on port %s", port)

local providers = {
  { name = "primary", base = "http://127.0.0.1:1" },             -- nothing listens here
  { name = "fallback", base = "http://127.0.0.1:" .. port },
}
local breakers = {}
for _, p in ipairs(providers) do
  breakers[p.name] = baton.breaker { service = p.name, threshold = 2, recovery_ms = 5000 }
end
local retry = baton.retry { max_attempts = 2, base_ms = 10 }

-- One attempt at one provider. A failure of the world is baton's one shape,
-- `nil, message, kind, detail`, whoever reports it: http.request, the breaker, or us.
local function fetch(p, path)
  return breakers[p.name]:call(function()
    local r, err, kind, detail = http.request { url = p.base .. path, timeout_ms = 2000,
                                                connect_timeout_ms = 200 }
    if not r then return nil, err, kind, detail end
    if r.status == 429 or r.status >= 500 then   -- the provider is saturated or failing
      return nil, ("fetch: %s answered %d"):format(p.name, r.status),
             (r.status == 429 or r.retry_after_ms) and "rate_limited" or "io",
             { status = r.status, retry_after_ms = r.retry_after_ms }  -- retry honours it
    end
    return r
  end)
end

-- The fallback chain: each provider in turn, each with its retries. Failures are counted
-- by kind: "connect" from the dead primary, "circuit_open" once its breaker fast-fails it.
local failures = {}
local function count(p, msg, kind)
  local key = p.name .. " " .. kind
  failures[key] = (failures[key] or 0) + 1
  if failures[key] == 1 then say("first %s failure: %s", key, msg) end
end

local function ask(path)
  local msg, kind, detail
  for _, p in ipairs(providers) do
    local resp
    resp, msg, kind, detail = retry:call(function()
      local r, m, k, d = fetch(p, path)
      if not r then count(p, m, k) end
      return r, m, k, d
    end)
    if resp then return { provider = p.name, status = resp.status, bytes = #resp.body } end
  end
  return nil, "ask: every provider failed for " .. path .. ": " .. msg, kind, detail
end

local e <close> = baton.engine {
  max_parallel = 8, timeout_ms = 500,
  dispatcher = function(_, args) return ask(args.path) end,
}
local requests = {}
for _, path in ipairs { "/README.md", "/docs/api.md", "/docs/mcp.md", "/Makefile",
                        "/CMakeLists.txt", "/no-such-file" } do
  requests[#requests + 1] = { tool = "get", args = { path = path } }
end
e:dispatch(requests)
for _, o in ipairs(e:wait_within()) do
  if o.status == "settled" then
    say("settled  %-16s via %-8s status %d, %6d bytes, %3d ms", o.args.path, o.body.provider,
        o.body.status, o.body.bytes, o.elapsed_ms)
  else
    say("%-8s %-16s %s", o.status, o.args.path, tostring(o.error and o.error.message))
  end
end
for key, n in pairs(failures) do say("%2d × %s", n, key) end
say("breakers: primary %s, fallback %s", breakers.primary:state(), breakers.fallback:state())

-- Streaming: the body handed over as it arrives, with a deadline per read.
local s <close> = assert(http.stream { url = providers[2].base .. "/README.md", timeout_ms = 2000 })
local lines, longest = 0, 0
while true do
  local line, err, kind = s:read_line(2000)
  if not line then
    if err then say("stream failed: %s (%s)", err, kind) end
    break
  end
  lines, longest = lines + 1, math.max(longest, #line)
end
s:close()
say("streamed README.md: %d lines, the longest %d bytes", lines, longest)

srv:close()
say("provider stopped; %d transfers in flight", baton.stats().transfers)
