-- baton.redis against a hostile server (spec/fixtures/redis/hostile.py): what a real Redis
-- never sends — a reply nobody asked for, two replies to one command, pub/sub messages of
-- the wrong shape, an array announced a billion elements long — fails the connection with
-- kind "protocol" naming what came, and the process goes on (hiredis 0.14 aborts on the
-- first ones, and builds and frees the last slot by slot). Commands that would change the
-- connection's mode raise; a call abandoned on a silent server does not keep the run alive.
local baton = require "baton"
local H = require "spec.helper"

local function hostile(mode)
  local pipe = assert(io.popen("exec python3 " .. H.q(H.SRC .. "/spec/fixtures/redis/hostile.py")
                               .. " " .. mode))
  local line = assert(pipe:read("l"), "the hostile server did not start")
  local port, pid = line:match("^PORT (%d+) PID (%d+)$")
  assert(port, line)
  return setmetatable({ url = "redis://127.0.0.1:" .. port }, {
    __close = function()
      os.execute("kill " .. pid)
      pipe:close()
    end,
  })
end

local function protocol(what, ...)
  local v, msg, kind = ...
  assert.is_nil(v)
  assert.equal("protocol", kind, msg)
  assert.matches(what, msg, 1, true)
end

describe("baton.redis against a hostile server", function()
  it("fails the connection on a reply no command waits for", H.async(function()
    local srv <close> = hostile("unsolicited")
    local r <close> = assert(baton.redis.connect { url = srv.url, timeout_ms = 2000 })
    baton.sleep(300)  -- the server's unasked +EXTRA arrives while nothing is in flight
    assert.is_true(r:closed())
    protocol("baton.redis:call: the server sent a reply no command waits for", r:call("GET", "k"))
  end))

  it("fails the connection on a second reply to one command", H.async(function()
    local srv <close> = hostile("twice")
    local r <close> = assert(baton.redis.connect { url = srv.url, timeout_ms = 2000 })
    assert.equal("ONE", r:call("GET", "k"))
    baton.sleep(100)
    protocol("a reply no command waits for", r:call("GET", "k"))
  end))

  for mode, what in pairs { sub_short = "a pub/sub message of fewer than 3 parts",
                            sub_int = "a pub/sub message with a part of the wrong type",
                            sub_unsub0 = "a reply no command waits for" } do
    it("ends a subscription on " .. what .. " (" .. mode .. ")", H.async(function()
      local srv <close> = hostile(mode)
      local r <close> = assert(baton.redis.connect { url = srv.url, timeout_ms = 2000 })
      local sub <close> = assert(r:subscribe("ch"))
      protocol("baton.redis.subscription:next: the server sent " .. what, sub:next(2000))
    end))
  end

  it("refuses an array announced a billion elements long, at once, without a stall",
     H.async(function()
    local srv <close> = hostile("big_array")
    local r <close> = assert(baton.redis.connect { url = srv.url, timeout_ms = 5000 })
    local t0 = baton.clock()
    local worst = H.stall_ms(5, function()
      protocol("an array of more than 16777216 elements", r:call("LRANGE", "k", 0, -1))
      r:close()
      assert.is_true(baton.clock() - t0 < 2000)  -- not the 5 s timeout
      baton.sleep(20)
    end)
    assert.is_true(worst < 1000, worst)  -- nothing built or freed a billion slots
  end))

  it("the store fails with protocol when every command is answered +OK", H.async(function()
    local srv <close> = hostile("ok")
    local r <close> = assert(baton.redis.connect { url = srv.url, timeout_ms = 2000 })
    local s = baton.redis.store { redis = r, prefix = "t:" }
    local calls = {
      now = function() return s:now() end,
      gcra_take = function() return s:gcra_take("k", 10, 1000, 5, 1) end,
      lease_acquire = function() return s:lease_acquire("k", "me", 2, 1000) end,
      lease_renew = function() return s:lease_renew("k", "me", 1000) end,
      lease_holders = function() return s:lease_holders("k") end,
      incr = function() return s:incr("k", 1) end,
      get = function() return s:get("k") end,
      cooldown = function() return s:cooldown("k") end,
      claim = function() return s:claim("k", 1000) end,
    }
    for op, call in pairs(calls) do
      protocol("baton.redis.store:" .. op .. ": the server's reply is not what the script "
               .. "returns", call())
    end
  end))

  it("raises for commands that change the connection's mode", H.async(function()
    local srv <close> = hostile("silent")
    local r <close> = assert(baton.redis.connect { url = srv.url, timeout_ms = 2000 })
    for _, cmd in ipairs { "SUBSCRIBE", "psubscribe", "UNSUBSCRIBE", "MONITOR", "ssubscribe" } do
      H.raises("baton.redis:call: " .. cmd:upper() .. " changes the connection's mode: use "
               .. "client:subscribe", r.call, r, cmd, "ch")
    end
    H.raises("baton.redis.pipe:call: MONITOR changes the connection's mode", r.pipeline, r,
             function(p) p:call("monitor") end)
  end))

  it("lets baton.run find a deadlock after a call was abandoned on a silent server",
     function()
    local srv <close> = hostile("silent")
    local script = H.write_temp(([[
      local baton = require "baton"
      local r = assert(baton.redis.connect { url = %q })
      print(baton.timeout(100, function() return r:call("GET", "k") end))
      baton.channel(0):recv()  -- nothing will ever send
    ]]):format(srv.url))
    local res = H.run(H.q(script), { timeout = 20 })
    os.remove(script)
    assert.matches("did not finish within 100 ms", res.out, 1, true)
    assert.matches("deadlock", res.err, 1, true)
    assert.equal(1, res.code)
  end)
end)
