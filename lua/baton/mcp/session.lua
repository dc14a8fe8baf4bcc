-- baton.mcp.session — the JSON-RPC 2.0 session of an MCP client, whatever carries it:
-- pending ids, routing what the peer sends, notification and server-request handlers,
-- progress, deadlines, cancellation, death and release, stats. The transports
-- (baton.mcp.stdio, baton.mcp.http) move text; baton.mcp (the public API) checks arguments
-- and names the function in every message.
--
-- A session is a plain table `st`, shared by the client and its transport's tasks. It never
-- references the client object, so a client that is dropped can be collected (its __gc
-- releases the session). A handler closure that captures the client keeps it alive (the
-- transport's tasks hold the handlers): close it.
--
-- The transport is st.transport, a table of functions (each gets st):
--   send(st, text, wait)            a message that is not a request: true | false (gone) |
--                                   with `wait`, nil, reason, kind[, detail]
--   begin(st, text, id, method, ms) a request: handle, ms left | nil, reason, kind[, detail]
--                                   (handle: what abort(st, handle) stops if it is waited out)
--   abort(st, handle)               stops what begin started (a POST)
--   stop(st, grace)                 close()'s waits: the peer is gone when it returns (raises
--                                   the cancellation error when aborted)
--   release(st, grace)              lets go of the peer at once, never waits
--
-- Invariants.
-- * A pending request is in st.pending (id -> baton.future) from the moment it is written
--   until it is answered, times out, its task is aborted (then the peer hears
--   notifications/cancelled), or the session dies; whichever comes first removes it, so a
--   late reply is counted (stats().late) and dropped.
-- * Nothing a peer sends can kill the session: a message that is not JSON, not JSON-RPC, an
--   id MCP does not allow (not a string or an integer: 1e400, 1.5, a table), a reply nobody
--   asked for, is counted in stats().malformed, reported through warn() and skipped. A
--   server request with a user handler runs in a task of st.group, at most MAX_HANDLERS at
--   once; beyond that it is answered with an error at once (stats().rejected).
-- * Handlers for notifications and progress run in the task that routed the message, under
--   pcall: an error is a warning, never that task's death.
-- * st.closed: close() has begun (nothing more is sent, no server request handled);
--   st.dead = { message, kind, detail }: the peer is gone, every request fails so;
--   st.released: release_now() has run (what __close and __gc test).
--
-- Failures leave here as `nil, reason, kind[, detail]`: `reason` does not name a function
-- (the public API puts "baton.mcp.client:call: " in front), kind is one word of the table
-- of kinds (docs/errors.md).
local baton = require "baton"

local json = baton.json
local encode, decode, null = json.encode, json.decode, json.null
local sub, format = string.sub, string.format
local concat = table.concat
local type, pairs, ipairs, tostring, pcall, error = type, pairs, ipairs, tostring, pcall, error
local now, current = baton.now, baton.current

local S = {}

S.MAX_HANDLERS = 64  -- server requests handled at once by client:handle functions
local ARRAY_MT = getmetatable(json.array({}))  -- what json.decode gives a JSON array

-- A new session on `transport`; opts: max_line, request_timeout, roots, on_notification,
-- on_warning, on_log.
function S.new(transport, opts)
  local st = {
    transport = transport, pending = {}, progress = {}, inbound = {}, on = {}, handlers = {},
    next_id = 1, in_flight = 0, handling = 0,
    max_line = opts.max_line, request_timeout = opts.request_timeout, roots = opts.roots,
    on_notification = opts.on_notification, on_warning = opts.on_warning,
    group = baton.group { detached = true },  -- outlives the task that connects
    stats = { sent = 0, received = 0, notifications = 0, server_requests = 0, late = 0,
              malformed = 0, warnings = 0, handler_errors = 0, rejected = 0,
              resumed = 0, renewed = 0 },
  }
  if opts.on_log then st.on["notifications/message"] = { opts.on_log } end
  return st
end

function S.is_cancel(e) return type(e) == "table" and e.kind == "cancelled" end

-- The failure of a request whose deadline passed.
function S.timed_out(ms)
  return nil, format("timed out after %d ms", ms), "timeout", { timeout_ms = ms }
end

function S.warn(st, msg)
  st.stats.warnings = st.stats.warnings + 1
  msg = "baton.mcp: " .. msg
  if st.on_warning then
    local ok, e = pcall(st.on_warning, msg)
    if ok then return end
    msg = msg .. " (and the warning handler failed: " .. tostring(e) .. ")"
  end
  baton.warn(msg)  -- baton.on_warning's handler, else stderr
