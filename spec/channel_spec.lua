-- baton.channel: a bounded FIFO of Lua values between tasks. Many senders and receivers,
-- FIFO on both sides; a value reaches exactly one receiver, whatever aborts and timeouts
-- hit the tasks on either side; capacity 0 is a rendezvous; close drains, then reports.
local baton = require "baton"
local H = require "spec.helper"

local until_true = H.until_true

describe("baton.channel", function()
  it("a channel of capacity 1 with 3 senders and 3 receivers under 10,000 random aborts "
     .. "delivers every sent value exactly once and in per-sender order", H.async(function()
    math.randomseed(12)
    local ch = baton.channel(1)
    local stop = false
    local next_i = { 1, 1, 1 }      -- each sender's next value; advanced only once sent
    local last = { 0, 0, 0 }        -- the last value received from each sender
    local received, bad = 0, nil
    local function sender(s)
      while not stop do
        local i = next_i[s]
        -- a timed-out send sent nothing: the same value goes again
        if ch:send(s * 1000000 + i, math.random(0, 1) == 0 and math.random(0, 2) or nil) then
          next_i[s] = i + 1
        end
      end
    end
    local function receiver()
      while true do
        local v, _, kind = ch:recv(math.random(0, 1) == 0 and math.random(0, 2) or nil)
        if v ~= nil then
          local s, i = v // 1000000, v % 1000000
          if i ~= last[s] + 1 then bad = bad or ("sender %d: got %d after %d"):format(s, i, last[s]) end
          last[s] = i
          received = received + 1
        elseif kind == "closed" then
          return
        end
      end
    end
    local tasks = {}
    for s = 1, 3 do tasks[s] = baton.spawn(sender, s) end
    for r = 4, 6 do tasks[r] = baton.spawn(receiver) end
    local hit_ready = 0               -- aborts of a task woken and not yet run
    for _ = 1, 10000 do
      for _ = 1, math.random(0, 3) do baton.yield() end
      local k = math.random(1, 6)
      local t = tasks[k]
      if t:status() == "running" then hit_ready = hit_ready + 1 end
      t:abort()
      t:join()
      tasks[k] = k <= 3 and baton.spawn(sender, k) or baton.spawn(receiver)
    end
    stop = true
    for s = 1, 3 do tasks[s]:join() end
    ch:close()
    for r = 4, 6 do assert.is_true((tasks[r]:join())) end
    assert.is_nil(bad)
    for s = 1, 3 do
      assert.equal(next_i[s] - 1, last[s])  -- every value sent was received, once
      assert.is_true(last[s] > 100)
    end
    assert.equal(last[1] + last[2] + last[3], received)
    assert.is_true(hit_ready > 1000, "the woken-then-aborted window was hit " .. hit_ready .. " times")
  end))

  it("an aborted recv loses nothing: a value reserved for a receiver aborted before it "
     .. "ran goes to the next receiver", H.async(function()
    local ch = baton.channel(1)
    local r1 = baton.spawn(function() return ch:recv() end)
    local r2 = baton.spawn(function() return ch:recv() end)
    until_true(function() return r1:status() == "waiting" and r2:status() == "waiting" end)
    assert.is_true(ch:send("v"))      -- r1, first in line, is woken for it
    assert.equal("running", r1:status())
    r1:abort()                         -- ...and aborted before it ran
    local ok, err = r1:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.same({ true, "v" }, { r2:join() })
    assert.equal(0, #ch)
  end))

  it("an aborted recv loses nothing: with no other receiver the value stays queued",
     H.async(function()
    local ch = baton.channel(0)
    local r = baton.spawn(function() return ch:recv() end)
    until_true(function() return r:status() == "waiting" end)
    assert.is_true(ch:try_send("v"))   -- rendezvous: r was waiting for it
    r:abort()
    assert.is_false((r:join()))
    assert.equal(1, #ch)
    assert.equal("v", ch:try_recv())
    -- aborted while still queued: it held nothing, and the next value is the next receiver's
    local r1 = baton.spawn(function() return ch:recv() end)
    local r2 = baton.spawn(function() return ch:recv() end)
    until_true(function() return r2:status() == "waiting" end)
    r1:abort()
    r1:join()
    assert.is_true(ch:send("w"))
    assert.same({ true, "w" }, { r2:join() })
  end))

  it("an aborted send sent nothing, and a cancelled task takes nothing even when a value "
     .. "is ready", H.async(function()
    local ch = baton.channel(1)
    assert.is_true(ch:send(1))
    local s = baton.spawn(function() return ch:send(2) end)
    until_true(function() return s:status() == "waiting" end)
    assert.equal(1, ch:recv())        -- room: s is woken for it
    assert.equal("running", s:status())
    s:abort()                          -- ...and aborted before it put its value
    assert.is_false((s:join()))
    assert.equal(0, #ch)
    assert.is_true(ch:try_send(3))     -- the room is free again
    local t = baton.spawn(function()
      baton.current():abort()
      return ch:recv()
    end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal(3, ch:recv())         -- still there
  end))

  it("rendezvous: capacity 0 hands a value over only to a receiver waiting for it",
     H.async(function()
    local ch = baton.channel(0)
    local v, msg, kind, detail = ch:try_send("x")
    assert.is_nil(v)
    assert.equal("baton.channel:try_send: no receiver is waiting", msg)
    assert.equal("busy", kind)
    assert.same({ len = 0, capacity = 0 }, detail)
    local log = {}
    local s = baton.spawn(function()
      assert.is_true(ch:send("hello"))
      log[#log + 1] = "sent"
    end)
    baton.sleep(20)
    assert.equal("waiting", s:status())  -- nobody receives: the sender waits
    assert.equal(0, #ch)
    log[#log + 1] = "recv"
    assert.equal("hello", ch:recv())
    s:join()
    assert.same({ "recv", "sent" }, log)
    -- a waiting receiver makes try_send succeed, once
    local r = baton.spawn(function() return ch:recv() end)
    until_true(function() return r:status() == "waiting" end)
    assert.is_true(ch:try_send(1))
    assert.is_nil((ch:try_send(2)))
    assert.same({ true, 1 }, { r:join() })
    -- ping-pong keeps order
    local got = {}
    local p = baton.spawn(function() for i = 1, 100 do ch:send(i) end end)
    for _ = 1, 100 do got[#got + 1] = ch:recv() end
    p:join()
    for i = 1, 100 do assert.equal(i, got[i]) end
  end))

  it("close drains then reports closed", H.async(function()
    local ch = baton.channel(3)
    for i = 1, 3 do assert.is_true(ch:send(i)) end
    local blocked = baton.spawn(function() return ch:send(4) end)  -- full: waits
    until_true(function() return blocked:status() == "waiting" end)
    ch:close()
    assert.is_true(ch:closed())
    local ok, v, msg, kind = blocked:join()
    assert.is_true(ok)
    assert.is_nil(v)
    assert.equal("baton.channel:send: the channel is closed", msg)
    assert.equal("closed", kind)
    v, msg, kind = ch:send(5)
    assert.is_nil(v)
    assert.equal("baton.channel:send: the channel is closed", msg)
    assert.equal("closed", kind)
    assert.equal(3, #ch)
    assert.equal(1, ch:recv())
    assert.equal(2, ch:try_recv())
    local rest = {}
    for x in ch:iter() do rest[#rest + 1] = x end
    assert.same({ 3 }, rest)            -- 4 and 5 were never sent
    v, msg, kind = ch:recv()
    assert.is_nil(v)
    assert.equal("baton.channel:recv: the channel is closed and drained", msg)
    assert.equal("closed", kind)
    assert.equal("closed", select(3, ch:try_recv()))
    -- receivers waiting when it closes are told at once
    local c2 = baton.channel(1)
    local rs = {}
    for i = 1, 3 do rs[i] = baton.spawn(function() return c2:recv() end) end
    until_true(function() return rs[3]:status() == "waiting" end)
    c2:close()
    for i = 1, 3 do assert.equal("closed", select(4, rs[i]:join())) end
  end))

  it("is FIFO on both sides", H.async(function()
    local ch = baton.channel(1)
    local got = {}
    local rs = {}
    for i = 1, 5 do
      rs[i] = baton.spawn(function()
        local v = ch:recv()
        got[#got + 1] = { i, v }
      end)
      until_true(function() return rs[i]:status() == "waiting" end)
    end
    for v = 1, 5 do ch:send(v * 10) end
    for i = 1, 5 do rs[i]:join() end
    for i = 1, 5 do assert.same({ i, i * 10 }, got[i]) end  -- receiver i got value i
    assert.is_true(ch:send("first"))
    local ss = {}
    for i = 1, 5 do
      ss[i] = baton.spawn(function() ch:send(i) end)
      until_true(function() return ss[i]:status() == "waiting" end)
    end
    assert.is_nil((ch:try_send("late")))  -- waiting senders are not overtaken
    assert.equal("first", ch:recv())
    for i = 1, 5 do assert.equal(i, ch:recv()) end
    for i = 1, 5 do ss[i]:join() end
  end))

  it("times out send and recv with nothing done", H.async(function()
    local ch = baton.channel(1)
    ch:send("a")
    local elapsed, v, msg, kind, detail = H.timed(ch.send, ch, "b", 30)
    assert.is_nil(v)
    assert.equal("baton.channel:send: timed out after 30 ms", msg)
    assert.equal("timeout", kind)
    assert.same({ timeout_ms = 30 }, detail)
    assert.is_true(elapsed >= 25)
    assert.equal(1, #ch)
    assert.equal("a", ch:recv())
    v, msg, kind, detail = ch:recv(10)
    assert.is_nil(v)
    assert.equal("baton.channel:recv: timed out after 10 ms", msg)
    assert.equal("timeout", kind)
    assert.same({ timeout_ms = 10 }, detail)
    assert.is_true(ch:try_send("c"))   -- no stale waiter was left behind
    assert.equal("c", ch:try_recv())
  end))

  it("keeps any Lua value but nil, and grows past its capacity only for values given back",
     H.async(function()
    local ch = baton.channel(64)
    local t = {}
    for i = 1, 64 do assert.is_true(ch:try_send(i % 2 == 0 and t or false)) end
    assert.is_nil((ch:try_send(1)))
    assert.equal(64, #ch)
    assert.equal(64, ch:capacity())
    for i = 1, 64 do assert.equal(i % 2 == 0 and t or false, ch:recv()) end
    -- wrap around the ring many times
    local sum = 0
    local p = baton.spawn(function() for i = 1, 1000 do ch:send(i) end ch:close() end)
    for v in ch:iter() do sum = sum + v end
    p:join()
    assert.equal(500500, sum)
  end))

  it("raises on misuse", H.async(function()
    H.raises("^baton.channel: bad argument #1 'capacity' %(expected integer >= 0, got %-1%)$",
             baton.channel, -1)
    H.raises("got 1.5%)$", baton.channel, 1.5)
    H.raises("got no value%)$", baton.channel)
    H.raises("got '4'%)$", baton.channel, "4")
    local ch <close> = baton.channel(1)
    H.raises("^baton.channel:send: bad argument #1 'value' %(expected a value other than nil, got nil%)$",
             ch.send, ch, nil)
    H.raises("^baton.channel:try_send: bad argument #1 'value'", ch.try_send, ch)
    H.raises_misuse("baton.channel:send", 2, "timeout_ms", "expected milliseconds >= 0, got %-1%)$",
                    ch.send, ch, 1, -1)
    H.raises_misuse("baton.channel:recv", 1, "timeout_ms", "got NaN%)$", ch.recv, ch, 0 / 0)
    H.raises("^baton.channel:recv: bad argument #0 'self' %(expected baton.Channel, got table%)$",
             ch.recv, {})
    local dead = baton.channel(1)
    getmetatable(dead).__gc(dead)
    H.raises("baton.channel:recv: used after it was closed", function() return dead:recv() end)
    assert.is_true(dead:closed())
    assert.matches("finalized", tostring(dead))
    assert.matches("^baton.Channel %(0/1 queued, 0 senders and 0 receivers waiting%)$", tostring(ch))
  end))

  it("wakes its waiters with 'closed' when finalized by hand", H.async(function()
    local ch = baton.channel(0)
    local r = baton.spawn(function() return ch:recv() end)
    local s = baton.spawn(function() return baton.channel(0):send(1, 10000) end)
    until_true(function() return r:status() == "waiting" end)
    getmetatable(ch).__gc(ch)
    assert.equal("closed", select(4, r:join()))
    s:abort()
    s:join()
  end))

  it("works outside a task when it need not wait", function()
    local ch = baton.channel(2)
    assert.is_true(ch:send(1))
    assert.equal(1, ch:recv())
    H.raises("not inside a baton task", ch.recv, ch)
  end)
end)

describe("baton.channel batches (send_many, recv_many)", function()
  it("deliver every value exactly once and in per-sender order under 3,000 random aborts, "
     .. "mixed with send and recv", H.async(function()
    math.randomseed(34)
    local ch = baton.channel(3)
    local stop = false
    local next_i = { 1, 1, 1 }
    local last = { 0, 0, 0 }
    local received, bad = 0, nil
    local function take(v)
      local s, i = v // 1000000, v % 1000000
      if i ~= last[s] + 1 then bad = bad or ("sender %d: got %d after %d"):format(s, i, last[s]) end
      last[s] = i
      received = received + 1
    end
    local function sender(s)
      local list = {}
      while not stop do
        if s == 3 then  -- one by one
          if ch:send(s * 1000000 + next_i[s], math.random(0, 1) == 0 and math.random(0, 2) or nil) then
            next_i[s] = next_i[s] + 1
          end
        else
          local m = math.random(1, 8)
          for k = 1, m do list[k] = s * 1000000 + next_i[s] + k - 1 end
          local k = ch:send_many(list, 1, m, math.random(0, 1) == 0 and math.random(0, 2) or nil)
          if k then next_i[s] = next_i[s] + k end  -- a partial send says how far it got
        end
      end
    end
    local function receiver(r)
      local buf = {}
      while true do
        local ms = math.random(0, 1) == 0 and math.random(0, 2) or nil
        if r == 6 then
          local v, _, kind = ch:recv(ms)
          if v ~= nil then take(v) elseif kind == "closed" then return end
        else
          local n, _, kind = ch:recv_many(buf, math.random(1, 5), ms)
          if n then
            assert(n >= 1)
            for k = 1, n do take(buf[k]) end
          elseif kind == "closed" then
            return
          end
        end
      end
    end
    local tasks = {}
    for s = 1, 3 do tasks[s] = baton.spawn(sender, s) end
    for r = 4, 6 do tasks[r] = baton.spawn(receiver, r) end
    local hit_ready = 0
    for _ = 1, 3000 do
      for _ = 1, math.random(0, 3) do baton.yield() end
      local k = math.random(1, 6)
      local t = tasks[k]
      if t:status() == "running" then hit_ready = hit_ready + 1 end
      t:abort()
      t:join()
      tasks[k] = k <= 3 and baton.spawn(sender, k) or baton.spawn(receiver, k)
    end
    stop = true
    for s = 1, 3 do tasks[s]:join() end
    ch:close()
    for r = 4, 6 do assert.is_true((tasks[r]:join())) end
    assert.is_nil(bad)
    for s = 1, 3 do
      assert.equal(next_i[s] - 1, last[s])
      assert.is_true(last[s] > 100)
    end
    assert.equal(last[1] + last[2] + last[3], received)
    assert.is_true(hit_ready > 100, "the woken-then-aborted window was hit " .. hit_ready .. " times")
  end))

  it("recv_many(nil, n) stays exactly-once when a finalizer uses the channel meanwhile",
     H.async(function()
    -- making recv_many's list is a step of the collector, which may run a __gc that calls
    -- try_recv or try_send on the same channel (found by review: values were delivered
    -- twice, or lost with a nil in a later list)
    local old_mode = collectgarbage("incremental", 0, 100, 0)  -- collect at every chance
    finally(function()
      collectgarbage("incremental", 200, 100, 13)  -- Lua's defaults
      collectgarbage(old_mode)
    end)
    for _, mode in ipairs { "recv", "send" } do
      for _, max in ipairs { 64, 10 } do
        local ch = baton.channel(64)
        local by_gc = {}
        local mt = { __gc = function()
          if mode == "recv" then
            local v = ch:try_recv()
            if v ~= nil then by_gc[#by_gc + 1] = v end
          elseif ch:try_send(-1) then
            by_gc[#by_gc + 1] = -1
          end
        end }
        local seen, n, minus = {}, 0, 0
        local function got(v)
          assert(v ~= nil, "a nil in a list")
          if v == -1 then
            minus = minus + 1
          else
            assert(not seen[v], "delivered twice: " .. tostring(v))
            seen[v] = true
          end
        end
        for _ = 1, 1500 do
          for _ = 1, 40 do
            if not ch:try_send(n + 1) then break end
            n = n + 1
          end
          for _ = 1, 3 do setmetatable({}, mt) end
          local k, list = ch:recv_many(nil, max, 0)
          if k then for x = 1, k do got(list[x]) end end
        end
        collectgarbage()
        for _, v in ipairs(by_gc) do if v ~= -1 then got(v) end end
        while true do
          local v = ch:try_recv()
          if v == nil then break end
          got(v)
        end
        for v = 1, n do assert(seen[v], ("%s/%d: value %d lost"):format(mode, max, v)) end
        if mode == "send" then assert.equal(#by_gc, minus) end
      end
    end
  end))

  it("send_many puts what fits and says how many; recv_many takes up to max",
     H.async(function()
    local ch = baton.channel(4)
    assert.equal(4, ch:send_many({ 1, 2, 3, 4, 5, 6 }))
    assert.equal(0, ch:send_many({ 7 }, 2))           -- an empty range sends nothing
    local buf = { "x", "x", "x", "x", "stale" }
    assert.equal(3, ch:recv_many(buf, 3))
    assert.same({ 1, 2, 3, "x", "stale" }, buf)         -- buf[1..n] written, the rest left
    assert.equal(1, #ch)
    -- a sender waiting for room puts as many as fit once it is its turn
    local s = baton.spawn(function()
      local list, i = { "a", "b", "c", "d", "e", "f" }, 1
      local steps = {}
      while i <= #list do
        local k = ch:send_many(list, i)
        steps[#steps + 1] = k
        i = i + k
      end
      return steps
    end)
    until_true(function() return s:status() == "waiting" end)
    assert.equal(4, ch:recv_many(buf, 10))
    assert.same({ 4, "a", "b", "c" }, { buf[1], buf[2], buf[3], buf[4] })
    local _, steps = s:join()
    assert.same({ 3, 3 }, steps)
    -- a receiver woken for one value takes the others queued behind it too
    local r = baton.spawn(function()
      local b = {}
      local n = ch:recv_many(b, 10)
      return n, b
    end)
    assert.equal(3, ch:recv_many(buf, 10))              -- d, e, f
    until_true(function() return r:status() == "waiting" end)
    assert.equal(2, ch:send_many({ "p", "q" }))
    local ok, n, b = r:join()
    assert.is_true(ok)
    assert.equal(2, n)
    assert.same({ "p", "q" }, b)
  end))

  it("recv_many(nil, max) returns a new list: the ring itself when it takes everything, "
     .. "and the channel goes on with a fresh one", H.async(function()
    local ch = baton.channel(4)
    assert.equal(4, ch:send_many({ "a", "b", "c", "d" }))
    local k, l1 = ch:recv_many(nil, 10)                  -- everything: the ring is handed over
    assert.equal(4, k)
    assert.same({ "a", "b", "c", "d" }, l1)
    assert.equal(0, #ch)
    assert.equal(3, ch:send_many({ "e", "f", "g" }))
    assert.same({ "a", "b", "c", "d" }, l1)              -- the list given away is not reused
    local k2, l2 = ch:recv_many(nil, 2)                  -- part of it: copied
    assert.equal(2, k2)
    assert.same({ "e", "f" }, l2)
    assert.is_true(ch:send("h"))
    assert.equal("g", ch:recv())
    local k3, l3 = ch:recv_many(nil, 8)
    assert.same({ 1, { "h" } }, { k3, l3 })
    local buf = {}
    assert.is_true(ch:send("i"))
    local k4, b4 = ch:recv_many(buf, 8)
    assert.equal(1, k4)
    assert.equal(buf, b4)                                 -- a buffer given is the list returned
    -- values sent after a hand-over keep their order across the ring's wrap
    for round = 1, 50 do
      local n = round % 4 + 1
      local list = {}
      for j = 1, n do list[j] = round * 10 + j end
      assert.equal(n, ch:send_many(list))
      local m, got = ch:recv_many(nil, round % 2 == 0 and 8 or n - 1 > 0 and n - 1 or 1)
      for j = 1, m do assert.equal(round * 10 + j, got[j]) end
      while #ch > 0 do ch:recv() end
    end
  end))

  it("keeps nothing it has passed on: a list recv_many(nil) returns holds exactly its values "
     .. "(numbers taken one by one leave no trace in it), and received tables are collectable",
     H.async(function()
    -- a number taken by recv stays in its slot until a put overwrites it (it keeps nothing
    -- alive); a ring handed over must still hold only the values taken
    local ch = baton.channel(8)
    for i = 1, 6 do assert.is_true(ch:send(i)) end
    for i = 1, 6 do assert.equal(i, ch:recv()) end
    for i = 1, 3 do assert.is_true(ch:send(i * 10)) end
    local k, l = ch:recv_many(nil, 8)
    assert.equal(3, k)
    assert.same({ 10, 20, 30 }, l)
    -- the same at random: every kind of value, the ring wrapping and growing (a receiver
    -- waiting lets a sender put one more), each list checked against a model queue
    math.randomseed(5)
    local kinds = { function(i) return i end, function(i) return i % 2 == 0 end,
                    function(i) return "s" .. i end, function(i) return { i } end,
                    function(i) return i + 0.5 end }
    for cap = 1, 5 do
      local c = baton.channel(cap)
      local model, first, last, n, buf = {}, 1, 0, 0, {}
      for _ = 1, 2000 do
        local op = math.random(1, 4)
        if op <= 2 and #c < cap then                      -- send one, or a few
          local m = op == 1 and 1 or math.random(1, cap - #c)
          local list = {}
          for j = 1, m do
            n = n + 1
            list[j] = kinds[math.random(#kinds)](n)
          end
          if m == 1 then assert.is_true(c:send(list[1]))
          else assert.equal(m, c:send_many(list)) end
          for j = 1, m do last = last + 1; model[last] = list[j] end
        elseif op == 3 and #c > 0 then                    -- take one
          assert.equal(model[first], c:recv())
          model[first], first = nil, first + 1
        elseif #c > 0 then                                -- take some into a new list,
          local into = math.random(2) == 1 and buf or nil -- or into a buffer
          local got, got_l = c:recv_many(into, math.random(1, cap + 1))
          if into then
            assert.equal(buf, got_l)
          else
            assert.equal(got, #got_l)
            assert.is_nil(next(got_l, got))               -- nothing after the values taken
          end
          for j = 1, got do
            assert.equal(model[first], got_l[j])
            model[first], first = nil, first + 1
          end
        end
      end
    end
    -- tables (and strings, functions, userdata) are cleared from the ring once taken
    local weak = setmetatable({}, { __mode = "v" })
    local t = baton.channel(4)
    for i = 1, 3 do
      local v = { i }
      weak[i] = v
      assert.is_true(t:send(v))
    end
    for i = 1, 3 do assert.equal(i, t:recv()[1]) end
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(weak))
  end))

  it("capacity 64 in batches of 64 (W5b's shape): each batch arrives whole and in order, "
     .. "the value put beside the one reserved for the consumer included", H.async(function()
    local ch = baton.channel(64)
    local n = 64 * 40
    local consumer = baton.spawn(function()
      local got, lists = {}, 0
      while true do
        local k, l = ch:recv_many(nil, 64)
        if not k then return got, lists end
        assert.equal(k, #l)
        assert.is_nil(next(l, k))
        for j = 1, k do got[#got + 1] = l[j] end
        lists = lists + 1
      end
    end)
    local buf, i = {}, 1
    while i <= n do
      for k = 1, 64 do buf[k] = i + k - 1 end
      local k = 1
      while k <= 64 do k = k + ch:send_many(buf, k, 64) end
      i = i + 64
    end
    ch:close()
    local ok, got, lists = consumer:join()
    assert.is_true(ok)
    assert.equal(n, #got)
    for j = 1, n do assert.equal(j, got[j]) end
    assert.is_true(lists > 40, "the 65th value of a turn came in a list of its own")
  end))

  it("rendezvous: send_many hands over as many values as receivers wait", H.async(function()
    local ch = baton.channel(0)
    assert.equal("busy", select(3, ch:try_send(1)))
    local rs = {}
    for i = 1, 2 do rs[i] = baton.spawn(function() return ch:recv() end) end
    until_true(function() return rs[2]:status() == "waiting" end)
    local s = baton.spawn(function() return ch:send_many({ "a", "b", "c" }) end)
    assert.same({ true, 2 }, { s:join() })
    assert.same({ true, "a" }, { rs[1]:join() })
    assert.same({ true, "b" }, { rs[2]:join() })
    assert.equal(0, #ch)
  end))

  it("an aborted recv_many takes nothing; an aborted send_many sends nothing", H.async(function()
    local ch = baton.channel(2)
    local r1 = baton.spawn(function() return ch:recv_many({}, 5) end)
    local r2 = baton.spawn(function() local b = {} return ch:recv_many(b, 5), b end)
    until_true(function() return r2:status() == "waiting" end)
    assert.equal(1, ch:send_many({ "v" }))             -- r1 woken for it...
    r1:abort()                                          -- ...aborted before it ran
    assert.equal("cancelled", select(2, r1:join()).kind)
    local ok, n, b = r2:join()
    assert.is_true(ok)
    assert.equal(1, n)
    assert.equal("v", b[1])
    assert.equal(2, ch:send_many({ 1, 2 }))
    local s = baton.spawn(function() return ch:send_many({ 3, 4 }) end)
    until_true(function() return s:status() == "waiting" end)
    assert.equal(1, ch:recv())                          -- room: s woken...
    s:abort()                                           -- ...and aborted before it ran
    assert.is_false((s:join()))
    assert.equal(1, #ch)
    assert.equal(2, ch:recv())
    assert.equal("busy", select(3, ch:try_recv()))
  end))

  it("report closed, drain first, and time out with nothing done", H.async(function()
    local ch = baton.channel(2)
    H.assert_failure("baton.channel:recv_many", "timeout", ch:recv_many({}, 4, 5))
    assert.equal(2, ch:send_many({ 1, 2, 3 }))
    H.assert_failure("baton.channel:send_many", "timeout", ch:send_many({ 3 }, 1, 1, 5))
    assert.equal(2, #ch)
    ch:close()
    H.assert_failure("baton.channel:send_many", "closed", ch:send_many({ 9 }))
    local buf = {}
    assert.equal(2, ch:recv_many(buf, 9))
    H.assert_failure("baton.channel:recv_many", "closed", ch:recv_many(buf, 9))
    -- a waiting receiver is woken with closed
    local ch2 = baton.channel(1)
    local r = baton.spawn(function() return ch2:recv_many({}, 2) end)
    until_true(function() return r:status() == "waiting" end)
    ch2:close()
    assert.equal("closed", select(4, r:join()))
  end))

  it("raise on misuse, with nothing sent for a list holding a nil", H.async(function()
    local ch = baton.channel(4)
    H.raises_misuse("baton.channel:send_many", 1, "list", "list%[2%] is nil", ch.send_many, ch,
                    { 1, nil, 3 }, 1, 3)
    assert.equal(0, #ch)
    assert.equal(3, ch:send_many({ 1, 2, 3 }))          -- the ring was left clean
    H.raises_misuse("baton.channel:send_many", 1, "list", "expected table", ch.send_many, ch, 5)
    H.raises_misuse("baton.channel:send_many", 2, "i", "got 0", ch.send_many, ch, {}, 0)
    H.raises_misuse("baton.channel:recv_many", 1, "buf", "expected table or nil", ch.recv_many,
                    ch, 5, 1)
    H.raises_misuse("baton.channel:recv_many", 2, "max", "got 0", ch.recv_many, ch, {}, 0)
    assert.equal(3, #ch)
  end))

  it("hostile lists: j far beyond #list on a large channel refuses without growing the ring; "
     .. "metatables are not consulted; buf may be the list", H.async(function()
    local ch = baton.channel(1 << 40)
    -- j reaches far past the list's end: refused at the first nil, nothing sent, and the
    -- ring keeps its size (a later recv_many(nil) must not allocate 2^22 slots, 64 MiB)
    H.raises_misuse("baton.channel:send_many", 1, "list", "list%[4%] is nil", ch.send_many, ch,
                    { 1, 2, 3 }, 1, 1 << 22)
    assert.equal(0, #ch)
    assert.equal(1, ch:send_many({ "x" }))
    collectgarbage()
    local before = collectgarbage("count")
    local k, l = ch:recv_many(nil, 5)
    assert.equal(1, k)
    assert.same({ "x" }, l)
    assert.is_true(collectgarbage("count") - before < 1024, "the ring grew for values never sent")
    -- a hole in the middle, behind a huge i/j pair
    H.raises_misuse("baton.channel:send_many", 1, "list", "is nil", ch.send_many, ch, {},
                    (1 << 53) - 1, 1 << 53)
    -- __index and __newindex are not consulted: the list is read raw, the buf written raw
    local seen = false
    local list = setmetatable({ 1, 2 }, { __index = function() seen = true return "ghost" end })
    H.raises_misuse("baton.channel:send_many", 1, "list", "list%[3%] is nil", ch.send_many, ch,
                    list, 1, 3)
    assert.is_false(seen)
    assert.equal(2, ch:send_many(list))
    local buf = setmetatable({}, { __newindex = function() seen = true end })
    assert.equal(2, ch:recv_many(buf, 5))
    assert.is_false(seen)
    assert.equal(1, rawget(buf, 1))
    -- the same table as list and buf: sent values are copied out before it is written
    local t = { "a", "b", "c" }
    assert.equal(3, ch:send_many(t))
    assert.equal(3, ch:recv_many(t, 3))
    assert.same({ "a", "b", "c" }, t)
    assert.equal(0, #ch)
  end))
end)
