-- baton.store: where the stateful policies keep state they may share — rate limits, leases,
-- counters, cooldowns, single-flight results — as a handful of atomic operations
-- (docs/store.md is the contract). baton.store.memory() is the in-process store; a second
-- implementation (Redis) provides the same methods and drops in without touching the
-- policies. The module compiles this file in (src/lua/lrouter.c runs it with the module
-- table when `require "baton"` opens it).
--
-- Also here: the rate limiter over a store (baton.ratelimit{ store =, key = } builds it
-- through store._ratelimit after checking the options in C), written over the store's
-- operations so that it works with any store, one whose operations await included; and
-- dedup over a store (baton.dedup{ store = } builds it through store._dedup), the same way.
--
-- Every operation returns the convention's shapes (docs/errors.md): a value, or nil, msg,
-- kind, detail; misuse raises "<fname>: bad argument #n 'name' (expected X, got Y)".
local baton = ...
if type(baton) ~= "table" then baton = require "baton" end  -- required as a plain module

local clock, notify = baton.clock, baton.notify
local type, tostring, setmetatable, getmetatable = type, tostring, setmetatable, getmetatable
local pairs, error, pcall, floor, ceil, huge = pairs, error, pcall, math.floor, math.ceil, math.huge
local mtype = math.type

local store = {}
baton.store = store

-- ---- misuse, as the C toolkit words it ---------------------------------------------------

local got = baton._got  -- how the C toolkit shows a value in a misuse message

-- The level of the first function outside this file (the caller's code, or a C function),
-- for error(): the checks are reached through helpers of varying depth.
local HERE, getinfo = debug.getinfo(1, "S").source, debug.getinfo
local function caller_level()
  local level = 3  -- 1 this function, 2 misuse, 3 what called misuse
  while true do
    local info = getinfo(level, "S")
    if info == nil or info.source ~= HERE then return level - 1 end
    level = level + 1
  end
end

local function misuse(fname, n, name, expected, v)
  error(("%s: bad argument #%d '%s' (expected %s, got %s)"):format(fname, n, name, expected, got(v)),
        caller_level())
end

-- A store's failure, reported by the policy over it: prefixed with the policy's function.
local function store_failure(fname, msg, kind, detail)
  return nil, ("%s: %s"):format(fname, tostring(msg)), kind or "error", detail
end

local function check_key(fname, n, key)
  if type(key) ~= "string" then misuse(fname, n, "key", "string", key) end
end

local function check_ms(fname, n, name, v, optional)
  if v == nil and optional then return end
  if type(v) ~= "number" or not (v >= 0 and v < 1e15) then misuse(fname, n, name, "milliseconds >= 0", v) end
end

local function check_count(fname, n, name, v, min)
  if mtype(v) ~= "integer" or v < min then misuse(fname, n, name, "integer >= " .. min, v) end
end

local function check_positive(fname, n, name, v)
  if type(v) ~= "number" or not (v > 0 and v < 1e15) then misuse(fname, n, name, "a number > 0", v) end
end

-- The arguments of each operation, checked the same way by every store (memory, Redis).
local check = {}
function check.gcra_take(F, key, rate, per_ms, burst, cost, mode)
  check_key(F, 1, key)
  check_positive(F, 2, "rate", rate)
  check_positive(F, 3, "per_ms", per_ms)
  if type(burst) ~= "number" or burst ~= burst or burst < 1 then  -- NaN too
    misuse(F, 4, "burst", "a number >= 1", burst)
  end
  if type(cost) ~= "number" or cost ~= cost then misuse(F, 5, "cost", "number", cost) end
  if mode ~= nil and mode ~= "peek" and mode ~= "force" then
    misuse(F, 6, "mode", "nil, 'peek' or 'force'", mode)
  end
end
function check.lease(F, key, holder)
  check_key(F, 1, key)
  if type(holder) ~= "string" then misuse(F, 2, "holder", "string", holder) end
end
function check.incr(F, key, by, ttl_ms)
  check_key(F, 1, key)
  if type(by) ~= "number" or by ~= by then misuse(F, 2, "by", "number", by) end
  check_ms(F, 3, "ttl_ms", ttl_ms, true)
end

-- ---- the memory store -------------------------------------------------------------------
-- Each family of operations has its own table (a key names one thing per family). Expired
-- entries are dropped when seen, and by a sweep of the whole store each time it has grown
-- to twice the size the last sweep left (amortised O(1) an operation), so memory follows
-- the live keys.

local Memory = { __name = "baton.store.Memory" }
Memory.__index = Memory
local M = "baton.store.memory:"
-- The methods' names for their messages, made once (a concatenation a call interned a
-- string each time).
local function names(prefix)
  return setmetatable({}, { __index = function(t, k)
    local v = prefix .. k
    t[k] = v
    return v
  end })
end
local MF = names(M)

function store.memory()
  return setmetatable({ tat = {}, leases = {}, counters = {}, cooldowns = {}, flights = {},
                        size = 0, swept = 0 }, Memory)
end

function Memory.now(_)
  return clock()
end

-- Counts an entry made; sweeps when the store has doubled since the last sweep.
local function grew(self)
  self.size = self.size + 1
  if self.size < 2 * self.swept + 64 then return end
  local now, n = clock(), 0
  for k, tat in pairs(self.tat) do
    if tat <= now then self.tat[k] = nil else n = n + 1 end
  end
  for k, l in pairs(self.leases) do
    local live = 0
    for h, exp in pairs(l) do
      if exp <= now then l[h] = nil else live = live + 1 end
    end
    if live == 0 then self.leases[k] = nil else n = n + live end
  end
  for _, family in pairs { self.counters, self.cooldowns, self.flights } do
    for k, e in pairs(family) do
      if e.expires and e.expires <= now then family[k] = nil else n = n + 1 end
    end
  end
  self.size, self.swept = n, n
end

-- gcra_take(key, rate, per_ms, burst, cost [, mode]) -> remaining
--   | nil, msg, "rate_limited", { retry_after_ms }
-- mode nil: take if it fits; "peek": the same answer, nothing taken; "force": always taken
-- (cost may be negative: a give-back, never past now).
function Memory:gcra_take(key, rate, per_ms, burst, cost, mode)
  local F = MF.gcra_take
  check.gcra_take(F, key, rate, per_ms, burst, cost, mode)
  local now, interval = clock(), per_ms / rate
  local tolerance = burst * interval
  local old = self.tat[key]
  local tat = old and old > now and old or now
  local inc = cost * interval
  if mode == "force" then
    local new = tat + inc
    if inc < 0 then
      local low = old and old < now and old or now
      if new < low then new = low end
    end
    if old == nil then grew(self) end
    self.tat[key] = new
    local free = now + tolerance - (new > now and new or now)
    return free > 0 and floor(free / interval + 1e-9) or 0
  end
  if cost > burst then misuse(F, 5, "cost", "a cost <= burst", cost) end
  local allow = tat + inc - tolerance
  if allow > now then
    return nil, ("%s%s units do not fit under '%s'"):format(F .. ": ", cost, key), "rate_limited",
           { retry_after_ms = ceil(allow - now) }
  end
  if mode ~= "peek" then
    if old == nil then grew(self) end
    self.tat[key] = tat + inc
  end
  return floor((now + tolerance - tat - inc) / interval + 1e-9)
