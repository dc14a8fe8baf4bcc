-- Lifetimes of baton's objects. An object can outlive its own finalization: its __gc called
-- by hand (getmetatable(x).__gc(x)), or — what real programs hit — a method called from the
-- finalizer of an older object, which the collector runs after the younger object's own
-- finalizer, in the same cycle. Every method of every type must then raise a clean "used
-- after it was closed" error, or do something harmless and documented (release, close,
-- closed(), held(), ...), and nothing may touch freed memory: the sanitizer build runs this
-- file too. Methods are found by walking each metatable's method table, so a method added
-- later is covered (and must be classified) without touching this file's loops.
local baton = require "baton"
local H = require "spec.helper"

local CLOSED = "used after it was closed"

local server = H.http_server()  -- spec/fixtures/http/server.py
local url = function(path) return server:url(path) end

-- Warnings (a permit collected while held, ...) are expected here: keep them, and let a
-- spec look at those it caused.
local warnings = {}
baton.on_warning(function(msg) warnings[#warnings + 1] = msg end)
local function quiet(fn)
  return function(...)
    warnings = {}
    return fn(...)
  end
end

local function limiter() return baton.limiter { models = { ["p/m"] = 2 } } end
local function dispatcher() return "body" end

-- Each type: make() -> an object of it (inside a task). `harmless` lists the methods that
-- stay usable once it is finalized (documented as such); every other method must raise
-- `closed` (CLOSED unless given). `args` gives the arguments a method is called with.
local types = {
  { name = "baton.Task",
    make = function()  -- a failed task: the kind that has a __gc
      local t = baton.spawn(function() error("boom") end)
      t:join()
      return t
    end,
    harmless = { join = true, abort = true, status = true, results = true, name = true,
                 set_name = true, traceback = true },
    args = { join = { 0 }, set_name = { "x" } } },
  { name = "baton.Group", make = function() return baton.group() end,
    harmless = { close = true, live = true } },
  { name = "baton.Semaphore", make = function() return baton.semaphore(2) end,
    harmless = { close = true, closed = true } },
  { name = "baton.Permit", make = function() return baton.semaphore(2):try_acquire() end,
    harmless = { release = true, held = true } },
  { name = "baton.Permit", what = "(of a budget)",
    make = function() return baton.budget():try_acquire("k") end,
    harmless = { release = true, held = true } },
  { name = "baton.Budget", make = function() return baton.budget() end, harmless = {} },
  { name = "baton.Process", closed = "the process is closed",
    make = function() return assert(baton.process.spawn { "cat", stdin = true }) end,
    harmless = { pid = true, close = true } },
  { name = "baton.Future", make = function() return baton.future() end, harmless = {} },
  { name = "baton.Engine",
    make = function()
      return baton.engine { max_parallel = 2, timeout_ms = 10, dispatcher = dispatcher }
    end,
    harmless = { shutdown = true, close = true, pending = true, stats = true } },
  { name = "baton.Limiter", make = limiter, harmless = {} },
  { name = "baton.Limiter.Permit", make = function() return limiter():acquire("p/m").permit end,
    harmless = { release = true, held = true } },
  { name = "baton.Limiter.Grant", make = function() return limiter():acquire("p/m") end,
    harmless = { release = true } },
  { name = "baton.Retry", make = function() return baton.retry { max_attempts = 1, base_ms = 1 } end,
    harmless = { call = true, delay_for = true },
    args = { call = { function() return 1 end }, delay_for = { 1 } } },
  { name = "baton.Breaker",
    make = function() return baton.breaker { service = "s", threshold = 1, recovery_ms = 10 } end,
    harmless = { call = true, state = true, failures = true },
    args = { call = { function() return 1 end } } },
  { name = "baton.BreakerBackend", make = function() return baton.breaker_backend() end,
    harmless = {} },
  { name = "baton.Dedup", make = function() return baton.dedup { ttl_ms = 10 } end,
    harmless = {} },
  { name = "baton.Backpressure", make = function() return baton.backpressure { capacity = 2 } end,
    harmless = { try_acquire = true, depth = true, capacity = true, soft = true,
                 soft_ratio = true } },
  { name = "baton.Backpressure.Permit",
    make = function() return baton.backpressure { capacity = 2 }:try_acquire() end,
    harmless = { release = true, held = true } },
  { name = "baton.Pipeline", make = function() return baton.pipeline():stage("a", tostring) end,
    harmless = {} },
  { name = "baton.Runner", closed = "the runner is stopped",  -- a closed runner is a stopped one
    make = function() return baton.runner { handler = function() return "idle" end } end,
    harmless = { poke = true, poke_session = true, complete_session = true, stop = true,
                 status = true, inflight = true, pending = true },
    args = { poke = { "why" }, poke_session = { "s1", "why" }, complete_session = { "s1", "why" } } },
  { name = "baton.HttpStream", closed = "the stream is closed", http = true,
    make = function() return assert(baton.http.stream { url = url("/sse?n=50&ms=20") }) end,
    harmless = { buffered = true, close = true } },
}

local function methods_of(obj)
  local mt = getmetatable(obj)
  local names = {}
  for name in pairs(mt.__methods) do names[#names + 1] = name end
  table.sort(names)
  assert(#names > 0, "no methods found")
  return names
end

-- Calls every method of obj (finalized); checks each raised `closed` unless harmless.
local function call_all(T, obj, results)
  for _, name in ipairs(methods_of(obj)) do
    local fn = getmetatable(obj).__methods[name]
    local r = table.pack(pcall(fn, obj, table.unpack((T.args or {})[name] or {})))
    if results then results[name] = r end
    if not T.harmless[name] then
      assert(not r[1], ("%s:%s did not raise once finalized"):format(T.name, name))
      assert(tostring(r[2]):find(T.closed or CLOSED, 1, true),
             ("%s:%s raised %q"):format(T.name, name, tostring(r[2])))
    end
  end
end

local function finalize(obj)
  local mt = getmetatable(obj)
  if mt.__gc then mt.__gc(obj); mt.__gc(obj) end  -- twice: a finalizer is idempotent
  if mt.__close then mt.__close(obj, nil) end
end

local function each_type(http, body)
  for _, T in ipairs(types) do
    if (T.http or false) == http then
      it(T.name .. (T.what and " " .. T.what or ""), H.async(quiet(function() body(T) end)))
    end
  end
end

local function suite(http)
  describe("methods of an object whose __gc and __close were called by hand", function()
    each_type(http, function(T)
      local obj = T.make()
      finalize(obj)
      call_all(T, obj)
      assert.is_string(tostring(obj))
      if getmetatable(obj).__len then assert.equal(0, #obj) end
      finalize(obj)  -- and once more after use
    end)
  end)

  describe("methods called from another object's finalizer", function()
    each_type(http, function(T)
      local results, raised = {}, nil
      -- h is older than the object, so the collector finalizes the object first, then runs
      -- h's finalizer, which uses it. Made in a call of its own: no register keeps them.
      local function setup()
        local h = setmetatable({}, { __gc = function(self)
          local ok, err = pcall(call_all, T, self.obj, results)
          if not ok then raised = err end
        end })
        h.obj = T.make()
      end
      setup()
      collectgarbage()
      collectgarbage()
      assert.is_nil(raised)
      assert.is_not_nil(next(results), "the finalizer did not run")
    end)
  end)
end

describe("lifetimes:", function()
  suite(false)

  it("a budget used from a finalizer raises instead of crashing (the crash reported)",
     function()
    local err
    local function setup()
      local h = setmetatable({}, { __gc = function(s)
        err = select(2, pcall(function() s.b:try_acquire("k") end))
      end })
      h.b = baton.budget()
    end
    setup()
    collectgarbage()
    collectgarbage()
    assert.matches("baton.budget:try_acquire: " .. CLOSED, err, 1, true)
  end)

  describe("a permit released after what it returns to was finalized", function()
    it("semaphore", H.async(function()
      local s = baton.semaphore(2)
      local p <close> = s:try_acquire()
      getmetatable(s).__gc(s)
      assert.is_true(s:closed())
      H.raises("baton.semaphore:available: " .. CLOSED, function() return s:available() end)
      p:release()
      assert.is_false(p:held())
      p:release()
    end))

    it("budget", H.async(function()
      local b = baton.budget { cap = 2 }
      local p1, p2 = b:try_acquire("host"), b:try_acquire("host")
      getmetatable(b).__gc(b)
      H.raises(CLOSED, b.count, b, "host")
      assert.matches("host", tostring(p1))
      p1:release()
      p2:release()
      assert.is_false(p2:held())
    end))

    it("limiter", H.async(function()
      local l = limiter()
      local g = l:acquire("p/m")
      getmetatable(l).__gc(l)
      H.raises("baton.limiter:snapshot: " .. CLOSED, function() return l:snapshot() end)
      g:release()
      assert.is_false(g.permit:held())
    end))

    it("semaphore of bounded tasks still running", H.async(function()
      local s = baton.semaphore(1)
      local g = baton.group()
      for _ = 1, 3 do g:spawn_bounded(s, baton.sleep, 5) end
      baton.yield()
      getmetatable(s).__gc(s)  -- fails the queued tasks; the running one gives back later
      local tasks = g:join_all()
      assert.equal(3, #tasks)
      H.raises_misuse("baton.group:spawn_bounded", 1, "sem", "expected an open semaphore",
                      g.spawn_bounded, g, s, print)
    end))

    it("budget shared with an engine", H.async(function()
      local b = baton.budget()
      local e <close> = baton.engine { max_parallel = 2, timeout_ms = 200, budget = b,
                                       dispatcher = function() baton.sleep(5) return 1 end }
      e:dispatch { { tool = "t", host = "h" } }
      getmetatable(b).__gc(b)
      e:dispatch { { tool = "t", host = "h" } }
      assert.same({ h = 2 }, e:budget_snapshot())
      assert.equal(2, #e:wait_within())
      assert.same({}, e:budget_snapshot())
      H.raises(CLOSED, baton.engine, { max_parallel = 1, timeout_ms = 1, budget = b,
                                        dispatcher = dispatcher })
    end))
  end)

  -- lbt_check_handle remembers the last group, semaphore and channel it found open, and
  -- takes that object again at a pointer comparison: closing or finalizing one must make it
  -- forget it, and the next call check it in full.
  describe("an object used, then finalized by hand, then used again raises", function()
    local cases = {
      { "group", function() return baton.group() end,
        function(g) return #g:join_all() end, "baton.group:join_all: " },
      { "semaphore", function() return baton.semaphore(1) end,
        function(s) return s:available() end, "baton.semaphore:available: " },
      { "channel", function() return baton.channel(1) end,
        function(c) return c:capacity() end, "baton.channel:capacity: " },
    }
    for _, c in ipairs(cases) do
      local name, make, use, fname = c[1], c[2], c[3], c[4]
      it(name, H.async(function()
        local a, b = make(), make()
        use(a); use(b); use(a)  -- a is the one remembered
        getmetatable(a).__gc(a)
        H.raises(fname .. CLOSED, use, a)
        use(b)
        getmetatable(b).__gc(b)
        H.raises(fname .. CLOSED, use, b)
        for _ = 1, 200 do  -- made, used and collected: addresses are reused
          local x = make()
          use(x)
          x = nil  -- luacheck: ignore 311
          collectgarbage()
        end
        assert.is_number(use(make()))
      end))
    end
    it("group closed by close()", H.async(function()
      local g = baton.group()
      g:spawn(baton.yield)
      g:join_all()
      g:close()
      H.raises("baton.group:spawn: " .. CLOSED, g.spawn, g, print)
    end))
  end)

  describe("a wait on an object finalized meanwhile ends", function()
    it("semaphore:acquire returns nil, message, \"closed\"", H.async(function()
      local s = baton.semaphore(1)
      local p = s:acquire()
      local t = baton.spawn(function() return s:acquire() end)
      baton.yield()
      getmetatable(s).__gc(s)
      assert.same({ true, nil, "baton.semaphore:acquire: the semaphore was closed while waiting",
                    "closed" }, { t:join() })
      p:release()
    end))

    it("future:wait returns nil, message, \"closed\"", H.async(function()
      local f = baton.future()
      local t = baton.spawn(function() return f:wait() end)
      baton.yield()
      assert.equal(1, f:waiting())
      getmetatable(f).__gc(f)
      assert.same({ true, nil, "baton.future:wait: the future was finalized while waiting",
                    "closed" }, { t:join(1000) })
    end))

    it("limiter:acquire returns nil, message, \"closed\"", H.async(function()
      local l = baton.limiter { models = { ["p/m"] = 1 } }
      local g = l:acquire("p/m")
      local t = baton.spawn(function() return l:acquire("p/m", { wait = true }) end)
      baton.yield()
      getmetatable(l).__gc(l)
      assert.same({ true, nil, "baton.limiter:acquire: the limiter was finalized while waiting",
                    "closed" }, { t:join() })
      g:release()
    end))

    it("group:join_next returns nil, message, \"closed\"", H.async(function()
      local g = baton.group()
      g:spawn(baton.sleep, 1000)
      local t = baton.spawn(function() return g:join_next() end)
      baton.yield()
      getmetatable(g).__gc(g)
      assert.same({ true, nil, "baton.group:join_next: the group was closed while waiting",
                    "closed" }, { t:join() })
    end))
  end)

  it("a breaker whose backend was finalized raises, naming the backend", H.async(function()
    local mem = baton.breaker_backend()
    local b = baton.breaker { service = "s", threshold = 1, recovery_ms = 10, backend = mem }
    assert.equal("closed", b:state())
    getmetatable(mem).__gc(mem)
    H.raises("baton.breaker:state: baton.breaker_backend " .. CLOSED, b.state, b)
    H.raises("baton.breaker:call: baton.breaker_backend " .. CLOSED, b.call, b,
             function() return 1 end)
    H.raises("baton.breaker:failures: baton.breaker_backend " .. CLOSED, b.failures, b)
    H.raises(CLOSED, baton.breaker, { service = "s", threshold = 1, recovery_ms = 1,
                                     backend = mem })
  end))

  it("a breaker's call cursor closed by hand is idempotent", H.async(function()
    local b = baton.breaker { service = "s", threshold = 1, recovery_ms = 10 }
    local cursor
    assert.equal(1, b:call(function()
      local _, v = debug.getlocal(2, 2)  -- b:call's C frame: 1 breaker, 2 the cursor
      cursor = v
      local mt = getmetatable(v)
      mt.__gc(v)
      mt.__close(v)
      return 1
    end))
    assert.equal("baton.Breaker.Call", getmetatable(cursor).__name)
    assert.equal("closed", b:state())
  end))

  it("a dedup waiter closed by hand leaves the flight once", H.async(function()
    local d = baton.dedup { ttl_ms = 1000 }
    local co
    local t = baton.spawn(function()
      co = coroutine.running()
      return d:run("k", baton.sleep, 1000)
    end)
    baton.yield()
    local _, w = debug.getlocal(co, 0, 4)  -- dedup:run's stack: dedup, key, execution, waiter
    assert.equal("baton.Dedup.Waiter", getmetatable(w).__name)
    getmetatable(w).__close(w)  -- the last waiter left: the execution is aborted
    getmetatable(w).__close(w)
    t:abort()
    t:join()
    assert.equal("cancelled", t:status())
    assert.equal("new", d:check("k"))
  end))

  it("a pipeline finalized by one of its stages fails the run cleanly", H.async(function()
    local p = baton.pipeline()
    p:stage("a", function(v) getmetatable(p).__gc(p) return v end)
    p:stage("b", function() return nil, "no" end)
    H.raises("baton.pipeline:run: " .. CLOSED, p.run, p, 1)
    assert.equal(0, #p)
  end))

  it("methods and metamethods refuse a value of another type (a table given the metatable "
     .. "too), and never crash", H.async(function()
    local reg = debug.getregistry()
    local names = {}
    for _, T in ipairs(types) do names[T.name] = true end
    for _, extra in ipairs { "baton.Task.failed", "baton.Breaker.Call", "baton.Dedup.Waiter",
                             "baton.HttpTransfer", "baton.json.Scratch" } do
      names[extra] = true
    end
    local other = baton.future()
    for name in pairs(names) do
      local mt = assert(reg[name], name)
      local impostor = name ~= "baton.Limiter.Grant" and setmetatable({}, mt) or nil
      for _, bad in ipairs { {}, other, 42, impostor or {} } do
        if not (bad == other and name == "baton.Future") then
          local fns = {}
          for _, mm in ipairs { "__gc", "__close", "__tostring", "__len", "__index" } do
            if type(rawget(mt, mm)) == "function" then fns[mm] = rawget(mt, mm) end
          end
          for m, f in pairs(rawget(mt, "__methods") or {}) do fns[m] = f end
          for m, f in pairs(fns) do
            local ok, err = pcall(f, bad, "x")
            assert(not ok, ("%s.%s accepted a %s"):format(name, m, type(bad)))
            assert.matches("expected", tostring(err))
          end
        end
      end
    end
  end))

  it("a failed task nobody joined is reported once, when collected", H.async(quiet(function()
    local t = baton.spawn(function() error("boom") end)
    baton.yield()
    assert.is_nil(getmetatable(t).__gc)  -- its sentinel carries the finalizer (ltask.c)
    t = nil  -- luacheck: ignore 311
    for _ = 1, 3 do collectgarbage() end
    assert.equal(1, #warnings)
    assert.matches("nobody joined it", warnings[1])
  end)))

  it("a failed task joined before it is collected is not reported", H.async(quiet(function()
    local t = baton.spawn(function() error("boom") end)
    baton.yield()
    assert.is_false((t:join()))
    t = nil  -- luacheck: ignore 311
    for _ = 1, 3 do collectgarbage() end
    assert.equal(0, #warnings)
  end)))
end)

describe("lifetimes over HTTP:", function()
  lazy_setup(function() server:start() end)
  lazy_teardown(function() server:stop() end)

  suite(true)

  it("a request whose transfer is finalized by hand returns \"closed\"", H.async(function()
    local co
    local t = baton.spawn(function()
      co = coroutine.running()
      return baton.http.request { url = url("/delay?ms=2000") }
    end)
    baton.sleep(20)
    local _, x = debug.getlocal(co, 0, 2)  -- the request's stack: options, the transfer
    assert.equal("baton.HttpTransfer", getmetatable(x).__name)
    getmetatable(x).__gc(x)
    local ok, res, msg, kind = t:join(1000)
    assert.is_true(ok)
    assert.is_nil(res)
    assert.equal("closed", kind, msg)
    assert.equal(0, baton.stats().transfers)
  end))
end)

describe("lifetimes: the state closing", function()
  it("a finalizer that runs after the runtime's own and calls baton gets an error, not freed memory",
     function()
    -- an object given __gc before baton is loaded is finalized after the runtime (lua_close
    -- finalizes in the reverse order)
    local script = H.write_temp([=[
      local b
      setmetatable(_G, { __gc = function()
        for _, call in ipairs {
          { "stats" }, { "now" }, { "spawn", function() end }, { "run", function() end },
          { "sleep", 1 }, { "group" }, { "tasks" },
        } do
          local ok, err = pcall(b[call[1]], call[2])
          io.stdout:write(call[1], " ", tostring(ok), " ", tostring(err), "\n")
        end
      end })
      b = require "baton"
    ]=])
    local p = assert(io.popen(("env LUA_CPATH=%s %s %s 2>&1; echo rc=$?")
      :format(H.q(H.BUILD .. "/?.so;;"), H.q(H.LUA), H.q(script))))
    local out = p:read("a")
    p:close()
    os.remove(script)
    assert.matches("rc=0\n$", out)
    for _, name in ipairs { "stats", "now", "spawn", "run", "sleep", "group", "tasks" } do
      assert.matches(name .. " false baton: the runtime is closed %(the Lua state is closing%)\n", out)
    end
  end)
end)
