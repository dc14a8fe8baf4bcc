-- client.lua — the MCP conformance suite's client under test (the npm package
-- @modelcontextprotocol/conformance, `conformance client --command ...`), written with
-- baton.mcp's documented API only: no protocol code of its own.
--
--   MCP_CONFORMANCE_SCENARIO=<name> [MCP_CONFORMANCE_CONTEXT=<json>] baton client.lua <url>
--
-- As the suite's reference client does, per scenario: connect (with the credentials the
-- context hands over, if any), list the tools, call the scenario's tool, close. An
-- authorization server's consent step is the one thing a person would do: `authorize`
-- follows the authorization URL without following its redirect and takes the code from
-- the Location it names, as the reference client does. Exit status 0 on success, 1 with
-- the failure on stderr.
local baton = require "baton"
local mcp = require "baton.mcp"

local url = arg[1]
local scenario = os.getenv("MCP_CONFORMANCE_SCENARIO")
if not url or not scenario then
  io.stderr:write("usage: MCP_CONFORMANCE_SCENARIO=<scenario> baton client.lua <server-url>\n")
  os.exit(2)
end
local ctx = {}
local raw = os.getenv("MCP_CONFORMANCE_CONTEXT")
if raw and raw ~= "" then ctx = assert(baton.json.decode(raw)) end

-- The person at the authorization server: open the URL, consent, hand back the code.
local function authorize(auth_url)
  local r, e, k = baton.http.request { url = auth_url, timeout_ms = 10000 }
  if not r then return nil, e, k end
  local loc = r.headers["location"]
  if not loc then return nil, ("no redirect from the authorization endpoint (HTTP %d)"):format(r.status) end
  local code = loc:match("[?&]code=([^&#]*)")
  if not code then return nil, "no code in the redirect: " .. loc end
  return (code:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local CALLBACK = "http://localhost:3000/callback"

local opts = { url = url, client_info = { name = "baton-conformance", version = mcp.VERSION } }
local tool, args = "test-tool", {}
if scenario == "initialize" then
  tool = nil
elseif scenario == "tools_call" then
  tool, args = "add_numbers", { a = 5, b = 3 }
elseif scenario == "sse-retry" then
  tool = "test_reconnection"
elseif scenario:find("^elicitation") then
  tool = "test_client_elicitation_defaults"
  opts.capabilities = { elicitation = {} }
elseif scenario == "auth/client-credentials-basic" then
  opts.auth = { grant = "client_credentials", client_id = ctx.client_id,
                client_secret = ctx.client_secret }
  tool = nil
elseif scenario == "auth/client-credentials-jwt" then
  opts.auth = { grant = "client_credentials", client_id = ctx.client_id,
                private_key = ctx.private_key_pem, signing_alg = ctx.signing_algorithm }
  tool = nil
elseif scenario == "auth/cross-app-access-complete-flow" then
  opts.auth = { grant = "jwt_bearer", client_id = ctx.client_id, client_secret = ctx.client_secret,
                id_token = ctx.idp_id_token, idp_client_id = ctx.idp_client_id,
                idp_token_endpoint = ctx.idp_token_endpoint }
elseif scenario == "auth/pre-registration" then
  opts.auth = { client_id = ctx.client_id, client_secret = ctx.client_secret,
                redirect_uri = CALLBACK, authorize = authorize }
  tool = nil
elseif scenario:find("^auth/") then
  opts.auth = { client_name = "test-auth-client", redirect_uri = CALLBACK,
                client_metadata_url = "https://conformance-test.local/client-metadata.json",
                authorize = authorize }
end

local function fail(what, e, k)
  io.stderr:write(("%s failed (%s): %s\n"):format(what, tostring(k), tostring(e)))
  os.exit(1)
end

local c, e, k = mcp.connect(opts)
if not c then fail("connect", e, k) end
if scenario:find("^elicitation") then
  c:handle("elicitation/create", function() return { action = "accept", content = {} } end)
end
local tools, le, lk = c:list_tools()
if not tools then fail("list_tools", le, lk) end
if tool then
  local r, ce, ck = c:call(tool, args, { timeout_ms = 20000 })
  if not r then fail("call " .. tool, ce, ck) end
  print(mcp.text(r))
end
c:close()