end

-- Live holders of a lease table (expired ones removed), and the soonest expiry.
local function live_holders(l, now)
  local n, soonest = 0, huge
  for h, exp in pairs(l) do
    if exp <= now then
      l[h] = nil
    else
      n = n + 1
      if exp < soonest then soonest = exp end
    end
  end
  return n, soonest
end

-- lease_acquire(key, holder, limit, ttl_ms) -> true | nil, msg, "busy", { holders, limit, retry_after_ms }
-- A holder that holds the lease already renews it.
function Memory:lease_acquire(key, holder, limit, ttl_ms)
  local F = MF.lease_acquire
  check.lease(F, key, holder)
  check_count(F, 3, "limit", limit, 1)
  check_ms(F, 4, "ttl_ms", ttl_ms)
  local now = clock()
  local l = self.leases[key]
  if l == nil then
    l = {}
    self.leases[key] = l
  end
  if (l[holder] or 0) > now then
    l[holder] = now + ttl_ms
    return true
  end
  local n, soonest = live_holders(l, now)
  if n >= limit then
    return nil, ("%s: '%s' has %d of %d holders"):format(F, key, n, limit), "busy",
           { holders = n, limit = limit, retry_after_ms = ceil(soonest - now) }
  end
  l[holder] = now + ttl_ms
  grew(self)
  return true
end

-- lease_renew(key, holder, ttl_ms) -> true | nil, msg, "closed", { key, holder }
function Memory:lease_renew(key, holder, ttl_ms)
  local F = MF.lease_renew
  check.lease(F, key, holder)
  check_ms(F, 3, "ttl_ms", ttl_ms)
  local now, l = clock(), self.leases[key]
  if l == nil or (l[holder] or 0) <= now then
    if l then l[holder] = nil end
    return nil, ("%s: '%s' does not hold '%s' (expired or released)"):format(F, holder, key), "closed",
           { key = key, holder = holder }
  end
  l[holder] = now + ttl_ms
  return true
end

-- lease_release(key, holder) -> true (idempotent)
function Memory:lease_release(key, holder)
  local F = MF.lease_release
  check.lease(F, key, holder)
  local l = self.leases[key]
  if l then l[holder] = nil end
  return true
end

-- lease_holders(key) -> the number of live holders
function Memory:lease_holders(key)
  check_key(M .. "lease_holders", 1, key)
  local l = self.leases[key]
  return l and (live_holders(l, clock())) or 0
end

-- An entry of the counters, cooldowns or flights, nil when absent or expired.
local function entry(family, key, now)
  local e = family[key]
  if e and e.expires and e.expires <= now then
    family[key] = nil
    return nil
  end
  return e
end

-- incr(key, by [, ttl_ms]) -> the new value. A counter made by incr expires ttl_ms after it
-- was made (none: never); later increments do not move the expiry (a fixed window).
function Memory:incr(key, by, ttl_ms)
  local F = MF.incr
  check.incr(F, key, by, ttl_ms)
  local now = clock()
  local e = entry(self.counters, key, now)
  if e == nil then
    e = { value = 0, expires = ttl_ms and now + ttl_ms }
    self.counters[key] = e
    grew(self)
  end
  e.value = e.value + by
  return e.value
end

-- get(key) -> the counter's value, 0 when absent or expired
function Memory:get(key)
  check_key(M .. "get", 1, key)
  local e = entry(self.counters, key, clock())
  return e and e.value or 0
end

-- set_cooldown(key, ttl_ms) -> true. The flag is up until the later of its current end and
-- now + ttl_ms (a shorter cooldown never cuts a longer one).
function Memory:set_cooldown(key, ttl_ms)
  local F = MF.set_cooldown
  check_key(F, 1, key)
  check_ms(F, 2, "ttl_ms", ttl_ms)
  local now = clock()
  local e = entry(self.cooldowns, key, now)
  if e == nil then
    self.cooldowns[key] = { expires = now + ttl_ms }
    grew(self)
  elseif e.expires < now + ttl_ms then
    e.expires = now + ttl_ms
  end
  return true
end

-- cooldown(key) -> the milliseconds left (> 0), or 0 when the flag is down
function Memory:cooldown(key)
  check_key(M .. "cooldown", 1, key)
  local now = clock()
  local e = entry(self.cooldowns, key, now)
  return e and e.expires - now or 0
end

-- claim(key, ttl_ms) -> "new" | "in_progress" | "cached", value
-- "new" marks the key in progress (for ttl_ms: a claimer that died cannot hold it for
-- ever); the claimer then calls complete or fail.
function Memory:claim(key, ttl_ms)
  local F = MF.claim
  check_key(F, 1, key)
  check_ms(F, 2, "ttl_ms", ttl_ms)
  local now = clock()
  local e = entry(self.flights, key, now)
  if e == nil then
    self.flights[key] = { expires = now + ttl_ms }
    grew(self)
    return "new"
  end
  if e.done then return "cached", e.value end
  return "in_progress"
end

-- complete(key, value, ttl_ms) -> true: the result, kept ttl_ms
function Memory:complete(key, value, ttl_ms)
  local F = MF.complete
  check_key(F, 1, key)
  if value == nil then misuse(F, 2, "value", "a value other than nil", value) end
  check_ms(F, 3, "ttl_ms", ttl_ms)
  if self.flights[key] == nil then grew(self) end
  self.flights[key] = { expires = clock() + ttl_ms, done = true, value = value }
  return true
end

-- fail(key) -> true: an in-progress key is forgotten (a cached result stays)
function Memory:fail(key)
  check_key(M .. "fail", 1, key)
  local e = self.flights[key]
  if e and not e.done then self.flights[key] = nil end
  return true
end

-- del(key) -> true: the key is gone from every family
function Memory:del(key)
  check_key(M .. "del", 1, key)
  self.tat[key], self.leases[key], self.counters[key], self.cooldowns[key], self.flights[key] =
    nil, nil, nil, nil, nil
  return true
end

function Memory:__tostring()
  return ("baton.store.Memory (%d entries)"):format(self.size)
end

-- ---- a breaker backend over a store ------------------------------------------------------
-- The six methods of a breaker backend (docs/resilience.md): the failure count is a
-- counter, the open time a counter holding a clock reading (absent: closed). A store
-- failure raises (a backend that cannot answer is not an outcome of the call). Beside
-- them, the optional parts for a fleet (src/lua/lbreaker.c):
--   now(): the store's clock. A breaker without a clock option decides on it: the open
--     time is stamped by the store (set_open_at without ms) and read with the store's now
--     beside it, so processes whose clocks differ share one clock (the server's TIME on
--     Redis: one script each, no extra round trip).
--   acquire_probe(svc, open_at) / release_probe(svc): the probe lease, one for the fleet
--     and for one opening: granted only while the open time still is open_at (a failed
--     probe reopens, a successful one clears it; both before it releases), held for
--     probe_ttl_ms at most (a prober that died frees it then). A store with the private
--     _brk_* operations (the Redis store) does each in one atomic script; any other, with
--     a lease of capacity 1 and a read of the open time after it.

