-- Every example runs as its header says (`baton examples/<name>.lua` from the repository's
-- root), exits 0 with nothing on stderr, and prints the line that shows it did its job.
-- BATON_EXE names the executable (ctest sets it). fleet.sh and work_queue.sh (3 processes
-- on a private redis-server) run when redis-server is installed; trace_demo.lua also runs under
-- BATON_TRACE.
local H = require "spec.helper"

local SRC = H.SRC

local function run(name)
  return H.run("examples/" .. name .. ".lua", { cwd = SRC, timeout = 120 })
end

local function have(path) return H.exists(SRC .. "/" .. path) end

local cases = {
  { "fanout", "summary: %d+ settled, %d+ failed, %d+ still pending at the deadline",
    err = "^tools: %d+/10 %(%d+ failed%), [%d.]+/s, in [%d.]+s\n$" },
  { "runner", "runner: 12 jobs, 10 done, 2 failed, 0 in flight, 0 queued",
    err = "^jobs: 12/12 %(2 failed%), [%d.]+/s, in [%d.]+s\n$" },
  { "speculate", "shutdown: 0 pending; host slots in use: {}" },
  { "fallback", "done: in use 0, waiting 0" },
  { "resilient_call", "the tool ran %d+ times for 8 requests; breaker closed" },
  { "http_gateway", "settled  /README.md%s+via fallback status 200" },
  { "http_gateway", "provider stopped; 0 transfers in flight" },
  { "pipeline_channels", "accounted for: 40 of 40 jobs" },
  { "pipeline_channels", "clean: 0 tasks left, jobs closed, results closed" },
  { "router", "requests: 200, ok: %d+, failed: %d+ %(.-%); usage matches the ledgers: true" },
  { "router", "context_fallback %-> ok" },
  { "blocking", "blocking stalled every task: true; awaiting did not: true" },
  { "trace_demo", "fan%-out of 8: sum 36; %d+ events written to" },
  { "trace_demo", "task spans 8, wait spans: semaphore 5, sleep 8, process 16; process tracks 8" },
  { "mcp_remote", "second connect: 0 new authorization%(s%): the token came from the store",
    need = "spec/fixtures/mcp/fake_oauth_server.py" },
  { "mcp_remote", "token store mode: 600" },
  { "mcp_prefetch", "closed: server pid %d+ still alive: false",
    need = "spec/fixtures/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" },
}

describe("examples", function()
  local ran = {}
  for _, c in ipairs(cases) do
    local name, pattern = c[1], c[2]
    local test = (c.need and not have(c.need)) and pending or it
    test(name .. ".lua runs and prints " .. pattern, function()
      ran[name] = ran[name] or run(name)
      local r = ran[name]
      if c.err then  -- a progress line (baton.progress: stderr is not a terminal here)
        assert.matches(c.err, r.err)
      else
        assert.equal("", r.err)
      end
      assert.equal(0, r.code)
      assert.truthy(r.out:find(pattern), "missing in the output:\n" .. r.out)
    end)
  end

  -- Under BATON_TRACE the demo finds a trace already being written: it writes into it (no
  -- trace.start of its own, which would raise) and the file, closed when baton exits, holds
  -- the fan-out and main's own span.
  it("trace_demo.lua runs under BATON_TRACE and writes into that trace", function()
    local path = os.tmpname()
    local r = H.run("examples/trace_demo.lua", { cwd = SRC, timeout = 120, env = "BATON_TRACE=" .. H.q(path) })
    assert.equal("", r.err)
    assert.equal(0, r.code)
    assert.truthy(r.out:find("a trace is already being written (BATON_TRACE or baton.trace.start): "
                             .. "the demo writes into it", 1, true), r.out)
    assert.truthy(r.out:find("fan-out of 8: sum 36; the trace is complete when baton exits", 1, true), r.out)
    local events = require("baton").json.decode(assert(H.slurp(path)))
    os.remove(path)
    local tasks, names = {}, {}
    for _, e in ipairs(events) do
      if e.ph == "X" and e.cat == "task" then tasks[#tasks + 1] = e.name end
      if e.ph == "M" and e.name == "thread_name" then names[e.tid] = e.args.name end
    end
    table.sort(tasks)
    assert.same({ "fetch-1", "fetch-2", "fetch-3", "fetch-4", "fetch-5", "fetch-6", "fetch-7", "fetch-8",
                  "main" }, tasks)
    assert.equal("1 main", names[1])
  end)

  -- fleet.lua runs as 3 processes sharing a limit through a private redis-server (fleet.sh).
  local fleet_it = H.have("redis-server") and it or pending
  fleet_it("fleet.sh runs 3 fleet.lua processes whose shares add up to the fleet's limit", function()
    local exe = H.EXE:sub(1, 1) == "/" and H.EXE or (SRC .. "/" .. H.EXE)
    local p = assert(io.popen(("cd %s && BATON_EXE=%s timeout 60 sh examples/fleet.sh 2>&1")
                              :format(H.q(SRC), H.q(exe))))
    local out = p:read("a")
    p:close()
    local shares = 0
    for n in out:gmatch("worker%-%d: (%d+) requests") do shares = shares + 1 end
    assert.equal(3, shares, out)
    local total = tonumber(out:match("fleet: (%d+) requests"))
    assert.is_true(total and total >= 45 and total <= 5 + 20 * 3 + 2, out)   -- not 3 x 65
  end)

  -- work_queue.lua runs as a producer and 3 workers on a private redis-server (work_queue.sh).
  fleet_it("work_queue.sh runs 3 workers whose shares add up to the 300 jobs, each done once", function()
    local exe = H.EXE:sub(1, 1) == "/" and H.EXE or (SRC .. "/" .. H.EXE)
    local p = assert(io.popen(("cd %s && BATON_EXE=%s timeout 60 sh examples/work_queue.sh 2>&1")
                              :format(H.q(SRC), H.q(exe))))
    local out = p:read("a")
    p:close()
    local workers = 0
    for _ in out:gmatch("worker%-%d: %d+ jobs") do workers = workers + 1 end
    assert.equal(3, workers, out)
    assert.truthy(out:find("fleet: 300 jobs done by 3 workers, counted 300, left in the stream 0, "
                           .. "dead-lettered 0", 1, true), out)
  end)
end)
