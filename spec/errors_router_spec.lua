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
}

local EXEMPT = {
  ["baton.ratelimit:acquire resource"] = "needs the timer heap's allocation to fail",
}

describe("docs/errors.md: rate limits, stores and the router", function()
  H.failure_rows(it, "Rate limits, stores and the router", ROWS, EXEMPT)
end)
