-- baton.mcp — a Model Context Protocol client over stdio (baton.process) or Streamable
-- HTTP (baton.http), in pure Lua.
--
-- The JSON-RPC core (pending ids, routing, handlers, progress, deadlines, cancellation,
-- stats) is shared; the transports differ only in how a message is sent (send() and the
-- write in request()) and where incoming messages come from. Over HTTP (connect{ url = })
-- there is no process and no reader task: each message is a POST from a task of its own
-- and a request's POST routes its answer (see "the Streamable HTTP transport" below).
--
-- Over stdio a client owns one server process, started from an argv (never a shell), and
-- talks JSON-RPC 2.0 to it, one JSON message per "\n"-terminated line. Calls are issued by any
-- number of tasks; one reader task per client reads the server's stdout line by line
-- (proc:read_line, the process's max_line_bytes set to the client's), decodes each line
-- and routes the message: a reply to the task waiting for its id, a notification to its
-- handlers (progress to the call that asked for it), a server request to a handler that
-- answers it.
--
-- Invariants.
-- * Only the reader task ever waits to read from the process (one reader per process is the
--   rule of baton.process); callers wait on a one-shot slot (below) that the reader fills.
--   Any task may wait in proc:write while the server is not reading (backpressure: at most
--   max_write_queue_bytes queued); the reader too, answering a server request, so a server
--   that sends requests and never reads its stdin stops being read, and cannot grow
--   baton's memory.
-- * Nothing a peer sends can kill the client: a line that is not JSON, a message that is
--   not JSON-RPC, an id MCP does not allow (not a string or an integer: 1e400, 1.5, a
--   table), a reply nobody asked for, is counted in stats().malformed, reported through
--   warn() and skipped. A server request with a user handler runs in a task of its own, at
--   most MAX_HANDLERS at once; beyond that it is answered with an error at once
--   (stats().rejected).
-- * Every request has a deadline (request_timeout_ms, 60 s by default, or the call's
--   timeout_ms): servers drop what they cannot parse without a word.
-- * A pending request is in `pending` from the moment it is written until it is answered,
--   times out, its task is aborted (then the server hears notifications/cancelled), or the
--   client dies; whichever comes first removes it, so a late reply is counted and dropped.
-- * The reader and the state it uses never reference the client object, so a client that
--   is dropped can be collected: its __gc releases the process (TERM, then KILL) and aborts
--   the reader. baton.run releases open processes when it ends anyway. A handler closure
--   that captures the client keeps it alive (the reader holds the handlers): close it.
-- * close() sets st.closed (no new requests, no server request handled), then waits under
--   pcall; whatever way it ends, release_now() lets go of the process, stops the reader,
--   wakes concurrent close() calls (st.closing) and aborts the handler tasks, last, and sets
--   st.released, which is what __close and __gc test.
-- * Handlers (notifications, progress) run in the reader task, under pcall: an error is a
--   warning, never the reader's death. Server requests with a user handler run in tasks of
--   the client's group, so a handler that waits (sampling, elicitation) holds up nothing.
--
-- Errors: misuse raises (bad arguments, unknown option keys, use after close, waiting for
-- a reply inside the reader); the world's outcomes return nil, message, kind with kind one
-- of "io" (cannot start; over HTTP also a failed transfer or a 5xx), "timeout", "closed",
-- "protocol", "rpc", "tool_error", "too_large".
local baton = require "baton"

local json = baton.json
local encode, decode, null = json.encode, json.decode, json.null
local find, sub, format = string.find, string.sub, string.format
local concat = table.concat
local type, pairs, ipairs, tostring, pcall, error = type, pairs, ipairs, tostring, pcall, error
local now, current = baton.now, baton.current

local M = {}

-- The protocol versions this client speaks, newest first; the first is the one it asks for.
M.SUPPORTED_VERSIONS = { "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05" }
M.VERSION = "0.1.0"

local DEFAULT_HANDSHAKE_MS = 30000
local DEFAULT_REQUEST_MS = 60000
local DEFAULT_GRACE_MS = 2000
local DEFAULT_MAX_LINE = 64 << 20
local MAX_HANDLERS = 64  -- server requests handled at once by client:handle functions
local ARRAY_MT = getmetatable(json.array({}))  -- what json.decode gives a JSON array

-- ---- misuse ----------------------------------------------------------------------------

local function misuse(fname, fmt, ...)
  error(fname .. ": " .. format(fmt, ...), 3)
end

local function check_fields(fname, t, known)
  for k in pairs(t) do
    if not known[k] then
      misuse(fname, "unknown option '%s'", tostring(k))
    end
  end
end

local function opt_type(fname, t, key, ty)
  local v = t[key]
  if v ~= nil and type(v) ~= ty then
    misuse(fname, "%s must be a %s (got %s)", key, ty, type(v))
  end
  return v
end

