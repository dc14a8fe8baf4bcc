-- baton.process: run a program to completion or drive it through a Process object; argv
-- only, never a shell. Timeouts, output limits, abort and collection leave no child behind.
local baton = require "baton"
local H = require "spec.helper"

local process = baton.process

local alive = H.alive  -- whether a process with this pid exists (kill -0)

-- Waits (up to 10 s) until the runtime has no child process and no handle left.
local function settle()
  local deadline = baton.now() + 10000
  local s = baton.stats()
  while (s.processes > 0 or s.handles > 0) and baton.now() < deadline do
    baton.sleep(10)
    s = baton.stats()
  end
  assert.equal(0, s.processes)
  assert.equal(0, s.handles)
end

-- Polls (up to 10 s) until the file holds a pid written by a child; returns it.
local function read_pid(path)
  local deadline = baton.now() + 10000
  while baton.now() < deadline do
    local f = io.open(path)
    local pid = f and tonumber(f:read("l"))
    if f then f:close() end
    if pid then return pid end
    baton.sleep(10)
  end
  error("the child never wrote its pid to " .. path)
end

-- H.async, then waits for closed procs to be reaped: close() never waits, so a proc closed
-- by a <close> variable at the end of the body is still being reaped when the body returns.
local function async(fn)
  return H.async(function()
    fn()
    settle()
  end)
end

-- A number no other process on the machine has in its command line, for `sleep`: the
-- base, then random fractional digits ("41.123456").
local function marker(base)
  return string.format("%d.%06d", base, math.random(1, 999999))
end

-- The pids of live processes whose command line contains `s` (pgrep -f; a zombie has no
-- command line, so it does not count).
local function running(s)
  local r = assert(process.run{ "pgrep", "-f", s })
  local pids = {}
  for pid in r.stdout:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

-- Polls (up to 10 s) until at least n processes match `s`.
local function wait_running(s, n)
  local deadline = baton.now() + 10000
  while #running(s) < n do
    if baton.now() > deadline then error("never saw " .. n .. " processes matching " .. s) end
    baton.sleep(10)
  end
end

-- Polls (up to `ms`, 5 s by default) until no process matches `s`; whether none does.
local function gone(s, ms)
  local deadline = baton.now() + (ms or 5000)
  while #running(s) > 0 do
    if baton.now() > deadline then return false end
    baton.sleep(20)
  end
  return true
end