end
local warn = S.warn

-- ---- sending -----------------------------------------------------------------------------

-- Writes one message that is not a request, as JSON text: see the transport's send.
function S.send_text(st, text, wait)
  if st.closed or st.dead then return false end
  return st.transport.send(st, text, wait)
end

-- The same for a message; a message JSON cannot hold (a function, NaN) is a warning.
function S.send(st, msg, wait)
  local ok, text = pcall(encode, msg)
  if ok then return S.send_text(st, text, wait) end
  warn(st, format("cannot encode a message (%s): %s", tostring(msg.method or "reply"),
                  tostring(text)))
  return false
end
local send = S.send

local function reply_error(st, id, code, message, data)
  send(st, { jsonrpc = "2.0", id = id, error = { code = code, message = message, data = data } })
end

local function reply(st, id, result)
  local ok, text = pcall(encode, { jsonrpc = "2.0", id = id, result = result })
  if ok then return S.send_text(st, text) end
  -- Tell the server, which would otherwise wait for an answer forever.
  warn(st, format("the result for request %s cannot be encoded as JSON: %s", tostring(id),
                  tostring(text)))
  reply_error(st, id, -32603, "Internal error: the result cannot be encoded as JSON")
end

-- ---- failing requests ----------------------------------------------------------------------

local function failure(reason, kind, detail)
  return { message = reason, kind = kind, detail = detail }
end

-- Fails every pending request with (reason, kind, detail).
function S.fail_pending(st, reason, kind, detail)
  local pending = st.pending
  st.pending = {}
  st.progress = {}
  st.in_flight = 0
  local err = failure(reason, kind, detail)
  for _, w in pairs(pending) do w:set(err) end
end

-- Fails request `id`, if it is still pending.
function S.fail_one(st, id, reason, kind, detail)
  local w = st.pending[id]
  if not w then return end
  st.pending[id] = nil
  st.in_flight = st.in_flight - 1
  st.progress[id] = nil
  w:set(failure(reason, kind, detail))
end

-- The peer is gone (or its stream is unusable): every request from now on fails so.
function S.die(st, reason, kind, detail)
  if st.dead then return end
  st.dead = failure(reason, kind, detail)
  S.fail_pending(st, reason, kind, detail)
end

-- ---- routing what the peer sends -------------------------------------------------------------

local function run_handler(st, h, id, method, params)
  local _ <close> = setmetatable({}, { __close = function() st.handling = st.handling - 1 end })
  local ok, res, emsg, ecode = pcall(h, params)
  st.inbound[id] = nil
  if st.closed or st.dead then return end
  if not ok then
    if S.is_cancel(res) then return end  -- aborted
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
  if method == "elicitation/create" then S.apply_defaults(params, res) end
  reply(st, id, res)
end

