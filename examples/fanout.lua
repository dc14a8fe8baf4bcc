-- fanout.lua — the main job: fan real local commands out as "tools", at most 3 at once,
-- collect what finishes under ONE deadline, report settled / failed / still pending, and
-- shut the rest down (their child processes are killed; nothing is left running).
--
--   baton examples/fanout.lua [dir] [deadline_ms]      (make run uses the repository)
local baton = require "baton"

local dir = arg and arg[1] or "."
local deadline_ms = tonumber(arg and arg[2]) or 1500
local MAX_AT_ONCE = 3

-- Each tool is a command (argv, never a shell) and a function that digests its output.
local function lines(s) local n = 0 for _ in s:gmatch("[^\n]+") do n = n + 1 end return n end
local tools = {
  { name = "C sources", argv = { "find", dir, "-name", "*.c", "-not", "-path", "*/build*" },
    digest = function(r) return ("%d files"):format(lines(r.stdout)) end },
  { name = "lines of C", argv = { "find", dir .. "/src", "-name", "*.[ch]", "-exec", "wc", "-l", "{}", "+" },
    digest = function(r) return (r.stdout:match("(%d+) total") or "?") .. " lines" end },
  { name = "Lua specs", argv = { "find", dir .. "/spec", "-name", "*_spec.lua" },
    digest = function(r) return ("%d spec files"):format(lines(r.stdout)) end },
  { name = "spec cases", argv = { "grep", "-rcE", "^[[:space:]]*it\\(", dir .. "/spec" },
    digest = function(r)
      local n = 0
      for c in r.stdout:gmatch(":(%d+)") do n = n + tonumber(c) end
      return ("%d it() blocks"):format(n)
    end },
  { name = "FIXME markers", argv = { "grep", "-rn", "FIXME", dir .. "/src" },
    ok_codes = { [0] = true, [1] = true },   -- grep: 1 means "none found"
    digest = function(r) return ("%d found"):format(lines(r.stdout)) end },
  { name = "recent commits", argv = { "git", "-C", dir, "log", "--oneline", "-3" },
    digest = function(r) return (r.stdout:match("[^\n]*") or ""):sub(1, 50) end },
  { name = "disk usage", argv = { "du", "-sk", dir },
    digest = function(r) return (r.stdout:match("^(%d+)") or "?") .. " KiB" end },
  { name = "missing tool", argv = { "no-such-tool-baton-demo" } },
  { name = "system headers", argv = { "find", "/usr/include", "-name", "*.h" },
    digest = function(r) return ("%d headers"):format(lines(r.stdout)) end },
  { name = "whole /usr scan", argv = { "find", "/usr", "-type", "f", "-size", "+256k" },
    digest = function(r) return ("%d large files"):format(lines(r.stdout)) end },
}

-- One tool call: run the command, turn its outcome into a result or an error.
local function call(tool)
  local t0 = baton.now()
  local r, err, kind = baton.process.run(tool.argv)
  local ms = baton.now() - t0
  if not r then error({ kind = kind, message = err, ms = ms }) end
  local ok_codes = tool.ok_codes or { [0] = true }
  if not ok_codes[r.code] then
    error({ kind = "exit", message = ("exit %d: %s"):format(r.code, (r.stderr:match("[^\n]*"))), ms = ms })
  end
  return tool.digest(r), ms
end

-- A progress line on stderr: redrawn in place on a terminal, a plain line every few seconds
-- in a log (docs/observability.md).
local progress = baton.progress { total = #tools, label = "tools" }
local function tracked(tool)
  local ok, a, b = pcall(call, tool)
  if not ok and type(a) == "table" and a.kind == "cancelled" then error(a, 0) end  -- shut down
  if ok then progress:advance() else progress:fail() end
  if not ok then error(a, 0) end
  return a, b
end

local g <close> = baton.group { limit = MAX_AT_ONCE }
local by_task = {}
for _, tool in ipairs(tools) do by_task[g:spawn { name = tool.name, tracked, tool }] = tool end

local t0 = baton.now()
local finished = g:wait_within(deadline_ms)
progress:done()
print(("%d tools, at most %d at once, one deadline of %d ms (took %d ms)\n")
  :format(#tools, MAX_AT_ONCE, deadline_ms, baton.now() - t0))

local settled, failed = 0, 0
for _, t in ipairs(finished) do
  local tool = by_task[t]
  local ok, a, b = t:join()
  if ok then
    settled = settled + 1
    print(("  settled  %-16s %-28s %5d ms"):format(tool.name, a, b))
  else
    failed = failed + 1
    local e = type(a) == "table" and a or { kind = "error", message = tostring(a) }
    print(("  failed   %-16s %-28s %5s ms"):format(tool.name,
          e.kind .. ": " .. (e.message or ""):sub(1, 40), e.ms or "?"))
  end
end
local pending = g:live()
for t, tool in pairs(by_task) do
  if t:status() ~= "done" and t:status() ~= "failed" then
    print(("  pending  %-16s (%s)"):format(tool.name, t:status()))
  end
end
print(("\nsummary: %d settled, %d failed, %d still pending at the deadline"):format(settled, failed, pending))
g:shutdown()   -- aborts the pending ones: their processes get TERM, then KILL
