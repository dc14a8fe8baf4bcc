-- baton.mcp — a Model Context Protocol client over stdio (baton.process) or Streamable
-- HTTP (baton.http), in pure Lua. docs/mcp.md is its manual.
--
-- Three parts:
--   baton.mcp          (this file) the public API: connect, the client's methods, the
--                      engine's dispatcher. It checks arguments and names the function in
--                      every message; the work is the session's.
--   baton.mcp.session  the JSON-RPC session: pending ids, routing, handlers, progress,
--                      deadlines, cancellation, death, release, stats.
--   baton.mcp.stdio    the stdio transport: one server process and its reader task.
--   baton.mcp.http     the Streamable HTTP transport: a POST per message, the GET stream,
--                      resumption, a new session after a 404.
--   baton.mcp.auth     OAuth 2.1 for the HTTP transport (the MCP authorization spec), token
--                      stores; baton.mcp.es256 signs private_key_jwt assertions.
--
-- Errors follow baton's convention (docs/errors.md). Misuse raises
-- "<fname>: bad argument #n 'name' (expected X, got Y)" (an unknown option key before any
-- other check of its table), or "<fname>: used after it was closed", or names what is
-- wrong (a call outside a task, waiting for a reply inside the stdio reader); fname is the
-- function as called: baton.mcp.connect, baton.mcp.client:call, ... The world's outcomes
-- return nil, "<fname>: ...", kind[, detail], kind one of: timeout, closed, io, resource,
-- connect, tls and auth (over HTTP), protocol, too_large, rpc_error, tool_error.
local baton = require "baton"
local S = require "baton.mcp.session"
local stdio = require "baton.mcp.stdio"
local http = require "baton.mcp.http"
local auth = require "baton.mcp.auth"

local json = baton.json
local null = json.null
local format = string.format
local concat = table.concat
local type, pairs, ipairs, tostring, pcall, error = type, pairs, ipairs, tostring, pcall, error
local now, current, activity = baton.now, baton.current, baton.activity

local M = {}

-- The protocol versions this client speaks, newest first; the first is the one it asks for.
M.SUPPORTED_VERSIONS = { "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05" }
M.VERSION = "0.1.0"

local DEFAULT_HANDSHAKE_MS = 30000
local DEFAULT_REQUEST_MS = 60000
local DEFAULT_GRACE_MS = 2000
local DEFAULT_MAX_LINE = 64 << 20
local MAX_PAGES = 1000  -- pages of a list_* walk: a server handing out cursors forever

-- ---- misuse --------------------------------------------------------------------------------

-- Whether a chunk's source is one of baton.mcp's own files.
local function own(source)
  return source:find("baton[/\\]mcp%.lua$") or source:find("baton[/\\]mcp[/\\][%w_]+%.lua$")
end

