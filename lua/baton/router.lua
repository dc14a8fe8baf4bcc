-- baton.router: an LLM traffic router on baton's primitives. A call names a group of
-- deployments (the same model behind several keys, regions or providers); the router picks
-- one that is admissible now (not cooling down, below its max_parallel, inside its rpm and
-- tpm), runs the deployment's `call` as a task under ONE deadline for the whole request,
-- classifies the outcome (baton.router.classify: HTTP status and the error JSON of OpenAI,
-- Anthropic and Gemini, MCP and baton kinds) and acts on its class: retry the deployment,
-- cool it down and take the next, fall back to other groups, or fail. Every attempt is a row
-- of the ledger returned with the result and summed in r:usage(). Hedging starts a second
-- attempt on the next candidate when the first is slow; the first success wins and the
-- loser is aborted (its HTTP transfer removed with it). docs/router.md is the manual.
--
-- The module compiles this file in (src/lua/lrouter.c runs it with the module table).
--
-- Invariants:
--  * every attempt task belongs to the call's group; when call returns or raises, every
--    attempt it started has ended (aborted and awaited), its max_parallel slot is back and
--    its waiting callers poked; a caller aborted while it waits unwinds through the call
--    state's <close>, which aborts the attempts and gives their slots back (no await).
--  * a deployment's slot count (local state) only moves in take_slot / give_slot; its rate
--    limits take at admission and are corrected (tpm) or given back when the attempt ends.
--  * the queue is FIFO per router: a caller that finds others waiting waits behind them; a
--    release, a cooldown's end or a rate limit's retry time wakes the waiters in order, and
--    each takes whichever of its candidates is free first.
local baton = ...
if type(baton) ~= "table" then baton = require "baton" end  -- required as a plain module

local clock, spawn, notify, sleep = baton.clock, baton.spawn, baton.notify, baton.sleep
-- Tracing (docs/observability.md): each attempt's start and end as instant events.
local trace_on, trace_instant = baton.trace.active, baton.trace.instant
local json = baton.json
local type, pairs, ipairs, select, tostring, tonumber, error, pcall = type, pairs, ipairs, select, tostring,
  tonumber, error, pcall
local setmetatable, getmetatable, mtype, floor, ceil, huge = setmetatable, getmetatable, math.type,
  math.floor, math.ceil, math.huge
local sort, remove = table.sort, table.remove

local router = {}
local Router = { __name = "baton.Router" }
Router.__index = Router

-- ---- vocabulary ---------------------------------------------------------------------------

