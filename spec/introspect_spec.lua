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
  it("lists a sleeping task, a semaphore waiter, a process waiter and a joiner with what each waits on",
     H.async(function()
    local s = baton.semaphore(1)
    local held <close> = s:acquire()
    local sleeper = baton.spawn(function() baton.sleep(5000) end)
    local waiter = baton.spawn(function() s:acquire() end)
    local p = baton.process.spawn{"sleep", "10"}
    local procw = baton.spawn(function() p:wait() end)
    local joiner = baton.spawn(function() sleeper:join() end)
    baton.sleep(20)
    local list = baton.tasks()
    local t = by_id(list)
    assert.equal("waiting", t[sleeper.id].status)
    assert.equal("baton.sleep", t[sleeper.id].waits)
    assert.is_true(t[sleeper.id].due_ms > 3000 and t[sleeper.id].due_ms <= 5000)
    assert.equal("baton.semaphore:acquire", t[waiter.id].waits)
    assert.equal("baton.process:wait", t[procw.id].waits)
    assert.equal("baton.task:join", t[joiner.id].waits)
    assert.equal(joiner, t[joiner.id].task)
    local me = t[baton.current().id]
    assert.equal("running", me.status)
    assert.is_nil(me.waits)
    p:kill()
    for _, x in ipairs{sleeper, waiter, procw, joiner} do x:abort() end
    p:wait()
    baton.sleep(1)
    for _, e in ipairs(baton.tasks()) do
      assert.is_true(e.id == baton.current().id, "only the main task is left")
    end
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
    H.raises("bad argument", t.set_name, t, {})
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
    assert.matches("task " .. stuck.id .. " stuck%-acquirer %(baton.semaphore:acquire%)", err)
    assert.matches("%[main%] [^ ]*introspect_spec.lua:%d+ %(baton.task:join%)", err)
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
    assert.equal("baton.http.request", e.waits)
    t:abort()
    t:join()
  end))
end)
