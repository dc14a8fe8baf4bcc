-- The error convention (docs/errors.md), table-driven. Every failure docs/errors.md lists
-- for the core and I/O components is provoked for real (a closed port, a child that runs
-- too long, a server that cuts the body, descriptors exhausted under `ulimit -n`, ...) and
-- its shape checked: nil, a message starting with the function's name, a kind from the one
-- table, a detail table with the documented facts. Misuse rows check the raised form,
-- including that a typo'd option is named before a missing required one. The policy
-- components add their rows in spec/errors_policy_spec.lua with the same helpers
-- (H.failure_rows(it, "Policy components", rows, exempt), H.assert_failure,
-- H.raises_misuse, H.errors_doc in spec/helper.lua).
local baton = require "baton"
local H = require "spec.helper"

local http, process, json = baton.http, baton.process, baton.json

local server = {}
local function url(path) return ("http://127.0.0.1:%d%s"):format(server.port, path) end

-- The values after `true` of a task's join: what the task's function returned.
local function joined(t) return select(2, t:join()) end

-- fn(...) run in a task that is left waiting, then `act` (which closes what it waits on);
-- returns what fn returned.
local function closed_while_waiting(act, fn, ...)
  local t = baton.spawn(fn, ...)
  baton.yield()
  baton.yield()
  act()
  return joined(t)
end

-- One child process, run once, that exhausts its descriptors (`ulimit -n` and a hoard of
-- open files) and reports what spawn, run and the HTTP calls return then: { [fname] =
-- { n =, [1] = nil marker, [2] = message, [3] = kind, [4] = detail } }.
local starved
local function out_of_descriptors(fname)
  if not starved then
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local baton = require "baton"
      local base = arg[1]
      local out = {}
      local function keep(name, ...)
        local r = table.pack(...)
        out[name] = { n = r.n, first = r[1] == nil and baton.json.null or tostring(r[1]),
                      msg = r[2], kind = r[3], detail = r[4] }
      end
      baton.run(function()
        assert(not baton.http.request { url = "http://127.0.0.1:1/" })  -- the multi handle
        local hoard = {}
        while true do
          local h = io.open("/dev/null")
          if not h then break end
          hoard[#hoard + 1] = h
        end
        keep("baton.process.spawn", baton.process.spawn { "true" })
        keep("baton.process.run", baton.process.run { "true" })
        keep("baton.http.request", baton.http.request { url = base .. "/json", timeout_ms = 5000 })
        keep("baton.http.json", baton.http.json { url = base .. "/json", timeout_ms = 5000 })
        keep("baton.http.stream", baton.http.stream { url = base .. "/json", timeout_ms = 5000 })
        for _, h in ipairs(hoard) do h:close() end
      end)
      io.write(baton.json.encode(out))
    ]])
    f:close()
    local lua = os.getenv("BATON_LUA") or "lua5.4"
    local r = assert(process.run { "sh", "-c", 'ulimit -n 64 && exec "$0" "$@"', lua, script,
                                   url(""), timeout_ms = 60000 })
    os.remove(script)
    assert(r.code == 0, r.stderr)
    starved = json.decode(r.stdout)
  end
  local v = assert(starved[fname], fname)
  assert(v.first == json.null, fname .. " succeeded with descriptors exhausted")
  return nil, v.msg, v.kind, v.detail
end

-- A spawned process with a small write queue and a child that never reads, and a string
-- that does not fit: a write that waits.
local function blocked_writer()
  local p = process.spawn { "sleep", "5", max_write_queue_bytes = 16 }
  return p, string.rep("x", 1 << 20)  -- more than the pipe takes
end

