-- baton.future: values set once, by any task or none, awaited by any number of tasks; a
-- waiter can time out or be aborted without disturbing the others.
local baton = require "baton"
local H = require "spec.helper"

describe("baton.future", function()
  it("delivers the values given to set to every waiter", H.async(function()
    local f = baton.future()
    local g <close> = baton.group()
    for _ = 1, 3 do g:spawn(function() return f:wait() end) end
    baton.sleep(10)
    assert.equal(3, f:waiting())
    assert.is_false(f:done())
    assert.is_true(f:set("v", nil, 3))
    for _, t in ipairs(g:join_all()) do
      assert.is_true(t.ok)
      assert.same({ n = 3, "v", nil, 3 }, table.pack(t:results()))
    end
    assert.equal(0, f:waiting())
  end))

  it("keeps the first values: a second set returns false", H.async(function()
    local f = baton.future()
    assert.is_true(f:set(1))
    assert.is_false(f:set(2))
    assert.is_true(f:done())
    assert.equal(1, f:wait())
    assert.equal(1, f:wait(0))
  end))

  it("can be set outside any task, and waited on afterwards", function()
    local f = baton.future()
    f:set("early")
    assert.equal("early", baton.run(function() return f:wait() end))
  end)

  it("times out a waiter with nil, msg, 'timeout', { timeout_ms } and unlinks it",
     H.async(function()
    local f = baton.future()
    local r = table.pack(H.timed(f.wait, f, 50))
    local elapsed = r[1]
    local _, _, detail = H.assert_failure("baton.future:wait", "timeout", table.unpack(r, 2, r.n))
    assert.equal(50, detail.timeout_ms)
    assert.is_true(elapsed >= 45)
    assert.equal(0, f:waiting())
    f:set("late")
    assert.equal("late", f:wait(50))
  end))

  it("unlinks an aborted waiter, and the others still get the values", H.async(function()
    local f = baton.future()
    local a = baton.spawn(function() return f:wait() end)
    local b = baton.spawn(function() return f:wait() end)
    baton.sleep(10)
    a:abort()
    local ok, err = a:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal(1, f:waiting())
    f:set(42)
    assert.same({ true, 42 }, { b:join() })
  end))

  it("is still a cancellation point when already set", H.async(function()
    local f = baton.future()
    f:set(1)
    local t = baton.spawn(function()
      baton.current():abort()
      return f:wait()
    end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
  end))

  it("may be set from a __close handler while its waiter unwinds", H.async(function()
    local f = baton.future()
    local t = baton.spawn(function()
      local _ <close> = setmetatable({}, { __close = function() f:set("closed") end })
      baton.sleep(10000)
    end)
    baton.sleep(10)
    t:abort()
    assert.equal("closed", f:wait(1000))
  end))

  it("raises when waited on outside a task, and on a bad timeout", function()
    local f = baton.future()
    H.raises("not inside a baton task", f.wait, f)
    baton.run(function()
      H.raises_misuse("baton.future:wait", 1, "timeout_ms", "expected milliseconds >= 0, got %-1",
                      f.wait, f, -1)
    end)
    H.raises_misuse("baton.future:wait", 0, "self", "expected baton.Future, got table",
                    baton.future().wait, {})
  end)
end)
