-- Shared by the specs, so that each exists once:
-- * running a spec body as baton's main task and proving it left nothing behind (no other
--   task alive, no armed timer, no child process), the way luv's test helper walks the
--   loop's handles: H.async, H.settle, H.assert_clean, H.raises, H.timed, H.stall_ms;
-- * the environment ctest sets (H.SRC, H.BUILD, H.EXE, H.LUA, H.SANITIZED), shell quoting,
--   files and directories (H.q, H.slurp, H.write_file, H.write_temp, H.temp_dir,
--   H.remove_dir, H.exists, H.have, H.alive, H.open_fds) and running the `baton` executable
--   (H.run);
-- * the fixture servers: the local HTTP server (H.http_server) and the MCP servers (the
--   real npm ones and the scripted fake: H.mcp).
-- Nothing here is a mock: the servers are real processes, stopped by the spec that started
-- them.
local baton = require "baton"

local H = {}

-- Counts of what is alive in the runtime, minus the calling main task.
function H.leftovers()
  collectgarbage()
  local s = baton.stats()
  return { tasks = s.tasks - (baton.current() and 1 or 0), timers = s.timers,
           processes = s.processes, ready = s.ready, handles = s.handles }
end

-- Closing a process or a pipe is asynchronous (libuv), and an aborted task unwinds on its
-- next turn: give the loop a bounded while to finish what is already under way, then
-- require that nothing is left.
function H.settle(ms)
  local deadline = baton.now() + (ms or 3000)
  local l = H.leftovers()
  while (l.processes > 0 or l.handles > 0 or l.timers > 0 or l.tasks > 0)
    and baton.now() < deadline do
    baton.sleep(1)
    l = H.leftovers()
  end
  return l
end

function H.assert_clean()
  local l = baton.current() and H.settle() or H.leftovers()
  assert(l.tasks == 0 and l.timers == 0 and l.processes == 0 and l.handles == 0,
         string.format("left behind: %d tasks, %d timers, %d processes, %d handles",
                       l.tasks, l.timers, l.processes, l.handles))
end

-- it("...", H.async(function() ... end)): the body runs inside baton.run and must clean up.
function H.async(fn)
  return function()
    baton.run(function()
      fn()
      H.assert_clean()
    end)
    local s = baton.stats()
    assert(s.tasks == 0 and s.timers == 0 and s.processes == 0 and s.handles == 0,
           "runtime not empty after run")
  end
end

-- Asserts that fn(...) raises an error whose text matches `pattern`.
function H.raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching " .. pattern)
  assert(tostring(err):match(pattern), ("error %q does not match %q"):format(tostring(err), pattern))
end

-- The error convention (docs/errors.md). A failure of the world is `nil, message, kind`
-- and optionally a detail table: H.assert_failure(fname, kind, f(...)) checks that shape
-- (the message starts with "<fname>: ", kind is `kind` and one of baton.kinds; kind nil:
-- any kind of the table) and returns the message, the kind and the detail.
function H.is_kind(k)
  for _, w in ipairs(baton.kinds) do
    if k == w then return true end
  end
  return false
end

