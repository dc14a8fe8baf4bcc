-- The `baton` executable, driven for real through the shell: options like lua's, the arg
-- table, stdin scripts, exit statuses, errors with tracebacks, top-level awaits and SIGINT.
-- BATON_EXE names the executable (ctest sets it); the fixtures live in spec/fixtures/cli.
local H = require "spec.helper"

local EXE, SRC = H.EXE, H.SRC
local FIX = SRC .. "/spec/fixtures/cli/"
-- run(args, opts): `baton <args>` with stdin /dev/null (opts.stdin a file), opts.env prefixed;
-- -> { code =, out =, err = }.
local q, slurp, write_temp, run = H.q, H.slurp, H.write_temp, H.run

-- Starts a fixture in the background, waits until it printed "ready", sends SIGINT
-- (`signals` times, 0.5 s apart) and returns { code =, out =, err = }.
local function interrupt(fixture, signals)
  local out, err = os.tmpname(), os.tmpname()
  local kills = {}
  for i = 1, signals do kills[i] = "sleep 0.5; kill -INT $pid 2>/dev/null;" end
  local script = string.format(
    "%s %s </dev/null >%s 2>%s & pid=$!; i=0; " ..
    "while [ $i -lt 200 ] && ! grep -q ready %s; do sleep 0.05; i=$((i+1)); done; " ..
    "%s wait $pid; echo \"rc=$?\"",
    q(EXE), q(FIX .. fixture), q(out), q(err), q(out), table.concat(kills, " "))
  local p = assert(io.popen(script))
  local status = p:read("a")
  p:close()
  local r = { code = tonumber(status:match("rc=(%d+)")), out = slurp(out), err = slurp(err) }
  os.remove(out)
  os.remove(err)
  return r
end

