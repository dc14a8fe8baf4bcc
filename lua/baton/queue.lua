-- baton.redis.queue: a work queue on a Redis stream shared by a fleet of processes, and the
-- distributed runner that baton.runner{ queue = } builds over it (docs/redis.md, "The work
-- queue"). The module compiles this file in (src/lua/lqueue.c runs it with the module table
-- on first use; it returns { queue =, runner = }).
--
-- Producers XADD a job (JSON, one field `job`). Workers are the consumers of one consumer
-- group: each reads new entries with XREADGROUP (on a connection of its own, since a
-- blocking read holds its connection), runs the handler in a task per job (at most
-- `concurrency` at once) and acknowledges with XACK (and XDEL: the stream holds only work
-- not yet done). Delivery is at least once:
--   * a handler that fails — raises, or returns nil, msg[, kind] (the one rule of
--     docs/errors.md) — is a failed delivery: the job is claimed again at once by the same
--     worker (XCLAIM, which counts the delivery) and run again, until its delivery count
--     reaches max_deliveries; then it is moved to the dead-letter stream with the failure;
--   * a job whose worker died (or stalled) stays pending in the group with that consumer;
--     every worker scans the pending entries every claim_idle_ms / 2 with XAUTOCLAIM and
--     takes those idle for claim_idle_ms (XAUTOCLAIM counts the delivery); one claimed past
--     max_deliveries is dead-lettered instead of run;
--   * a worker keeps the jobs it runs from looking idle: every claim_idle_ms / 3 it resets
--     their idle time (XCLAIM JUSTID, which does not count a delivery), so a slow handler
--     is not taken over while its worker lives.
-- Every step that must check who holds a job and act on it (ack with effects, a retry, a
-- dead letter, the heartbeat, giving jobs back at stop) is one server-side script: the
-- check (XPENDING: is this consumer still the holder?) and the write cannot interleave with
-- another worker's claim. `delivery:ack(commands)` runs the handler's own Redis commands in
-- the same script as the XACK, so their effect and the ack happen together or not at all:
-- exactly once for effects kept in Redis, even when a worker is killed.
--
-- Lifetime: the runner's tasks (reader, heartbeat, jobs) live in a detached group; stop()
-- closes it (from a task: waits until every task has unwound, then gives the jobs that were
-- running back to the group at once, XCLAIM IDLE), and closes the reader's connection, so
-- nothing of the runner is left. The end of baton.run aborts them like any task.
--
-- Errors (docs/errors.md): misuse raises "<fname>: bad argument #n 'name' (expected X, got
-- Y)"; failures of the world return nil, msg, kind (the client's kinds: redis, closed,
-- connect, io, timeout). A handler's failure is reported through baton.on_warning (with the
-- job's id, its delivery and the kind) and counted in stats().
local baton = ...
if type(baton) ~= "table" then baton = require "baton" end  -- required as a plain module

local json = baton.json
local type, tostring, setmetatable, getmetatable = type, tostring, setmetatable, getmetatable
local pairs, ipairs, error, pcall = pairs, ipairs, error, pcall
local floor, max, min, mtype = math.floor, math.max, math.min, math.type
local unpack, concat = table.unpack, table.concat

local M = {}

-- ---- misuse, as the C toolkit words it ---------------------------------------------------

local got = baton._got  -- how the C toolkit shows a value in a misuse message

local function misuse(fname, n, name, expected, v)
  error(("%s: bad argument #%d '%s' (expected %s, got %s)"):format(fname, n, name, expected, got(v)), 3)
end

