-- Task introspection: baton.tasks() (each live task and what it waits on) and the deadlock
-- error of baton.run, which names the tasks still waiting; task names.
local baton = require "baton"
local H = require "spec.helper"

local function by_id(list)
  local t = {}
  for _, e in ipairs(list) do t[e.id] = e end
  return t
end

describe("baton.tasks", function()
  it("lists a sleeping task, semaphore waiters, a process waiter and a joiner with what each waits on",
     H.async(function()
    local s = baton.semaphore(1, { name = "api" })
    local held <close> = s:acquire()
    local sleeper = baton.spawn(function() baton.sleep(5000) end)
    local first = baton.spawn(function() s:acquire() end)
    local waiter = baton.spawn(function() s:acquire() end)
    local p = baton.process.spawn{"sleep", "10"}
    local procw = baton.spawn(function() p:wait() end)
    local joiner = baton.spawn(function() sleeper:join() end)
    local chan = baton.channel(1)
    local recv = baton.spawn(function() chan:recv() end)
    baton.sleep(20)
    local list = baton.tasks()
    local t = by_id(list)
    assert.equal("waiting", t[sleeper.id].status)
    assert.matches("^sleep until %+%d+ ms$", t[sleeper.id].waits)
    local left = tonumber(t[sleeper.id].waits:match("%+(%d+)"))
    assert.is_true(left > 3000 and left <= 5000, left)
    assert.equal("baton.sleep", t[sleeper.id].call)
    assert.is_true(t[sleeper.id].due_ms > 3000 and t[sleeper.id].due_ms <= 5000)
    assert.equal('semaphore "api" (1st in line)', t[first.id].waits)
    assert.equal('semaphore "api" (2nd in line)', t[waiter.id].waits)
    assert.equal("baton.semaphore:acquire", t[waiter.id].call)
    assert.equal("process " .. p:pid(), t[procw.id].waits)
    assert.equal("join task " .. sleeper.id, t[joiner.id].waits)
    assert.equal("channel recv", t[recv.id].waits)
    assert.equal(joiner, t[joiner.id].task)
    for _, x in ipairs{sleeper, first, waiter, procw, joiner, recv} do
      assert.is_true(t[x.id].age_ms >= 15 and t[x.id].age_ms < 5000, t[x.id].age_ms)
      assert.is_nil(t[x.id].parent)  -- baton.spawn: owned by nobody
    end
    local me = t[baton.current().id]
    assert.equal("running", me.status)
    assert.is_nil(me.waits)
    p:kill()
    for _, x in ipairs{sleeper, first, waiter, procw, joiner, recv} do x:abort() end
    p:wait()
    baton.sleep(1)
    for _, e in ipairs(baton.tasks()) do
      assert.is_true(e.id == baton.current().id, "only the main task is left")
    end
  end))

  it("gives a group task its parent and group, and an activity's label as what it waits on",
     H.async(function()
    local g = baton.group{ name = "crew" }
    local member = g:spawn{ name = "crew-1", function(ms) baton.sleep(ms) end, 5000 }
    local act = baton.spawn{ name = "caller", function()
      return baton.activity("mcp tools/call echo", function(a, b)
        baton.sleep(5000)
        return a + b
      end, 1, 2)
    end }
    local quick = baton.spawn(function()
      return baton.activity("mcp ping", function(x) return x * 2 end, 21)
    end)
    baton.sleep(20)
    local t = by_id(baton.tasks())
    assert.equal("crew-1", t[member.id].name)
    assert.equal("crew", t[member.id].group)
    assert.equal(baton.current().id, t[member.id].parent)
    assert.equal("caller", t[act.id].name)
    assert.equal("mcp tools/call echo", t[act.id].waits)
    assert.equal("baton.sleep", t[act.id].call)
    assert.equal(42, select(2, quick:join()))
    act:abort()
    local ok, err = act:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    g:close()
  end))

  it("lists a task finishing (its body ended, the tasks it owns unwinding)", H.async(function()
    local owner = baton.spawn { name = "owner", function()
      local g = baton.group { name = "kids" }
      for _ = 1, 2 do
        g:spawn(function()   -- catches its cancellation once and unwinds over two turns
          pcall(baton.sleep, 10000)
          pcall(baton.yield)
          pcall(baton.yield)
        end)
      end
      baton.yield()
      return "done"
    end }
    local seen
    for _ = 1, 10 do
      baton.yield()
      if owner:status() == "finishing" then
        seen = by_id(baton.tasks())[owner.id]
        break
      end
    end
    assert.is_table(seen, "the finishing owner is listed")
    assert.equal("finishing", seen.status)
    assert.equal("owner", seen.name)
    assert.equal(owner, seen.task)
    assert.same({ true, "done" }, { owner:join() })
  end))

  it("spawn{} checks its options", H.async(function()
    H.raises("baton.spawn: bad argument #1 'nam' %(unknown option%)", baton.spawn,
             { nam = "x", function() end })
    H.raises("baton.spawn: bad argument #1 '%[1%]' %(expected function", baton.spawn, { name = "x" })
    H.raises("baton.spawn: bad argument #1 'name' %(expected string, got 1%)", baton.spawn,
             { name = 1, function() end })
    H.raises("baton.group:spawn: bad argument #1 '%[1%]' %(expected function", baton.group().spawn,
             baton.group(), {})
    local g = baton.group()
    local t = g:spawn{ function(a) return a end, 7 }
    assert.same({ true, 7 }, { t:join() })
    g:close()
  end))
end)

