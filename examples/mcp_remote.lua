-- mcp_remote.lua — connecting to a remote MCP server that wants OAuth (the MCP authorization
-- specification), with a token store so that the person authorizes once.
--
--   build/baton examples/mcp_remote.lua                 (a local OAuth-guarded demo server)
--   build/baton examples/mcp_remote.lua https://host/mcp   (a real one: you authorize)
--
-- The first connect meets a 401: baton.mcp discovers the server's authorization server,
-- registers a client, and prints the authorization URL; the person opens it and consents,
-- and the browser brings the code back to a listener on 127.0.0.1. The token lands in a file token store
-- (mode 0600). The second connect finds it there and authorizes nobody; a call that needs
-- more scope (403 insufficient_scope) steps up with a new authorization.
--
-- Without a URL the server is spec/fixtures/mcp/fake_oauth_server.py (python3), whose
-- authorization endpoint consents at once, and the "person" follows its redirect.
local baton = require "baton"
local mcp = require "baton.mcp"

local url = arg[1]
local server
local dir = os.tmpname()
os.remove(dir)
assert(baton.process.run { "mkdir", "-m", "700", dir })
local store = mcp.file_token_store(dir .. "/tokens.json")
local asked = 0   -- authorizations by the demo's person (a real person's are not counted)

-- nil for a real server: baton.mcp's own, which prints the URL and waits for the browser
-- to come back to 127.0.0.1 (or for the person to paste the address it was sent to)
local authorize
if not url then
  server = assert(baton.process.spawn { "python3", "spec/fixtures/mcp/fake_oauth_server.py" })
  url = "http://127.0.0.1:" .. assert(server:read_line(10000)) .. "/mcp"
  -- The demo's person: opens the URL, the server consents, the code is in the redirect.
  authorize = function(auth_url)
    asked = asked + 1
    local r = assert(baton.http.request { url = auth_url, timeout_ms = 5000 })
    local loc = assert(r.headers.location, "no redirect")
    return loc:match("[?&]code=([^&]*)"), loc:match("[?&]state=([^&]*)")
  end
end

local function connect()
  return assert(mcp.connect {
    url = url, timeout_ms = 300000,   -- a person may take a while to authorize
    auth = { client_name = "baton mcp_remote example", authorize = authorize,
             token_store = store },
  })
end

local c = connect()
print(("connected to %s (protocol %s) after %d authorization(s)"):format(
  c.server_info.name, c.protocol_version, asked))
local tools = assert(c:list_tools())
for _, t in ipairs(tools) do print("  tool: " .. t.name) end
c:close()

local mode = assert(baton.process.run { "stat", "-c", "%a", dir .. "/tokens.json" }).stdout
print("token store mode: " .. mode:gsub("%s+$", ""))

local before = asked
local c2 = connect()
print(("second connect: %d new authorization(s): the token came from the store"):format(asked - before))
if server then
  print(mcp.text(assert(c2:call("whoami"))))
  print(mcp.text(assert(c2:call("admin"))) .. (" (step-up: %d authorization(s) in all)"):format(asked))
end
c2:close()

assert(baton.process.run { "rm", "-rf", dir })
if server then server:close(0) end
