-- baton.mcp.http — the Streamable HTTP transport of the MCP client (the MCP specification
-- since protocol 2025-03-26), on baton.http. There is no process and no reader task: every
-- message the client sends is one POST to st.url, and a request's POST routes what comes
-- back through the session (baton.mcp.session), as the stdio reader routes a line.
--
-- Invariants.
-- * Each POST runs in a task of its own, kept in st.tasks (task -> true) until it ends, so
--   that a timeout, a cancellation or close() can abort it: the transfer leaves libcurl at
--   once and the stream (a <close> variable) is closed as the task unwinds. No task holds
--   the client, only the session.
-- * A request's POST reads a JSON body, or the data of each event of a text/event-stream
--   body until the request is answered (notifications and server requests may come
--   first). Other messages expect 202 Accepted.
-- * An event stream that ends or breaks before the response, after the server gave an
--   event id, is resumed: a GET with Last-Event-ID after the stream's retry: delay, at most
--   MAX_RESUMES times per request, in the same task (so the same deadline and abort).
-- * The GET stream of server-initiated messages, when the server offers one, is one more
--   such task (listen); it is not reopened. 400, 401, 403, 404, 405 to it: no stream, quietly.
-- * A 404 to a request that carried a session id: the server ended the session. One new
--   session (the first handshake again, renew) and the request is sent again; a 404 again
--   kills the client's session ("closed").
-- * With auth (st.auth, baton.mcp.auth), every request carries the token; a 401 or 403
--   hands over to auth.refused, which gets a token (one flow at a time) and says whether to
--   send the request again. Without auth, or when it gives up: "auth", with the detail
--   { status =, headers =, body = }.
-- * A failed transfer keeps baton.http's kind ("connect", "tls", "timeout", "too_large",
--   "protocol", "io", "resource"); a 5xx status is "io", another non-2xx "protocol", both
--   with the detail { status =, body =, error = } (error: the JSON-RPC error the body held).
local baton = require "baton"
local S = require "baton.mcp.session"
local A = require "baton.mcp.auth"

local json = baton.json
local decode = json.decode
local find, sub, format = string.find, string.sub, string.format
local concat = table.concat
local pairs, pcall, tostring, type = pairs, pcall, tostring, type
local current = baton.current

local T = {}

-- baton.http's kind of a failed transfer, as the client reports it.
local function http_kind(k)
  if k == "nomem" then return "resource" end
  return k or "io"
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
  s = tostring(s or "")
  local more = #s > 400 and "..." or ""  -- cut first: a 50 MB event is not scanned whole
  s = sub(s, 1, 400):gsub("%s+", " "):gsub("[%c\127]", "?")  -- no terminal escapes
  if #s > 200 then s, more = sub(s, 1, 200), "..." end
  return s .. more
end

-- Fails request `id`, if any; returns nil, reason, kind[, detail].
local function fail(st, id, reason, kind, detail)
  if id ~= nil then S.fail_one(st, id, reason, kind, detail) end
  return nil, reason, kind, detail
end

local RETRY = {}     -- post_once: send the message again (after a new token)
local RESUME = {}    -- post_once: the event stream broke; resume it (GET, Last-Event-ID)
local MAX_RESUMES = 5
local DEFAULT_RETRY_MS = 1000

-- The Authorization header of the next request (auth.lua) and its token's generation.
local function authorize(st, h)
  if not st.auth then return nil end
  local v, gen = A.header(st.auth)
  if v then h["Authorization"] = v end
  return gen
end

-- The server refused (401, 403): with auth configured, a token is obtained (or stepped up)
-- and RETRY comes back; else the failure, kind "auth", detail { status =, headers =, body = }.
local function refused(st, s, id, what, gen, try)
  local status, headers = s.status, s.headers
  local text = read_body(s, 65536) or ""
  if st.auth then
    local ok, e, k, d = A.refused(st, st.auth, status, headers, gen, try)
    if ok then return RETRY end
    if e then return fail(st, id, format("%s: %s", what, e), k or "auth", d) end
  end
  local challenge = headers["www-authenticate"]
  return fail(st, id, format("%s: HTTP %d: %s%s", what, status,
                             status == 401 and "unauthorized" or "forbidden",
                             challenge and (" (" .. snippet(challenge) .. ")") or ""),
              "auth", { status = status, headers = headers, body = text })