describe("task:traceback", function()
  it("shows where a parked task waits, and nil before it starts and after it ends",
     H.async(function()
    local t = baton.spawn(function()
      local function deep() baton.sleep(5000) end
      deep()
    end)
    assert.is_nil(t:traceback())
    baton.sleep(10)
    local tb = t:traceback()
    assert.matches("^task " .. t.id .. " waiting on sleep until %+%d+ ms\nstack traceback:", tb)
    assert.matches("in %a+ 'deep'", tb)
    assert.matches("introspect_spec.lua:%d+", tb)
    assert.matches("stack traceback:", baton.current():traceback())
    t:abort()
    t:join()
    assert.is_nil(t:traceback())
  end))
end)

describe("task names", function()
  it("default to the function's source line and can be set", H.async(function()
    local line = debug.getinfo(1, "l").currentline + 1
    local t = baton.spawn(function() baton.sleep(5000) end)
    local src = debug.getinfo(1, "S").short_src
    assert.equal(src .. ":" .. line, t:name())  -- pending: from the function
    baton.sleep(1)
    assert.equal("waiting", t:status())
    assert.equal(src .. ":" .. line, t:name())  -- started: from its coroutine
    assert.equal(src .. ":" .. line, by_id(baton.tasks())[t.id].name)
    assert.equal(t, t:set_name("fetcher"))
    assert.equal("fetcher", t:name())
    assert.equal("fetcher", by_id(baton.tasks())[t.id].name)
    H.raises_misuse("baton.task:set_name", 1, "name", "expected string, got table", t.set_name, t, {})
    H.raises_misuse("baton.task:set_name", 1, "name", "expected string, got nil", t.set_name, t, nil)
    H.raises_misuse("baton.task:set_name", 1, "name", "expected string, got 5", t.set_name, t, 5)
    t:abort()
    t:join()
    assert.equal("fetcher", t:name())
    local done = baton.spawn(function() end)
    done:join()
    assert.is_nil(done:name())  -- finished and never named: no default
  end))
end)

describe("baton.run deadlock", function()
  it("names the tasks still waiting and what they wait on", function()
    local stuck
    local ok, err = pcall(baton.run, function()
      local s = baton.semaphore(1)
      local p = s:acquire()
      stuck = baton.spawn(function() s:acquire() end)
      stuck:set_name("stuck-acquirer")
      stuck:join()
      p:release()
    end)
    assert.is_false(ok)
    assert.matches("deadlock", err)
    assert.matches("task " .. stuck.id .. " stuck%-acquirer %(semaphore %(1st in line%)%)", err)
    assert.matches("%[main%] [^ ]*introspect_spec.lua:%d+ %(join task " .. stuck.id .. "%)", err)
  end)

  it("lists whole entries while they fit, then says how many more wait", function()
    local ok, err = pcall(baton.run, function()
      local ch = baton.channel(1)
      for _ = 1, 200 do baton.spawn(function() ch:recv() end) end
      baton.sleep(1)
      ch:recv()
    end)
    assert.is_false(ok)
    local listed = select(2, err:gsub("%(channel recv%)", ""))
    local more = tonumber(err:match(", and (%d+) more waiting$"))
    assert.is_number(more, err)
    assert.equal(201, listed + more)
    assert.matches("%(channel recv%), and %d+ more waiting$", err)  -- no entry cut in two
  end)
end)

describe("baton.tasks over HTTP", function()
  local server = H.http_server()  -- spec/fixtures/http/server.py
  lazy_setup(function() server:start() end)
  lazy_teardown(function() server:stop() end)

  it("lists a task waiting on a request", H.http_async(function()
    local t = baton.spawn(function()
      return baton.http.request { url = server:url("/delay?ms=3000") }
    end)
    baton.sleep(50)
    local e = by_id(baton.tasks())[t.id]
    assert.equal("waiting", e.status)
    assert.equal("http GET 127.0.0.1:" .. server.port .. "/delay", e.waits)
    assert.equal("baton.http.request", e.call)
    t:abort()
    t:join()
  end))
end)

describe("baton.tasks over MCP", function()
  local real_it = H.mcp.gates("introspect_spec")

  real_it("lists a task waiting on a tool call as mcp tools/call <tool>", H.async(function()
    local c = H.mcp.everything()
    local t = baton.spawn(function()
      return c:call("trigger-long-running-operation", { duration = 1, steps = 2 })
    end)
    local e
    for _ = 1, 100 do  -- until the request is on its way
      baton.sleep(10)
      e = by_id(baton.tasks())[t.id]
      if e and e.waits then break end
    end
    assert.equal("waiting", e.status)
    assert.equal("mcp tools/call trigger-long-running-operation", e.waits)
    assert.truthy(assert(t:join()))
    c:close()
  end))
end)
