-- docs/errors.md, "Rate limits, stores and the router": every (function, kind) the section
-- lists is provoked here, with the convention's shape (H.failure_rows).
local baton = require "baton"
local H = require "spec.helper"

local ROWS = {
  { "baton.ratelimit:acquire", "timeout", function()
      local rl = baton.ratelimit { rate = 1, per_ms = 60000, burst = 1 }
      assert(rl:acquire(1))
      return rl:acquire(1, { timeout_ms = 10 })
    end, detail = { timeout_ms = 10 } },
  { "baton.ratelimit:try_acquire", "rate_limited", function()
      local rl = baton.ratelimit { rate = 1, per_ms = 60000, burst = 1 }
      assert(rl:try_acquire(1))
      return rl:try_acquire(1)
    end, detail = function(d) assert(d.retry_after_ms > 59000 and d.retry_after_ms <= 60000) end },
  { "baton.store.memory:gcra_take", "rate_limited", function()
      local s = baton.store.memory()
      assert(s:gcra_take("k", 1, 1000, 1, 1))
      return s:gcra_take("k", 1, 1000, 1, 1)
    end, detail = function(d) assert(d.retry_after_ms > 900 and d.retry_after_ms <= 1000) end },
  { "baton.store.memory:lease_acquire", "busy", function()
      local s = baton.store.memory()
      assert(s:lease_acquire("k", "a", 1, 1000))
      return s:lease_acquire("k", "b", 1, 1000)
    end, detail = { holders = 1, limit = 1 } },
  { "baton.store.memory:lease_renew", "closed", function()
      return baton.store.memory():lease_renew("k", "a", 1000)
    end, detail = { key = "k", holder = "a" } },
  -- a store's own failure comes out of the limiter as the store gave it, prefixed
  { "baton.ratelimit:acquire", "io", function()
      local broken = { gcra_take = function() return nil, "redis: connection reset", "io" end }
      return baton.ratelimit { rate = 1, store = broken, key = "k" }:acquire(1)
    end },
}

-- baton.router:call: a router over one deployment whose call fails as given.
local function router_failing(kind, detail, opts)
  return function()
    local r = baton.router { deployments = { { name = "a", model = "m", call = function()
      if kind == "sleep" then baton.sleep(1000) return "late" end
      return nil, "it failed", kind, detail
    end } } }
    return r:call("m", {}, opts)
  end
end
local function has_ledger(n)
  return function(d) assert(type(d.ledger) == "table" and #d.ledger == n and type(d.class) == "string") end
end
for _, row in ipairs {
  { "timeout", router_failing("sleep", nil, { timeout_ms = 20 }) },
  { "rate_limited", router_failing("rate_limited", { retry_after_ms = 50 }) },
  { "unavailable", router_failing("connect") },
  { "rejected", router_failing("tool_error") },
  { "auth", router_failing("auth") },
  { "error", router_failing(nil) },
} do
  ROWS[#ROWS + 1] = { "baton.router:call", row[1], row[2], detail = has_ledger(1) }
end

local EXEMPT = {
  ["baton.ratelimit:acquire resource"] = "needs the timer heap's allocation to fail",
}

describe("docs/errors.md: rate limits, stores and the router", function()
  H.failure_rows(it, "Rate limits, stores and the router", ROWS, EXEMPT)
end)
