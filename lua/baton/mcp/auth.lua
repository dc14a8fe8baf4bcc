-- baton.mcp.auth — authorization for the Streamable HTTP transport: the MCP authorization
-- specification (2025-11-25, with the 2025-03-26 fallbacks), on OAuth 2.1. docs/mcp.md
-- ("Authorization") is its manual.
--
-- What happens on a 401 (or a 403 insufficient_scope) from the MCP server:
--   1. WWW-Authenticate gives resource_metadata and scope (RFC 6750, RFC 9728 §5.1).
--   2. Protected Resource Metadata (RFC 9728): the resource_metadata URL, else
--      /.well-known/oauth-protected-resource{path}, else .../oauth-protected-resource. Its
--      `resource` must name the server (same origin, a prefix of its path): a mismatch is
--      refused before anything is sent to an authorization server. No metadata at all: the
--      2025-03-26 behaviour, the server's origin is the authorization server.
--   3. Authorization Server metadata (RFC 8414, then OpenID discovery, the path-inserted and
--      path-appended forms); none: /authorize, /token, /register at the server's origin.
--   4. A client identity: the configured client_id (and secret), else a Client ID Metadata
--      Document URL where the server supports them, else dynamic registration (RFC 7591).
--   5. A grant: authorization code + PKCE S256 + resource (RFC 8707) through the caller's
--      authorize(url) (the person in the loop; by default a loopback listener for the
--      redirect, or the redirect pasted on the terminal), client credentials (a secret, or a
--      private_key_jwt assertion), or the enterprise-managed jwt-bearer grant (an IdP ID
--      token exchanged for an ID-JAG, RFC 8693 + RFC 7523).
--   6. The token endpoint, authenticated as the metadata says (client_secret_basic,
--      client_secret_post, none); tokens are kept in the token store and refreshed before
--      they expire (a refresh that fails falls back to a new grant).
--
-- Invariants.
-- * One flow at a time per client (a semaphore): requests that meet a 401 together wait for
--   the one flow, then retry with its token (the generation number tells them apart).
-- * A cached, unexpired token costs no round trip: it is sent with every request.
-- * Secrets (tokens, client secrets, verifiers) never appear in a message, a warning or a
--   failure's detail.
-- * Failures are kind "auth" with detail { status =, headers =, body = } when the MCP server
--   refused, or { stage =, status =, body = } when a step of the flow failed; the transport
--   adds "auth" as the kind of the failed request.
-- * What the servers answer is checked before it is used (hostile or broken servers): a
--   metadata document or a token response is read up to MAX_DOC bytes and must be a JSON
--   object whose known fields have their types (a URL, a list of strings, ...); the
--   authorization server's metadata must name the issuer it was fetched for (RFC 8414
--   §3.3); its endpoints must be https, or http on a loopback host or the MCP server's own
--   host (no credential crosses the network in clear that the server's URL did not already
--   send so); a token response must carry an access_token a header can hold, a Bearer
--   token_type, an expires_in that is a number (clamped to 0..10 years). Anything else is
--   an "auth" failure naming the document, the field and what it held.
local baton = require "baton"

local json = baton.json
local format, concat = string.format, table.concat
local byte, char, sub = string.byte, string.char, string.sub
local type, ipairs, tostring, tonumber = type, ipairs, tostring, tonumber

local A = {}

-- ---- bytes: SHA-256, base64, randomness --------------------------------------------------

local K256 = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
  0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
  0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
  0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
  0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
  0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
  0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
  0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
}

