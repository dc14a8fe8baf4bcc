-- A property spec: thousands of random operations over every await baton has (spawn,
-- sleep, timeout, semaphore and budget permits, groups closed early, futures, processes
-- run, spawned and aborted, HTTP requests and streams aborted mid-way), with a chaos task
-- aborting live tasks at random moments. Whatever the interleaving, the run must end with
-- every semaphore full, every budget empty, no child process, the descriptor count back to
-- where it was and baton.stats() at zero.
--
-- BATON_PROP_OPS sets the number of operations (10,000 by default, fewer under the
-- sanitizers); BATON_PROP_SEED replays a run (the seed is printed when a run fails).
local baton = require "baton"
local H = require "spec.helper"

local OPS = tonumber(os.getenv("BATON_PROP_OPS"))
  or (os.getenv("BATON_CFLAGS") and 2000 or 10000)
local SEED = tonumber(os.getenv("BATON_PROP_SEED")) or os.time()

-- Every child carries this in its environment (grandchildren inherit it), so a process
-- left behind is found even after it was reparented.
local MARKV = SEED .. "." .. math.random(1e9)
local MARK = "BATON_PROP_MARK=" .. MARKV
local ENV = { PATH = os.getenv("PATH"), BATON_PROP_MARK = MARKV }

local server = H.http_server()  -- spec/fixtures/http/server.py
local url = function(path) return server:url(path) end

local open_fds = H.open_fds