function H.assert_failure(fname, kind, ...)
  local n, v, msg, k, detail = select("#", ...), ...
  local what = ("%s: %s"):format(fname, tostring(msg))
  assert(n == 3 or n == 4, ("%s: expected nil, message, kind[, detail], got %d values")
         :format(what, n))
  assert(v == nil, what .. ": the first value is not nil but " .. tostring(v))
  assert(type(msg) == "string", what .. ": the message is a " .. type(msg))
  assert(msg:sub(1, #fname + 2) == fname .. ": ",
         ("message %q does not start with %q"):format(msg, fname .. ": "))
  assert(H.is_kind(k), what .. ": kind " .. tostring(k) .. " is not in baton.kinds")
  assert(kind == nil or k == kind, ("%s: kind %s, expected %s"):format(what, tostring(k), kind))
  assert(n == 3 or detail == nil or type(detail) == "table",
         what .. ": the detail is a " .. type(detail))
  return msg, k, detail
end

-- Asserts that fn(...) raises the misuse error "<fname>: bad argument #n 'name' (expected
-- ..." (and, if given, that the text in parentheses matches `rest`); returns the message.
function H.raises_misuse(fname, n, name, rest, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, ("expected %s to raise bad argument #%d '%s'"):format(fname, n, name))
  err = tostring(err)
  local head = ("%s: bad argument #%d '%s' ("):format(fname, n, name)
  assert(err:find(head, 1, true), ("error %q does not contain %q"):format(err, head))
  if rest then
    assert(err:match(rest), ("error %q does not match %q"):format(err, rest))
  end
  return err
end

-- docs/errors.md, read once: `kinds`, the words of its "Kinds" table in order, and
-- `sections[title]`, for each "## title" section holding a table of functions, the kinds
-- that table lists for each function (a set; "as `other`" rows inherit other's kinds).
local errors_doc
function H.errors_doc()
  if errors_doc then return errors_doc end
  local path = (os.getenv("BATON_SRC") or ".") .. "/docs/errors.md"
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  local doc = { kinds = {}, sections = {} }
  local section, iskind = nil, {}
  for line in text:gmatch("[^\n]*") do
    local title = line:match("^## (.+)$")
    if title then section = title end
    if section == "Kinds" then
      local k = line:match("^| `([%w_]+)` |")
      if k then
        doc.kinds[#doc.kinds + 1] = k
        iskind[k] = true
      end
    elseif section and line:match("^| `baton") then
      local names, rest = line:match("^| (.-) | (.*) |$")
      local kinds = {}
      local like = rest:match("^as `([%w_.:]+)`")
      if like then
        for k in pairs(doc.sections[section][like] or {}) do kinds[k] = true end
      end
      for w in rest:gmatch("`([%w_]+)`") do
        if iskind[w] then kinds[w] = true end
      end
      doc.sections[section] = doc.sections[section] or {}
      for name in names:gmatch("`([%w_.:]+)`") do doc.sections[section][name] = kinds end
    end
  end
  errors_doc = doc
  return doc
end

-- Table-driven checks of a section of docs/errors.md, made with busted's `it` (passed in:
-- busted gives it to spec files only). rows: { fname, kind, fn, detail = t
-- | function(detail) } — an `it` each: fn runs inside a task (H.async: it must leave
-- nothing behind) and must return a failure of that shape (H.assert_failure), whose detail
-- has every field of t (or passes the function). Then one `it` checks that every
-- (function, kind) the section lists has a row, or a reason in `exempt["fname kind"]`.
function H.failure_rows(it, section, rows, exempt)
  for _, row in ipairs(rows) do
    local fname, kind, fn, want = row[1], row[2], row[3], row.detail
    it(("%s returns %s"):format(fname, kind), H.async(function()
      local _, _, detail = H.assert_failure(fname, kind, fn())
      if type(want) == "function" then
        want(detail)
      elseif want ~= nil then
        assert(type(detail) == "table", fname .. " " .. kind .. ": no detail table")
        for k, v in pairs(want) do
          assert(detail[k] == v, ("%s %s: detail.%s is %s, expected %s")
                 :format(fname, kind, k, tostring(detail[k]), tostring(v)))
        end
      end
    end))
  end
  it("covers every failure docs/errors.md lists under '" .. section .. "'", function()
    local listed = assert(H.errors_doc().sections[section], "no section " .. section)
    local covered = {}
    for _, row in ipairs(rows) do covered[row[1] .. " " .. row[2]] = true end
    local missing = {}
    for fname, kinds in pairs(listed) do
      for kind in pairs(kinds) do
        local key = fname .. " " .. kind
        if not covered[key] and not (exempt or {})[key] then missing[#missing + 1] = key end
      end
    end
    table.sort(missing)
    assert(#missing == 0, "no row provokes: " .. table.concat(missing, ", "))
    for key in pairs(covered) do
      local fname, kind = key:match("^(%S+) (%S+)$")
      assert(listed[fname] and listed[fname][kind],
             key .. " is provoked but docs/errors.md does not list it")
    end
  end)
end

-- Waits until fn() is true, a turn of the loop at a time (at most 200 turns).
function H.until_true(fn)
  for _ = 1, 200 do
    if fn() then return end
    baton.yield()
  end
  error("condition never held", 2)
end

-- Elapsed milliseconds of fn(), with its results.
function H.timed(fn, ...)
  local t0 = baton.clock()
  local r = table.pack(fn(...))
  return baton.clock() - t0, table.unpack(r, 1, r.n)
end

-- ---- the environment ctest sets (spec/tests.cmake) ------------------------------------

H.SRC = os.getenv("BATON_SRC") or "."
H.BUILD = os.getenv("BATON_BUILD") or H.SRC .. "/build"
H.EXE = os.getenv("BATON_EXE") or "build/baton"
H.LUA = os.getenv("BATON_LUA") or "lua5.4"  -- the sanitizer build's interpreter
-- Under the sanitizers (memory bounds and operation counts are looser there).
H.SANITIZED = (os.getenv("BATON_CFLAGS") or ""):find("sanitize") ~= nil

-- ---- shell, files, processes ----------------------------------------------------------

-- s quoted for sh.
function H.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- The contents of a file, or nil when it cannot be read; `remove`: delete it afterwards.
function H.slurp(path, remove)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  if remove then os.remove(path) end
  return s
end

function H.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- A new temporary file holding `text`; its path.
function H.write_temp(text)
  return H.write_file(os.tmpname(), text)
end

-- A new empty temporary directory, its path with symlinks resolved (servers that resolve
-- the paths they are given then report the same path).
function H.temp_dir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. H.q(d)))
  local p = assert(io.popen("realpath " .. H.q(d)))
  local real = p:read("l")
  p:close()
  return real or d
end

function H.remove_dir(d)
  os.execute("rm -rf " .. H.q(d))
end

function H.exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

-- Whether a program is on PATH.
function H.have(prog)
  return os.execute("command -v " .. H.q(prog) .. " >/dev/null 2>&1") == true
end

-- Whether a process with this pid exists (kill -0).
function H.alive(pid)
  return os.execute("kill -0 " .. math.tointeger(pid) .. " 2>/dev/null") == true
end

-- Open file descriptors of this process (sockets included); nil without LuaFileSystem.
function H.open_fds()
  local ok, lfs = pcall(require, "lfs")
  if not ok then return nil end
  local n = 0
  for _ in lfs.dir("/proc/self/fd") do n = n + 1 end
  return n
end

-- Runs fn(...) beside a task that sleeps `tick` ms (default 2) in a loop; returns the longest
-- the ticker waited between two wakes (ms: the worst the loop was held), then fn's results.
function H.stall_ms(tick, fn, ...)
  local worst, last, stop = 0, baton.clock(), false
  local ticker = baton.spawn(function()
    while not stop do
      baton.sleep(tick or 2)
      local now = baton.clock()
      if now - last > worst then worst = now - last end
      last = now
    end
  end)
  local r = table.pack(fn(...))
  stop = true
  ticker:join()
  return worst, table.unpack(r, 1, r.n)
end

-- Runs `baton <args>` (args already quoted as needed) and returns { code =, out =, err = },
-- code 128 + n when signal n ended it. opts: stdin (a file; /dev/null by default, so a
-- terminal never makes it interactive), env (shell text put before the command, e.g.
-- "A=1 B=2"), cwd, timeout (seconds, through timeout(1): a hung run is killed).
function H.run(args, opts)
  opts = opts or {}
  local out, err = os.tmpname(), os.tmpname()
  local cmd = string.format("%s%s%s%s %s <%s >%s 2>%s",
                            opts.cwd and ("cd " .. H.q(opts.cwd) .. " && ") or "",
                            opts.env and (opts.env .. " ") or "",
                            opts.timeout and ("timeout " .. opts.timeout .. " ") or "",
                            H.q(H.EXE), args, H.q(opts.stdin or "/dev/null"), H.q(out), H.q(err))
  local _, how, code = os.execute(cmd)
  return { code = how == "exit" and code or 128 + code, out = H.slurp(out, true) or "",
           err = H.slurp(err, true) or "" }
end

-- ---- the local HTTP server (spec/fixtures/http/server.py) ------------------------------

local Server = {}
Server.__index = Server

-- An HTTP server on 127.0.0.1, not started: server:start() in a lazy_setup,
-- server:stop() in the lazy_teardown. opts.tls = true: HTTPS with a self-signed
-- certificate made for it (server.cert, its PEM file, is what a client must trust).
function H.http_server(opts)
  return setmetatable({ https = opts and opts.tls or false }, Server)
end

function Server:start()
  local args = ""
  if self.https then
    self.dir = H.temp_dir()
    self.cert, self.key = self.dir .. "/cert.pem", self.dir .. "/key.pem"
    assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 1 "
      .. "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null")
      :format(H.q(self.key), H.q(self.cert))), "openssl could not make a certificate")
    args = " --tls " .. H.q(self.cert) .. " " .. H.q(self.key)
  end
  self.pipe = assert(io.popen("exec python3 " .. H.q(H.SRC .. "/spec/fixtures/http/server.py")
                              .. args))
  local line = assert(self.pipe:read("l"), "the fixture server did not start")
  local port, pid = line:match("^PORT (%d+) PID (%d+)$")
  self.port, self.pid = assert(tonumber(port), line), tonumber(pid)
  return self
