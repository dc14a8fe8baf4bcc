-- Signals and the ways out of a run, with real processes: SIGTERM, SIGHUP and SIGINT end a
-- run cleanly (<close> handlers run, child processes are released, status 128 + signal)
-- under the `baton` executable and from a stock lua5.4 inside baton.run; baton.on_signal
-- replaces the default action; os.exit and baton.exit from a task leave the same way;
-- --strict turns an unjoined failure into exit 1.
local baton = require "baton"
local H = require "spec.helper"

local EXE, SRC, BUILD, LUA = H.EXE, H.SRC, H.BUILD, H.LUA  -- LUA: the sanitizer build's interpreter
local FIX = SRC .. "/spec/fixtures/signal/"
local q, slurp = H.q, H.slurp

-- The command line of `baton fixture args...` or of the stock interpreter running it.
local function baton_cmd(fixture, ...)
  local t = { q(EXE), q(FIX .. fixture) }
  for _, a in ipairs({ ... }) do t[#t + 1] = q(a) end
  return table.concat(t, " ")
end

local function stock_cmd(fixture, ...)
  local t = { "env", "LUA_CPATH=" .. q(BUILD .. "/?.so;;"), q(LUA), q(FIX .. fixture) }
  for _, a in ipairs({ ... }) do t[#t + 1] = q(a) end
  return table.concat(t, " ")
end

-- Starts `cmd` in the background (prefix: shell text run before it, e.g. a trap), then for
-- each step waits (up to 20 s) until stdout contains step.wait, sleeps step.pause seconds
-- and sends step.signal.
-- Returns { code =, out =, err = }: code is the shell's $?, 128 + n for a signal.
local function drive(cmd, steps, prefix)
  local out, err = os.tmpname(), os.tmpname()
  local script = { string.format("(%s exec %s) </dev/null >%s 2>%s & pid=$!",
                                 prefix or "", cmd, q(out), q(err)),
                   "waitfor() { i=0; while [ $i -lt 400 ] && ! grep -qF \"$1\" " .. q(out) ..
                   "; do sleep 0.05; i=$((i+1)); done; }" }
  for _, s in ipairs(steps) do
    if s.wait then script[#script + 1] = "waitfor " .. q(s.wait) end
    if s.pause then script[#script + 1] = "sleep " .. s.pause end  -- signals do not queue
    if s.signal then script[#script + 1] = "kill -" .. s.signal .. " $pid 2>/dev/null" end
  end
  script[#script + 1] = "wait $pid; echo \"rc=$?\""
  local p = assert(io.popen(table.concat(script, "\n")))
  local status = p:read("a")
  p:close()
  local r = { code = tonumber(status:match("rc=(%d+)")), out = slurp(out) or "",
              err = slurp(err) or "" }
  os.remove(out)
  os.remove(err)
  return r
end

-- A marker no other process has: sleep adds it (a fraction of a second) to its 60 s.
local seq = 0
local function new_marker()
  seq = seq + 1
  return string.format("0.%05d%04d", os.time() % 100000, (seq * 37 + math.random(0, 36)) % 10000)
end

-- Whether a process whose command line is `sleep 60 <marker>` still exists; if one does
-- (the run orphaned it), it is killed so that a failing spec leaves nothing behind.
local function child_alive(marker, out)
  local pid = tonumber(out:match("child (%d+)"))
  local alive = os.execute("pgrep -f " .. q("^sleep 60 " .. marker .. "$") .. " >/dev/null")
  if alive and pid then
    local cmdline = slurp("/proc/" .. pid .. "/cmdline") or ""
    if cmdline:find(marker, 1, true) then os.execute("kill -KILL " .. pid) end
  end
  return alive and true or false
end

-- Runs the child_close fixture through `cmd_of`, sends `signal` once it is ready (none when
-- it leaves by itself); returns the result and whether its <close> handler ran.
local function child_close(cmd_of, signal, how)
  local marker, flag = new_marker(), os.tmpname()
  os.remove(flag)
  local r = drive(cmd_of("child_close.lua", marker, flag, how or "wait"),
                  { { wait = "ready", signal = signal } })
  r.closed = slurp(flag) == "closed\n"
  os.remove(flag)
  r.child_alive = child_alive(marker, r.out)
  return r
end

describe("signals", function()
  describe("under the baton executable", function()
    it("SIGTERM runs the <close> handlers, releases the children and exits 143", function()
      local r = child_close(baton_cmd, "TERM")
      assert.matches("child %d+\n", r.out)
      assert.is_true(r.closed, "the <close> handler did not run")
      assert.is_false(r.child_alive, "the child process outlived baton")
      assert.equal(143, r.code)
      assert.not_matches("slept to the end", r.out, 1, true)
      assert.equal("baton: terminated by SIGTERM\n", r.err)
    end)

    it("dies of the signal once cleaned up, so its parent sees a process the signal ended",
       function()
      -- baton signals itself (its child's parent), then its closer prints; os.execute runs
      -- it with exec, so the status seen is baton's own: killed by SIGTERM, not exit 143
      local out = os.tmpname()
      local script = "local c <close> = setmetatable({}, { __close = function() print('closed') end }) "
        .. "baton.process.run { 'sh', '-c', 'kill -TERM $PPID' } baton.sleep(10000)"
      local ok, how, code = os.execute(("exec %s -e %s >%s 2>/dev/null </dev/null")
                                       :format(q(EXE), q(script), q(out)))
      assert.is_nil(ok)
      assert.equal("signal", how)
      assert.equal(15, code)
      assert.equal("closed\n", slurp(out))
      os.remove(out)
    end)

    it("SIGHUP does the same and exits 129; under nohup it stays ignored", function()
      local r = child_close(baton_cmd, "HUP")
      assert.is_true(r.closed, "the <close> handler did not run")
      assert.is_false(r.child_alive, "the child process outlived baton")
      assert.equal(129, r.code)
      assert.equal("baton: terminated by SIGHUP\n", r.err)

      r = drive(baton_cmd("hup_ignored.lua"), { { wait = "ready", signal = "HUP" } },
                "trap '' HUP;")
      assert.equal(0, r.code)
      assert.equal("ready\nsurvived\n", r.out)
    end)

    it("baton.on_signal runs the handler as a task on each delivery, instead of exiting",
       function()
      local r = drive(baton_cmd("handler.lua"), {
        { wait = "ready", signal = "TERM" },
        { wait = "handler 1 term", signal = "TERM" },
        { wait = "removed", signal = "TERM" },  -- the default action is back
      })
      assert.equal("ready\nhandler 1 term\nhandler 2 term\nremoved\nmain closed\n", r.out)
      assert.equal(143, r.code)
      assert.equal("baton: terminated by SIGTERM\n", r.err)
    end)

    it("os.exit(code) from a task runs the <close> handlers, releases the children, exits code",
       function()
      local r = child_close(baton_cmd, nil, "os.exit")
      assert.is_true(r.closed, "the main task's <close> handler did not run")
      assert.matches("task closed\n", r.out, 1, true)
      assert.not_matches("not reached", r.out, 1, true)
      assert.is_false(r.child_alive, "the child process outlived baton")
      assert.equal(3, r.code)
      assert.equal("", r.err)
    end)

    it("baton.exit(code) does the same", function()
      local r = child_close(baton_cmd, nil, "baton.exit")
      assert.is_true(r.closed, "the main task's <close> handler did not run")
      assert.matches("task closed\n", r.out, 1, true)
      assert.is_false(r.child_alive, "the child process outlived baton")
      assert.equal(4, r.code)
      assert.equal("", r.err)
    end)
  end)

  describe("from a stock lua5.4, inside baton.run", function()
    for _, c in ipairs({ { "TERM", 143 }, { "HUP", 129 }, { "INT", 130 } }) do
      it("SIG" .. c[1] .. " runs the <close> handlers, releases the children and exits " ..
         c[2], function()
        local r = child_close(stock_cmd, c[1])
        assert.is_true(r.closed, "the <close> handler did not run")
        assert.is_false(r.child_alive, "the child process outlived the interpreter")
        assert.equal(c[2], r.code)
        assert.not_matches("slept to the end", r.out, 1, true)
        assert.equal("", r.err)
      end)
    end

    it("Lua looping in a plain coroutine: a second SIGINT or SIGTERM ends it at once", function()
      for _, c in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
        for _, cmd in ipairs({ stock_cmd, baton_cmd }) do
          local r = drive(cmd("busy_coroutine.lua"),
                          { { wait = "ready", signal = c[1] }, { pause = 0.3, signal = c[1] } })
          assert.equal(c[2], r.code, c[1] .. ": " .. r.err)
        end
      end
    end)

    it("baton.exit(code) from a task leaves the same way", function()
      local r = child_close(stock_cmd, nil, "baton.exit")
      assert.is_true(r.closed, "the <close> handler did not run")
      assert.is_false(r.child_alive, "the child process outlived the interpreter")
      assert.equal(4, r.code)
      assert.equal("", r.err)
    end)
  end)

  describe("baton.on_signal", function()
    it("rejects unknown names and non-functions", function()
      H.raises_misuse("baton.on_signal", 1, "signal", "%(expected one of 'int', 'term', " ..
                      "'hup', 'usr1', 'usr2', got 'SIGTERM'%)", baton.on_signal, "SIGTERM", print)
      H.raises_misuse("baton.on_signal", 1, "signal", "got 'kill'", baton.on_signal, "kill", print)
      H.raises_misuse("baton.on_signal", 2, "fn", "expected function or nil, got 42",
                      baton.on_signal, "usr1", 42)
    end)

    it("runs the handler for a real SIGUSR1, with no handle left behind", H.async(function()
      local got = {}
      baton.on_signal("usr1", function(name)
        got[#got + 1] = { name = name, task = baton.current() ~= nil }
      end)
      assert.equal(0, baton.stats().handles)  -- the watchers are the runtime's own
      local pid = assert(slurp("/proc/self/stat")):match("^(%d+)")
      for i = 1, 2 do
        assert.equal(0, baton.process.run({ "kill", "-USR1", pid }).code)
        local deadline = baton.now() + 5000
        while #got < i and baton.now() < deadline do baton.sleep(5) end
      end
      baton.on_signal("usr1", nil)
      assert.same({ { name = "usr1", task = true }, { name = "usr1", task = true } }, got)
    end))
  end)

  describe("--strict", function()
    local function run(args, env)
      local out, err = os.tmpname(), os.tmpname()
      local _, how, code = os.execute(string.format("%s %s %s </dev/null >%s 2>%s",
        env or "", q(EXE), args, q(out), q(err)))
      local r = { code = how == "exit" and code or 128 + code, out = slurp(out),
                  err = slurp(err) }
      os.remove(out)
      os.remove(err)
      return r
    end
    local script = q(FIX .. "unjoined.lua")
    local warning = "baton: warning: task %d+ failed and nobody joined it: [^\n]*" ..
                    "nobody looks at this"

    it("makes an unjoined failed task exit 1 (--strict or BATON_STRICT=1); the warning " ..
       "is printed either way", function()
      for _, c in ipairs({ { "", "", 0 }, { "--strict", "", 1 }, { "", "BATON_STRICT=1", 1 },
                           { "", "BATON_STRICT=0", 0 } }) do
        local r = run(c[1] .. " " .. script, c[2])
        assert.equal(c[3], r.code, c[1] .. " " .. c[2])
        assert.equal("done\n", r.out)
        assert.matches(warning, r.err)
      end
      local r = run("--strict " .. script .. " group")  -- reported when its group closes
      assert.equal(1, r.code)
      assert.matches(warning, r.err)
      r = run("--strict " .. script .. " joined")
      assert.equal(0, r.code)
      assert.equal("", r.err)
    end)
  end)
end)
