-- fleet.lua — one process of a fleet sharing a provider's rate limit through Redis
-- (baton.redis.store): every process builds the same limiter on the same key, so the fleet
-- together admits 20 requests a second (burst 5), however many processes there are. Each
-- process sends "requests" as fast as the limiter lets it for 3 s and prints its share.
--
--   examples/fleet.sh                                  (3 processes and a private redis-server)
--   baton examples/fleet.lua redis://127.0.0.1:6379 worker-1
local baton = require "baton"

local url, name = arg[1] or "redis://127.0.0.1:6379", arg[2] or "worker"
local r <close> = assert(baton.redis.connect { url = url, reconnect = true })
local store = baton.redis.store { redis = r, prefix = "fleet:" }
local rps = baton.ratelimit { rate = 20, per_ms = 1000, burst = 5, store = store, key = "provider:rps" }

local sent, t0 = 0, baton.clock()
local g <close> = baton.group()
for _ = 1, 4 do                                     -- 4 tasks a process, all on one limiter
  g:spawn(function()
    while baton.clock() - t0 < 3000 do
      local ok = rps:acquire(1, { timeout_ms = math.max(0, 3000 - (baton.clock() - t0)) })
      if ok and baton.clock() - t0 < 3000 then sent = sent + 1 end   -- "send" the request
    end
  end)
end
g:join_all()
print(("%s: %d requests in 3 s (the fleet's limit: 5 + 20/s)"):format(name, sent))