end

function Server:stop()
  if self.pid then os.execute("kill " .. self.pid) end
  if self.pipe then self.pipe:close() end
  if self.dir then H.remove_dir(self.dir) end
  self.pid, self.pipe, self.dir = nil, nil, nil
end

-- The URL of `path` on this server.
function Server:url(path)
  return ("%s://127.0.0.1:%d%s"):format(self.https and "https" or "http", self.port, path)
end

-- H.async, plus: no HTTP transfer left in the multi handle.
function H.http_async(fn)
  return H.async(function()
    fn()
    assert(baton.stats().transfers == 0, "HTTP transfers left in flight")
  end)
end

-- ---- a private redis-server ------------------------------------------------------------

local Redis = {}
Redis.__index = Redis

-- A redis-server of this run's own: a free port on 127.0.0.1 and a unix socket in a temp
-- dir, no persistence (--save '' --appendonly no). H.redis_server() → server (started,
-- ready: server.port, server.url, server.socket, server.pid) | nil, reason when
-- redis-server is not installed (the caller skips loudly). server:stop() in a teardown;
-- server:kill() (SIGKILL) and server:start() again for outages.
function H.redis_server()
  if not H.have("redis-server") then
    return nil, "redis-server is not installed (scripts/deps.sh): the Redis specs are SKIPPED"
  end
  return setmetatable({ dir = H.temp_dir() }, Redis):start()
