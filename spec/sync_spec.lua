-- baton.watch (the latest value), baton.notify (Tokio's Notify) and baton.shield (cleanup
-- that finishes even when its task is aborted).
local baton = require "baton"
local H = require "spec.helper"

local until_true = H.until_true

describe("baton.watch", function()
  it("changed() waits for a value newer than the handle has seen, and coalesces",
     H.async(function()
    local w = baton.watch("v0")
    assert.same({ "v0", 0 }, { w:get() })
    local seen = {}
    local t = baton.spawn(function()
      while true do
        local v = w:changed()
        if v == nil then return end
        seen[#seen + 1] = v
        baton.sleep(20)             -- slow: sends meanwhile are coalesced
      end
    end)
    until_true(function() return t:status() == "waiting" end)
    w:send("v1")
    baton.sleep(5)
    w:send("v2")
    w:send("v3")
    baton.sleep(40)
    w:close()
    t:join()
    assert.same({ "v1", "v3" }, seen)  -- the newest, never a backlog; v2 skipped
  end))

  it("gives each handle its own seen version; borrow marks, get does not", H.async(function()
    local w = baton.watch(1)
    local r = w:subscribe()
    w:send(2)
    assert.same({ 2, 1 }, { r:get() })
    assert.same({ 2, 1 }, { r:changed(0) })  -- newer than r has seen: at once
    assert.equal("timeout", select(3, r:changed(10)))
    assert.same({ 2, 1 }, { w:borrow() })
    assert.equal("timeout", select(3, w:changed(10)))
    local got = {}
    local ts = {}
    for i = 1, 3 do
      local h = w:subscribe()
      ts[i] = baton.spawn(function() got[i] = h:changed() end)
    end
    until_true(function() return ts[3]:status() == "waiting" end)
    w:send(3)                          -- wakes every watcher
    for i = 1, 3 do ts[i]:join() end
    assert.same({ 3, 3, 3 }, got)
  end))

  it("close ends changed() once the newest was taken; times out with the shape",
     H.async(function()
    local w = baton.watch("a")
    local v, msg, kind, detail = w:changed(15)
    assert.is_nil(v)
    assert.equal("baton.watch:changed: timed out after 15 ms", msg)
    assert.equal("timeout", kind)
    assert.same({ timeout_ms = 15 }, detail)
    w:send("b")
    w:close()
    assert.equal("b", w:changed())
    v, msg, kind = w:changed()
    assert.is_nil(v)
    assert.equal("baton.watch:changed: the watch is closed", msg)
    assert.equal("closed", kind)
    assert.equal("closed", select(3, w:send("c")))
    assert.is_true(w:closed())
    H.raises("baton.watch: bad argument #1 'value' %(expected a value other than nil, got no value%)",
             baton.watch)
    H.raises("baton.watch:send: bad argument #1 'value'", w.send, w, nil)
  end))
end)

describe("baton.notify", function()
  it("stores one permit when nobody waits, like Tokio's Notify", H.async(function()
    local n = baton.notify()
    assert.is_false(n:notify_one())
    assert.is_false(n:notify_one())    -- still one
    assert.is_true(n:notified())
    local v, msg, kind, detail = n:notified(10)
    assert.is_nil(v)
    assert.equal("baton.notify:notified: timed out after 10 ms", msg)
    assert.equal("timeout", kind)
    assert.same({ timeout_ms = 10 }, detail)
  end))

  it("wakes waiters oldest first with notify_one, all with notify_all", H.async(function()
    local n = baton.notify()
    local order = {}
    local ts = {}
    for i = 1, 3 do
      ts[i] = baton.spawn(function()
        n:notified()
        order[#order + 1] = i
      end)
      until_true(function() return n:waiting() == i end)
    end
    assert.is_true(n:notify_one())
    baton.yield()
    assert.same({ 1 }, order)
    assert.equal(2, n:notify_all())
    for i = 1, 3 do ts[i]:join() end
    assert.same({ 1, 2, 3 }, order)
    assert.equal(0, n:notify_all())    -- stores nothing
    assert.equal("timeout", select(3, n:notified(5)))
  end))

  it("passes a notify_one on when the task it woke is aborted before it ran",
     H.async(function()
    local n = baton.notify()
    local a = baton.spawn(function() return n:notified() end)
    local b = baton.spawn(function() return n:notified() end)
    until_true(function() return n:waiting() == 2 end)
    n:notify_one()
    a:abort()
    assert.is_false((a:join()))
    assert.same({ true, true }, { b:join() })
    -- aborted with nobody else waiting: the permit is stored
    local c = baton.spawn(function() return n:notified() end)
    until_true(function() return n:waiting() == 1 end)
    n:notify_one()
    c:abort()
    c:join()
    assert.is_true(n:notified(0))
  end))
end)

describe("baton.shield", function()
  it("shield lets a cancelled task finish a 100 ms cleanup await", H.async(function()
    local log = {}
    local t = baton.spawn(function()
      local ok, err = pcall(baton.sleep, 10000)  -- aborted here
      log[#log + 1] = ok and "slept" or err.kind
      baton.shield(function()
        baton.sleep(100)                        -- e.g. a server's close: it must finish
        log[#log + 1] = "cleaned up"
      end)
      log[#log + 1] = "after the shield"       -- never: the cancellation is raised there
    end)
    baton.sleep(10)
    t:abort()
    local elapsed, ok, err = H.timed(t.join, t)
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal("cancelled", t:status())
    assert.same({ "cancelled", "cleaned up" }, log)
    assert.is_true(elapsed >= 95, "joined after " .. elapsed .. " ms")
  end))

  it("holds back an abort that arrives during fn until fn returns", H.async(function()
    local log = {}
    local t = baton.spawn(function()
      local a, b = baton.shield(function(x)
        baton.sleep(50)
        log[#log + 1] = "inner done"
        return x, "two"
      end, "one")
      log[#log + 1] = a .. b
    end)
    baton.sleep(10)
    t:abort()
    assert.equal("waiting", t:status())   -- still sleeping in the shield
    assert.equal("cancelled", select(2, t:join()).kind)
    assert.same({ "inner done" }, log)

    local u = baton.spawn(function()
      return baton.shield(function(x) baton.sleep(1) return x * 2 end, 21)
    end)
    assert.same({ true, 42 }, { u:join() })
  end))

  it("nests, re-raises fn's error, and still delivers the cancellation", H.async(function()
    local t = baton.spawn(function()
      baton.shield(function()
        baton.shield(function() baton.sleep(20) end)  -- the inner one lifts nothing
        baton.sleep(20)
      end)
    end)
    baton.sleep(5)
    t:abort()
    local elapsed = H.timed(t.join, t)
    assert.equal("cancelled", t:status())
    assert.is_true(elapsed >= 30)
    local u = baton.spawn(function()
      return pcall(baton.shield, function() error("boom", 0) end)
    end)
    assert.same({ true, false, "boom" }, { u:join() })
    H.raises_misuse("baton.shield", 1, "fn", "expected function, got 1%)", baton.shield, 1)
  end))

  it("lets baton.run's final abort wait for a shielded cleanup", function()
    local done = false
    baton.run(function()
      baton.spawn(function()
        baton.shield(function()
          baton.sleep(30)
          done = true
        end)
      end)
      baton.sleep(5)  -- the main task returns: the other task is aborted, and finishes first
    end)
    assert.is_true(done)
    assert.equal(0, baton.stats().tasks)
  end)
end)