local function opt_ms(fname, t, key, def, allow_zero)
  local v = t[key]
  if v == nil then return def end
  if math.type(v) ~= "integer" and not (type(v) == "number" and v == v // 1) then
    misuse(fname, "%s must be an integer number of milliseconds (got %s)", key, tostring(v))
  end
  if v < 0 or (v == 0 and not allow_zero) then
    misuse(fname, "%s must be %s 0 (got %s)", key, allow_zero and ">=" or ">", tostring(v))
  end
  return math.tointeger(v)
end

-- ---- one-shot reply slots --------------------------------------------------------------
-- A slot is waited on by one task and filled once by another: a baton.future.

local slot_new = baton.future

local function slot_fill(w, msg) w:set(msg) end

-- the message once filled | nil, "timeout", "timeout"; raises the cancellation error when
-- the waiting task is aborted.
local function slot_wait(w, ms) return w:wait(ms) end

-- ---- state shared by the client and its reader ------------------------------------------

local function warn(st, msg)
  st.stats.warnings = st.stats.warnings + 1
  msg = "baton.mcp: " .. msg
  if st.on_warning then
    local ok, e = pcall(st.on_warning, msg)
    if ok then return end
    msg = msg .. " (and the warning handler failed: " .. tostring(e) .. ")"
  end
  baton.warn(msg)  -- baton.on_warning's handler, else stderr
end

-- The Streamable HTTP transport's POST of a message that is not a request (below).
local http_send

-- Writes one message, as JSON text; false when the pipe is gone. Over HTTP the message is
-- POSTed from a task of its own (the answer to a server request, notifications/cancelled),
-- or, with `wait`, from the calling task, which then gets the outcome (connect,
-- client:notify). Over stdio it waits while the server does not read (proc:write's
-- backpressure).
local function send_text(st, text, wait)
  if st.closed or st.dead then return false end
  if st.http then return http_send(st, text, wait) end
  local ok = st.proc:write(text .. "\n")
  if ok then st.stats.sent = st.stats.sent + 1 end
  return ok and true or false
end

-- The same for a message; a message JSON cannot hold (a function, NaN) is a warning.
local function send(st, msg, wait)
  local ok, text = pcall(encode, msg)
  if ok then return send_text(st, text, wait) end
  warn(st, format("cannot encode a message (%s): %s", tostring(msg.method or "reply"),
                  tostring(text)))
  return false
end

local function reply_error(st, id, code, message, data)
  send(st, { jsonrpc = "2.0", id = id, error = { code = code, message = message, data = data } })
end

local function reply(st, id, result)
  local ok, text = pcall(encode, { jsonrpc = "2.0", id = id, result = result })
  if ok then return send_text(st, text) end
  -- Tell the server, which would otherwise wait for an answer forever.
  warn(st, format("the result for request %s cannot be encoded as JSON: %s", tostring(id),
                  tostring(text)))
  reply_error(st, id, -32603, "Internal error: the result cannot be encoded as JSON")
end

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

-- Fails every pending request with (message, kind).
local function fail_pending(st, message, kind)
  local pending = st.pending
  st.pending = {}
  st.progress = {}
  st.in_flight = 0
  local err = { message = message, kind = kind }
  for _, w in pairs(pending) do slot_fill(w, err) end
end

-- The server is gone (or its stream is unusable): every call from now on fails so.
local function die(st, message, kind)
  if st.dead then return end
  st.dead = { message = message, kind = kind }
  fail_pending(st, message, kind)
end

-- ---- routing what the server sends ------------------------------------------------------

local function run_handler(st, h, id, method, params)
  local _ <close> = setmetatable({}, { __close = function() st.handling = st.handling - 1 end })
  local ok, res, emsg, ecode = pcall(h, params)
  st.inbound[id] = nil
  if st.closed or st.dead then return end
  if not ok then
    if type(res) == "table" and res.kind == "cancelled" then return end  -- aborted
    if type(res) == "table" and math.type(res.code) == "integer" then
      return reply_error(st, id, res.code, tostring(res.message or "error"), res.data)
    end
    warn(st, format("handler for %s failed: %s", method, tostring(res)))
    return reply_error(st, id, -32603, "Internal error: " .. tostring(res))
  end
  if res == nil then
    return reply_error(st, id, math.type(ecode) == "integer" and ecode or -32603,
                       emsg and tostring(emsg) or "Internal error")
  end
  reply(st, id, res)
end

local function on_server_request(st, m)
  local method, id = m.method, m.id
  st.stats.server_requests = st.stats.server_requests + 1
  if st.closed then return end  -- close() is under way: nothing more is sent or started
  local h = st.handlers[method]
  if h then
    if st.handling >= MAX_HANDLERS then  -- a flood: answer at once rather than pile up tasks
      st.stats.rejected = st.stats.rejected + 1
      if st.stats.rejected == 1 then
        warn(st, format("more than %d server requests at once: refusing %s (and more, "
                        .. "counted in stats().rejected)", MAX_HANDLERS, method))
      end
      return reply_error(st, id, -32000, format("baton.mcp: more than %d requests in progress",
                                                MAX_HANDLERS))
    end
    if #st.group > 32 then st.group:drain() end  -- forget finished handler tasks
    st.handling = st.handling + 1
    st.inbound[id] = st.group:spawn(run_handler, st, h, id, method, m.params)
  elseif method == "ping" then
    reply(st, id, json.object({}))
  elseif method == "roots/list" and st.roots then
    reply(st, id, { roots = json.array(st.roots) })
  else
    reply_error(st, id, -32601, "Method not found: " .. method)
  end
end

local function call_handler(st, what, fn, ...)
  local ok, e = pcall(fn, ...)
  if not ok then
    st.stats.handler_errors = st.stats.handler_errors + 1
    warn(st, format("%s handler failed: %s", what, tostring(e)))
  end
end

local function on_notification(st, m)
  local method, params = m.method, m.params
  st.stats.notifications = st.stats.notifications + 1
  if method == "notifications/progress" then
    local fn = type(params) == "table" and st.progress[params.progressToken]
    if fn then
      local total, message = params.total, params.message
      if total == null then total = nil end
      if message == null then message = nil end
      return call_handler(st, "on_progress", fn, params.progress, total, message)
    end
  elseif method == "notifications/cancelled" then
    local t = type(params) == "table" and st.inbound[params.requestId]
    if t then
      st.inbound[params.requestId] = nil
      t:abort()
    end
  end
  local hs = st.on[method]
  if hs then
    for i = 1, #hs do call_handler(st, method, hs[i], params) end
  elseif st.on_notification then
    call_handler(st, "on_notification", st.on_notification, method, params)
  end
end

-- What MCP allows as a request id: a string (valid UTF-8: it is echoed in the answer) or an
-- integer. Not a float (1e400 decodes to inf, 1.5, a huge integer to a float), not null.
local function valid_id(id)
  if math.type(id) == "integer" then return true end
  return type(id) == "string" and utf8.len(id) ~= nil
end

-- A short rendering of a peer's value for a warning: JSON, or one level of it when JSON
-- cannot hold something inside (inf).
local function show(v)
  local ok, s = pcall(encode, v)
  if not ok and type(v) == "table" then
    local parts = {}
    for k, x in pairs(v) do
      local xok, xs = pcall(encode, x)
      parts[#parts + 1] = format("%s=%s", tostring(k), xok and xs or tostring(x))
    end
    table.sort(parts)
    s = "{" .. concat(parts, ",") .. "}"
  elseif not ok then
    s = tostring(v)
  end
  if #s > 100 then s = sub(s, 1, 100) .. "..." end
  return s
end

-- Counts and reports a message that cannot be used, which is then dropped.
local function skip(st, why, m)
  st.stats.malformed = st.stats.malformed + 1
  warn(st, format("skipped %s: %s", why, show(m)))
end

local function route(st, m)
  if type(m) ~= "table" then return skip(st, "a message that is not an object", m) end
  if getmetatable(m) == ARRAY_MT or m[1] ~= nil then  -- a batch (protocol 2025-03-26)
    if #m == 0 then return skip(st, "an empty batch", m) end
    for _, x in ipairs(m) do route(st, x) end
    return
  end
  local method, id = m.method, m.id
  if method == nil then  -- a response
    local w = valid_id(id) and st.pending[id]
    if w then
      st.pending[id] = nil
      st.in_flight = st.in_flight - 1
      st.progress[id] = nil
      slot_fill(w, m)
    elseif m.result == nil and m.error == nil then
      skip(st, "a message with neither method nor result nor error", m)
    elseif id == nil or id == null then
      if m.error == nil then return skip(st, "a result without an id", m) end
      local e = type(m.error) == "table" and m.error or {}
      warn(st, format("the server reported an error: %s (%s)", tostring(e.message),
                      tostring(e.code)))
    elseif math.type(id) == "integer" and id >= 1 and id < st.next_id then
      st.stats.late = st.stats.late + 1  -- timed out or cancelled before the reply came
    else
      skip(st, "a response to no request of this client", m)
    end
  elseif type(method) ~= "string" or utf8.len(method) == nil then
    skip(st, "a message whose method is not a UTF-8 string", m)
  elseif id == nil then
    on_notification(st, m)
  elseif not valid_id(id) then  -- cannot be answered: the answer would carry another id
    skip(st, "a request whose id is not a string or an integer", m)
  else
    on_server_request(st, m)
  end
end

local function is_cancel(e) return type(e) == "table" and e.kind == "cancelled" end

-- Decodes and routes one message (a line, a JSON body, an event's data): true | nil, error.
-- Whatever the message holds, the client lives: an error while routing it (a bug, a value
-- nothing expected) is a warning; only the reader's own cancellation goes through.
local function route_text(st, text)
  st.stats.received = st.stats.received + 1
  local ok, m, err = pcall(decode, text)
  if not ok or m == nil then
    st.stats.malformed = st.stats.malformed + 1
    return nil, ok and err or m
  end
  local rok, rerr = pcall(route, st, m)
  if not rok then
    if is_cancel(rerr) then error(rerr, 0) end
    st.stats.malformed = st.stats.malformed + 1
    warn(st, format("failed to handle a message (%s): %s", tostring(rerr), show(m)))
  end
  return true
end

local function handle_line(st, line)
  local ok, err = route_text(st, line)
  if not ok then
    warn(st, format("skipped a line that is not JSON (%s): %s", tostring(err),
                    sub(line, 1, 100)))
  end
end

local function reader(st)
  local proc = st.proc
  local ok, err = pcall(function()
    while not st.dead do
      -- A line: "\n" ends it (JSON text escapes every control character, so a raw U+2028
      -- or "\r" never does; JSON's whitespace rules absorb "\r\n").
      local line, _, kind = proc:read_line()
      if not line then  -- EOF, the process was closed, or too long a line
        if kind == "too_large" then
          die(st, format("baton.mcp: the server sent a line longer than max_line_bytes (%d)",
                         st.max_line), "too_large")
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
    if is_cancel(err) then
      return die(st, "baton.mcp: the client was closed", "closed")
    end
    warn(st, "the reader failed: " .. tostring(err))
    return die(st, "baton.mcp: the reader failed: " .. tostring(err), "closed")
  end
  if st.closed then return die(st, "baton.mcp: the client was closed", "closed") end
  -- EOF: the server closed its stdout, which it does when it exits.
  local how = ""
  local wok, code, sig = pcall(proc.wait, proc, 250)
  if wok and code then
    how = sig ~= 0 and format(" (killed by signal %d)", sig) or format(" (exit code %d)", code)
  end
  local tail = stderr_tail(st)
  die(st, "baton.mcp: the server exited" .. how .. (tail and (": " .. tail) or ""), "closed")
end

-- ---- the Streamable HTTP transport -------------------------------------------------------
-- Every message the client sends is one POST to st.url from a task of its own, kept in
-- st.tasks (task -> true) until it ends, so that a timeout, a cancellation or close() can
-- abort it: the transfer leaves libcurl at once and the stream (a <close> variable) is
-- closed as the task unwinds. A request's POST routes what comes back as the stdio reader
-- routes a line: a JSON body, or the data of each event of a text/event-stream body until
-- the request is answered (notifications and server requests may come first). Other
-- messages expect 202 Accepted. The GET stream of server-initiated messages, when the
-- server offers one, is one more such task. No task holds the client, only st.

local function http_kind(k)
  if k == "timeout" or k == "too_large" or k == "protocol" then return k end
  return "io"  -- connect, tls, io, nomem
end

local OWN_HEADERS = { accept = true, ["content-type"] = true, ["mcp-session-id"] = true,
                      ["mcp-protocol-version"] = true }

local function http_headers(st, accept, with_body)
  local h = {}
  for k, v in pairs(st.headers) do
    if not OWN_HEADERS[k:lower()] then h[k] = v end
  end
  h["Accept"] = accept
  if with_body then h["Content-Type"] = "application/json" end
  if st.session then h["Mcp-Session-Id"] = st.session end
  if st.http_version then h["MCP-Protocol-Version"] = st.http_version end
  return h
end

-- Fails request `id` (if it is still pending) with message, kind[, detail].
local function fail_one(st, id, message, kind, detail)
  local w = st.pending[id]
  if not w then return end
  st.pending[id] = nil
  st.in_flight = st.in_flight - 1
  st.progress[id] = nil
  slot_fill(w, { message = message, kind = kind, detail = detail })
end

-- The body's text (its first `cap` bytes or so when given) | nil, message, kind.
local function read_body(s, cap)
  local parts, n = {}, 0
  while true do
    local chunk, e, k = s:read()
    if chunk == nil then
      if e then return nil, e, k end
      break
    end
    parts[#parts + 1] = chunk
    n = n + #chunk
    if cap and n >= cap then break end
  end
  return concat(parts)
end

local function snippet(s)
  s = tostring(s or ""):gsub("%s+", " ")
  if #s > 200 then s = sub(s, 1, 200) .. "..." end
  return s
end

-- Fails request `id`, if any; returns nil, message, kind.
local function http_fail(st, id, message, kind, detail)
  if id ~= nil then fail_one(st, id, message, kind, detail) end
  return nil, message, kind
end

-- One POST of `body`, a JSON-RPC message: request `id` (with `method`) | nil for a
-- notification or a response. true | nil, message, kind.
local function http_post(st, body, id, method, head_ms)
  local sent_session = st.session
  local s <close>, e, k = baton.http.stream {
    url = st.url, method = "POST", body = body, timeout_ms = head_ms or st.request_timeout,
    headers = http_headers(st, "application/json, text/event-stream", true),
    max_body_bytes = st.max_line,
  }
  local what = "baton.mcp: POST " .. (method or "message")
  if not s then return http_fail(st, id, format("%s: %s", what, tostring(e)), http_kind(k)) end
  local status, headers = s.status, s.headers
  if method == "initialize" and status >= 200 and status < 300 then
    st.session = headers["mcp-session-id"]
  end
  if status == 404 and sent_session then  -- the MCP spec: the session has ended
    local msg = "baton.mcp: the server ended the session (HTTP 404)"
    die(st, msg, "closed")
    return nil, msg, "closed"
  end
  if status < 200 or status > 299 then
    local text = read_body(s, 65536) or ""
    local m = decode(text)
    local rpc = type(m) == "table" and type(m.error) == "table" and m.error or nil
    local msg = format("%s: HTTP %d: %s", what, status,
                       rpc and tostring(rpc.message) or snippet(text))
    return http_fail(st, id, msg, status >= 500 and "io" or "protocol",
                     { status = status, body = text, error = rpc })
  end
  if id == nil then return true end  -- 202 Accepted (whatever else came with it is dropped)
  if status == 202 or status == 204 then
    return http_fail(st, id, format("%s: the server accepted the request without an answer "
                                    .. "(HTTP %d)", what, status), "protocol")
  end
  local ctype = headers["content-type"] or ""
  if find(ctype, "text/event-stream", 1, true) then
    while st.pending[id] do
      local ev, re, rk = s:read_event()
      if not ev then
        if re then return http_fail(st, id, format("%s: %s", what, tostring(re)), http_kind(rk)) end
        return http_fail(st, id, what .. ": the event stream ended before the response", "io")
      end
      local data = ev.data
      if find(data, "[^ \t\r\n]") then
        local ok, derr = route_text(st, data)
        if not ok then
          return http_fail(st, id, format("%s: an event that is not JSON (%s): %s", what,
                                          tostring(derr), snippet(data)), "protocol")
        end
      end
    end
    return true
  elseif find(ctype, "application/json", 1, true) then
    local text, re, rk = read_body(s)
    if not text then return http_fail(st, id, format("%s: %s", what, tostring(re)), http_kind(rk)) end
    local ok, derr = route_text(st, text)
    if not ok then
      return http_fail(st, id, format("%s: a body that is not JSON (%s): %s", what,
                                      tostring(derr), snippet(text)), "protocol")
    end
    if st.pending[id] then
      return http_fail(st, id, what .. ": the response does not answer the request", "protocol")
    end
    return true
  end
  return http_fail(st, id, format("%s: unexpected content-type '%s' (HTTP %d)", what, ctype,
                                  status), "protocol")
end

local function post_task(st, body, id, method, head_ms)
  local me = current()
  local ok, r, e = pcall(http_post, st, body, id, method, head_ms)
  st.tasks[me] = nil
  if not ok then
    if is_cancel(r) then return end
    warn(st, "the POST failed: " .. tostring(r))
    if id ~= nil then fail_one(st, id, "baton.mcp: the POST failed: " .. tostring(r), "io") end
  elseif r == nil and id == nil and not (st.closed or st.dead) then
    warn(st, tostring(e))
  end
end

local function spawn_io(st, fn, ...)
  local t = baton.spawn(fn, st, ...)
  st.tasks[t] = true
  return t
end

-- A message that is not a request: true | nil, message, kind (with wait) | false (gone).
http_send = function(st, body, wait)
  st.stats.sent = st.stats.sent + 1
  if wait and current() then return http_post(st, body, nil, nil) end
  spawn_io(st, post_task, body, nil, nil)
  return true
end

-- The GET stream of messages the server sends outside any request, if it offers one
-- (405: it does not).
local function listen_task(st)
  local me = current()
  local ok, err = pcall(function()
    local s <close>, e = baton.http.stream {
      url = st.url, method = "GET", timeout_ms = st.request_timeout,
      headers = http_headers(st, "text/event-stream"),
    }
    if not s then return warn(st, "the GET stream for server messages failed: " .. tostring(e)) end
    if s.status == 405 then return end
    if s.status == 404 and st.session then
      return die(st, "baton.mcp: the server ended the session (HTTP 404)", "closed")
    end
    if s.status < 200 or s.status > 299
       or not find(s.headers["content-type"] or "", "text/event-stream", 1, true) then
      return warn(st, format("the server refused the GET stream for its messages (HTTP %d)",
                             s.status))
    end
    while not (st.closed or st.dead) do
      local ev, re = s:read_event()
      if not ev then
        if re then warn(st, "the GET stream for server messages failed: " .. tostring(re)) end
        break
      end
      if find(ev.data, "[^ \t\r\n]") then
        local rok, derr = route_text(st, ev.data)
        if not rok then
          warn(st, format("skipped an event that is not JSON (%s): %s", tostring(derr),
                          snippet(ev.data)))
        end
      end
    end
  end)
  st.tasks[me] = nil
  if not ok and not is_cancel(err) then warn(st, "the GET stream failed: " .. tostring(err)) end
end

-- Aborts every transport task but the caller's own.
local function abort_io(st)
  local me = current()
  for t in pairs(st.tasks) do
    st.tasks[t] = nil
    if t ~= me then pcall(t.abort, t) end
  end
end

-- Ends the session (the MCP spec: DELETE with its id); a 405 (the server does not let
-- clients end sessions) or any failure is ignored.
local function http_delete(st, grace)
  if not st.session then return end
  local ms = grace < 200 and 200 or grace > 2000 and 2000 or grace
  baton.http.request { url = st.url, method = "DELETE", timeout_ms = ms,
                       headers = http_headers(st, "application/json, text/event-stream") }
end

-- ---- the client ----------------------------------------------------------------------

local Client = {}
Client.__index = Client

local function check_client(self, fname)
  local st = type(self) == "table" and rawget(self, "_s")
  if not st then misuse(fname, "expected a client (use client:%s)", fname:match("[%w_]+$")) end
  if st.closed then misuse(fname, "the client is closed") end
  return st
end

-- Sends a request and waits for its reply. Returns the result | nil, message, kind, err
-- where err is the JSON-RPC error object for kind "rpc".
local function request(st, fname, method, params, timeout_ms, on_progress)
  if st.dead then return nil, st.dead.message, st.dead.kind end
  local me = current()
  if me == nil then misuse(fname, "must be called in a task (inside baton.run)") end
  if me == st.reader_task and not st.http then
    misuse(fname, "cannot wait for a reply inside a notification handler (it runs in the "
                  .. "reader task, which delivers the reply): spawn a task")
  end
  local id = st.next_id
  st.next_id = id + 1
  if on_progress then  -- a copy: the caller's params stay as they were
    local p, meta = {}, {}
    for k, v in pairs(params or {}) do p[k] = v end
    for k, v in pairs(type(p._meta) == "table" and p._meta or {}) do meta[k] = v end
    meta.progressToken = id
    p._meta = meta
    params = p
  end
  local text = encode({ jsonrpc = "2.0", id = id, method = method, params = params })
  local w = slot_new()
  local post  -- over HTTP: the task POSTing the request and routing its answer
  if st.http then
    post = spawn_io(st, post_task, text, id, method, timeout_ms)
  else
    -- Waits while the server does not read (backpressure), within the request's deadline.
    local t0 = now()
    local ok, _, k = st.proc:write(text .. "\n", timeout_ms)
    if not ok then
      if k == "timeout" then return nil, "timeout", "timeout" end
      return nil, "baton.mcp: cannot write to the server", "closed"
    end
    timeout_ms = math.max(timeout_ms - (now() - t0), 0)
  end
  st.stats.sent = st.stats.sent + 1
  st.pending[id] = w
  st.in_flight = st.in_flight + 1
  if on_progress then st.progress[id] = on_progress end
  local ok, got, e2, e3 = pcall(slot_wait, w, timeout_ms)
  if not (ok and got) then
    -- Aborted or timed out: forget the request and tell the server.
    if post and st.tasks[post] then  -- stop the POST: its transfer ends, its stream closes
      st.tasks[post] = nil
      post:abort()
    end
    if st.pending[id] == w then
      st.pending[id] = nil
      st.in_flight = st.in_flight - 1
    end
    st.progress[id] = nil
    if method ~= "initialize" then  -- the MCP spec: the client MUST NOT cancel initialize
      send(st, { jsonrpc = "2.0", method = "notifications/cancelled",
                 params = { requestId = id, reason = ok and "timeout" or "cancelled" } })
    end
    if not ok then error(got, 0) end
    return nil, e2, e3
  end
  local m = got
  if m.kind then return nil, m.message, m.kind, m.detail end  -- die(), close(), a failed POST
  local e = m.error
  if e ~= nil and e ~= null then  -- "error": null beside a result is no error
    if type(e) ~= "table" then e = { code = -32603, message = tostring(e) } end
    return nil, format("%s: %s (JSON-RPC error %s)", method, tostring(e.message),
                       tostring(e.code)), "rpc", e
  end
  local r = m.result
  if r == nil or r == null then
    return nil, method .. ": the reply has neither result nor error", "protocol"
  end
  return r
end

local REQUEST_OPTS = { timeout_ms = true, on_progress = true }

local function call_opts(fname, st, opts)
  if opts == nil then return st.request_timeout, nil end
  if type(opts) ~= "table" then misuse(fname, "opts must be a table (got %s)", type(opts)) end
  check_fields(fname, opts, REQUEST_OPTS)
  return opt_ms(fname, opts, "timeout_ms", st.request_timeout),
         opt_type(fname, opts, "on_progress", "function")
end

-- client:request(method, [params], [opts]) -> result | nil, message, kind[, error]
function Client:request(method, params, opts)
  local st = check_client(self, "client:request")
  if type(method) ~= "string" then
    misuse("client:request", "method must be a string (got %s)", type(method))
  end
  if params ~= nil and type(params) ~= "table" then
    misuse("client:request", "params must be a table (got %s)", type(params))
  end
  local ms, on_progress = call_opts("client:request", st, opts)
  return request(st, "client:request", method, params, ms, on_progress)
end

-- client:notify(method, [params]) -> true | nil, message, "closed"
function Client:notify(method, params)
  local st = check_client(self, "client:notify")
  if type(method) ~= "string" then
    misuse("client:notify", "method must be a string (got %s)", type(method))
  end
  if params ~= nil and type(params) ~= "table" then
    misuse("client:notify", "params must be a table (got %s)", type(params))
  end
  if st.dead then return nil, st.dead.message, st.dead.kind end
  local ok, e, k = send(st, { jsonrpc = "2.0", method = method, params = params }, true)
  if not ok then
    return nil, e or "baton.mcp: cannot write to the server", k or "closed"
  end
  return true
end

function Client:ping(opts)
  local st = check_client(self, "client:ping")
  local ms = call_opts("client:ping", st, opts)
  local r, e, k = request(st, "client:ping", "ping", nil, ms)
  if r == nil then return nil, e, k end
  return true
end

-- Follows nextCursor through every page of a list method; returns the concatenated items.
-- One deadline for the whole walk (each page gets what is left of it), and at most
-- MAX_PAGES pages: a server that hands out new cursors forever is a protocol error.
local MAX_PAGES = 1000

local function list_all(self, fname, method, key, opts)
  local st = check_client(self, fname)
  local ms = call_opts(fname, st, opts)
  local deadline = now() + ms
  local out, seen, cursor, pages = {}, {}, nil, 0
  repeat
    if pages == MAX_PAGES then
      return nil, format("%s: more than %d pages", method, MAX_PAGES), "protocol"
    end
    pages = pages + 1
    local left = deadline - now()
    if left <= 0 then return nil, "timeout", "timeout" end
    local r, e, k, x = request(st, fname, method, cursor and { cursor = cursor } or nil, left)
    if r == nil then return nil, e, k, x end
    local items = r[key]
    if type(items) ~= "table" then
      return nil, format("%s: the reply has no %s list", method, key), "protocol"
    end
    for i = 1, #items do out[#out + 1] = items[i] end
    cursor = r.nextCursor
    if cursor == null or cursor == "" then cursor = nil end
    if cursor ~= nil then
      if type(cursor) ~= "string" or seen[cursor] then
        return nil, format("%s: the server repeats or garbles nextCursor", method), "protocol"
      end
      seen[cursor] = true
    end
  until cursor == nil
  return out
end

function Client:list_tools(opts) return list_all(self, "client:list_tools", "tools/list", "tools", opts) end
function Client:list_resources(opts)
  return list_all(self, "client:list_resources", "resources/list", "resources", opts)
end
function Client:list_prompts(opts)
  return list_all(self, "client:list_prompts", "prompts/list", "prompts", opts)
end

-- The text of a result's text content blocks, joined by newlines.
function M.text(result)
  local out = {}
  if type(result) == "table" and type(result.content) == "table" then
    for _, c in ipairs(result.content) do
      if type(c) == "table" and c.type == "text" and type(c.text) == "string" then
        out[#out + 1] = c.text
      end
    end
  end
  return concat(out, "\n")
end

-- client:call(tool, [args], [opts]) -> result
--   | nil, message, "tool_error", result      (the tool failed: isError = true)
--   | nil, message, "tool_error", error       (JSON-RPC error: unknown tool, bad arguments;
--                                              error = { code, message, data })
--   | nil, message, "timeout" | "closed" | "protocol" | "too_large"
function Client:call(tool, args, opts)
  local st = check_client(self, "client:call")
  if type(tool) ~= "string" then
    misuse("client:call", "tool must be a string (got %s)", type(tool))
  end
  if args ~= nil and type(args) ~= "table" then
    misuse("client:call", "args must be a table (got %s)", type(args))
  end
  local ms, on_progress = call_opts("client:call", st, opts)
  local r, e, k, x = request(st, "client:call", "tools/call",
                             { name = tool, arguments = args or json.object({}) }, ms,
                             on_progress)
  if r == nil then
    if k == "rpc" then
      return nil, format("tool '%s': %s (JSON-RPC error %s)", tool, tostring(x.message),
                         tostring(x.code)), "tool_error", x
    end
    return nil, e, k, x
  end
  if type(r) ~= "table" then
    return nil, "tools/call: the result is not an object", "protocol"
  end
  if r.isError == true then
    local text = M.text(r)
    return nil, format("tool '%s' failed: %s", tool, text ~= "" and text or "(no text)"),
           "tool_error", r
  end
  return r
end

function Client:read_resource(uri, opts)
  local st = check_client(self, "client:read_resource")
  if type(uri) ~= "string" then
    misuse("client:read_resource", "uri must be a string (got %s)", type(uri))
  end
  local ms = call_opts("client:read_resource", st, opts)
  return request(st, "client:read_resource", "resources/read", { uri = uri }, ms)
end

function Client:get_prompt(name, args, opts)
  local st = check_client(self, "client:get_prompt")
  if type(name) ~= "string" then
    misuse("client:get_prompt", "name must be a string (got %s)", type(name))
  end
  local ms = call_opts("client:get_prompt", st, opts)
  return request(st, "client:get_prompt", "prompts/get",
                 { name = name, arguments = args or json.object({}) }, ms)
end

-- client:on(method, fn): fn(params) for each notification `method` (several may be added).
function Client:on(method, fn)
  local st = check_client(self, "client:on")
  if type(method) ~= "string" then misuse("client:on", "method must be a string") end
  if type(fn) ~= "function" then misuse("client:on", "fn must be a function") end
  local hs = st.on[method] or {}
  hs[#hs + 1] = fn
  st.on[method] = hs
  return self
end

-- client:handle(method, fn|nil): answers the server's requests `method` with fn(params) ->
-- result | nil, message[, code] (or raise { code =, message =, data = }); in its own task.
function Client:handle(method, fn)
  local st = check_client(self, "client:handle")
  if type(method) ~= "string" then misuse("client:handle", "method must be a string") end
  if fn ~= nil and type(fn) ~= "function" then
    misuse("client:handle", "fn must be a function or nil")
  end
  st.handlers[method] = fn
  return self
end

-- client:set_roots(roots): replaces the roots and tells the server (roots/list_changed).
local function check_roots(fname, roots)
  if type(roots) ~= "table" then misuse(fname, "roots must be a list of { uri =, name = }") end
  local out = {}
  for i, r in ipairs(roots) do
    if type(r) ~= "table" or type(r.uri) ~= "string" then
      misuse(fname, "roots[%d] must be a table with a string uri", i)
    end
    if r.name ~= nil and type(r.name) ~= "string" then
      misuse(fname, "roots[%d].name must be a string", i)
    end
    out[i] = { uri = r.uri, name = r.name }
  end
  return out
end

function Client:set_roots(roots)
  local st = check_client(self, "client:set_roots")
  if not st.roots then
    misuse("client:set_roots", "the client was connected without roots (roots capability)")
  end
  st.roots = check_roots("client:set_roots", roots)
  return self:notify("notifications/roots/list_changed")
end

function Client:stats()
  local st = rawget(self, "_s")
  local s = {}
  for k, v in pairs(st.stats) do s[k] = v end
  s.in_flight = st.in_flight
  s.closed = st.closed or st.dead ~= nil
  return s
end

function Client:pid() return rawget(self, "_s").pid end

function Client:stderr()
  local st = rawget(self, "_s")
  if not st.proc then return "" end
  local ok, s = pcall(st.proc.stderr, st.proc)
  return ok and s or ""
end

-- Lets go of everything without waiting (for __close, __gc, close() outside a task, and
-- the end of every close()): pending calls fail, the process is released (SIGTERM, SIGKILL
-- after grace ms), the reader stopped, the handler tasks aborted (last: the task running
-- this may be one of them; it is only flagged, and close() itself waits no more), and the
-- tasks waiting in a concurrent close() are woken. Idempotent.
local function release_now(st, grace)
  st.closed = true
  fail_pending(st, "baton.mcp: the client was closed", "closed")
  if st.proc then pcall(st.proc.close, st.proc, grace) end
  if st.http then abort_io(st) end
  if st.reader_task and st.reader_task ~= current() then pcall(st.reader_task.abort, st.reader_task) end
  st.released = true
  if st.closing then slot_fill(st.closing, true) end
  pcall(st.group.close, st.group)
end

-- The waits of close(): EOF, grace ms; SIGTERM, grace ms; SIGKILL. Stops early when the
-- client is released meanwhile (by __close, say): the process is then no longer ours.
local function stop_server(st, grace)
  local proc, reader = st.proc, st.reader_task
  local deadline = now() + grace
  pcall(proc.close_stdin, proc)
  if reader:join(grace) == nil and not st.released then
    reader:abort()  -- still reading: stop it, so that this task may wait on the process
    reader:join()
  end
  if st.released then return end
  local left = deadline - now()
  if proc:wait(left > 0 and left or 0) or st.released then return end
  proc:kill("TERM")
  if proc:wait(grace) or st.released then return end
  proc:kill("KILL")
  proc:wait(5000)
end

-- client:close([grace_ms]) -> true. Closes the server's stdin and gives it grace_ms to
-- exit, then SIGTERM and another grace_ms, then SIGKILL; returns once it is gone. Pending
-- calls fail with "closed". Idempotent; a close() while another runs waits for that one.
-- Aborted while it waits (baton.timeout, an engine's shutdown), it releases the process at
-- once (SIGTERM, SIGKILL after grace_ms) and stops the reader, then unwinds.
function Client:close(grace_ms)
  local st = rawget(self, "_s")
  if not st then misuse("client:close", "expected a client (use client:close)") end
  if grace_ms ~= nil then grace_ms = opt_ms("client:close", { grace_ms = grace_ms }, "grace_ms", 0, true) end
  local grace = grace_ms or DEFAULT_GRACE_MS
  if st.released then return true end
  local me = current()
  if st.closing then  -- another task is closing it: wait (bounded) until it has finished
    if me ~= nil and me ~= st.reader_task then
      local left = st.close_due - now()
      if left > 0 then slot_wait(st.closing, left) end
    end
    return true
  end
  if me == nil or me == st.reader_task then
    release_now(st, grace)
    return true
  end
  st.closed = true
  st.closing = slot_new()
  st.close_due = now() + 2 * grace + 6000  -- stop_server's longest run, and a margin
  fail_pending(st, "baton.mcp: the client was closed", "closed")
  local ok, err
  if st.http then  -- abort the POSTs and the GET stream, then end the session
    abort_io(st)
    ok, err = pcall(http_delete, st, grace)
  else
    ok, err = pcall(stop_server, st, grace)
  end
  if ok and st.proc then  -- return once the process is reaped: stats().processes is 0
    local wok, werr = pcall(st.proc.close, st.proc, 0, true)
    if not wok then ok, err = false, werr end
  end
  release_now(st, ok and 0 or grace)
  if not ok then error(err, 0) end
  return true
end

Client.__close = function(self) local st = rawget(self, "_s"); if not st.released then release_now(st, DEFAULT_GRACE_MS) end end
Client.__gc = Client.__close
Client.__tostring = function(self)
  local st = rawget(self, "_s")
  local state = st.closed and "closed" or st.dead and "dead" or "open"
  local name = type(self.server_info) == "table" and self.server_info.name or "?"
  if st.http then return format("baton.mcp.Client (%s, %s, %s)", tostring(name), st.url, state) end
  return format("baton.mcp.Client (%s, pid %d, %s)", tostring(name), st.pid or -1, state)
end

-- ---- connect ---------------------------------------------------------------------------

local CONNECT_OPTS = {
  command = true, env = true, cwd = true, protocol_version = true, supported_versions = true,
  capabilities = true, roots = true, client_info = true, max_line_bytes = true,
  timeout_ms = true, request_timeout_ms = true, on_notification = true, on_log = true,
  on_warning = true, url = true, headers = true, listen = true, process_group = true,
}

local function contains(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

-- mcp.connect(opts) -> client | nil, message, kind
function M.connect(opts)
  local F = "baton.mcp.connect"
  if type(opts) ~= "table" then misuse(F, "options must be a table (got %s)", type(opts)) end
  check_fields(F, opts, CONNECT_OPTS)
  local cmd, url = opts.command, opts.url
  if cmd == nil and url == nil then
    misuse(F, "command must be a table of strings (or url an http(s) URL: Streamable HTTP)")
  elseif cmd ~= nil and url ~= nil then
    misuse(F, "give only one of command (a server over stdio) and url (Streamable HTTP)")
  end
  local headers = {}
  if url ~= nil then
    if type(url) ~= "string" or not url:match("^[Hh][Tt][Tt][Pp][Ss]?://") then
      misuse(F, "url must be an http:// or https:// URL (got %s)", tostring(url))
    end
    for _, k in ipairs { "env", "cwd", "process_group" } do
      if opts[k] ~= nil then misuse(F, "%s is for command (a server over stdio), not url", k) end
    end
    for k, v in pairs(opt_type(F, opts, "headers", "table") or {}) do
      if type(k) ~= "string" or type(v) ~= "string" then
        misuse(F, "headers must map strings to strings")
      end
      headers[k] = v
    end
    opt_type(F, opts, "listen", "boolean")
  else
    if type(cmd) ~= "table" or #cmd == 0 then misuse(F, "command must be a table of strings") end
    for i = 1, #cmd do
      if type(cmd[i]) ~= "string" then misuse(F, "command must be a table of strings") end
    end
    for _, k in ipairs { "headers", "listen" } do
      if opts[k] ~= nil then misuse(F, "%s is for url (Streamable HTTP), not command", k) end
    end
  end
  opt_type(F, opts, "env", "table")
  opt_type(F, opts, "cwd", "string")
  opt_type(F, opts, "capabilities", "table")
  opt_type(F, opts, "client_info", "table")
  opt_type(F, opts, "on_notification", "function")
  opt_type(F, opts, "on_log", "function")
  opt_type(F, opts, "on_warning", "function")
  opt_type(F, opts, "process_group", "boolean")
  local supported = opt_type(F, opts, "supported_versions", "table") or M.SUPPORTED_VERSIONS
  for i = 1, #supported do
    if type(supported[i]) ~= "string" then misuse(F, "supported_versions must be a list of strings") end
  end
  if #supported == 0 then misuse(F, "supported_versions must not be empty") end
  local version = opt_type(F, opts, "protocol_version", "string") or supported[1]
  local roots = opts.roots ~= nil and check_roots(F, opts.roots) or nil
  local max_line = opts.max_line_bytes
  if max_line ~= nil and (math.type(max_line) ~= "integer" or max_line <= 0) then
    misuse(F, "max_line_bytes must be a positive integer (got %s)", tostring(max_line))
  end
  local handshake_ms = opt_ms(F, opts, "timeout_ms", DEFAULT_HANDSHAKE_MS)
  local request_ms = opt_ms(F, opts, "request_timeout_ms", DEFAULT_REQUEST_MS)
  if current() == nil then misuse(F, "must be called in a task (inside baton.run)") end

  local proc
  if cmd then
    local argv = { stdin = true, cwd = opts.cwd, env = opts.env,
                   max_line_bytes = max_line or DEFAULT_MAX_LINE,
                   process_group = opts.process_group }
    for i = 1, #cmd do argv[i] = cmd[i] end
    local perr, pkind
    proc, perr, pkind = baton.process.spawn(argv)
    if not proc then return nil, "baton.mcp.connect: " .. tostring(perr), pkind or "io" end
  end

  local st = {
    proc = proc, pid = proc and proc:pid(), http = url ~= nil, url = url, headers = headers,
    tasks = {}, pending = {}, progress = {}, inbound = {}, on = {},
    handlers = {}, next_id = 1, in_flight = 0, handling = 0,
    max_line = max_line or DEFAULT_MAX_LINE, request_timeout = request_ms, roots = roots,
    on_notification = opts.on_notification, on_warning = opts.on_warning,
    group = baton.group(),
    stats = { sent = 0, received = 0, notifications = 0, server_requests = 0, late = 0,
              malformed = 0, warnings = 0, handler_errors = 0, rejected = 0 },
  }
  if opts.on_log then st.on["notifications/message"] = { opts.on_log } end
  if proc then st.reader_task = baton.spawn(reader, st) end
  local client = setmetatable({ _s = st }, Client)

  local caps = {}
  for k, v in pairs(opts.capabilities or {}) do caps[k] = v end
  if roots and caps.roots == nil then caps.roots = { listChanged = true } end
  local info = opts.client_info or { name = "baton", version = M.VERSION }
  local hok, r, e, k = pcall(request, st, F, "initialize", {
    protocolVersion = version, capabilities = json.object(caps), clientInfo = info,
  }, handshake_ms)
  if not hok then  -- aborted (or bad client_info): let go of the server, then unwind
    release_now(st, 200)
    error(r, 0)
  end
  local function fail(msg, kind)
    client:close(200)
    return nil, msg, kind
  end
  if r == nil then
    return fail("baton.mcp.connect: initialize failed: " .. tostring(e), k == "rpc" and "protocol" or k)
  end
  if type(r) ~= "table" or type(r.protocolVersion) ~= "string" then
    return fail("baton.mcp.connect: the initialize reply has no protocolVersion", "protocol")
  end
  local v = r.protocolVersion
  if v ~= version and not contains(supported, v) then
    return fail(format("baton.mcp.connect: the server speaks protocol %s; this client "
                       .. "supports %s", v, concat(supported, ", ")), "protocol")
  end
  client.protocol_version = v
  client.server_info = type(r.serverInfo) == "table" and r.serverInfo or {}
  client.server_capabilities = type(r.capabilities) == "table" and r.capabilities or {}
  client.instructions = type(r.instructions) == "string" and r.instructions or nil
  if not st.http then
    send(st, { jsonrpc = "2.0", method = "notifications/initialized" })
    return client
  end
  st.http_version = v
  client.session_id = st.session
  -- Over HTTP the handshake ends once the server has accepted notifications/initialized.
  local sok, ok, e2, k2 = pcall(send, st, { jsonrpc = "2.0", method = "notifications/initialized" },
                                true)
  if not sok then
    release_now(st, 0)
    error(ok, 0)
  end
  if not ok then return fail("baton.mcp.connect: " .. tostring(e2), k2 or "closed") end
  if opts.listen ~= false then spawn_io(st, listen_task) end
  return client
end

-- ---- the engine's dispatcher -----------------------------------------------------------

local DISPATCH_OPTS = { timeout_ms = true, body = true }
local ERR_MT = { __tostring = function(t) return t.message end }

-- mcp.dispatcher(client, [{ timeout_ms =, body = fn(result, tool, args) }]) -> a dispatcher
-- for baton.engine: calls the tool; returns the result (or body(result, ...)); raises
-- { kind =, message =, code =, result = } on failure, so the outcome is "failed".
function M.dispatcher(client, opts)
  local F = "baton.mcp.dispatcher"
  if getmetatable(client) ~= Client then misuse(F, "client must be a baton.mcp client") end
  opts = opts or {}
  if type(opts) ~= "table" then misuse(F, "opts must be a table") end
  check_fields(F, opts, DISPATCH_OPTS)
  local ms = opt_ms(F, opts, "timeout_ms", nil)
  local body = opt_type(F, opts, "body", "function")
  local copts = ms and { timeout_ms = ms } or nil
  local function raise(err) error(setmetatable(err, ERR_MT), 0) end
  return function(tool, args)
    if rawget(client, "_s").closed then  -- an outcome of the world here, not a misuse
      raise { kind = "closed", message = "baton.mcp.dispatcher: the client is closed" }
    end
    local r, msg, kind, x = client:call(tool, args, copts)
    if r == nil then
      local err = { kind = kind, message = msg }
      if type(x) == "table" then
        if x.code ~= nil then err.code, err.data = x.code, x.data else err.result = x end
      end
      raise(err)
    end
    if body then return body(r, tool, args) end
    return r
  end
end

M.Client = Client
return M