local CORE = {
  { "baton.timeout", "timeout", function() return baton.timeout(10, baton.sleep, 5000) end,
    detail = { timeout_ms = 10 } },
  { "baton.task:join", "timeout", function()
      local t <close> = baton.spawn(baton.sleep, 5000)
      return t:join(10)
    end, detail = { timeout_ms = 10 } },
  { "baton.group:join_next", "timeout", function()
      local g <close> = baton.group()
      g:spawn(baton.sleep, 5000)
      return g:join_next(10)
    end, detail = { timeout_ms = 10 } },
  { "baton.group:join_next", "closed", function()
      local g = baton.group()
      g:spawn(baton.sleep, 5000)
      return closed_while_waiting(function() g:close() end, g.join_next, g)
    end },
  { "baton.group:wait_within", "closed", function()
      local g = baton.group()
      g:spawn(baton.sleep, 5000)
      g:spawn(function() end)
      return closed_while_waiting(function() g:close() end, g.wait_within, g, 5000)
    end, detail = function(d) assert.equal(1, #d.finished) end },
  { "baton.group:join_all", "closed", function()
      local g = baton.group()
      g:spawn(baton.sleep, 5000)
      return closed_while_waiting(function() g:close() end, g.join_all, g)
    end, detail = function(d) assert.same({}, d.finished) end },
  { "baton.semaphore:try_acquire", "busy", function()
      local s = baton.semaphore(1)
      local _ <close> = s:try_acquire()
      return s:try_acquire()
    end, detail = { available = 0, capacity = 1 } },
  { "baton.semaphore:acquire", "timeout", function()
      local s = baton.semaphore(1)
      local _ <close> = s:try_acquire()
      return s:acquire(1, 10)
    end, detail = { timeout_ms = 10 } },
  { "baton.semaphore:acquire", "closed", function()
      local s = baton.semaphore(1)
      local _ <close> = s:try_acquire()
      return closed_while_waiting(function() s:close() end, s.acquire, s)
    end },
  { "baton.budget:try_acquire", "busy", function()
      local b = baton.budget { cap = 1 }
      local _ <close> = b:try_acquire("host")
      return b:try_acquire("host")
    end, detail = { available = 0, capacity = 1 } },
  { "baton.future:wait", "timeout", function() return baton.future():wait(10) end,
    detail = { timeout_ms = 10 } },
  { "baton.future:wait", "closed", function()
      local f = baton.future()
      return closed_while_waiting(function() getmetatable(f).__gc(f) end, f.wait, f)
    end },
  { "baton.json.decode", "malformed", function() return json.decode('{"a": }') end,
    detail = { byte = 7 } },
  { "baton.json.decode", "malformed", function() return json.decode('"ok \255"') end,
    detail = { byte = 5 } },

  { "baton.channel:send", "timeout", function()
      local ch = baton.channel(0)
      return ch:send(1, 10)
    end, detail = { timeout_ms = 10 } },
  { "baton.channel:send", "closed", function()
      local ch = baton.channel(0)
      return closed_while_waiting(function() ch:close() end, ch.send, ch, 1)
    end },
  { "baton.channel:send_many", "timeout", function()
      local ch = baton.channel(1)
      ch:send(1)
      return ch:send_many({ 2, 3 }, 1, 2, 10)
    end, detail = { timeout_ms = 10 } },
  { "baton.channel:send_many", "closed", function()
      local ch = baton.channel(1)
      ch:send(1)
      return closed_while_waiting(function() ch:close() end, ch.send_many, ch, { 2, 3 })
    end },
  { "baton.channel:recv", "timeout", function() return baton.channel(1):recv(10) end,
    detail = { timeout_ms = 10 } },
  { "baton.channel:recv", "closed", function()
      local ch = baton.channel(1)
      return closed_while_waiting(function() ch:close() end, ch.recv, ch)
    end },
  { "baton.channel:recv_many", "timeout", function()
      return baton.channel(1):recv_many(nil, 4, 10)
    end, detail = { timeout_ms = 10 } },
  { "baton.channel:recv_many", "closed", function()
      local ch = baton.channel(1)
      return closed_while_waiting(function() ch:close() end, ch.recv_many, ch, {}, 4)
    end },
  { "baton.channel:try_send", "busy", function()
      local ch = baton.channel(1)
      ch:send(1)
      return ch:try_send(2)
    end, detail = { len = 1, capacity = 1 } },
  { "baton.channel:try_send", "closed", function()
      local ch = baton.channel(1)
      ch:close()
      return ch:try_send(1)
    end },
  { "baton.channel:try_recv", "busy", function() return baton.channel(1):try_recv() end,
    detail = { len = 0, capacity = 1 } },
  { "baton.channel:try_recv", "closed", function()
      local ch = baton.channel(1)
      ch:close()
      return ch:try_recv()
    end },
  { "baton.watch:send", "closed", function()
      local w = baton.watch(1)
      w:close()
      return w:send(2)
    end },
  { "baton.watch:changed", "timeout", function() return baton.watch(1):changed(10) end,
    detail = { timeout_ms = 10 } },
  { "baton.watch:changed", "closed", function()
      local w = baton.watch(1)
      return closed_while_waiting(function() w:close() end, w.changed, w)
    end },
  { "baton.notify:notified", "timeout", function() return baton.notify():notified(10) end,
    detail = { timeout_ms = 10 } },
  { "baton.select", "timeout", function()
      return baton.select { baton.channel(1), baton.notify(), timeout_ms = 10 }
    end, detail = { timeout_ms = 10 } },
  { "baton.first_ok", "error", function()
      return baton.first_ok(function() error("down") end, function() return nil, "no" end)
    end, detail = function(d) assert.equal(2, #d.errors) end },
  { "baton.hedge", "error", function()
      return baton.hedge(function() error("down") end, { after_ms = 5 })
    end, detail = function(d) assert.equal(2, #d.errors) end },

  { "baton.trace.start", "io", function()
      return baton.trace.start("/nonexistent-baton-errors-spec/trace.json")
    end },
  { "baton.trace.stop", "io", function()
      assert(baton.trace.start("/dev/full"))
      baton.trace.instant("fills the buffer")
      return baton.trace.stop()
    end },

  { "baton.process.run", "io", function()
      return process.run { "/nonexistent/baton-errors-spec", cwd = "/" }
    end, detail = { argv0 = "/nonexistent/baton-errors-spec", cwd = "/", errno = "ENOENT" } },
  { "baton.process.run", "timeout", function()
      return process.run { "sleep", "5", timeout_ms = 20 }
    end, detail = { argv0 = "sleep", timeout_ms = 20 } },
  { "baton.process.run", "too_large", function()
      return process.run { "sh", "-c", "head -c 5000 /dev/zero", max_output_bytes = 100 }
    end, detail = { limit = 100, stream = "stdout" } },
  { "baton.process.run", "resource", function() return out_of_descriptors("baton.process.run") end,
    detail = { argv0 = "true", errno = "EMFILE" } },
  { "baton.process.spawn", "io", function()
      return process.spawn { "/nonexistent/baton-errors-spec" }
    end, detail = { argv0 = "/nonexistent/baton-errors-spec", errno = "ENOENT" } },
  { "baton.process.spawn", "resource", function()
      return out_of_descriptors("baton.process.spawn")
    end, detail = { argv0 = "true", errno = "EMFILE" } },
  { "baton.process:read_line", "too_large", function()
      local p <close> = process.spawn { "sh", "-c", "head -c 5000 /dev/zero; sleep 5",
                                        max_line_bytes = 100 }
      return p:read_line(5000)
    end, detail = { limit = 100 } },
  { "baton.process:write", "io", function()
      local p <close> = process.spawn { "cat" }
      p:close_stdin()
      return p:write("late")
    end, detail = function(d) assert.is_number(d.pid) end },
  { "baton.process:write", "timeout", function()
      local p <close>, s = blocked_writer()
      return p:write(s, 20)
    end, detail = { timeout_ms = 20 } },
  { "baton.process:write", "closed", function()
      local p, s = blocked_writer()
      return closed_while_waiting(function() p:close() end, p.write, p, s)
    end, detail = function(d) assert.is_number(d.pid) end },

  { "baton.http.json", "malformed", function()
      return http.json { url = url("/notjson") }
    end, detail = function(d) assert.equal(500, d.status) end },
}

-- A read method of a spawned process: timeout and closed while waiting.
for _, m in ipairs { "read_line", "read", "wait" } do
  local fname = "baton.process:" .. m
  CORE[#CORE + 1] = { fname, "timeout", function()
    local p <close> = process.spawn { "sleep", "5" }
    return p[m](p, 10)
  end, detail = { timeout_ms = 10 } }
  CORE[#CORE + 1] = { fname, "closed", function()
    local p = process.spawn { "sleep", "5" }
    return closed_while_waiting(function() p:close() end, p[m], p)
  end, detail = function(d) assert.is_number(d.pid) end }
end

-- The failures of a transfer, for the three ways to make one; every one has { url = }.
local TRANSFER = {
  { "connect", function() return "http://127.0.0.1:1/" end },
  { "timeout", function() return url("/delay?ms=3000"), { timeout_ms = 20 } end,
    { timeout_ms = 20 } },
  { "tls", function() return ("https://127.0.0.1:%d/json"):format(server.port) end },
  { "protocol", function() return url("/garbage") end },
  { "io", function() return url("/reset") end },
  { "too_large", function() return url("/bigheaders?n=40"), { max_header_bytes = 16384 } end },
}
for _, f in ipairs { "request", "json", "stream" } do
  local fname = "baton.http." .. f
  for _, case in ipairs(TRANSFER) do
    local kind, target, more = case[1], case[2], case[3]
    CORE[#CORE + 1] = { fname, kind, function()
      local u, extra = target()
      local opts = { url = u }
      for k, v in pairs(extra or {}) do opts[k] = v end
      return http[f](opts)
    end, detail = function(d)
      assert.is_string(d.url)
      for k, v in pairs(more or {}) do assert.equal(v, d[k]) end
    end }
  end
  CORE[#CORE + 1] = { fname, "resource", function() return out_of_descriptors(fname) end,
                      detail = function(d) assert.is_string(d.url) end }
end

-- The reads of a stream: a body cut short, over max_body_bytes, a silent server, a stream
-- closed by another task.
for _, m in ipairs { "read", "read_line", "read_event" } do
  local fname = "baton.http.stream:" .. m
  -- one piece (a line, an event) now, the next in 3 s
  local slow = m == "read_event" and "/sse?n=2&ms=3000" or "/trickle?ms=3000&n=3"
  local function drain(s)
    while true do
      local v, err, kind, detail = s[m](s, 5000)
      if v == nil then return v, err, kind, detail end
    end
  end
  CORE[#CORE + 1] = { fname, "io", function()
    local s <close> = assert(http.stream { url = url("/cut") })
    return drain(s)
  end, detail = function(d) assert.is_string(d.url) end }
  CORE[#CORE + 1] = { fname, "too_large", function()
    local s <close> = assert(http.stream { url = url("/chunked?bytes=3000000"),
                                           max_body_bytes = 100000 })
    return drain(s)
  end, detail = function(d) assert.is_string(d.url) end }
  CORE[#CORE + 1] = { fname, "timeout", function()
    local s <close> = assert(http.stream { url = url(slow) })
    assert(s[m](s, 5000))
    return s[m](s, 10)
  end, detail = function(d)
    assert.equal(10, d.timeout_ms)
    assert.is_string(d.url)
  end }
  CORE[#CORE + 1] = { fname, "closed", function()
    local s = assert(http.stream { url = url(slow) })
    assert(s[m](s, 5000))
    return closed_while_waiting(function() s:close() end, s[m], s)
  end }
end
CORE[#CORE + 1] = { "baton.http.stream:read_line", "too_large", function()
  local s <close> = assert(http.stream { url = url("/big?bytes=1100000") })
  return s:read_line(5000)
end, detail = { limit = 1048576 } }
CORE[#CORE + 1] = { "baton.http.stream:read_event", "too_large", function()
  local s <close> = assert(http.stream { url = url("/sse_flood?lines=5000"),
                                         max_event_bytes = 1000 })
  return s:read_event(5000)
end, detail = { limit = 1000 } }

-- Failures that need an allocator that fails (or a kernel that refuses to kill), with the
-- reason they are not provoked here.
local OOM = "needs memory to run out (the deadline timer, a buffer)"
local EXEMPT = {
  ["baton.sleep resource"] = OOM,
  ["baton.task:join resource"] = OOM,
  ["baton.group:join_next resource"] = OOM,
  ["baton.group:wait_within resource"] = OOM,
  ["baton.group:join_all resource"] = OOM,
  ["baton.semaphore:acquire resource"] = OOM,
  ["baton.budget:try_acquire resource"] = OOM,
  ["baton.future:wait resource"] = OOM,
  ["baton.process:read_line resource"] = OOM,
  ["baton.process:read resource"] = OOM,
  ["baton.process:wait resource"] = OOM,
  ["baton.process:write resource"] = OOM,
  ["baton.http.stream:read resource"] = OOM,
  ["baton.http.stream:read_line resource"] = OOM,
  ["baton.http.stream:read_event resource"] = OOM,
  ["baton.channel:send resource"] = OOM,
  ["baton.channel:send_many resource"] = OOM,
  ["baton.channel:recv resource"] = OOM,
  ["baton.channel:recv_many resource"] = OOM,
  ["baton.watch:changed resource"] = OOM,
  ["baton.notify:notified resource"] = OOM,
  ["baton.select resource"] = OOM,
  ["baton.trace.start resource"] = "needs memory to run out opening the file",
  ["baton.process:kill io"] = "kill(2) on a child of ours fails only for a bad signal, " ..
                              "which is refused as misuse first",
}

describe("errors:", function()
  lazy_setup(function()
    local src = os.getenv("BATON_SRC") or "."
    server.pipe = assert(io.popen("exec python3 " .. src .. "/spec/fixtures/http/server.py"))
    local line = assert(server.pipe:read("l"), "the fixture server did not start")
    server.port, server.pid = line:match("^PORT (%d+) PID (%d+)$")
    server.port = assert(tonumber(server.port), line)
  end)

  lazy_teardown(function()
    if server.pid then os.execute("kill " .. server.pid) end
    if server.pipe then server.pipe:close() end
  end)

  describe("the kinds", function()
    it("are the same list in docs/errors.md and in baton.kinds (from C)", function()
      assert.same(H.errors_doc().kinds, baton.kinds)
    end)

    it("include no libuv or core name", function()
      for _, k in ipairs(baton.kinds) do
        assert.matches("^[a-z][a-z_]*$", k)
        assert.is_nil(({ nomem = 1, inval = 1, in_progress = 1 })[k], k)
      end
    end)
  end)

  describe("failures of the core and I/O components", function()
    H.failure_rows(it, "Core and I/O components", CORE, EXEMPT)
  end)

  describe("misuse", function()
    local MISUSE = {
      { "baton.sleep", 1, "ms", "expected milliseconds >= 0, got %-1", baton.sleep, -1 },
      { "baton.spawn", 1, "fn", "expected function, got no value", baton.spawn },
      { "baton.timeout", 2, "fn", "expected function, got 'x'", baton.timeout, 1, "x" },
      { "baton.error", 1, "kind", "expected string, got no value", baton.error },
      { "baton.semaphore", 1, "permits", "expected integer >= 0, got %-1", baton.semaphore, -1 },
      { "baton.semaphore", 1, "permits", "expected integer >= 0, got no value", baton.semaphore },
      { "baton.semaphore:acquire", 0, "self", "expected baton.Semaphore, got 5",
        baton.semaphore(1).acquire, 5 },
      { "baton.semaphore:acquire", 1, "permits", "expected integer >= 1, got 'x'",
        function() return baton.semaphore(1):acquire("x") end },
      { "baton.semaphore:acquire", 1, "permits", "expected permits <= 1 %(the capacity%), got 2",
        function() return baton.semaphore(1):acquire(2) end },
      { "baton.semaphore:acquire", 1, "permits", "expected permits <= 0 %(the capacity%), got 1%)$",
        function() return baton.semaphore(0):acquire() end },  -- the default, 1, is too many
      { "baton.task:join", 1, "timeout_ms", "expected milliseconds >= 0, got NaN",
        function() return baton.spawn(print):join(0 / 0) end },
      { "baton.group:spawn_bounded", 1, "sem", "expected integer >= 1 or baton.Semaphore, got " ..
        "table", function() return baton.group():spawn_bounded({}, print) end },
      { "baton.budget:try_acquire", 1, "key", "expected string, got no value",
        function() return baton.budget():try_acquire() end },
      { "baton.json.decode", 1, "s", "expected string, got 42", json.decode, 42 },
      { "baton.json.encode", 1, "v", "got a function at %$%.f%)", json.encode, { f = print } },
      { "baton.process.run", 1, "timeout_ms", "expected milliseconds >= 0, got %-5",
        process.run, { "true", timeout_ms = -5 } },
      { "baton.http.request", 1, "url", "expected string, got nil", http.request, {} },
      { "baton.on_signal", 2, "fn", "expected function or nil, got 42", baton.on_signal, "usr1", 42 },
      -- a typo is named, even when a required key is missing too
      { "baton.http.request", 1, "urll", "%(unknown option%)", http.request,
        { urll = "http://127.0.0.1:1/" } },
      { "baton.process.run", 1, "cwdd", "%(unknown option%)", process.run, { cwdd = "/" } },
      { "baton.process.spawn", 1, "max_line_byte", "%(unknown option%)", process.spawn,
        { "cat", max_line_byte = 10 } },
      { "baton.group", 1, "limti", "%(unknown option%)", baton.group, { limti = 2 } },
      { "baton.budget", 1, "capp", "%(unknown option%)", baton.budget, { capp = 2 } },
      { "baton.json.encode", 2, "prety", "%(unknown option%)", json.encode, {}, { prety = true } },
    }
    for _, row in ipairs(MISUSE) do
      it(("%s raises bad argument #%d '%s'"):format(row[1], row[2], row[3]), H.async(function()
        H.raises_misuse(table.unpack(row))
      end))
    end

    it("names the function of a closed object", H.async(function()
      local g = baton.group()
      g:close()
      H.raises("^baton%.group:spawn: used after it was closed$", g.spawn, g, print)
      local s = baton.semaphore(1)
      getmetatable(s).__gc(s)
      H.raises("^baton%.semaphore:available: used after it was closed$", s.available, s)
    end))
  end)

  describe("errors inside tasks", function()
    it("a cancelled task's error is a baton.Error of kind cancelled", H.async(function()
      local t = baton.spawn(baton.sleep, 5000)
      baton.yield()
      t:abort()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      assert.equal("task cancelled", tostring(err))
      assert.equal("baton.Error", getmetatable(err).__name)
    end))

    it("a task whose semaphore closed before it ran carries kind closed", H.async(function()
      local s = baton.semaphore(1)
      local held = s:try_acquire()
      local g <close> = baton.group()
      local t = g:spawn_bounded(s, print)
      s:close()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.equal("closed", err.kind)
      assert.equal(("task %d never ran: the semaphore gating it was closed"):format(t.id),
                   tostring(err))
      held:release()
    end))

    it("baton.error makes a baton.Error that keeps its identity through join", H.async(function()
      local e = baton.error("rate_limited", "api: slow down", { retry_after_ms = 250 })
      assert.same({ kind = "rate_limited", message = "api: slow down",
                    detail = { retry_after_ms = 250 } },
                  { kind = e.kind, message = e.message, detail = e.detail })
      assert.equal("api: slow down", tostring(e))
      local ok, err = baton.spawn(function() error(e) end):join()
      assert.is_false(ok)
      assert.equal(e, err)
      assert.is_string(err.traceback)
    end))
  end)
end)
