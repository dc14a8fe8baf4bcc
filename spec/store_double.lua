-- A test double of the store interface (docs/store.md), written apart from the memory
-- store so that spec/store_spec.lua can hold both to one contract, and so that the policies
-- over a store are tested against one that behaves like a remote: every operation is a
-- request to a server task over a channel, answered later (so it awaits, like a Redis
-- round trip), values cross it as JSON (identity is not kept, as with Redis), its clock is
-- its own (offset by a large constant from baton.clock: a caller mixing its clock with the
-- store's would be caught), and its arithmetic is integer microseconds where the memory
-- store's is float milliseconds. A Redis store can be run through the same spec.
--
--   local s <close> = Double.new { latency_ms = 0 }   -- s:close() stops the server task
--   s.calls                                            -- operations served, by name
local baton = require "baton"

local json = baton.json
local Double = { __name = "spec.StoreDouble" }
Double.__index = Double

local US = 1000            -- microseconds a millisecond
local OFFSET = 7 * 86400e3 -- the double's clock runs a week ahead of baton.clock

local function now_us()
  return math.floor((baton.clock() + OFFSET) * US)
end

local function ceil_ms(us)
  return (us + US - 1) // US
end

-- Values on "the wire": a packed list as JSON, nils as json.null.
local function encode(...)
  local n, v = select("#", ...), {}
  for i = 1, n do
    local x = select(i, ...)
    if x == nil then x = json.null end
    v[i] = x
  end
  return json.encode { n = n, v = json.array(v) }
end

local function decode(s)
  local t = assert(json.decode(s))
  local out = { n = t.n }
  for i = 1, t.n do
    if t.v[i] ~= json.null then out[i] = t.v[i] end
  end
  return out
end

local fail = function(op, msg, kind, detail)
  return nil, "spec.StoreDouble:" .. op .. ": " .. msg, kind, detail
end

-- The server's state and its operations, on plain data.
local function server_ops(st)
  local ops = {}

  function ops.now()
    return now_us() / US
  end

  function ops.gcra_take(key, rate, per_ms, burst, cost, mode)
    assert(type(key) == "string" and rate > 0 and per_ms > 0 and burst >= 1 and type(cost) == "number",
           "spec.StoreDouble:gcra_take: bad arguments")
    local now = now_us()
    local interval = per_ms * US / rate                 -- us a unit (float: rates need not divide)
    local tolerance = math.floor(burst * interval + 0.5)
    local old = st.tat[key]
    local tat = (old and old > now) and old or now
    local inc = math.floor(cost * interval + (cost >= 0 and 0.5 or -0.5))
    if mode == "force" then
      local new = tat + inc
      local low = (old and old < now) and old or now
      if inc < 0 and new < low then new = low end
      st.tat[key] = new
      local free = now + tolerance - math.max(new, now)
      return free > 0 and math.floor(free / interval + 1e-9) or 0
    end
    assert(cost <= burst, "spec.StoreDouble:gcra_take: bad argument #5 'cost' (expected a cost <= burst)")
    local allow = tat + inc - tolerance
    if allow > now then
      return fail("gcra_take", ("%s units do not fit under '%s'"):format(cost, key), "rate_limited",
                  { retry_after_ms = ceil_ms(allow - now) })
    end
    if mode ~= "peek" then st.tat[key] = tat + inc end
    return math.floor((now + tolerance - tat - inc) / interval + 1e-9)
  end

  local function holders(key, now)
    local l, n, soonest = st.leases[key] or {}, 0, math.huge
    for h, exp in pairs(l) do
      if exp <= now then l[h] = nil else
        n = n + 1
        soonest = math.min(soonest, exp)
      end
    end
    st.leases[key] = l
    return l, n, soonest
  end

  function ops.lease_acquire(key, holder, limit, ttl_ms)
    local now = now_us()
    local l, n, soonest = holders(key, now)
    if not l[holder] and n >= limit then
      return fail("lease_acquire", ("'%s' has %d of %d holders"):format(key, n, limit), "busy",
                  { holders = n, limit = limit, retry_after_ms = ceil_ms(soonest - now) })
    end
    l[holder] = now + math.floor(ttl_ms * US)
    return true
  end

  function ops.lease_renew(key, holder, ttl_ms)
    local now = now_us()
    local l = holders(key, now)
    if not l[holder] then
      return fail("lease_renew", ("'%s' does not hold '%s'"):format(holder, key), "closed",
                  { key = key, holder = holder })
    end
    l[holder] = now + math.floor(ttl_ms * US)
    return true
  end

  function ops.lease_release(key, holder)
    if st.leases[key] then st.leases[key][holder] = nil end
    return true
  end

  function ops.lease_holders(key)
    local _, n = holders(key, now_us())
    return n
  end

  local function live(family, key)
    local e = st[family][key]
    if e and e.exp and e.exp <= now_us() then
      st[family][key] = nil
      return nil
    end
    return e
  end

  function ops.incr(key, by, ttl_ms)
    local e = live("counters", key)
    if not e then
      e = { v = 0, exp = ttl_ms and now_us() + math.floor(ttl_ms * US) or nil }
      st.counters[key] = e
    end
    e.v = e.v + by
    return e.v
  end

  function ops.get(key)
    local e = live("counters", key)
    return e and e.v or 0
  end

  function ops.set_cooldown(key, ttl_ms)
    local e, exp = live("cooldowns", key), now_us() + math.floor(ttl_ms * US)
    if not e or e.exp < exp then st.cooldowns[key] = { exp = exp } end
    return true
  end

  function ops.cooldown(key)
    local e = live("cooldowns", key)
    return e and (e.exp - now_us()) / US or 0
  end

  function ops.claim(key, ttl_ms)
    local e = live("flights", key)
    if not e then
      st.flights[key] = { exp = now_us() + math.floor(ttl_ms * US) }
      return "new"
    end
    if e.done then return "cached", json.decode(e.value) end
    return "in_progress"
  end

  function ops.complete(key, value, ttl_ms)
    st.flights[key] = { exp = now_us() + math.floor(ttl_ms * US), done = true, value = json.encode(value) }
    return true
  end

  function ops.fail(key)
    local e = st.flights[key]
    if e and not e.done then st.flights[key] = nil end
    return true
  end

  function ops.del(key)
    for _, family in ipairs { "tat", "leases", "counters", "cooldowns", "flights" } do st[family][key] = nil end
    return true
  end

  return ops
end

function Double.new(opts)
  opts = opts or {}
  local self = setmetatable({ calls = {}, latency = opts.latency_ms or 0, requests = baton.channel(64) }, Double)
  local ops = server_ops { tat = {}, leases = {}, counters = {}, cooldowns = {}, flights = {} }
  self.server = baton.spawn(function()
    for req in self.requests:iter() do
      if self.latency > 0 then baton.sleep(self.latency) end
      -- the request crossed "the wire" as JSON; so does the answer
      local args = decode(req.args)
      req.reply:set(encode(pcall(ops[req.op], table.unpack(args, 1, args.n))))
    end
  end)
  return self
end

-- Every operation of the interface, as a round trip to the server task.
for _, op in ipairs { "now", "gcra_take", "lease_acquire", "lease_renew", "lease_release", "lease_holders",
                      "incr", "get", "set_cooldown", "cooldown", "claim", "complete", "fail", "del" } do
  Double[op] = function(self, ...)
    self.calls[op] = (self.calls[op] or 0) + 1
    local reply = baton.future()
    assert(self.requests:send { op = op, args = encode(...), reply = reply })
    local r = decode(assert(reply:wait()))
    if not r[1] then error(r[2], 2) end  -- misuse raises at the caller, as in any store
    return table.unpack(r, 2, r.n)
  end
end

function Double:close()
  self.requests:close()
  if self.server then
    self.server:join()
    self.server = nil
  end
end
Double.__close = Double.close

return Double
