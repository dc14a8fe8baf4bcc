-- Tracing (docs/observability.md): BATON_TRACE=out.json baton script.lua and
-- baton.trace.start/stop write Chrome trace-event JSON that baton's own JSON reads back, with
-- one ph "X" span per finished task and per HTTP request, wait spans named as baton.tasks()
-- words them, a track per child process, limiter decisions as instant events, and end times
-- that never go backwards on a track (events are written as they complete).
local baton = require "baton"
local H = require "spec.helper"

local function read_trace(path)
  local text = assert(H.slurp(path, true), "no trace written at " .. path)
  local events = baton.json.decode(text)
  assert.equal("table", type(events))
  return events
end

local function spans(events, cat)
  local out = {}
  for _, e in ipairs(events) do
    if e.ph == "X" and (cat == nil or e.cat == cat) then out[#out + 1] = e end
  end
  return out
end

-- Per track: end times never decrease in file order, and spans nest (sorted by begin time,
-- each either inside the one open before it or after it ends).
local function check_tracks(events)
  local last_end, by_tid = {}, {}
  for _, e in ipairs(events) do
    if e.ph == "X" or e.ph == "i" then
      assert.is_true(e.ts >= 0, "negative ts")
      local stop = e.ts + (e.dur or 0)
      assert.is_true(e.dur == nil or e.dur >= 0)
      assert.is_true(stop + 1e-6 >= (last_end[e.tid] or 0),
                     ("track %d goes back in time at %s"):format(e.tid, e.name))
      last_end[e.tid] = stop
      if e.ph == "X" then
        by_tid[e.tid] = by_tid[e.tid] or {}
        table.insert(by_tid[e.tid], e)
      end
    end
  end
  for tid, list in pairs(by_tid) do
    table.sort(list, function(a, b)
      if a.ts ~= b.ts then return a.ts < b.ts end
      return a.dur > b.dur
    end)
    local open = {}
    for _, e in ipairs(list) do
      while #open > 0 and open[#open].ts + open[#open].dur <= e.ts + 1e-3 do table.remove(open) end
      local top = open[#open]
      if top then
        assert.is_true(e.ts + e.dur <= top.ts + top.dur + 1e-3,
                       ("track %d: %q overlaps %q without nesting"):format(tid, e.name, top.name))
      end
      open[#open + 1] = e
    end
  end
end

describe("BATON_TRACE", function()
  local server = H.http_server()  -- spec/fixtures/http/server.py
  lazy_setup(function() server:start() end)
  lazy_teardown(function() server:stop() end)

  it("writes a JSON trace with a span per finished task and per HTTP request", function()
    local script = H.write_temp([[
      local baton = require "baton"
      local base = ...
      local lim = baton.limiter { max_agents = 2, models = { ["host/a"] = 2 } }
      local g = baton.group { name = "fan" }
      for i = 1, 6 do
        g:spawn { name = "worker-" .. i, function()
          local grant <close> = assert(lim:acquire("host/a", { wait = true }))
          baton.sleep(i * 3)
          local r = assert(baton.http.request { url = base .. "/delay?ms=" .. (5 * i) })
          return r.status
        end }
      end
      local failing = baton.spawn { name = "failing", function() baton.sleep(1); error("boom") end }
      assert(baton.process.run { "true" })
      g:join_all()
      failing:join()
      print("ok")
    ]])
    local out = os.tmpname()
    local r = H.run(H.q(script) .. " " .. H.q(server:url("")), { env = "BATON_TRACE=" .. H.q(out) })
    os.remove(script)
    assert.equal("", r.err)
    assert.equal(0, r.code)
    local events = read_trace(out)
    local tasks = spans(events, "task")
    local by_name = {}
    for _, e in ipairs(tasks) do by_name[e.name] = e end
    assert.equal(8, #tasks)  -- 6 workers, the failing task, the main task
    for i = 1, 6 do
      local e = assert(by_name["worker-" .. i], "worker-" .. i)
      assert.equal("done", e.args.status)
      assert.equal(e.tid, e.args.id)
    end
    assert.equal("failed", by_name.failing.args.status)
    assert.equal("done", by_name.main.args.status)
    local http = spans(events, "http")
    assert.equal(6, #http)
    for _, e in ipairs(http) do
      assert.matches("^http GET 127%.0%.0%.1:%d+/delay$", e.name)
      assert.is_truthy(by_name["worker-" .. (e.tid - by_name["worker-1"].tid + 1)])
    end
    assert.is_true(#spans(events, "sleep") >= 7)
    local procs = spans(events, "process")
    local own_track = 0
    for _, e in ipairs(procs) do
      if e.tid >= 1e9 then
        own_track = own_track + 1
        assert.equal("true", e.args.file)
        assert.equal(0, e.args.code)
      end
    end
    assert.equal(1, own_track)
    local instants = 0
    for _, e in ipairs(events) do
      if e.ph == "i" and e.cat == "limiter" then
        instants = instants + 1
        assert.equal("host/a", e.args.key)
      end
    end
    assert.equal(6, instants)
    local names = {}
    for _, e in ipairs(events) do
      if e.ph == "M" and e.name == "thread_name" then names[e.tid] = e.args.name end
    end
    assert.equal(by_name["worker-1"].tid .. " worker-1", names[by_name["worker-1"].tid])
    check_tracks(events)
  end)
end)

describe("baton.trace", function()
  it("start/stop trace part of a run: a task started before is clipped, tasks after are not traced",
     H.async(function()
    local path = os.tmpname()
    local early = baton.spawn { name = "early", function() baton.sleep(30) end }
    baton.sleep(5)
    assert.is_false(baton.trace.active())
    assert.is_true(baton.trace.start(path))
    assert.is_true(baton.trace.active())
    H.raises("baton.trace.start: a trace is already being written", baton.trace.start, path)
    local named = baton.spawn { name = "inside", function() baton.sleep(5) end }
    local odd = baton.spawn { name = 'odd "name"\n\t\\ \1 é', function() end }
    baton.activity("mcp tools/call echo", function() baton.sleep(2) end)
    baton.trace.instant("decision", { route = "a", n = 2, ok = true })
    early:join()
    named:join()
    odd:join()
    local n = baton.trace.stop()
    assert.is_true(n > 5, n)
    assert.is_false(baton.trace.active())
    assert.equal(0, baton.trace.stop())
    baton.spawn(function() baton.sleep(1) end):join()  -- not traced
    local events = read_trace(path)
    local by_name = {}
    for _, e in ipairs(spans(events)) do by_name[e.name] = e end
    assert.is_truthy(by_name.inside)
    assert.equal("task", by_name.inside.cat)
    local early_span = assert(by_name.early, "the early task's span")
    assert.equal(0, early_span.ts)  -- began before the trace: clipped to its start
    local act = assert(by_name["mcp tools/call echo"])
    assert.equal("mcp", act.cat)
    assert.equal(baton.current().id, act.tid)
    -- one span for the activity: the sleep inside it, worded by its label, has none of its own
    local labelled = 0
    for _, e in ipairs(spans(events)) do
      if e.name == "mcp tools/call echo" then labelled = labelled + 1 end
    end
    assert.equal(1, labelled)
    assert.is_true(act.dur >= 2000, act.dur)  -- covers the 2 ms sleep (µs)
    local found
    for _, e in ipairs(events) do
      if e.ph == "i" and e.name == "decision" then found = e end
    end
    assert.same({ route = "a", n = 2, ok = true }, found.args)
    assert.equal("task", by_name['odd "name"\n\t\\ \1 é'].cat)  -- escaped, read back
    assert.equal(3, #spans(events, "task"))
    check_tracks(events)
  end))

  -- A real MCP call (the scripted fake server over stdio): one span, the client's
  -- baton.activity, on the caller's track; the wait for the reply inside it has no second
  -- span of the same name.
  local mcp_it = H.have("python3") and it or pending
  mcp_it("an MCP call is one span named after its method and tool", H.async(function()
    local client = assert(H.mcp.fake())
    local path = os.tmpname()
    assert.is_true(baton.trace.start(path))
    local r = assert(client:call("echo", { text = "hi" }))
    baton.trace.stop()
    client:close()
    assert.equal("echo: hi", require("baton.mcp").text(r))
    local events = read_trace(path)
    local calls = {}
    for _, e in ipairs(spans(events)) do
      if e.name == "mcp tools/call echo" then calls[#calls + 1] = e end
    end
    assert.equal(1, #calls)
    assert.equal("mcp", calls[1].cat)
    assert.equal(baton.current().id, calls[1].tid)
    check_tracks(events)
  end))

  it("writes valid JSON (UTF-8) whatever the names and args hold", H.async(function()
    local path = os.tmpname()
    assert.is_true(baton.trace.start(path))
    local bad = "bad \xff\xfe \xc3 \xed\xa0\x80 \xf4\x90\x80\x80 ok \u{e9}\u{1f600}"
    baton.spawn { name = bad, function() end }:join()
    -- 2-byte characters past the 512 bytes a name keeps: cut between characters
    baton.spawn { name = "x" .. string.rep("\u{e9}", 600), function() end }:join()
    baton.spawn { name = string.rep("z", 100000), function() end }:join()
    baton.trace.instant(bad, { nan = 0 / 0, inf = 1 / 0, ninf = -1 / 0, big = math.maxinteger,
                               s = "\xc3", [string.rep("k", 5000)] = 5, [bad] = true })
    local big = {}
    for i = 1, 200 do big["key" .. i] = string.rep("v", 50) end
    baton.trace.instant("many", big)
    assert.is_true(baton.trace.stop() > 5)
    local events = read_trace(path)  -- baton.json.decode refuses what is not UTF-8
    local names, inst = {}, {}
    for _, e in ipairs(events) do
      if e.ph == "X" and e.cat == "task" and e.tid ~= baton.current().id then
        names[#names + 1] = e.name
      end
      if e.ph == "i" then inst[e.name] = e end
    end
    local clean = "bad \u{fffd}\u{fffd} \u{fffd} \u{fffd}\u{fffd}\u{fffd} "
                  .. "\u{fffd}\u{fffd}\u{fffd}\u{fffd} ok \u{e9}\u{1f600}"
    assert.equal(clean, names[1])
    assert.matches("^x[\u{e9}]+$", names[2])
    assert.is_true(#names[2] > 400 and #names[2] <= 512, #names[2])
    assert.equal(string.rep("z", #names[3]), names[3])
    local args = assert(inst[clean], "the instant event").args
    assert.equal("nan", args.nan)
    assert.equal("inf", args.inf)
    assert.equal("-inf", args.ninf)
    assert.equal(math.maxinteger, args.big)
    assert.equal("\u{fffd}", args.s)
    assert.is_true(args[clean])
    local long_key = assert(next(args, nil) and (function()
      for k, v in pairs(args) do if k:match("^kkk") then return k, v end end
    end)())
    assert.is_true(#long_key >= 200)
    local n = 0
    for k, v in pairs(assert(inst.many).args) do
      n = n + 1
      assert.equal(string.rep("v", 50), v, k)
    end
    assert.is_true(n >= 10 and n < 200, n)  -- what fits in the event, each pair whole
  end))

  it("a trace that cannot be written (a full disk) is said once, not silently lost", function()
    if not H.exists("/dev/full") then return pending("no /dev/full") end
    local r = H.run(H.q("-e") .. " " .. H.q("baton.spawn(function() end):join() print('ran')"),
                    { env = "BATON_TRACE=/dev/full" })
    assert.equal(0, r.code, r.err)
    assert.equal("ran\n", r.out)
    local _, n = r.err:gsub("trace cannot be written %(no space left on device%)", "")
    assert.equal(1, n, r.err)
    -- started by the script and never stopped: the same, once
    r = H.run(H.q("-e") .. " " .. H.q("assert(baton.trace.start('/dev/full')) "
                                      .. "for _ = 1, 3000 do baton.spawn(function() end):join() end"))
    assert.equal(0, r.code, r.err)
    _, n = r.err:gsub("trace cannot be written %(no space left on device%)", "")
    assert.equal(1, n, r.err)
  end)

  it("records the router's attempts and their outcomes as instant events", H.async(function()
    local path = os.tmpname()
    local limited = true
    local router = baton.router {
      deployments = {
        { name = "east", model = "gpt", call = function()
            if limited then
              limited = false
              return { status = 429, headers = {}, body = '{"error":{"message":"Rate limit reached"}}' }
            end
            return { status = 200, body = {} }
          end },
        { name = "west", model = "gpt", call = function() return { status = 200, body = {} } end },
      },
      groups = { chat = { "east", "west" } },
    }
    assert(baton.trace.start(path))
    local resp = router:call("chat", { prompt = "hi" })
    baton.trace.stop()
    assert.equal(200, resp.status)
    local seen = {}
    for _, e in ipairs(read_trace(path)) do
      if e.ph == "i" and e.name:match("^router ") then
        seen[#seen + 1] = e.name .. " " .. e.args.deployment
      end
    end
    assert.same({ "router attempt east", "router cooldown east", "router attempt west", "router ok west" },
                seen)
  end))

  it("returns nil, msg, 'io' for a file it cannot write", H.async(function()
    H.assert_failure("baton.trace.start", "io", baton.trace.start("/nonexistent-dir/x.json"))
    assert.is_false(baton.trace.active())
    H.raises("bad argument #1 'path'", baton.trace.start)
    -- a NUL would make fopen write another file (the part before it)
    H.raises_misuse("baton.trace.start", 1, "path", "without NUL", baton.trace.start, os.tmpname() .. "\0.json")
    H.raises_misuse("baton.trace.start", 1, "path", "non%-empty", baton.trace.start, "")
    assert.is_false(baton.trace.active())
  end))
end)