end

-- Reads a request's event stream until the request is answered: true | RESUME, last event
-- id, retry ms (the stream ended or broke after the server gave an event id) | nil, reason,
-- kind.
local function read_events(st, s, id, what, last_id)
  while st.pending[id] do
    local ev, re, rk = s:read_event()
    if not ev then
      if last_id ~= nil and not (st.closed or st.dead) then
        return RESUME, last_id, s.retry_ms
      end
      if re then return fail(st, id, format("%s: %s", what, tostring(re)), http_kind(rk)) end
      return fail(st, id, what .. ": the event stream ended before the response", "io")
    end
    if ev.id ~= nil then last_id = ev.id end
    local data = ev.data
    if find(data, "[^ \t\r\n]") then
      local ok, derr = S.route_text(st, data)
      if not ok then
        return fail(st, id, format("%s: an event that is not JSON (%s): %s", what,
                                   tostring(derr), snippet(data)), "protocol")
      end
    end
  end
  return true
end

-- The server ended session `old` (a 404): a new one, with the handshake of the first
-- (initialize with the same parameters, then notifications/initialized). One renewal at a
-- time; a request that finds the session already renewed just retries. true | false.
local function renew(st, old)
  if not st.init_params then return false end
  local lock = st.renew_lock
  if not lock then lock = baton.semaphore(1); st.renew_lock = lock end
  local _ <close> = lock:acquire()
  if st.session ~= old then return st.session ~= nil end
  st.session = nil
  local h = http_headers(st, "application/json, text/event-stream", true)
  authorize(st, h)
  st.renewals = (st.renewals or 0) + 1
  local r = baton.http.request {
    url = st.url, method = "POST", timeout_ms = st.request_timeout, headers = h,
    body = json.encode { jsonrpc = "2.0", id = "baton-renew-" .. st.renewals,
                         method = "initialize", params = st.init_params },
  }
  if not r or r.status < 200 or r.status > 299 or not r.headers["mcp-session-id"] then
    return false
  end
  st.session = r.headers["mcp-session-id"]
  h = http_headers(st, "application/json, text/event-stream", true)
  authorize(st, h)
  r = baton.http.request {
    url = st.url, method = "POST", timeout_ms = st.request_timeout, headers = h,
    body = json.encode { jsonrpc = "2.0", method = "notifications/initialized" },
  }
  if not r or r.status < 200 or r.status > 299 then return false end
  st.stats.renewed = st.stats.renewed + 1
  S.warn(st, "the server ended the session (HTTP 404): a new session began")
  return true
end