describe("baton executable", function()
  describe("hostile surroundings", function()
    -- with fd 0, 1 or 2 closed, libuv's epoll descriptor took the number and its close
    -- tripped libuv's assertion (exit 134) at the end of every run
    for _, redir in ipairs { "<&- >/dev/null 2>&1", ">&- 2>/dev/null", "2>&- >/dev/null" } do
      it("runs with a standard stream closed (" .. redir .. ")", function()
        local s = write_temp("baton.sleep(1)")
        local _, how, code = os.execute(q(EXE) .. " " .. q(s) .. " " .. redir)
        os.remove(s)
        assert.equal("exit", how)
        assert.equal(0, code)
      end)
    end

    it("-i: input ending inside a statement says why it never ran", function()
      local f = write_temp("for i = 1, 3 do\n  print(i)\n")
      local r = run("-i", { stdin = f })
      os.remove(f)
      assert.equal("", r.out)
      assert.matches("'end' expected", r.err, 1, true)
    end)

    it(".tasks shows a task's name without its control characters", function()
      local f = write_temp('baton.spawn{ name = "evil\\27[2J\\n", baton.sleep, 1000 }\n.tasks\n')
      local r = run("-i", { stdin = f })
      os.remove(f)
      assert.is_nil(r.out:find("\27", 1, true))
      assert.matches("evil?[2J?", r.out, 1, true)
    end)
  end)

  describe("the arg table", function()
    it("puts the script at arg[0], its arguments at 1..n and passes them as ...", function()
      local r = run(q(FIX .. "args.lua") .. " one 'two words' 3")
      assert.equal(0, r.code)
      assert.matches("dots\t3\tone\ttwo words\t3\n", r.out, 1, true)
      assert.matches("\n0\t" .. FIX .. "args.lua\n1\tone\n2\ttwo words\n3\t3\n", r.out, 1, true)
    end)

    it("puts the interpreter and the options at negative indices", function()
      local r = run("-W -e 'x = 1' " .. q(FIX .. "args.lua") .. " a")
      assert.equal(0, r.code)
      assert.matches("-4\t" .. EXE .. "\n-3\t-W\n-2\t-e\n-1\tx = 1\n0\t", r.out, 1, true)
      assert.matches("dots\t1\ta\n", r.out, 1, true)
    end)

    it("gives the script its arguments as they are in arg when it starts", function()
      local r = run("-e 'arg[1] = \"changed\"' " .. q(FIX .. "args.lua") .. " original")
      assert.matches("dots\t1\tchanged\n", r.out, 1, true)
    end)

    it("treats everything after -- as the script and its arguments", function()
      local r = run("-- " .. q(FIX .. "args.lua") .. " -e -v")
      assert.equal(0, r.code)
      assert.matches("dots\t2\t-e\t-v\n", r.out, 1, true)
    end)
  end)

  describe("options", function()
    it("runs -e chunks in command-line order, before the script", function()
      local s = write_temp("io.write('script\\n')")
      local r = run("-e \"io.write('first ')\" -e \"io.write('second ')\" " .. q(s))
      os.remove(s)
      assert.equal(0, r.code)
      assert.equal("first second script\n", r.out)
    end)

    it("runs -e and the script as one main task, so a task spawned by -e is still there",
       function()
      local r = run("-e 'bg = baton.spawn(function() baton.sleep(20) return 42 end)' " ..
                    q(FIX .. "join_bg.lua"))
      assert.equal(0, r.code)
      assert.equal("joined\ttrue\t42\n", r.out)
    end)

    it("loads a module into a global with -l mod and -l name=mod", function()
      local env = "LUA_PATH=" .. q(FIX .. "?.lua;;")
      local r = run("-l greeter -e 'print(greeter.greet(\"a\"), loaded_greeter)'", { env = env })
      assert.equal(0, r.code)
      assert.equal("hello, a\t1\n", r.out)
      r = run("-l g=greeter -e 'print(g.greet(\"b\"), greeter)'", { env = env })
      assert.equal(0, r.code)
      assert.equal("hello, b\tnil\n", r.out)
    end)

    it("fails with the require error when -l names no module", function()
      local r = run("-l no_such_module_here -e 'print(\"not reached\")'")
      assert.equal(1, r.code)
      assert.equal("", r.out)
      assert.matches("^baton: module 'no_such_module_here' not found", r.err)
    end)

    it("prints baton's, Lua's and libuv's versions with -v", function()
      local r = run("-v")
      assert.equal(0, r.code)
      assert.matches("^baton %d+%.%d+%.%d+ %(Lua 5%.4%.%d+, libuv %d+%.%d+%.%d+%)\n$", r.out)
    end)

    it("prints the version and still runs the script with -v script", function()
      local s = write_temp("print('ran')")
      local r = run("-v " .. q(s))
      os.remove(s)
      assert.equal(0, r.code)
      assert.matches("^baton [^\n]+\nran\n$", r.out)
    end)

    it("turns Lua warnings on with -W", function()
      local r = run("-e 'warn(\"off by default\")' -W -e 'warn(\"now \", \"on\")'")
      assert.equal(0, r.code)
      assert.equal("Lua warning: now on\n", r.err)
    end)

    it("prints the usage on stderr and exits 1 on an unknown option", function()
      local r = run("-x " .. q(FIX .. "args.lua"))
      assert.equal(1, r.code)
      assert.equal("", r.out)
      assert.matches("unrecognized option '-x'", r.err, 1, true)
      assert.matches("usage: baton [options] [script [args]]", r.err, 1, true)
    end)

    it("prints the usage on stderr and exits 1 when -e has no argument", function()
      local r = run("-e")
      assert.equal(1, r.code)
      assert.matches("^baton: '%-e' needs an argument\nusage: baton", r.err)
    end)

    it("prints the usage on stdout and exits 0 with -h", function()
      local r = run("-h")
      assert.equal(0, r.code)
      assert.matches("usage: baton", r.out, 1, true)
      assert.equal("", r.err)
    end)

    it("enters the REPL after the -e chunks with -i; stdin not a terminal: plain lines",
       function()
      local s = write_temp("x + 1\n")
      local r = run("-i -e 'print(\"ran\") x = 41'", { stdin = s })
      os.remove(s)
      assert.equal(0, r.code)
      assert.equal("ran\n42\n", r.out)
      assert.equal("", r.err)
    end)
  end)

  describe("LUA_INIT", function()
    it("runs before the -e chunks", function()
      local r = run("-e 'print(\"e\")'", { env = "LUA_INIT='print(\"init\")'" })
      assert.equal("init\ne\n", r.out)
    end)

    it("is ignored with -E", function()
      local r = run("-E -e 'print(\"e\")'", { env = "LUA_INIT='print(\"init\")'" })
      assert.equal("e\n", r.out)
    end)
  end)

  describe("stdin", function()
    it("runs stdin as the script with - and passes the arguments after it", function()
      local s = write_temp("print('from stdin', ...)")
      local r = run("- x y", { stdin = s })
      os.remove(s)
      assert.equal(0, r.code)
      assert.equal("from stdin\tx\ty\n", r.out)
    end)

    it("runs stdin as the script when there is no script and stdin is not a terminal",
       function()
      local s = write_temp("baton.sleep(5) print('piped', select('#', ...))")
      local r = run("", { stdin = s })
      os.remove(s)
      assert.equal(0, r.code)
      assert.equal("piped\t0\n", r.out)
    end)
  end)

  describe("running", function()
    it("exits 0 when the script succeeds", function()
      local r = run(q(FIX .. "args.lua"))
      assert.equal(0, r.code)
      assert.equal("", r.err)
    end)

    it("lets the main chunk await at top level while a spawned task runs", function()
      local r = run(q(FIX .. "sleep_spawn.lua"))
      assert.equal(0, r.code)
      assert.equal("spawned ran\nmain slept enough\n", r.out)
      assert.equal("", r.err)
    end)

    it("runs a script written for a stock lua5.4, its baton.run called in the main task",
       function()
      local r = run(q(FIX .. "stock_run.lua"))
      assert.equal("", r.err)
      assert.equal(0, r.code)
      assert.equal("42\tchild\nfalse\tinner failure\n", r.out)
      -- the same script, on the stock interpreter
      local lua = os.getenv("BATON_LUA") or "lua5.4"  -- the sanitizer build's interpreter
      local out = io.popen(("LUA_CPATH=%s %s %s 2>&1"):format(
        q((os.getenv("BATON_BUILD") or SRC .. "/build") .. "/?.so;;"), q(lua),
        q(FIX .. "stock_run.lua"))):read("a")
      assert.equal("42\tchild\nfalse\tinner failure\n", out)
    end)

    it("preloads the module: require 'baton' is the global baton", function()
      local r = run("-e 'print(require(\"baton\") == baton, package.loaded.baton == baton)'")
      assert.equal("true\ttrue\n", r.out)
    end)

    it("exits with the status given to os.exit", function()
      assert.equal(3, run("-e 'baton.sleep(1) os.exit(3)'").code)
      assert.equal(1, run("-e 'os.exit(false)'").code)
    end)
  end)

  describe("errors", function()
    it("exits 1 with the message and a stack traceback on stderr for a runtime error",
       function()
      local r = run(q(FIX .. "runtime_error.lua"))
      assert.equal(1, r.code)
      assert.equal("before the error\n", r.out)
      assert.matches("^baton: [^\n]*runtime_error%.lua:3: boom from the script\n", r.err)
      assert.matches("stack traceback:", r.err, 1, true)
      assert.matches("runtime_error.lua:4: in", r.err, 1, true)
    end)

    it("exits 1 naming the file and line for a syntax error, after the -e chunks ran",
       function()
      local r = run("-e 'print(\"e ran\")' " .. q(FIX .. "syntax_error.lua"))
      assert.equal(1, r.code)
      assert.equal("e ran\n", r.out)
      assert.matches("^baton: [^\n]*syntax_error%.lua:3: unexpected symbol near '='\n$", r.err)
    end)

    it("exits 1 naming the file when the script does not exist", function()
      local r = run(q(FIX .. "no_such_script.lua"))
      assert.equal(1, r.code)
      assert.matches("^baton: cannot open [^\n]*no_such_script%.lua", r.err)
    end)

    it("reports an error object through its __tostring, or by its type", function()
      local r = run("-e 'error(setmetatable({}, { __tostring = function() return \"custom\" end }))'")
      assert.equal(1, r.code)
      assert.matches("^baton: custom\nstack traceback:", r.err)
      r = run("-e 'error({})'")
      assert.equal(1, r.code)
      assert.matches("^baton: %(error object is a table value%)\n", r.err)
    end)
  end)

  describe("SIGINT", function()
    it("aborts the main task, runs its <close> handlers and exits 130", function()
      local r = interrupt("interrupt.lua", 1)
      assert.equal(130, r.code)
      assert.matches("main chunk closed\n", r.out, 1, true)
      assert.matches("spawned task closed\n", r.out, 1, true)
      assert.not_matches("slept to the end", r.out, 1, true)
      assert.equal("baton: interrupted\n", r.err)
    end)

    it("interrupts a main chunk that never yields, running its close handlers", function()
      local r = interrupt("busy_loop.lua", 1)
      assert.equal(130, r.code)
      assert.matches("busy main closed\n", r.out, 1, true)
      assert.equal("baton: interrupted\n", r.err)
    end)

    it("ends the process at once on a second SIGINT while the abort hangs", function()
      local r = interrupt("hang_on_close.lua", 2)
      assert.equal(130, r.code)
      assert.matches("closing forever\n", r.out, 1, true)
      assert.equal("", r.err)
    end)
  end)
end)