local probe_seq = 0

function store.breaker_backend(s, prefix, opts)
  local F = "baton.store.breaker_backend"
  if type(s) ~= "table" and type(s) ~= "userdata" then misuse(F, 1, "store", "a store (docs/store.md)", s) end
  if prefix ~= nil and type(prefix) ~= "string" then misuse(F, 2, "prefix", "string", prefix) end
  if opts ~= nil and type(opts) ~= "table" then misuse(F, 3, "opts", "table", opts) end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "probe_ttl_ms" then
      misuse(F, 3, "opts", "known options (probe_ttl_ms), got '" .. tostring(k) .. "'", nil)
    end
  end
  local ttl = opts.probe_ttl_ms
  if ttl == nil then ttl = 30000 end
  check_positive(F, 3, "probe_ttl_ms", ttl)
  prefix = prefix or "breaker:"
  local function ok(v, msg, kind, detail)
    if v == nil and msg ~= nil then error(baton.error(kind or "error", tostring(msg), detail), 3) end
    return v
  end
  local fast = type(s) == "table" and type(s._brk_open_at) == "function"
  local held = {}   -- svc -> the holder of the probe lease this backend took
  local b = {}
  function b.increment_failures(_, svc) return ok(s:incr(prefix .. svc .. ":failures", 1)) end
  function b.reset_failures(_, svc) ok(s:del(prefix .. svc .. ":failures")) end
  function b.get_failures(_, svc) return ok(s:get(prefix .. svc .. ":failures")) end
  function b.now(_) return ok(s:now()) end
  function b.set_open_at(_, svc, ms)
    local key = prefix .. svc .. ":open_at"
    if fast then return ok(s:_brk_set_open_at(key, ms)) end
    if ms == nil then ms = floor(ok(s:now())) end
    ok(s:del(key))
    ok(s:incr(key, ms))
  end
  function b.clear_open_at(_, svc) ok(s:del(prefix .. svc .. ":open_at")) end
  -- -> the open time (nil: not open) and, when open, the store's now
  function b.get_open_at(_, svc)
    local key = prefix .. svc .. ":open_at"
    if fast then
      local at, now, kind, detail = s:_brk_open_at(key)
      ok(at, now, kind, detail)
      if at == false then return nil end
      return at, now
    end
    local v = ok(s:get(key))
    if v == 0 then return nil end
    return v, ok(s:now())
  end
  function b.acquire_probe(_, svc, open_at)
    probe_seq = probe_seq + 1
    local holder = ("%s:%d:%d"):format(tostring(b):match("0x%x+") or "b", probe_seq, math.random(1 << 30))
    local key, okey = prefix .. svc .. ":probe", prefix .. svc .. ":open_at"
    local granted
    if fast then
      granted = ok(s:_brk_acquire_probe(okey, key, open_at, holder, ttl))
    else
      granted = s:lease_acquire(key, holder, 1, ttl)
      if granted then
        local v = ok(s:get(okey))
        if v == 0 or floor(v) ~= open_at then
          ok(s:lease_release(key, holder))
          granted = false
        end
      end
    end
    if granted then held[svc] = holder end
    return granted and true or false
  end
  function b.release_probe(_, svc)
    local holder = held[svc]
    if holder == nil then return end
    held[svc] = nil
    if fast then ok(s:_brk_release_probe(prefix .. svc .. ":probe", holder))
    else ok(s:lease_release(prefix .. svc .. ":probe", holder)) end
  end
  return b
end

-- ---- dedup over a store -----------------------------------------------------------------
-- baton.dedup{ ttl_ms =, store =, key_prefix =, poll_ms = } (ldedup.c checks the options and
-- calls store._dedup): check/complete/fail are the store's claim/complete/fail on
-- key_prefix .. key, so the single flight holds across every dedup sharing the store. run
-- claims; the claimer runs fn inline and stores what it returned (packed: { n =, v = [...] },
-- nils as json.null), or releases the claim (store:fail) on a failure, a raise, a
-- cancellation or a result JSON cannot encode; the others poll the store every poll_ms,
-- woken at once when a dedup object of this process settles the key. A waiter's only state
-- is its entry in `bells` (removed when it stops waiting, aborted or not); a claimer's, the
-- claim in the store, settled under baton.shield so that an abort cannot leave it held.

local json = baton.json
local null = json.null

local SD = { __name = "baton.Dedup" }
SD.__index = SD
local D = "baton.dedup:"

function store._dedup(s, ttl, prefix, poll_ms)
  if type(s) ~= "table" and type(s) ~= "userdata" then
    misuse("baton.dedup", 1, "store", "a store (docs/store.md)", s)
  end
  for _, op in ipairs { "claim", "complete", "fail" } do
    local ok, fn = pcall(function() return s[op] end)
    if not ok or type(fn) ~= "function" then
      misuse("baton.dedup", 1, "store", "a store with claim, complete and fail methods", s)
    end
  end
  -- A watched waiter (pub/sub) polls only to notice a claim that expired: every poll_ms,
  -- but not more often than half the TTL nor than once a second.
  local watch_poll = math.max(poll_ms, math.min(1000, ttl / 2))
  return setmetatable({ store = s, ttl = ttl, prefix = prefix, poll = poll_ms, bells = {},
                        running = {}, watch_poll = watch_poll }, SD)
end

local function dself(fname, self)
  if getmetatable(self) ~= SD then misuse(fname, 0, "self", "baton.Dedup", self) end
end

-- The caller's key (numbers converted, as the in-process dedup does) and the store's.
local function dkey(fname, self, key)
  dself(fname, self)
  if mtype(key) ~= nil then key = tostring(key)
  elseif type(key) ~= "string" then misuse(fname, 1, "key", "string", key) end
  return key, self.prefix .. key
end

local function pack(...)
  local n, v = select("#", ...), {}
  for i = 1, n do
    local x = select(i, ...)
    if x == nil then x = null end
    v[i] = x
  end
  return { n = n, v = json.array(v) }
end

-- The values of a packed result | nil, msg, "malformed", { key } for anything else.
local function unpack_result(fname, key, p)
  if type(p) ~= "table" or mtype(p.n) ~= "integer" or p.n < 0 or type(p.v) ~= "table" then
    return nil, ("%s: the store's value for '%s' is not a dedup result (got %s)"):format(fname, key, got(p)),
           "malformed", { key = key }
  end
  local v = {}
  for i = 1, p.n do
    local x = p.v[i]
    if x ~= null then v[i] = x end
  end
  return true, table.unpack(v, 1, p.n)
end

local function cached(fname, key, p)
  local r = table.pack(unpack_result(fname, key, p))
  if r[1] == nil then return table.unpack(r, 1, r.n) end
  return "cached", table.unpack(r, 2, r.n)
end

-- Wakes the waiters of this process on the key: its state has changed.
local function ring(self, skey)
  local b = self.bells[skey]
  if b then b.n:notify_all() end
end

function SD:check(key, ttl_ms)
  local F = D .. "check"
  local k, skey = dkey(F, self, key)
  check_ms(F, 2, "ttl_ms", ttl_ms, true)
  local st, v, kind, detail = self.store:claim(skey, ttl_ms or self.ttl)
  if st == nil then return store_failure(F, v, kind, detail) end
  if st == "cached" then return cached(F, k, v) end
  return st