-- One POST of `body` (attempt `try`, counting from 1): true | RETRY | RESUME, last id,
-- retry ms | nil, reason, kind[, detail].
local function post_once(st, body, id, method, head_ms, try)
  local sent_session = st.session
  local h = http_headers(st, "application/json, text/event-stream", true)
  local gen = authorize(st, h)
  local s <close>, e, k = baton.http.stream {
    url = st.url, method = "POST", body = body, timeout_ms = head_ms or st.request_timeout,
    headers = h, max_body_bytes = st.max_line,
  }
  local what = "POST " .. (method or "message")
  if not s then return fail(st, id, format("%s: %s", what, tostring(e)), http_kind(k)) end
  local status, headers = s.status, s.headers
  if method == "initialize" and status >= 200 and status < 300 then
    st.session = headers["mcp-session-id"]
  end
  if status == 404 and sent_session then  -- the MCP spec: the session has ended
    if method ~= "initialize" and try == 1 and renew(st, sent_session) then return RETRY end
    local reason = "the server ended the session (HTTP 404)"
    S.die(st, reason, "closed", { status = 404 })
    return nil, reason, "closed", { status = 404 }
  end
  if status == 401 or status == 403 then return refused(st, s, id, what, gen, try) end
  if status < 200 or status > 299 then
    local text = read_body(s, 65536) or ""
    local m = decode(text)
    local rpc = type(m) == "table" and type(m.error) == "table" and m.error or nil
    local reason = format("%s: HTTP %d: %s", what, status,
                          rpc and tostring(rpc.message) or snippet(text))
    return fail(st, id, reason, status >= 500 and "io" or "protocol",
                { status = status, body = text, error = rpc })
  end
  if id == nil then return true end  -- 202 Accepted (whatever else came with it is dropped)
  if status == 202 or status == 204 then
    return fail(st, id, format("%s: the server accepted the request without an answer "
                               .. "(HTTP %d)", what, status), "protocol", { status = status })
  end
  local ctype = headers["content-type"] or ""
  if find(ctype, "text/event-stream", 1, true) then
    return read_events(st, s, id, what, nil)
  elseif find(ctype, "application/json", 1, true) then
    local text, re, rk = read_body(s)
    if not text then return fail(st, id, format("%s: %s", what, tostring(re)), http_kind(rk)) end
    local ok, derr = S.route_text(st, text)
    if not ok then
      return fail(st, id, format("%s: a body that is not JSON (%s): %s", what,
                                 tostring(derr), snippet(text)), "protocol")
    end
    if st.pending[id] then
      return fail(st, id, what .. ": the response does not answer the request", "protocol")
    end
    return true
  end
  return fail(st, id, format("%s: unexpected content-type '%s' (HTTP %d)", what, ctype,
                             status), "protocol", { status = status })
end

-- One GET resuming request id's event stream after event `last_id` (the 2025-11-25 polling
-- pattern): true | RESUME, last id, retry ms | nil, reason, kind[, detail].
local function resume_once(st, id, what, last_id)
  local h = http_headers(st, "text/event-stream")
  h["Last-Event-ID"] = last_id
  authorize(st, h)
  local s <close>, e, k = baton.http.stream {
    url = st.url, method = "GET", timeout_ms = st.request_timeout, headers = h,
    max_body_bytes = st.max_line,
  }
  if not s then return fail(st, id, format("%s: resuming: %s", what, tostring(e)), http_kind(k)) end
  if s.status < 200 or s.status > 299
     or not find(s.headers["content-type"] or "", "text/event-stream", 1, true) then
    return fail(st, id, format("%s: the server refused to resume the event stream (HTTP %d)",
                               what, s.status), s.status >= 500 and "io" or "protocol",
                { status = s.status })
  end
  return read_events(st, s, id, what, last_id)
end

-- One message POSTed, through any number of new tokens (auth.lua bounds them) and at most
-- MAX_RESUMES resumptions of a broken event stream, each after the server's retry: delay.
-- true | nil, reason, kind[, detail].
local function post(st, body, id, method, head_ms)
  local try, resumes = 1, 0
  local r, a, b, c = post_once(st, body, id, method, head_ms, try)
  while r == RETRY do
    try = try + 1
    r, a, b, c = post_once(st, body, id, method, head_ms, try)
  end
  while r == RESUME do
    resumes = resumes + 1
    if resumes > MAX_RESUMES then
      return fail(st, id, format("POST %s: the event stream broke %d times", method or "message",
                                 MAX_RESUMES), "io")
    end
    st.stats.resumed = st.stats.resumed + 1
    baton.sleep(b or DEFAULT_RETRY_MS)
    r, a, b, c = resume_once(st, id, "POST " .. (method or "message"), a)
  end
  return r, a, b, c
end

local function post_task(st, body, id, method, head_ms)
  local me = current()
  local ok, r, e = pcall(post, st, body, id, method, head_ms)
  st.tasks[me] = nil
  if not ok then
    if S.is_cancel(r) then return end
    S.warn(st, "the POST failed: " .. tostring(r))
    if id ~= nil then S.fail_one(st, id, "the POST failed: " .. tostring(r), "io") end
  elseif r == nil and id == nil and not (st.closed or st.dead) then
    S.warn(st, tostring(e))
  end
end