-- A field of /proc/self/status in kB ("VmRSS", "VmHWM").
local function status_kb(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

-- Reads stdout to EOF; returns the number of bytes.
local function drain(p)
  local total = 0
  while true do
    local s = p:read()
    if not s then return total end
    total = total + #s
  end
end

describe("baton.process.run", function()
  it("returns the exit code, signal 0 and both outputs", H.async(function()
    local r = process.run{ "sh", "-c", "echo out; echo err >&2; exit 3" }
    assert.same({ code = 3, signal = 0, stdout = "out\n", stderr = "err\n" }, r)
  end))

  it("reports a zero exit code for success", H.async(function()
    local r = process.run{ "true" }
    assert.equal(0, r.code)
    assert.equal("", r.stdout)
  end))

  it("passes stdin through to the child", H.async(function()
    local r = process.run{ "cat", stdin = "hello\nworld" }
    assert.equal("hello\nworld", r.stdout)
  end))

  it("passes a large stdin through while reading the output (no pipe deadlock)",
    H.async(function()
      local input = string.rep("0123456789abcdef", 200000)  -- 3.2 MB
      local r = process.run{ "cat", stdin = input }
      assert.equal(#input, #r.stdout)
      assert.is_true(r.stdout == input)
    end))

  it("gives the child an empty stdin when none is given", H.async(function()
    local r = process.run{ "cat" }
    assert.equal(0, r.code)
    assert.equal("", r.stdout)
  end))

  it("runs the child in cwd", H.async(function()
    local r = process.run{ "pwd", cwd = "/" }
    assert.equal("/\n", r.stdout)
  end))

  it("replaces the environment with env", H.async(function()
    local r = process.run{ "sh", "-c", 'echo "$FOO:${HOME-unset}"',
                           env = { FOO = "bar", PATH = os.getenv("PATH") } }
    assert.equal("bar:unset\n", r.stdout)
  end))

  it("accepts numbers as env values", H.async(function()
    local r = process.run{ "sh", "-c", 'echo "$N"', env = { N = 42, PATH = os.getenv("PATH") } }
    assert.equal("42\n", r.stdout)
  end))

  it("returns nil, message, 'io' for a program that does not exist", H.async(function()
    local r, msg, kind = process.run{ "nosuchprog-baton-spec" }
    assert.is_nil(r)
    assert.equal("baton.process.run: cannot start 'nosuchprog-baton-spec': "
                 .. "no such file or directory", msg)
    assert.equal("io", kind)
  end))

  it("returns nil, message, 'io' for a cwd that does not exist", H.async(function()
    local r, msg, kind = process.run{ "true", cwd = "/nonexistent/baton-spec" }
    assert.is_nil(r)
    assert.matches("/nonexistent/baton-spec", msg, 1, true)
    assert.equal("io", kind)
  end))

  it("on timeout_ms after the child exited, says that what it started held the output",
    H.async(function()
      -- the grandchild leaves the child's process group (setsid) with stdout open
      local msg = H.assert_failure("baton.process.run", "timeout",
        process.run { "sh", "-c", "setsid sleep 2 & exit 3", timeout_ms = 300 })
      assert.equal("baton.process.run: 'sh' exited (code 3), but its output was still open "
                   .. "after 300 ms: a process it started holds it", msg)
      assert.equal(0, baton.stats().processes)
    end))

  it("kills the child on timeout_ms, returns nil, msg, 'timeout', detail and leaves no child",
    H.async(function()
      local path = os.tmpname()
      local r = table.pack(H.timed(process.run,
        { "sh", "-c", 'echo $$ > "$1"; exec sleep 30', "sh", path, timeout_ms = 200 }))
      local elapsed = r[1]
      local msg, _, d = H.assert_failure("baton.process.run", "timeout", table.unpack(r, 2, r.n))
      assert.equal("baton.process.run: 'sh' did not exit within 200 ms", msg)
      assert.equal("sh", d.argv0)
      assert.equal(200, d.timeout_ms)
      assert.is_number(d.pid)
      assert.is_true(elapsed < 10000)
      assert.equal(0, baton.stats().processes)  -- reaped before run returned
      local pid = read_pid(path)
      os.remove(path)
      assert.is_false(alive(pid))
    end))

  it("kills a child that ignores SIGTERM with SIGKILL after the grace period",
    H.async(function()
      local r = table.pack(H.timed(process.run,
        { "sh", "-c", 'trap "" TERM; exec sleep 30', timeout_ms = 100 }))
      local elapsed = r[1]
      H.assert_failure("baton.process.run", "timeout", table.unpack(r, 2, r.n))
      assert.is_true(elapsed >= 1900, "returned after " .. elapsed .. " ms")
      assert.is_true(elapsed < 15000)
      assert.equal(0, baton.stats().processes)
    end))

  it("reports the signal of a child killed by a signal, with code 128 + signal",
    H.async(function()
      local r = process.run{ "sh", "-c", "kill -9 $$" }
      assert.equal(9, r.signal)
      assert.equal(137, r.code)
      r = process.run{ "sh", "-c", "kill -TERM $$" }
      assert.equal(15, r.signal)
      assert.equal(143, r.code)
    end))

  it("delivers a large output whole", H.async(function()
    local r = process.run{ "head", "-c", "5000000", "/dev/zero" }
    assert.equal(0, r.code)
    assert.equal(5000000, #r.stdout)
    assert.is_true(r.stdout == string.rep("\0", 5000000))
  end))

  it("delivers output written just before exit (waits for EOF, not only exit)",
    H.async(function()
      for _ = 1, 20 do
        local r = process.run{ "sh", "-c", "printf abc; printf def >&2" }
        assert.equal("abc", r.stdout)
        assert.equal("def", r.stderr)
      end
    end))

  it("returns nil, message, 'too_large' when output exceeds max_output_bytes",
    H.async(function()
      local r, msg, kind = process.run{ "head", "-c", "100000", "/dev/zero",
                                        max_output_bytes = 1000 }
      assert.is_nil(r)
      assert.equal("too_large", kind)
      assert.matches("exceeds 1000 bytes", msg, 1, true)
    end))

  it("kills an endless writer that exceeds max_output_bytes on stderr", H.async(function()
    local r, _, kind = process.run{ "sh", "-c", "yes >&2", max_output_bytes = 10000 }
    assert.is_nil(r)
    assert.equal("too_large", kind)
    assert.equal(0, baton.stats().processes)
  end))

  it("accepts output of exactly max_output_bytes", H.async(function()
    local r = process.run{ "head", "-c", "1000", "/dev/zero", max_output_bytes = 1000 }
    assert.equal(1000, #r.stdout)
  end))

  it("treats a nonzero exit as a result, not an error", H.async(function()
    local r = process.run{ "false" }
    assert.equal(1, r.code)
  end))

  it("aborting a task blocked in run kills its child and raises cancellation in it",
    H.async(function()
      local path = os.tmpname()
      local t = baton.spawn(function()
        return process.run{ "sh", "-c", 'echo $$ > "$1"; exec sleep 30', "sh", path }
      end)
      local pid = read_pid(path)
      os.remove(path)
      assert.is_true(alive(pid))
      t:abort()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      assert.equal("cancelled", t:status())
      settle()
      assert.is_false(alive(pid))
    end))

  it("baton.timeout around run kills the child", H.async(function()
    H.assert_failure("baton.timeout", "timeout", baton.timeout(100, process.run, { "sleep", "30" }))
    settle()
  end))

  it("runs 20 programs concurrently in a group", H.async(function()
    local g <close> = baton.group()
    for i = 1, 20 do
      g:spawn(function() return process.run{ "sh", "-c", "sleep 0.1; echo " .. i } end)
    end
    local tasks = g:join_all()
    assert.equal(20, #tasks)
    local seen = {}
    for _, t in ipairs(tasks) do
      assert.is_true(t.ok, tostring(t.error))
      local r = t:results()
      assert.equal(0, r.code)
      seen[tonumber(r.stdout)] = true
    end
    for i = 1, 20 do assert.is_true(seen[i]) end
  end))

  describe("raises on misuse, naming the function and the field:", function()
    local function raises(opts, pattern)
      return H.async(function()
        local ok, err = pcall(process.run, opts)
        assert.is_false(ok)
        assert.matches("baton.process.run", tostring(err), 1, true)
        assert.matches(pattern, tostring(err), 1, true)
      end)
    end
    it("an unknown option", raises({ "true", timeout = 5 },
                                   "bad argument #1 'timeout' (unknown option)"))
    it("a non-string argv entry", raises({ "echo", 42 },
                                         "bad argument #1 'argv[2]' (expected string, got 42)"))
    it("an empty argv", raises({ cwd = "/" }, "bad argument #1 'cmd' (expected the program"))
    it("argv with a hole", raises({ "echo", nil, "x" }, "'argv[2]' (expected string, got nil)"))
    it("a non-table argument", raises("ls", "bad argument #1 'cmd' (expected table, got 'ls')"))
    it("a non-string cwd", raises({ "true", cwd = 1 }, "'cwd' (expected string, got 1)"))
    it("a non-table env", raises({ "true", env = "X=1" }, "'env' (expected a table"))
    it("an env value that is not a string", raises({ "true", env = { X = {} } },
                                                   "'env.X' (expected string, got table)"))
    it("a non-string stdin", raises({ "cat", stdin = true }, "'stdin' (expected string, got true)"))
    it("a negative timeout_ms", raises({ "true", timeout_ms = -1 }, "timeout_ms"))
    it("a fractional max_output_bytes", raises({ "true", max_output_bytes = 1.5 },
                                               "max_output_bytes"))
  end)

  it("raises when called outside a task", function()
    local ok, err = pcall(process.run, { "true" })
    assert.is_false(ok)
    assert.matches("baton.process.run: not inside a baton task", tostring(err), 1, true)
    assert.equal(0, baton.stats().processes)
  end)
end)

describe("baton.process.spawn", function()
  it("round-trips lines through cat with write and read_line", async(function()
    local p <close> = process.spawn{ "cat" }
    assert.is_true(p:write("hello\n"))
    assert.equal("hello", p:read_line())
    assert.is_true(p:write("two\nlines\n"))
    assert.equal("two", p:read_line())
    assert.equal("lines", p:read_line())
    p:close_stdin()
    assert.is_nil(p:read_line())
    assert.same({ 0, 0 }, { p:wait() })
  end))

  it("read_line returns a last line without newline, then nil at EOF", async(function()
    local p <close> = process.spawn{ "printf", "a\n\nb" }
    assert.equal("a", p:read_line())
    assert.equal("", p:read_line())
    assert.equal("b", p:read_line())
    assert.is_nil(p:read_line())
    assert.is_nil(p:read_line())
    assert.equal(0, p:wait())
  end))

  it("read returns the buffered bytes, then nil at EOF", async(function()
    local p <close> = process.spawn{ "printf", "abc" }
    assert.equal(0, p:wait())
    assert.equal("abc", p:read())
    assert.is_nil(p:read())
  end))

  it("wait returns the exit code and signal", async(function()
    local p <close> = process.spawn{ "sh", "-c", "exit 7" }
    local code, sig = p:wait()
    assert.equal(7, code)
    assert.equal(0, sig)
    assert.matches("exited with code 7", tostring(p), 1, true)
  end))

  it("read_line and wait with a timeout return nil, 'timeout' and leave the child running",
    async(function()
      local p <close> = process.spawn{ "sleep", "30" }
      local msg = H.assert_failure("baton.process:read_line", "timeout", p:read_line(100))
      assert.equal("baton.process:read_line: timed out after 100 ms", msg)
      assert.same({ nil, "baton.process:wait: timed out after 50 ms", "timeout",
                    { timeout_ms = 50 } }, { p:wait(50) })
      H.assert_failure("baton.process:read", "timeout", p:read(50))
      assert.is_true(alive(p:pid()))
      p:close()
      settle()
    end))

  it("kill sends a signal by name or number and wait reports it", async(function()
    local p <close> = process.spawn{ "sleep", "30" }
    assert.is_true(p:kill("KILL"))
    assert.same({ 137, 9 }, { p:wait() })
    assert.matches("killed by signal 9", tostring(p), 1, true)
    local q <close> = process.spawn{ "sleep", "30" }
    assert.is_true(q:kill())  -- SIGTERM by default
    assert.same({ 143, 15 }, { q:wait() })
    local r <close> = process.spawn{ "sleep", "30" }
    assert.is_true(r:kill(2))
    assert.same({ 130, 2 }, { r:wait() })
    assert.has_error(function() r:kill("NOPE") end)
  end))

  it("collects stderr", async(function()
    local p <close> = process.spawn{ "sh", "-c", "echo oops >&2; echo fine" }
    assert.equal("fine", p:read_line())
    assert.equal(0, p:wait())
    assert.equal("oops\n", p:stderr())
  end))

  it("pid is the child's pid and tostring shows it", async(function()
    local p <close> = process.spawn{ "sleep", "30" }
    assert.is_true(math.type(p:pid()) == "integer" and p:pid() > 0)
    assert.is_true(alive(p:pid()))
    assert.equal("baton.Process (pid " .. p:pid() .. ", running)", tostring(p))
    p:close()
    assert.equal("baton.Process (pid " .. p:pid() .. ", closed)", tostring(p))
    settle()
    assert.is_false(alive(p:pid()))
  end))

  it("close is idempotent and makes further use raise", async(function()
    local p = process.spawn{ "cat" }
    p:close()
    p:close()
    local ok, err = pcall(p.read_line, p)
    assert.is_false(ok)
    assert.matches("baton.process:read_line: the process is closed", err, 1, true)
    assert.has_error(function() p:write("x") end)
    assert.has_error(function() p:wait() end)
    settle()
  end))

  it("a <close> variable kills the child when its scope ends", async(function()
    local pid
    do
      local p <close> = process.spawn{ "sleep", "30" }
      pid = p:pid()
    end
    settle()
    assert.is_false(alive(pid))
  end))

  it("a proc collected by the GC without close leaves no process", async(function()
    local pid = process.spawn{ "sleep", "30" }:pid()
    collectgarbage()
    collectgarbage()
    settle()
    assert.is_false(alive(pid))
  end))

  it("returns nil, message, 'io' for a program that does not exist", async(function()
    local p, msg, kind = process.spawn{ "nosuchprog-baton-spec" }
    assert.is_nil(p)
    assert.equal("baton.process.spawn: cannot start 'nosuchprog-baton-spec': "
                 .. "no such file or directory", msg)
    assert.equal("io", kind)
  end))

  it("write after close_stdin returns nil, message, 'io'", async(function()
    local p <close> = process.spawn{ "cat" }
    p:close_stdin()
    local _, _, d = H.assert_failure("baton.process:write", "io", p:write("late"))
    assert.equal(p:pid(), d.pid)
    assert.equal(0, p:wait())
  end))

  it("writing to a child that has exited does not kill the host with SIGPIPE",
    async(function()
      local p <close> = process.spawn{ "true" }
      assert.equal(0, p:wait())
      for _ = 1, 3 do p:write(string.rep("x", 100000)) end
      baton.sleep(20)  -- the failed writes complete
      assert.is_true(true)  -- still alive
    end))

  it("stdin = false gives the child an empty stdin and write raises", async(function()
    local p <close> = process.spawn{ "cat", stdin = false }
    assert.is_nil(p:read_line())
    assert.equal(0, p:wait())
    assert.has_error(function() p:write("x") end)
  end))

  it("stops reading when 1 MiB of stdout is unread, and resumes as it is read",
    async(function()
      local p <close> = process.spawn{ "head", "-c", "3000000", "/dev/zero" }
      baton.sleep(300)
      local first = p:read()
      assert.is_true(#first <= 1048576 + 65536, "buffered " .. #first .. " bytes")
      local total = #first
      while true do
        local s = p:read()
        if not s then break end
        total = total + #s
      end
      assert.equal(3000000, total)
      assert.equal(0, p:wait())
    end))

  it("wait lets a child write more than 1 MiB before exiting, and keeps it for read",
    async(function()
      local p <close> = process.spawn{ "head", "-c", "3000000", "/dev/zero" }
      assert.same({ 0, 0 }, { p:wait(10000) })
      assert.equal(3000000, drain(p))
    end))

  it("read_line returns nil, message, 'too_large' for a line over 1 MiB; read gets it",
    async(function()
      local p <close> = process.spawn{ "head", "-c", "2000000", "/dev/zero" }
      local line, msg, kind = p:read_line()
      assert.is_nil(line)
      assert.equal("too_large", kind)
      assert.matches("read_line", msg, 1, true)
      assert.equal(2000000, drain(p))
    end))

  it("a second task waiting on the same proc raises a misuse error", async(function()
    local p <close> = process.spawn{ "cat" }
    local t = baton.spawn(function() return p:read_line() end)
    baton.yield()
    assert.equal("waiting", t:status())
    local ok, err = pcall(p.read_line, p)
    assert.is_false(ok)
    assert.matches("another task is already waiting", err, 1, true)
    p:write("x\n")
    assert.same({ true, "x" }, { t:join() })
  end))

  it("aborting a task blocked in read_line unregisters it and leaves the child running",
    async(function()
      local p <close> = process.spawn{ "cat" }
      local t = baton.spawn(function() return p:read_line() end)
      baton.yield()
      t:abort()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      assert.is_true(alive(p:pid()))
      p:write("still here\n")
      assert.equal("still here", p:read_line())
    end))

  it("closing a proc wakes a task waiting on it with nil, 'closed'", async(function()
    local p = process.spawn{ "cat" }
    local t = baton.spawn(function() return p:read_line() end)
    baton.yield()
    p:close()
    assert.same({ true, nil, "baton.process:read_line: the process was closed while waiting",
                  "closed", { pid = p:pid() } }, { t:join() })
    settle()
  end))

  it("raises when called outside a task", function()
    local ok, err = pcall(process.spawn, { "cat" })
    assert.is_false(ok)
    assert.matches("baton.process.spawn: not inside a baton task", err, 1, true)
  end)

  -- Needs baton.run to call lbt_close_procs (src/lua/lproc.c) once its main task has ended;
  -- until then baton.run waits for such a child to exit by itself (cat: forever).
  it("baton.run releases procs still open when its main task ends", function()
    local p, q
    baton.run(function()
      p = process.spawn{ "cat" }
      q = process.spawn{ "sleep", "30" }:pid()  -- unreferenced: not yet collected either
    end)
    assert.equal(0, baton.stats().processes)
    assert.is_false(alive(p:pid()))
    assert.is_false(alive(q))
    assert.has_error(function() p:read_line() end)
  end)

  it("raises on misuse, naming the function and the field", async(function()
    local ok, err = pcall(process.spawn, { "cat", timeout_ms = 100 })
    assert.is_false(ok)
    assert.matches("baton.process.spawn: bad argument #1 'timeout_ms' (unknown option)", err, 1,
                   true)
    ok, err = pcall(process.spawn, { "cat", stdin = "text" })
    assert.is_false(ok)
    assert.matches("baton.process.spawn: bad argument #1 'stdin' (expected boolean, got 'text')",
                   err, 1, true)
    ok, err = pcall(process.spawn, {})
    assert.is_false(ok)
    assert.matches("baton.process.spawn: bad argument #1 'cmd' (expected the program", err, 1,
                   true)
    ok, err = pcall(process.spawn, { {} })
    assert.is_false(ok)
    assert.matches("baton.process.spawn: bad argument #1 'argv[1]' (expected string, got table)",
                   err, 1, true)
  end))
end)

describe("baton.process at the run's end", function()
  -- the run aborts every task and releases every process once; an aborted task's <close>
  -- handler spawning a child after that used to leave baton waiting on it (and a second
  -- signal orphaned it)
  it("releases a child spawned by an aborted task's <close> handler", function()
    local script = H.write_temp([[
      local baton = require "baton"
      baton.spawn(function()
        local _ <close> = setmetatable({}, { __close = function()
          local p = assert(baton.process.spawn { "sleep", "30" })
          print("spawned " .. p:pid())
        end })
        baton.sleep(60000)
      end)
      baton.yield()
      print("main done")
    ]])
    local t0 = os.time()
    local res = H.run(H.q(script), { timeout = 25 })
    os.remove(script)
    assert.equal(0, res.code, res.err)
    local pid = assert(tonumber(res.out:match("spawned (%d+)")), res.out)
    assert.is_true(os.time() - t0 < 15)  -- the 2 s grace, not the child's 30 s
    assert.is_false(alive(pid))
  end)
end)

describe("baton.process: a line over the limits", function()
  it("wait() answers once the child is gone, though reading stopped at max_output_bytes",
    H.async(function()
      local p <close> = assert(process.spawn {
        "sh", "-c", "head -c 3000000 /dev/zero; exec sleep 30",
        max_line_bytes = 1 << 20, max_output_bytes = 1 << 20 })
      local _, _, kind = p:read_line(10000)
      assert.equal("too_large", kind)
      assert(p:kill("KILL"))
      local elapsed, code, sig = H.timed(p.wait, p, 10000)
      assert.equal(9, sig, tostring(code))
      assert.is_true(elapsed < 5000, "waited " .. elapsed .. " ms")  -- not the 10 s timeout
    end))
end)

describe("baton.process: process groups", function()
  it("a child leads a process group and session of its own; process_group = false opts out",
    H.async(function()
      local r = assert(process.run{ "sh", "-c", "echo $$; ps -o pgid=,sid= -p $$" })
      local pid, pgid, sid = r.stdout:match("(%d+)%s+(%d+)%s+(%d+)")
      assert.equal(pid, pgid)
      assert.equal(pid, sid)
      local f = assert(io.open("/proc/self/stat"))
      local own_pgid = f:read("a"):match("%)%s+%S+%s+%d+%s+(%d+)")
      f:close()
      r = assert(process.run{ "sh", "-c", "echo $$; ps -o pgid= -p $$", process_group = false })
      pid, pgid = r.stdout:match("(%d+)%s+(%d+)")
      assert.equal(own_pgid, pgid)
      assert.is_true(pid ~= pgid)
    end))

  it("a timed-out run leaves none of the processes its child started", H.async(function()
    local m1, m2 = marker(40), marker(41)
    local elapsed, r, _, kind = H.timed(process.run,
      { "/bin/sh", "-c", "sleep " .. m1 .. " & sleep " .. m2, timeout_ms = 300 })
    assert.is_nil(r)
    assert.equal("timeout", kind)
    assert.same({}, running(m1))  -- TERM went to the whole group, and run waited for it
    assert.same({}, running(m2))
    assert.is_true(elapsed < 1900, "took " .. elapsed .. " ms")  -- not the grace period
  end))

  it("an aborted run of a pipeline leaves no process", H.async(function()
    local m = marker(42)
    local t = baton.spawn(process.run, { "sh", "-c", "sleep " .. m .. " | cat" })
    wait_running(m, 2)  -- the shell and the sleep
    t:abort()
    assert.equal("cancelled", select(2, t:join()).kind)
    settle()
    assert.is_true(gone(m, 0))
  end))

  it("a closed spawn leaves no process of its group, the child's or its children's",
    async(function()
      local m = marker(43)
      local p = process.spawn{ "sh", "-c", "sleep " .. m .. " & sleep " .. m .. " | cat; wait" }
      wait_running(m, 3)
      p:close()
      settle()
      assert.is_true(gone(m, 0))
    end))

  it("what is left of the group after the child exited is released too, KILLed if it must",
    H.async(function()
      local m = marker(44)
      -- The child exits at once; its background sleep ignores TERM and holds stdout open.
      local elapsed, r, _, kind = H.timed(process.run,
        { "sh", "-c", "trap '' TERM; sleep " .. m .. " & exit 0", timeout_ms = 500 })
      assert.is_nil(r)
      assert.equal("timeout", kind)
      assert.is_true(elapsed >= 1900 and elapsed < 10000, "took " .. elapsed .. " ms")
      assert.is_true(gone(m))
    end))

  it("proc:kill signals the whole group", async(function()
    local m = marker(45)
    local p <close> = process.spawn{ "sh", "-c", "sleep " .. m .. " | cat" }
    wait_running(m, 2)
    assert.is_true(p:kill("TERM"))
    assert.same({ 143, 15 }, { p:wait(5000) })  -- EOF: the sleep and cat are gone too
    assert.is_true(gone(m))
  end))

  it("with process_group = false only the child is signalled: its children survive it",
    async(function()
      local m = marker(46)
      local p = process.spawn{ "sh", "-c", "sleep " .. m .. " >/dev/null & wait",
                               process_group = false }
      wait_running(m, 2)
      p:close()
      settle()
      local left = running(m)
      for _, pid in ipairs(left) do process.run{ "kill", tostring(pid) } end
      assert.equal(1, #left)  -- the sleep: not in a group of the child's, not signalled
    end))

  it("close(grace_ms, true) returns once the child is reaped", async(function()
    local p = process.spawn{ "cat" }
    assert.equal(1, baton.stats().processes)
    p:close(0, true)
    assert.equal(0, baton.stats().processes)
    p:close(0, true)  -- idempotent
    local q = process.spawn{ "sh", "-c", "trap '' TERM; echo ready; exec sleep 30" }
    assert.equal("ready", q:read_line())
    local elapsed = H.timed(q.close, q, 150, true)
    assert.equal(0, baton.stats().processes)
    assert.is_true(elapsed >= 140 and elapsed < 5000, "took " .. elapsed .. " ms")
  end))
end)

describe("baton.process.spawn: write backpressure", function()
  it("write waits while the child does not read (max_write_queue_bytes), and can be aborted",
    async(function()
      local p <close> = process.spawn{ "sleep", "5" }
      local big = string.rep("x", 50 * 1000 * 1000)
      local rss0 = status_kb("VmRSS")
      local t = baton.spawn(p.write, p, big)
      baton.sleep(200)
      assert.equal("waiting", t:status())  -- not queued whole: the writer waits
      local grown = status_kb("VmRSS") - rss0
      assert.is_true(grown < 20000, "RSS grew by " .. grown .. " kB")
      t:abort()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      assert.is_true(alive(p:pid()))
    end))

  it("a large write reaches a slow reader whole; concurrent writers are not interleaved",
    async(function()
      local p <close> = process.spawn{ "sh", "-c", "sleep 0.2; exec cat",
                                       max_write_queue_bytes = 65536 }
      local a, b = string.rep("a", 3000000), string.rep("b", 3000000)
      local ta = baton.spawn(p.write, p, a)
      local tb = baton.spawn(p.write, p, b)
      baton.spawn(function()
        assert(ta:join())
        assert(tb:join())
        p:close_stdin()
      end)
      local parts = {}
      while true do
        local s = p:read()
        if not s then break end
        parts[#parts + 1] = s
      end
      local out = table.concat(parts)
      assert.equal(6000000, #out)
      assert.is_true(out == a .. b)
      assert.same({ true, true }, { ta:join() })
      assert.equal(0, p:wait())
    end))

  it("close and close_stdin wake a waiting writer with nil, 'closed'", async(function()
    local p = process.spawn{ "sleep", "5" }
    local t = baton.spawn(p.write, p, string.rep("x", 10000000))
    local u = baton.spawn(p.write, p, "queued behind t")
    baton.sleep(50)
    assert.equal("waiting", u:status())
    p:close_stdin()
    local ok, r, _, kind = t:join()
    assert.is_true(ok)
    assert.is_nil(r)
    assert.equal("closed", kind)
    assert.equal("closed", select(4, u:join()))
    local q = process.spawn{ "sleep", "5" }
    t = baton.spawn(q.write, q, string.rep("x", 10000000))
    baton.sleep(50)
    q:close()
    assert.equal("closed", select(4, t:join()))
    p:close()
    settle()
  end))

  it("write(s, ms) gives up after ms with nil, 'timeout', what it queued staying queued",
    async(function()
      local p <close> = process.spawn{ "sleep", "5", max_write_queue_bytes = 1000 }
      local r = table.pack(H.timed(p.write, p, string.rep("x", 1000000), 100))
      local elapsed = r[1]
      assert.same({ nil, "baton.process:write: timed out after 100 ms", "timeout",
                    { timeout_ms = 100 } }, { table.unpack(r, 2, r.n) })
      assert.is_true(elapsed >= 90 and elapsed < 5000, "took " .. elapsed .. " ms")
      H.assert_failure("baton.process:write", "timeout", p:write(string.rep("y", 1000), 50))
    end))

  it("a writer waiting on a child that exits gets nil, message, 'io'", async(function()
    local p <close> = process.spawn{ "sh", "-c", "sleep 0.2" }
    H.assert_failure("baton.process:write", "io", p:write(string.rep("x", 10000000)))
    assert.equal(0, p:wait())
  end))

  it("raises for a bad max_write_queue_bytes or max_line_bytes", async(function()
    H.raises_misuse("baton.process.spawn", 1, "max_write_queue_bytes", "expected integer >= 1, " ..
                    "got 0", process.spawn, { "cat", max_write_queue_bytes = 0 })
    H.raises_misuse("baton.process.spawn", 1, "max_line_bytes", "got 1.5", process.spawn,
                    { "cat", max_line_bytes = 1.5 })
    H.raises_misuse("baton.process.spawn", 1, "process_group", "expected boolean, got 1",
                    process.spawn, { "cat", process_group = 1 })
    H.raises_misuse("baton.process.run", 1, "max_line_bytes", "unknown option", process.run,
                    { "cat", max_line_bytes = 10 })
  end))
end)

describe("baton.process.spawn: max_line_bytes", function()
  it("read_line takes lines up to max_line_bytes, over 1 MiB too", async(function()
    local cmd = { "sh", "-c", "head -c 2000000 /dev/zero | tr '\\0' a; echo; echo next" }
    local p <close> = process.spawn{ cmd[1], cmd[2], cmd[3], max_line_bytes = 2000000 }
    local line = p:read_line()
    assert.equal(2000000, #line)
    assert.equal("next", p:read_line())
    local q <close> = process.spawn{ cmd[1], cmd[2], cmd[3], max_line_bytes = 1999999 }
    local none, _, kind = q:read_line()
    assert.is_nil(none)
    assert.equal("too_large", kind)
    assert.equal(2000000 + 6, drain(q))
  end))
end)

describe("baton.process: out of resources", function()
  local EXE = os.getenv("BATON_EXE") or "build/baton"

  it("spawn and run fail with kind 'resource' when descriptors run out", H.async(function()
    local code = [[
      local files = {}
      while true do
        local f = io.open("/dev/null")
        if not f then break end
        files[#files + 1] = f
      end
      local _, m1, k1 = baton.process.spawn{ "true" }
      local _, m2, k2 = baton.process.run{ "true" }
      for _, f in ipairs(files) do f:close() end
      local ok = baton.process.run{ "true" }
      print(k1, k2, ok and ok.code, m1)
    ]]
    local r = assert(process.run{ "sh", "-c", 'ulimit -n 32 && exec "$0" -e "$1"', EXE, code })
    assert.equal("", r.stderr)
    local k1, k2, ok, msg = r.stdout:match("^(%S+)\t(%S+)\t(%S+)\t([^\n]*)")
    assert.equal("resource", k1)
    assert.equal("resource", k2)
    assert.equal("0", ok)  -- with descriptors back, spawning works again
    assert.matches("cannot start 'true': too many open files", msg, 1, true)
  end))
end)
