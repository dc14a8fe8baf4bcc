-- fallback.lua — a model limiter under a burst: nine requests want "anthropic/opus", which
-- takes 2 at a time. The rest fall back along the agent's chain (openai/gpt-4o), then to a
-- capability match (anthropic/sonnet: one tier cheaper, with tools; haiku is two tiers
-- cheaper and never matches), then to a CLI provider, and the last ones queue for opus and
-- run as permits come back. Each line says which step (`via`) granted a request, and when.
--
--   baton examples/fallback.lua
local baton = require "baton"

local lim = baton.limiter {
  max_agents = 6,                               -- global cap across every model
  models = {
    ["anthropic/opus"] = 2,                     -- provider/model: the most specific limit
    ["openai/gpt-4o"] = 1,
    sonnet = 1,                                 -- bare model name: any provider's sonnet
    ["claude-cli/claude-code"] = 1,
  },
  providers = {
    { name = "anthropic", models = { "opus", "sonnet", "haiku" } },
    { name = "openai", models = { "gpt-4o" } },
    { name = "claude-cli", models = { "claude-code" }, cli = true },
  },
  profiles = {
    opus = { cost_tier = "premium", tools = true },
    sonnet = { cost_tier = "standard", tools = true },
    haiku = { cost_tier = "cheap", tools = true },
    ["gpt-4o"] = { cost_tier = "premium", tools = true },
    ["claude-code"] = { cost_tier = "premium", tools = true },
  },
}

local t0 = baton.now()
local function log(fmt, ...)
  print(("[%4d ms] " .. fmt):format(baton.now() - t0, ...))
end

-- A request: get a slot (waiting for opus if every fallback is full), "call" the model,
-- and give the slot back when the <close> variable goes out of scope.
local function request(i)
  local grant <close>, err = lim:acquire("anthropic/opus",
                                         { chain = "openai/gpt-4o", wait = true, timeout_ms = 2000 })
  if not grant then
    log("request %d: no slot (%s)", i, err)
    return
  end
  log("request %d: via %-10s -> %s", i, grant.via, grant.key)
  baton.sleep(100 + 20 * i)                     -- the model call
end

local g <close> = baton.group()
for i = 1, 9 do g:spawn(request, i) end
baton.yield()                                   -- every request has tried once by now

local snap = lim:snapshot()
log("in use %d of %d, %d queued for opus", snap.global.in_use, snap.global.capacity,
    snap.keys["anthropic/opus"].waiting)

-- Without wait = true a saturated request is told so at once instead of queueing: the
-- failure `nil, message, "queue_wait", { key, capacity, in_use, waiting }`.
local _, why, kind, detail = lim:acquire("anthropic/opus")
log("one more without waiting: %s, %d of %d in use (%s)", kind, detail.in_use, detail.capacity, why)

g:join_all()
snap = lim:snapshot()
log("done: in use %d, waiting %d", snap.global.in_use, snap.global.waiting)