local function spawn_io(st, fn, ...)
  local t = baton.spawn(fn, st, ...)
  st.tasks[t] = true
  return t
end

local QUIET_GET = { [400] = true, [401] = true, [403] = true, [404] = true, [405] = true }

-- The GET stream of messages the server sends outside any request, if it offers one
-- (405: it does not).
local function listen_task(st)
  local me = current()
  local ok, err = pcall(function()
    local h = http_headers(st, "text/event-stream")
    authorize(st, h)
    local s <close>, e = baton.http.stream {
      url = st.url, method = "GET", timeout_ms = st.request_timeout, headers = h,
    }
    if not s then
      return S.warn(st, "the GET stream for server messages failed: " .. tostring(e))
    end
    -- A server without a GET stream says so in one of several ways (405 as the spec says;
    -- 400, 404 from many; 401, 403 from a gateway that guards POST only): no warning.
    if QUIET_GET[s.status] then return end
    if s.status < 200 or s.status > 299
       or not find(s.headers["content-type"] or "", "text/event-stream", 1, true) then
      return S.warn(st, format("the server refused the GET stream for its messages (HTTP %d)",
                               s.status))
    end
    while not (st.closed or st.dead) do
      local ev, re = s:read_event()
      if not ev then
        if re then S.warn(st, "the GET stream for server messages failed: " .. tostring(re)) end
        break
      end
      if find(ev.data, "[^ \t\r\n]") then
        local rok, derr = S.route_text(st, ev.data)
        if not rok then
          S.warn(st, format("skipped an event that is not JSON (%s): %s", tostring(derr),
                            snippet(ev.data)))
        end
      end
    end
  end)
  st.tasks[me] = nil
  if not ok and not S.is_cancel(err) then S.warn(st, "the GET stream failed: " .. tostring(err)) end
end

-- Aborts every transport task but the caller's own.
local function abort_io(st)
  local me = current()
  for t in pairs(st.tasks) do
    st.tasks[t] = nil
    if t ~= me then pcall(t.abort, t) end
  end
end

-- Prepares session st for the server at `url`, with `headers` sent on every request.
function T.open(st, url, headers, auth)
  st.http, st.url, st.headers, st.tasks = true, url, headers, {}
  if auth then st.auth = A.new(st, auth) end
  return true
end

-- The version the handshake settled on, sent with every later request.
function T.negotiated(st, version)
  st.http_version = version
end

-- Opens the GET stream of server messages (after the handshake).
function T.listen(st)
  spawn_io(st, listen_task)
end

-- A message that is not a request: POSTed from a task of its own (true), or, with `wait`
-- (connect, client:notify), from the calling task, which gets the outcome: true | nil,
-- reason, kind[, detail].
function T.send(st, text, wait)
  st.stats.sent = st.stats.sent + 1
  if wait and current() then return post(st, text, nil, nil) end
  spawn_io(st, post_task, text, nil, nil)
  return true
end

-- A request: its POST task (what abort stops), and all of timeout_ms for the answer.
function T.begin(st, text, id, method, timeout_ms)
  return spawn_io(st, post_task, text, id, method, timeout_ms), timeout_ms
end

-- Stops a request's POST: its transfer ends, its stream closes.
function T.abort(st, task)
  if st.tasks[task] then
    st.tasks[task] = nil
    task:abort()
  end
end

-- close()'s waits: every POST and the GET stream aborted, then the session ended (the MCP
-- spec: DELETE with its id; a 405 — the server does not let clients end sessions — or any
-- failure is ignored).
function T.stop(st, grace)
  abort_io(st)
  if not st.session then return end
  local ms = grace < 200 and 200 or grace > 2000 and 2000 or grace
  local h = http_headers(st, "application/json, text/event-stream")
  if st.auth then h["Authorization"] = A.current(st.auth) end
  baton.http.request { url = st.url, method = "DELETE", timeout_ms = ms, headers = h }
end

-- Lets go at once: the transfers are aborted, without the DELETE (it would wait).
function T.release(st)
  abort_io(st)
end

function T.stderr() return "" end

return T
