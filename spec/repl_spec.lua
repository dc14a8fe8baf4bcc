-- The REPL of the `baton` executable, driven for real through a pseudo-terminal by
-- spec/pty/ptydrive.py: keystrokes go through the terminal (Ctrl-C raises SIGINT, Tab
-- completes), and the assertions are on what appears: the output as a log, and the screen
-- as a terminal shows it. With stdin a pipe or a file it must behave like `lua`.
local baton = require "baton"
local H = require "spec.helper"
local json = baton.json

local EXE, SRC = H.EXE, H.SRC
local DRIVER = SRC .. "/spec/pty/ptydrive.py"

local CTRL_C, CTRL_D, TAB, UP = "\3", "\4", "\t", "\27[A"
-- Expectations are Python regular expressions, matched against the output so far.
local PROMPT = "> $"  -- the prompt, at the end of the output so far

-- A regular expression matching s literally.
local function lit(s)
  return (s:gsub("[%^%$%(%)%.%[%]%*%+%-%?{}|\\]", "\\%0"))
end

local q, slurp, write_temp, temp_dir, remove_dir =
  H.q, H.slurp, H.write_temp, H.temp_dir, H.remove_dir

-- Runs `baton <args>` on a terminal through the steps (see ptydrive.py) and returns the
-- report: { ok, error, exit, steps = { { t, match, screen, cursor }... }, output, screen }.
-- opts.env: extra environment (name -> value, false to unset); HOME is a fresh directory
-- and BATON_HISTORY is empty (no history file) unless given.
local function session(steps, opts)
  opts = opts or {}
  local home = temp_dir()
  local env = { TERM = "xterm", HOME = home, BATON_HISTORY = "", LUA_INIT = false }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local flags = {}
  for k, v in pairs(env) do
    if v == false then flags[#flags + 1] = "--unset " .. q(k)
    else flags[#flags + 1] = "--env " .. q(k .. "=" .. v) end
  end
  local stepfile = write_temp(json.encode(steps))
  local cmd = string.format("python3 %s %s -- %s %s < %s", q(DRIVER), table.concat(flags, " "),
                            q(EXE), opts.args or "", q(stepfile))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  os.remove(stepfile)
  local r = json.decode(out)
  assert(type(r) == "table", "the pty driver failed: " .. out)
  r.home = home
  if not opts.keep_home then remove_dir(home) end
  return r
end

-- Asserts that every step passed, showing the transcript when one did not.
local function assert_ok(r)
  if r.ok ~= true then
    error(string.format("%s\n--- output:\n%s\n--- screen:\n%s", tostring(r.error), r.output,
                        table.concat(r.screen, "\n")), 2)
  end
end

local function last_rows(screen, n)
  return table.concat(screen, "\n", math.max(1, #screen - n + 1), #screen)
end

-- The line typed, the value printed, the next prompt.
local function eval(line, expect)
  return { send = line .. "\r" }, { expect = expect }, { expect = PROMPT }
end

local function steps(...)
  local list = { { expect = PROMPT, timeout = 10 } }
  for _, s in ipairs({ ... }) do list[#list + 1] = s end
  return list
end

local function exit_steps(list)
  list[#list + 1] = { send = CTRL_D }
  list[#list + 1] = { wait = 10 }
  return list
end

describe("the REPL on a terminal", function()
  it("opens with baton's version and says that local names do not persist", function()
    local r = session(exit_steps(steps()))
    assert_ok(r)
    assert.matches("^baton %d+%.%d+%.%d+ %(Lua 5%.4%.%d+, libuv [%d.]+%)\n", r.output)
    assert.matches("`local` names do not persist between lines", r.output, 1, true)
    assert.equal(0, r.exit)
  end)

  it("prints the value of an expression, of =expr and of several values", function()
    local list = steps()
    for _, s in ipairs({ eval("1 + 1", "\n2\n"), eval("=6 * 7", "\n42\n"),
                         eval("'a' .. 'b', nil, 3.5", '\n"ab"\tnil\t3\\.5\n') }) do
      list[#list + 1] = s
    end
    local r = session(exit_steps(list))
    assert_ok(r)
    assert.equal(0, r.exit)
  end)

  it("prints a table pretty: nested, keys sorted, strings quoted, cycles marked", function()
    local r = session(exit_steps(steps(
      { send = "t = { b = 2, a = { 1, 2 }, 'x', name = 'it\\'s' }\r" }, { expect = PROMPT },
      { send = "t\r" }, { expect = lit('{ "x", a = { 1, 2 }, b = 2, name = "it\'s" }\n') },
      { expect = PROMPT },
      { send = "t.self = t\r" }, { expect = PROMPT },
      { send = "t\r" }, { expect = lit("<1>{ \"x\", a = { 1, 2 }, b = 2, name = " ..
                                                   "\"it's\", self = <cycle 1> }\n") },
      { expect = PROMPT })))
    assert_ok(r)
  end)

  it("keeps the last result in _ and lists the live tasks with .tasks", function()
    local r = session(exit_steps(steps(
      eval("6 * 7", "\n42\n"), eval("_ + 1", "\n43\n"), eval("nil", "\nnil\n"),
      eval("_", "\n43\n"),
      { send = "t = baton.spawn{ name = 'ticker', function() baton.sleep(60000) end }\r" },
      { expect = PROMPT },
      { send = "g = baton.group{ name = 'crew', detached = true }; g:spawn{ name = 'member', function() baton.channel(1):recv() end }\r" },
      { expect = PROMPT },
      { send = ".tasks\r" },
      { expect = "ID +NAME +STATUS +AGE +PARENT +WAITS ON\n" },
      { expect = "\n +\\d+ +ticker +waiting +\\d+ ms +sleep until \\+\\d+ ms\n" },
      { expect = "member +waiting +\\d+ ms +group crew +channel recv\n" },
      { expect = "\\d+ tasks\n" }, { expect = PROMPT })))
    assert_ok(r)
    assert.equal(0, r.exit)
  end)

  it("continues an incomplete chunk with >> and runs a function defined over lines", function()
    local r = session(exit_steps(steps(
      { send = "function twice(x)\r" }, { expect = ">> $" },
      { send = "  return 2 * x\r" }, { expect = ">> $" },
      { send = "end\r" }, { expect = PROMPT },
      { send = "twice(21)\r" }, { expect = "\n42\n" }, { expect = PROMPT })))
    assert_ok(r)
  end)

  it("does not keep local names from one line to the next, but keeps globals", function()
    local r = session(exit_steps(steps(
      { send = "local l = 1; g = 2\r" }, { expect = PROMPT },
      { send = "l, g\r" }, { expect = "\nnil\t2\n" }, { expect = PROMPT })))
    assert_ok(r)
  end)

  it("prints an error with its traceback and goes on", function()
    local r = session(exit_steps(steps(
      { send = "error('boom')\r" }, { expect = "stdin:1: boom\nstack traceback:\n" },
      { expect = PROMPT },
      { send = "x = 1 +\r" }, { expect = ">> $" }, { send = ")\r" },
      { expect = lit("stdin:2: unexpected symbol near ')'\n") }, { expect = PROMPT },
      { send = "'still here'\r" }, { expect = '"still here"' }, { expect = PROMPT })))
    assert_ok(r)
    assert.equal(0, r.exit)
  end)

  it("runs each line as a task: baton.sleep(200) returns after at least 200 ms", function()
    local r = session(exit_steps(steps(
      { send = "t0 = baton.clock(); baton.sleep(200); print('slept', baton.clock() - t0)\r" },
      { expect = "slept\t[\\d.]+\n" }, { expect = PROMPT })))
    assert_ok(r)
    -- Measured inside baton (the line's own clock): at least 200 ms, and 199 on a finer
    -- clock than the loop's whole milliseconds. The driver's view is looser: its send
    -- step's time is taken after it wrote and read what was pending (198.3 ms seen once on
    -- a loaded machine), so it only shows the line did wait.
    local sent, slept = r.steps[2].t, r.steps[3].t
    assert.is_true(slept - sent >= 150, "returned after " .. (slept - sent) .. " ms")
    local inside = tonumber(r.steps[3].match:match("slept\t([%d.]+)"))
    assert.is_true(inside >= 199, "baton.clock saw " .. inside .. " ms")
  end)

  it("shows a background task's output above the prompt, the typed line intact", function()
    local r = session(exit_steps(steps(
      { send = "baton.spawn(function() baton.sleep(300) print('tick from task') end)\r" },
      { expect = "baton\\.Task#\\d+" }, { expect = PROMPT },
      { send = "return 40" },                       -- typed, not entered
      { expect = "tick from task\n", timeout = 5 },
      { sleep = 150 },                              -- the prompt is drawn again
      { send = "+2\r" }, { expect = "\n42\n" }, { expect = PROMPT })))
    assert_ok(r)
    local idle = r.steps[7]
    assert.equal("tick from task\n> return 40", last_rows(idle.screen, 2))
    assert.same({ #idle.screen - 1, #"> return 40" }, idle.cursor)
    -- the output came while the typed line sat at the prompt, not entered
    local before = r.output:sub(1, r.output:find("tick from task\n", 1, true) - 1)
    assert.matches("> return 40$", before)
  end)

  it("a background progress writes plain lines above the prompt, the typed line intact",
     function()
    local r = session(exit_steps(steps(
      { send = "p = baton.progress{ total = 20, label = 'work', interval_ms = 200 }\r" },
      { expect = PROMPT },
      { send = "baton.spawn(function() for _ = 1, 20 do p:advance() baton.sleep(30) end p:done() end)\r" },
      { expect = "baton\\.Task#\\d+" }, { expect = PROMPT },
      { send = "return 40" },                       -- typed, not entered
      { expect = "work: 20/20, [\\d.]+/s, in [\\d.]+s\n", timeout = 5 },
      { sleep = 150 },                              -- the prompt is drawn again
      { send = "+2\r" }, { expect = "\n42\n" }, { expect = PROMPT })))
    assert_ok(r)
    local idle = r.steps[9]
    assert.matches("^work: 20/20, [%d.]+/s, in [%d.]+s\n> return 40$", last_rows(idle.screen, 2))
    local _, finals = r.output:gsub("work: 20/20", "")
    assert.equal(1, finals)  -- the last line once, not again by done()
    assert.is_nil(r.output:find("\27[K", 1, true))  -- no bar redrawn in place over the prompt
  end)

  it("aborts the running line on Ctrl-C, runs its close handlers and prompts again", function()
    local r = session(exit_steps(steps(
      { send = "do local c <close> = setmetatable({}, { __close = function() " ..
               "print('close handler ran') end }); baton.sleep(10000) end\r" },
      { sleep = 300 },
      { send = CTRL_C },
      { expect = "close handler ran\n", timeout = 5 }, { expect = "interrupted\n" },
      { expect = PROMPT },
      { send = "'after'\r" }, { expect = '"after"' }, { expect = PROMPT })))
    assert_ok(r)
    local pressed, back = r.steps[4].t, r.steps[7].t
    assert.is_true(back - pressed < 3000, "back at the prompt after " .. (back - pressed) .. " ms")
    assert.equal(0, r.exit)
  end)

  it("aborts a line that never yields (while true do end) on Ctrl-C", function()
    local r = session(exit_steps(steps(
      { send = "do local c <close> = setmetatable({}, { __close = function() " ..
               "print('busy closed') end }); while true do end end\r" },
      { sleep = 300 },
      { send = CTRL_C },
      { expect = "busy closed\n", timeout = 5 }, { expect = "interrupted\n" },
      { expect = PROMPT },
      { send = "1\r" }, { expect = "\n1\n" }, { expect = PROMPT })))
    assert_ok(r)
  end)

  it("clears the line and any unfinished chunk on Ctrl-C at the prompt", function()
    local r = session(exit_steps(steps(
      { send = CTRL_C }, { expect = "\\^C\n> $" },
      { send = "not lua at all" }, { sleep = 100 }, { send = CTRL_C }, { expect = "\\^C\n> $" },
      { send = "function f()\r" }, { expect = ">> $" }, { send = CTRL_C },
      { expect = "\\^C\n> $" },
      { send = "'fresh'\r" }, { expect = '\n"fresh"\n' }, { expect = PROMPT })))
    assert_ok(r)
    assert.not_matches("syntax error", r.output, 1, true)
    assert.not_matches("expected", r.output, 1, true)
  end)

  it("exits 0 on Ctrl-D, after aborting the tasks still running (close handlers run)", function()
    local r = session(steps(
      { send = "bg = baton.spawn(function() local c <close> = setmetatable({}, { __close = " ..
               "function() print('background closed') end }); baton.sleep(100000) end)\r" },
      { expect = PROMPT },
      { send = CTRL_D }, { expect = "background closed\n", timeout = 5 }, { wait = 10 }))
    assert_ok(r)
    assert.equal(0, r.exit)
  end)

  it("saves the history to BATON_HISTORY and recalls it in the next run", function()
    local dir = temp_dir()
    local hist = dir .. "/history"
    local r = session(exit_steps(steps(
      { send = "x = 6 * 7\r" }, { expect = PROMPT },
      { send = "function h()\r" }, { expect = ">> $" }, { send = "return 'multi'\r" },
      { expect = ">> $" }, { send = "end\r" }, { expect = PROMPT })),
      { env = { BATON_HISTORY = hist } })
    assert_ok(r)
    local saved = slurp(hist)
    assert.is_truthy(saved, "no history file")
    assert.matches("x = 6 * 7\n", saved, 1, true)
    -- second run: Up recalls the function (a whole multi-line entry), Up Up the assignment
    r = session(exit_steps(steps(
      { send = UP }, { sleep = 100 }, { send = "\r" }, { expect = PROMPT },
      { send = "h()\r" }, { expect = '\n"multi"\n' }, { expect = PROMPT },
      { send = UP .. UP .. UP }, { sleep = 100 }, { send = "\r" }, { expect = PROMPT },
      { send = "=x\r" }, { expect = "\n42\n" }, { expect = PROMPT })),
      { env = { BATON_HISTORY = hist } })
    assert_ok(r)
    remove_dir(dir)
  end)

  it("keeps the history in ~/.baton_history by default, none when BATON_HISTORY is empty",
     function()
    local r = session(exit_steps(steps(eval("1", "\n1\n"))),
                      { env = { BATON_HISTORY = false }, keep_home = true })
    assert_ok(r)
    assert.matches("\n1\n", slurp(r.home .. "/.baton_history") or "", 1, true)
    remove_dir(r.home)
    r = session(exit_steps(steps(eval("1", "\n1\n"))), { keep_home = true })
    assert_ok(r)
    assert.is_nil(slurp(r.home .. "/.baton_history"))
    remove_dir(r.home)
  end)

  it("completes globals, fields after '.' and methods after ':' with Tab", function()
    local r = session(exit_steps(steps(
      { send = "baton.sem" .. TAB }, { expect = "semaphore" }, { sleep = 100 },
      { send = "(3)\r" }, { expect = "baton\\.Semaphore" }, { expect = PROMPT },
      { send = "s = baton.semaphore(2)\r" }, { expect = PROMPT },
      { send = "s:acq" .. TAB }, { expect = "uire" }, { sleep = 100 },
      { send = "\21" },   -- Ctrl-U: kill the line
      { send = "pri" .. TAB }, { expect = "nt" }, { sleep = 100 },
      { send = "('done')\r" }, { expect = "\ndone\n" }, { expect = PROMPT })))
    assert_ok(r)
    local function row(i) return r.steps[i].screen[#r.steps[i].screen] end
    assert.equal("> baton.semaphore", row(4))
    assert.equal("> s:acquire", row(12))
    assert.equal("> print", row(16))
  end)

  it("enters the REPL after a script with -i, with what the script spawned still running",
     function()
    local r = session(exit_steps(steps(
      { send = "bg:status()\r" }, { expect = '"waiting"' }, { expect = PROMPT },
      { send = "bg:join()\r" }, { expect = "\ntrue\t42\n" }, { expect = PROMPT })),
      { args = "-i -e " .. q("bg = baton.spawn(function() baton.sleep(500) return 42 end)") })
    assert_ok(r)
  end)

  it("leaves the terminal's stdin blocking, as the shell expects", function()
    local r = session(exit_steps(steps(
      eval("io.open('/proc/self/fdinfo/0'):read('a'):match('flags:%s*(%d+)')", '"\\d+"'))))
    assert_ok(r)
    local flags = tonumber(r.steps[3].match:match("%d+"), 8)
    assert.equal(0, flags & 0x800, "O_NONBLOCK is set on stdin")  -- 04000 octal
  end)
end)

describe("the executable with stdin a pipe or a file", function()
  local function sh(cmd)
    local out = os.tmpname()
    local _, how, code = os.execute(cmd .. " >" .. q(out) .. " 2>&1")
    local text = slurp(out)
    os.remove(out)
    return how == "exit" and code or 128 + code, text
  end

  it("runs a piped stdin as a script, like lua: echo 'print(1+1)' | baton -", function()
    local code, out = sh("echo 'print(1+1)' | " .. q(EXE) .. " -")
    assert.equal(0, code)
    assert.equal("2\n", out)
    code, out = sh("echo 'print(1+1)' | " .. q(EXE))
    assert.equal(0, code)
    assert.equal("2\n", out)
  end)

  it("runs a file on stdin as a script: baton < file", function()
    local f = write_temp("baton.sleep(10)\nprint('from the file', ...)\n")
    local code, out = sh(q(EXE) .. " < " .. q(f))
    os.remove(f)
    assert.equal(0, code)
    assert.equal("from the file\n", out)
  end)

  it("with -i reads plain lines: values and errors printed, no banner, no prompt", function()
    local input = "1 + 1\nfunction f()\nreturn 'f ran'\nend\nf()\nerror('oops')\n" ..
                  "baton.sleep(50) print('slept')\n{ k = 'v' }\n"
    local f = write_temp(input)
    local code, out = sh(q(EXE) .. " -i < " .. q(f))
    assert.equal(0, code)
    assert.equal('2\n"f ran"\nstdin:1: oops\nstack traceback:\n\t[C]: in function ' ..
                 "'error'\n\tstdin:1: in main chunk\nslept\n{ k = \"v\" }\n", out)
    code, out = sh("cat " .. q(f) .. " | " .. q(EXE) .. " -i")
    os.remove(f)
    assert.equal(0, code)
    assert.matches('^2\n"f ran"\n', out)
    assert.not_matches("> ", out, 1, true)
  end)
end)
