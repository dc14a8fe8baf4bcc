-- blocking.lua — a blocking call stalls every task: measure it. A ticker task wants to run
-- every 20 ms; while the main task sits in os.execute("sleep 0.3") (a blocking call: the
-- whole loop waits in it) the ticker runs late by the whole 300 ms, while during
-- baton.process.run{ "sleep", "0.3" } (the same child, awaited) it stays on time.
--
--   baton examples/blocking.lua
local baton = require "baton"

local PERIOD = 20

-- The ticker: the worst lateness of its wake-ups since the last reset.
local worst = 0
local ticker = baton.spawn(function()
  while true do
    local due = baton.clock() + PERIOD
    baton.sleep(PERIOD)
    worst = math.max(worst, baton.clock() - due)
  end
end)

local function measure(what, fn)
  baton.sleep(3 * PERIOD)  -- the ticker is ticking
  worst = 0
  fn()
  baton.sleep(2 * PERIOD)  -- its late wake-up is counted
  print(("%-38s the ticker was late by up to %3d ms"):format(what, math.floor(worst)))
  return worst
end

local blocked = measure('os.execute("sleep 0.3"):', function()
  os.execute("sleep 0.3")                          -- blocks the loop: nothing else runs
end)
local awaited = measure('baton.process.run{ "sleep", "0.3" }:', function()
  assert(baton.process.run { "sleep", "0.3" })     -- awaits the child: the loop goes on
end)

print(("blocking stalled every task: %s; awaiting did not: %s")
  :format(tostring(blocked >= 200), tostring(awaited < 100)))
ticker:abort()
