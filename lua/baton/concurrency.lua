-- baton.race, baton.first_ok, baton.hedge and baton.interval: compositions of tasks and
-- timers, written in Lua on baton's primitives. The module compiles this file in
-- (src/lua/lsync.c runs it with the module table when `require "baton"` opens it).
--
-- The combinators run each function as a task of a group of their own, and never leave one
-- behind: when they return (or raise), every task they started has finished — the losers
-- are aborted and awaited, so their <close> handlers have run. If the caller is itself
-- aborted while it waits, the group's <close> aborts them, and they unwind on their next
-- turn (a task being cancelled cannot await anything; see baton.shield).
--
-- A function fails when it raises or returns nil, message[, kind[, detail]] — one rule, the
-- toolkit's (lbt_outcome): a returned message that is a table with a kind is read as if
-- raised; a raised table with a string kind gives its kind, message and detail; anything
-- else raised is its text with kind "error". A task aborted from outside has failed with
-- kind "cancelled". Failures are collected as baton.Error tables (baton.error).
local baton = ...
if type(baton) ~= "table" then baton = require "baton" end  -- required as a plain module

local group, now, sleep, yield = baton.group, baton.now, baton.sleep, baton.yield
local pack, unpack, select, type, error = table.pack, table.unpack, select, type, error
local tostring, setmetatable = tostring, setmetatable