-- SEP-1034: an accepted elicitation's content gains the default of every field of the
-- requested schema that the handler left out (the handler's own values win).
function S.apply_defaults(params, res)
  if type(res) ~= "table" or res.action ~= "accept" or type(params) ~= "table" then return end
  local schema = params.requestedSchema
  local props = type(schema) == "table" and schema.properties
  if type(props) ~= "table" then return end
  local content = res.content
  if content == nil or content == json.null then content = {} end
  if type(content) ~= "table" then return end
  for name, p in pairs(props) do  -- properties is an object: a list's entries are no fields
    if type(name) == "string" and type(p) == "table" and p.default ~= nil
       and p.default ~= json.null and content[name] == nil then
      content[name] = p.default
    end
  end
  if next(content) == nil then content = json.object(content) end
  res.content = content
end

local function on_server_request(st, m)
  local method, id = m.method, m.id
  st.stats.server_requests = st.stats.server_requests + 1
  if st.closed then return end  -- close() is under way: nothing more is sent or started
  local h = st.handlers[method]
  if h then
    if st.handling >= S.MAX_HANDLERS then  -- a flood: answer at once rather than pile up tasks
      st.stats.rejected = st.stats.rejected + 1
      if st.stats.rejected == 1 then
        warn(st, format("more than %d server requests at once: refusing %s (and more, "
                        .. "counted in stats().rejected)", S.MAX_HANDLERS, method))
      end
      return reply_error(st, id, -32000, format("baton.mcp: more than %d requests in progress",
                                                S.MAX_HANDLERS))
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
function S.show(v)
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
  warn(st, format("skipped %s: %s", why, S.show(m)))
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
      w:set(m)
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

-- Decodes and routes one message (a line, a JSON body, an event's data): true | nil, error.
-- Whatever the message holds, the session lives: an error while routing it (a bug, a value
-- nothing expected) is a warning; only the routing task's own cancellation goes through.
function S.route_text(st, text)
  st.stats.received = st.stats.received + 1
  local ok, m, err = pcall(decode, text)
  if not ok or m == nil then
    st.stats.malformed = st.stats.malformed + 1
    return nil, ok and err or m
  end
  local rok, rerr = pcall(route, st, m)
  if not rok then
    if S.is_cancel(rerr) then error(rerr, 0) end
    st.stats.malformed = st.stats.malformed + 1
    warn(st, format("failed to handle a message (%s): %s", tostring(rerr), S.show(m)))
  end
  return true
end

-- ---- requests ------------------------------------------------------------------------------

-- Sends request `method` and waits (at most timeout_ms) for its reply: the result
-- | nil, reason, kind[, detail]. A JSON-RPC error reply is kind "rpc_error" with detail
-- { method =, code =, message =, data = }. Raises the cancellation error when the calling
-- task is aborted (the request is forgotten and the peer told first).
function S.request(st, method, params, timeout_ms, on_progress)
  if st.dead then return nil, st.dead.message, st.dead.kind, st.dead.detail end
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
  local w = baton.future()
  -- Over stdio this waits while the server does not read (backpressure), within the
  -- deadline; over HTTP it starts the task POSTing the request and routing its answer.
  local handle, left, k, d = st.transport.begin(st, text, id, method, timeout_ms)
  if not handle then
    if k == "timeout" then return S.timed_out(timeout_ms) end
    return nil, left, k, d
  end
  st.stats.sent = st.stats.sent + 1
  st.pending[id] = w
  st.in_flight = st.in_flight + 1
  if on_progress then st.progress[id] = on_progress end
  local ok, got = pcall(w.wait, w, left)
  if not (ok and got) then
    -- Aborted or timed out: forget the request and tell the server.
    st.transport.abort(st, handle)
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
    return S.timed_out(timeout_ms)
  end
  local m = got
  if m.kind then  -- the session died, was closed, a transfer failed
    if m.kind == "timeout" then return S.timed_out(timeout_ms) end
    return nil, m.message, m.kind, m.detail
  end
  local e = m.error
  if e ~= nil and e ~= null then  -- "error": null beside a result is no error
    if type(e) ~= "table" then e = { code = -32603, message = tostring(e) } end
    return nil, format("%s: %s (JSON-RPC error %s)", method, tostring(e.message),
                       tostring(e.code)), "rpc_error",
           { method = method, code = e.code, message = e.message, data = e.data }
  end
  local r = m.result
  if r == nil or r == null then
    return nil, method .. ": the reply has neither result nor error", "protocol"
  end
  return r
end

-- ---- closing ---------------------------------------------------------------------------------

-- Lets go of everything without waiting (for __close, __gc, close() outside a task, and
-- the end of every close()): pending requests fail, the transport lets go of the peer,
-- the handler tasks are aborted (last: the task running this may be one of them; it is
-- only flagged, and close() itself waits no more), and the tasks waiting in a concurrent
-- close() are woken. Idempotent.
function S.release_now(st, grace)
  st.closed = true
  S.fail_pending(st, "the client was closed", "closed")
  st.transport.release(st, grace)
  st.released = true
  if st.closing then st.closing:set(true) end
  pcall(st.group.close, st.group)
end

-- close(): fails the pending requests, then the transport's waits (stop), then
-- release_now. A close() while another runs waits (bounded) for that one. Aborted while it
-- waits, it releases at once, then unwinds.
function S.close(st, grace)
  if st.released then return true end
  local me = current()
  if st.closing then  -- another task is closing it: wait (bounded) until it has finished
    if me ~= nil and me ~= st.reader_task then
      local left = st.close_due - now()
      if left > 0 then st.closing:wait(left) end
    end
    return true
  end
  if me == nil or me == st.reader_task then
    S.release_now(st, grace)
    return true
  end
  st.closed = true
  st.closing = baton.future()
  st.close_due = now() + 2 * grace + 6000  -- the transport's longest stop, and a margin
  S.fail_pending(st, "the client was closed", "closed")
  local ok, err = pcall(st.transport.stop, st, grace)
  S.release_now(st, ok and 0 or grace)
  if not ok then error(err, 0) end
  return true
end

return S
