-- baton.runner: a submitted session is held in flight until its completion re-drives it
-- (duplicates and global pokes are suppressed meanwhile), the startup drive, the poll
-- (recovers a lost poke, is suppressed while work is in flight, delays missed ticks instead
-- of bunching them), handler failures (raised or returned), stop/<close>/the end of
-- baton.run leaving nothing running, pokes to a stopped runner ("closed"), configuration
-- errors.
local baton = require "baton"
local H = require "spec.helper"

local QUIET = 60000  -- a poll period no spec waits for

-- A handler that records each request and answers from `responses`, then "idle".
local function recording(responses)
  local rec = { requests = {} }
  responses = responses or {}
  function rec.handler(req)
    rec.requests[#rec.requests + 1] = req
    return table.remove(responses, 1) or "idle"
  end
  return rec
end

-- Waits until pred() holds (bounded: a failing spec fails, it does not hang).
local function wait_until(pred, what)
  local deadline = baton.now() + 5000
  while not pred() do
    assert(baton.now() < deadline, "timed out waiting for " .. (what or "a condition"))
    baton.yield()
    if not pred() then baton.sleep(1) end
  end
end

-- Waits until the runner has served everything queued and no drive is out.
local function settle(r)
  baton.yield()
  wait_until(function() return r:pending() == 0 end, "the runner to settle")
end

local function with_warnings(fn)
  local got = {}
  baton.on_warning(function(m) got[#got + 1] = m end)
  local ok, err = pcall(fn, got)
  baton.on_warning(nil)
  assert(ok, err)
  return got
end

describe("baton.runner", function()
  it("drives once at startup: global, reason 'startup', trace_idle false", H.async(function()
    local rec = recording()
    local r = baton.runner { handler = rec.handler, poll_ms = QUIET }
    assert.equal("new", r:status())
    r:start()
    assert.equal("running", r:status())
    settle(r)
    assert.equal(1, #rec.requests)
    assert.same({ reason = "startup", trace_idle = false }, rec.requests[1])
    r:stop()
  end))

  it("holds a submitted session in flight until complete_session, which re-drives it",
     H.async(function()
    local rec = recording { "idle", { submitted = "root" } }
    local r = baton.runner { handler = rec.handler, poll_ms = QUIET }
    r:start()
    settle(r)

    r:poke_session("root", "process_wake")
    settle(r)
    local first = rec.requests[2]
    assert.equal("root", first.session_id)
    assert.equal("process_wake", first.reason)
    assert.is_true(first.trace_idle)
    assert.same({ "root" }, r:inflight())

    r:poke_session("root", "duplicate")
    settle(r)
    assert.equal(2, #rec.requests, "an in-flight session suppresses a duplicate submission")

    r:poke("poll")
    settle(r)
    assert.equal(2, #rec.requests, "a global poke does not drive while work is in flight")

    r:complete_session("root", "queued_turn_completed")
    settle(r)
    local resumed = rec.requests[3]
    assert.truthy(resumed, "completion re-drives the session")
    assert.equal("root", resumed.session_id)
    assert.equal("queued_turn_completed", resumed.reason)
    assert.is_false(resumed.trace_idle)
    assert.same({}, r:inflight())
    r:stop()
  end))

  it("suppresses per session: another session is still driven", H.async(function()
    local rec = recording { "idle", { submitted = "a" }, { submitted = "b" } }
    local r = baton.runner { handler = rec.handler, poll_ms = QUIET }
    r:start()
    r:poke_session("a", "wake")
    r:poke_session("b", "wake")
    r:poke_session("a", "again")
    settle(r)
    assert.equal(3, #rec.requests)
    assert.equal("b", rec.requests[3].session_id)
    local ids = r:inflight()
    table.sort(ids)
    assert.same({ "a", "b" }, ids)
    r:stop()
  end))

  it("serves pokes made before start after the startup drive, in order", H.async(function()
    local rec = recording()
    local r = baton.runner { handler = rec.handler, poll_ms = QUIET }
    assert.is_true(r:poke("early"))
    assert.is_true(r:poke_session("s", "early-s"))
    r:start()
    settle(r)
    local reasons = {}
    for i, q in ipairs(rec.requests) do reasons[i] = q.reason end
    assert.same({ "startup", "early", "early-s" }, reasons)
    r:stop()
  end))

  it("runs the handler in a task, where it may await", H.async(function()
    local in_task, slept
    local r = baton.runner { poll_ms = QUIET, handler = function()
      in_task = baton.current() ~= nil
      baton.sleep(2)
      slept = true
      return "idle"
    end }
    r:start()
    settle(r)
    assert.is_true(in_task)
    assert.is_true(slept)
    r:stop()
  end))

  describe("the poll", function()
    it("recovers a lost poke", H.async(function()
      local queue = {}  -- work that arrives without any poke
      local submitted_by
      local r = baton.runner { poll_ms = 20, handler = function(req)
        local job = table.remove(queue, 1)
        if not job then return "idle" end
        submitted_by = req.reason
        return { submitted = job }
      end }
      r:start()
      settle(r)
      queue[1] = "lost"  -- ... and its poke was dropped
      wait_until(function() return submitted_by ~= nil end, "a poll to find the work")
      assert.equal("poll", submitted_by)
      assert.same({ "lost" }, r:inflight())
      r:stop()
    end))

    it("does not drive while a session is in flight, and resumes after completion",
       H.async(function()
      local rec = recording { { submitted = "s" } }
      local r = baton.runner { handler = rec.handler, poll_ms = 10 }
      r:start()
      settle(r)
      baton.sleep(60)  -- several periods
      assert.equal(1, #rec.requests)
      r:complete_session("s", "done")
      wait_until(function() return #rec.requests >= 3 end, "polls after completion")
      assert.equal("done", rec.requests[2].reason)
      assert.equal("poll", rec.requests[3].reason)
      r:stop()
    end))

    it("delays missed ticks instead of bunching them", H.async(function()
      local P = 20
      local polls, slow_end = {}, nil
      local r = baton.runner { poll_ms = P, handler = function(req)
        if req.reason ~= "poll" then return "idle" end
        polls[#polls + 1] = baton.now()
        if #polls == 1 then  -- one drive that outlasts five periods
          baton.sleep(5 * P)
          slow_end = baton.now()
        end
        return "idle"
      end }
      r:start()
      wait_until(function() return #polls >= 3 end, "three polls")
      r:stop()
      -- The ticks missed during the slow drive are not replayed: one poll right after it,
      -- then the next a whole period later (Tokio's MissedTickBehavior::Delay).
      assert.is_true(polls[2] >= slow_end)
      assert.is_true(polls[3] - polls[2] >= P - 1,
                     string.format("bunched: polls at +%d and +%d ms", polls[2] - slow_end,
                                   polls[3] - slow_end))
    end))
  end)

  describe("the handler's outcome", function()
    it("an error is reported through baton.on_warning and the runner goes on",
       H.async(function()
      local calls = 0
      local r = baton.runner { poll_ms = QUIET, handler = function(req)
        calls = calls + 1
        if req.reason == "startup" then error("handler exploded") end
        return "idle"
      end }
      local w = with_warnings(function(w)
        r:start()
        settle(r)
        assert.equal(1, #w)
        r:poke("again")
        settle(r)
      end)
      assert.equal(2, calls)
      assert.equal("running", r:status())
      assert.matches("baton.runner: the handler failed %(reason 'startup', kind 'error'%)", w[1])
      assert.matches("handler exploded", w[1])
      assert.matches("stack traceback", w[1])
      r:stop()
    end))

    it("a returned failure (nil, msg, kind) is reported like a raised one, not taken as idle",
       H.async(function()
      local r = baton.runner { poll_ms = QUIET, handler = function(req)
        if req.reason == "startup" then return "idle" end
        if req.reason == "io" then return nil, "baton.process.run: cannot start 'x'", "io" end
        error(baton.error("timeout", "the queue did not answer", { timeout_ms = 5 }))
      end }
      local w = with_warnings(function()
        r:start()
        r:poke("io")
        r:poke("raise")
        settle(r)
      end)
      assert.equal(2, #w)
      assert.equal("baton.runner: the handler failed (reason 'io', kind 'io'): " ..
                   "baton.process.run: cannot start 'x'", w[1])
      assert.equal("baton.runner: the handler failed (reason 'raise', kind 'timeout'): " ..
                   "the queue did not answer", w[2])
      assert.equal("running", r:status())
      r:stop()
    end))

    it("anything but 'idle', nil or { submitted = id } is reported and taken as idle",
       H.async(function()
      local r = baton.runner { poll_ms = QUIET, handler = function(req)
        if req.reason == "startup" then return 42 end
        if req.reason == "t" then return { submited = "typo" } end
        if req.reason == "trap" then  -- metamethods that raise: not run (the result is data)
          return setmetatable({}, { __index = function() error("idx") end,
                                    __tostring = function() error("str") end })
        end
        return nil
      end }
      local w = with_warnings(function()
        r:start()
        r:poke("t")
        r:poke("nil")
        settle(r)
        r:poke("trap")
        settle(r)
      end)
      assert.equal(3, #w)
      assert.matches("returned 42", w[1])
      assert.matches("without a string 'submitted'", w[2])
      assert.matches("without a string 'submitted'", w[3])
      assert.same({}, r:inflight())
      assert.equal("running", r:status())   -- the runner goes on
      r:stop()
    end))
  end)

  describe("stopping", function()
    it("stop() cancels the poll and leaves no timer and no task", H.async(function()
      local r = baton.runner { handler = function() return "idle" end, poll_ms = 20 }
      r:start()
      settle(r)
      assert.equal(1, baton.stats().timers)  -- the poll, armed while the driver is parked
      r:stop()
      local left = H.leftovers()
      assert.equal(0, left.tasks)
      assert.equal(0, left.timers)
      assert.equal("stopped", r:status())
      -- Dropped: a failure of the world ("closed"), not an error (a worker completing a
      -- session during shutdown must not crash).
      local msg = H.assert_failure("baton.runner:poke", "closed", r:poke("late"))
      assert.equal("baton.runner:poke: the runner is stopped", msg)
      H.assert_failure("baton.runner:complete_session", "closed", r:complete_session("s", "late"))
      H.assert_failure("baton.runner:poke_session", "closed", r:poke_session("s", "late"))
    end))

    it("stop() cancels a handler that is awaiting and waits for it to unwind",
       H.async(function()
      local unwound = false
      local r = baton.runner { poll_ms = QUIET, handler = function()
        local _ <close> = setmetatable({}, { __close = function() unwound = true end })
        baton.sleep(10000)
      end }
      r:start()
      baton.yield()
      r:stop()
      assert.is_true(unwound)
      assert.equal(0, H.leftovers().tasks)
    end))

    it("stop() from inside the handler ends the runner once the handler returns",
       H.async(function()
      local r
      local calls = 0
      r = baton.runner { poll_ms = 10, handler = function()
        calls = calls + 1
        r:stop()
        return "idle"
      end }
      r:start()
      baton.sleep(40)
      assert.equal(1, calls)
      assert.equal("stopped", r:status())
    end))

    it("a runner in a <close> variable stops when its scope ends", H.async(function()
      do
        local r <close> = baton.runner { handler = function() return "idle" end, poll_ms = 20 }
        r:start()
        settle(r)
      end
      baton.yield()  -- the aborted driver unwinds (a __close handler cannot wait)
      local left = H.leftovers()
      assert.equal(0, left.tasks)
      assert.equal(0, left.timers)
    end))

    it("a running runner is not collected: its driver holds it", H.async(function()
      local drives = 0
      local weak = setmetatable({}, { __mode = "v" })
      weak[1] = baton.runner { poll_ms = 10, handler = function() drives = drives + 1 end }
      weak[1]:start()
      collectgarbage()
      collectgarbage()
      baton.sleep(35)
      assert.truthy(weak[1])
      assert.is_true(drives >= 2)
      weak[1]:stop()
    end))

    it("the end of baton.run stops a runner left running", function()
      local r = baton.runner { handler = function() return "idle" end, poll_ms = 10 }
      baton.run(function()
        r:start()
        baton.sleep(25)
      end)
      assert.equal("stopped", r:status())
      local s = baton.stats()
      assert.equal(0, s.tasks)
      assert.equal(0, s.timers)
      assert.is_nil(r:poke("after"))
    end)
  end)

  describe("configuration", function()
    it("raises on bad config, naming the key", function()
      local f = function() return "idle" end
      assert.has_error(function() baton.runner { handler = f, pol_ms = 5 } end,
                       "baton.runner: bad argument #1 'pol_ms' (unknown option)")
      assert.has_error(function() baton.runner { pol_ms = 5 } end,  -- the typo first
                       "baton.runner: bad argument #1 'pol_ms' (unknown option)")
      assert.has_error(function() baton.runner { poll_ms = 5 } end,
                       "baton.runner: bad argument #1 'handler' (expected function, got nil)")
      assert.has_error(function() baton.runner { handler = f, poll_ms = 0 } end,
                       "baton.runner: bad argument #1 'poll_ms' (expected integer >= 1, got 0)")
      assert.has_error(function() baton.runner { handler = f, poll_ms = 2.5 } end,
                       "baton.runner: bad argument #1 'poll_ms' (expected integer >= 1, got 2.5)")
      assert.has_error(function() baton.runner() end,
                       "baton.runner: bad argument #1 'options' (expected table, got no value)")
    end)

    it("raises on misuse: a second start, a missing reason", H.async(function()
      local r = baton.runner { handler = function() return "idle" end, poll_ms = QUIET }
      H.raises_misuse("baton.runner:poke", 1, "reason", "expected string, got no value", r.poke, r)
      H.raises_misuse("baton.runner:poke_session", 2, "reason", "expected string, got no value",
                      r.poke_session, r, "s")
      H.raises_misuse("baton.runner:complete_session", 1, "session_id",
                      "expected string, got true", r.complete_session, r, true, "done")
      assert.is_true(r:complete_session(5, "done"))  -- a number is a session id too
      r:start()
      assert.has_error(function() r:start() end,
                       "baton.runner:start: the runner is running (start it once)")
      r:stop()
      assert.has_error(function() r:start() end,
                       "baton.runner:start: the runner is stopped (start it once)")
    end))
  end)
end)