-- Processes (children, grandchildren, orphans alike) whose environment carries `mark`.
local function marked(mark)
  local out = {}
  for pid in require("lfs").dir("/proc") do
    local f = pid:match("^%d+$") and io.open("/proc/" .. pid .. "/environ", "rb")
    if f then
      local env = f:read("a") or ""
      f:close()
      if env:find(mark, 1, true) then out[#out + 1] = pid end
    end
  end
  return out
end

describe("baton under random operations", function()
  lazy_setup(function() server:start() end)
  lazy_teardown(function() server:stop() end)

  it(("leaves nothing behind after %d operations (seed %d)"):format(OPS, SEED), function()
    -- libuv opens /dev/null once (close-on-exec) at the first spawn and keeps it: a warm-up
    -- run makes the baseline.
    baton.run(function() baton.process.run { "true" } end)
    local fds0 = open_fds()
    local rnd = math.random
    math.randomseed(SEED)

    local sems = { baton.semaphore(1), baton.semaphore(3), baton.semaphore(8) }
    local budget = baton.budget { cap = 2 }
    local done, live = 0, {}
    local counts = {}
    local function count(name) counts[name] = (counts[name] or 0) + 1 end

    -- Each operation ends normally, with a failure of the world, or with the cancellation
    -- error (raised by an abort); anything else is a bug.
    local function expect_ok_or_cancel(ok, err)
      if ok then return end
      local kind = type(err) == "table" and err.kind or nil
      assert(kind == "cancelled", "unexpected error: " .. tostring(err))
    end

    local ops = {
      function() baton.sleep(rnd(0, 3)) end,
      function() baton.yield() end,
      function()  -- a timeout around a sleep that may or may not outlast it
        local r = baton.timeout(rnd(0, 4), function() baton.sleep(rnd(0, 4)) return 1 end)
        assert(r == 1 or r == nil)
      end,
      function()  -- a permit held across an await, released by <close> (or by an abort)
        local s = sems[rnd(#sems)]
        local p <close> = s:acquire(1, rnd(0, 5))
        if p then baton.sleep(rnd(0, 2)) end
      end,
      function()  -- a budget slot held across an await
        local p <close> = budget:try_acquire("k" .. rnd(3))
        if p then baton.sleep(rnd(0, 2)) end
      end,
      function()  -- a group closed early, its tasks holding permits and sleeping
        local g <close> = baton.group()
        for _ = 1, rnd(1, 4) do
          g:spawn(function()
            local p <close> = sems[rnd(#sems)]:acquire()
            baton.sleep(rnd(0, 5))
          end)
        end
        if rnd() < 0.5 then g:wait_within(rnd(0, 3)) else g:join_all() end
      end,
      function()  -- a bounded group aborted while jobs still queue for the gate
        local g <close> = baton.group { limit = sems[rnd(#sems)] }
        for _ = 1, rnd(1, 6) do g:spawn(baton.sleep, rnd(0, 3)) end
        g:join_next(rnd(0, 2))
      end,
      function()  -- a future set by one task, awaited by others with deadlines
        local f = baton.future()
        local setter = baton.spawn(function() baton.sleep(rnd(0, 3)) f:set(7) end)
        local waiter <close> = baton.spawn(function() return f:wait(rnd(0, 4)) end)
        local v = f:wait(rnd(0, 5))
        assert(v == 7 or v == nil)
        setter:join()
      end,
      function()  -- a spawned task joined with a deadline, then aborted by <close>
        local t <close> = baton.spawn(function()
          local p <close> = sems[1]:acquire()
          baton.sleep(rnd(0, 4))
        end)
        t:join(rnd(0, 3))
      end,
      function()  -- a pipeline run, maybe timed out: the shell and its children all go
        count("process.run")
        local long = rnd() < 0.5
        local r = baton.process.run { "/bin/sh", "-c",
                                      long and "sleep 5 | cat" or "sleep 0.00" .. rnd(0, 9),
                                      env = ENV, timeout_ms = rnd(1, 30) }
        assert(r == nil or r.code == 0)
      end,
      function()  -- a conversation with a spawned process, released by <close>
        count("process.spawn")
        local p <close> = baton.process.spawn { "cat", stdin = true, env = ENV }
        p:write("hello\n")
        local line = p:read_line(rnd(1, 200))
        assert(line == nil or line == "hello")
      end,
      function()  -- an HTTP request that may time out
        count("http.request")
        local r, _, kind = baton.http.request { url = url("/delay?ms=" .. rnd(0, 6)),
                                                timeout_ms = rnd(1, 20) }
        assert(r and r.status == 200 or kind == "timeout", kind)
      end,
      function()  -- an event stream read part-way, closed by <close>
        count("http.stream")
        local s <close> = baton.http.stream { url = url("/sse?n=5&ms=" .. rnd(0, 2)),
                                              timeout_ms = 2000 }
        if s then
          for _ = 1, rnd(0, 3) do if not s:read_event(rnd(1, 50)) then break end end
        end
      end,
    }
    -- Processes cost a fork each: weight the cheap operations up.
    local weights = { 12, 6, 10, 14, 8, 6, 6, 8, 8, 1, 1, 6, 3 }
    local bag = {}
    for i, w in ipairs(weights) do for _ = 1, w do bag[#bag + 1] = ops[i] end end

    local ok, err = pcall(baton.run, function()
      local g <close> = baton.group()
      local WORKERS = 24
      for w = 1, WORKERS do
        g:spawn(function()
          while done < OPS do
            done = done + 1
            local t = baton.spawn(bag[rnd(#bag)])
            live[t] = true
            expect_ok_or_cancel(t:join())
            live[t] = nil
          end
        end)
      end
      local chaos = baton.spawn(function()  -- aborts a live operation now and then
        while done < OPS do
          baton.sleep(rnd(0, 2))
          for t in pairs(live) do
            if rnd() < 0.2 then t:abort() end
          end
        end
      end)
      g:join_all()
      chaos:join()
      H.assert_clean()
    end)
    assert(ok, ("seed %d: %s"):format(SEED, tostring(err)))

    for i, s in ipairs(sems) do
      assert.equal(s:capacity(), s:available(), "semaphore " .. i .. " not full")
      assert.equal(0, s:waiting())
    end
    assert.same({}, budget:snapshot())
    local s = baton.stats()
    assert.same({ 0, 0, 0, 0, 0, 0 },
                { s.tasks, s.ready, s.timers, s.processes, s.handles, s.transfers })
    assert.same({}, marked(MARK), "processes left behind")
    assert.equal(fds0, open_fds(), "descriptors left open")
    assert.is_true(counts["process.run"] > 0 and counts["http.stream"] > 0)
  end)
end)