-- The SHA-256 digest of s (32 bytes).
function A.sha256(s)
  local M32 = 0xffffffff
  local function rotr(x, n) return ((x >> n) | (x << (32 - n))) & M32 end
  local h0, h1, h2, h3 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
  local h4, h5, h6, h7 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  local len = #s
  s = s .. "\128" .. string.rep("\0", (55 - len) % 64) .. string.pack(">I8", len * 8)
  local w = {}
  for chunk = 1, #s, 64 do
    for i = 0, 15 do w[i] = string.unpack(">I4", s, chunk + i * 4) end
    for i = 16, 63 do
      local a, b = w[i - 15], w[i - 2]
      local s0 = rotr(a, 7) ~ rotr(a, 18) ~ (a >> 3)
      local s1 = rotr(b, 17) ~ rotr(b, 19) ~ (b >> 10)
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & M32
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for i = 0, 63 do
      local S1 = rotr(e, 6) ~ rotr(e, 11) ~ rotr(e, 25)
      local ch = (e & f) ~ (~e & g)
      local t1 = (h + S1 + ch + K256[i + 1] + w[i]) & M32
      local S0 = rotr(a, 2) ~ rotr(a, 13) ~ rotr(a, 22)
      local maj = (a & b) ~ (a & c) ~ (b & c)
      local t2 = (S0 + maj) & M32
      h, g, f, e, d, c, b, a = g, f, e, (d + t1) & M32, c, b, a, (t1 + t2) & M32
    end
    h0, h1, h2, h3 = (h0 + a) & M32, (h1 + b) & M32, (h2 + c) & M32, (h3 + d) & M32
    h4, h5, h6, h7 = (h4 + e) & M32, (h5 + f) & M32, (h6 + g) & M32, (h7 + h) & M32
  end
  return string.pack(">I4I4I4I4I4I4I4I4", h0, h1, h2, h3, h4, h5, h6, h7)
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Base64 of s (RFC 4648 §4), or its URL-safe unpadded form with `url` (§5).
function A.base64(s, url)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = byte(s, i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    local q = {}
    for j = 1, 4 do
      local v = (n >> (6 * (4 - j))) & 63
      q[j] = sub(B64, v + 1, v + 1)
    end
    if not b then q[3], q[4] = "=", "=" elseif not c then q[4] = "=" end
    out[#out + 1] = concat(q)
  end
  local r = concat(out)
  if url then r = r:gsub("=+$", ""):gsub("[+/]", { ["+"] = "-", ["/"] = "_" }) end
  return r
end

-- The bytes of base64 or base64url text | nil.
function A.unbase64(s)
  s = s:gsub("[%s=]", ""):gsub("[-_]", { ["-"] = "+", ["_"] = "/" })
  local out, n, bits = {}, 0, 0
  for i = 1, #s do
    local v = B64:find(sub(s, i, i), 1, true)
    if not v then return nil end
    n, bits = (n << 6) | (v - 1), bits + 6
    if bits >= 8 then
      bits = bits - 8
      out[#out + 1] = char((n >> bits) & 255)
    end
  end
  return concat(out)
end

-- n random bytes from the kernel.
function A.random(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local s = f:read(n)
  f:close()
  assert(s and #s == n, "baton.mcp: /dev/urandom gave short read")
  return s
end

local function b64url_random(n) return A.base64(A.random(n), true) end

-- ---- URLs and forms ------------------------------------------------------------------------

local function pct(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end
A.pct = pct

local function unpct(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- application/x-www-form-urlencoded of the pairs { {name, value}, ... } (nil values left out).
local function form(list)
  local out = {}
  for _, kv in ipairs(list) do
    if kv[2] ~= nil then out[#out + 1] = pct(kv[1]) .. "=" .. pct(kv[2]) end
  end
  return concat(out, "&")
end

-- scheme://authority, path (no query, no fragment; "" for none) of url.
local function split_url(url)
  local origin, rest = url:match("^([Hh][Tt][Tt][Pp][Ss]?://[^/?#]+)(.*)$")
  if not origin then return nil end
  local path = rest:match("^[^?#]*") or ""
  return origin:lower(), path
end
A.split_url = split_url

-- A URL's query parameter `name`, decoded | nil.
function A.query_param(url, name)
  local q = url:match("%?([^#]*)")
  if not q then return nil end
  for k, v in q:gmatch("([^&=]+)=?([^&]*)") do
    if unpct(k) == name then return unpct(v) end
  end
  return nil
end

-- Whether the resource a metadata document names covers the server at `url`: the same
-- origin, and its path a prefix of the server's (segment-wise).
local function resource_covers(resource, url)
  local ro, rp = split_url(resource)
  local uo, up = split_url(url)
  if not ro or ro ~= uo then return false end
  if sub(rp, -1) ~= "/" then rp = rp .. "/" end
  if sub(up, -1) ~= "/" then up = up .. "/" end
  return sub(up, 1, #rp) == rp
end
A.resource_covers = resource_covers

-- The parameters of a WWW-Authenticate header's Bearer challenge: { resource_metadata =,
-- scope =, error =, ... } (lowercase names).
function A.parse_challenge(h)
  local out = {}
  if type(h) ~= "string" then return out end
  local params = h:match("[Bb][Ee][Aa][Rr][Ee][Rr]%s+(.*)$")
  if not params then return out end
  local i = 1
  while i <= #params do
    local name, e = params:match("^[%s,]*([%w_%-]+)%s*=%s*()", i)
    if not name then break end
    local v
    if sub(params, e, e) == '"' then
      local j, buf = e + 1, {}
      while j <= #params do
        local c = sub(params, j, j)
        if c == "\\" then buf[#buf + 1] = sub(params, j + 1, j + 1); j = j + 2
        elseif c == '"' then j = j + 1; break
        else buf[#buf + 1] = c; j = j + 1 end
      end
      v, i = concat(buf), j
    else
      v = params:match("^[^,%s]*", e)
      i = e + #v
    end
    out[name:lower()] = v
  end
  return out
end

-- ---- scopes ------------------------------------------------------------------------------

local function scope_list(s)
  local out = {}
  if type(s) == "table" then
    for _, v in ipairs(s) do out[#out + 1] = tostring(v) end
  elseif type(s) == "string" then
    for w in s:gmatch("%S+") do out[#out + 1] = w end
  end
  return out
end

local function has(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

-- The scopes of a, then those of b not in a, each once. A set, not a search of the list
-- so far: the lists come from servers, and a hostile one can publish thousands.
local function union(a, b)
  local out, seen = {}, {}
  for _, list in ipairs { a, b } do
    for _, v in ipairs(list) do
      if not seen[v] then seen[v], out[#out + 1] = true, v end
    end
  end
  return out
end

-- More scopes than this in one grant is refused: no real server asks for so many, and the
-- authorization URL (which carries them all) would outgrow what browsers and servers take.
local MAX_SCOPES = 256

-- ---- token stores -------------------------------------------------------------------------

local MemoryStore = {}
MemoryStore.__index = MemoryStore
MemoryStore.__name = "baton.mcp.MemoryTokenStore"
function MemoryStore:load(key) return self._t[key] end
function MemoryStore:save(key, entry) self._t[key] = entry; return true end

-- A token store in memory (the default): entries live as long as the store.
function A.memory_store()
  return setmetatable({ _t = {} }, MemoryStore)
end

local FileStore = {}
FileStore.__index = FileStore
FileStore.__name = "baton.mcp.FileTokenStore"

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function FileStore:load(key)
  local text = read_all(self.path)
  if not text or text == "" then return nil end
  local t = json.decode(text)
  if type(t) ~= "table" then return nil end
  local e = t[key]
  return type(e) == "table" and e or nil
end

-- Writes the whole file anew: a temporary file beside it, made private (mode 0600) while it
-- is still empty, filled, then renamed over the old one — the file never holds a secret
-- readable by others, nor half an update.
function FileStore:save(key, entry)
  local text = read_all(self.path)
  local t = text and text ~= "" and json.decode(text) or nil
  if type(t) ~= "table" then t = {} end
  t[key] = entry
  local tmp = self.path .. ".tmp" .. b64url_random(6)
  local f, e = io.open(tmp, "wb")
  if not f then return nil, e end
  f:close()
  local r, pe = baton.process.run { "chmod", "600", tmp }
  if not r or r.code ~= 0 then
    os.remove(tmp)
    return nil, "cannot make the token file private: " .. tostring(pe or r.stderr)
  end
  f, e = io.open(tmp, "wb")
  if not f then os.remove(tmp); return nil, e end
  f:write(json.encode(t))
  f:close()
  local ok, re = os.rename(tmp, self.path)
  if not ok then os.remove(tmp); return nil, re end
  return true
end

-- A token store in a JSON file (mode 0600), keyed by the MCP server's resource URL.
function A.file_store(path)
  return setmetatable({ path = path }, FileStore)
end

-- ---- HTTP --------------------------------------------------------------------------------

local AUTH_MS = 30000
local MAX_DOC = 1 << 20        -- a metadata document, a registration or a token response
local MAX_EXPIRES = 10 * 365 * 86400
local ARRAY_MT = getmetatable(json.array {})
local KINDS = {}
for _, k in ipairs(baton.kinds) do KINDS[k] = true end

-- A value as a message shows it: a short, printable rendering (never a secret: callers
-- describe only what servers published).
local function show(v)
  local t = type(v)
  if t == "string" then
    local s = v:sub(1, 60):gsub("[%c\127-\255]", "?")
    return format("the string '%s%s'", s, #v > 60 and "..." or "")
  end
  if t == "table" then return getmetatable(v) == ARRAY_MT and "a list" or "an object" end
  return format("%s %s", t, tostring(v))
end

-- A server's words as a message shows them: at most n bytes, control characters as '?'
-- (they end up on terminals: an escape sequence must not reach one).
local function words(v, n) return (tostring(v):sub(1, n):gsub("[%c\127]", "?")) end

-- Whether host (of an origin "scheme://host[:port]") is a loopback name.
local function host_of(origin)
  local auth = origin:match("^%a+://(.*)$") or ""
  auth = auth:gsub("^.*@", "")
  return (auth:match("^(%[[^%]]*%])") or auth:gsub(":%d*$", "")):lower()
end
local LOOPBACK = { ["127.0.0.1"] = true, localhost = true, ["[::1]"] = true }

local EXPECTED = { url = "an absolute http(s) URL", urls = "a list of absolute http(s) URLs",
                   strings = "a list of strings", boolean = "a boolean" }

local function is_list(v, each)
  if type(v) ~= "table" or (next(v) ~= nil and v[1] == nil) then return false end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v then return false end
  for i = 1, #v do if not each(v[i]) then return false end end
  return true
end

local function is_url(v) return type(v) == "string" and #v <= 4096 and not v:find("[%s%c]")
                                and A.split_url(v) ~= nil end
local function is_string(v) return type(v) == "string" end

-- Checks the fields of document t (fetched from url, called `what`) against `spec`
-- ({ name = "url" | "urls" | "strings" | "boolean" }): true | nil, message.
local function check_fields(what, url, t, spec, required)
  for _, name in ipairs(required or {}) do
    if t[name] == nil then return nil, format("%s at %s has no '%s'", what, url, name) end
  end
  for name, want in pairs(spec) do
    local v = t[name]
    if v ~= nil then
      local ok
      if want == "url" then ok = is_url(v)
      elseif want == "urls" then ok = is_list(v, is_url) and #v > 0
      elseif want == "strings" then ok = is_list(v, is_string)
      else ok = type(v) == "boolean" end
      if not ok then
        return nil, format("%s at %s: '%s' is %s, expected %s", what, url, name, show(v), EXPECTED[want])
      end
    end
  end
  return true
end

local function fail(stage, msg, r, kind)
  return nil, msg, kind or "auth", { stage = stage, status = r and r.status or nil,
                                     body = r and r.body or nil }
end

-- GET url as JSON: the decoded object | nil (unreachable, or a status other than 200: try
-- the next place) | nil, why (a 200 that is not a JSON object, or larger than MAX_DOC).
local function get_json(st, url)
  local r, _, k = baton.http.request { url = url, timeout_ms = AUTH_MS, max_body_bytes = MAX_DOC,
                                       headers = { Accept = "application/json",
                                                   ["MCP-Protocol-Version"] = st.http_version or "2025-11-25" } }
  if not r then
    if k == "too_large" then return nil, format("larger than %d bytes", MAX_DOC) end
    return nil
  end
  if r.status ~= 200 then return nil end
  local t, je = json.decode(r.body)
  if type(t) ~= "table" or getmetatable(t) == ARRAY_MT then
    return nil, t == nil and format("not JSON (%s)", tostring(je)) or format("not a JSON object (%s)", show(t))
  end
  return t
end

-- The checks of an endpoint's transport: https, or http to a loopback host or the MCP
-- server's own host. true | nil, message.
local function check_transport(st, name, url)
  local origin = A.split_url(url)
  if origin:match("^https://") then return true end
  local host = host_of(origin)
  if LOOPBACK[host] or host == host_of(A.split_url(st.url) or "") then return true end
  return nil, format("the authorization server's %s %s is not https: refused (a credential would "
                     .. "cross the network in clear)", name, url)
end

-- POSTs a form to the token endpoint: the token response | nil, message, "auth", detail.
-- What is wrong with the token response t (a JSON object) | nil. Its expires_in is made a
-- whole number of seconds in 0..MAX_EXPIRES. The token itself is never shown.
local function bad_token(t)
  local at = t.access_token
  if at == nil then return "no access_token" end
  if type(at) ~= "string" then return format("an access_token that is %s, not a string", type(at)) end
  if at == "" then return "an empty access_token" end
  if #at > 65536 then return "an access_token longer than 64 KiB" end
  if at:find("[^\33-\126]") then return "an access_token with characters a header cannot carry" end
  local tt = t.token_type
  if tt ~= nil and (type(tt) ~= "string" or tt:lower() ~= "bearer") then
    return format("token_type %s, not Bearer", show(tt))
  end
  local ei = t.expires_in
  if ei ~= nil then
    local n = type(ei) == "number" and ei or type(ei) == "string" and tonumber(ei) or nil
    if n == nil or n ~= n then return format("expires_in %s, not a number of seconds", show(ei)) end
    t.expires_in = math.floor(math.max(0, math.min(n, MAX_EXPIRES)))
  end
  if t.refresh_token ~= nil and type(t.refresh_token) ~= "string" then t.refresh_token = nil end
  if t.scope ~= nil and type(t.scope) ~= "string" then t.scope = nil end
  return nil
end

local function token_request(a, stage, params, basic)
  local headers = { ["Content-Type"] = "application/x-www-form-urlencoded",
                    Accept = "application/json" }
  if basic then headers.Authorization = "Basic " .. basic end
  local r, e, k = baton.http.request { url = a.endpoints.token, method = "POST",
                                       headers = headers, body = form(params),
                                       timeout_ms = AUTH_MS, max_body_bytes = MAX_DOC }
  if not r then return nil, format("%s: %s", stage, tostring(e)), k end
  local t, je = json.decode(r.body)
  if type(t) ~= "table" or getmetatable(t) == ARRAY_MT then t = nil end
  if r.status < 200 or r.status > 299 then
    local why = t and t.error ~= nil and (words(t.error, 200)
                .. (t.error_description ~= nil and (": " .. words(t.error_description, 300)) or ""))
                or format("HTTP %d", r.status)
    return fail(stage, format("%s: the token endpoint refused: %s", stage, why), r)
  end
  if t == nil then
    return fail(stage, format("%s: the token endpoint answered HTTP %d with a body that is not a JSON "
                              .. "object (%s)", stage, r.status, je or "a JSON value of another type"), r)
  end
  local bad = bad_token(t)
  if bad then
    return fail(stage, format("%s: the token endpoint answered HTTP %d with %s", stage, r.status, bad),
                { status = r.status })
  end
  return t
end

-- ---- discovery ---------------------------------------------------------------------------

local PRM_FIELDS = { resource = "url", authorization_servers = "urls", scopes_supported = "strings",
                     bearer_methods_supported = "strings" }
local AS_FIELDS = { issuer = "url", authorization_endpoint = "url", token_endpoint = "url",
                    registration_endpoint = "url", scopes_supported = "strings",
                    response_types_supported = "strings", grant_types_supported = "strings",
                    code_challenge_methods_supported = "strings",
                    token_endpoint_auth_methods_supported = "strings",
                    client_id_metadata_document_supported = "boolean" }

-- The Protected Resource Metadata for the server: the document | nil (none published) |
-- nil, message (one was, and it is broken). A resource_metadata in the challenge that is
-- not an http(s) URL is not followed (the well-known places are asked).
local function discover_prm(st, challenge)
  local urls = {}
  if is_url(challenge.resource_metadata) then urls[#urls + 1] = challenge.resource_metadata end
  local origin, path = split_url(st.url)
  if path ~= "" and path ~= "/" then
    urls[#urls + 1] = origin .. "/.well-known/oauth-protected-resource" .. path:gsub("/$", "")
  end
  urls[#urls + 1] = origin .. "/.well-known/oauth-protected-resource"
  for _, u in ipairs(urls) do
    local t, why = get_json(st, u)
    if why then return nil, format("the protected resource metadata at %s is %s", u, why) end
    if t then
      local ok, e = check_fields("the protected resource metadata", u, t, PRM_FIELDS, { "authorization_servers" })
      if not ok then return nil, e end
      return t
    end
  end
  return nil
end

-- The Authorization Server metadata for issuer URL `as` (`named`: by the protected resource
-- metadata; else the server's origin) | nil (none is published) | nil, message (broken).
local function discover_as(st, as, named)
  local origin, path = split_url(as)
  path = path:gsub("/+$", "")
  local urls
  if path ~= "" then
    urls = { origin .. "/.well-known/oauth-authorization-server" .. path,
             origin .. "/.well-known/openid-configuration" .. path,
             origin .. path .. "/.well-known/openid-configuration" }
  else
    urls = { origin .. "/.well-known/oauth-authorization-server",
             origin .. "/.well-known/openid-configuration" }
  end
  for _, u in ipairs(urls) do
    local t, why = get_json(st, u)
    if why then return nil, format("the authorization server metadata at %s is %s", u, why) end
    if t then
      local ok, e = check_fields("the authorization server metadata", u, t, AS_FIELDS, { "token_endpoint" })
      if not ok then return nil, e end
      -- RFC 8414 §3.3: the issuer must be the one the document was fetched for; without
      -- protected resource metadata (2025-03-26) only the origin is known, and must match
      local issuer = t.issuer
      if issuer ~= nil and (named and issuer:gsub("/+$", "") ~= as:gsub("/+$", "")
                            or not named and split_url(issuer) ~= split_url(as)) then
        return nil, format("the authorization server metadata at %s names issuer %s, not %s "
                           .. "(RFC 8414 §3.3): refused", u, show(issuer), as)
      end
      return t
    end
  end
  return nil
end

-- Fills a.prm, a.resource, a.issuer, a.meta, a.endpoints: true | nil, message, "auth",
-- detail.
local function discover(st, a, challenge)
  if a.endpoints and not challenge.resource_metadata_changed then return true end
  local prm, perr = discover_prm(st, challenge)
  if perr then return fail("metadata", perr) end
  local as
  if prm then
    if prm.resource ~= nil then
      if type(prm.resource) ~= "string" or not resource_covers(prm.resource, st.url) then
        return fail("resource", format("the protected resource metadata names resource '%s', "
                    .. "not this server (%s): refused", tostring(prm.resource), st.url))
      end
      a.resource = prm.resource
    end
    local servers = prm.authorization_servers
    as = type(servers) == "table" and type(servers[1]) == "string" and servers[1] or nil
    if not as then
      return fail("metadata", "the protected resource metadata names no authorization server")
    end
  else
    as = (split_url(st.url))  -- 2025-03-26: the server's origin is the authorization server
  end
  a.prm = prm
  local meta, merr = discover_as(st, as, prm ~= nil)
  if merr then return fail("metadata", merr) end
  local origin = split_url(as)
  if meta then
    for _, name in ipairs { "authorization_endpoint", "token_endpoint", "registration_endpoint" } do
      if meta[name] ~= nil then
        local ok, e = check_transport(st, name, meta[name])
        if not ok then return fail("metadata", e) end
      end
    end
    a.issuer = type(meta.issuer) == "string" and meta.issuer or as
    a.endpoints = { authorize = meta.authorization_endpoint, token = meta.token_endpoint,
                    register = meta.registration_endpoint }
  elseif prm then
    return fail("metadata", format("no authorization server metadata for %s", as))
  else
    meta = {}
    a.issuer = origin
    a.endpoints = { authorize = origin .. "/authorize", token = origin .. "/token",
                    register = origin .. "/register" }
  end
  a.meta = meta
  return true
end

-- ---- client identity ----------------------------------------------------------------------

-- The token endpoint auth method to use with a secret (`secret` true) or without.
local function pick_method(a, secret)
  local supported = a.meta.token_endpoint_auth_methods_supported
  if type(supported) ~= "table" then supported = { "client_secret_basic" } end
  if not secret then return "none" end
  for _, m in ipairs { "client_secret_basic", "client_secret_post" } do
    if has(supported, m) then return m end
  end
  return has(supported, "none") and "none" or "client_secret_basic"
end

local function store_key(a) return "client " .. tostring(a.issuer) end

-- Fills a.client = { client_id =, client_secret =, method = }.
local function identify(a)
  local o = a.opts
  if o.client_id then
    a.client = { client_id = o.client_id, client_secret = o.client_secret,
                 method = o.token_endpoint_auth_method or pick_method(a, o.client_secret ~= nil) }
    return true
  end
  if a.client and a.client_issuer == a.issuer then return true end
  local saved = a.store:load(store_key(a))
  if type(saved) == "table" and type(saved.client_id) == "string" then
    a.client, a.client_issuer = saved, a.issuer
    return true
  end
  if o.client_metadata_url and a.meta.client_id_metadata_document_supported == true then
    a.client, a.client_issuer = { client_id = o.client_metadata_url, method = "none" }, a.issuer
    return true
  end
  local reg = a.endpoints.register
  if type(reg) ~= "string" then
    return fail("register", "the authorization server offers no dynamic client registration "
                .. "and no client_id was given (auth.client_id)")
  end
  local body = {
    client_name = o.client_name or "baton",
    redirect_uris = json.array { a.redirect_uri },
    grant_types = json.array { "authorization_code", "refresh_token" },
    response_types = json.array { "code" },
  }
  local supported = a.meta.token_endpoint_auth_methods_supported
  if type(supported) == "table" and #supported > 0 and not has(supported, "client_secret_basic") then
    body.token_endpoint_auth_method = has(supported, "none") and "none" or supported[1]
  end
  local r, e, k = baton.http.json { url = reg, method = "POST", body = body, timeout_ms = AUTH_MS,
                                    max_body_bytes = MAX_DOC }
  if not r then return nil, "register: " .. tostring(e), k end
  if r.status < 200 or r.status > 299 or type(r.body) ~= "table"
     or type(r.body.client_id) ~= "string" then
    return fail("register", format("register: the registration endpoint refused (HTTP %d)",
                                   r.status), { status = r.status, body = r.text })
  end
  local c = r.body
  local secret = type(c.client_secret) == "string" and c.client_secret or nil
  a.client = { client_id = c.client_id, client_secret = secret,
               method = type(c.token_endpoint_auth_method) == "string"
                        and c.token_endpoint_auth_method or pick_method(a, secret ~= nil) }
  a.client_issuer = a.issuer
  a.store:save(store_key(a), a.client)
  return true
end

-- Adds the client's authentication to a token request: params (a list) and the Basic
-- credentials (or nil).
local function client_auth(a, params)
  local c = a.client
  if c.method == "client_secret_basic" and c.client_secret then
    return A.base64(pct(c.client_id) .. ":" .. pct(c.client_secret))
  end
  params[#params + 1] = { "client_id", c.client_id }
  if c.method == "client_secret_post" and c.client_secret then
    params[#params + 1] = { "client_secret", c.client_secret }
  end
  return nil
end

-- ---- tokens ------------------------------------------------------------------------------

local function wall() return os.time() end

-- Keeps a token response t (for the scopes `asked`).
local function keep(a, t, asked)
  local e = {
    access_token = t.access_token,
    token_type = type(t.token_type) == "string" and t.token_type or "Bearer",
    refresh_token = type(t.refresh_token) == "string" and t.refresh_token
                    or (a.token and a.token.refresh_token) or nil,
    scope = type(t.scope) == "string" and t.scope or concat(asked or {}, " "),
    expires_at = math.type(t.expires_in) and (wall() + math.floor(t.expires_in)) or nil,
    -- refreshed this many seconds before it expires: a minute, or half a shorter life
    margin = math.type(t.expires_in) and math.min(60, math.floor(t.expires_in) // 2) or nil,
    resource = a.resource,
  }
  a.token = e
  a.gen = a.gen + 1
  local ok, err = a.store:save(a.key, e)
  if not ok and a.warn then a.warn("the token store failed to save: " .. tostring(err)) end
end

local function refresh(a)
  local t = a.token
  if not (t and t.refresh_token and a.endpoints and a.client) then return nil end
  local params = { { "grant_type", "refresh_token" }, { "refresh_token", t.refresh_token },
                   { "resource", a.resource } }
  local basic = client_auth(a, params)
  local r = token_request(a, "refresh", params, basic)
  if not r then return nil end
  keep(a, r, scope_list(t.scope))
  return true
end

-- The scopes to ask for: configured, else the challenge's, else the resource's
-- scopes_supported; offline_access added where the authorization server offers it. nil,
-- message when they are more than MAX_SCOPES.
local function choose_scopes(a, challenge, extra)
  local s, from
  if a.opts.scopes then s, from = scope_list(a.opts.scopes), "auth.scopes"
  elseif challenge.scope then s, from = scope_list(challenge.scope), "the WWW-Authenticate challenge's scope"
  elseif a.prm and type(a.prm.scopes_supported) == "table" then
    s, from = scope_list(a.prm.scopes_supported), "the protected resource metadata's scopes_supported"
  else s = {} end
  if extra then s, from = union(extra, s), from and (from .. " with the scopes held") or "the scopes held" end
  if #s > MAX_SCOPES then
    return nil, format("%s names %d scopes, more than %d: refused", from, #s, MAX_SCOPES)
  end
  local as_scopes = a.meta.scopes_supported
  if type(as_scopes) == "table" and has(as_scopes, "offline_access") and #s > 0
     and a.grant == "authorization_code" then
    s = union(s, { "offline_access" })
  end
  return s
end

local function code_grant(a, scopes)
  if type(a.endpoints.authorize) ~= "string" then
    return fail("authorize", "the authorization server has no authorization endpoint")
  end
  local methods = a.meta.code_challenge_methods_supported
  if a.meta.token_endpoint and type(methods) == "table" and not has(methods, "S256") then
    return fail("authorize", "the authorization server does not support PKCE S256")
  end
  local verifier = b64url_random(32)
  local challenge = A.base64(A.sha256(verifier), true)
  local state = b64url_random(16)
  local sc = #scopes > 0 and concat(scopes, " ") or nil
  local ep = a.endpoints.authorize
  local url = ep .. (ep:find("?", 1, true) and "&" or "?") .. form {
    { "response_type", "code" }, { "client_id", a.client.client_id },
    { "redirect_uri", a.redirect_uri }, { "code_challenge", challenge },
    { "code_challenge_method", "S256" }, { "state", state }, { "scope", sc },
    { "resource", a.resource },
  }
  local authorize = a.opts.authorize or A.default_authorize
  local ok, code, got_state, kind = pcall(authorize, url, { redirect_uri = a.redirect_uri,
                                                            state = state, listener = a.listener })
  if not ok then
    if type(code) == "table" and code.kind == "cancelled" then error(code, 0) end  -- aborted
    return fail("authorize", "authorize raised: " .. tostring(code))
  end
  if type(code) ~= "string" or code == "" then
    -- nil, message[, kind]: a kind baton knows is kept (the listener failed: "resource", ...)
    return fail("authorize", "authorize: no authorization code: " .. tostring(got_state), nil,
                KINDS[kind] and kind or nil)
  end
  if type(got_state) == "string" and got_state ~= state then
    return fail("authorize", "authorize: the state in the redirect does not match")
  end
  local params = { { "grant_type", "authorization_code" }, { "code", code },
                   { "code_verifier", verifier }, { "redirect_uri", a.redirect_uri },
                   { "resource", a.resource } }
  local basic = client_auth(a, params)
  local t, e, k, d = token_request(a, "token", params, basic)
  if not t then return nil, e, k, d end
  keep(a, t, scopes)
  return true
end

-- signer(alg, pem, input) -> the JWS signature bytes | nil, message. ES256 only
-- (baton.mcp.es256, pure Lua).
function A.signer(alg, pem, input)
  if alg ~= "ES256" then return nil, "signing algorithm " .. tostring(alg) .. " is not supported (ES256 is)" end
  return require("baton.mcp.es256").sign(pem, input)
end

-- A JWT signed with the client's private key (private_key_jwt, RFC 7523 §2.2).
local function client_assertion(a)
  local alg = a.opts.signing_alg or "ES256"
  local signer = A.signer
  local now = wall()
  local header = A.base64(json.encode { alg = alg, typ = "JWT" }, true)
  local claims = A.base64(json.encode {
    iss = a.opts.client_id, sub = a.opts.client_id, aud = a.issuer, iat = now,
    exp = now + 300, jti = b64url_random(16),
  }, true)
  local input = header .. "." .. claims
  local sig, e = signer(alg, a.opts.private_key, input)
  if not sig then return nil, "private_key_jwt: " .. tostring(e) end
  return input .. "." .. A.base64(sig, true)
end

local function credentials_grant(a, scopes)
  local params = { { "grant_type", "client_credentials" },
                   { "scope", #scopes > 0 and concat(scopes, " ") or nil },
                   { "resource", a.resource } }
  local basic
  if a.opts.private_key then
    local jwt, e = client_assertion(a)
    if not jwt then return fail("token", e) end
    params[#params + 1] = { "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" }
    params[#params + 1] = { "client_assertion", jwt }
  else
    a.client = { client_id = a.opts.client_id, client_secret = a.opts.client_secret,
                 method = a.opts.token_endpoint_auth_method or pick_method(a, true) }
    basic = client_auth(a, params)
  end
  local t, e, k, d = token_request(a, "token", params, basic)
  if not t then return nil, e, k, d end
  keep(a, t, scopes)
  return true
end

-- Enterprise-managed authorization (SEP-990): the IdP's ID token exchanged at the IdP for an
-- ID-JAG (RFC 8693), which the authorization server takes as a jwt-bearer grant (RFC 7523).
local function jwt_bearer_grant(a, scopes)
  local o = a.opts
  local r, e, k = baton.http.request {
    url = o.idp_token_endpoint, method = "POST", timeout_ms = AUTH_MS, max_body_bytes = MAX_DOC,
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded", Accept = "application/json" },
    body = form {
      { "grant_type", "urn:ietf:params:oauth:grant-type:token-exchange" },
      { "requested_token_type", "urn:ietf:params:oauth:token-type:id-jag" },
      { "audience", a.issuer }, { "resource", a.resource or a.url },
      { "scope", #scopes > 0 and concat(scopes, " ") or nil },
      { "subject_token", o.id_token },
      { "subject_token_type", "urn:ietf:params:oauth:token-type:id_token" },
      { "client_id", o.idp_client_id },
    },
  }
  if not r then return nil, "token exchange: " .. tostring(e), k end
  local t = json.decode(r.body)
  if r.status ~= 200 or type(t) ~= "table" or type(t.access_token) ~= "string" then
    return fail("token_exchange", format("token exchange: the identity provider refused (HTTP %d)",
                                         r.status), r)
  end
  a.client = { client_id = o.client_id, client_secret = o.client_secret,
               method = o.token_endpoint_auth_method or pick_method(a, o.client_secret ~= nil) }
  local params = { { "grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer" },
                   { "assertion", t.access_token },
                   { "scope", #scopes > 0 and concat(scopes, " ") or nil } }
  local basic = client_auth(a, params)
  local tt, e2, k2, d2 = token_request(a, "token", params, basic)
  if not tt then return nil, e2, k2, d2 end
  keep(a, tt, scopes)
  return true
end

-- ---- the transport's side ------------------------------------------------------------------

-- Checks and keeps the connect option `auth` (already checked for shape by the caller).
function A.new(st, opts, warn)
  local a = {
    opts = opts, url = st.url, key = st.url, gen = 0, warn = warn,
    store = opts.token_store or A.memory_store(),
    redirect_uri = opts.redirect_uri or "http://127.0.0.1/callback",
    grant = opts.grant or "authorization_code",
    lock = baton.semaphore(1),
  }
  local saved = a.store:load(a.key)
  if type(saved) == "table" and type(saved.access_token) == "string" then a.token = saved end
  return a
end

-- The Authorization header's value for the next request (refreshing a token about to
-- expire first) | nil; and the generation it belongs to.
function A.header(a)
  local t = a.token
  if not t then return nil, a.gen end
  if t.expires_at and t.expires_at - wall() <= (t.margin or 60) and t.refresh_token then
    do
      local _ <close> = a.lock:acquire()
      if a.token == t then refresh(a) end
    end
    t = a.token
    if not t then return nil, a.gen end
  end
  return "Bearer " .. t.access_token, a.gen
end

-- The Authorization header's value now, without waiting (close()'s DELETE) | nil.
function A.current(a)
  return a.token and ("Bearer " .. a.token.access_token) or nil
end

-- With the default authorize: a loopback listener for the redirect. A configured
-- auth.redirect_uri of the form http://127.0.0.1[:PORT]/... or http://localhost[:PORT]/...
-- (scheme and host in any case) is listened for on 127.0.0.1:PORT (80 without a port) and
-- sent exactly as written — authorization servers compare it byte for byte —; without one,
-- the listener takes any free port and a.redirect_uri names it. Another redirect_uri: no
-- listener (nil). A loopback one that cannot be listened on (the port taken, no descriptor
-- left): nil, message, kind — the redirect would go to whoever holds the port, or nowhere.
local function open_listener(a)
  local uri = a.opts.redirect_uri
  if not uri then
    local l, e, k = baton.http._loopback(0)
    if not l then return nil, e, k end
    a.redirect_uri = format("http://127.0.0.1:%d/callback", l:port())
    return l
  end
  local host, colon, p = uri:match("^[Hh][Tt][Tt][Pp]://([^/:?#]+)(:?)(%d*)[/?#]")
  if not host then host, colon, p = uri:match("^[Hh][Tt][Tt][Pp]://([^/:?#]+)(:?)(%d*)$") end
  host = host and host:lower()
  if host ~= "127.0.0.1" and host ~= "localhost" then return nil end
  local port = colon == "" and 80 or tonumber(p)
  if not port or port > 65535 then return nil end
  local l, e, k = baton.http._loopback(port)
  if not l then
    return nil, format("cannot listen for the redirect to %s: %s", uri, tostring(e)), k
  end
  if port == 0 then  -- ":0": any free port, named in the redirect_uri sent
    local at = #"http://" + #host + 1
    a.redirect_uri = sub(uri, 1, at) .. l:port() .. sub(uri, at + 1 + #p)
  end
  return l
end

-- Runs the grant for scopes `extra` (a step-up) or the challenge's: true | nil, msg, kind, d.
local function authorize_flow(st, a, challenge, extra)
  local ok, e, k, d = discover(st, a, challenge)
  if not ok then return nil, e, k, d end
  local scopes, serr = choose_scopes(a, challenge, extra)
  if not scopes then return fail("scope", serr) end
  a.asked = scopes
  if a.grant == "client_credentials" then return credentials_grant(a, scopes) end
  if a.grant == "jwt_bearer" then return jwt_bearer_grant(a, scopes) end
  local listener, le, lk
  if not a.opts.authorize then listener, le, lk = open_listener(a) end
  if le then return fail("authorize", le, nil, lk) end
  local _ <close> = listener
  a.listener = listener
  ok, e, k, d = identify(a)
  if ok then ok, e, k, d = code_grant(a, scopes) end
  a.listener = nil
  return ok, e, k, d
end

A.MAX_STEP_UP = 2

-- The server refused a request sent with generation `gen`'s token (status 401 or 403,
-- response headers h). try: this request's count of earlier refusals. true (retry the
-- request) | nil, message, kind, detail.
function A.refused(st, a, status, h, gen, try)
  local challenge = A.parse_challenge(h["www-authenticate"])
  local _ <close> = a.lock:acquire()
  if a.gen ~= gen and a.token then return true end  -- another request got a new token
  if status == 403 then
    if challenge.error ~= "insufficient_scope" or try > A.MAX_STEP_UP then return nil end
    local required = scope_list(challenge.scope)
    return authorize_flow(st, a, challenge, union(a.asked or scope_list(a.token and a.token.scope), required))
  end
  if try > 1 then return nil end
  if a.token and a.token.refresh_token then
    -- a token from the store (another process, an earlier run) may only need refreshing:
    -- the endpoints and the client identity first, as a grant would find them
    local ok = discover(st, a, challenge)
    if ok and (a.grant ~= "authorization_code" or identify(a)) and refresh(a) then return true end
  end
  a.token = nil
  return authorize_flow(st, a, challenge, nil)
end

-- The default authorize: the person opens the URL in a browser and consents; the browser
-- is sent back to the loopback listener (info.listener, baton.http._loopback, RFC 8252
-- §7.3), which hands over the code. The person may instead paste the address the browser
-- was sent to (or just the code) on the terminal, read by `head -n 1 /dev/tty` in a child
-- (for a browser on another machine). Both are polled between baton.sleep()s, so the wait
-- ends with the request's deadline or an abort like any other (the child is released).
-- Neither a listener nor a terminal: nil, message at once; the listener failing: nil,
-- message, its kind ("resource": out of descriptors) at once.
function A.default_authorize(url, info)
  local listener = info and info.listener
  io.stderr:write("baton.mcp: to authorize, open this URL and consent",
                  listener and (" (the browser comes back to " .. info.redirect_uri .. ")") or "",
                  "; or paste here the address you are sent to (or the code):\n  ", url, "\n> ")
  io.stderr:flush()
  local pasted, tty_done
  local reader = baton.spawn(function()
    local p <close> = baton.process.spawn { "head", "-n", "1", "/dev/tty", process_group = false }
    pasted = p and p:read_line() or nil
    tty_done = true
  end)
  local _ <close> = setmetatable({}, { __close = function() reader:abort() end })
  while true do
    if listener then
      -- only the redirect carrying this flow's state: a request without it or with another
      -- (a page or a local process forging the redirect, CSRF) is answered 400 and ignored
      local target, pe, pk = listener:poll(info.state)
      if target then
        local code, err = A.query_param(target, "code"), A.query_param(target, "error")
        if code then return code, A.query_param(target, "state") end
        if err then
          -- the server's words, through the browser: cut, control characters as '?'
          local desc = A.query_param(target, "error_description")
          return nil, "the authorization server answered: " .. words(err, 200)
                      .. (desc and (": " .. words(desc, 300)) or "")
        end
      elseif pe then  -- the listener itself failed (out of descriptors, ...): no redirect can come
        return nil, format("the loopback listener for the redirect to %s failed: %s",
                           info.redirect_uri, tostring(pe)), pk
      end
    end
    if pasted then
      local code = A.query_param(pasted, "code") or pasted:match("^%s*([^%s?&=]+)%s*$")
      return code, A.query_param(pasted, "state")
    end
    if tty_done and not listener then
      return nil, "no terminal to read the authorization code from: give auth.authorize"
    end
    baton.sleep(50)
  end
end

return A