end

function Redis:start()
  if not self.port then
    local p = assert(io.popen("python3 -c 'import socket; s=socket.socket(); "
                              .. "s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'"))
    self.port = assert(tonumber(p:read("l")))
    p:close()
  end
  self.socket = self.dir .. "/redis.sock"
  self.url = ("redis://127.0.0.1:%d"):format(self.port)
  local cmd = ("cd %s && exec redis-server --port %d --bind 127.0.0.1 --unixsocket %s "
               .. "--save '' --appendonly no --daemonize no --loglevel warning "
               .. ">redis.log 2>&1 & echo $!"):format(H.q(self.dir), self.port, H.q(self.socket))
  local p = assert(io.popen(cmd))
  self.pid = assert(tonumber(p:read("l")))
  p:close()
  for _ = 1, 500 do
    if os.execute(("redis-cli -p %d ping >/dev/null 2>&1"):format(self.port)) == true then
      return self
    end
    os.execute("sleep 0.01")
  end
  error("redis-server did not start: " .. (H.slurp(self.dir .. "/redis.log") or ""))
end

-- Whether the server's process is gone (a zombie nobody reaps counts as gone).
local function gone(pid)
  local f = io.open("/proc/" .. math.tointeger(pid) .. "/stat")
  if not f then return true end
  local st = f:read("a") or ""
  f:close()
  return st:match("^%d+ %b() (%a)") == "Z"
end

-- Ends the server with SIGKILL (no goodbye to the clients) and waits until it is gone.
function Redis:kill()
  if self.pid then
    os.execute("kill -9 " .. self.pid)
    for _ = 1, 300 do if gone(self.pid) then break end os.execute("sleep 0.01") end
  end
  self.pid = nil