local function check_known(fname, opts, known)
  for k in pairs(opts) do
    if not known[k] then
      local names = {}
      for name in pairs(known) do names[#names + 1] = name end
      table.sort(names)
      misuse(fname, 1, "opts", ("known options (%s), got '%s'"):format(concat(names, ", "), tostring(k)), nil)
    end
  end
end

local function opt_string(fname, opts, name, default)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "string" or v == "" then misuse(fname, 1, name, "a non-empty string", v) end
  return v
end

local function opt_int(fname, opts, name, default, lo)
  local v = opts[name]
  if v == nil then return default end
  if mtype(v) ~= "integer" or v < lo or v > 1000000000 then
    misuse(fname, 1, name, ("integer in [%d, 1000000000]"):format(lo), v)
  end
  return v
end

-- ---- the server-side scripts -------------------------------------------------------------
-- KEYS[1] the stream, KEYS[2] the dead-letter stream; ARGV[1] the group, ARGV[2] this
-- consumer. `held(id)`: this consumer still holds the entry (XPENDING for that id).

local HELD = [[
local function held(id)
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  return p[1] ~= nil and p[1][2] == ARGV[2], p[1] and p[1][4] or 0
end
]]

-- ARGV[3] id, ARGV[4] "1": XDEL too, ARGV[5] the number of commands, then for each its
-- argument count and arguments -> 1 (acked) | 0 (not held: nothing was run)
local ACK = HELD .. [[
local id = ARGV[3]
if not held(id) then return 0 end
local i, n = 6, tonumber(ARGV[5])
for _ = 1, n do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + 1 + argc
end
redis.call('XACK', KEYS[1], ARGV[1], id)
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], id) end
return 1
]]

-- ARGV[3] id -> { fields, deliveries } claimed again by this consumer (counted) | 0 (not held)
local RETRY = HELD .. [[
local id = ARGV[3]
if not held(id) then return 0 end
local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
if e[1] == nil or not e[1] then
  redis.call('XACK', KEYS[1], ARGV[1], id)  -- the entry was deleted: nothing to run
  return 0
end
local _, n = held(id)
return { e[1][2], n }
]]

-- ARGV[3] id, ARGV[4] "1": XDEL, ARGV[5] deliveries, ARGV[6] kind, ARGV[7] message,
-- ARGV[8] the job (JSON) -> 1 | 0 (not held)
local DEAD = HELD .. [[
local id = ARGV[3]
if not held(id) then return 0 end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[8], 'id', id, 'deliveries', ARGV[5],
           'kind', ARGV[6], 'error', ARGV[7], 'consumer', ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], id)
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], id) end
return 1
]]

