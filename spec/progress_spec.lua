-- baton.progress: on a terminal one line redrawn in place (carriage returns, no newline until
-- done), a plain line every interval when stderr is not a terminal, a redraw timer that never
-- keeps the loop alive, and misuse raising. The terminal is a real pseudo-terminal driven by
-- spec/pty/ptydrive.py.
local baton = require "baton"
local H = require "spec.helper"

local json = baton.json
local q = H.q
local DRIVER = H.SRC .. "/spec/pty/ptydrive.py"

-- 40 items over about a second, 4 of them failed, then done and a marker on stdout.
local SCRIPT = [[
  local p = baton.progress { total = 40, label = "crawl" }
  local g = baton.group { limit = 4 }
  for i = 1, 40 do
    g:spawn(function()
      baton.sleep(80)
      if i % 10 == 0 then p:fail() else p:advance() end
    end)
  end
  g:join_all()
  local done, failed = p:done()
  print("END " .. done .. " " .. failed)
]]

local function on_pty(script)
  local file = H.write_temp(script)
  local steps = H.write_temp(json.encode { { expect = "END \\d+ \\d+", timeout = 30 }, { wait = 10 } })
  local cmd = ("python3 %s --cols 100 --env TERM=xterm -- %s %s < %s")
    :format(q(DRIVER), q(H.EXE), q(file), q(steps))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  os.remove(file)
  os.remove(steps)
  local r = json.decode(out)
  assert(type(r) == "table", "the pty driver failed: " .. out)
  return r
end

describe("baton.progress", function()
  it("draws one line redrawn in place on a terminal", function()
    local r = on_pty(SCRIPT)
    assert.is_true(r.ok, tostring(r.error) .. "\n" .. r.output)
    assert.equal(0, r.exit)
    local raw = r.raw
    local before_end = raw:sub(1, raw:find("END", 1, true) - 1)
    local redraws = select(2, before_end:gsub("\rcrawl ", ""))
    assert.is_true(redraws >= 5, "redraws: " .. redraws)  -- ~1 s at most every 100 ms
    assert.is_true(redraws <= 40, "redraws: " .. redraws)
    -- the line ends once, at done(): no newline between the redraws
    local progress_part = before_end:match("^(.*)\r?\n$") or before_end
    assert.is_nil(progress_part:find("\n", 1, true), "a newline before done()")
    assert.matches("\rcrawl %[#+%] 40/40 %(4 failed%)  [%d.]+/s, in [%d.]+s\27%[K\r?\n$", before_end)
    local finals = select(2, before_end:gsub("40/40 %(4 failed%)", ""))
    assert.equal(1, finals, "the finished bar drawn again by done(): " .. before_end)
    assert.matches("%[#*%-+%] %d+/40", before_end)  -- an unfinished bar was drawn
    assert.matches("ETA [%d.]+s", before_end)
    -- the screen shows one progress row, not one per redraw
    local rows = 0
    for _, row in ipairs(r.screen) do if row:find("crawl", 1, true) then rows = rows + 1 end end
    assert.equal(1, rows)
  end)

  it("prints a plain line every interval_ms when stderr is not a terminal", function()
    local script = H.write_temp([[
      local p = baton.progress { total = 10, label = "batch", interval_ms = 200 }
      for _ = 1, 10 do baton.sleep(100); p:advance() end
      p:done()
    ]])
    local r = H.run(q(script))
    os.remove(script)
    assert.equal(0, r.code)
    assert.is_nil(r.err:find("\r", 1, true))
    local lines = {}
    for line in r.err:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.is_true(#lines >= 3 and #lines <= 8, r.err)  -- ~1 s: a line per 200 ms, the last
    for i = 1, #lines - 1 do assert.matches("^batch: %d+/10, [%d.]+/s, ETA [%d.]+s$", lines[i]) end
    assert.matches("^batch: 10/10, [%d.]+/s, in [%d.]+s$", lines[#lines])
  end)

  it("a progress left open when the run ends prints its final line", function()
    local script = H.write_temp([[
      local p = baton.progress { total = 10, label = "left", interval_ms = 5000 }
      p:advance(3)
      error("boom")
    ]])
    local r = H.run(q(script))
    os.remove(script)
    assert.equal(1, r.code)
    assert.matches("left: 3/10, [%d.]+/s, in [%d.]+s\n", r.err)
  end)

  it("never keeps the loop alive and counts what it was told", H.async(function()
    local p = baton.progress { total = 3, label = "x", tty = false }
    p:advance(2):fail()
    assert.same({ 2, 1, 3 }, { p:counts() })
    local q2 = baton.progress { tty = false }
    assert.same({ 0, 0 }, { q2:counts() })
    H.raises("bad argument #1 'total'", baton.progress, { total = -1 })
    H.raises("unknown option", baton.progress, { totl = 3 })
    H.raises("bad argument #1 'n'", p.advance, p, -1)
    assert.same({ 2, 1 }, { p:done() })
    assert.same({ 2, 1 }, { p:done() })  -- idempotent
    H.raises("baton.progress:advance: the progress is done", p.advance, p)
    q2:done()
  end))

  it("hostile input: a label's control characters are not written, a long label is cut "
     .. "between characters, a far ETA and huge counts stay sane", function()
    local script = H.write_temp([[
      local p = baton.progress { total = 1 << 53, tty = false, interval_ms = 20,
                                 label = "a\nb\27[2Jc\r\tzz" .. string.rep("\u{e9}", 70) }
      p:advance(1)
      baton.sleep(150)                       -- a line with an ETA of ~10^12 s at least
      for _ = 1, 1100 do p:advance(1 << 53) end
      local done = p:counts()
      print(done > 0 and "COUNTS OK" or ("COUNTS " .. done))
      p:done()
      local z = baton.progress { total = 0, label = "zero", tty = false }
      z:advance(3)
      z:done()
    ]])
    local r = H.run(q(script))
    os.remove(script)
    assert.equal(0, r.code, r.err)
    assert.matches("COUNTS OK", r.out)
    local lines = {}
    for line in r.err:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.is_true(#lines >= 3, r.err)
    for _, line in ipairs(lines) do
      assert.is_nil(line:find("[%c\127]"), "a control character in: " .. line)
      assert.is_true(utf8.len(line) ~= nil, "not UTF-8: " .. line)
      assert.is_nil(line:find("-", 1, true), "a negative figure in: " .. line)
    end
    assert.matches("^a%?b%?%[2Jc%?%?zz[\u{e9}]+: 1/9007199254740992, [%d.]+/s, ETA %d+h%d%dm$", lines[1])
    assert.matches("^zero: 3/0, ", lines[#lines])
  end)

  it("does not stop baton.run from seeing a deadlock", function()
    local script = H.write_temp([[
      local p = baton.progress { total = 5, tty = false }
      p:advance()
      local s = baton.semaphore(1)
      local held = s:acquire()
      s:acquire()
    ]])
    local r = H.run(q(script), { timeout = 20 })
    os.remove(script)
    assert.equal(1, r.code)
    assert.matches("deadlock", r.err)
  end)
end)