end

function Redis:stop()
  if self.pid then
    os.execute("kill " .. self.pid)
    for _ = 1, 300 do if gone(self.pid) then break end os.execute("sleep 0.01") end
  end
  self.pid = nil
  if self.dir then H.remove_dir(self.dir) end
  self.dir = nil
end

-- A message no one can miss in the output of a run (also for the Redis specs).
function H.loud(who, msg)
  io.stderr:write(("\n" .. ("!"):rep(78) .. "\n!!! %s: %s\n" .. ("!"):rep(78) .. "\n")
                  :format(who, msg))
end

-- ---- the MCP servers ---------------------------------------------------------------------
-- The real reference servers from npm (server-everything, server-filesystem, versions
-- pinned in spec/fixtures/mcp/package-lock.json; they need node) and the scripted fake
-- server (spec/fixtures/mcp/fake_server.py; it needs python3).

local MCP_FIX = H.SRC .. "/spec/fixtures/mcp"
local MCP_NM = MCP_FIX .. "/node_modules/@modelcontextprotocol"
H.mcp = {
  FIX = MCP_FIX,
  EVERYTHING = MCP_NM .. "/server-everything/dist/index.js",
  FILESYSTEM = MCP_NM .. "/server-filesystem/dist/index.js",
  FAKE = MCP_FIX .. "/fake_server.py",
}

-- A message no one can miss in the output of a run.
local function loud(who, msg)
  io.stderr:write(("\n" .. ("!"):rep(78) .. "\n!!! %s: %s\n" .. ("!"):rep(78) .. "\n")
                  :format(who, msg))
end

-- busted's `it` when reason is nil, else a function that marks the spec pending with the
-- reason. (busted's functions are in the spec files' environment, not this module's: its
-- module has them.)
function H.gated(reason)
  local busted = require "busted"
  if not reason then return busted.it end
  return function(name) busted.pending(name .. " -- " .. reason) end
end

-- real_it, fake_it: `it` for the specs against the real servers and against the fake one,
-- or pending ones (with a loud message from `who`) when what they need is missing. The
-- real servers are installed (npm ci) when they are missing and npm can.
function H.mcp.gates(who)
  local M = H.mcp
  local real_reason
  if not H.have("node") then
    real_reason = "node is not installed: the specs against the real MCP servers are SKIPPED"
  elseif not (H.exists(M.EVERYTHING) and H.exists(M.FILESYSTEM)) then
    if H.have("npm") then
      os.execute("cd " .. H.q(M.FIX) .. " && npm ci --no-audit --no-fund --loglevel=error >&2")
    end
    if not (H.exists(M.EVERYTHING) and H.exists(M.FILESYSTEM)) then
      real_reason = "the MCP servers are not installed (npm ci in spec/fixtures/mcp failed): "
                    .. "the specs against them are SKIPPED"
    end
  end
  if real_reason then loud(who, real_reason) end
  local fake_reason = not H.have("python3") and "python3 is missing: the fake-server specs are SKIPPED"
  if fake_reason then loud(who, fake_reason) end
  return H.gated(real_reason), H.gated(fake_reason)
end

-- Connects to server-everything over stdio; opts as mcp.connect's (command is set).
function H.mcp.everything(opts)
  opts = opts or {}
  opts.command = { "node", H.mcp.EVERYTHING, "stdio" }
  return assert(require("baton.mcp").connect(opts))
end

-- Connects to server-filesystem over stdio, allowed to see `dir`.
function H.mcp.filesystem(dir, opts)
  opts = opts or {}
  opts.command = { "node", H.mcp.FILESYSTEM, dir }
  return assert(require("baton.mcp").connect(opts))
end

-- mcp.connect to the fake server run with `args` (its flags, see fake_server.py): the
-- client | nil, message, kind.
function H.mcp.fake(args, opts)
  opts = opts or {}
  opts.command = { "python3", H.mcp.FAKE, table.unpack(args or {}) }
  return require("baton.mcp").connect(opts)
end

return H
