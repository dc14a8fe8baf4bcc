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
-- A function fails when it raises or returns nil, message[, kind[, detail]] (the
-- convention of baton's own functions); a cancelled task has failed with kind "cancelled".
-- Failures are collected as { kind =, message =, detail = } tables (baton.Error).
local baton, ErrorMT = ...
if type(baton) ~= "table" then baton = require "baton" end  -- required as a plain module

local group, now, sleep, yield = baton.group, baton.now, baton.sleep, baton.yield
local pack, unpack, select, type, error = table.pack, table.unpack, select, type, error
local tostring, setmetatable = tostring, setmetatable

local function new_error(kind, message, detail)
  return setmetatable({ kind = kind, message = message, detail = detail }, ErrorMT)
end

-- The functions passed to a combinator, checked: misuse raises at the caller.
local function check_fns(fname, ...)
  local n = select("#", ...)
  if n == 0 then
    error(("%s: bad argument #1 'fn' (expected a function, got no value)"):format(fname), 3)
  end
  for i = 1, n do
    local f = select(i, ...)
    if type(f) ~= "function" then
      error(("%s: bad argument #%d 'fn' (expected a function, got %s)"):format(fname, i, type(f)), 3)
    end
  end
  return n
end

-- The outcome of a finished task (r: its join's results, packed): true, or false and the
-- failure as a baton.Error.
local function classify(r)
  if r[1] then
    if r[2] == nil and r.n >= 3 then  -- returned nil, message[, kind[, detail]]
      return false, new_error(type(r[4]) == "string" and r[4] or "error", tostring(r[3]), r[5])
    end
    return true
  end
  local e = r[2]
  if type(e) == "table" and type(e.kind) == "string" then
    return false, new_error(e.kind, tostring(e.message or e.kind), e.detail)
  end
  e = tostring(e)  -- a task's string error ends with its traceback: the message is before
  return false, new_error("error", e:match("^(.-)\nstack traceback:") or e)
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
  if type(fn) ~= "function" then
    error(("%s: bad argument #1 'fn' (expected a function, got %s)"):format(fname, type(fn)), 2)
  end
  if type(opts) ~= "table" then
    error(("%s: bad argument #2 'opts' (expected a table, got %s)"):format(fname, type(opts)), 2)
  end
  for k in pairs(opts) do
    if not hedge_keys[k] then error(("%s: unknown option '%s'"):format(fname, tostring(k)), 2) end
  end
  local after, max = opts.after_ms, opts.max or 2
  if type(after) ~= "number" or not (after >= 0 and after < 1e15) then
    error(("%s: bad argument #2 'after_ms' (expected milliseconds >= 0, got %s)")
          :format(fname, type(after) == "number" and tostring(after) or type(after)), 2)
  end
  if math.type(max) ~= "integer" or max < 1 then
    error(("%s: bad argument #2 'max' (expected integer >= 1, got %s)")
          :format(fname, type(max) == "number" and tostring(max) or type(max)), 2)
  end
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
    error(("baton.interval: bad argument #1 'ms' (expected milliseconds > 0, got %s)")
          :format(type(ms) == "number" and tostring(ms) or type(ms)), 2)
  end
  return setmetatable({ ms = ms, due = now() + ms }, Interval)
end

function Interval:tick()
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
  self.due = now() + self.ms
end

function Interval:__tostring()
  return ("baton.Interval (every %s ms, next in %s ms)"):format(self.ms, self.due - now())
end

return baton