end

function SD:complete(key, ...)
  local F = D .. "complete"
  local _, skey = dkey(F, self, key)
  for i = 1, select("#", ...) do
    local x = select(i, ...)
    if x ~= nil then
      local ok, err = pcall(json.encode, x)
      if not ok then
        local what = tostring(err):match("got (.*)%)$") or type(x)
        misuse(F, 1 + i, "value", "a value JSON can encode", setmetatable({}, { __name = what }))
      end
    end
  end
  local ok, msg, kind, detail = self.store:complete(skey, pack(...), self.ttl)
  ring(self, skey)
  if not ok then return store_failure(F, msg, kind, detail) end
  return true
end

function SD:fail(key)
  local F = D .. "fail"
  local _, skey = dkey(F, self, key)
  local ok, msg, kind, detail = self.store:fail(skey)
  ring(self, skey)
  if not ok then return store_failure(F, msg, kind, detail) end
  return true
end

function SD:size()
  dself(D .. "size", self)
  error(D .. "size: not available over a store (the store holds the entries)", 2)
end

-- Waits for the key to change: woken by this process, or after poll_ms to ask the store.
local function await_change(self, skey)
  local b = self.bells[skey]
  if b == nil then
    b = { n = notify(), waiting = 0 }
    self.bells[skey] = b
  end
  b.waiting = b.waiting + 1
  local ok, err = pcall(b.n.notified, b.n, self.poll)
  b.waiting = b.waiting - 1
  if b.waiting == 0 and self.bells[skey] == b then self.bells[skey] = nil end
  if not ok then error(err, 0) end
end

-- The claimer runs fn; the claim is settled whatever happens (shielded: awaits of a
-- remote store complete even under an abort, which is raised once it is settled).
local function execute(self, F, k, skey, me, fn, ...)
  local prev = self.running[skey]
  self.running[skey] = me or true
  local r = table.pack(pcall(fn, ...))
  self.running[skey] = prev
  local ok = r[1] and not (r.n >= 3 and r[2] == nil and r[3] ~= nil)
  local packed
  if ok then
    packed = pack(table.unpack(r, 2, r.n))
    if not pcall(json.encode, packed) then packed = nil end  -- not shared: released
  end
  baton.shield(function()
    local done, msg, kind
    if packed then done, msg, kind = self.store:complete(skey, packed, self.ttl)
    else done, msg, kind = self.store:fail(skey) end
    ring(self, skey)
    if not done then
      baton.warn(("%s: the result for '%s' was not %s: %s (%s)")
                 :format(F, k, packed and "stored" or "released", tostring(msg), tostring(kind)))
    end
  end)
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

local WatchGuard = {}
WatchGuard.__index = WatchGuard
function WatchGuard.close_watch(g)
  if g.w then
    g.w:close()
    g.w = nil
  end
end
WatchGuard.__close = WatchGuard.close_watch

