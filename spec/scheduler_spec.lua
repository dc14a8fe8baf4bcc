-- The scheduler's start order (docs/architecture.md, "The scheduler"): woken tasks run
-- before fresh ones; a fresh task starts when no woken task is ready, or after at most 64
-- resumes of woken tasks; a task that yields lets the tasks it spawned start first; so the
-- acquire-inside idiom starts its tasks as permits come back instead of parking them all.
local baton = require "baton"
local H = require "spec.helper"

describe("start order", function()
  it("runs a woken task before a fresh one", H.async(function()
    local log = {}
    local a = baton.spawn(function()
      log[#log + 1] = "a1"
      baton.yield()
      log[#log + 1] = "a2"
    end)
    local b = baton.spawn(function() log[#log + 1] = "b" end)
    a:join()
    b:join()
    assert.same({ "a1", "a2", "b" }, log)
  end))

  it("starts what a task spawned before the task resumes from its yield", H.async(function()
    local log = {}
    local parent = baton.spawn(function()
      log[#log + 1] = "parent"
      local k1 = baton.spawn(function() log[#log + 1] = "k1" end)
      local k2 = baton.spawn(function() log[#log + 1] = "k2" end)
      baton.yield()
      log[#log + 1] = k1:status() .. " " .. k2:status()
    end)
    local other = baton.spawn(function() log[#log + 1] = "other" end)
    parent:join()
    other:join()
    -- parent and other were both fresh; parent started first, its children ran at its
    -- yield, and parent resumed (woken) before the older fresh sibling started
    assert.same({ "parent", "k1", "k2", "done done", "other" }, log)
  end))

  it("starts a fresh task after at most 64 resumes of woken tasks", H.async(function()
    local resumes, stop = 0, false
    local g = baton.group()
    for _ = 1, 4 do
      g:spawn(function()
        while not stop do
          resumes = resumes + 1
          baton.yield()
        end
      end)
    end
    baton.sleep(5)  -- the pingers are all started and keep the woken queue busy
    local before = resumes
    local started_at
    local f = baton.spawn(function() started_at = resumes end)
    f:join()
    stop = true
    g:join_all()
    local waited = started_at - before
    assert.is_true(waited >= 1, "a woken task should run first")
    assert.is_true(waited <= 64, "the fresh task waited " .. waited .. " resumes")
  end))

  it("does not park a task per job when each job acquires inside its body", H.async(function()
    local sem = baton.semaphore(8)
    local g = baton.group()
    local running, most = 0, 0
    for _ = 1, 2000 do
      g:spawn(function()
        running = running + 1
        if running > most then most = running end
        local _ <close> = sem:acquire()
        baton.yield()
        running = running - 1
      end)
    end
    assert.equal(2000, #g:join_all())
    assert.equal(8, sem:available())
    assert.is_true(most <= 8, most .. " jobs were started at once")
  end))
end)
