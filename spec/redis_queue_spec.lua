-- baton.redis.queue and the distributed runner (baton.runner{ queue = }), against a private
-- redis-server of this run: acks (the handler's own commands atomic with the XACK), a
-- failed delivery retried and dead-lettered after max_deliveries, stalled jobs reclaimed
-- after claim_idle_ms, a slow handler not taken over while its worker lives, a worker
-- stopped mid-job (the handler cancelled, its job given back at once), stop() leaving
-- nothing behind, misuse; and three baton worker processes sharing 10,000 jobs while one is
-- killed with SIGKILL: every job completed exactly once or dead-lettered, none lost.
local baton = require "baton"
local H = require "spec.helper"

local server, why = H.redis_server()
if not server then H.loud("redis_queue_spec", why) end
local it = H.gated(why)
local async = H.async

local n = 0
local function setup(opts)
  n = n + 1
  local r = assert(baton.redis.connect { url = server.url, reconnect = true })
  local o = { redis = r, stream = ("q%d"):format(n), claim_idle_ms = 60000, max_deliveries = 3 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return baton.redis.queue(o), r, o.stream
end

-- Waits (up to `ms`) until fn() is true.
local function eventually(fn, ms)
  local deadline = baton.now() + (ms or 5000)
  while not fn() do
    if baton.now() > deadline then error("condition never held", 2) end
    baton.sleep(5)
  end
end

-- Warnings collected instead of printed (restored by the returned function).
local function quiet()
  local seen = {}
  baton.on_warning(function(msg) seen[#seen + 1] = msg end)
  return seen, function() baton.on_warning(nil) end
end

describe("baton.redis.queue", function()
  lazy_teardown(function() if server then server:stop() end end)

  it("runs each job once and acks it, the handler's commands atomic with the ack", async(function()
    local q, r, s = setup()
    local ids = assert(q:enqueue_all { { n = 1 }, { n = 2 }, { n = 3 } })
    assert.equal(3, #ids)
    for i = 4, 50 do assert.is_string(q:enqueue { n = i, text = "job " .. i }) end
    local seen = {}
    local w = baton.runner { queue = q, concurrency = 8, handler = function(job, d)
      assert.equal(1, d.deliveries)
      assert.is_string(d.id)
      baton.sleep(job.n % 4)
      seen[job.n] = (seen[job.n] or 0) + 1
      if job.n % 2 == 0 then
        assert.is_true(d:ack { { "HINCRBY", s .. ":done", job.n, 1 } })
        -- acked once: a second ack runs nothing
        H.assert_failure("baton.redis.delivery:ack", "closed", d:ack { { "HINCRBY", s .. ":done", job.n, 1 } })
      end
      -- odd jobs: returning acks them
    end }
    assert.equal(w, w:start())
    assert.equal("running", w:status())
    eventually(function() return w:stats().completed == 50 end)
    for i = 1, 50 do assert.equal(1, seen[i]) end
    local done = r:call("HGETALL", s .. ":done")
    assert.equal(50, #done)  -- 25 fields
    local info = assert(q:info())
    assert.same({ length = 0, pending = 0, dead = 0 }, { length = info.length, pending = info.pending, dead = info.dead })
    w:stop()
    assert.equal("stopped", w:status())
    assert.same({ delivered = 50, completed = 50, failed = 0, dead_lettered = 0, reclaimed = 0, errors = 0, lost = 0, running = 0 },
                w:stats())
    r:close()
  end))

  it("retries a failed delivery and dead-letters a job after max_deliveries", async(function()
    local warnings, restore = quiet()
    local q, r = setup { max_deliveries = 3 }
    assert(q:enqueue { what = "flaky" })
    assert(q:enqueue { what = "bad" })
    assert(q:enqueue { what = "raises" })
    local runs, deliveries = {}, {}
    local w = baton.runner { queue = q, concurrency = 2, handler = function(job, d)
      runs[job.what] = (runs[job.what] or 0) + 1
      deliveries[job.what] = d.deliveries
      if job.what == "flaky" and d.deliveries == 1 then return nil, "flaky: not yet", "unavailable" end
      if job.what == "bad" then return nil, "bad: refused", "rejected" end
      if job.what == "raises" then error(baton.error("auth", "raises: no key")) end
    end }
    w:start()
    eventually(function() return w:stats().completed == 1 and w:stats().dead_lettered == 2 end)
    assert.same({ flaky = 2, bad = 3, raises = 3 }, runs)
    assert.same({ flaky = 2, bad = 3, raises = 3 }, deliveries)
    local dead = assert(q:dead_letters())
    table.sort(dead, function(a, b) return a.job.what < b.job.what end)
    assert.equal(2, #dead)
    assert.same({ what = "bad" }, dead[1].job)
    assert.equal("rejected", dead[1].kind)
    assert.equal(3, dead[1].deliveries)
    assert.matches("bad: refused", dead[1].error)
    assert.equal(q.consumer, dead[1].consumer)
    assert.equal("auth", dead[2].kind)
    assert.matches("raises: no key", dead[2].error)
    local info = assert(q:info())
    assert.equal(0, info.pending)
    assert.equal(0, info.length)
    assert.equal(2, info.dead)
    assert.same({ delivered = 8, completed = 1, failed = 7, dead_lettered = 2, reclaimed = 0, errors = 0, lost = 0, running = 0 },
                w:stats())
    -- each failure was reported, with the job, the delivery and the kind
    local text = table.concat(warnings, "\n")
    assert.matches("failed on delivery 1 of 3 %(kind 'unavailable'%): flaky: not yet; retrying", text)
    assert.matches("failed on delivery 3 of 3 %(kind 'rejected'%): bad: refused; dead%-lettered", text)
    w:stop()
    restore()
    r:close()
  end))

  it("reclaims the jobs of a consumer that stalled, after claim_idle_ms", async(function()
    local q, r, s = setup { claim_idle_ms = 300 }
    assert(q:ensure())
    for i = 1, 5 do assert(q:enqueue { n = i }) end
    -- a consumer that takes the jobs and dies without an ack
    local got = assert(r:call("XREADGROUP", "GROUP", q.group, "ghost", "COUNT", 10, "STREAMS", s, ">"))
    assert.equal(5, #got[1][2])
    local t0 = baton.now()
    local at, del = {}, {}
    local w = baton.runner { queue = q, concurrency = 4, handler = function(job, d)
      at[job.n] = baton.now() - t0
      del[job.n] = d.deliveries
    end }
    w:start()
    eventually(function() return w:stats().completed == 5 end, 5000)
    for i = 1, 5 do
      -- not before the ghost's jobs had been idle for claim_idle_ms (they were read just
      -- before t0), and soon after: the scan runs every claim_idle_ms / 2
      assert.is_true(at[i] >= 290 and at[i] < 300 + 150 + 1000, ("job %d ran at %d ms"):format(i, at[i]))
      assert.equal(2, del[i])
    end
    assert.equal(5, w:stats().reclaimed)
    assert.equal(0, assert(q:info()).pending)
    w:stop()
    r:close()
  end))

  it("keeps a slow job from being taken over while its worker lives", async(function()
    -- generous: a takeover would need the heartbeat (every 333 ms) held up for 666 ms
    local q1, r1, s = setup { claim_idle_ms = 1000 }
    local r2 = assert(baton.redis.connect { url = server.url })
    local q2 = baton.redis.queue { redis = r2, stream = s, claim_idle_ms = 1000 }
    local runs = 0
    local function handler() runs = runs + 1; baton.sleep(2500) end
    local w1 = baton.runner { queue = q1, handler = handler }
    w1:start()
    assert(q1:enqueue { slow = true })
    eventually(function() return runs == 1 end)
    local w2 = baton.runner { queue = q2, handler = handler }
    w2:start()
    eventually(function() return w1:stats().completed == 1 end, 8000)
    baton.sleep(300)
    assert.equal(1, runs)
    assert.equal(0, w2:stats().reclaimed)
    w1:stop()
    w2:stop()
    r1:close()
    r2:close()
  end))

  it("stop() cancels a job mid-run, gives it back at once and leaves nothing behind", async(function()
    local q1, r1, s = setup { claim_idle_ms = 60000 }
    local closed, started = 0, 0
    local w1 = baton.runner { queue = q1, concurrency = 2, handler = function()
      started = started + 1
      local _ <close> = setmetatable({}, { __close = function() closed = closed + 1 end })
      baton.sleep(60000)
    end }
    w1:start()
    assert(q1:enqueue { n = 1 })
    assert(q1:enqueue { n = 2 })
    eventually(function() return started == 2 end)
    assert.equal(2, assert(q1:info()).pending)
    local before = baton.stats()
    w1:stop()
    -- stop returned: the handlers were cancelled (their <close> ran), the runner's tasks
    -- and the reader's connection are gone
    assert.equal(2, closed)
    assert.equal("stopped", w1:status())
    local after = baton.stats()
    assert.equal(before.handles - 1, after.handles)  -- the reader's connection
    assert.equal(1, after.tasks)                      -- this task only
    assert.equal(0, after.timers)
    -- not acked: still pending, given back (idle as if claim_idle_ms had passed), so another
    -- worker takes them at once, not 60 s later
    assert.equal(2, assert(q1:info()).pending)
    local r2 = assert(baton.redis.connect { url = server.url })
    local q2 = baton.redis.queue { redis = r2, stream = s, claim_idle_ms = 60000 }
    local got = {}
    local w2 = baton.runner { queue = q2, concurrency = 2, handler = function(job, d)
      got[job.n] = d.deliveries
    end }
    local ms = H.timed(function()
      w2:start()
      eventually(function() return w2:stats().completed == 2 end, 5000)
    end)
    assert.is_true(ms < 2000, ms)
    assert.same({ 2, 2 }, got)
    w2:stop()
    -- a stopped consumer that holds nothing is removed from the group (w1 still held its
    -- jobs when it stopped: it stays, now holding nothing)
    local consumers = assert(r2:call("XINFO", "CONSUMERS", s, q1.group))
    assert.equal(1, #consumers)
    assert.equal(q1.consumer, consumers[1][2])
    assert.equal(0, consumers[1][4])
    r1:close()
    r2:close()
  end))

  it("a runner in a <close> variable is stopped with its scope; the job task unwinds", async(function()
    local q, r = setup()
    local closed = false
    do
      local w <close> = baton.runner { queue = q, handler = function()
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        baton.sleep(60000)
      end }
      w:start()
      assert(q:enqueue { n = 1 })
      eventually(function() return w:stats().running == 1 end)
    end
    eventually(function() return closed end)
    r:close()
  end))

  it("client:duplicate() opens a connection of its own to the same server and db", async(function()
    local r <close> = assert(baton.redis.connect { url = server.url .. "/3" })
    local d <close> = assert(r:duplicate())
    assert.are_not.equal(r, d)
    assert(r:call("SET", "dup", "here"))
    assert.equal("here", d:call("GET", "dup"))  -- db 3 too
    -- a blocking command on the duplicate does not hold the client's calls
    local t = baton.spawn(function() return d:call("BLPOP", "dup:list", 5) end)
    baton.sleep(20)
    local ms = H.timed(function() assert.equal("PONG", r:call("PING")) end)
    assert.is_true(ms < 500, ms)
    assert(r:call("RPUSH", "dup:list", "x"))
    assert.same({ true, { "dup:list", "x" } }, { t:join() })
    d:call("DEL", "dup")
    r:close()
    H.raises("used after it was closed", r.duplicate, r)
  end))

  it("checks its options and arguments", async(function()
    local r <close> = assert(baton.redis.connect { url = server.url })
    local F = "baton.redis.queue"
    H.raises_misuse(F, 1, "opts", "table", baton.redis.queue, nil)
    H.raises_misuse(F, 1, "redis", "a baton.redis client", baton.redis.queue, { redis = {}, stream = "s" })
    H.raises_misuse(F, 1, "stream", "string", baton.redis.queue, { redis = r })
    H.raises_misuse(F, 1, "claim_idle_ms", "integer", baton.redis.queue, { redis = r, stream = "s", claim_idle_ms = 0 })
    H.raises_misuse(F, 1, "max_deliveries", "integer", baton.redis.queue, { redis = r, stream = "s", max_deliveries = 1.5 })
    H.raises_misuse(F, 1, "dead_letter", "other than", baton.redis.queue, { redis = r, stream = "s", dead_letter = "s" })
    H.raises_misuse(F, 1, "opts", "known options", baton.redis.queue, { redis = r, stream = "s", strem = "x" })
    local q = baton.redis.queue { redis = r, stream = "misuse" }
    assert.matches("^baton.redis.Queue %(stream 'misuse', group 'baton', consumer 'baton%-", tostring(q))
    H.raises_misuse(F .. ":enqueue", 1, "job", "a value JSON can encode", q.enqueue, q, print)
    H.raises_misuse(F .. ":enqueue", 1, "job", "a JSON value", q.enqueue, q, nil)
    H.raises_misuse("baton.runner", 1, "queue", "a baton.redis.queue", baton.runner, { queue = {}, handler = print })
    H.raises_misuse("baton.runner", 1, "handler", "function", baton.runner, { queue = q })
    H.raises_misuse("baton.runner", 1, "concurrency", "integer", baton.runner, { queue = q, handler = print, concurrency = 0 })
    H.raises_misuse("baton.runner", 1, "opts", "known options", baton.runner, { queue = q, handler = print, poll_ms = 5 })
    local w = baton.runner { queue = q, handler = print }
    w:start()
    H.raises("baton.runner:start: the runner is running", w.start, w)
    w:stop()
    w:stop()  -- again: nothing
    -- the in-process runner is still the one without a queue
    assert.equal("new", baton.runner { handler = print }:status())
    -- a failure of the world: the server refuses (a key of another type under the name)
    assert(r:call("SET", "notastream", "x"))
    local bad = baton.redis.queue { redis = r, stream = "notastream" }
    H.assert_failure("baton.redis.queue:enqueue", "redis", bad:enqueue { 1 })
    H.assert_failure("baton.redis.queue:ensure", "redis", bad:ensure())
  end))

  it("hostile entries: foreign XADDs, a payload that is not JSON or not UTF-8 are dead-lettered "
     .. "at once as malformed; the others run", async(function()
    local warnings, restore = quiet()
    local q, r, s = setup { max_deliveries = 3 }
    assert(q:ensure())
    assert(r:call("XADD", s, "*", "foo", "bar"))                 -- no job field
    assert(r:call("XADD", s, "*", "job", "{\"a\":"))            -- cut short
    assert(r:call("XADD", s, "*", "job", "\"\xff\""))           -- not UTF-8
    assert(r:call("XADD", s, "*", "JOB", "1", "job", "{\"n\":1}", "extra", "x"))  -- odd fields
    assert(q:enqueue { n = 2 })
    local runs = {}
    local w = baton.runner { queue = q, handler = function(job) runs[#runs + 1] = job.n end }
    w:start()
    eventually(function() return w:stats().completed == 2 and w:stats().dead_lettered == 3 end)
    table.sort(runs)
    assert.same({ 1, 2 }, runs)
    local dead = assert(q:dead_letters())
    assert.equal(3, #dead)
    for _, d in ipairs(dead) do
      assert.equal("malformed", d.kind)
      assert.equal(1, d.deliveries)  -- not retried: retrying cannot help
    end
    assert.same({ delivered = 5, completed = 2, failed = 3, dead_lettered = 3, reclaimed = 0, errors = 0,
                  lost = 0, running = 0 }, w:stats())
    w:stop()
    restore()
    assert.matches("kind 'malformed'", table.concat(warnings, "\n"))
    r:close()
  end))

  it("a dead-letter key of the wrong type: ensure() and info() say which key; a claim scan "
     .. "still runs the other stalled jobs", async(function()
    local warnings, restore = quiet()
    local q, r, s = setup { max_deliveries = 2, claim_idle_ms = 100 }
    assert(r:call("SET", q.dead_letter, "not a stream"))
    local ok, msg, kind = q:ensure()
    assert.is_nil(ok)
    assert.equal("redis", kind)
    assert.matches("^baton.redis.queue:ensure: .*'" .. s .. ":dead'.* string, not a stream", msg)
    ok, msg, kind = q:info()
    assert.is_nil(ok)
    assert.equal("redis", kind)
    assert.matches("^baton.redis.queue:info: .*'" .. s .. ":dead'", msg)
    assert(r:call("DEL", q.dead_letter))
    assert(q:ensure())
    -- A fails every time, and its dead letter fails: it stays pending, claimed by each scan
    local a_id = assert(q:enqueue { name = "A" })
    assert(r:call("SET", q.dead_letter, "not a stream"))
    local ran = {}
    local w = baton.runner { queue = q, concurrency = 4, handler = function(job)
      ran[job.name] = (ran[job.name] or 0) + 1
      if job.name == "A" then return nil, "A always fails", "rejected" end
    end }
    w:start()
    eventually(function() return ran.A == 2 and w:stats().errors >= 2 end)
    -- then C, taken by a consumer that dies at once (added and read in one script, so this
    -- runner's reader never sees it), and both made to look idle long: the next scan claims
    -- A and C together, and must still run C
    assert(r:eval([[
      local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
      redis.call('XREADGROUP', 'GROUP', ARGV[1], 'ghost', 'COUNT', 1, 'STREAMS', KEYS[1], '>')
      redis.call('XCLAIM', KEYS[1], ARGV[1], 'ghost', 0, id, 'IDLE', 100000, 'JUSTID')
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[4], 'IDLE', 100000, 'JUSTID')
      return id
    ]], { s }, { q.group, '{"name":"C"}', q.consumer, a_id }))
    eventually(function() return ran.C == 1 end, 3000)
    assert.equal(2, ran.A)
    assert.equal(0, w:stats().dead_lettered)
    assert.matches("a dead letter to '" .. s .. ":dead' failed.*not a stream", table.concat(warnings, "\n"))
    assert(r:call("DEL", q.dead_letter))                    -- fixed: A is dead-lettered
    eventually(function() return w:stats().dead_lettered == 1 end, 3000)
    local dead = assert(q:dead_letters())
    assert.same({ name = "A" }, dead[1].job)
    assert.equal(0, assert(q:info()).pending)
    w:stop()
    restore()
    r:close()
  end))

  it("a handler that never returns, its job taken by another consumer: the handler here is "
     .. "cancelled and its slot freed", async(function()
    local warnings, restore = quiet()
    local q, r, s = setup { claim_idle_ms = 300 }
    local closed, runs = false, 0
    local w = baton.runner { queue = q, handler = function(_, d)
      runs = runs + 1
      if d.deliveries == 1 then
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        baton.sleep(1e9)                                   -- never returns
      end
    end }
    w:start()
    local id = assert(q:enqueue { hang = true })
    eventually(function() return runs == 1 end)
    -- another consumer takes the job (as a scan of another worker would, had this one stalled)
    assert(r:call("XCLAIM", s, q.group, "thief", 0, id))
    eventually(function() return closed end, 3000)
    assert.equal(1, w:stats().lost)
    assert.truthy(table.concat(warnings, "\n"):find("job " .. id .. " is held by another consumer now", 1, true))
    -- the thief never acks: after claim_idle_ms it is this worker's again, and done
    eventually(function() return w:stats().completed == 1 end, 3000)
    assert.equal(0, w:stats().running)
    w:stop()
    restore()
    r:close()
  end))

  it("a job of this worker's own that looks idle (its loop stalled past claim_idle_ms) is not "
     .. "run a second time here when its scan claims it", async(function()
    local q, r, s = setup { claim_idle_ms = 100 }
    local runs = 0
    local w = baton.runner { queue = q, concurrency = 2, handler = function()
      runs = runs + 1
      baton.sleep(1000)
    end }
    w:start()
    local id = assert(q:enqueue { long = true })
    eventually(function() return runs == 1 end)
    -- what a stall looks like to Redis: the job idle long, still this consumer's (as if no
    -- heartbeat had run); made so again until a scan has claimed it once (2 deliveries)
    local deadline = baton.now() + 3000
    while baton.now() < deadline do
      local p = assert(r:call("XPENDING", s, q.group, id, id, 1))
      if p[1][4] >= 2 then break end
      assert(r:call("XCLAIM", s, q.group, q.consumer, 0, id, "IDLE", 100000, "JUSTID"))
      baton.sleep(5)
    end
    assert.equal(2, r:call("XPENDING", s, q.group, id, id, 1)[1][4])
    eventually(function() return w:stats().completed >= 1 and w:stats().running == 0 end, 5000)
    assert.equal(1, runs)
    assert.equal(1, w:stats().completed)
    w:stop()
    r:close()
  end))

  it("a group destroyed while a job runs: the reader makes it anew and reads the job again; "
     .. "it is not run a second time here", async(function()
    local q, r, s = setup { claim_idle_ms = 3000 }
    local seen, restore = quiet()
    local runs, running, most = 0, 0, 0
    local w = baton.runner { queue = q, concurrency = 4, block_ms = 50, handler = function()
      runs, running = runs + 1, running + 1
      most = math.max(most, running)
      baton.sleep(600)
      running = running - 1
    end }
    w:start()
    assert(q:enqueue { slow = true })
    eventually(function() return runs == 1 end)
    assert.equal(1, r:call("XGROUP", "DESTROY", s, q.group))
    baton.sleep(900)  -- the reader made the group again from the stream's start, and read
    eventually(function() return running == 0 end)
    assert.equal(1, runs)
    assert.equal(1, most)
    w:stop()
    restore()
    assert.is_true(#seen >= 1)  -- the lost group was reported
    r:close()
  end))

  it("enqueue of a value JSON cannot encode raises saying what and where", async(function()
    local q, r = setup()
    local t = {}
    t.self = t
    H.raises_misuse("baton.redis.queue:enqueue", 1, "job", "a function at %$%.f", q.enqueue, q, { f = print })
    H.raises_misuse("baton.redis.queue:enqueue", 1, "job", "a cycle at %$%.self", q.enqueue, q, t)
    H.raises_misuse("baton.redis.queue:enqueue", 1, "job", "NaN", q.enqueue, q, { x = 0 / 0 })
    H.raises_misuse("baton.redis.queue:enqueue_all", 1, "jobs", "a function at jobs%[2%]%[1%]", q.enqueue_all, q,
                    { { 1 }, { print } })
    assert.equal(0, assert(q:info()).length)  -- nothing was added, not even jobs[1]
    r:close()
  end))

  -- Three worker processes (the baton executable) share 10,000 jobs through one stream;
  -- every 1000th job always fails (dead-lettered after 3 deliveries). The second worker is
  -- killed with SIGKILL once about a third of the jobs are done: the jobs it held are
  -- reclaimed by the others after claim_idle_ms. Completions are counted in a hash, by the
  -- handler's d:ack{ HINCRBY } (atomic with the XACK).
  it("shares 10,000 jobs between three worker processes, one killed mid-run: each done once or dead-lettered",
     async(function()
    local script = H.write_temp([==[
local baton = require "baton"
local url, stream, name = arg[1], arg[2], arg[3]
baton.on_warning(function() end)  -- the poison jobs' failures, expected
local r = assert(baton.redis.connect { url = url, reconnect = true })
local q = baton.redis.queue { redis = r, stream = stream, consumer = name, claim_idle_ms = 500,
                              max_deliveries = 3 }
local w = baton.runner { queue = q, concurrency = 16, handler = function(job, d)
  if job.n % 1000 == 0 then error("poison job " .. job.n) end
  baton.sleep(job.n % 3)
  d:ack { { "HINCRBY", stream .. ":done", job.n, 1 }, { "HINCRBY", stream .. ":by", name, 1 } }
end }
w:start()
print("ready")
io.stdout:flush()
while r:call("GET", stream .. ":stop") == nil do baton.sleep(20) end
w:stop()
print("stats " .. baton.json.encode(w:stats()))
]==])
    local q, r, s = setup()
    assert(q:ensure())
    local jobs = {}
    for i = 1, 10000 do jobs[#jobs + 1] = { n = i } end
    for i = 1, 10000, 1000 do assert(q:enqueue_all(table.move(jobs, i, i + 999, 1, {}))) end
    local procs = {}
    for i = 1, 3 do
      procs[i] = assert(baton.process.spawn { H.EXE, script, server.url, s, "w" .. i })
      assert.equal("ready", procs[i]:read_line(10000))
    end
    local t0 = baton.now()
    eventually(function() return r:call("HLEN", s .. ":done") >= 3000 end, 30000)
    procs[2]:kill(9)
    assert.equal(137, procs[2]:wait(5000))
    -- the jobs w2 held when it died; a poison one already delivered max_deliveries times is
    -- dead-lettered by the claim, not run again, so only the others must be reclaimed
    local held, held_poison = 0, 0
    for _, p in ipairs(assert(r:call("XPENDING", s, q.group, "-", "+", 1000, "w2"))) do
      local e = assert(r:call("XRANGE", s, p[1], p[1]))[1]
      local job = e and baton.json.decode(e[2][2])
      if job and job.n % 1000 == 0 then held_poison = held_poison + 1 else held = held + 1 end
    end
    eventually(function()
      return r:call("HLEN", s .. ":done") + r:call("XLEN", s .. ":dead") >= 10000
    end, 40000)
    local took = baton.now() - t0
    assert(r:call("SET", s .. ":stop", "1"))
    local reclaimed, completed = 0, 0
    for _, i in ipairs { 1, 3 } do
      local line = procs[i]:read_line(10000)
      assert.is_string(line)
      local st = baton.json.decode(line:match("^stats (.*)$"))
      reclaimed = reclaimed + st.reclaimed
      completed = completed + st.completed
      assert.equal(0, procs[i]:wait(10000))
    end
    -- every job: completed exactly once, or (the poison ones) dead-lettered; none lost
    local done = assert(r:call("HGETALL", s .. ":done"))
    local count = {}
    for j = 1, #done, 2 do count[tonumber(done[j])] = tonumber(done[j + 1]) end
    local dead = {}
    for _, d in ipairs(assert(q:dead_letters(1000))) do dead[d.job.n] = d end
    for i = 1, 10000 do
      if i % 1000 == 0 then
        assert.is_nil(count[i])
        assert.is_table(dead[i], "poison job " .. i .. " not dead-lettered")
        assert.equal(3, dead[i].deliveries)
      else
        assert.equal(1, count[i], "job " .. i)
        assert.is_nil(dead[i])
      end
    end
    local info = assert(q:info())
    assert.equal(0, info.pending)
    assert.equal(0, info.length)
    assert.equal(10, info.dead)
    -- the killed worker held jobs when it died, and the others reclaimed them
    assert.is_true(held + held_poison > 0, "w2 held no job when killed")
    -- (not necessarily all of them by a claim: a job w2 had taken over from a worker that
    -- stalled past claim_idle_ms may still be running there, which finishes it; that it
    -- was done exactly once is checked above)
    assert.is_true(reclaimed > 0, ("reclaimed %d of %d (and %d poison)"):format(reclaimed, held, held_poison))
    local by = assert(r:call("HGETALL", s .. ":by"))
    assert.equal(6, #by)  -- all three completed some
    print(("\n3 workers, 10,000 jobs, w2 killed holding %d: %d ms, %d reclaimed"):format(held, took, reclaimed))
    for _, p in ipairs(procs) do p:close() end
    os.remove(script)
    r:close()
  end))

  -- docs/errors.md, "The Redis work queue": each failure listed there, provoked.
  describe("baton.redis.queue failures as docs/errors.md lists them", function()
    if not server then
      it("SKIPPED: " .. why, function() end)
      return
    end
    -- A queue whose stream and dead-letter keys hold strings: every command on them is
    -- refused with WRONGTYPE.
    local function wrong_type()
      local q, r, s = setup()
      assert(r:call("SET", s, "not a stream"))
      assert(r:call("SET", s .. ":dead", "not a stream"))
      return q, r
    end
    -- A queue whose client's connection the server has closed (CLIENT KILL; no reconnect).
    local function closed_client()
      n = n + 1
      local r = assert(baton.redis.connect { url = server.url })
      local id = assert(r:call("CLIENT", "ID"))
      local killer <close> = assert(baton.redis.connect { url = server.url })
      assert(killer:call("CLIENT", "KILL", "ID", id))
      baton.sleep(20)
      return baton.redis.queue { redis = r, stream = ("q%d"):format(n) }
    end
    local ROWS = {
      { "baton.redis.queue:enqueue", "redis", function() return (wrong_type()):enqueue { n = 1 } end },
      { "baton.redis.queue:enqueue", "closed", function() return closed_client():enqueue { n = 1 } end },
      { "baton.redis.queue:enqueue_all", "redis", function() return (wrong_type()):enqueue_all { { n = 1 } } end },
      { "baton.redis.queue:enqueue_all", "closed", function() return closed_client():enqueue_all { { n = 1 } } end },
      { "baton.redis.queue:ensure", "redis", function() return (wrong_type()):ensure() end },
      { "baton.redis.queue:ensure", "closed", function() return closed_client():ensure() end },
      { "baton.redis.queue:info", "redis", function() return (wrong_type()):info() end },
      { "baton.redis.queue:info", "closed", function() return closed_client():info() end },
      { "baton.redis.queue:dead_letters", "redis", function() return (wrong_type()):dead_letters() end },
      { "baton.redis.queue:dead_letters", "closed", function() return closed_client():dead_letters() end },
    }
    -- The client's other failures (timeout, io, connect, protocol, resource) pass through
    -- unchanged and are provoked on the client in spec/redis_spec.lua; the ack's closed is
    -- provoked above (an ack twice; a job another worker took over).
    local CLIENT = "the client's failure, passed through: provoked in spec/redis_spec.lua"
    local EXEMPT = {}
    for _, f in ipairs { "enqueue", "enqueue_all", "ensure", "info", "dead_letters" } do
      for _, k in ipairs { "timeout", "io", "connect", "protocol", "resource" } do
        EXEMPT["baton.redis.queue:" .. f .. " " .. k] = CLIENT
      end
    end
    for _, k in ipairs { "redis", "closed", "timeout", "io", "connect", "protocol", "resource" } do
      EXEMPT["baton.redis.delivery:ack " .. k] = k == "closed" and "provoked above" or CLIENT
    end
    H.failure_rows(it, "The Redis work queue", ROWS, EXEMPT)
  end)
end)
