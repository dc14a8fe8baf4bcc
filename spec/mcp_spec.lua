-- baton.mcp: the MCP client against the real reference servers from npm (server-everything,
-- server-filesystem, versions pinned in spec/fixtures/mcp/package-lock.json) and against a
-- scripted fake server (spec/fixtures/mcp/fake_server.py) for what real servers never do:
-- out-of-order replies, garbage, split writes, dying mid-call, never answering.
local baton = require "baton"
local H = require "spec.helper"
local mcp = require "baton.mcp"

local FIX, EVERYTHING, FAKE = H.mcp.FIX, H.mcp.EVERYTHING, H.mcp.FAKE
-- `it` for the specs against the real servers and the fake one; pending (and said loudly)
-- when node and the pinned npm packages, or python3, are missing.
local real_it, fake_it = H.mcp.gates("mcp_spec")
-- everything(opts), filesystem(dir, opts): connected clients (asserted);
-- fake(args, opts): mcp.connect's results for the fake server run with `args`.
local everything, filesystem, fake = H.mcp.everything, H.mcp.filesystem, H.mcp.fake
local alive, write_file = H.alive, H.write_file
local tmpdir, rmdir = H.temp_dir, H.remove_dir

-- The tools of the pinned server-everything when the client declares no capabilities.
local EVERYTHING_TOOLS = {
  "echo", "get-annotated-message", "get-env", "get-resource-links", "get-resource-reference",
  "get-structured-content", "get-sum", "get-tiny-image", "gzip-file-as-resource",
  "simulate-research-query", "toggle-simulated-logging", "toggle-subscriber-updates",
  "trigger-long-running-operation",
}

local function names(tools)
  local out = {}
  for i, t in ipairs(tools) do out[i] = t.name end
  table.sort(out)
  return out
end