-- Raises `msg` at the first caller outside baton.mcp's own files, so the position is the
-- user's call however deep the check is.
local function raise(msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not (info and own(info.source)) then break end
    level = level + 1
  end
  error(msg, level)
end

-- How a value is shown in "got ...": as baton's C bindings show it.
local function got(v)
  local t = type(v)
  if t == "number" then
    if v ~= v then return "NaN" end
    if math.type(v) == "integer" then return tostring(v) end
    return format("%.14g", v)
  elseif t == "string" then
    if #v <= 40 and not v:find("\0", 1, true) then return "'" .. v .. "'" end
    return format("a string of %d bytes", #v)
  elseif t == "boolean" or t == "nil" then
    return tostring(v)
  end
  local mt = getmetatable(v)
  local name = type(mt) == "table" and rawget(mt, "__name")
  return type(name) == "string" and name or t
end

-- "<fname>: bad argument #n 'name' (expected X, got Y)"; `y`, when given, is said instead
-- of rendering v.
local function argerror(fname, n, name, expected, v, y)
  raise(format("%s: bad argument #%d '%s' (expected %s, got %s)", fname, n, name, expected,
               y or got(v)))
end

-- The option table t (argument #n): unknown keys are reported first.
local function check_opts(fname, n, name, t, known)
  if type(t) ~= "table" then argerror(fname, n, name, "table", t) end
  for k in pairs(t) do
    if type(k) ~= "string" then argerror(fname, n, name, "string keys", k) end
    if not known[k] then raise(format("%s: bad argument #%d '%s' (unknown option)", fname, n, k)) end
  end
end

local function opt_type(fname, n, t, key, ty)
  local v = t[key]
  if v ~= nil and type(v) ~= ty then argerror(fname, n, key, ty, v) end
  return v
end

-- An integer number of milliseconds, > 0 (>= 0 with allow_zero); def when nil.
local function check_ms(fname, n, name, v, def, allow_zero)
  if v == nil then return def end
  local ok = type(v) == "number" and v == v // 1 and v < 1e15 and (v > 0 or allow_zero and v == 0)
  if not ok then
    argerror(fname, n, name, format("an integer number of milliseconds %s 0",
                                    allow_zero and ">=" or ">"), v)
  end
  return math.tointeger(v)
end

-- ---- the client ----------------------------------------------------------------------------

local Client = {}
Client.__index = Client
Client.__name = "baton.mcp.Client"

-- The session of self, a client still open (misuse otherwise).
local function check_client(self, fname)
  local st = type(self) == "table" and rawget(self, "_s")
  if not st then argerror(fname, 0, "self", "baton.mcp.Client", self) end
  if st.closed then raise(fname .. ": used after it was closed") end
  return st
end

-- The outcome of a session call as fname returns it.
local function outcome(fname, r, reason, kind, detail)
  if r ~= nil then return r end
  return nil, fname .. ": " .. reason, kind, detail
end

-- Sends a request and waits for its reply: the result | nil, reason, kind[, detail].
local function request(st, fname, method, params, ms, on_progress)
  if st.dead then return nil, st.dead.message, st.dead.kind, st.dead.detail end
  local me = current()
  if me == nil then raise(fname .. ": must be called in a task (inside baton.run)") end
  if me == st.reader_task then
    raise(fname .. ": cannot wait for a reply inside a notification handler (it runs in "
          .. "the reader task, which delivers the reply): spawn a task")
  end
  -- baton.tasks() and the trace show the call as "mcp tools/call echo"
  local label = "mcp " .. method
  if type(params) == "table" and type(rawget(params, "name")) == "string" then
    label = label .. " " .. params.name
  end
  return activity(label, S.request, st, method, params, ms, on_progress)
end

local REQUEST_OPTS = { timeout_ms = true, on_progress = true }

-- The opts of a request (argument #n): its deadline and on_progress.
local function call_opts(fname, n, st, opts)
  if opts == nil then return st.request_timeout, nil end
  check_opts(fname, n, "opts", opts, REQUEST_OPTS)
  return check_ms(fname, n, "timeout_ms", opts.timeout_ms, st.request_timeout),
         opt_type(fname, n, opts, "on_progress", "function")
end

local function check_string(fname, n, name, v)
  if type(v) ~= "string" then argerror(fname, n, name, "string", v) end
end

local function check_params(fname, n, name, v)
  if v ~= nil and type(v) ~= "table" then argerror(fname, n, name, "table or nil", v) end
end

-- client:request(method, [params], [opts]) -> result | nil, message, kind[, detail]
function Client:request(method, params, opts)
  local F = "baton.mcp.client:request"
  local st = check_client(self, F)
  check_string(F, 1, "method", method)
  check_params(F, 2, "params", params)
  local ms, on_progress = call_opts(F, 3, st, opts)
  return outcome(F, request(st, F, method, params, ms, on_progress))
end

-- Sends notification `method`: true | nil, message, kind[, detail].
local function notify(st, fname, method, params)
  if st.dead then return outcome(fname, nil, st.dead.message, st.dead.kind, st.dead.detail) end
  local ok, e, k, d = S.send(st, { jsonrpc = "2.0", method = method, params = params }, true)
  if not ok then
    return outcome(fname, nil, e or "cannot write to the server", k or "closed", d)
  end
  return true
end

-- client:notify(method, [params]) -> true | nil, message, kind[, detail]
function Client:notify(method, params)
  local F = "baton.mcp.client:notify"
  local st = check_client(self, F)
  check_string(F, 1, "method", method)
  check_params(F, 2, "params", params)
  return notify(st, F, method, params)
end

function Client:ping(opts)
  local F = "baton.mcp.client:ping"
  local st = check_client(self, F)
  local ms = call_opts(F, 1, st, opts)
  local r, e, k, d = request(st, F, "ping", nil, ms)
  if r == nil then return outcome(F, nil, e, k, d) end
  return true
end

-- Follows nextCursor through every page of a list method; returns the concatenated items.
-- One deadline for the whole walk (each page gets what is left of it), and at most
-- MAX_PAGES pages.
local function list_all(self, F, method, key, opts)
  local st = check_client(self, F)
  local ms = call_opts(F, 1, st, opts)
  local deadline = now() + ms
  local out, seen, cursor, pages = {}, {}, nil, 0
  repeat
    if pages == MAX_PAGES then
      return outcome(F, nil, format("more than %d pages", MAX_PAGES), "protocol")
    end
    pages = pages + 1
    local left = deadline - now()
    if left <= 0 then return outcome(F, S.timed_out(ms)) end
    local r, e, k, x = request(st, F, method, cursor and { cursor = cursor } or nil, left)
    if r == nil then
      if k == "timeout" then return outcome(F, S.timed_out(ms)) end
      return outcome(F, nil, e, k, x)
    end
    local items = r[key]
    if type(items) ~= "table" then
      return outcome(F, nil, format("the %s reply has no %s list", method, key), "protocol")
    end
    for i = 1, #items do out[#out + 1] = items[i] end
    cursor = r.nextCursor
    if cursor == null or cursor == "" then cursor = nil end
    if cursor ~= nil then
      if type(cursor) ~= "string" or seen[cursor] then
        return outcome(F, nil, "the server repeats or garbles nextCursor", "protocol")
      end
      seen[cursor] = true
    end
  until cursor == nil
  return out
end

function Client:list_tools(opts)
  return list_all(self, "baton.mcp.client:list_tools", "tools/list", "tools", opts)
end
function Client:list_resources(opts)
  return list_all(self, "baton.mcp.client:list_resources", "resources/list", "resources", opts)
end
function Client:list_prompts(opts)
  return list_all(self, "baton.mcp.client:list_prompts", "prompts/list", "prompts", opts)
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
--   | nil, message, "tool_error", { tool =, result = }   (the tool failed: isError = true)
--   | nil, message, "tool_error", { tool =, code =, message =, data = }
--                                  (a JSON-RPC error: unknown tool, bad arguments)
--   | nil, message, kind[, detail] (timeout, closed, protocol, too_large, ...)
function Client:call(tool, args, opts)
  local F = "baton.mcp.client:call"
  local st = check_client(self, F)
  check_string(F, 1, "tool", tool)
  check_params(F, 2, "args", args)
  local ms, on_progress = call_opts(F, 3, st, opts)
  local r, e, k, x = request(st, F, "tools/call",
                             { name = tool, arguments = args or json.object({}) }, ms,
                             on_progress)
  if r == nil then
    if k == "rpc_error" then
      return nil, format("%s: tool '%s': %s (JSON-RPC error %s)", F, tool, tostring(x.message),
                         tostring(x.code)), "tool_error",
             { tool = tool, code = x.code, message = x.message, data = x.data }
    end
    return outcome(F, nil, e, k, x)
  end
  if type(r) ~= "table" then
    return outcome(F, nil, "the result of tools/call is not an object", "protocol")
  end
  if r.isError == true then
    local text = M.text(r)
    return nil, format("%s: tool '%s' failed: %s", F, tool, text ~= "" and text or "(no text)"),
           "tool_error", { tool = tool, result = r }
  end
  return r
end

function Client:read_resource(uri, opts)
  local F = "baton.mcp.client:read_resource"
  local st = check_client(self, F)
  check_string(F, 1, "uri", uri)
  local ms = call_opts(F, 2, st, opts)
  return outcome(F, request(st, F, "resources/read", { uri = uri }, ms))
end

function Client:get_prompt(name, args, opts)
  local F = "baton.mcp.client:get_prompt"
  local st = check_client(self, F)
  check_string(F, 1, "name", name)
  check_params(F, 2, "args", args)
  local ms = call_opts(F, 3, st, opts)
  return outcome(F, request(st, F, "prompts/get",
                            { name = name, arguments = args or json.object({}) }, ms))
end

-- client:on(method, fn): fn(params) for each notification `method` (several may be added).
function Client:on(method, fn)
  local F = "baton.mcp.client:on"
  local st = check_client(self, F)
  check_string(F, 1, "method", method)
  if type(fn) ~= "function" then argerror(F, 2, "fn", "function", fn) end
  local hs = st.on[method] or {}
  hs[#hs + 1] = fn
  st.on[method] = hs
  return self
end

-- client:handle(method, fn|nil): answers the server's requests `method` with fn(params) ->
-- result | nil, message[, code] (or raise { code =, message =, data = }); in its own task.
function Client:handle(method, fn)
  local F = "baton.mcp.client:handle"
  local st = check_client(self, F)
  check_string(F, 1, "method", method)
  if fn ~= nil and type(fn) ~= "function" then argerror(F, 2, "fn", "function or nil", fn) end
  st.handlers[method] = fn
  return self
end

-- A list of roots { uri =, name = } (argument #n, or option `roots` of argument #n).
local function check_roots(fname, n, roots)
  if type(roots) ~= "table" then
    argerror(fname, n, "roots", "a list of { uri = string, name = string? }", roots)
  end
  local out = {}
  for i, r in ipairs(roots) do
    if type(r) ~= "table" or type(r.uri) ~= "string" then
      argerror(fname, n, format("roots[%d]", i), "a table with a string uri", r)
    end
    if r.name ~= nil and type(r.name) ~= "string" then
      argerror(fname, n, format("roots[%d].name", i), "string", r.name)
    end
    out[i] = { uri = r.uri, name = r.name }
  end
  return out
end

-- client:set_roots(roots): replaces the roots and tells the server (roots/list_changed).
function Client:set_roots(roots)
  local F = "baton.mcp.client:set_roots"
  local st = check_client(self, F)
  if not st.roots then
    raise(F .. ": the client was connected without roots (roots capability)")
  end
  st.roots = check_roots(F, 1, roots)
  return notify(st, F, "notifications/roots/list_changed")
end

-- client:set_headers(headers) -> client: the headers sent with every later request (HTTP
-- only) replace the ones given to connect; for callers who manage tokens themselves.
function Client:set_headers(headers)
  local F = "baton.mcp.client:set_headers"
  local st = check_client(self, F)
  if not st.http then raise(F .. ": the client speaks over stdio (headers are for url)") end
  if type(headers) ~= "table" then argerror(F, 1, "headers", "a table of strings to strings", headers) end
  local h = {}
  for k, v in pairs(headers) do
    if type(k) ~= "string" or type(v) ~= "string" then
      argerror(F, 1, "headers", "a table of strings to strings", type(k) ~= "string" and k or v)
    end
    if k:find("[\r\n]") or v:find("[\r\n]") then
      argerror(F, 1, "headers", "names and values without CR or LF", k)
    end
    h[k] = v
  end
  st.headers = h
  return self
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
  return st.transport.stderr(st)
end

-- client:close([grace_ms]) -> true. Over stdio: closes the server's stdin and gives it
-- grace_ms to exit, then SIGTERM and another grace_ms, then SIGKILL; returns once it is
-- gone. Over HTTP: aborts the transfers and ends the session (DELETE). Pending calls fail
-- with "closed". Idempotent; a close() while another runs waits for that one. Aborted
-- while it waits (baton.timeout, an engine's shutdown), it lets go at once, then unwinds.
function Client:close(grace_ms)
  local F = "baton.mcp.client:close"
  local st = type(self) == "table" and rawget(self, "_s")
  if not st then argerror(F, 0, "self", "baton.mcp.Client", self) end
  local grace = check_ms(F, 1, "grace_ms", grace_ms, DEFAULT_GRACE_MS, true)
  return S.close(st, grace)
end

Client.__close = function(self)
  local st = rawget(self, "_s")
  if not st.released then S.release_now(st, DEFAULT_GRACE_MS) end
end
Client.__gc = Client.__close
Client.__tostring = function(self)
  local st = rawget(self, "_s")
  local state = st.closed and "closed" or st.dead and "dead" or "open"
  local name = type(self.server_info) == "table" and self.server_info.name or "?"
  if st.http then return format("baton.mcp.Client (%s, %s, %s)", tostring(name), st.url, state) end
  return format("baton.mcp.Client (%s, pid %d, %s)", tostring(name), st.pid or -1, state)
end

-- ---- connect -------------------------------------------------------------------------------

local CONNECT_OPTS = {
  command = true, env = true, cwd = true, protocol_version = true, supported_versions = true,
  capabilities = true, roots = true, client_info = true, max_line_bytes = true,
  timeout_ms = true, request_timeout_ms = true, on_notification = true, on_log = true,
  on_warning = true, url = true, headers = true, listen = true, process_group = true,
  auth = true,
}

local AUTH_OPTS = {
  client_id = "string", client_secret = "string", client_metadata_url = "string",
  client_name = "string", redirect_uri = "string", authorize = "function",
  token_store = "table", grant = "string", private_key = "string", signing_alg = "string",
  token_endpoint_auth_method = "string", id_token = "string", idp_client_id = "string",
  idp_token_endpoint = "string",
}
local GRANTS = { authorization_code = true, client_credentials = true, jwt_bearer = true }

-- The connect option `auth` (a table, or true for every default): a checked copy.
local function auth_opts(F, a)
  if a == true then return {} end
  if type(a) ~= "table" then argerror(F, 1, "auth", "table or true", a) end
  local out = {}
  for k, v in pairs(a) do
    if k == "scopes" then
      if type(v) ~= "string" and type(v) ~= "table" then
        argerror(F, 1, "auth.scopes", "a string or a list of strings", v)
      end
    elseif type(k) ~= "string" or not AUTH_OPTS[k] then
      raise(format("%s: bad argument #1 'auth.%s' (unknown option)", F, tostring(k)))
    elseif type(v) ~= AUTH_OPTS[k] then
      argerror(F, 1, "auth." .. k, AUTH_OPTS[k], v)
    end
    out[k] = v
  end
  if out.grant and not GRANTS[out.grant] then
    argerror(F, 1, "auth.grant", "'authorization_code', 'client_credentials' or 'jwt_bearer'",
             out.grant)
  end
  local st = out.token_store
  if st and not (type(st.load) == "function" or getmetatable(st) and st.load)
     then argerror(F, 1, "auth.token_store", "a store with load and save", st) end
  if out.grant == "client_credentials" and not out.client_id then
    argerror(F, 1, "auth.client_id", "string (the client_credentials grant needs it)", nil)
  end
  if out.grant == "jwt_bearer" then
    for _, k in ipairs { "client_id", "id_token", "idp_token_endpoint" } do
      if not out[k] then argerror(F, 1, "auth." .. k, "string (the jwt_bearer grant needs it)", nil) end
    end
  end
  return out
end

local function contains(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

-- Checks connect's options; returns what the rest of connect needs.
local function connect_opts(F, opts)
  check_opts(F, 1, "opts", opts, CONNECT_OPTS)
  local cmd, url = opts.command, opts.url
  if cmd == nil and url == nil then
    argerror(F, 1, "command", "a table of strings (or url: an http(s) URL)", nil)
  elseif cmd ~= nil and url ~= nil then
    argerror(F, 1, "url", "only one of command and url", nil, "both")
  end
  local headers, headers_auth = {}, nil
  if url ~= nil then
    if type(url) ~= "string" or not url:match("^[Hh][Tt][Tt][Pp][Ss]?://") then
      argerror(F, 1, "url", "an http:// or https:// URL", url)
    end
    for _, k in ipairs { "env", "cwd", "process_group" } do
      if opts[k] ~= nil then argerror(F, 1, k, "nil with url (it is for command)", opts[k]) end
    end
    for k, v in pairs(opt_type(F, 1, opts, "headers", "table") or {}) do
      if type(k) ~= "string" or type(v) ~= "string" then
        argerror(F, 1, "headers", "a table of strings to strings", type(k) ~= "string" and k or v)
      end
      headers[k] = v
    end
    opt_type(F, 1, opts, "listen", "boolean")
    if opts.auth ~= nil then headers_auth = auth_opts(F, opts.auth) end
  else
    if type(cmd) ~= "table" or #cmd == 0 then argerror(F, 1, "command", "a table of strings", cmd) end
    for i = 1, #cmd do
      if type(cmd[i]) ~= "string" then argerror(F, 1, format("command[%d]", i), "string", cmd[i]) end
    end
    for _, k in ipairs { "headers", "listen", "auth" } do
      if opts[k] ~= nil then argerror(F, 1, k, "nil with command (it is for url)", opts[k]) end
    end
  end
  for _, k in ipairs { "env", "capabilities", "client_info" } do opt_type(F, 1, opts, k, "table") end
  opt_type(F, 1, opts, "cwd", "string")
  for _, k in ipairs { "on_notification", "on_log", "on_warning" } do
    opt_type(F, 1, opts, k, "function")
  end
  opt_type(F, 1, opts, "process_group", "boolean")
  local supported = opt_type(F, 1, opts, "supported_versions", "table") or M.SUPPORTED_VERSIONS
  if #supported == 0 then argerror(F, 1, "supported_versions", "a non-empty list of strings", supported) end
  for i = 1, #supported do
    if type(supported[i]) ~= "string" then
      argerror(F, 1, format("supported_versions[%d]", i), "string", supported[i])
    end
  end
  local max_line = opts.max_line_bytes
  if max_line ~= nil then
    max_line = type(max_line) == "number" and math.tointeger(max_line)
    if not max_line or max_line <= 0 then
      argerror(F, 1, "max_line_bytes", "integer >= 1", opts.max_line_bytes)
    end
  end
  return {
    command = cmd, url = url, headers = headers, supported = supported, auth = headers_auth,
    version = opt_type(F, 1, opts, "protocol_version", "string") or supported[1],
    roots = opts.roots ~= nil and check_roots(F, 1, opts.roots) or nil,
    max_line = max_line or DEFAULT_MAX_LINE,
    handshake_ms = check_ms(F, 1, "timeout_ms", opts.timeout_ms, DEFAULT_HANDSHAKE_MS),
    request_ms = check_ms(F, 1, "request_timeout_ms", opts.request_timeout_ms, DEFAULT_REQUEST_MS),
  }
end

-- mcp.connect(opts) -> client | nil, message, kind[, detail]
function M.connect(opts)
  local F = "baton.mcp.connect"
  local o = connect_opts(F, opts)
  if current() == nil then raise(F .. ": must be called in a task (inside baton.run)") end

  local st = S.new(o.url and http or stdio, {
    max_line = o.max_line, request_timeout = o.request_ms, roots = o.roots,
    on_notification = opts.on_notification, on_warning = opts.on_warning, on_log = opts.on_log,
  })
  if o.url then
    http.open(st, o.url, o.headers, o.auth)
  else
    local ok, e, k = stdio.open(st, o.command, opts)
    if not ok then
      st.group:close()
      return outcome(F, nil, e, k)
    end
  end
  local client = setmetatable({ _s = st }, Client)

  local caps = {}
  for k, v in pairs(opts.capabilities or {}) do caps[k] = v end
  if o.roots and caps.roots == nil then caps.roots = { listChanged = true } end
  local info = opts.client_info or { name = "baton", version = M.VERSION }
  local init = { protocolVersion = o.version, capabilities = json.object(caps), clientInfo = info }
  local hok, r, e, k, d = pcall(S.request, st, "initialize", init, o.handshake_ms)
  if not hok then  -- aborted (or bad client_info): let go of the server, then unwind
    S.release_now(st, 200)
    error(r, 0)
  end
  local function fail(reason, kind, detail)
    client:close(200)
    return outcome(F, nil, reason, kind, detail)
  end
  if r == nil then
    return fail("initialize failed: " .. tostring(e), k == "rpc_error" and "protocol" or k, d)
  end
  if type(r) ~= "table" or type(r.protocolVersion) ~= "string" then
    return fail("the initialize reply has no protocolVersion", "protocol")
  end
  local v = r.protocolVersion
  if v ~= o.version and not contains(o.supported, v) then
    return fail(format("the server speaks protocol %s; this client supports %s", v,
                       concat(o.supported, ", ")), "protocol")
  end
  client.protocol_version = v
  client.server_info = type(r.serverInfo) == "table" and r.serverInfo or {}
  client.server_capabilities = type(r.capabilities) == "table" and r.capabilities or {}
  client.instructions = type(r.instructions) == "string" and r.instructions or nil
  if not st.http then
    S.send(st, { jsonrpc = "2.0", method = "notifications/initialized" })
    return client
  end
  client.session_id = st.session
  st.init_params = init  -- a new session after a 404 (baton.mcp.http) starts with the same
  -- Over HTTP the handshake ends once the server has accepted notifications/initialized,
  -- sent with the negotiated version.
  http.negotiated(st, v)
  local sok, ok, e2, k2, d2 = pcall(S.send, st, { jsonrpc = "2.0",
                                                  method = "notifications/initialized" }, true)
  if not sok then
    S.release_now(st, 0)
    error(ok, 0)
  end
  if not ok then return fail(tostring(e2), k2 or "closed", d2) end
  if opts.listen ~= false then http.listen(st) end
  return client
end

-- ---- token stores (baton.mcp.auth) ---------------------------------------------------------

-- mcp.memory_token_store() -> a token store kept in memory (connect's default).
function M.memory_token_store()
  return auth.memory_store()
end

-- mcp.file_token_store(path) -> a token store in a JSON file written with mode 0600.
function M.file_token_store(path)
  if type(path) ~= "string" or path == "" then
    argerror("baton.mcp.file_token_store", 1, "path", "a file name", path)
  end
  return auth.file_store(path)
end

-- ---- the engine's dispatcher ---------------------------------------------------------------

local DISPATCH_OPTS = { timeout_ms = true, body = true }
local ERR_MT = { __name = "baton.Error", __tostring = function(t) return t.message end }

-- A baton.Error { kind =, message =, detail = } to raise (baton.error where the runtime has
-- it).
local new_error = baton.error or function(kind, message, detail)
  return setmetatable({ kind = kind, message = message, detail = detail }, ERR_MT)
end

-- mcp.dispatcher(client, [{ timeout_ms =, body = fn(result, tool, args) }]) -> a dispatcher
-- for baton.engine: calls the tool; returns the result (or body(result, ...)); raises a
-- baton.Error { kind =, message =, detail = } (client:call's) on failure, so the outcome is
-- "failed".
function M.dispatcher(client, opts)
  local F = "baton.mcp.dispatcher"
  if getmetatable(client) ~= Client then argerror(F, 1, "client", "baton.mcp.Client", client) end
  if opts ~= nil then check_opts(F, 2, "opts", opts, DISPATCH_OPTS) end
  opts = opts or {}
  local ms = check_ms(F, 2, "timeout_ms", opts.timeout_ms, nil)
  local body = opt_type(F, 2, opts, "body", "function")
  local copts = ms and { timeout_ms = ms } or nil
  return function(tool, args)
    if rawget(client, "_s").closed then  -- an outcome of the world here, not a misuse
      error(new_error("closed", F .. ": the client is closed"), 0)
    end
    local r, msg, kind, detail = client:call(tool, args, copts)
    if r == nil then error(new_error(kind, msg, detail), 0) end
    if body then return body(r, tool, args) end
    return r
  end
end

M.Client = Client
return M
