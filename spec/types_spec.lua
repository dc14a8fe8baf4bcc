-- The LuaCATS annotations in types/ cover the whole API: every function reachable from the
-- live `baton` table (recursively, the lazily loaded baton.router and baton.store included),
-- from require "baton.mcp" and "baton.pretty", every method of every object kind (the C
-- classes' metatables in the registry, all of them, and the Lua classes by an object of
-- each: Interval, Store, Dedup, RateLimit, Router, mcp.Client, the MCP token stores, and,
-- against a private redis-server, RedisQueue, QueueRunner, RedisDelivery and RedisStore),
-- and every callable table. A function added without a `function ...(` declaration in
-- types/ fails here. Names starting with "_" are internal and not checked.
local baton = require "baton"
local H = require "spec.helper"

local TYPES = H.SRC .. "/types"

-- The annotation files: `function a.b.c(` declares "a.b.c"; `function Var:m(` declares
-- "<class>:m" where `---@class <class>` stands right before `local Var = {}`; a table
-- assigned right after an `---@overload fun(` comment block is declared callable.
local function parse_types()
  local declared, callable, files = {}, {}, {}
  local p = assert(io.popen(("find %s -name '*.lua' | sort"):format(H.q(TYPES))))
  for f in p:lines() do files[#files + 1] = f end
  p:close()
  assert.is_true(#files >= 2, "no annotation files under " .. TYPES)
  for _, file in ipairs(files) do
    local class, overload, vars = nil, false, {}
    for line in io.lines(file) do
      local c = line:match("^%-%-%-@class%s+([%w_.]+)")
      if c then class = c end
      if line:match("^%-%-%-@overload%s+fun%(") then overload = true end
      local var = line:match("^local%s+([%w_]+)%s*=%s*{}") or line:match("^([%w_.]+)%s*=%s*{}")
      if var then
        if class then vars[var] = class end
        if overload then callable[var] = true end
      end
      local obj, m = line:match("^function%s+([%w_.]+):([%w_]+)%(")
      if obj then declared[(vars[obj] or obj) .. ":" .. m] = true end
      local fn = line:match("^function%s+([%w_.]+)%(")
      if fn then declared[fn] = true end
      if not line:match("^%-%-%-") then class, overload = nil, false end
    end
  end
  return declared, callable
end

-- A live object of each Redis class written in Lua: a queue, the runner on it, a delivery
-- (the one the runner hands its handler) and a Redis store, made against the private
-- redis-server (spec/helper.lua) | {} when redis-server is not installed.
local server, why = H.redis_server()
if not server then H.loud("types_spec", why .. " (the Redis classes are not walked)") end

local function redis_objects()
  if not server then return {} end
  local out = {}
  local ok, err = pcall(baton.run, function()
    local r = assert(baton.redis.connect { url = server.url })
    local q = baton.redis.queue { redis = r, stream = "types_spec" }
    local got = baton.notify()
    local w = baton.runner { queue = q, handler = function(_, d)
      out["baton.RedisDelivery"] = d
      got:notify_all()
    end }
    assert(q:enqueue { n = 1 })
    w:start()
    if not out["baton.RedisDelivery"] then got:notified(5000) end
    assert(out["baton.RedisDelivery"], "the runner delivered no job in 5 s")
    w:stop()
    out["baton.RedisQueue"], out["baton.QueueRunner"] = q, w
    out["baton.RedisStore"] = baton.redis.store { redis = r }
    r:close()
  end)
  server:stop()
  if not ok then error(err, 0) end
  return out
end

-- What the annotations must cover, as the declarations name it.
local function live_api()
  local want, seen, wanted = {}, {}, {}
  local function methods(class, t)
    seen[t] = true
    for k, v in pairs(t) do
      local name = class .. ":" .. tostring(k)
      if type(k) == "string" and type(v) == "function" and not k:match("^_") and not wanted[name] then
        wanted[name] = true
        want[#want + 1] = name
      end
    end
  end
  -- C classes: every metatable lbt_new_class made (they are all made at require time).
  for name, mt in pairs(debug.getregistry()) do
    if type(name) == "string" and type(mt) == "table" and rawget(mt, "__name") == name
        and type(rawget(mt, "__methods")) == "table" then
      local class = name:gsub("%.failed$", ""):gsub("%.released$", "")
      class = "baton." .. class:sub(7):gsub("%.", "")  -- baton.Limiter.Permit -> baton.LimiterPermit
      methods(class, mt.__methods)
    end
  end
  -- Lua classes, by an object of each.
  local _, _ = baton.router.classes, baton.store.memory  -- load the lazy parts
  local s = baton.store.memory()
  local mcp = require "baton.mcp"
  local lua_objects = {
    ["baton.Interval"] = baton.interval(10),
    ["baton.Store"] = s,
    ["baton.Dedup"] = baton.dedup { ttl_ms = 1000, store = s },
    ["baton.RateLimit"] = baton.ratelimit { rate = 1, store = s, key = "k" },
    ["baton.Router"] = baton.router { deployments = { { name = "a", call = function() end } } },
  }
  for class, obj in pairs(lua_objects) do
    local index = getmetatable(obj).__index
    assert.equal("table", type(index), class)
    methods(class, index)
  end
  methods("baton.mcp.Client", mcp.Client)
  -- The MCP token stores (both kinds are a baton.mcp.TokenStore).
  local tmp = os.tmpname()
  methods("baton.mcp.TokenStore", getmetatable(mcp.memory_token_store()).__index)
  methods("baton.mcp.TokenStore", getmetatable(mcp.file_token_store(tmp)).__index)
  os.remove(tmp)
  -- The Redis classes written in Lua, by an object of each, made against this run's
  -- private redis-server (without one they are not walked, and the spec says so loudly).
  for class, obj in pairs(redis_objects()) do
    local index = getmetatable(obj).__index
    assert.equal("table", type(index), class)
    methods(class, index)
  end
  -- Modules, recursively; callable tables must be declared callable.
  local function walk(prefix, t)
    if seen[t] then return end
    seen[t] = true
    local mt = getmetatable(t)
    if mt and mt.__call then want[#want + 1] = prefix .. "()" end
    for k, v in pairs(t) do
      if type(k) == "string" and not k:match("^_") then
        if type(v) == "function" then want[#want + 1] = prefix .. "." .. k
        elseif type(v) == "table" then walk(prefix .. "." .. k, v) end
      end
    end
  end
  walk("baton", baton)
  walk("mcp", mcp)
  walk("pretty", require "baton.pretty")
  table.sort(want)
  return want
end

local function missing(want, declared, callable)
  local out = {}
  for _, name in ipairs(want) do
    local call = name:match("^(.-)%(%)$")
    if call then
      if not callable[call] then out[#out + 1] = name end
    elseif not declared[name] then
      out[#out + 1] = name
    end
  end
  return out
end

-- lua-language-server reads `fun(...): R|X` as a function returning R|X (LuaLS issue #560),
-- never as "a function or X": a function type with a return type directly followed by `|`
-- is ambiguous to the reader and is refused here. Write `(fun(...): R)|X` for a function or
-- X, and `fun(...): (R|X)` for a union of returns. Returns the offending `fun...|` texts.
local function fun_union_traps(line)
  local out, pos = {}, 1
  while true do
    local s, e = line:find("fun%s*%b()", pos)
    if not s then return out end
    local i = line:match("^%s*:%s*()", e + 1)
    while i do  -- the return list: `...` or a type (with <...>, [] and ?), comma-separated
      local j = line:match("^%.%.%.()", i) or line:match("^%b{}()", i) or line:match("^%b()()", i)
                or line:match("^[%w_.]+()", i)
      if not j then break end
      j = line:match("^%b<>()", j) or j
      j = line:match("^[%[%]?]*()", j)
      if line:match("^%s*|", j) then
        out[#out + 1] = line:sub(s, line:match("^%s*|()", j) - 1)
        break
      end
      i = line:match("^%s*,%s*()", j)
    end
    pos = s + 1
  end
end

describe("types/ (LuaCATS annotations)", function()
  local declared, callable = parse_types()
  local want = live_api()

  it("annotates every function, method and callable table of the live API", function()
    assert.is_true(#want > 200, "the walk found only " .. #want .. " functions")
    local gaps = missing(want, declared, callable)
    assert.are.same({}, gaps, "not annotated in types/:\n  " .. table.concat(gaps, "\n  "))
  end)

  it("sees the C methods, the lazy modules and the Lua classes (the walk is not vacuous)", function()
    local set = {}
    for _, n in ipairs(want) do set[n] = true end
    for _, n in ipairs { "baton.Task:join", "baton.Group:spawn", "baton.LimiterPermit:held",
                         "baton.HttpStream:read_event", "baton.router.classify", "baton.store.memory",
                         "baton.http.request", "baton.json.encode", "baton.coroutine.wrap",
                         "baton.Interval:tick", "baton.Store:claim", "baton.Router:call",
                         "mcp.connect", "baton.mcp.Client:call", "pretty.format", "baton.router()",
                         "baton.limiter()", "baton.limiter.from_json" } do
      assert.is_true(set[n], n .. " not found by the walk")
    end
    for _, n in ipairs { "baton.mcp.TokenStore:load", "baton.mcp.TokenStore:save" } do
      assert.is_true(set[n], n .. " not found by the walk")
    end
    if server then
      for _, n in ipairs { "baton.RedisQueue:enqueue", "baton.QueueRunner:start", "baton.RedisDelivery:ack",
                           "baton.RedisStore:claim", "baton.RedisStore:stats" } do
        assert.is_true(set[n], n .. " not found by the walk")
      end
    end
    -- A function nobody annotated is reported.
    local extra = { "baton.not_annotated_yet", "baton.Task:not_annotated_yet", "baton.json()" }
    assert.are.same(extra, missing(extra, declared, callable))
  end)

  it("writes no `fun(...): R|X` (a function or X must be `(fun(...): R)|X`)", function()
    local p = assert(io.popen(("find %s -name '*.lua' | sort"):format(H.q(TYPES))))
    local traps = {}
    for f in p:lines() do
      local n = 0
      for line in io.lines(f) do
        n = n + 1
        for _, t in ipairs(fun_union_traps(line)) do
          traps[#traps + 1] = ("%s:%d: %s"):format(f:sub(#TYPES + 2), n, t)
        end
      end
    end
    p:close()
    assert.are.same({}, traps, "ambiguous function types:\n  " .. table.concat(traps, "\n  "))
    -- the check itself: what it refuses and what it lets through
    assert.are.same({ "fun(...): ...|" }, fun_union_traps("---@param fn fun(...): ...|baton.SpawnOptions"))
    assert.are.same({ "fun(): string|" },
                    fun_union_traps("---@param f fun(a: fun(): string|nil)"))
    assert.are.same({ "fun(x): table<string, any>, integer?|" },
                    fun_union_traps("---@field f fun(x): table<string, any>, integer?|nil"))
    for _, ok in ipairs { "---@param fn (fun(...): ...)|baton.SpawnOptions",
                          "---@param fn fun(params: table?)|nil",
                          "---@param fn fun(): (string|nil)",
                          "---@field authorize? fun(url: string): string?, string? a code | nil, message" } do
      assert.are.same({}, fun_union_traps(ok), ok)
    end
  end)

  it("the annotation files are valid Lua", function()
    local p = assert(io.popen(("find %s -name '*.lua'"):format(H.q(TYPES))))
    for f in p:lines() do assert(loadfile(f)) end
    p:close()
  end)

  it("ships a .luarc.json pointing lua-language-server at types/", function()
    local rc = baton.json.decode(H.slurp(H.SRC .. "/.luarc.json"))
    local lib = rc["workspace.library"] or (rc.workspace or {}).library
    assert.is_table(lib)
    local found = false
    for _, dir in ipairs(lib) do if dir:match("types$") then found = true end end
    assert.is_true(found, "workspace.library does not name types")
  end)
end)