describe("baton.mcp against server-everything", function()
  real_it("connects: server_info, capabilities, instructions, the newest protocol version",
    H.async(function()
      local c = everything()
      assert.equal("mcp-servers/everything", c.server_info.name)
      assert.equal(mcp.SUPPORTED_VERSIONS[1], c.protocol_version)
      assert.is_table(c.server_capabilities.tools)
      assert.is_string(c.instructions)
      c:close()
    end))

  real_it("negotiates an older protocol version when asked for it", H.async(function()
    local c = everything { protocol_version = "2024-11-05" }
    assert.equal("2024-11-05", c.protocol_version)
    assert.equal("Echo: old", mcp.text(assert(c:call("echo", { message = "old" }))))
    c:close()
  end))

  real_it("accepts the server's own version when it does not know the one asked for",
    H.async(function()
      local c = everything { protocol_version = "2099-01-01" }
      assert.is_true(c.protocol_version ~= "2099-01-01")
      local ok = false
      for _, v in ipairs(mcp.SUPPORTED_VERSIONS) do ok = ok or v == c.protocol_version end
      assert.is_true(ok)
      c:close()
    end))

  real_it("refuses a server version it does not support, clearly, and stops the server",
    H.async(function()
      local c, msg, kind = mcp.connect { command = { "node", EVERYTHING, "stdio" },
                                         protocol_version = "2099-01-01",
                                         supported_versions = { "2099-01-01" } }
      assert.is_nil(c)
      assert.equal("protocol", kind)
      assert.matches("the server speaks protocol 2025%-11%-25; this client supports 2099%-01%-01", msg)
      assert.equal(0, H.settle().processes)
    end))

  real_it("list_tools returns every tool the server has", H.async(function()
    local c = everything()
    local tools = assert(c:list_tools())
    local raw = assert(c:request("tools/list"))
    assert.equal(#raw.tools, #tools)
    assert.same(EVERYTHING_TOOLS, names(tools))
    for _, t in ipairs(tools) do assert.is_table(t.inputSchema) end
    c:close()
  end))

  real_it("lists resources and prompts, reads a resource, gets a prompt", H.async(function()
    local c = everything()
    local resources = assert(c:list_resources())
    assert.equal(#assert(c:request("resources/list")).resources, #resources)
    local r = assert(c:read_resource(resources[1].uri))
    assert.equal(resources[1].uri, r.contents[1].uri)
    local prompts = assert(c:list_prompts())
    assert.is_true(#prompts > 0)
    local simple
    for _, p in ipairs(prompts) do if p.name == "simple-prompt" then simple = p end end
    assert.is_table(simple)
    assert.is_true(#assert(c:get_prompt("simple-prompt")).messages > 0)
    c:close()
  end))

  real_it("calls echo and get-sum", H.async(function()
    local c = everything()
    local r = assert(c:call("echo", { message = "hello, \u{2028} world" }))
    assert.equal("text", r.content[1].type)
    assert.equal("Echo: hello, \u{2028} world", r.content[1].text)
    r = assert(c:call("get-sum", { a = 2, b = 40 }))
    assert.equal("The sum of 2 and 40 is 42.", mcp.text(r))
    c:close()
  end))

  real_it("an unknown tool and bad arguments come back as tool_error", H.async(function()
    local c = everything()
    local r, msg, kind, detail = c:call("no-such-tool", {})
    assert.is_nil(r)
    assert.equal("tool_error", kind)
    assert.matches("^baton%.mcp%.client:call: tool 'no%-such%-tool' failed", msg)
    assert.equal("no-such-tool", detail.tool)
    assert.is_true(detail.result.isError)
    r, msg, kind = c:call("get-sum", { a = "two" })
    assert.is_nil(r)
    assert.equal("tool_error", kind)
    assert.matches("get%-sum", msg)
    -- the client stays usable
    assert.equal("Echo: still", mcp.text(assert(c:call("echo", { message = "still" }))))
    c:close()
  end))

  real_it("delivers the progress of a long-running tool to on_progress", H.async(function()
    local c = everything()
    local seen = {}
    local r = assert(c:call("trigger-long-running-operation", { duration = 0.5, steps = 5 }, {
      on_progress = function(progress, total) seen[#seen + 1] = { progress, total } end }))
    assert.matches("Long running operation completed", mcp.text(r))
    assert.same({ { 1, 5 }, { 2, 5 }, { 3, 5 }, { 4, 5 }, { 5, 5 } }, seen)
    c:close()
  end))

  real_it("cancelling a long-running call mid-way returns at once", H.async(function()
    local c = everything()
    local progressed = 0
    local t0 = baton.clock()
    local r, msg, kind = baton.timeout(1200, c.call, c, "trigger-long-running-operation",
      { duration = 30, steps = 60 },
      { on_progress = function() progressed = progressed + 1 end })
    local elapsed = baton.clock() - t0
    assert.is_nil(r)
    assert.matches("^baton%.timeout: ", msg)
    assert.equal("timeout", kind)
    assert.is_true(progressed >= 1, "no progress before the cancel")
    assert.is_true(elapsed < 5000, "took " .. elapsed .. " ms")
    assert.equal(0, c:stats().in_flight)
    assert.equal("Echo: after", mcp.text(assert(c:call("echo", { message = "after" }))))
    c:close()
  end))

  real_it("16 calls in flight each come back to their own caller", H.async(function()
    local c = everything()
    local g <close> = baton.group()
    for i = 1, 16 do
      g:spawn(function()
        local r = assert(c:call("echo", { message = "caller " .. i }))
        return i, mcp.text(r)
      end)
    end
    baton.yield()  -- every caller runs up to its wait: 16 requests written, none answered
    local most = c:stats().in_flight
    local got = 0
    for _, t in ipairs(g:join_all()) do
      assert.is_true(t.ok, t.error)
      local i, text = t:results()
      assert.equal("Echo: caller " .. i, text)
      got = got + 1
    end
    assert.equal(16, got)
    assert.is_true(most >= 8, "only " .. most .. " calls were in flight together")
    c:close()
  end))

  real_it("close() leaves no process behind", H.async(function()
    local c = everything()
    local pid = c:pid()
    assert.is_true(alive(pid))
    assert.is_true(c:close())
    assert.is_true(c:close())  -- idempotent
    assert.equal(0, H.settle().processes)
    assert.is_false(alive(pid))
    H.raises("^baton%.mcp%.client:call: used after it was closed", c.call, c, "echo",
             { message = "x" })
  end))
end)

describe("baton.mcp against server-filesystem", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() rmdir(dir) end)

  real_it("list_directory and read_text_file on a temp dir", H.async(function()
    write_file(dir .. "/a.txt", "alpha\nbeta\n")
    assert(os.execute("mkdir '" .. dir .. "/sub'"))
    local c = filesystem(dir)
    assert.equal("secure-filesystem-server", c.server_info.name)
    local r = assert(c:call("list_directory", { path = dir }))
    local listing = mcp.text(r)
    assert.matches("%[FILE%] a%.txt", listing)
    assert.matches("%[DIR%] sub", listing)
    r = assert(c:call("read_text_file", { path = dir .. "/a.txt" }))
    assert.equal("alpha\nbeta\n", mcp.text(r))
    c:close()
  end))

  real_it("a 1 MB file read arrives whole", H.async(function()
    local pieces, n = {}, 0
    while n < 1000000 do  -- varied text, with characters JSON escapes and raw U+2028
      local line = ("%06d \"quoted\" \\ tab\t é ✓ \u{2028} %s\n"):format(#pieces, ("z"):rep(#pieces % 50))
      pieces[#pieces + 1] = line
      n = n + #line
    end
    local content = table.concat(pieces)
    write_file(dir .. "/big.txt", content)
    local c = filesystem(dir)
    local r = assert(c:call("read_text_file", { path = dir .. "/big.txt" }))
    local text = mcp.text(r)
    assert.equal(#content, #text)
    assert.is_true(text == content)
    c:close()
  end))

  real_it("bad arguments and a path outside the allowed directories are tool_error",
    H.async(function()
      local c = filesystem(dir)
      local r, _, kind = c:call("read_text_file", {})
      assert.is_nil(r)
      assert.equal("tool_error", kind)
      r, _, kind = c:call("read_text_file", { path = "/etc/hostname" })
      assert.is_nil(r)
      assert.equal("tool_error", kind)
      c:close()
    end))

  real_it("answers the server's roots/list with the configured roots", H.async(function()
    local other = tmpdir()
    local c = filesystem(dir, { roots = { { uri = "file://" .. other, name = "other" } } })
    local text
    local deadline = baton.now() + 5000
    repeat  -- the server asks for the roots after initialized, concurrently with this call
      text = mcp.text(assert(c:call("list_allowed_directories")))
      if text:find(other, 1, true) then break end
      baton.sleep(20)
    until baton.now() > deadline
    assert.matches(other, text, 1, true)
    assert.is_true(c:stats().server_requests >= 1)
    c:close()
    rmdir(other)
  end))
end)

describe("baton.mcp against a scripted server", function()
  fake_it("matches replies that come back out of order", H.async(function()
    local c = assert(fake())
    local g <close> = baton.group()
    local order = {}
    for i, ms in ipairs { 300, 150, 0 } do
      g:spawn(function()
        local r = assert(c:call("slow", { ms = ms, text = "t" .. i }))
        order[#order + 1] = i
        return i, mcp.text(r)
      end)
    end
    for _, t in ipairs(g:join_all()) do
      local i, text = t:results()
      assert.equal("slow: t" .. i, text)
    end
    assert.same({ 3, 2, 1 }, order)
    c:close()
  end))

  fake_it("a client connected inside baton.timeout keeps working after it returns",
    H.async(function()
      -- connect runs in the timeout's task, which ends at once: nothing the session needs
      -- may belong to that task (its handler group is detached, its reader a spawned task).
      local c = assert(baton.timeout(10000, fake))
      assert.equal("echo: later", mcp.text(assert(c:call("echo", { text = "later" }))))
      c:close()
    end))

  fake_it("skips a line that is not JSON, with a warning", H.async(function()
    local warnings = {}
    local c = assert(fake({}, { on_warning = function(m) warnings[#warnings + 1] = m end }))
    assert.equal("garbage: x", mcp.text(assert(c:call("garbage", { text = "x" }))))
    assert.equal(1, c:stats().malformed)
    assert.equal(1, #warnings)
    assert.matches("not JSON", warnings[1])
    c:close()
  end))

  fake_it("reassembles a reply split across several writes, and a \\r\\n line end",
    H.async(function()
      local c = assert(fake())
      assert.equal("split: a b c", mcp.text(assert(c:call("split", { text = "a b c" }))))
      assert.equal("crlf: y", mcp.text(assert(c:call("crlf", { text = "y" }))))
      c:close()
    end))

  fake_it("a server that closes its stdout but runs on: 'closed', saying so", H.async(function()
    local c = assert(fake())
    local elapsed, r, msg, kind = H.timed(c.call, c, "hangup", {}, { timeout_ms = 20000 })
    assert.is_nil(r)
    assert.equal("closed", kind)
    assert.matches("the server closed its output and was still running 250 ms later", msg, 1, true)
    assert.is_true(elapsed < 5000, "took " .. elapsed .. " ms")
    c:close()
  end))

  fake_it("a server that exits mid-call fails the call with 'closed' at once", H.async(function()
    local c = assert(fake())
    local elapsed, r, msg, kind = H.timed(c.call, c, "exit", {}, { timeout_ms = 20000 })
    assert.is_nil(r)
    assert.equal("closed", kind)
    assert.matches("the server exited %(exit code 3%)", msg)
    assert.is_true(elapsed < 2000, "took " .. elapsed .. " ms")
    r, msg, kind = c:call("echo", { text = "again" })
    assert.is_nil(r)
    assert.equal("closed", kind)
    c:close()
  end))

  fake_it("a server that never answers: 'timeout', and the server hears cancelled",
    H.async(function()
      local c = assert(fake())
      local elapsed, r, msg, kind, detail = H.timed(c.call, c, "never", {}, { timeout_ms = 200 })
      assert.is_nil(r)
      assert.equal("baton.mcp.client:call: timed out after 200 ms", msg)
      assert.equal("timeout", kind)
      assert.same({ timeout_ms = 200 }, detail)
      assert.is_true(elapsed >= 190 and elapsed < 3000, "took " .. elapsed .. " ms")
      local cancels = baton.json.decode(mcp.text(assert(c:call("cancels"))))
      assert.same({ { requestId = 2, reason = "timeout" } }, cancels)  -- id 1 was initialize
      c:close()
    end))

  fake_it("aborting the calling task sends notifications/cancelled and stops waiting",
    H.async(function()
      local c = assert(fake())
      local t = baton.spawn(function() return c:call("never") end)
      baton.sleep(50)
      local t0 = baton.clock()
      t:abort()
      t:join()
      assert.is_true(baton.clock() - t0 < 1000)
      assert.equal("cancelled", t:status())
      assert.equal(0, c:stats().in_flight)
      local cancels = baton.json.decode(mcp.text(assert(c:call("cancels"))))
      assert.same({ { requestId = 2, reason = "cancelled" } }, cancels)
      c:close()
    end))

  fake_it("answers the server's roots/list with the roots, an unknown request with -32601",
    H.async(function()
      local roots = { { uri = "file:///tmp/a", name = "a" }, { uri = "file:///tmp/b" } }
      local c = assert(fake({}, { roots = roots }))
      local got = baton.json.decode(mcp.text(assert(c:call("ask"))))
      assert.same({ jsonrpc = "2.0", id = 1000, result = { roots = roots } }, got.roots)
      assert.equal(-32601, got.unknown.error.code)
      assert.equal(1001, got.unknown.id)
      c:close()
    end))

  fake_it("client:handle answers the server's requests from a task", H.async(function()
    local c = assert(fake())
    c:handle("roots/list", function()
      baton.sleep(10)  -- a handler may wait
      return { roots = { { uri = "file:///h" } } }
    end)
    c:handle("frobnicate/now", function(params) return nil, "no frobs: " .. params.x, -32000 end)
    local got = baton.json.decode(mcp.text(assert(c:call("ask"))))
    assert.equal("file:///h", got.roots.result.roots[1].uri)
    assert.same({ code = -32000, message = "no frobs: 1" }, got.unknown.error)
    c:close()
  end))

  fake_it("delivers notifications to on_log, client:on and on_notification", H.async(function()
    local log, custom, other = {}, {}, {}
    local c = assert(fake({}, {
      on_log = function(p) log[#log + 1] = p end,
      on_notification = function(method, p) other[#other + 1] = method end }))
    c:on("notifications/custom", function(p) custom[#custom + 1] = p.n end)
    assert.equal("notified", mcp.text(assert(c:call("notify"))))
    assert.same({ { level = "info", logger = "fake", data = "hello" } }, log)
    assert.same({ 42 }, custom)
    assert.same({}, other)
    c:close()
  end))

  fake_it("a handler that raises is a warning; the reader goes on", H.async(function()
    local warnings = {}
    local c = assert(fake({}, { on_warning = function(m) warnings[#warnings + 1] = m end }))
    c:on("notifications/custom", function() error("boom") end)
    assert.equal("notified", mcp.text(assert(c:call("notify"))))
    assert.equal("echo: on", mcp.text(assert(c:call("echo", { text = "on" }))))
    assert.equal(1, c:stats().handler_errors)
    assert.matches("boom", warnings[1])
    c:close()
  end))

  fake_it("routes progress to on_progress with total and message", H.async(function()
    local c = assert(fake())
    local seen = {}
    assert(c:call("progress", { steps = 3, ms = 5 }, {
      on_progress = function(p, total, message) seen[#seen + 1] = { p, total, message } end }))
    assert.same({ { 1, 3, "step 1" }, { 2, 3, "step 2" }, { 3, 3, "step 3" } }, seen)
    c:close()
  end))

  fake_it("list_tools follows nextCursor through every page", H.async(function()
    local c = assert(fake { "--pages", "7" })
    local tools = assert(c:list_tools())
    assert.equal(14, #tools)
    assert.equal("echo", tools[1].name)
    assert.equal("rpcfail", tools[14].name)
    c:close()
  end))

  fake_it("isError and a JSON-RPC error of tools/call are tool_error; other requests rpc_error",
    H.async(function()
      local c = assert(fake())
      local r, msg, kind, detail = c:call("fail")
      assert.is_nil(r)
      assert.equal("tool_error", kind)
      assert.equal("baton.mcp.client:call: tool 'fail' failed: it broke", msg)
      assert.equal("fail", detail.tool)
      assert.is_true(detail.result.isError)
      r, msg, kind, detail = c:call("rpcfail")
      assert.equal("tool_error", kind)
      assert.equal("baton.mcp.client:call: tool 'rpcfail': Unknown tool: nope "
                   .. "(JSON-RPC error -32602)", msg)
      assert.same({ tool = "rpcfail", code = -32602, message = "Unknown tool: nope",
                    data = { x = 1 } }, detail)
      r, msg, kind, detail = c:request("no/such/method")
      assert.is_nil(r)
      assert.equal("rpc_error", kind)
      assert.matches("^baton%.mcp%.client:request: no/such/method: ", msg)
      assert.equal(-32601, detail.code)
      assert.equal("no/such/method", detail.method)
      assert.is_true(c:ping())
      c:close()
    end))

  fake_it("refuses a bogus protocol version in the reply", H.async(function()
    local c, msg, kind = fake { "--version", "1.0-bogus" }
    assert.is_nil(c)
    assert.equal("protocol", kind)
    assert.matches("speaks protocol 1.0-bogus", msg, 1, true)
    assert.equal(0, H.settle().processes)
  end))

  fake_it("a handshake that is never answered times out", H.async(function()
    local elapsed, c, msg, kind = H.timed(fake, { "--no-init" }, { timeout_ms = 300 })
    assert.is_nil(c)
    assert.equal("timeout", kind)
    assert.matches("initialize", msg)
    assert.is_true(elapsed < 3000)
  end))

  fake_it("aborting a task inside connect leaves no process", H.async(function()
    local t = baton.spawn(fake, { "--no-init" })
    baton.sleep(100)
    t:abort()
    t:join()
    assert.equal("cancelled", t:status())
    assert.equal(0, H.settle(5000).processes)
  end))

  fake_it("a line over max_line_bytes fails the client with 'too_large'", H.async(function()
    local c = assert(fake({}, { max_line_bytes = 4096 }))
    assert.equal("x", mcp.text(assert(c:call("big", { bytes = 1 }))))
    local r, msg, kind = c:call("big", { bytes = 100000 })
    assert.is_nil(r)
    assert.equal("too_large", kind)
    assert.matches("max_line_bytes %(4096%)", msg)
    c:close()
  end))

  fake_it("close() ends a server that ignores EOF with SIGTERM", H.async(function()
    local c = assert(fake { "--ignore-eof" })
    local pid = c:pid()
    local elapsed = H.timed(c.close, c, 200)
    assert.is_true(elapsed >= 190 and elapsed < 3000, "took " .. elapsed .. " ms")
    assert.equal(0, H.settle().processes)
    assert.is_false(alive(pid))
  end))

  fake_it("close() kills a server that ignores EOF and SIGTERM", H.async(function()
    local c = assert(fake { "--ignore-eof", "--ignore-term" })
    local pid = c:pid()
    local elapsed = H.timed(c.close, c, 150)
    assert.is_true(elapsed >= 290 and elapsed < 3000, "took " .. elapsed .. " ms")
    assert.equal(0, H.settle().processes)
    assert.is_false(alive(pid))
  end))

  fake_it("close() fails the calls in flight with 'closed'", H.async(function()
    local c = assert(fake())
    local t = baton.spawn(function() return c:call("never") end)
    baton.sleep(20)
    c:close()
    local ok, r, msg, kind = t:join()
    assert.is_true(ok)
    assert.is_nil(r)
    assert.equal("closed", kind)
    assert.matches("closed", msg)
  end))

  fake_it("a client in a <close> variable or dropped and collected leaves no process",
    H.async(function()
      local pid1, pid2
      do
        local c <close> = assert(fake())
        pid1 = c:pid()
      end
      do
        local c = assert(fake())
        pid2 = c:pid()
      end
      collectgarbage()
      collectgarbage()
      assert.equal(0, H.settle(5000).processes)
      assert.is_false(alive(pid1))
      assert.is_false(alive(pid2))
    end))

  fake_it("the dispatcher turns calls into engine outcomes", H.async(function()
    local c = assert(fake())
    local e <close> = baton.engine { max_parallel = 4, timeout_ms = 2000,
                                     dispatcher = mcp.dispatcher(c, { body = mcp.text }) }
    e:dispatch { { tool = "echo", args = { text = "a" } }, { tool = "fail" },
                 { tool = "slow", args = { ms = 50, text = "b" } } }
    local by = {}
    for _, o in ipairs(e:wait_within()) do by[o.tool] = o end
    assert.equal("settled", by.echo.status)
    assert.equal("echo: a", by.echo.body)
    assert.equal("slow: b", by.slow.body)
    assert.equal("failed", by.fail.status)
    assert.equal("tool_error", by.fail.error.kind)
    assert.equal("baton.mcp.client:call: tool 'fail' failed: it broke", by.fail.error.message)
    assert.equal("fail", by.fail.error.detail.tool)
    assert.is_true(by.fail.error.detail.result.isError)
    e:shutdown()
    c:close()
  end))

  -- Review fixes: close() aborted, from a handler, twice at once; pagination bounds; no
  -- cancel of initialize; the dispatcher of a closed client; requests during close; error: null.
  fake_it("an aborted close() still releases the server and stops the reader", H.async(function()
    local c = assert(fake { "--ignore-eof", "--ignore-term" })
    local pid = c:pid()
    local r, msg = baton.timeout(100, c.close, c, 300)  -- aborted in its first grace period
    assert.is_nil(r)
    assert.matches("^baton%.timeout: ", msg)
    assert.is_true(c:close())
    assert.equal(0, H.settle(2500).processes)  -- SIGKILL 300 ms after the abort
    assert.is_false(alive(pid))
  end))

  fake_it("aborting connect while it stops a refused server leaves no process",
    H.async(function()
      local spawn, proc = baton.process.spawn, nil
      baton.process.spawn = function(argv)
        baton.process.spawn = spawn
        local p, e, k = spawn(argv)
        proc = p
        return p, e, k
      end
      local t = baton.spawn(fake, { "--version", "1.0-bogus", "--ignore-eof", "--ignore-term" })
      local function eof_seen()  -- connect's close(200) has closed the server's stdin
        local ok, s = pcall(function() return proc:stderr() end)
        return ok and s and s:find("stdin closed", 1, true)
      end
      local deadline = baton.now() + 10000
      while not (proc and eof_seen()) and baton.now() < deadline do baton.sleep(2) end
      baton.process.spawn = spawn
      assert.is_truthy(proc and eof_seen(), "connect never began to stop the server")
      local pid = proc:pid()
      t:abort()
      t:join()
      assert.equal("cancelled", t:status())
      assert.equal(0, H.settle(2500).processes)
      assert.is_false(alive(pid))
    end))

  fake_it("close() from a client:handle handler closes the client and returns true",
    H.async(function()
      local c = assert(fake())
      local pid = c:pid()
      local res
      c:handle("roots/list", function()
        res = table.pack(pcall(c.close, c, 200))
        return { roots = {} }
      end)
      local r, _, kind = c:call("ask", {}, { timeout_ms = 5000 })
      assert.is_nil(r)
      assert.equal("closed", kind)
      local deadline = baton.now() + 3000
      while not res and baton.now() < deadline do baton.sleep(5) end
      assert.same({ n = 2, true, true }, res)
      assert.equal(0, H.settle().processes)
      assert.is_false(alive(pid))
    end))

  fake_it("a second close() at the same time returns once the server is gone",
    H.async(function()
      local c = assert(fake { "--ignore-eof" })
      local pid = c:pid()
      local first = baton.spawn(c.close, c, 200)
      baton.yield()  -- the first close() is waiting for the server
      local elapsed, ok = H.timed(c.close, c, 200)
      assert.is_true(ok)
      assert.is_false(alive(pid))
      assert.is_true(elapsed >= 150, "returned after " .. elapsed .. " ms")
      assert.same({ true, true }, { first:join() })
      assert.equal(0, H.settle().processes)
    end))

  fake_it("list_tools has one deadline for all its pages", H.async(function()
    local c = assert(fake { "--endless-pages", "50" })
    local elapsed, r, msg, kind, detail = H.timed(baton.timeout, 3000, c.list_tools, c,
                                                  { timeout_ms = 300 })
    assert.is_nil(r)
    assert.equal("baton.mcp.client:list_tools: timed out after 300 ms", msg)
    assert.equal("timeout", kind)
    assert.same({ timeout_ms = 300 }, detail)
    assert.is_true(elapsed >= 290 and elapsed < 1500, "took " .. elapsed .. " ms")
    c:close()
  end))

  fake_it("list_tools gives up on a server that hands out cursors forever", H.async(function()
    local c = assert(fake { "--endless-pages", "0" })
    local r, msg, kind = baton.timeout(10000, c.list_tools, c)
    assert.is_nil(r)
    assert.equal("protocol", kind)
    assert.matches("more than 1000 pages", msg)
    c:close()
  end))

  fake_it("a handshake timeout does not cancel initialize", H.async(function()
    local got
    -- The server must have started and read what was sent before it is stopped: on a
    -- loaded machine a 200 ms handshake may end first, so try again with more time.
    for _, ms in ipairs { 200, 1000, 3000 } do
      local log = os.tmpname()
      local c, _, kind = fake({ "--no-init", "--ignore-term", "--log", log }, { timeout_ms = ms })
      assert.is_nil(c)
      assert.equal("timeout", kind)
      local f = assert(io.open(log))
      got = f:read("a")
      f:close()
      os.remove(log)
      if got:find('"initialize"', 1, true) then break end
    end
    assert.matches('"initialize"', got)
    assert.is_nil(got:find("notifications/cancelled", 1, true))
  end))

  fake_it("the dispatcher of a closed client fails with kind 'closed'", H.async(function()
    local c = assert(fake())
    local e <close> = baton.engine { max_parallel = 2, timeout_ms = 2000,
                                     dispatcher = mcp.dispatcher(c) }
    c:close()
    e:dispatch { { tool = "echo", args = { text = "a" } } }
    local out = e:wait_within()
    assert.equal(1, #out)
    assert.equal("failed", out[1].status)
    assert.equal("closed", out[1].error.kind)
    assert.matches("the client is closed", out[1].error.message)
    e:shutdown()
  end))

  fake_it("a server request that comes while close() waits reaches no handler",
    H.async(function()
      local warnings, called = {}, 0
      local c = assert(fake({ "--ask-on-eof" },
                            { on_warning = function(m) warnings[#warnings + 1] = m end }))
      c:handle("roots/list", function() called = called + 1; return { roots = {} } end)
      assert.is_true(c:close(1000))  -- the server asks, then exits: close() returns then
      assert.equal(1, c:stats().server_requests)
      assert.equal(0, called)
      assert.same({}, warnings)
    end))

  fake_it("a reply with \"error\": null beside its result is a result", H.async(function()
    local c = assert(fake())
    assert.equal("errnull: ok", mcp.text(assert(c:call("errnull"))))
    c:close()
  end))

  fake_it("survives what MCP does not allow (ids 1e400, tables, 1.5, null, huge; replies to "
          .. "nothing; junk), skipping each with a warning", H.async(function()
    local warnings, handled = {}, 0
    local c = assert(fake({}, { on_warning = function(m) warnings[#warnings + 1] = m end }))
    c:handle("sampling/createMessage", function() handled = handled + 1; return {} end)
    assert.equal("weird: survived", mcp.text(assert(c:call("weird"))))
    assert.is_true(c:ping())  -- the next calls work
    assert.equal("echo: still here", mcp.text(assert(c:call("echo", { text = "still here" }))))
    local s = c:stats()
    assert.is_false(s.closed)
    -- Every message the fixture's WEIRD list holds but two harmless notifications, each
    -- element of a batch on its own (so 30), is counted and reported; a notification with
    -- 1e400 in its params is not JSON baton accepts (no number is infinite), so it counts,
    -- and so does one whose params hold a string that is not UTF-8.
    assert.equal(30, s.malformed, table.concat(warnings, "\n"))
    assert.equal(30, #warnings)
    assert.equal(0, handled)  -- a request with a table for id reaches no handler
    local text = table.concat(warnings, "\n")
    assert.matches("not a string or an integer", text, 1, true)
    assert.matches("a response to no request of this client", text, 1, true)
    assert.matches("not JSON", text, 1, true)
    c:close()
  end))

  fake_it("a handler result JSON cannot hold is answered -32603, with a warning",
    H.async(function()
      local warnings = {}
      local c = assert(fake({}, { on_warning = function(m) warnings[#warnings + 1] = m end }))
      c:handle("roots/list", function() return { roots = { x = math.huge } } end)
      local r = assert(c:call("ask", {}, { timeout_ms = 5000 }))
      local got = baton.json.decode(mcp.text(r))
      assert.equal(-32603, got.roots.error.code)
      assert.matches("cannot be encoded", warnings[1], 1, true)
      assert.is_true(c:ping())
      c:close()
    end))

  fake_it("close() returns once the server is reaped: stats().processes is 0 at once",
    H.async(function()
      local c = assert(fake())
      assert.equal(1, baton.stats().processes)
      assert.is_true(c:close())
      assert.equal(0, baton.stats().processes)
    end))

  fake_it("close() ends what the server started too (its process group)", H.async(function()
    local m = string.format("47.%06d", math.random(1, 999999))
    local c = assert(mcp.connect { command = { "sh", "-c", "sleep " .. m .. " & exec python3 '"
                                                           .. FAKE .. "'" } })
    local function count()
      local r = assert(baton.process.run{ "pgrep", "-f", "sleep " .. m })
      return select(2, r.stdout:gsub("%d+", ""))
    end
    assert.equal(1, count())
    local elapsed = H.timed(c.close, c, 300)
    assert.equal(0, count())
    assert.is_true(elapsed < 3000, "took " .. elapsed .. " ms")
  end))
end)

describe("baton.mcp misuse", function()
  it("raises for bad options", H.async(function()
    local F = "^baton%.mcp%.connect: bad argument #1 "
    H.raises(F .. "'opts' %(expected table, got nil%)", mcp.connect)
    H.raises(F .. "'command' %(expected a table of strings %(or url: an http%(s%) URL%), "
             .. "got nil%)", mcp.connect, {})
    H.raises(F .. "'command' %(expected a table of strings, got 'node server.js'%)",
             mcp.connect, { command = "node server.js" })
    H.raises(F .. "'command%[2%]' %(expected string, got 3%)", mcp.connect,
             { command = { "node", 3 } })
    H.raises(F .. "'timout_ms' %(unknown option%)", mcp.connect,
             { command = { "true" }, timout_ms = 10 })
    -- a typo is named before what is missing
    H.raises(F .. "'timout_ms' %(unknown option%)", mcp.connect, { timout_ms = 10 })
    H.raises(F .. "'timeout_ms' %(expected an integer number of milliseconds > 0, got 'soon'%)",
             mcp.connect, { command = { "true" }, timeout_ms = "soon" })
    H.raises(F .. "'on_log' %(expected function, got true%)", mcp.connect,
             { command = { "true" }, on_log = true })
    H.raises(F .. "'roots%[1%]' %(expected a table with a string uri, got table%)", mcp.connect,
             { command = { "true" }, roots = { { name = "x" } } })
    H.raises("^baton%.mcp%.dispatcher: bad argument #1 'client' %(expected baton%.mcp%.Client, "
             .. "got table%)", mcp.dispatcher, {})
    -- the position is the caller's, not a line of baton.mcp
    local ok, err = pcall(function() mcp.connect { command = { "true" }, timout_ms = 10 } end)
    assert.is_false(ok)
    assert.matches("^[^:]*mcp_spec%.lua:%d+: baton%.mcp%.connect: ", err)
  end))

  it("returns nil, message, 'io' for a program that does not exist", H.async(function()
    local c, msg, kind = mcp.connect { command = { "nosuchprog-baton-mcp" } }
    assert.is_nil(c)
    assert.equal("io", kind)
    assert.matches("nosuchprog%-baton%-mcp", msg)
  end))

  it("a server that exits at once fails the handshake with 'closed' and its stderr",
    H.async(function()
      local c, msg, kind, detail = mcp.connect { command = { "sh", "-c",
                                                             "echo 'cannot start' >&2; exit 2" } }
      assert.is_nil(c)
      assert.equal("closed", kind)
      assert.matches("^baton%.mcp%.connect: initialize failed: the server exited %(exit code 2%): "
                     .. "cannot start", msg)
      assert.equal(2, detail.code)
      assert.equal("cannot start", detail.stderr_tail)
    end))

  fake_it("raises for bad call arguments and for use after close", H.async(function()
    local c = assert(fake())
    local F = "^baton%.mcp%.client:call: "
    H.raises(F .. "bad argument #1 'tool' %(expected string, got 42%)", c.call, c, 42)
    H.raises(F .. "bad argument #2 'args' %(expected table or nil, got 'text'%)", c.call, c,
             "echo", "text")
    H.raises(F .. "bad argument #3 'timeout' %(unknown option%)", c.call, c, "echo", {},
             { timeout = 1 })
    H.raises(F .. "bad argument #3 'timeout_ms' %(expected an integer number of milliseconds "
             .. "> 0, got %-1%)", c.call, c, "echo", {}, { timeout_ms = -1 })
    H.raises(F .. "bad argument #3 'on_progress' %(expected function, got 1%)", c.call, c,
             "echo", {}, { on_progress = 1 })
    H.raises(F .. "bad argument #0 'self' %(expected baton%.mcp%.Client, got nil%)", c.call)
    H.raises("^baton%.mcp%.client:list_tools: bad argument #1 'opts' %(expected table, got 5%)",
             c.list_tools, c, 5)
    H.raises("^baton%.mcp%.client:close: bad argument #1 'grace_ms' %(expected an integer "
             .. "number of milliseconds >= 0, got 1%.5%)", c.close, c, 1.5)
    c:close()
    H.raises(F .. "used after it was closed", c.call, c, "echo", {})
    H.raises("^baton%.mcp%.client:list_tools: used after it was closed", c.list_tools, c)
    H.raises("^baton%.mcp%.client:notify: used after it was closed", c.notify, c, "x")
    assert.is_true(c:close())
  end))

  fake_it("a handler that waits for a reply is told why it cannot", H.async(function()
    local warnings = {}
    local c = assert(fake({}, { on_warning = function(m) warnings[#warnings + 1] = m end }))
    c:on("notifications/custom", function() c:call("echo", { text = "inside" }) end)
    assert(c:call("notify"))
    assert.matches("cannot wait for a reply inside a notification handler", warnings[1])
    c:close()
  end))
end)

-- server-everything in its Streamable HTTP mode, on a free port (PORT; a taken port makes
-- it exit at once, and another is tried). Returns the process and the endpoint's URL once
-- it answers (a GET without a session id is a 400).
local function http_server()
  for _ = 1, 5 do
    local port = math.random(20000, 60000)
    local proc = assert(baton.process.spawn { "node", EVERYTHING, "streamableHttp",
      env = { PORT = tostring(port), PATH = os.getenv("PATH"), HOME = os.getenv("HOME") } })
    local url = ("http://127.0.0.1:%d/mcp"):format(port)
    local deadline = baton.now() + 15000
    while baton.now() < deadline do
      local r = baton.http.request { url = url, timeout_ms = 1000 }
      if r and r.status == 400 then return proc, url end
      if proc:wait(50) then break end  -- it exited: the port was taken
    end
    proc:close(0)
  end
  error("server-everything (streamableHttp) did not start")
end

-- fn(url, proc) with a server running; the server is stopped however fn ends.
local function with_http_server(fn)
  return H.async(function()
    local proc, url = http_server()
    local ok, err = pcall(fn, url, proc)
    proc:kill("TERM")
    if not proc:wait(3000) then proc:kill("KILL"); proc:wait(3000) end
    proc:close()
    assert(ok, err)
  end)
end

local function json_object() return baton.json.object({}) end

describe("baton.mcp over Streamable HTTP against server-everything", function()
  real_it("handshakes with a session id, lists tools, calls echo and get-sum",
    with_http_server(function(url)
      local c = assert(mcp.connect { url = url, headers = { ["X-Test"] = "baton" } })
      assert.equal("mcp-servers/everything", c.server_info.name)
      assert.equal(mcp.SUPPORTED_VERSIONS[1], c.protocol_version)
      assert.is_string(c.session_id)
      assert.is_true(#c.session_id > 0)
      assert.is_nil(c:pid())
      assert.matches(url:gsub("%p", "%%%0"), tostring(c))
      assert.same(EVERYTHING_TOOLS, names(assert(c:list_tools())))
      assert.equal("Echo: hello, \u{2028} world",
                   mcp.text(assert(c:call("echo", { message = "hello, \u{2028} world" }))))
      assert.equal("The sum of 2 and 40 is 42.", mcp.text(assert(c:call("get-sum", { a = 2, b = 40 }))))
      assert.is_true(c:ping())
      assert.is_true(c:notify("notifications/roots/list_changed"))
      -- an unknown tool and bad arguments are tool_error; an unknown method is rpc_error
      local r, msg, kind = c:call("no-such-tool", {})
      assert.is_nil(r)
      assert.equal("tool_error", kind)
      assert.matches("no%-such%-tool", msg)
      r, msg, kind = c:call("get-sum", { a = "two" })
      assert.is_nil(r)
      assert.equal("tool_error", kind)
      local _, _, k2, err = c:request("no/such/method")
      assert.equal("rpc_error", k2)
      assert.equal(-32601, err.code)
      assert.equal("Echo: still", mcp.text(assert(c:call("echo", { message = "still" }))))
      -- a second client, a session of its own, an older protocol version
      local old = assert(mcp.connect { url = url, protocol_version = "2025-03-26" })
      assert.equal("2025-03-26", old.protocol_version)
      assert.is_true(old.session_id ~= c.session_id)
      assert.equal("Echo: old", mcp.text(assert(old:call("echo", { message = "old" }))))
      old:close()
      c:close()
    end))

  real_it("answers the server's requests (sampling, roots/list) that come over an SSE answer",
    with_http_server(function(url)
      local c = assert(mcp.connect { url = url, capabilities = { sampling = json_object() },
                                     roots = { { uri = "file:///srv/data", name = "data" } } })
      local asked
      c:handle("sampling/createMessage", function(params)
        asked = params.messages[1].content.text
        return { role = "assistant", model = "baton-test",
                 content = { type = "text", text = "hi from baton" } }
      end)
      local r = assert(c:call("trigger-sampling-request", { prompt = "ping" }))
      assert.matches("hi from baton", mcp.text(r))
      assert.matches("ping", asked)
      r = assert(c:call("get-roots-list", {}))
      assert.matches("file:///srv/data", mcp.text(r), 1, true)
      assert.is_true(c:stats().server_requests >= 2)
      c:close()
    end))

  real_it("16 calls in flight (16 POSTs) each come back to their own caller",
    with_http_server(function(url)
      local c = assert(mcp.connect { url = url })
      local g <close> = baton.group()
      for i = 1, 16 do
        g:spawn(function()
          return i, mcp.text(assert(c:call("echo", { message = "caller " .. i })))
        end)
      end
      baton.yield()
      local most = c:stats().in_flight
      for _, t in ipairs(g:join_all()) do
        assert.is_true(t.ok, t.error)
        local i, text = t:results()
        assert.equal("Echo: caller " .. i, text)
      end
      assert.equal(16, most)
      assert.equal(0, c:stats().in_flight)
      c:close()
    end))

  real_it("delivers progress over the SSE answer; a cancelled call returns at once",
    with_http_server(function(url)
      local c = assert(mcp.connect { url = url })
      local seen = {}
      local r = assert(c:call("trigger-long-running-operation", { duration = 0.5, steps = 5 }, {
        on_progress = function(progress, total) seen[#seen + 1] = { progress, total } end }))
      assert.matches("Long running operation completed", mcp.text(r))
      assert.same({ { 1, 5 }, { 2, 5 }, { 3, 5 }, { 4, 5 }, { 5, 5 } }, seen)

      local progressed = 0
      local t0 = baton.clock()
      local r2, msg, kind = baton.timeout(1200, c.call, c, "trigger-long-running-operation",
        { duration = 30, steps = 60 },
        { on_progress = function() progressed = progressed + 1 end })
      assert.is_nil(r2)
      assert.matches("^baton%.timeout: ", msg)
      assert.equal("timeout", kind)
      assert.is_true(progressed >= 1, "no progress before the cancel")
      assert.is_true(baton.clock() - t0 < 3000)
      assert.equal(0, c:stats().in_flight)

      -- a call's own deadline: the same, through the client's timeout
      t0 = baton.clock()
      local r3, _, kind3 = c:call("trigger-long-running-operation", { duration = 30, steps = 60 },
                                  { timeout_ms = 300 })
      assert.is_nil(r3)
      assert.equal("timeout", kind3)
      assert.is_true(baton.clock() - t0 < 2000)
      baton.sleep(50)
      assert.equal(1, baton.stats().transfers)  -- only the GET stream is left
      assert.equal("Echo: after", mcp.text(assert(c:call("echo", { message = "after" }))))
      c:close()
    end))

  real_it("close() ends the session and leaves no transfer and no task",
    with_http_server(function(url)
      local c = assert(mcp.connect { url = url })
      local sid = c.session_id
      local g <close> = baton.group()
      local slow = g:spawn(c.call, c, "trigger-long-running-operation", { duration = 30, steps = 30 })
      baton.sleep(100)
      assert.is_true(baton.stats().transfers >= 2)  -- the slow POST and the GET stream
      assert.is_true(c:close())
      assert.is_true(c:close())
      assert.equal(0, baton.stats().transfers)
      local ok, r, msg, kind = slow:join(1000)
      assert.is_true(ok)
      assert.is_nil(r)
      assert.equal("closed", kind, msg)
      assert.equal(0, H.settle().tasks)
      H.raises("^baton%.mcp%.client:call: used after it was closed", c.call, c, "echo",
               { message = "x" })
      -- the session is gone on the server: its id is refused
      local resp = assert(baton.http.request { url = url, method = "POST", timeout_ms = 5000,
        headers = { ["Content-Type"] = "application/json", Accept = "application/json, text/event-stream",
                    ["Mcp-Session-Id"] = sid },
        body = '{"jsonrpc":"2.0","id":1,"method":"ping"}' })
      assert.is_true(resp.status == 404 or resp.status == 400, "status " .. resp.status)

      -- a session the server ended (here by a DELETE of our own): the calls fail
      local c2 = assert(mcp.connect { url = url, listen = false })
      resp = assert(baton.http.request { url = url, method = "DELETE", timeout_ms = 5000,
        headers = { ["Mcp-Session-Id"] = c2.session_id, ["MCP-Protocol-Version"] = c2.protocol_version } })
      assert.equal(200, resp.status)
      local r2, msg2, kind2, detail = c2:call("echo", { message = "gone" })
      assert.is_nil(r2)
      -- the MCP spec says 404 ("closed"); server-everything answers 400 ("protocol")
      assert.is_true(kind2 == "closed" or kind2 == "protocol", kind2 .. ": " .. msg2)
      if kind2 == "protocol" then assert.equal(400, detail.status) end
      c2:close()
      assert.equal(0, baton.stats().transfers)
    end))

  it("an endpoint that refuses: baton.http's 'connect' at once; misuse raises", H.async(function()
    local c, msg, kind = mcp.connect { url = "http://127.0.0.1:1/mcp", timeout_ms = 2000 }
    assert.is_nil(c)
    assert.equal("connect", kind)
    assert.matches("^baton%.mcp%.connect: initialize failed: POST initialize: ", msg)
    assert.equal(0, baton.stats().transfers)
    local F = "^baton%.mcp%.connect: bad argument #1 "
    H.raises(F .. "'url' %(expected only one of command and url, got both%)", mcp.connect,
             { url = "http://x/mcp", command = { "x" } })
    H.raises(F .. "'url' %(expected an http:// or https:// URL, got 'ftp://x'%)", mcp.connect,
             { url = "ftp://x" })
    H.raises(F .. "'cwd' %(expected nil with url %(it is for command%), got '/'%)", mcp.connect,
             { url = "http://x/mcp", cwd = "/" })
    H.raises(F .. "'headers' %(expected nil with command %(it is for url%), got table%)",
             mcp.connect, { command = { "x" }, headers = {} })
    H.raises(F .. "'headers' %(expected a table of strings to strings, got 1%)", mcp.connect,
             { url = "http://x/mcp", headers = { A = 1 } })
  end))
end)

local FAKE_HTTP = FIX .. "/fake_http_server.py"

describe("baton.mcp over Streamable HTTP against a scripted server", function()
  local function with_fake_http(fn, get_status)
    return H.async(function()
      local proc = assert(baton.process.spawn { "python3", FAKE_HTTP, get_status })
      local port = assert(proc:read_line(10000))
      local ok, err = pcall(fn, "http://127.0.0.1:" .. port .. "/mcp")
      proc:close(0)
      assert(ok, err)
    end)
  end

  fake_it("JSON answers, extra headers, SSE answers; failures have clear kinds",
    with_fake_http(function(url)
      local logs = {}
      local c = assert(mcp.connect { url = url, headers = { Authorization = "Bearer t0k" },
                                     on_log = function(p) logs[#logs + 1] = p.data end })
      assert.equal("fake-session-1", c.session_id)
      assert.equal("Echo", mcp.text(assert(c:call("echo", { text = "Echo" }))))
      assert.equal("Bearer t0k", mcp.text(assert(c:call("header", { name = "Authorization" }))))
      assert.equal("fake-session-1", mcp.text(assert(c:call("header", { name = "Mcp-Session-Id" }))))
      assert.equal(c.protocol_version,
                   mcp.text(assert(c:call("header", { name = "MCP-Protocol-Version" }))))
      local seen = {}
      assert.equal("streamed", mcp.text(assert(c:call("sse", {}, {
        on_progress = function(p, t) seen[#seen + 1] = { p, t } end }))))
      assert.same({ { 1, 2 } }, seen)
      assert.same({ "on the way" }, logs)

      local r, msg, kind = c:call("garbage")
      assert.is_nil(r)
      assert.equal("protocol", kind)
      assert.matches("not JSON", msg)
      r, msg, kind = c:call("fail500")
      assert.equal("io", kind)
      assert.matches("HTTP 500: boom", msg)
      r, msg, kind = c:call("text")
      assert.equal("protocol", kind)
      assert.matches("content%-type 'text/html'", msg)
      r, msg, kind = c:call("sse_cut")
      assert.equal("io", kind)
      assert.matches("ended before the response", msg)
      r, msg, kind = c:call("nope")
      assert.equal("tool_error", kind)
      assert.matches("Unknown tool nope", msg)
      assert.equal(0, c:stats().in_flight)
      assert.equal("still", mcp.text(assert(c:call("echo", { text = "still" }))))

      c:close()
      assert.equal(0, baton.stats().transfers)
    end))

  for _, status in ipairs { 400, 404, 405, 500 } do
    local quiet = status ~= 500
    fake_it(("a server answering %d to the GET stream: %s"):format(status,
              quiet and "no warning (it offers none)" or "one warning"),
      with_fake_http(function(url)
        local warnings = {}
        local c = assert(mcp.connect { url = url, on_warning = function(m) warnings[#warnings + 1] = m end })
        local deadline = baton.now() + 5000
        while mcp.text(assert(c:call("refused_gets"))) == "0" and baton.now() < deadline do
          baton.sleep(10)
        end
        assert.equal("1", mcp.text(assert(c:call("refused_gets"))))
        baton.sleep(100)   -- the listener has had its answer: a warning would be out by now
        assert.equal("still", mcp.text(assert(c:call("echo", { text = "still" }))))
        if quiet then
          assert.same({}, warnings)
        else
          assert.equal(1, #warnings)
          assert.matches("GET stream", warnings[1])
        end
        c:close()
      end, tostring(status)))
  end

  fake_it("a 404 to a session id: a new session with the same handshake, the call retried once",
    with_fake_http(function(url)
      local warnings = {}
      local c = assert(mcp.connect { url = url, on_warning = function(m) warnings[#warnings + 1] = m end })
      assert.equal("renewed fake-session-2", mcp.text(assert(c:call("expire"))))
      assert.equal(1, c:stats().renewed)
      assert.matches("a new session began", warnings[1])
      assert.equal("fake-session-2", mcp.text(assert(c:call("header", { name = "Mcp-Session-Id" }))))
      -- a server that ends every new session too: the client is dead ("closed")
      local r, msg, kind = c:call("expire_always")
      assert.is_nil(r)
      assert.equal("closed", kind)
      assert.matches("ended the session", msg)
      r, msg, kind = c:call("echo", { text = "x" })
      assert.equal("closed", kind)
      c:close()
      assert.equal(0, baton.stats().transfers)
    end))

  fake_it("an event stream broken after an event id is resumed (GET, Last-Event-ID) after "
          .. "retry:, without losing or repeating an event", with_fake_http(function(url)
      local c = assert(mcp.connect { url = url })
      local seen = {}
      local t0 = baton.now()
      local r = assert(c:call("resumable", {}, {
        on_progress = function(p) seen[#seen + 1] = p end }))
      local elapsed = baton.now() - t0
      assert.equal("resumed", mcp.text(r))
      assert.same({ 1, 2 }, seen)                       -- each progress once, in order
      assert.equal(1, c:stats().resumed)
      assert.is_true(elapsed >= 140, "resumed after " .. elapsed .. " ms, before retry: 150")
      assert.equal("r1", mcp.text(assert(c:call("gets"))))  -- one GET, from the last id
      assert.equal(0, c:stats().in_flight)
      c:close()
      assert.equal(0, baton.stats().transfers)
    end))
end)

-- SEP-1034 defaults on an accepted elicitation's content (baton.mcp.session): filled from
-- the requested schema's properties, an object; a list there has no fields to fill.
describe("baton.mcp elicitation defaults", function()
  local S = require "baton.mcp.session"
  it("fills what the handler left out, keeps what it gave", function()
    local res = { action = "accept", content = { a = 1 } }
    S.apply_defaults({ requestedSchema = { properties = { a = { default = 9 }, b = { default = "x" } } } },
                     res)
    assert.equal('{"action":"accept","content":{"a":1,"b":"x"}}', baton.json.encode(res))
  end)
  it("sends an object when a hostile schema's properties is a list", function()
    local res = { action = "accept" }
    S.apply_defaults({ requestedSchema = { properties = { { default = 1 }, { default = 2 } } } }, res)
    assert.equal('{"action":"accept","content":{}}', baton.json.encode(res))
  end)
end)