-- ARGV[3] min idle ms, ARGV[4] cursor, ARGV[5] count, ARGV[6] max deliveries, ARGV[7] "1":
-- XDEL -> { next cursor, { { id, fields, deliveries }... }, dead-lettered count, the error
-- of a dead letter that failed (the key is not a stream) or false }. A dead letter that
-- fails leaves its entry pending (the next scan tries again) and the scan goes on: one
-- entry that cannot be dead-lettered must not keep the others from being claimed.
local CLAIM = HELD .. [[
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out, dead, maxd, failed = {}, 0, tonumber(ARGV[6]), false
for _, e in ipairs(r[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local _, n = held(e[1])
    if n > maxd then
      local job = ''
      for i = 1, #e[2], 2 do if e[2][i] == 'job' then job = e[2][i + 1] end end
      local a = redis.pcall('XADD', KEYS[2], '*', 'job', job, 'id', e[1], 'deliveries', n - 1, 'kind', 'timeout',
                 'error', 'delivered ' .. (n - 1) .. ' times without an ack (its workers died or stalled)',
                 'consumer', ARGV[2])
      if type(a) == 'table' and a.err then
        failed = a.err
      else
        redis.call('XACK', KEYS[1], ARGV[1], e[1])
        if ARGV[7] == '1' then redis.call('XDEL', KEYS[1], e[1]) end
        dead = dead + 1
      end
    else
      out[#out + 1] = { e[1], e[2], n }
    end
  end
end
return { r[1], out, dead, failed }
]]

-- ARGV[3] idle ms to set (0: a heartbeat), ARGV[4..] ids -> { the ids not held }
local TOUCH = HELD .. [[
local lost = {}
for i = 4, #ARGV do
  if held(ARGV[i]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
]]

-- ARGV[3] idle ms: every job this consumer holds is made to look idle that long (XCLAIM
-- JUSTID: no delivery counted), so the other workers' next scan takes it -> how many
local GIVE_BACK = [[
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
for _, e in ipairs(p) do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, e[1], 'IDLE', ARGV[3], 'JUSTID')
end
return #p
]]

-- Deletes this consumer from the group when it holds nothing (a consumer deleted with
-- pending entries would lose them) -> 1 | 0
local FORGET = [[
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if p[1] ~= nil then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
]]

-- ---- the queue ---------------------------------------------------------------------------

local Queue = {}
Queue.__index = Queue
Queue.__name = "baton.redis.Queue"

local QUEUE_OPTS = { redis = true, stream = true, group = true, consumer = true, claim_idle_ms = true,
                     max_deliveries = true, dead_letter = true, keep_acked = true }

local seq = 0
local function consumer_name()
  seq = seq + 1
  return ("baton-%x-%x-%d"):format(floor(baton.clock() * 1000) % 0x100000000,
                                   math.random(0, 0x7fffffff), seq)
end

function M.queue(opts)
  local F = "baton.redis.queue"
  if type(opts) ~= "table" then misuse(F, 1, "opts", "table", opts) end
  check_known(F, opts, QUEUE_OPTS)
  local r = opts.redis
  local mt = getmetatable(r)
  if type(r) ~= "userdata" or type(mt) ~= "table" or mt.__name ~= "baton.Redis" then
    misuse(F, 1, "redis", "a baton.redis client", r)
  end
  local stream = opt_string(F, opts, "stream", nil)
  if stream == nil then misuse(F, 1, "stream", "a non-empty string", nil) end
  local keep = opts.keep_acked
  if keep ~= nil and type(keep) ~= "boolean" then misuse(F, 1, "keep_acked", "boolean", keep) end
  local q = {
    redis = r,
    stream = stream,
    group = opt_string(F, opts, "group", "baton"),
    consumer = opt_string(F, opts, "consumer", nil) or consumer_name(),
    claim_idle_ms = opt_int(F, opts, "claim_idle_ms", 30000, 1),
    max_deliveries = opt_int(F, opts, "max_deliveries", 5, 1),
    dead_letter = opt_string(F, opts, "dead_letter", stream .. ":dead"),
    del = keep and "0" or "1",
  }
  if q.dead_letter == stream then misuse(F, 1, "dead_letter", "a stream other than 'stream'", q.dead_letter) end
  return setmetatable(q, Queue)
end

function Queue:__tostring()
  return ("baton.redis.Queue (stream '%s', group '%s', consumer '%s')"):format(self.stream, self.group,
                                                                            self.consumer)
end

local function fail(fname, msg, kind, detail)
  if type(msg) == "string" then msg = msg:gsub("^baton%.redis:%a+: ", "") end
  return nil, ("%s: %s"):format(fname, tostring(msg)), kind or "error", detail
end

-- The job as JSON; one JSON cannot encode raises with json.encode's reason (what is wrong
-- and where: "a function at $.f", "a cycle at $.self", "NaN/inf at $[1]").
local function encode(fname, job, name, n)
  name = name or "job"
  if job == nil then misuse(fname, 1, name, "a JSON value", job) end
  local ok, s = pcall(json.encode, job)
  if not ok then
    local why = tostring(s):match("%(expected a value JSON can encode, got (.*)%)$")
    if why == nil then misuse(fname, 1, name, "a JSON value", job) end
    if n then why = why:gsub("^(.-) at %$", "%1 at jobs[" .. n .. "]", 1) end
    error(("%s: bad argument #1 '%s' (expected a value JSON can encode, got %s)"):format(fname, name, why), 3)
  end
  return s
end

-- q:enqueue(job) -> the entry's id | nil, msg, kind
function Queue:enqueue(job)
  local F = "baton.redis.queue:enqueue"
  if getmetatable(self) ~= Queue then misuse(F, 0, "self", "baton.redis.Queue", self) end
  local s = encode(F, job)
  local id, msg, kind, detail = self.redis:call("XADD", self.stream, "*", "job", s)
  if id == nil then return fail(F, msg, kind, detail) end
  return id
end

-- q:enqueue_all(jobs) -> { ids } | nil, msg, kind: in one pipeline (one round trip)
function Queue:enqueue_all(jobs)
  local F = "baton.redis.queue:enqueue_all"
  if getmetatable(self) ~= Queue then misuse(F, 0, "self", "baton.redis.Queue", self) end
  if type(jobs) ~= "table" then misuse(F, 1, "jobs", "a list of JSON values", jobs) end
  local enc = {}
  for i = 1, #jobs do enc[i] = encode(F, jobs[i], "jobs", i) end
  if #enc == 0 then return {} end
  local stream = self.stream
  local ids, msg, kind, detail = self.redis:pipeline(function(p)
    for i = 1, #enc do p:call("XADD", stream, "*", "job", enc[i]) end
  end)
  if ids == nil then return fail(F, msg, kind, detail) end
  for i = 1, #ids do
    if type(ids[i]) ~= "string" then return fail(F, ids[i].message or tostring(ids[i]), "redis") end
  end
  return ids
end

-- Creates the group (at the stream's start, so that jobs enqueued before it are run) and
-- the stream if missing. -> true | nil, msg, kind
-- A key of another type under the stream's or the dead-letter stream's name is refused
-- here, naming the key (else every dead letter would fail later with a bare WRONGTYPE).
local function check_type(q, F, key)
  local t, msg, kind, detail = q.redis:call("TYPE", key)
  if t == nil then return fail(F, msg, kind, detail) end
  if t ~= "none" and t ~= "stream" then
    return fail(F, ("%s '%s' is a %s, not a stream"):format(key == q.stream and "the stream" or
                                                            "the dead-letter stream", key, t), "redis")
  end
  return true
end

local function create_group(q, F)
  local ok, msg, kind, detail = q.redis:call("XGROUP", "CREATE", q.stream, q.group, "0", "MKSTREAM")
  if ok == nil and msg ~= nil and not tostring(msg):find("BUSYGROUP", 1, true) then
    return fail(F, msg, kind, detail)
  end
  return true
end

function Queue:ensure()
  local F = "baton.redis.queue:ensure"
  for _, key in ipairs { self.stream, self.dead_letter } do
    local ok, msg, kind, detail = check_type(self, F, key)
    if not ok then return nil, msg, kind, detail end
  end
  return create_group(self, F)
end

-- q:info() -> { length =, pending =, consumers =, dead = } | nil, msg, kind
function Queue:info()
  local F = "baton.redis.queue:info"
  local s, g = self.stream, self.group
  local r, msg, kind, detail = self.redis:pipeline(function(p)
    p:call("XLEN", s)
    p:call("XPENDING", s, g)
    p:call("XLEN", self.dead_letter)
  end)
  if r == nil then return fail(F, msg, kind, detail) end
  for i, key in pairs { [1] = s, [3] = self.dead_letter } do
    if type(r[i]) == "table" then
      return fail(F, ("'%s': %s"):format(key, tostring(r[i].message or r[i])), "redis")
    end
  end
  local pend = r[2]
  local pending, consumers = 0, {}
  if type(pend) == "table" and pend[1] ~= nil then
    pending = pend[1]
    if type(pend[4]) == "table" then
      for _, c in ipairs(pend[4]) do consumers[c[1]] = tonumber(c[2]) end
    end
  elseif type(pend) == "table" and pend.kind and not tostring(pend.message):find("NOGROUP", 1, true) then
    return fail(F, pend.message, "redis")
  end
  return { length = r[1], pending = pending, consumers = consumers, dead = r[3] }
end

-- q:dead_letters([count]) -> { { id =, job =, deliveries =, kind =, error =, consumer = } }
function Queue:dead_letters(count)
  local F = "baton.redis.queue:dead_letters"
  if count ~= nil and (mtype(count) ~= "integer" or count < 1) then misuse(F, 1, "count", "integer >= 1", count) end
  local r, msg, kind, detail = self.redis:call("XRANGE", self.dead_letter, "-", "+", "COUNT", count or 100)
  if r == nil then return fail(F, msg, kind, detail) end
  local out = {}
  for i, e in ipairs(r) do
    local d = { entry = e[1] }
    local f = e[2]
    for j = 1, #f, 2 do d[f[j]] = f[j + 1] end
    d.deliveries = tonumber(d.deliveries)
    local ok, v = pcall(json.decode, d.job)
    if ok then d.job = v end
    out[i] = d
  end
  return out
end

local function run(q, script, args)
  return q.redis:eval(script, { q.stream, q.dead_letter }, args)
end

-- ---- the runner --------------------------------------------------------------------------

local Runner = {}
Runner.__index = Runner
Runner.__name = "baton.redis.QueueRunner"

local Delivery = {}
Delivery.__index = Delivery
Delivery.__name = "baton.redis.Delivery"

function M.runner(opts)
  local F = "baton.runner"
  check_known(F, opts, { queue = true, handler = true, concurrency = true, block_ms = true })
  local q = opts.queue
  if getmetatable(q) ~= Queue then misuse(F, 1, "queue", "a baton.redis.queue", q) end
  if type(opts.handler) ~= "function" then misuse(F, 1, "handler", "function", opts.handler) end
  local conc = opt_int(F, opts, "concurrency", 1, 1)
  local claim_every = max(1, min(floor(q.claim_idle_ms / 2), 5000))
  local block = opt_int(F, opts, "block_ms", min(1000, claim_every), 1)
  return setmetatable({
    q = q, handler = opts.handler, concurrency = conc, block_ms = block, claim_every = claim_every,
    beat_every = max(1, floor(q.claim_idle_ms / 3)),
    state = "new", busy = 0, inflight = {}, freed = baton.notify(), tasks = setmetatable({}, { __mode = "k" }),
    by_id = {},
    counts = { delivered = 0, completed = 0, failed = 0, dead_lettered = 0, reclaimed = 0, errors = 0, lost = 0 },
  }, Runner)
end

function Runner:__tostring()
  return ("baton.runner (queue '%s', consumer '%s', %s)"):format(self.q.stream, self.q.consumer, self.state)
end

local dead_letter_outcome

local function warn(msg)
  if baton.warn then baton.warn(msg) end
end

-- A failure of Redis the reader or the heartbeat met: reported once per outage, counted.
local function trouble(self, what, msg, kind)
  self.counts.errors = self.counts.errors + 1
  if not self.troubled then
    self.troubled = true
    warn(("baton.runner (queue '%s'): %s failed (%s): %s; retrying"):format(self.q.stream, what,
                                                                              tostring(kind), tostring(msg)))
  end
end

-- A dead letter's outcome: `n` entries dead-lettered, or the failure `msg` (the key is not
-- a stream: WRONGTYPE; the entry stays pending and is tried again by a later scan). Reported
-- once until a dead letter succeeds again, naming the dead-letter stream; counted.
dead_letter_outcome = function(self, n, msg, kind)
  self.counts.dead_lettered = self.counts.dead_lettered + n
  if msg == nil then
    if n > 0 then self.dead_troubled = false end
    return
  end
  self.counts.errors = self.counts.errors + 1
  if not self.dead_troubled then
    self.dead_troubled = true
    warn(("baton.runner (queue '%s'): a dead letter to '%s' failed (%s): %s; the job stays pending, "
          .. "tried again by the next claim scans"):format(self.q.stream, self.q.dead_letter, tostring(kind),
                                                             tostring(msg)))
  end
end

-- delivery:ack([commands]) -> true | nil, msg, kind ("closed": another consumer holds the
-- job now, nothing was run). commands: { { "HINCRBY", key, field, 1 }, ... } run in the
-- same script as the XACK.
function Delivery:ack(commands)
  local F = "baton.redis.delivery:ack"
  if getmetatable(self) ~= Delivery then misuse(F, 0, "self", "baton.redis.Delivery", self) end
  if commands ~= nil and type(commands) ~= "table" then misuse(F, 1, "commands", "a list of commands", commands) end
  if self.acked then return fail(F, "the job was acknowledged already", "closed") end
  local q = self.runner.q
  local args = { q.group, q.consumer, self.id, q.del, commands and #commands or 0 }
  for i = 1, commands and #commands or 0 do
    local c = commands[i]
    if type(c) ~= "table" or #c == 0 or type(c[1]) ~= "string" then
      misuse(F, 1, "commands", "a list of commands (lists of strings or numbers)", c)
    end
    args[#args + 1] = #c
    for j = 1, #c do
      local t = type(c[j])
      if t ~= "string" and t ~= "number" then
        misuse(F, 1, "commands", "a list of commands (lists of strings or numbers)", c[j])
      end
      args[#args + 1] = c[j]
    end
  end
  local v, msg, kind, detail = run(q, ACK, args)
  if v == nil then return fail(F, msg, kind, detail) end
  if v == 0 then
    self.acked = true
    return fail(F, ("job %s is held by another consumer now (it was idle past claim_idle_ms)"):format(self.id),
                "closed")
  end
  self.acked = true
  return true
end

-- The failure of a handler's outcome (the one rule): nil when it succeeded, else a
-- baton.Error; the cancellation is raised again.
local function outcome(ok, a, b, c, d)
  if ok then
    if a == nil and b ~= nil then
      if type(b) == "table" and type(b.kind) == "string" then
        return baton.error(b.kind, tostring(b.message), type(b.detail) == "table" and b.detail or nil)
      end
      return baton.error(type(c) == "string" and c ~= "" and c or "error", tostring(b),
                         type(d) == "table" and d or nil)
    end
    return nil
  end
  if type(a) == "table" and type(a.kind) == "string" then
    if a.kind == "cancelled" then error(a, 0) end
    return baton.error(a.kind, tostring(a.message), type(a.detail) == "table" and a.detail or nil)
  end
  local text = type(a) == "string" and a or tostring(a)
  return baton.error("error", text, type(a) ~= "string" and { value = a } or nil)
end

-- Runs the handler on one job until it is acked or dead-lettered (failed deliveries are
-- claimed again at once and run again). The task of the job.
local function run_job(self, id, fields, deliveries)
  local q, counts = self.q, self.counts
  local _ <close> = setmetatable({}, { __close = function()
    self.inflight[id] = nil
    self.by_id[id] = nil
    self.busy = self.busy - 1
    self.freed:notify_one()
  end })
  while true do
    local raw
    for i = 1, #fields, 2 do if fields[i] == "job" then raw = fields[i + 1] end end
    local d = setmetatable({ id = id, deliveries = deliveries, runner = self }, Delivery)
    self.inflight[id] = d
    counts.delivered = counts.delivered + 1
    local ok, job, jmsg = pcall(json.decode, raw or "")
    local err
    local final = false
    if not ok or raw == nil or (job == nil and jmsg ~= nil) then
      err = baton.error("malformed", ("the entry has no JSON 'job' field (%s)"):format(tostring(jmsg or job)))
      final = true  -- retrying cannot help
    else
      err = outcome(xpcall(self.handler, debug.traceback, job, d))
    end
    if err == nil then
      if not d.acked then
        local v, msg, kind = d:ack()
        if v == nil and kind ~= "closed" then
          trouble(self, "an ack", msg, kind)  -- the job stays pending: claimed again later
        end
      end
      counts.completed = counts.completed + 1
      return
    end
    counts.failed = counts.failed + 1
    local text = tostring(err.message):match("^(.-)\nstack traceback:") or tostring(err.message)
    if final or deliveries >= q.max_deliveries then
      warn(("baton.runner (queue '%s'): job %s failed on delivery %d of %d (kind '%s'): %s; dead-lettered")
           :format(q.stream, id, deliveries, q.max_deliveries, err.kind, err.message))
      local v, msg, kind = run(q, DEAD, { q.group, q.consumer, id, q.del, deliveries, err.kind, text, raw or "" })
      dead_letter_outcome(self, v == 1 and 1 or 0, v == nil and msg or nil, kind)
      return
    end
    warn(("baton.runner (queue '%s'): job %s failed on delivery %d of %d (kind '%s'): %s; retrying")
         :format(q.stream, id, deliveries, q.max_deliveries, err.kind, text))
    local v, msg, kind = run(q, RETRY, { q.group, q.consumer, id })
    if type(v) ~= "table" then
      if v == nil then trouble(self, "a retry", msg, kind) end
      return  -- not held any more, or Redis is away: the claim scan finds it again
    end
    fields, deliveries = v[1], v[2]
  end
end

local function dispatch(self, g, id, fields, deliveries)
  self.busy = self.busy + 1
  local t = g:spawn(run_job, self, id, fields, deliveries)
  self.tasks[t] = true
  self.by_id[id] = t
end

-- Waits while every slot is busy; the number of free slots.
local function free_slots(self)
  while self.busy >= self.concurrency do self.freed:notified() end
  return self.concurrency - self.busy
end

-- The reader: claims what is stalled (every claim_every ms, and until the scan is done),
-- reads new entries (blocking for at most block_ms on its own connection), and starts a
-- task per job.
local function reader(self, g)
  local q, counts = self.q, self.counts
  local conn, backoff = nil, 0
  local cursor, next_claim, need_group = "0-0", 0, true
  local function pause()
    backoff = backoff == 0 and 50 or min(backoff * 2, 2000)
    baton.sleep(backoff)
  end
  while true do
    local ok = true
    if need_group then
      -- the group is all the reader needs; a dead-letter key of the wrong type is reported
      -- (jobs that fail stay pending until it is fixed) but does not stop the work
      local v, msg, kind = create_group(q, "baton.redis.queue:ensure")
      if v then
        need_group = false
        local tv, tmsg, tkind = check_type(q, "baton.runner", q.dead_letter)
        if tv == nil and tkind == "redis" then dead_letter_outcome(self, 0, tmsg, tkind) end
      else
        ok = false; trouble(self, "creating the group", msg, kind)
      end
    end
    if ok and conn == nil then
      local c, msg, kind = q.redis:duplicate()
      if c then conn = c; self.conn = c else ok = false; trouble(self, "connecting the reader", msg, kind) end
    end
    if not ok then
      pause()
    else
      local n = free_slots(self)
      local now = baton.now()
      local claimed = 0
      if now >= next_claim then
        local v, msg, kind = run(q, CLAIM, { q.group, q.consumer, q.claim_idle_ms, cursor, n,
                                             q.max_deliveries, q.del })
        if v == nil then
          ok = false
          if kind == "redis" and tostring(msg):find("NOGROUP", 1, true) then need_group = true end
          trouble(self, "a claim scan", msg, kind)
        else
          cursor = v[1]
          if cursor == "0-0" then next_claim = now + self.claim_every end
          dead_letter_outcome(self, v[3], v[4] or nil, "redis")
          for _, e in ipairs(v[2]) do
            -- a job of this worker's own, idle because the loop stalled past claim_idle_ms
            -- while its handler ran: it still runs here, and is ours again; not a second run
            if not self.inflight[e[1]] then
              counts.reclaimed = counts.reclaimed + 1
              claimed = claimed + 1
              dispatch(self, g, e[1], e[2], e[3])
            end
          end
        end
      end
      if ok and claimed < n then
        local wait = claimed > 0 and 0 or max(1, min(self.block_ms, next_claim - baton.now()))
        local args = { "XREADGROUP", "GROUP", q.group, q.consumer, "COUNT", n - claimed }
        if wait > 0 then args[#args + 1] = "BLOCK"; args[#args + 1] = floor(wait) end
        args[#args + 1] = "STREAMS"; args[#args + 1] = q.stream; args[#args + 1] = ">"
        local v, msg, kind = conn:call(unpack(args))
        if v == nil and msg ~= nil then
          ok = false
          if kind == "redis" and tostring(msg):find("NOGROUP", 1, true) then need_group = true end
          if conn:closed() then  -- its connection is gone: a new one next time
            conn:close()
            conn, self.conn = nil, nil
          end
          trouble(self, "a read", msg, kind)
        elseif v ~= nil then
          for _, s in ipairs(v) do
            for _, e in ipairs(s[2]) do
              -- read again while it runs here (the group was destroyed and made anew from
              -- the stream's start): the run under way holds it; not a second run
              if type(e) == "table" and not self.by_id[e[1]] then
                dispatch(self, g, e[1], e[2], 1)
              end
            end
          end
        end
      end
      if ok then
        backoff = 0
        self.troubled = false
      else
        pause()
      end
    end
  end
end

-- The heartbeat: keeps the running jobs from looking idle to the other workers' scans. A
-- job this consumer no longer holds at two heartbeats in a row, while its handler still
-- runs unacknowledged (this worker stalled past claim_idle_ms, or another consumer took it
-- by hand), is another worker's now: its handler here is cancelled (its slot freed; it
-- would only run the job a second time at once) and counted in stats().lost.
local function heartbeat(self)
  local q = self.q
  while true do
    baton.sleep(self.beat_every)
    local ids = { q.group, q.consumer, 0 }
    for id in pairs(self.inflight) do ids[#ids + 1] = id end
    if #ids > 3 then
      local v, msg, kind = run(q, TOUCH, ids)
      if v == nil then trouble(self, "a heartbeat", msg, kind) end
      if type(v) == "table" then
        local missing = {}
        for _, id in ipairs(v) do missing[id] = true end
        for id, d in pairs(self.inflight) do
          if missing[id] and not d.acked then
            if d.missed then
              local t = self.by_id[id]
              if t then
                self.counts.lost = self.counts.lost + 1
                warn(("baton.runner (queue '%s'): job %s is held by another consumer now (idle past "
                      .. "claim_idle_ms): its handler here is cancelled"):format(q.stream, id))
                t:abort()
              end
            else
              d.missed = true
            end
          else
            d.missed = nil
          end
        end
      end
    end
  end
end

-- r:start() -> r: the reader and the heartbeat start (the group is made if missing).
function Runner:start()
  local F = "baton.runner:start"
  if getmetatable(self) ~= Runner then misuse(F, 0, "self", "baton.runner", self) end
  if self.state ~= "new" then error(("%s: the runner is %s (start it once)"):format(F, self.state), 2) end
  self.state = "running"
  local g = baton.group { detached = true }
  self.g = g
  g:spawn(reader, self, g)
  g:spawn(heartbeat, self)
  return self
end

-- r:stop(): the tasks are aborted (from a task: and awaited), the jobs that were running
-- are given back to the group at once, the reader's connection is closed.
local function stop(self, nowait)
  if self.state == "stopped" then return end
  self.state = "stopped"
  local g = self.g
  self.g = nil
  if g then
    if nowait then g:shutdown() else g:close() end
  end
  if self.conn then self.conn:close(); self.conn = nil end
  local cur = not nowait and baton.current()
  local q = self.q
  local inside = cur and self.tasks[cur]  -- stopped by a handler: its own task is aborted too
  if cur and not inside and not q.redis:closed() then
    -- best effort: give back what this consumer holds (the jobs cancelled, and any a read
    -- cut short by the stop had delivered), so another worker's next scan takes them
    -- instead of waiting claim_idle_ms; then leave the group if nothing is held
    pcall(run, q, GIVE_BACK, { q.group, q.consumer, q.claim_idle_ms })
    pcall(run, q, FORGET, { q.group, q.consumer })
  end
  self.inflight = {}
  self.by_id = {}
end

function Runner:stop()
  if getmetatable(self) ~= Runner then misuse("baton.runner:stop", 0, "self", "baton.runner", self) end
  stop(self, false)
end

-- <close> cannot wait: the tasks are aborted and unwind on the loop's next turn; the jobs
-- that were running are found by the scans after claim_idle_ms.
function Runner:__close() stop(self, true) end

-- r:status() -> "new" | "running" | "stopped"
function Runner:status() return self.state end

-- r:stats() -> { delivered, completed, failed, dead_lettered, reclaimed, errors, lost, running }
function Runner:stats()
  local c = self.counts
  return { delivered = c.delivered, completed = c.completed, failed = c.failed,
           dead_lettered = c.dead_lettered, reclaimed = c.reclaimed, errors = c.errors, lost = c.lost,
           running = self.busy }
end

return M