-- The classes of failure the router acts on, and the kind (docs/errors.md) a call that
-- failed with that class returns.
local KIND_OF = {
  rate_limited = "rate_limited", overloaded = "unavailable", unavailable = "unavailable",
  server_error = "unavailable", context_length = "rejected", auth = "auth",
  bad_request = "rejected", content_filter = "rejected", timeout = "timeout", error = "error",
}
local DEFAULT_ON = {
  rate_limited = "cooldown", overloaded = "next", unavailable = "next", timeout = "next",
  server_error = "retry", context_length = "fallback", auth = "fail", bad_request = "fail",
  content_filter = "fail", error = "fail",
}
local ACTIONS = { retry = true, next = true, cooldown = true, fallback = true, fail = true }
local STRATEGIES = { ordered = true, least_busy = true, lowest_latency = true }
router.classes = {}
for c in pairs(KIND_OF) do router.classes[#router.classes + 1] = c end
sort(router.classes)

-- ---- misuse, as the C toolkit words it ----------------------------------------------------

local got = baton._got  -- how the C toolkit shows a value in a misuse message

local function misuse(level, fname, n, name, expected, v)
  error(("%s: bad argument #%d '%s' (expected %s, got %s)"):format(fname, n, name, expected, got(v)), level + 1)
end

local function unknown(level, fname, n, t, known)
  for k in pairs(t) do
    if type(k) ~= "string" or not known[k] then
      if type(k) == "string" then
        error(("%s: bad argument #%d '%s' (unknown option)"):format(fname, n, k), level + 1)
      end
      misuse(level + 1, fname, n, "opts", "string keys", k)
    end
  end
end

local function set(...)
  local s = {}
  for i = 1, select("#", ...) do s[select(i, ...)] = true end
  return s
end

-- ---- classification -----------------------------------------------------------------------

local CONTEXT = { "context_length_exceeded", "prompt is too long", "maximum context length",
                  "context length", "context window", "too many tokens", "input is too long",
                  "exceeds the maximum number of tokens", "reduce the length of the messages",
                  "request_too_large" }
local FILTER = { "content_filter", "content_policy", "content management policy",
                 "responsibleaipolicyviolation", "flagged by the safety" }

local function has_any(text, list)
  for _, p in ipairs(list) do
    if text:find(p, 1, true) then return true end
  end
  return false
end

-- The body of an HTTP response as a table: decoded already (baton.http.json), or JSON text.
local function body_table(body)
  if type(body) == "table" then return body end
  if type(body) == "string" and body:find("^%s*{") then
    local t = json.decode(body)
    if type(t) == "table" then return t end
  end
  return nil
end

-- "Please try again in 1.5s" / "in 20ms" (OpenAI's rate limit messages), in ms.
local function try_again_in(text)
  local n, unit = text:match("try again in (%d+%.?%d*)(m?s)")
  n = tonumber(n)
  if not n then return nil end
  return ceil(unit == "ms" and n or n * 1000)
end

-- An HTTP response's error facts: lowercased text to search, the error's type or status
-- word, its code (a string), and Retry-After in ms.
local function http_facts(resp)
  local b = body_table(resp.body)
  local err = b and (type(b.error) == "table" and b.error or b) or nil
  local etype = err and (type(err.type) == "string" and err.type or type(err.status) == "string" and err.status) or ""
  local code = err and type(err.code) == "string" and err.code or ""
  local msg = err and type(err.message) == "string" and err.message or (type(resp.body) == "string" and resp.body) or ""
  local text = (etype .. " " .. code .. " " .. msg):lower()
  local ra = tonumber(resp.retry_after_ms)
  local h = type(resp.headers) == "table" and resp.headers or {}
  if not ra and h["retry-after-ms"] then ra = tonumber(h["retry-after-ms"]) end
  if not ra and h["retry-after"] then
    local s = tonumber(h["retry-after"])
    ra = s and s * 1000
  end
  if not ra then ra = try_again_in(text) end
  return text, etype:lower(), code:lower(), ra, b
end

-- A retry-after the router acts on: a peer's (or a classify hook's) number made sane:
-- none unless finite and >= 0, whole milliseconds, at most a day (a hostile 1e300 s must
-- not shut a deployment for good nor overflow what prints it).
local DAY_MS = 86400000
local function sane_ra(v)
  v = tonumber(v)
  if not v or v ~= v or v < 0 then return nil end
  return v >= DAY_MS and DAY_MS or ceil(v)
end

-- A token count a provider reported, made a whole number >= 0 (garbage counts as 0).
local function sane_count(v)
  v = tonumber(v)
  if not v or v ~= v or v <= 0 then return 0 end
  return v >= 2 ^ 53 and 2 ^ 53 or math.floor(v)
end

local function classify_http(resp)
  local status = resp.status
  if status < 400 then
    local b = body_table(resp.body)  -- Gemini answers a blocked prompt with 200
    if b and ((type(b.promptFeedback) == "table" and b.promptFeedback.blockReason)
              or (type(b.candidates) == "table" and type(b.candidates[1]) == "table"
                  and b.candidates[1].finishReason == "SAFETY")) then
      return "content_filter"
    end
    return nil
  end
  local text, etype, code, ra = http_facts(resp)
  if status == 429 or etype == "rate_limit_error" or etype == "resource_exhausted"
     or code == "rate_limit_exceeded" then
    return "rate_limited", ra
  end
  if status == 529 or etype == "overloaded_error" then return "overloaded", ra end
  if (status == 400 or status == 413 or status == 422) and has_any(text, CONTEXT) then return "context_length" end
  if status == 400 and has_any(text, FILTER) then return "content_filter" end
  if status == 401 or status == 403 or etype == "authentication_error" or etype == "permission_error"
     or etype == "unauthenticated" or etype == "permission_denied" or text:find("api key not valid", 1, true) then
    return "auth"
  end
  if status == 408 or etype == "deadline_exceeded" then return "timeout" end
  if status == 502 or status == 503 or status == 504 or etype == "unavailable" then return "unavailable", ra end
  if status >= 500 then return "server_error", ra end
  return "bad_request"
end

local KIND_CLASS = {
  rate_limited = "rate_limited", timeout = "timeout", auth = "auth",
  connect = "unavailable", tls = "unavailable", io = "unavailable", closed = "unavailable",
  resource = "unavailable", unavailable = "unavailable", circuit_open = "unavailable",
  shed = "overloaded", busy = "overloaded", queue_wait = "overloaded",
  protocol = "server_error", malformed = "server_error",
  rejected = "bad_request", tool_error = "bad_request", too_large = "context_length",
}

-- The message of a failure that came back as a value (an HTTP response with an error
-- status): "HTTP 429: <the error's message>", the body cut to 200 bytes when it is not JSON.
local function value_message(value)
  if type(value) == "table" and mtype(value.status) == "integer" then
    local b = body_table(value.body)
    local err = b and (type(b.error) == "table" and b.error or b)
    local m = err and type(err.message) == "string" and err.message
    if not m and type(value.body) == "string" then m = value.body:sub(1, 200) end
    return ("HTTP %d: %s"):format(value.status, m or "")
  end
  local m = tostring(value)
  return #m > 200 and m:sub(1, 200) or m
end

-- baton.router.classify(value, msg, kind, detail) -> class, retry_after_ms | nil (a success)
function router.classify(value, msg, kind, detail)
  if value ~= nil then
    if type(value) == "table" and mtype(value.status) == "integer" then return classify_http(value) end
    return nil
  end
  if type(detail) == "table" and mtype(detail.status) == "integer" and detail.status >= 400 then
    local c, ra = classify_http(detail)  -- an HTTP response handed back as the failure's detail
    if c then return c, ra end
  end
  local ra = type(detail) == "table" and tonumber(detail.retry_after_ms) or nil
  if kind == "rpc_error" then  -- JSON-RPC: the server's own errors are transient
    local code = type(detail) == "table" and tonumber(detail.code) or 0
    if code == -32603 or (code <= -32000 and code >= -32099) then return "server_error", ra end
    return "bad_request"
  end
  local c = KIND_CLASS[kind]
  local text = type(msg) == "string" and msg:lower() or ""
  if c == nil or c == "bad_request" then
    if has_any(text, CONTEXT) then return "context_length" end
    if has_any(text, FILTER) then return "content_filter" end
  end
  if c then return c, ra end
  if kind == nil or kind == "error" then return "error", ra end
  return kind, ra  -- a word of the caller's own: the `on` table may name it
end

-- baton.router.usage(result) -> tokens_in, tokens_out | nil: from an OpenAI, Anthropic or
-- Gemini answer (the table, or an HTTP response whose body is one, decoded or not).
function router.usage(result)
  if type(result) ~= "table" then return nil end
  local b = result
  if mtype(result.status) == "integer" then b = body_table(result.body) end
  if type(b) ~= "table" then return nil end
  local u = b.usage
  if type(u) == "table" then
    local i = tonumber(u.prompt_tokens or u.input_tokens)
    local o = tonumber(u.completion_tokens or u.output_tokens)
    if i or o then return i or 0, o or 0 end
  end
  u = b.usageMetadata
  if type(u) == "table" then
    return tonumber(u.promptTokenCount) or 0, tonumber(u.candidatesTokenCount) or 0
  end
  return nil
end

-- ---- latency samples ----------------------------------------------------------------------

local SAMPLES = 1024

local function add_sample(u, ms)
  local n = u.nsamples % SAMPLES + 1
  u.samples[n] = ms
  u.nsamples = u.nsamples + 1
  u.sorted = nil
end

local function percentile(u, p)
  local n = u.nsamples < SAMPLES and u.nsamples or SAMPLES
  if n == 0 then return nil end
  local s = u.sorted
  if not s then
    s = {}
    for i = 1, n do s[i] = u.samples[i] end
    sort(s)
    u.sorted = s
  end
  local i = ceil(p * n)
  return s[i < 1 and 1 or i]
end

-- ---- deployment state: in-process, or through a store -----------------------------------
-- The in-process state is fields of the deployment (cool_until, inflight), read inline on
-- the hot path (try_admit, record). Through a store, the same four operations:
-- state:cooling(d) -> ms left (0: not cooling) ; state:cool(d, ms)
-- state:take_slot(d, holder, ttl) -> true | false, poll_ms ; state:give_slot(d, holder)

local Local = {}
Local.__index = Local

function Local.cool(_, d, ms)
  local now = clock()
  local untl = now + ms
  if untl > d.cool_until then
    d.usage.cooldown_ms = d.usage.cooldown_ms + (untl - (d.cool_until > now and d.cool_until or now))
    d.cool_until = untl
  end
end

function Local.give_slot(_, d)
  d.inflight = d.inflight - 1
end

local Stored = {}
Stored.__index = Stored
local SLOT_POLL_MS = 25

-- A store operation's failure interrupts the call: raised, marked, and turned into the
-- call's returned failure by Router:call (store_failure below).
local function store_ok(v, msg, kind, detail)
  if v == nil and msg ~= nil then
    local e = baton.error(kind or "error", tostring(msg), detail)
    e.from_store = true
    error(e, 0)
  end
  return v
end

function Stored:cooling(d)
  return tonumber(store_ok(self.store:cooldown(d.key .. ":cooldown"))) or 0
end

function Stored:cool(d, ms)
  local left = self:cooling(d)
  if ms > left then d.usage.cooldown_ms = d.usage.cooldown_ms + (ms - left) end
  store_ok(self.store:set_cooldown(d.key .. ":cooldown", ms))
end

function Stored:take_slot(d, holder, ttl)
  if d.max_parallel then
    local ok, msg, kind, detail = self.store:lease_acquire(d.key .. ":slots", holder, d.max_parallel, ttl)
    if not ok then
      if kind ~= "busy" then store_ok(nil, msg, kind, detail) end
      -- held, maybe by another process, whose release does not wake us: poll
      local ra = type(detail) == "table" and tonumber(detail.retry_after_ms) or SLOT_POLL_MS
      return false, ra < SLOT_POLL_MS and ra or SLOT_POLL_MS
    end
  end
  d.inflight = d.inflight + 1
  return true
end

function Stored:give_slot(d, holder)
  d.inflight = d.inflight - 1
  if d.max_parallel then self.store:lease_release(d.key .. ":slots", holder) end
end

-- ---- the constructor ----------------------------------------------------------------------

local ROUTER_KEYS = set("deployments", "groups", "fallbacks", "context_fallbacks", "on", "retry", "hedge",
                        "timeout_ms", "cooldown_ms", "classify", "store", "on_attempt", "name")
local DEPLOYMENT_KEYS = set("name", "model", "call", "rpm", "tpm", "rpm_burst", "tpm_burst", "max_parallel",
                            "cost", "context_window", "timeout_ms", "usage")
local F = "baton.router"

local function check_ms(fname, n, name, v, positive)
  if type(v) ~= "number" or not (v >= 0 and v < 1e15) or (positive and v == 0) then
    misuse(4, fname, n, name, positive and "milliseconds > 0" or "milliseconds >= 0", v)
  end
end

-- An integer >= min, or a float with an integer's value (as the C functions take counts):
-- returned as an integer.
local function check_int(fname, n, name, v, min)
  local i = type(v) == "number" and math.tointeger(v)
  if not i or i < min then misuse(4, fname, n, name, "integer >= " .. min, v) end
  return i
end

local function check_rate(name, v)
  if type(v) ~= "number" or not (v > 0 and v < 1e15) then misuse(4, F, 1, name, "a number > 0", v) end
end

local function new_deployment(i, d, store, prefix)
  local w = ("deployments[%d]"):format(i)
  if type(d) ~= "table" then misuse(3, F, 1, w, "table", d) end
  unknown(3, F, 1, d, DEPLOYMENT_KEYS)
  if type(d.name) ~= "string" or d.name == "" then misuse(3, F, 1, w .. ".name", "non-empty string", d.name) end
  if d.model ~= nil and type(d.model) ~= "string" then misuse(3, F, 1, w .. ".model", "string", d.model) end
  if type(d.call) ~= "function" then misuse(3, F, 1, w .. ".call", "function", d.call) end
  if d.usage ~= nil and type(d.usage) ~= "function" then misuse(3, F, 1, w .. ".usage", "function", d.usage) end
  local dep = { name = d.name, model = d.model or d.name, call = d.call, usage_of = d.usage, inflight = 0,
                price_in = 0, price_out = 0,
                cool_until = -huge, cool_class = nil, key = prefix .. d.name,
                usage = { attempts = 0, ok = 0, aborted = 0, errors = {}, tokens_in = 0, tokens_out = 0, cost = 0,
                          cooldown_ms = 0, samples = {}, nsamples = 0 } }
  if d.max_parallel ~= nil then
    dep.max_parallel = check_int(F, 1, w .. ".max_parallel", d.max_parallel, 1)
  end
  if d.context_window ~= nil then
    dep.context_window = check_int(F, 1, w .. ".context_window", d.context_window, 1)
  end
  if d.timeout_ms ~= nil then
    check_ms(F, 1, w .. ".timeout_ms", d.timeout_ms, true)
    dep.timeout_ms = d.timeout_ms
  end
  if d.cost ~= nil then
    if type(d.cost) ~= "table" then misuse(3, F, 1, w .. ".cost", "table { input =, output = }", d.cost) end
    unknown(3, F, 1, d.cost, set("input", "output"))
    for _, k in ipairs { "input", "output" } do
      local v = d.cost[k]
      if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
        misuse(3, F, 1, w .. ".cost." .. k, "number >= 0", v)
      end
    end
    dep.price_in, dep.price_out = d.cost.input or 0, d.cost.output or 0
  end
  for _, lim in ipairs { "rpm", "tpm" } do
    local rate, burst = d[lim], d[lim .. "_burst"]
    if rate ~= nil then
      check_rate(w .. "." .. lim, rate)
      if burst ~= nil then burst = check_int(F, 1, w .. "." .. lim .. "_burst", burst, 1) end
      dep[lim .. "_cap"] = burst or (floor(rate) < 1 and 1 or floor(rate))
      dep[lim] = baton.ratelimit { rate = rate, per_ms = 60000, burst = burst, store = store,
                                   key = store and dep.key .. ":" .. lim or nil }
    elseif burst ~= nil then
      misuse(3, F, 1, w .. "." .. lim .. "_burst", "nil without " .. lim, burst)
    end
  end
  return dep
end

local function name_list(where, v, known, what)
  if type(v) ~= "table" then misuse(3, F, 1, where, "a list of " .. what .. " names", v) end
  local out = {}
  for i, n in ipairs(v) do
    if not known[n] then misuse(3, F, 1, ("%s[%d]"):format(where, i), "a " .. what .. " name", n) end
    out[i] = n
  end
  return out
end

local function new_router(_, opts)
  if type(opts) ~= "table" then misuse(2, F, 1, "opts", "table", opts) end
  unknown(2, F, 1, opts, ROUTER_KEYS)
  local self = setmetatable({ deployments = {}, order = {}, groups = {}, fallbacks = {}, context_fallbacks = {},
                              on = {}, waiters = {}, calls = 0, hedges = 0, next_id = 0, stage_lists = {} },
                       Router)
  if opts.name ~= nil and type(opts.name) ~= "string" then misuse(2, F, 1, "name", "string", opts.name) end
  local prefix = "router:" .. (opts.name or "") .. ":"
  local store = opts.store
  if store ~= nil then
    if (type(store) ~= "table" and type(store) ~= "userdata") then
      misuse(2, F, 1, "store", "a store (docs/store.md)", store)
    end
    self.state = setmetatable({ store = store }, Stored)
    -- lease holders: unique to this router object within this process and clock reading
    self.id = ("%s@%.0f#"):format(tostring(self):match("0x%x+") or "router", clock() * 1000)
  else
    self.state = setmetatable({}, Local)
  end
  if type(opts.deployments) ~= "table" or opts.deployments[1] == nil then
    misuse(2, F, 1, "deployments", "a non-empty list of deployments", opts.deployments)
  end
  for i, d in ipairs(opts.deployments) do
    local dep = new_deployment(i, d, store, prefix)
    if self.deployments[dep.name] then
      misuse(2, F, 1, ("deployments[%d].name"):format(i), "a name not used before", dep.name)
    end
    self.deployments[dep.name] = dep
    self.order[i] = dep
  end
  if opts.groups ~= nil then
    if type(opts.groups) ~= "table" then misuse(2, F, 1, "groups", "table", opts.groups) end
    for name, g in pairs(opts.groups) do
      if type(name) ~= "string" then misuse(2, F, 1, "groups", "string keys", name) end
      local where = "groups." .. name
      if type(g) ~= "table" then misuse(2, F, 1, where, "a list of deployment names", g) end
      local list = name_list(where, g, self.deployments, "deployment")
      if #list == 0 then misuse(2, F, 1, where, "a non-empty list of deployment names", g) end
      for k in pairs(g) do
        if mtype(k) ~= "integer" and k ~= "strategy" then
          misuse(2, F, 1, where .. "." .. tostring(k), "nothing", g[k])
        end
      end
      local strategy = g.strategy or "ordered"
      if not STRATEGIES[strategy] then
        misuse(2, F, 1, where .. ".strategy", "'ordered', 'least_busy' or 'lowest_latency'", g.strategy)
      end
      local deps = {}
      for i, n in ipairs(list) do deps[i] = self.deployments[n] end
      self.groups[name] = { name = name, deps = deps, strategy = strategy }
    end
  else  -- a group per model, in the order of the deployments
    for _, dep in ipairs(self.order) do
      local g = self.groups[dep.model]
      if not g then
        g = { name = dep.model, deps = {}, strategy = "ordered" }
        self.groups[dep.model] = g
      end
      g.deps[#g.deps + 1] = dep
    end
  end
  for _, which in ipairs { "fallbacks", "context_fallbacks" } do
    local t = opts[which]
    if t ~= nil then
      if type(t) ~= "table" then misuse(2, F, 1, which, "table", t) end
      for name, list in pairs(t) do
        if not self.groups[name] then misuse(2, F, 1, which, "group names as keys", name) end
        self[which][name] = name_list(which .. "." .. name, list, self.groups, "group")
      end
    end
  end
  for c, a in pairs(DEFAULT_ON) do self.on[c] = a end
  if opts.on ~= nil then
    if type(opts.on) ~= "table" then misuse(2, F, 1, "on", "table", opts.on) end
    for c, a in pairs(opts.on) do
      if type(c) ~= "string" then misuse(2, F, 1, "on", "class names as keys", c) end
      if not ACTIONS[a] then
        misuse(2, F, 1, "on." .. c, "'retry', 'next', 'cooldown', 'fallback' or 'fail'", a)
      end
      self.on[c] = a
    end
  end
  local retry = opts.retry or {}
  if type(retry) ~= "table" then misuse(2, F, 1, "retry", "table { max =, base_ms = }", retry) end
  unknown(2, F, 1, retry, set("max", "base_ms", "max_delay_ms"))
  self.retry_max = check_int(F, 1, "retry.max", retry.max or 1, 0)
  self.retry_base = retry.base_ms or 100
  check_ms(F, 1, "retry.base_ms", self.retry_base)
  self.retry_cap = retry.max_delay_ms or 2000
  check_ms(F, 1, "retry.max_delay_ms", self.retry_cap)
  if opts.hedge ~= nil then
    local h = opts.hedge
    if type(h) ~= "table" then misuse(2, F, 1, "hedge", "table { after_ms =, max =, budget = }", h) end
    unknown(2, F, 1, h, set("after_ms", "max", "budget"))
    if h.after_ms ~= "p95" then check_ms(F, 1, "hedge.after_ms", h.after_ms) end
    local max, budget = check_int(F, 1, "hedge.max", h.max or 1, 1), h.budget or 0.05
    if type(budget) ~= "number" or not (budget >= 0 and budget <= 1) then
      misuse(2, F, 1, "hedge.budget", "a fraction in [0, 1]", budget)
    end
    self.hedge = { after = h.after_ms, max = max, budget = budget }
  end
  self.timeout_ms = opts.timeout_ms or 60000
  check_ms(F, 1, "timeout_ms", self.timeout_ms)
  self.cooldown_ms = opts.cooldown_ms or 5000
  check_ms(F, 1, "cooldown_ms", self.cooldown_ms)
  if opts.classify ~= nil and type(opts.classify) ~= "function" then
    misuse(2, F, 1, "classify", "function", opts.classify)
  end
  self.classify = opts.classify or router.classify
  if opts.on_attempt ~= nil and type(opts.on_attempt) ~= "function" then
    misuse(2, F, 1, "on_attempt", "function", opts.on_attempt)
  end
  self.on_attempt = opts.on_attempt
  return self
end

setmetatable(router, { __call = new_router })
baton.router = router

-- ---- admission ----------------------------------------------------------------------------

-- Wakes every queued caller, in FIFO order: each looks again at its own candidates.
local function poke(self)
  local w = self.waiters
  for i = 1, #w do w[i].bell:notify_one() end
end

-- The group's deployments in the order its strategy prefers now.
local function ordered(g)
  if g.strategy == "ordered" or #g.deps < 2 then return g.deps end
  local deps = {}
  for i, d in ipairs(g.deps) do deps[i] = d end
  if g.strategy == "least_busy" then
    local rank = {}
    for i, d in ipairs(deps) do rank[d] = i end
    sort(deps, function(a, b)
      if a.inflight ~= b.inflight then return a.inflight < b.inflight end
      return rank[a] < rank[b]
    end)
  else
    local lat, rank = {}, {}
    for i, d in ipairs(deps) do
      rank[d] = i
      lat[d] = percentile(d.usage, 0.5) or 0  -- unknown latency first: it gets measured
    end
    sort(deps, function(a, b)
      if lat[a] ~= lat[b] then return lat[a] < lat[b] end
      return rank[a] < rank[b]
    end)
  end
  return deps
end

-- Takes d for the call if it is admissible now: its slot, a request of its rpm and the
-- estimate of its tpm. Returns true and the slot's holder id, or false and how long until
-- it may be (nil: when a slot is released; huge: never for this call) and whether it is
-- cooling down.
local function try_admit(self, call, d, retrying)
  if not retrying then  -- tried already by this call (a retry is the one way back)
    local ledger, name = call.ledger, d.name
    for i = 1, #ledger do
      if ledger[i].deployment == name then return false, huge end
    end
  end
  if d.context_window and call.estimate > d.context_window then return false, huge end
  if d.tpm and call.estimate > d.tpm_cap then return false, huge end
  local state = self.state
  local stored = state.store
  local cool
  if stored then cool = state:cooling(d) else cool = d.cool_until - clock() end
  if cool > 0 then return false, cool, true end
  local holder = true
  if stored then
    self.next_id = self.next_id + 1
    holder = self.id .. self.next_id
    local ok, retry = state:take_slot(d, holder, call.deadline - clock() + 1000)
    if not ok then return false, retry end
  else
    local max = d.max_parallel
    if max and d.inflight >= max then return false end
    d.inflight = d.inflight + 1
  end
  local rpm, tpm = d.rpm, d.tpm
  if not (rpm or tpm) then return true, holder end
  -- the rates: both taken, or neither (a refused take's retry_after_ms says how long)
  local r1, wait = true, nil
  if rpm then
    local msg, kind, detail
    r1, msg, kind, detail = rpm:try_acquire(1)
    if not r1 then
      if kind ~= "rate_limited" then store_ok(nil, msg, kind, detail) end
      wait = detail.retry_after_ms
    end
  end
  if r1 and tpm then
    local t1, msg, kind, detail = tpm:try_acquire(call.estimate)
    if not t1 then
      if kind ~= "rate_limited" then store_ok(nil, msg, kind, detail) end
      wait = detail.retry_after_ms
      if rpm then rpm:adjust(1, 0) end
    end
  end
  if wait then
    if stored then state:give_slot(d, holder) else d.inflight = d.inflight - 1 end
    return false, wait
  end
  return true, holder
end

-- Picks the next deployment: the first admissible of the current stage's untried
-- deployments, else of the later stages (the fallbacks); the current stage's saturated
-- deployments (max_parallel, rpm, tpm) are waited for rather than skipped, and cooling ones
-- when no later stage remains. Returns
--   d, holder, why                admitted (its slot and rates taken)
--   nil, wait_ms, slots, class    wait: at most wait_ms (huge: until a slot is released,
--                                 slots true) and look again; class: the cooling ones' class
--   nil                           nothing left to try
local function pick(self, call)
  local si = call.stage
  while si <= #call.stages do
    local st = call.stages[si]
    local soonest, slots, cooling_only, cclass = huge, false, true, nil
    local g = self.groups[st.group]
    local deps = g.strategy == "ordered" and g.deps or ordered(g)
    for i = 1, #deps do
      local d = deps[i]
      local ok, wait, cooling = try_admit(self, call, d)
      if ok then
        local why = st.why
        if call.stage ~= si then call.stage, call.in_stage = si, 0 end
        if call.in_stage > 0 and why == "primary" then why = "next" end
        call.in_stage = call.in_stage + 1
        return d, wait, why
      end
      if wait ~= huge then
        if cooling then cclass = cclass or d.cool_class else cooling_only = false end
        if wait == nil then slots = true elseif wait < soonest then soonest = wait end
      end
    end
    if (slots or soonest < huge) and (not cooling_only or si == #call.stages) then
      return nil, soonest, slots, cooling_only and (cclass or "rate_limited") or "rate_limited"
    end
    si = si + 1
  end
  return nil
end

-- Waits in the router's FIFO queue until poked, `ms` pass, or the deadline. Returns false
-- when the deadline has passed.
local function queue_wait(self, call, ms)
  local left = call.deadline - clock()
  if left <= 0 then return false end
  if ms == nil or ms == huge or ms > left then ms = left end
  local me = call.waiter
  if not me then
    me = { bell = notify() }
    call.waiter = me
    self.waiters[#self.waiters + 1] = me
    call.queued_at = clock()
  end
  me.bell:notified(ms)
  return call.deadline - clock() > 0
end

local function leave_queue(self, call)
  local me = call.waiter
  if not me then return end
  local w = self.waiters
  for i = 1, #w do
    if w[i] == me then
      remove(w, i)
      break
    end
  end
  call.waiter = nil
  call.queued_ms = (call.queued_ms or 0) + (clock() - call.queued_at)
end

-- ---- attempts -----------------------------------------------------------------------------
-- An attempt is a task (baton.spawn) running the deployment's call, and its ledger row,
-- which holds while it runs the attempt's state in private fields: _d (the deployment),
-- _t0, _limit (its absolute end: the deadline or its own timeout), _holder (its slot),
-- _estimate (tokens taken from tpm, until corrected), _task. record() ends them. The
-- call's `running` is the list of the rows in flight (one, or more when hedging).

local function release(self, a)
  local holder = a._holder
  if holder then
    a._holder = nil
    self.state:give_slot(a._d, holder)
    if self.waiters[1] then poke(self) end
  end
end

local function report(self, row)
  local hook = self.on_attempt
  if hook then
    local ok, err = pcall(hook, row)
    if not ok then baton.warn("baton.router: on_attempt raised: " .. tostring(err)) end
  end
end

-- Records an attempt's end in its row, the deployment's usage and the hook; gives its
-- slot back and corrects its token estimate by what it used (nothing, for a failure). The
-- row's private fields (the attempt's state while it ran) go.
local function record(self, a, class, action, msg, ra, tin, tout)
  local d = a._d
  local ms = clock() - a._t0
  a.ms, a.class, a.action, a.error, a.retry_after_ms = ms, class, action, msg, ra
  local u = d.usage
  u.attempts = u.attempts + 1
  if action == "aborted" then
    u.aborted = u.aborted + 1
  elseif class then
    u.errors[class] = (u.errors[class] or 0) + 1
  else
    u.ok = u.ok + 1
    add_sample(u, ms)
  end
  if tin or tout then
    tin, tout = sane_count(tin), sane_count(tout)
    local cost = tin * d.price_in + tout * d.price_out
    a.tokens_in, a.tokens_out, a.cost = tin, tout, cost
    u.tokens_in, u.tokens_out, u.cost = u.tokens_in + tin, u.tokens_out + tout, u.cost + cost
  end
  if a._estimate then d.tpm:adjust(a._estimate, math.tointeger((tin or 0) + (tout or 0))) end
  local holder = a._holder
  if holder then
    a._holder = nil
    if self.state.store then self.state:give_slot(d, holder) else d.inflight = d.inflight - 1 end
    if self.waiters[1] then poke(self) end
  end
  a._d, a._t0, a._limit, a._estimate, a._task = nil, nil, nil, nil, nil
  if trace_on() then
    trace_instant("router " .. tostring(action), { deployment = a.deployment, class = class or "ok", ms = ms })
  end
  if self.on_attempt then report(self, a) end
end

local function start(call, d, holder, why)
  local now = clock()
  local ledger = call.ledger
  local n = #ledger + 1
  local limit = call.deadline
  if d.timeout_ms and now + d.timeout_ms < limit then limit = now + d.timeout_ms end
  local a = { deployment = d.name, model = d.model, group = call.stages[call.stage].group, why = why,
              tokens_estimated = call.estimate, queued_ms = call.queued_ms,
              _d = d, _t0 = now, _limit = limit, _holder = holder, _estimate = d.tpm and call.estimate or nil,
              _task = false }
  call.queued_ms = nil
  ledger[n] = a
  if trace_on() then
    trace_instant("router attempt", { deployment = d.name, model = d.model, why = why, attempt = n })
  end
  a._task = spawn(d.call, call.req, { deployment = d.name, model = d.model, attempt = n, why = why,
                                      deadline = limit, timeout_ms = limit - now, estimate_tokens = call.estimate })
  local run = call.running
  run[#run + 1] = a
  return a
end

local function drop(call, a)
  local run = call.running
  for i = 1, #run do
    if run[i] == a then
      remove(run, i)
      return
    end
  end
end

-- Aborts every running attempt and waits for each to end (a caller being cancelled does
-- the same in <close>, without the wait).
local function abort_running(self, call, class, action, why)
  local run = call.running
  while run[1] do
    local a = remove(run)
    local t = a._task
    t:abort()
    t:join()
    record(self, a, class, action, why)
  end
end

-- The failure of a finished attempt, from its join's results: value, second (what call
-- returned second), msg, kind, detail (the one rule of docs/errors.md).
local function outcome(ok, value, msg, kind, detail)
  if ok then
    if value == nil and msg ~= nil then
      if type(msg) == "table" and type(msg.kind) == "string" then
        return nil, nil, msg.message, msg.kind, msg.detail
      end
      return nil, nil, msg, type(kind) == "string" and kind or "error", detail
    end
    return value, msg
  end
  local e = value
  if type(e) == "table" and type(e.kind) == "string" then
    if e.kind == "cancelled" then error(e, 0) end
    return nil, nil, e.message, e.kind, e.detail
  end
  return nil, nil, type(e) == "string" and (e:match("^(.-)\nstack traceback:") or e) or tostring(e), "error"
end

-- Waits up to ms for one of the running attempts to end: a, its join's results | nil.
local function wait_any(call, ms)
  local run = call.running
  if run[2] == nil then
    local a = run[1]
    return a, a._task:join(ms)
  end
  local srcs = { timeout_ms = ms }
  for i = 1, #run do srcs[i] = run[i]._task end
  local function pass(i, ...)
    if i == nil then return nil, nil end
    return run[i], ...
  end
  return pass(baton.select(srcs))
end

-- ---- the call -----------------------------------------------------------------------------

local CALL_KEYS = set("estimate_tokens", "timeout_ms")
local CALL = "baton.router:call"

-- The call's state closes whatever is still running: its attempts are aborted and their
-- slots given back (a caller being cancelled cannot await: they unwind on their own).
local CallState = {}
CallState.__index = CallState
CallState.__close = function(call)
  local self = call.router
  local run = call.running
  while run[1] do
    local a = remove(run)
    a._task:abort()
    if a._estimate then a._d.tpm:adjust(a._estimate, 0) end
    release(self, a)
  end
  if call.waiter then leave_queue(self, call) end
end

local function fail(call, class, msg, ra)
  leave_queue(call.router, call)
  local d = { ledger = call.ledger, class = class, retry_after_ms = ra and ceil(ra) }
  return nil, ("%s: %s"):format(CALL, msg), KIND_OF[class] or "error", d
end

-- The stages of a call to `first`: the group, then its fallbacks (made once, never changed:
-- a context fallback replaces the list).
local function stages_of(self, first)
  local st = self.stage_lists[first]
  if not st then
    st = { { group = first, why = "primary" } }
    for _, g in ipairs(self.fallbacks[first] or {}) do st[#st + 1] = { group = g, why = "fallback" } end
    self.stage_lists[first] = st
  end
  return st
end

-- Admission for the next attempt: a retry of the same deployment after its delay, or the
-- next candidate, queueing while the candidates are saturated. Returns d, holder, why, or
-- nil and the failure's class, message and retry_after_ms (nil: nothing left to try).
local function admit(self, call, retry_d, retry_at)
  if retry_d then
    while true do
      local wait = retry_at - clock()
      if wait > 0 then
        local left = call.deadline - clock()
        if left <= wait then
          if left > 0 then sleep(left) end
          return nil, "timeout", ("the deadline of %.15g ms passed (%d attempts)"):format(call.timeout, #call.ledger)
        end
        sleep(wait)
      end
      local ok, w = try_admit(self, call, retry_d, true)
      if ok then return retry_d, w, "retry" end
      if w == huge then break end  -- cooling: the retry becomes a move to the next
      retry_at = clock() + (w or 10)
    end
  end
  if self.waiters[1] and not call.waiter then
    queue_wait(self, call, 0)  -- behind callers already waiting: they look first
  end
  while true do
    local d, wait, slots, class = pick(self, call)
    if d then
      if call.waiter then leave_queue(self, call) end
      return d, wait, slots  -- d, holder, why
    end
    if wait == nil then
      if call.waiter then leave_queue(self, call) end
      return nil
    end
    local left = call.deadline - clock()
    if not slots and wait > left then  -- nothing frees in time: fail now, saying when
      return nil, class, ("no deployment of '%s' is free before the deadline (the first in %d ms)")
                         :format(call.group, ceil(wait)), wait
    end
    if not queue_wait(self, call, wait) then
      return nil, "timeout", ("the deadline of %.15g ms passed (%d attempts, waiting for a deployment)")
                             :format(call.timeout, #call.ledger)
    end
  end
end

-- The tokens an attempt used: what call returned second ({ input =, output = }), the
-- deployment's usage function, or baton.router.usage on the result.
local function tokens(d, value, second)
  if type(second) == "table" and (tonumber(second.input) or tonumber(second.output)) then
    return tonumber(second.input) or 0, tonumber(second.output) or 0
  end
  if d.usage_of then return d.usage_of(value) end
  if type(value) ~= "table" then return nil end
  return router.usage(value)
end

-- What the call does after a failed attempt: fail (returns the failure), or sets up the
-- next admission (call.retry_d/retry_at for a retry, the stage for a fallback).
local function after_failure(self, call, a, class, ra, msg)
  local d = a._d
  local action = self.on[class] or "fail"
  if action == "retry" then
    local retries = call.retries
    if not retries then
      retries = {}
      call.retries = retries
    end
    local n = (retries[d] or 0) + 1
    if n > self.retry_max then action = "next" else retries[d] = n end
  end
  if action == "cooldown" then
    self.state:cool(d, ra or self.cooldown_ms)
    d.cool_class = class
  end
  record(self, a, class, action, msg, ra)
  call.last_class, call.last_msg, call.last_ra = class, msg, ra
  if action == "fail" then
    abort_running(self, call, nil, "aborted", "aborted: the call failed")
    return fail(call, class, ("'%s' failed at '%s': %s"):format(call.group, d.name, tostring(msg)), ra)
  elseif action == "retry" then
    local delay = self.retry_base * 2 ^ (call.retries[d] - 1)
    if delay > self.retry_cap then delay = self.retry_cap end
    if ra and ra > delay then delay = ra end
    if call.running[1] == nil then call.retry_d, call.retry_at = d, clock() + delay end
  elseif action == "fallback" then
    local g = call.stages[call.stage].group
    if class == "context_length" then
      local list = self.context_fallbacks[g]
      if not (list and list[1]) then
        abort_running(self, call, nil, "aborted", "aborted: the call failed")
        return fail(call, class, ("'%s' failed at '%s' and '%s' has no context fallback: %s")
                    :format(call.group, d.name, g, tostring(msg)), ra)
      end
      local st = {}
      for i, fg in ipairs(list) do st[i] = { group = fg, why = "context_fallback" } end
      call.stages, call.stage, call.in_stage = st, 1, 0
    else
      call.stage, call.in_stage = call.stage + 1, 0  -- the rest of this group is skipped
    end
  end
end

local function do_call(self, ledger, group_name, req, est, timeout)
  self.calls = self.calls + 1
  local call <close> = setmetatable({
    router = self, group = group_name, req = req, estimate = est, deadline = clock() + timeout,
    timeout = timeout, ledger = ledger or {}, running = {}, stage = 1, in_stage = 0, hedged = 0,
    stages = self.stage_lists[group_name] or stages_of(self, group_name),
  }, CallState)
  local h = self.hedge
  while true do
    -- 1. admission
    local retry_d = call.retry_d
    call.retry_d = nil
    local d, holder, why, fra = admit(self, call, retry_d, call.retry_at)
    if not d then
      if holder then return fail(call, holder, why, fra) end  -- the admission's own failure
      if call.last_class then
        return fail(call, call.last_class, ("'%s' failed after %d attempts: %s")
                    :format(group_name, #call.ledger, tostring(call.last_msg)), call.last_ra)
      end
      return fail(call, "context_length", ("no deployment of '%s' takes %d tokens"):format(group_name, est))
    end
    start(call, d, holder, why)
    -- 2. the attempts in flight, under the deadline; a hedge when the first is slow
    local run = call.running
    while run[1] do
      local now = clock()
      local until_ = call.deadline
      for i = 1, #run do
        if run[i]._limit < until_ then until_ = run[i]._limit end
      end
      local hedge_at
      if h and call.hedged < h.max and run[2] == nil and self.hedges < h.budget * self.calls then
        local a = run[1]
        local after = h.after
        if after == "p95" then after = a._d.usage.nsamples >= 20 and percentile(a._d.usage, 0.95) or nil end
        if after then
          hedge_at = a._t0 + after
          if hedge_at < until_ then until_ = hedge_at end
        end
      end
      local a, ok, r1, r2, r3, r4
      if run[2] == nil then
        a = run[1]
        ok, r1, r2, r3, r4 = a._task:join(until_ > now and until_ - now or 0)
      else
        a, ok, r1, r2, r3, r4 = wait_any(call, until_ > now and until_ - now or 0)
      end
      if ok ~= nil then
        if run[2] == nil then run[1] = nil else drop(call, a) end
        local value, second, msg, kind, detail, class, ra
        -- the hooks (classify, usage) run with the attempt out of `run`: one that raises
        -- records it (its slot back) before the error goes on
        local hook_ok, herr = true, nil
        if ok and (r1 ~= nil or r2 == nil) then  -- returned a value: a success unless classify says not
          value, second = r1, r2
          if type(value) == "table" or self.classify ~= router.classify then
            hook_ok, class, ra = pcall(self.classify, value, nil, nil, nil)
            if hook_ok and class then msg = value_message(value) end
          end
        else
          value, second, msg, kind, detail = outcome(ok, r1, r2, r3, r4)
          hook_ok, class, ra = pcall(self.classify, value, msg, kind, detail)
        end
        if not hook_ok then herr = class end
        ra = sane_ra(ra)
        local tin, tout
        if hook_ok and class == nil and (second ~= nil or a._d.usage_of or type(value) == "table") then
          hook_ok, tin, tout = pcall(tokens, a._d, value, second)
          if not hook_ok then herr = tin end
        end
        if not hook_ok then
          record(self, a, "error", "fail", tostring(herr))
          abort_running(self, call, nil, "aborted", "aborted: a hook raised")
          error(herr, 0)
        end
        if class == nil then
          record(self, a, nil, "ok", nil, nil, tin, tout)
          if run[1] then abort_running(self, call, nil, "aborted", "aborted: another attempt won") end
          return value, call.ledger
        end
        local n, fmsg, fkind, fdetail = after_failure(self, call, a, class, ra, msg)
        if n == nil and fmsg then return n, fmsg, fkind, fdetail end
      else  -- a deadline, an attempt's own timeout, or the hedge's moment
        now = clock()
        if now >= call.deadline - 0.5 then
          abort_running(self, call, "timeout", "fail", "aborted: the deadline passed")
          return fail(call, "timeout", ("the deadline of %.15g ms passed (%d attempts)"):format(timeout, #call.ledger))
        end
        local cut = false
        for i = #run, 1, -1 do
          local at = run[i]
          if at._limit <= now + 0.5 then
            remove(run, i)
            at._task:abort()
            at._task:join()
            local n, fmsg, fkind, fdetail = after_failure(self, call, at, "timeout", nil,
                                                          ("'%s' timed out"):format(at.deployment))
            if n == nil and fmsg then return n, fmsg, fkind, fdetail end
            cut = true
          end
        end
        if not cut and hedge_at and now >= hedge_at - 0.5 then
          call.hedged = call.hedged + 1
          local stage, in_stage = call.stage, call.in_stage
          local hd, hholder = pick(self, call)  -- the next candidate admissible now, if any: never waits
          if hd then
            self.hedges = self.hedges + 1
            start(call, hd, hholder, "hedge")
          else
            call.stage, call.in_stage = stage, in_stage
          end
        end
      end
    end
  end
end

-- Over a store, a store operation that fails ends the call with its failure: the store's
-- kind (io, timeout, ...) and message, detail { class = "store", ledger, detail }.
local function store_failure(ledger, ok, ...)
  if ok then return ... end
  local e = ...
  if type(e) == "table" and e.from_store then
    return nil, ("%s: the store failed: %s"):format(CALL, tostring(e.message)), e.kind,
           { class = "store", ledger = ledger, detail = e.detail }
  end
  error(e, 0)
end

function Router:call(group_name, req, opts)
  if getmetatable(self) ~= Router then misuse(2, CALL, 0, "self", "baton.Router", self) end
  if type(group_name) ~= "string" or not self.groups[group_name] then
    misuse(2, CALL, 1, "group", "a group of this router", group_name)
  end
  local est, timeout = 0, self.timeout_ms
  if opts ~= nil then
    if type(opts) ~= "table" then misuse(2, CALL, 3, "opts", "table", opts) end
    unknown(2, CALL, 3, opts, CALL_KEYS)
    if opts.estimate_tokens ~= nil then
      est = type(opts.estimate_tokens) == "number" and math.tointeger(opts.estimate_tokens)
      if not est or est < 0 then misuse(2, CALL, 3, "estimate_tokens", "integer >= 0", opts.estimate_tokens) end
    end
    if opts.timeout_ms ~= nil then
      timeout = opts.timeout_ms
      check_ms(CALL, 3, "timeout_ms", timeout)
    end
  end
  if not self.state.store then return do_call(self, nil, group_name, req, est, timeout) end
  local ledger = {}
  return store_failure(ledger, pcall(do_call, self, ledger, group_name, req, est, timeout))
end

function Router:usage()
  if getmetatable(self) ~= Router then misuse(2, "baton.router:usage", 0, "self", "baton.Router", self) end
  local out = {}
  for _, d in ipairs(self.order) do
    local u = d.usage
    local errors, nerr = {}, 0
    for c, n in pairs(u.errors) do
      errors[c] = n
      nerr = nerr + n
    end
    out[d.name] = {
      model = d.model, attempts = u.attempts, ok = u.ok, failed = nerr, aborted = u.aborted, errors = errors,
      tokens_in = u.tokens_in, tokens_out = u.tokens_out, cost = u.cost,
      p50_ms = percentile(u, 0.5), p95_ms = percentile(u, 0.95), p99_ms = percentile(u, 0.99),
      cooldown_ms = u.cooldown_ms, in_flight = d.inflight,
    }
  end
  return out
end

function Router:__tostring()
  return ("baton.Router (%d deployments, %d calls, %d queued)"):format(#self.order, self.calls, #self.waiters)
end

return router
