-- baton.select: the first ready of several sources (channels, watches, notifies, futures,
-- tasks) with an optional timeout; the losing waits are withdrawn having taken nothing.
local baton = require "baton"
local H = require "spec.helper"

local until_true = H.until_true

describe("baton.select", function()
  it("select over two channels and a timeout never consumes from the loser", H.async(function()
    math.randomseed(7)
    local a, b = baton.channel(0), baton.channel(0)  -- rendezvous: a left-over waiter shows
    local sent, got = { a = 0, b = 0 }, { a = 0, b = 0 }
    local timeouts = 0
    for round = 1, 300 do
      local senders = {}
      for _, pair in ipairs { { a, "a" }, { b, "b" } } do
        if math.random(1, 3) > 1 then
          senders[#senders + 1] = baton.spawn(function()
            for _ = 1, math.random(0, 2) do baton.yield() end
            if pair[1]:send(round, 50) then sent[pair[2]] = sent[pair[2]] + 1 end
          end)
        end
      end
      local i, v, kind = baton.select { a, b, timeout_ms = math.random(0, 2) }
      if i == nil then
        assert.equal("timeout", kind)
        timeouts = timeouts + 1
      else
        assert.equal(round, v)
        got[i == 1 and "a" or "b"] = got[i == 1 and "a" or "b"] + 1
      end
      -- the loser's wait is gone: nobody receives on either channel now
      assert.is_nil((a:try_send("stray")))
      assert.is_nil((b:try_send("stray")))
      -- whatever was not selected is still there for a plain receiver
      for _, t in ipairs(senders) do
        while t:status() ~= "done" do
          local j, x = baton.select { a, b, timeout_ms = 60 }
          if x == round then
            got[j == 1 and "a" or "b"] = got[j == 1 and "a" or "b"] + 1
          end
        end
      end
    end
    assert.same(sent, got)
    assert.is_true(sent.a > 50 and sent.b > 50 and timeouts > 10)
  end))

  it("returns the timeout as nil, msg, 'timeout', { timeout_ms } with nothing left queued",
     H.async(function()
    local a, b = baton.channel(0), baton.channel(1)
    local elapsed, i, msg, kind, detail = H.timed(baton.select, { a, b, timeout_ms = 30 })
    assert.is_nil(i)
    assert.equal("baton.select: timed out after 30 ms", msg)
    assert.equal("timeout", kind)
    assert.same({ timeout_ms = 30 }, detail)
    assert.is_true(elapsed >= 25)
    assert.matches("0 receivers waiting", tostring(a))
    assert.is_nil((a:try_send(1)))
    assert.is_true(b:try_send(2))
    assert.equal(2, b:recv())
    -- only a timeout: a sleep that says so
    assert.equal("timeout", select(3, baton.select { timeout_ms = 1 }))
  end))

  it("takes ready sources in the order listed, and is still a cancellation point",
     H.async(function()
    local a, b = baton.channel(2), baton.channel(2)
    a:send("a1")
    b:send("b1")
    assert.same({ 1, "a1" }, { baton.select { a, b } })
    assert.same({ 2, "b1" }, { baton.select { a, b } })
    b:send("b2")
    local t = baton.spawn(function()
      baton.current():abort()
      return baton.select { a, b }
    end)
    assert.equal("cancelled", select(2, t:join()).kind)
    assert.equal(1, #b)                 -- not taken
  end))

  it("gives back a value reserved for it when aborted before it ran", H.async(function()
    local a, b = baton.channel(0), baton.channel(0)
    local t = baton.spawn(function() return baton.select { a, b } end)
    until_true(function() return t:status() == "waiting" end)
    assert.is_true(b:try_send("v"))   -- the select's node on b is woken for it
    t:abort()
    assert.is_false((t:join()))
    assert.equal("v", b:try_recv())
    assert.is_nil((a:try_send(1)))     -- and its node on a is gone
  end))

  it("aborted while waiting, withdraws from every source", H.async(function()
    local a, n, w = baton.channel(0), baton.notify(), baton.watch(0)
    local f = baton.future()
    local t = baton.spawn(function() return baton.select { a, n, w, f } end)
    until_true(function() return t:status() == "waiting" end)
    assert.equal(1, n:waiting())
    assert.equal(1, f:waiting())
    t:abort()
    assert.is_false((t:join()))
    assert.equal(0, n:waiting())
    assert.equal(0, f:waiting())
    assert.is_nil((a:try_send(1)))
    assert.is_false(n:notify_one())    -- nobody waits: the permit is stored
  end))

  it("holds its own list of sources: the caller's table changed while it waits changes nothing",
     H.async(function()
    -- a source replaced by a number
    local ch = baton.channel(1)
    local t = { ch }
    local sel = baton.spawn(function() return baton.select(t) end)
    baton.yield()
    t[1] = 42
    ch:send("x")
    assert.same({ true, 1, "x" }, { sel:join() })
    -- a source swapped for another channel: the value comes from the one registered, and
    -- the other keeps its own
    local a, b = baton.channel(1), baton.channel(1)
    b:send("b's value")
    t = { a }
    sel = baton.spawn(function() return baton.select(t) end)
    baton.yield()
    t[1] = b
    a:send("a's value")
    assert.same({ true, 1, "a's value" }, { sel:join() })
    assert.equal(0, #a)
    assert.equal("b's value", b:try_recv())
    -- sources dropped by the table and collected while select waits, then an abort
    t = { baton.notify(), baton.notify() }
    sel = baton.spawn(function() return baton.select(t) end)
    baton.yield()
    t[1], t[2] = nil, nil
    collectgarbage()
    collectgarbage()
    local fresh = {}   -- new objects where the collected ones were
    for i = 1, 100 do fresh[i] = baton.notify() end
    sel:abort()
    local ok, err = sel:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal(100, #fresh)
  end))

  it("waits on futures, tasks, watches and notifies", H.async(function()
    local f = baton.future()
    local slow = baton.spawn(function() baton.sleep(10000) end)
    local quick = baton.spawn(function() baton.sleep(10) return "q", 2 end)
    assert.same({ 3, true, "q", 2 }, { baton.select { f, slow, quick } })
    baton.spawn(function() baton.sleep(5) f:set("x", nil, 3) end)
    assert.same({ n = 4, 1, "x", nil, 3 }, table.pack(baton.select { f, slow }))
    assert.same({ 1, "x", nil, 3 }, { baton.select { f } })  -- set: ready at once
    slow:abort()
    local ok, err = select(2, baton.select { slow })
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)

    local w = baton.watch("v0")
    local n = baton.notify()
    baton.spawn(function() baton.sleep(5) w:send("v1") end)
    assert.same({ 1, "v1", 1 }, { baton.select { w, n } })
    baton.spawn(function() baton.sleep(5) n:notify_one() end)
    assert.same({ 2, true }, { baton.select { w, n } })  -- w: v1 already seen by select
    n:notify_one()                                       -- stored
    assert.same({ 1, true }, { baton.select { n } })
    assert.is_false(n:notify_one())                      -- the permit was taken
    assert.same({ 1, true }, { baton.select { n } })
    w:close()
    assert.same({ 1, nil, "baton.select: source #1 (a watch) is closed", "closed" },
                { baton.select { w } })
  end))

  it("passes a notify_one on when aborted before it ran", H.async(function()
    local n = baton.notify()
    local t = baton.spawn(function() return baton.select { n } end)
    local u = baton.spawn(function() return n:notified() end)
    until_true(function() return n:waiting() == 2 end)
    assert.is_true(n:notify_one())    -- t, first in line
    t:abort()
    assert.is_false((t:join()))
    assert.same({ true, true }, { u:join() })
  end))

  it("reports a closed channel as that source's result", H.async(function()
    local a, b = baton.channel(1), baton.channel(1)
    local t = baton.spawn(function() return baton.select { a, b } end)
    until_true(function() return t:status() == "waiting" end)
    b:close()
    assert.same({ true, 2, nil, "baton.select: source #2 (a channel) is closed", "closed" },
                { t:join() })
    assert.equal(2, (baton.select { a, b }))  -- closed and drained: ready
  end))

  it("every failure of channels, watches, notifies and select has the convention's shape",
     H.async(function()
    local full, empty, closed = baton.channel(1), baton.channel(1), baton.channel(1)
    full:send(1)
    closed:close()
    local w, n = baton.watch(1), baton.notify()
    local _, _, d = H.assert_failure("baton.channel:send", "timeout", full:send(2, 1))
    assert.same({ timeout_ms = 1 }, d)
    H.assert_failure("baton.channel:recv", "timeout", empty:recv(1))
    _, _, d = H.assert_failure("baton.channel:try_send", "busy", full:try_send(2))
    assert.same({ len = 1, capacity = 1 }, d)
    H.assert_failure("baton.channel:try_recv", "busy", empty:try_recv())
    H.assert_failure("baton.channel:send", "closed", closed:send(1))
    H.assert_failure("baton.channel:recv", "closed", closed:recv())
    H.assert_failure("baton.channel:try_send", "closed", closed:try_send(1))
    H.assert_failure("baton.channel:try_recv", "closed", closed:try_recv())
    H.assert_failure("baton.watch:changed", "timeout", w:changed(1))
    H.assert_failure("baton.notify:notified", "timeout", n:notified(1))
    H.assert_failure("baton.select", "timeout", baton.select { empty, w, n, timeout_ms = 1 })
    w:close()
    H.assert_failure("baton.watch:changed", "closed", w:changed())
    H.assert_failure("baton.watch:send", "closed", w:send(2))
    local _, v, msg, kind = baton.select { closed }
    H.assert_failure("baton.select", "closed", v, msg, kind)
    H.assert_failure("baton.first_ok", "io", baton.first_ok(function() return nil, "x", "io" end))
    H.assert_failure("baton.hedge", "error",
                     baton.hedge(function() error("x") end, { after_ms = 1, max = 1 }))
  end))

  it("raises on misuse", H.async(function()
    local ch = baton.channel(1)
    H.raises("^baton.select: bad argument #1 'sources' %(expected table, got no value%)$",
             baton.select)
    H.raises("^baton.select: bad argument #1 'sources%[2%]' %(expected a channel, watch, "
             .. "notify, future or task, got 'x'%)$", baton.select, { ch, "x" })
    H.raises("^baton.select: bad argument #1 'timeout' %(unknown option%)$", baton.select,
             { ch, timeout = 1 })
    H.raises("^baton.select: bad argument #1 'timeout_ms' %(expected milliseconds >= 0, got %-1%)$",
             baton.select, { ch, timeout_ms = -1 })
    H.raises("expected at least one source or a timeout_ms, got none", baton.select, {})
    H.raises("cannot wait for itself", baton.select, { baton.current() })
  end))
end)