function SD:run(key, fn, ...)
  local F = D .. "run"
  local k, skey = dkey(F, self, key)
  if type(fn) ~= "function" then misuse(F, 2, "fn", "function", fn) end
  local me = baton.current()
  if me ~= nil and self.running[skey] == me then
    error(("%s: the execution for key '%s' called %s for that same key (it would wait for itself)")
          :format(F, k, F), 2)
  end
  -- A store that can tell its waiters (the Redis store's _watch) is watched from the first
  -- "in_progress" on, then claimed at once again (a settle before the watch was missed);
  -- the watch is closed on every way out, an abort's included.
  local guard <close> = setmetatable({}, WatchGuard)
  local can_watch = type(self.store) == "table" and type(self.store._watch) == "function"
  while true do
    local st, v, kind, detail = self.store:claim(skey, self.ttl)
    if st == "new" then
      guard:close_watch()
      return execute(self, F, k, skey, me, fn, ...)
    end
    if st == "cached" then
      local r = table.pack(unpack_result(F, k, v))
      if r[1] == nil then return table.unpack(r, 1, r.n) end
      return table.unpack(r, 2, r.n)
    end
    if st == nil then return store_failure(F, v, kind, detail) end
    if me == nil then error(F .. ": not inside a baton task (the key is in progress: it would wait)", 2) end
    if can_watch then
      can_watch = false
      guard.w = self.store:_watch(skey)
      if guard.w == nil then await_change(self, skey) end
    elseif guard.w then
      guard.w:wait(self.watch_poll)  -- told at once; the poll is the fallback
    else
      await_change(self, skey)
    end
  end
end

function SD:__tostring()
  return ("baton.Dedup (ttl %d ms, over a store, key prefix '%s')"):format(self.ttl, self.prefix)
end

-- ---- the rate limiter over a store --------------------------------------------------------
-- The same API as the C limiter (lratelimit.c). Callers of this process queue FIFO (a
-- caller is queued before its first try, so a try in flight counts): only the head asks
-- the store, sleeping the retry_after_ms it is told between tries (woken
-- early by an adjust or by a caller leaving). A caller aborted or timed out leaves the
-- queue at once and hands the head on; it took nothing (unless it was aborted during the
-- store's own call, whose effect a remote store cannot take back).

local SL = { __name = "baton.RateLimit" }
SL.__index = SL
local R = "baton.ratelimit:"

function store._ratelimit(s, key, rate, per_ms, burst)
  if type(s) ~= "table" and type(s) ~= "userdata" then
    misuse("baton.ratelimit", 1, "store", "a store (docs/store.md)", s)
  end
  for _, op in ipairs { "gcra_take" } do
    local ok, fn = pcall(function() return s[op] end)
    if not ok or type(fn) ~= "function" then
      misuse("baton.ratelimit", 1, "store", "a store with a gcra_take method", s)
    end
  end
  return setmetatable({ store = s, key = key, rate = rate, per_ms = per_ms, burst = burst,
                        queue = {}, queued = 0 }, SL)
end

local function check_self(fname, self)
  if getmetatable(self) ~= SL then misuse(fname, 0, "self", "baton.RateLimit", self) end
end

local function check_cost(fname, self, n, name, cost)
  if mtype(cost) ~= "integer" and not (mtype(cost) == "float" and cost == floor(cost) and cost >= 0) then
    misuse(fname, n, name, "integer >= 0", cost)
  end
  if cost < 0 then misuse(fname, n, name, "integer >= 0", cost) end
  if cost > self.burst then misuse(fname, n, name, ("integer <= the burst %d"):format(self.burst), cost) end
  return math.tointeger(cost)
end

local function take(self, cost, mode)
  return self.store:gcra_take(self.key, self.rate, self.per_ms, self.burst, cost, mode)
end


local function leave(self, me)
  local q = self.queue
  local was_head = q[1] == me
  for i = 1, #q do
    if q[i] == me then
      table.remove(q, i)
      self.queued = self.queued - me.cost
      break
    end
  end
  if was_head and q[1] and q[1].bell then q[1].bell:notify_one() end
end

-- The caller `me` is in the queue; it asks the store once it is at the head.
local function acquire_queued(self, me, cost, deadline, ms)
  local F = R .. "acquire"
  while self.queue[1] ~= me do
    local wait = deadline and deadline - clock()
    if wait and wait <= 0 then
      return nil, ("%s: timed out after %.15g ms"):format(F, ms), "timeout", { timeout_ms = ms }
    end
    me.bell = me.bell or notify()
    me.bell:notified(wait)
  end
  while true do
    local left, msg, kind, detail = take(self, cost)
    if left then return cost end
    if kind ~= "rate_limited" then return store_failure(F, msg, kind, detail) end
    local wait = type(detail) == "table" and tonumber(detail.retry_after_ms) or 1
    if deadline then
      local rest = deadline - clock()
      if rest <= 0 then return nil, ("%s: timed out after %.15g ms"):format(F, ms), "timeout", { timeout_ms = ms } end
      if wait > rest then wait = rest end
    end
    me.bell = me.bell or notify()
    me.bell:notified(wait > 0 and wait or 0)
  end
end

function SL:acquire(cost, opts)
  local F = R .. "acquire"
  check_self(F, self)
  cost = check_cost(F, self, 1, "cost", cost)
  local ms
  if opts ~= nil then
    if type(opts) ~= "table" then misuse(F, 2, "opts", "table", opts) end
    for k in pairs(opts) do
      if k ~= "timeout_ms" then error(("%s: bad argument #2 '%s' (unknown option)"):format(F, tostring(k)), 2) end
    end
    ms = opts.timeout_ms
    check_ms(F, 2, "timeout_ms", ms, true)
  end
  local me = { cost = cost }  -- queued before its first try: a take in flight counts
  self.queue[#self.queue + 1] = me
  self.queued = self.queued + cost
  local r = table.pack(pcall(acquire_queued, self, me, cost, ms and clock() + ms, ms))
  leave(self, me)
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

function SL:try_acquire(cost)
  local F = R .. "try_acquire"
  check_self(F, self)
  cost = check_cost(F, self, 1, "cost", cost)
  local left, msg, kind, detail = take(self, cost, #self.queue > 0 and "peek" or nil)
  if left and #self.queue == 0 then return cost end
  if left or kind == "rate_limited" then
    local wait = left and 0 or tonumber(detail and detail.retry_after_ms) or 1
    wait = ceil(wait + self.queued * self.per_ms / self.rate)
    if wait < 1 then wait = 1 end
    return nil, ("%s: %s"):format(F, #self.queue > 0 and ("%d callers are queued: retry after %d ms")
                                        :format(#self.queue, wait)
                                      or ("%s units do not fit: retry after %d ms"):format(cost, wait)),
           "rate_limited", { retry_after_ms = wait }
  end
  return store_failure(F, msg, kind, detail)
end

function SL:adjust(grant, actual)
  local F = R .. "adjust"
  check_self(F, self)
  if mtype(grant) ~= "integer" or grant < 0 then misuse(F, 1, "grant", "integer >= 0", grant) end
  if mtype(actual) ~= "integer" or actual < 0 then misuse(F, 2, "actual", "integer >= 0", actual) end
  if actual ~= grant then
    local left, msg, kind, detail = take(self, actual - grant, "force")
    local head = self.queue[1]
    if head and head.bell then head.bell:notify_one() end
    if not left then return store_failure(F, msg, kind, detail) end
  end
end

function SL:retry_after(cost)
  local F = R .. "retry_after"
  check_self(F, self)
  cost = check_cost(F, self, 1, "cost", cost)
  local left, msg, kind, detail = take(self, cost, "peek")
  if not left and kind ~= "rate_limited" then return store_failure(F, msg, kind, detail) end
  local wait = left and 0 or tonumber(detail and detail.retry_after_ms) or 1
  if #self.queue > 0 then wait = ceil(wait + self.queued * self.per_ms / self.rate) end
  return math.tointeger(wait) or wait
end

function SL:available()
  local F = R .. "available"
  check_self(F, self)
  local left, msg, kind, detail = take(self, 0, "peek")
  if not left then return store_failure(F, msg, kind, detail) end
  return math.tointeger(left) or left
end

function SL:waiting()
  check_self(R .. "waiting", self)
  return #self.queue
end

function SL:__tostring()
  return ("baton.RateLimit (%.14g per %.14g ms, burst %d; store key '%s', %d waiting)")
         :format(self.rate, self.per_ms, self.burst, self.key, #self.queue)
end


-- ---- the Redis store --------------------------------------------------------------------
-- baton.redis.store{ redis = client, prefix = "baton:", on_outage = "fail" | "open" } (the
-- public name is set by src/lua/lrouter.c; this is store._redis). Every operation is one
-- server-side Lua script run through client:eval (EVALSHA), so it is atomic on the server
-- and keeps time by the server's clock (redis.call('TIME')), never the caller's. Keys:
-- prefix .. family .. key, family one of tat: (GCRA, a string holding the TAT in ms,
-- PEXPIRE'd when it lies in the past), lease: (a sorted set holder -> expiry in ms, expired
-- members removed by each operation, the key PEXPIRE'd at its last expiry), cnt: (a counter,
-- INCRBYFLOAT, PEXPIRE'd once when made), cd: (a cooldown flag, SET PX keeping the later
-- end), fl: (a claim in progress, SET NX PX) and res: (a completed result, JSON, SET PX).
-- Floats leave a script as strings ("%.17g"): Redis turns a Lua number into an integer.
-- A failure of the connection (closed, connect, io, timeout) is returned (on_outage =
-- "fail") or answered as allowed and counted (on_outage = "open"); an error reply of the
-- server (kind "redis") is always returned.

local RS = { __name = "baton.redis.Store" }
RS.__index = RS
local RN = "baton.redis.store:"
local RF = names(RN)

local NOW_LUA = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000\n"
local SCRIPTS = {
  now = NOW_LUA .. "return string.format('%.17g', now)",
  -- KEYS[1] tat; ARGV rate, per_ms, burst, cost, mode -> { ok, n }: ok 1, n remaining;
  -- ok 0, n retry_after_ms
  gcra = NOW_LUA .. [[
local rate, per, burst, cost, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local interval = per / rate
local tolerance = burst * interval
local old = tonumber(redis.call('GET', KEYS[1]))
local tat = now
if old and old > now then tat = old end
local inc = cost * interval
local function store(v)
  if v > now then
    redis.call('SET', KEYS[1], string.format('%.17g', v), 'PX', math.ceil(v - now))
  else
    redis.call('DEL', KEYS[1])
  end
end
if mode == 'force' then
  local new = tat + inc
  if inc < 0 and new < now then new = now end
  store(new)
  local free = now + tolerance - math.max(new, now)
  if free > 0 then return { 1, math.floor(free / interval + 1e-9) } end
  return { 1, 0 }
end
local allow = tat + inc - tolerance
if allow > now then return { 0, math.ceil(allow - now) } end
if mode ~= 'peek' then store(tat + inc) end
return { 1, math.floor((now + tolerance - tat - inc) / interval + 1e-9) }
]],
  -- KEYS[1] lease zset; ARGV holder, limit, ttl -> { 1 } | { 0, holders, retry_after_ms }
  lease_acquire = NOW_LUA .. [[
local k, holder, limit, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.17g', now))
local function keep()
  local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIRE', k, math.max(1, math.ceil(tonumber(last[2]) - now))) end
end
if not redis.call('ZSCORE', k, holder) then
  local n = redis.call('ZCARD', k)
  if n >= limit then
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    return { 0, n, math.ceil(tonumber(first[2]) - now) }
  end
end
if ttl > 0 then
  redis.call('ZADD', k, string.format('%.17g', now + ttl), holder)
else
  redis.call('ZREM', k, holder)
end
keep()
return { 1 }
]],
  -- KEYS[1] lease zset; ARGV holder, ttl -> 1 | 0 (not held)
  lease_renew = NOW_LUA .. [[
local k, holder, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.17g', now))
if not redis.call('ZSCORE', k, holder) then return 0 end
if ttl > 0 then redis.call('ZADD', k, string.format('%.17g', now + ttl), holder) else redis.call('ZREM', k, holder) end
local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIRE', k, math.max(1, math.ceil(tonumber(last[2]) - now))) end
return 1
]],
  lease_holders = NOW_LUA .. [[
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
return redis.call('ZCARD', KEYS[1])
]],
  -- KEYS[1] counter; ARGV by [, ttl] -> the new value as a string
  incr = [[
local made = redis.call('EXISTS', KEYS[1]) == 0
local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if made and ARGV[2] then redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(tonumber(ARGV[2])))) end
return v
]],
  -- KEYS[1] flag; ARGV ttl: the later end of the current one and now + ttl
  set_cooldown = [[
local ttl = math.ceil(tonumber(ARGV[1]))
if ttl > 0 and redis.call('PTTL', KEYS[1]) < ttl then redis.call('SET', KEYS[1], '1', 'PX', ttl) end
return 1
]],
  -- KEYS[1] claim, KEYS[2] result; ARGV ttl -> { "cached", json } | { "new" } | { "in_progress" }
  claim = [[
local v = redis.call('GET', KEYS[2])
if v then return { 'cached', v } end
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', math.max(1, math.ceil(tonumber(ARGV[1])))) then return { 'new' } end
return { 'in_progress' }
]],
  -- KEYS[1] claim, KEYS[2] result; ARGV json, ttl, channel, key: the waiters are told
  complete = [[
local ttl = math.ceil(tonumber(ARGV[2]))
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl) else redis.call('DEL', KEYS[2]) end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
]],
  -- KEYS[1] claim; ARGV channel, key
  fail = [[
local n = redis.call('DEL', KEYS[1])
if n > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return n
]],
}

-- The breaker backend's (store.breaker_backend): the open time is a cnt: key holding an
-- integer ms of the server's clock; the probe lease a cnt: key holding its holder.
-- KEYS[1] open time -> { at | false, now }
SCRIPTS.brk_open_at = NOW_LUA .. [[
local v = redis.call('GET', KEYS[1])
return { v or false, string.format('%.17g', now) }
]]
-- KEYS[1] open time; ARGV [ms] (none: the server's now)
SCRIPTS.brk_set_open_at = NOW_LUA .. [[
local at = ARGV[1] and tonumber(ARGV[1]) or math.floor(now)
redis.call('SET', KEYS[1], string.format('%.17g', at))
return 1
]]
-- KEYS[1] open time, KEYS[2] probe; ARGV open_at, holder, ttl -> 1 | 0
SCRIPTS.brk_acquire_probe = [[
local v = tonumber(redis.call('GET', KEYS[1]))
if not v or math.floor(v) ~= tonumber(ARGV[1]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', math.max(1, math.ceil(tonumber(ARGV[3])))) then return 1 end
return 0
]]
-- KEYS[1] probe; ARGV holder: deleted only when it still is the holder's
SCRIPTS.brk_release_probe = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
]]

local FAMILIES = { "tat:", "lease:", "cnt:", "cd:", "fl:", "res:" }
local OUTAGE = { closed = true, connect = true, io = true, timeout = true }

function store._redis(opts)
  local F = "baton.redis.store"
  if type(opts) ~= "table" then misuse(F, 1, "opts", "table", opts) end
  for k in pairs(opts) do
    if k ~= "redis" and k ~= "prefix" and k ~= "on_outage" then
      misuse(F, 1, "opts", "known options (redis, prefix, on_outage), got '" .. tostring(k) .. "'", nil)
    end
  end
  local r = opts.redis
  local mt = getmetatable(r)
  if type(r) ~= "userdata" or type(mt) ~= "table" or mt.__name ~= "baton.Redis" then
    misuse(F, 1, "redis", "a baton.redis client", r)
  end
  local prefix = opts.prefix
  if prefix == nil then prefix = "baton:" end
  if type(prefix) ~= "string" then misuse(F, 1, "prefix", "string", prefix) end
  local mode = opts.on_outage
  if mode == nil then mode = "fail" end
  if mode ~= "fail" and mode ~= "open" then misuse(F, 1, "on_outage", "'fail' or 'open'", mode) end
  return setmetatable({ redis = r, prefix = prefix, on_outage = mode,
                        counts = { calls = 0, outage_open = 0, outage_failed = 0, errors = 0 },
                        watches = {}, nwatch = 0, sub = nil, sub_retry = 0, reader = nil,
                        sub_ready = notify(), shas = {}, kcache = {}, kn = 0 }, RS)
end

-- Runs a script with nkeys keys and the arguments after them (strings or numbers, none
-- nil); returns its reply, or (failure) nil, msg, kind, or (open) the outage marker OPEN
-- after counting it. The script goes by its SHA (EVALSHA) straight through client:call:
-- the store's arguments need none of client:eval's checks nor its tables (the hot path of
-- every operation: one round trip, nothing built but the command). The SHA is loaded once
-- per store (SCRIPT LOAD) and again after NOSCRIPT (the server restarted).
local OPEN = {}
local function runv(self, op, script, nkeys, ...)
  local c = self.counts
  c.calls = c.calls + 1
  local r = self.redis
  local sha = self.shas[script]
  local v, msg, kind, detail
  if sha then
    v, msg, kind, detail = r:call("EVALSHA", sha, nkeys, ...)
    if v == nil and kind == "redis" and msg:find("NOSCRIPT", 1, true) then sha = nil end
  end
  if not sha then
    sha, msg, kind, detail = r:call("SCRIPT", "LOAD", script)
    if sha then
      self.shas[script] = sha
      v, msg, kind, detail = r:call("EVALSHA", sha, nkeys, ...)
    else
      v = nil
    end
  end
  if v == nil and msg ~= nil then
    if OUTAGE[kind] then
      if self.on_outage == "open" then
        c.outage_open = c.outage_open + 1
        return OPEN
      end
      c.outage_failed = c.outage_failed + 1
    else
      c.errors = c.errors + 1
    end
    return nil, ("%s%s: %s"):format(RN, op, (tostring(msg):gsub("^baton%.redis:call: ", ""))), kind, detail
  end
  return v
end

-- runv with the keys and the arguments as lists (args may be nil)
local function run(self, op, script, keys, args)
  local argv, n = {}, #keys
  table.move(keys, 1, n, 1, argv)
  if args then table.move(args, 1, #args, n + 1, argv) end
  return runv(self, op, script, n, table.unpack(argv))
end

-- prefix .. family .. key, remembered (up to 4096 of them, then forgotten at once): the
-- operations on a few hot keys build no strings.
local function k(self, family, key)
  local fc = self.kcache[family]
  if fc == nil then
    fc = {}
    self.kcache[family] = fc
  end
  local v = fc[key]
  if v == nil then
    if self.kn >= 4096 then
      self.kcache, self.kn = { [family] = fc }, 0
      for x in pairs(fc) do fc[x] = nil end
    end
    v = self.prefix .. family .. key
    fc[key] = v
    self.kn = self.kn + 1
  end
  return v
end

local function num(s) local v = tonumber(s); return math.tointeger(v) or v end

-- A reply not of the shape the operation's script returns: something between the store and
-- Redis answered for it (a proxy, a server that is not Redis). Counted as an error.
local function bad_reply(self, op, v)
  self.counts.errors = self.counts.errors + 1
  return nil, ("%s%s: the server's reply is not what the script returns (got %s)")
    :format(RN, op, type(v) == "table" and "a list" or type(v) == "string" and ("%q"):format(v:sub(1, 40))
                    or tostring(v)), "protocol"
end

local function is_int(v) return math.type(v) == "integer" end
-- a list whose first n entries are integers
local function ints(v, n)
  if type(v) ~= "table" then return false end
  for i = 1, n do if not is_int(v[i]) then return false end end
  return true
end

-- now() -> the server's clock in ms (TIME; wall clock). An outage is a failure in either
-- mode: there is no clock to answer with.
function RS:now()
  local v, msg, kind, detail = self.redis:eval(SCRIPTS.now, nil, nil)
  if v == nil then return nil, ("%snow: %s"):format(RN, tostring(msg)), kind, detail end
  if tonumber(v) == nil then return bad_reply(self, "now", v) end
  return tonumber(v)
end

-- open: taken; remaining 0 (unknown)
function RS:gcra_take(key, rate, per_ms, burst, cost, mode)
  local F = RF.gcra_take
  check.gcra_take(F, key, rate, per_ms, burst, cost, mode)
  if mode ~= "force" and cost > burst then misuse(F, 5, "cost", "a cost <= burst", cost) end
  local v, msg, kind, detail = runv(self, "gcra_take", SCRIPTS.gcra, 1, k(self, "tat:", key),
                                    rate, per_ms, burst, cost, mode or "")
  if v == OPEN then return 0 end
  if v == nil then return nil, msg, kind, detail end
  if not ints(v, 2) then return bad_reply(self, "gcra_take", v) end
  if v[1] == 1 then return v[2] end
  return nil, ("%s: %s units do not fit under '%s'"):format(F, cost, key), "rate_limited",
         { retry_after_ms = v[2] }
end

-- open: acquired
function RS:lease_acquire(key, holder, limit, ttl_ms)
  local F = RF.lease_acquire
  check.lease(F, key, holder)
  check_count(F, 3, "limit", limit, 1)
  check_ms(F, 4, "ttl_ms", ttl_ms)
  local v, msg, kind, detail = runv(self, "lease_acquire", SCRIPTS.lease_acquire, 1, k(self, "lease:", key),
                                    holder, limit, ttl_ms)
  if v == OPEN then return true end
  if v == nil then return nil, msg, kind, detail end
  if not ints(v, 1) then return bad_reply(self, "lease_acquire", v) end
  if v[1] == 1 then return true end
  if not ints(v, 3) then return bad_reply(self, "lease_acquire", v) end
  return nil, ("%s: '%s' has %d of %d holders"):format(F, key, v[2], limit), "busy",
         { holders = v[2], limit = limit, retry_after_ms = v[3] }
end

-- open: renewed
function RS:lease_renew(key, holder, ttl_ms)
  local F = RF.lease_renew
  check.lease(F, key, holder)
  check_ms(F, 3, "ttl_ms", ttl_ms)
  local v, msg, kind, detail = runv(self, "lease_renew", SCRIPTS.lease_renew, 1, k(self, "lease:", key),
                                    holder, ttl_ms)
  if v == OPEN or v == 1 then return true end
  if v == nil then return nil, msg, kind, detail end
  if v ~= 0 then return bad_reply(self, "lease_renew", v) end
  return nil, ("%s: '%s' does not hold '%s' (expired or released)"):format(F, holder, key), "closed",
         { key = key, holder = holder }
end

-- open: released (the lease expires on the server by itself)
function RS:lease_release(key, holder)
  local F = RF.lease_release
  check.lease(F, key, holder)
  local v, msg, kind, detail = runv(self, "lease_release", "return redis.call('ZREM', KEYS[1], ARGV[1])", 1,
                                    k(self, "lease:", key), holder)
  if v == nil and msg ~= nil then return nil, msg, kind, detail end
  return true
end

-- open: 0
function RS:lease_holders(key)
  check_key(RN .. "lease_holders", 1, key)
  local v, msg, kind, detail = run(self, "lease_holders", SCRIPTS.lease_holders, { k(self, "lease:", key) }, nil)
  if v == OPEN then return 0 end
  if v == nil then return nil, msg, kind, detail end
  if not is_int(v) then return bad_reply(self, "lease_holders", v) end
  return v
end

-- open: `by` (as if the counter were new)
function RS:incr(key, by, ttl_ms)
  local F = RF.incr
  check.incr(F, key, by, ttl_ms)
  local v, msg, kind, detail = run(self, "incr", SCRIPTS.incr, { k(self, "cnt:", key) }, { by, ttl_ms })
  if v == OPEN then return by end
  if v == nil then return nil, msg, kind, detail end
  if num(v) == nil then return bad_reply(self, "incr", v) end
  return num(v)
end

-- open: 0
function RS:get(key)
  check_key(RN .. "get", 1, key)
  local v, msg, kind, detail = run(self, "get", "return redis.call('GET', KEYS[1])", { k(self, "cnt:", key) }, nil)
  if v == OPEN then return 0 end
  if v == nil and msg ~= nil then return nil, msg, kind, detail end
  if v and num(v) == nil then return bad_reply(self, "get", v) end
  return v and num(v) or 0
end

-- open: true (nothing is set)
function RS:set_cooldown(key, ttl_ms)
  local F = RF.set_cooldown
  check_key(F, 1, key)
  check_ms(F, 2, "ttl_ms", ttl_ms)
  local v, msg, kind, detail = run(self, "set_cooldown", SCRIPTS.set_cooldown, { k(self, "cd:", key) }, { ttl_ms })
  if v == nil then return nil, msg, kind, detail end
  return true
end

-- open: 0 (no cooldown)
function RS:cooldown(key)
  check_key(RN .. "cooldown", 1, key)
  local v, msg, kind, detail = run(self, "cooldown", "return redis.call('PTTL', KEYS[1])", { k(self, "cd:", key) }, nil)
  if v == OPEN then return 0 end
  if v == nil then return nil, msg, kind, detail end
  if not is_int(v) then return bad_reply(self, "cooldown", v) end
  return v > 0 and v or 0
end

-- open: "new" (the caller does the work)
function RS:claim(key, ttl_ms)
  local F = RF.claim
  check_key(F, 1, key)
  check_ms(F, 2, "ttl_ms", ttl_ms)
  local v, msg, kind, detail = run(self, "claim", SCRIPTS.claim, { k(self, "fl:", key), k(self, "res:", key) },
                                   { ttl_ms })
  if v == OPEN then return "new" end
  if v == nil then return nil, msg, kind, detail end
  if type(v) ~= "table" or type(v[1]) ~= "string" then return bad_reply(self, "claim", v) end
  if v[1] == "cached" then
    local ok, value = pcall(json.decode, v[2])
    if not ok or value == nil then
      return nil, ("%s: the result under '%s' is not JSON"):format(F, key), "malformed", { key = key }
    end
    return "cached", value
  end
  return v[1]
end

-- open: true (nothing is kept)
function RS:complete(key, value, ttl_ms)
  local F = RF.complete
  check_key(F, 1, key)
  if value == nil then misuse(F, 2, "value", "a value other than nil", value) end
  check_ms(F, 3, "ttl_ms", ttl_ms)
  local ok, enc = pcall(json.encode, value)
  if not ok then misuse(F, 2, "value", "a value JSON can encode", value) end
  local v, msg, kind, detail = run(self, "complete", SCRIPTS.complete, { k(self, "fl:", key), k(self, "res:", key) },
                                   { enc, ttl_ms, self.prefix .. "settled", key })
  if v == nil then return nil, msg, kind, detail end
  return true
end

-- open: true
function RS:fail(key)
  check_key(RN .. "fail", 1, key)
  local v, msg, kind, detail = run(self, "fail", SCRIPTS.fail, { k(self, "fl:", key) },
                                   { self.prefix .. "settled", key })
  if v == nil and msg ~= nil then return nil, msg, kind, detail end
  return true
end

-- open: true
function RS:del(key)
  check_key(RN .. "del", 1, key)
  local keys = {}
  for i, f in ipairs(FAMILIES) do keys[i] = k(self, f, key) end
  local v, msg, kind, detail = run(self, "del", "return redis.call('DEL', unpack(KEYS))", keys, nil)
  if v == nil and msg ~= nil then return nil, msg, kind, detail end
  return true
end

-- ---- waiting for a claim to settle (pub/sub) -----------------------------------------
-- complete and fail PUBLISH the key on the channel prefix .. "settled". A waiter of
-- dedup's run watches its key (store:_watch) before it claims once more, then waits on the
-- watch: woken when the key's message comes, or after its poll interval (the fallback:
-- a claimer that died publishes nothing, its claim expires). The store subscribes once, on
-- a connection of the subscription's own (made on the first watch; on failure the waiters
-- poll, and the next try waits a second); one reader task takes the messages while any
-- watch is open and rings the watches of their key (notify_one: a message between the
-- watch and the wait is kept as a permit). The last watch closed aborts the reader; a lost
-- connection ends it, wakes every watch (they claim again) and drops the subscription
-- (the next watch subscribes again).

local Watch = { __name = "baton.redis.Store.Watch" }
Watch.__index = Watch

local function ring_all(self)
  for _, ws in pairs(self.watches) do
    for w in pairs(ws) do w.n:notify_one() end
  end
end

local function reader(self, sub)
  while self.nwatch > 0 and self.sub == sub do
    local ok, key, _, kind = pcall(sub.next, sub, 1000)
    if not ok then break end  -- aborted by the last watch's close
    if key then
      local ws = self.watches[key]
      if ws then for w in pairs(ws) do w.n:notify_one() end end
    elseif kind ~= "timeout" then
      if self.sub == sub then self.sub = nil end
      pcall(sub.close, sub)
      ring_all(self)
      break
    end
  end
  if self.reader == baton.current() then self.reader = nil end
end

-- -> a watch on key (w:wait(ms), w:close()) | nil when the store cannot subscribe now
function RS:_watch(key)
  if self.sub == nil and clock() >= self.sub_retry then
    self.sub = false  -- subscribing: watches asked for meanwhile wait for it
    local ok, sub = pcall(self.redis.subscribe, self.redis, self.prefix .. "settled")
    if ok and sub then
      self.sub = sub
    else
      self.sub, self.sub_retry = nil, clock() + 1000
    end
    self.sub_ready:notify_all()
    if not ok then error(sub, 0) end
  elseif self.sub == false then
    self.sub_ready:notified()
  end
  if not self.sub then return nil end
  local w = setmetatable({ store = self, key = key, n = notify() }, Watch)
  local ws = self.watches[key]
  if ws == nil then
    ws = {}
    self.watches[key] = ws
  end
  ws[w] = true
  self.nwatch = self.nwatch + 1
  if self.reader == nil then self.reader = baton.spawn(reader, self, self.sub) end
  return w
end

function Watch:wait(ms)
  self.n:notified(ms)
end

function Watch:close()
  local st = self.store
  local ws = st.watches[self.key]
  if not (ws and ws[self]) then return end
  ws[self] = nil
  if next(ws) == nil then st.watches[self.key] = nil end
  st.nwatch = st.nwatch - 1
  if st.nwatch == 0 and st.reader and st.reader ~= baton.current() then
    local r = st.reader
    st.reader = nil
    r:abort()
  end
end

-- The breaker backend's operations (store.breaker_backend), on cnt: keys. Outage "open":
-- not open, no probe lease (the calls pass as if the circuit were closed).
function RS:_brk_open_at(key)
  local v, msg, kind, detail = run(self, "breaker", SCRIPTS.brk_open_at, { k(self, "cnt:", key) }, nil)
  if v == OPEN then return false, nil end
  if v == nil then return nil, msg, kind, detail end
  return v[1] and num(v[1]) or false, num(v[2])
end

function RS:_brk_set_open_at(key, ms)
  local v, msg, kind, detail = run(self, "breaker", SCRIPTS.brk_set_open_at, { k(self, "cnt:", key) },
                                   ms and { floor(ms) } or nil)
  if v == nil then return nil, msg, kind, detail end
  return true
end

function RS:_brk_acquire_probe(okey, key, open_at, holder, ttl_ms)
  local v, msg, kind, detail = run(self, "breaker", SCRIPTS.brk_acquire_probe,
                                   { k(self, "cnt:", okey), k(self, "cnt:", key) }, { open_at, holder, ttl_ms })
  if v == OPEN then return false end
  if v == nil then return nil, msg, kind, detail end
  return v == 1
end

function RS:_brk_release_probe(key, holder)
  local v, msg, kind, detail = run(self, "breaker", SCRIPTS.brk_release_probe, { k(self, "cnt:", key) }, { holder })
  if v == nil and msg ~= nil then return nil, msg, kind, detail end
  return true
end

-- stats() -> { calls, outage_open (answered as allowed), outage_failed, errors (error replies) }
function RS:stats()
  local c = self.counts
  return { calls = c.calls, outage_open = c.outage_open, outage_failed = c.outage_failed, errors = c.errors,
           on_outage = self.on_outage }
end

function RS:__tostring()
  return ("baton.redis.Store (prefix '%s', on_outage %s)"):format(self.prefix, self.on_outage)
end

return store