-- What a misuse message says it got (the toolkit's lbt_push_got, through baton._got).
local function got(n, ...)
  if select("#", ...) < n then return "no value" end
  return baton._got((select(n, ...)))
end

-- Raises at the caller of the public function (`depth` frames above misuse).
local function misuse(depth, fname, n, name, expected, got_)
  error(("%s: bad argument #%d '%s' (expected %s, got %s)"):format(fname, n, name, expected, got_),
        depth + 1)
end

-- A combinator waits: outside a task it raises under its own name (at the caller `depth`
-- frames up), not under the name of the group method it waits with.
local function in_task(depth, fname)
  if baton.current() == nil then
    error(fname .. ": not inside a baton task; run the code with baton.run(function() ... end) "
          .. "(the baton executable does this for a script's main chunk)", depth + 1)
  end
end

-- The functions passed to a combinator, checked: misuse raises at the caller.
local function check_fns(fname, ...)
  in_task(3, fname)
  local n = select("#", ...)
  if n == 0 then misuse(3, fname, 1, "fn", "function", "no value") end
  for i = 1, n do
    if type((select(i, ...))) ~= "function" then misuse(3, fname, i, "fn", "function", got(i, ...)) end
  end
  return n
end

-- The failure a value carries (raised, or returned as the message): a baton.Error.
local function failure(e, kind, detail)
  if type(e) == "table" and type(e.kind) == "string" then
    local msg = e.message
    if type(msg) ~= "string" and type(msg) ~= "number" then msg = e.kind end
    return baton.error(e.kind, msg, type(e.detail) == "table" and e.detail or nil)
  end
  if type(e) == "string" then  -- a task's string error ends with its traceback: cut it
    e = e:match("^(.-)\nstack traceback:") or e
  elseif type(e) ~= "number" then
    detail = detail or (e ~= nil and { value = e } or nil)
    e = tostring(e)
  end
  return baton.error(kind or "error", e, type(detail) == "table" and detail or nil)
end

-- The outcome of a finished task (r: its join's results, packed): true, or false and the
-- failure as a baton.Error.
local function classify(r)
  if r[1] then
    if r[2] == nil and r.n >= 3 and r[3] ~= nil then  -- returned nil, message[, kind[, detail]]
      return false, failure(r[3], type(r[4]) == "string" and r[4] ~= "" and r[4] or nil, r[5])
    end
    return true
  end
  return false, failure(r[2])
end

-- Aborts what is still running in g and waits until all of it has finished.
local function stop_all(g)
  g:abort_all()
  g:join_all()
end

-- Every failure has the same kind: that kind, else "error".
local function common_kind(errors, n)
  local kind
  for i = 1, n do
    local e = errors[i]
    if e then
      if kind and e.kind ~= kind then return "error" end
      kind = e.kind
    end
  end
  return kind or "error"
end

local function all_failed(fname, what, errors, n)
  local first = errors[1] and errors[1].message or "?"
  return nil, ("%s: all %d %s failed (the first: %s)"):format(fname, n, what, first),
         common_kind(errors, n), { errors = errors }
end

-- baton.race(f1, f2, ...): runs them at once; the first to finish, however it finishes,
-- wins: its results are returned, or its error re-raised. The others are aborted and
-- awaited first.
function baton.race(...)
  local n = check_fns("baton.race", ...)
  local g <close> = group()
  for i = 1, n do g:spawn((select(i, ...))) end
  local first = g:join_next()
  stop_all(g)
  local r = pack(first:join())
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

-- baton.first_ok(f1, f2, ...): runs them at once; the first to succeed wins and the others
-- are aborted and awaited. If all fail: nil, message, kind (theirs if they agree, else
-- "error"), { errors = { [i] = baton.Error } }.
function baton.first_ok(...)
  local n = check_fns("baton.first_ok", ...)
  local g <close> = group()
  local index, errors = {}, {}
  for i = 1, n do index[g:spawn((select(i, ...)))] = i end
  for _ = 1, n do
    local t = g:join_next()
    local r = pack(t:join())
    local ok, err = classify(r)
    if ok then
      stop_all(g)
      return unpack(r, 2, r.n)
    end
    errors[index[t]] = err
  end
  return all_failed("baton.first_ok", "functions", errors, n)
end

local hedge_keys = { after_ms = true, max = true }

-- baton.hedge(fn, { after_ms = ms, max = 2 }): runs fn(1); each time after_ms pass with no
-- success, starts another copy fn(2), fn(3), ... up to max copies at once or in all; a copy
-- that fails starts the next one at once. The first success wins; the others are aborted
-- and awaited. If all max copies fail: like first_ok.
function baton.hedge(fn, opts)
  local fname = "baton.hedge"
  if type(fn) ~= "function" then misuse(2, fname, 1, "fn", "function", got(1, fn)) end
  if type(opts) ~= "table" then misuse(2, fname, 2, "opts", "table", got(1, opts)) end
  for k in pairs(opts) do
    if not hedge_keys[k] then
      error(("%s: bad argument #2 '%s' (unknown option)"):format(fname, tostring(k)), 2)
    end
  end
  local after, max = opts.after_ms, opts.max or 2
  max = type(max) == "number" and math.tointeger(max)
  if type(after) ~= "number" or not (after >= 0 and after < 1e15) then
    misuse(2, fname, 2, "after_ms", "milliseconds >= 0", got(1, after))
  end
  if not max or max < 1 or max > 1e15 then
    misuse(2, fname, 2, "max", "integer >= 1", got(1, opts.max))
  end
  in_task(2, fname)
  local g <close> = group()
  local index, errors, started, next_at = {}, {}, 0, nil
  local function start()
    started = started + 1
    index[g:spawn(fn, started)] = started
    next_at = now() + after
  end
  start()
  while true do
    local wait
    if started < max then
      wait = next_at - now()
      if wait < 0 then wait = 0 end
    end
    local t, _, kind = g:join_next(wait)
    if t then
      local r = pack(t:join())
      local ok, err = classify(r)
      if ok then
        stop_all(g)
        return unpack(r, 2, r.n)
      end
      errors[index[t]] = err
      if started < max then start()
      elseif #g == 0 then break end  -- every copy has failed, and been counted
    elseif kind == "timeout" then
      start()
    else
      break
    end
  end
  return all_failed(fname, "attempts", errors, started)
end

-- baton.interval(ms): a ticker. iv:tick() waits for the next tick, at start + k * ms, and
-- returns how many ticks have passed since the previous tick() returned (1 when on time).
-- Missed ticks are coalesced: a caller that comes back late gets ONE tick at once, whose
-- count says how many it stands for, and the next is on the original schedule — never a
-- burst to catch up. tick() is an await (a cancellation point even when already due: it
-- then yields once). iv:reset() restarts the schedule from now.
local Interval = { __name = "baton.Interval" }
Interval.__index = Interval

function baton.interval(ms)
  if type(ms) ~= "number" or not (ms > 0 and ms < 1e15) then
    misuse(2, "baton.interval", 1, "ms", "milliseconds > 0", got(1, ms))
  end
  return setmetatable({ ms = ms, due = now() + ms }, Interval)
end

local function check_self(fname, self)
  if getmetatable(self) ~= Interval then misuse(3, fname, 0, "self", "baton.Interval", got(1, self)) end
end

function Interval:tick()
  check_self("baton.interval:tick", self)
  local t = now()
  if t < self.due then
    sleep(self.due - t)
    t = now()
    if t < self.due then t = self.due end  -- the timer has millisecond resolution
  else
    yield()
  end
  local n = (t - self.due) // self.ms + 1
  self.due = self.due + n * self.ms
  return math.tointeger(n) or n
end

function Interval:reset()
  check_self("baton.interval:reset", self)
  self.due = now() + self.ms
end

function Interval:__tostring()
  return ("baton.Interval (every %s ms, next in %s ms)"):format(self.ms, self.due - now())
end

return baton
