-- baton.mcp.stdio — the stdio transport of the MCP client: one server process, started
-- from an argv (never a shell), spoken to in JSON-RPC 2.0, one JSON message per
-- "\n"-terminated line each way. The session (baton.mcp.session) is transport-agnostic;
-- this file is the process and its reader.
--
-- Invariants.
-- * One reader task per client reads the server's stdout line by line (proc:read_line, the
--   process's max_line_bytes set to the client's) and routes each line through the
--   session. It is the only task that ever waits to read from the process (one reader per
--   process is the rule of baton.process); callers wait on a baton.future per request that
--   routing fills. So a caller may not wait for a reply inside the reader task (a
--   notification handler): baton.mcp raises for that.
-- * Any task may wait in proc:write while the server is not reading (backpressure: at most
--   max_write_queue_bytes queued); the reader too, answering a server request, so a server
--   that sends requests and never reads its stdin stops being read, and cannot grow
--   baton's memory.
-- * The reader holds only the session, never the client: a dropped client is collected and
--   its __gc releases the process (TERM, then KILL) and aborts the reader. baton.run
--   releases open processes when it ends anyway.
-- * When the reader stops, the session is dead: the server exited (its exit status and the
--   last line of its stderr say how), sent a line over max_line_bytes, or the client was
--   closed.
local baton = require "baton"
local S = require "baton.mcp.session"

local find, sub, format = string.find, string.sub, string.format
local pcall, tostring = pcall, tostring
local now, current = baton.now, baton.current

local T = {}

-- One line of the server's stderr for messages about its death: the last line that names
-- an error (Node ends a crash with its version line), else the last non-empty one.
local function stderr_tail(st)
  local ok, s = pcall(st.proc.stderr, st.proc)
  if not ok or s == nil or s == "" then return nil end
  local last, err
  for line in s:gmatch("[^\n]+") do
    if line:find("%S") then
      last = line
      if line:find("[Ee]rror") then err = line end
    end
  end
  local pick = err or last
  if pick and #pick > 300 then pick = sub(pick, 1, 300) .. "..." end
  return pick and (pick:gsub("^%s+", ""))
end

local function handle_line(st, line)
  local ok, err = S.route_text(st, line)
  if not ok then
    S.warn(st, format("skipped a line that is not JSON (%s): %s", tostring(err),
                      sub(line, 1, 100)))
  end
end

local function read_lines(st)
  local proc = st.proc
  local ok, err = pcall(function()
    while not st.dead do
      -- A line: "\n" ends it (JSON text escapes every control character, so a raw U+2028
      -- or "\r" never does; JSON's whitespace rules absorb "\r\n").
      local line, _, kind = proc:read_line()
      if not line then  -- EOF, the process was closed, or too long a line
        if kind == "too_large" then
          S.die(st, format("the server sent a line longer than max_line_bytes (%d)",
                           st.max_line), "too_large", { max_line_bytes = st.max_line })
        end
        break
      end
      if find(line, "[^ \t\r\n]") then handle_line(st, line) end
    end
  end)
  if st.dead then
    if st.dead.kind == "too_large" then pcall(proc.close_stdin, proc) end
    return
  end
  if not ok then
    if S.is_cancel(err) then return S.die(st, "the client was closed", "closed") end
    S.warn(st, "the reader failed: " .. tostring(err))
    return S.die(st, "the reader failed: " .. tostring(err), "closed")
  end
  if st.closed then return S.die(st, "the client was closed", "closed") end
  -- EOF: the server closed its stdout, which it does when it exits (or, still running,
  -- when it means to say no more: then it is said so).
  local what, code, sig = "the server closed its output and was still running 250 ms later", nil, nil
  local wok, c, s = pcall(proc.wait, proc, 250)
  if wok and c then
    code, sig = c, s
    what = "the server exited" .. (sig ~= 0 and format(" (killed by signal %d)", sig)
                                   or format(" (exit code %d)", code))
  end
  local tail = stderr_tail(st)
  S.die(st, what .. (tail and (": " .. tail) or ""), "closed",
        { pid = st.pid, code = code, signal = sig, stderr_tail = tail })
end

-- Starts the server for session st: argv `command`, opts env, cwd, process_group; the
-- reader task. true | nil, reason, kind (baton.process.spawn's: "io", "resource").
function T.open(st, command, opts)
  local argv = { stdin = true, cwd = opts.cwd, env = opts.env, max_line_bytes = st.max_line,
                 process_group = opts.process_group }
  for i = 1, #command do argv[i] = command[i] end
  local proc, perr, pkind = baton.process.spawn(argv)
  if not proc then
    return nil, tostring(perr), pkind == "nomem" and "resource" or pkind or "io"
  end
  st.proc, st.pid = proc, proc:pid()
  st.reader_task = baton.spawn(read_lines, st)
  return true
end

-- A message that is not a request: written (waiting while the server does not read);
-- false when the pipe is gone.
function T.send(st, text)
  local ok = st.proc:write(text .. "\n")
  if ok then st.stats.sent = st.stats.sent + 1 end
  return ok and true or false
end

-- A request: written within its deadline. true, the ms left | nil, reason, kind.
function T.begin(st, text, _, _, timeout_ms)
  local t0 = now()
  local ok, _, k = st.proc:write(text .. "\n", timeout_ms)
  if not ok then
    if k == "timeout" then return nil, "timed out", "timeout" end
    return nil, "cannot write to the server", "closed"
  end
  return true, math.max(timeout_ms - (now() - t0), 0)
end

function T.abort() end  -- a request written is written

-- close()'s waits: EOF, grace ms; SIGTERM, grace ms; SIGKILL; then returns once the
-- process is reaped (stats().processes is 0). Stops early when the session is released
-- meanwhile (by __close, say): the process is then no longer ours.
function T.stop(st, grace)
  local proc, reader = st.proc, st.reader_task
  local deadline = now() + grace
  pcall(proc.close_stdin, proc)
  if reader:join(grace) == nil and not st.released then
    reader:abort()  -- still reading: stop it, so that this task may wait on the process
    reader:join()
  end
  if not st.released then
    local left = deadline - now()
    if not (proc:wait(left > 0 and left or 0) or st.released) then
      proc:kill("TERM")
      if not (proc:wait(grace) or st.released) then
        proc:kill("KILL")
        proc:wait(5000)
      end
    end
  end
  proc:close(0, true)
end

-- Lets go at once: the process is released (SIGTERM, SIGKILL after grace ms), the reader
-- stopped (unless it is the caller).
function T.release(st, grace)
  if st.proc then pcall(st.proc.close, st.proc, grace) end
  local reader = st.reader_task
  if reader and reader ~= current() then pcall(reader.abort, reader) end
end

-- What the server wrote to its stderr (kept up to 64 MiB).
function T.stderr(st)
  local ok, s = pcall(st.proc.stderr, st.proc)
  return ok and s or ""
end

return T
