-- Shared by the specs, so that each exists once:
-- * running a spec body as baton's main task and proving it left nothing behind (no other
--   task alive, no armed timer, no child process), the way luv's test helper walks the
--   loop's handles: H.async, H.settle, H.assert_clean, H.raises, H.timed;
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
