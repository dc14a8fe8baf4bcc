-- baton.mcp's authorization (lua/baton/mcp/auth.lua) against a real local OAuth-guarded MCP
-- server (spec/fixtures/mcp/fake_oauth_server.py: the protected resource and its
-- authorization server in one process): discovery, registration, authorization code +
-- PKCE, token stores (memory, a 0600 file), refresh before expiry, step-up on 403, the
-- client-credentials grant, "auth" failures that carry the facts and never a token. The
-- official conformance suite (spec/mcp_conformance/run.sh) covers the variants of the
-- specification; this covers what a caller relies on.
local baton = require "baton"
local H = require "spec.helper"
local mcp = require "baton.mcp"

local _, fake_it = H.mcp.gates("mcp_auth_spec")
local FAKE_OAUTH = H.mcp.FIX .. "/fake_oauth_server.py"

-- Runs fn(url, base, authorize, stats) against a fresh fixture server (extra: its argv).
local function with_oauth(extra, fn)
  if fn == nil then extra, fn = {}, extra end
  return H.async(function()
    local argv = { "python3", FAKE_OAUTH }
    for _, a in ipairs(extra) do argv[#argv + 1] = a end
    local proc = assert(baton.process.spawn(argv))
    local port = assert(proc:read_line(10000))
    local base = "http://127.0.0.1:" .. port
    local visits = 0
    -- The person: opens the URL, consents; the code comes back in the redirect.
    local function authorize(url)
      visits = visits + 1
      local r = assert(baton.http.request { url = url, timeout_ms = 5000 })
      local loc = assert(r.headers.location, "no redirect")
      return loc:match("[?&]code=([^&]*)"), loc:match("[?&]state=([^&]*)")
    end
    local function stats()
      return assert(baton.http.json { url = base .. "/stats", method = "GET" }).body
    end
    local ok, err = pcall(fn, base .. "/mcp", base, authorize, stats, function() return visits end)
    proc:close(0)
    assert(ok, err)
  end)
end

local function mode_of(path)
  local r = assert(baton.process.run { "stat", "-c", "%a", path })
  return (r.stdout:gsub("%s+$", ""))
end

describe("baton.mcp authorization", function()
  fake_it("401 -> metadata -> registration -> code + PKCE -> token; the token is then sent "
          .. "with every request and costs no round trip", with_oauth(function(url, _, authorize, stats, visits)
    local c = assert(mcp.connect { url = url, auth = { authorize = authorize } })
    assert.equal("fake-oauth", c.server_info.name)
    assert.equal(1, visits())
    local s = stats()
    assert.equal(1, s.register)
    assert.equal(1, s.grants.authorization_code)
    assert.equal(1, s.unauthorized)        -- only the first initialize went without a token
    assert.same({ "mcp:read offline_access" }, s.scopes)  -- the challenge's, and a refresh token
    for _ = 1, 5 do assert(c:call("whoami")) end
    s = stats()
    assert.equal(1, s.unauthorized)
    assert.equal(1, s.grants.authorization_code)
    assert.equal(7, s.mcp)                 -- initialize, initialized, 5 calls: nothing more
    c:close()
  end))

  fake_it("a file token store: mode 0600, reused by the next client (no new grant), no "
          .. "token in a warning or a failure", with_oauth(function(url, _, authorize, stats, visits)
    local dir = H.temp_dir()
    local path = dir .. "/tokens.json"
    local warnings = {}
    local opts = { url = url, on_warning = function(m) warnings[#warnings + 1] = m end,
                   auth = { authorize = authorize, token_store = mcp.file_token_store(path) } }
    local c = assert(mcp.connect(opts))
    assert(c:call("whoami"))
    c:close()
    assert.equal("600", mode_of(path))
    local saved = baton.json.decode(H.slurp(path))
    local entry = saved[url]
    assert.matches("^at%-", entry.access_token)
    assert.matches("^rt%-", entry.refresh_token)

    local c2 = assert(mcp.connect(opts))
    assert(c2:call("whoami"))
    assert.equal(1, visits())                         -- the stored token was enough
    assert.equal(1, stats().grants.authorization_code)
    -- a failure with the token in hand: the step-up the 403 asks for is refused by the person
    local refused = { url = url, on_warning = opts.on_warning,
                      auth = { authorize = function() return nil, "the person said no" end,
                               token_store = opts.auth.token_store } }
    local c3 = assert(mcp.connect(refused))           -- the stored token, no authorization
    local r, msg, kind, detail = c3:call("admin", nil, { timeout_ms = 5000 })
    assert.is_nil(r)
    assert.equal("auth", kind)
    c3:close()
    local seen = { msg }
    local function walk(v)
      if type(v) == "table" then
        for k, x in pairs(v) do walk(k) walk(x) end
      elseif type(v) == "string" then
        seen[#seen + 1] = v
      end
    end
    walk(detail)
    assert.is_true(#seen > 1, "the failure carries its facts")
    for _, text in ipairs(seen) do
      assert.is_nil(text:find(entry.access_token, 1, true), "a token in the failure: " .. text)
      assert.is_nil(text:find(entry.refresh_token, 1, true), "a token in the failure: " .. text)
    end
    assert.truthy(c2:call("admin", nil, { timeout_ms = 5000 }))  -- step-up: mcp:admin granted
    c2:close()
    for _, text in ipairs(warnings) do
      assert.is_nil(text:find(entry.access_token, 1, true), "a token in a warning: " .. text)
    end
    H.remove_dir(dir)
  end))

  fake_it("refreshes a token about to expire before using it (no 401 first)",
    with_oauth({ "--expires", "4" }, function(url, _, authorize, stats)
      local c = assert(mcp.connect { url = url, auth = { authorize = authorize } })
      -- 2.5 s into a 4 s token: still valid (the server would take it), but inside the
      -- margin (half its life, at most 60 s): refreshed before it is sent
      baton.sleep(2500)
      assert(c:call("whoami"))
      local s = stats()
      assert.is_true((s.grants.refresh_token or 0) >= 1)
      assert.equal(1, s.grants.authorization_code)
      assert.equal(1, s.unauthorized)   -- never a request with a stale token
      c:close()
    end))

  fake_it("a stored token that expired meanwhile: the next client refreshes it on the 401, "
          .. "nobody authorizes again", with_oauth({ "--expires", "2" }, function(url, _, authorize, stats, visits)
      local dir = H.temp_dir()
      local opts = { url = url, auth = { authorize = authorize,
                                         token_store = mcp.file_token_store(dir .. "/t.json") } }
      local c = assert(mcp.connect(opts))
      c:close()
      baton.sleep(2500)
      c = assert(mcp.connect(opts))   -- a new client: the store is all it knows
      assert(c:call("whoami"))
      assert.equal(1, visits())
      assert.is_true(stats().grants.refresh_token >= 1)
      c:close()
      H.remove_dir(dir)
    end))

  fake_it("403 insufficient_scope: step-up to the union of the scopes, once per call",
    with_oauth(function(url, _, authorize, stats, visits)
      local c = assert(mcp.connect { url = url, auth = { authorize = authorize } })
      local r = assert(c:call("admin"))
      assert.matches("mcp:admin", mcp.text(r))
      assert.equal(2, visits())
      local scopes = stats().scopes
      local asked = {}
      for w in scopes[#scopes]:gmatch("%S+") do asked[w] = true end
      assert.same({ ["mcp:read"] = true, ["mcp:admin"] = true, offline_access = true }, asked)
      assert(c:call("admin"))
      assert.equal(2, visits())
      c:close()
    end))

  fake_it("without auth, a 401 is kind 'auth' with the facts { status, headers, body }; "
          .. "set_headers lets a caller bring its own token", with_oauth(function(url, base)
    local msg, kind, detail = H.assert_failure("baton.mcp.connect", "auth", mcp.connect { url = url })
    assert.equal("auth", kind)
    assert.equal(401, detail.status)
    assert.matches("resource_metadata", detail.headers["www-authenticate"])
    assert.matches("invalid_token", detail.body)
    assert.matches("HTTP 401", msg)
    -- a token got elsewhere (client credentials here), then handed over by hand
    local reg = assert(baton.http.json { url = base .. "/register", method = "POST",
                                         body = { client_name = "x" } }).body
    local tok = assert(baton.http.request {
      url = base .. "/token", method = "POST",
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
      body = ("grant_type=client_credentials&client_id=%s&client_secret=%s&scope=mcp:read")
             :format(reg.client_id, reg.client_secret) })
    local at = baton.json.decode(tok.body).access_token
    local c = assert(mcp.connect { url = url, headers = { Authorization = "Bearer " .. at } })
    c:set_headers { Authorization = "Bearer nope" }
    local _, m2, k2, d2 = c:call("whoami")
    assert.equal("auth", k2)
    assert.equal(401, d2.status)
    assert.is_nil(m2:find(at, 1, true))
    c:set_headers { Authorization = "Bearer " .. at }
    assert(c:call("whoami"))
    c:close()
  end))

  fake_it("client credentials: a machine client gets its token without a person",
    with_oauth(function(url, base, _, stats)
      local reg = assert(baton.http.json { url = base .. "/register", method = "POST",
                                         body = { client_name = "m" } }).body
      local c = assert(mcp.connect { url = url, auth = {
        grant = "client_credentials", client_id = reg.client_id, client_secret = reg.client_secret,
        scopes = { "mcp:read" } } })
      assert(c:call("whoami"))
      assert.equal(1, stats().grants.client_credentials)
      c:close()
    end))

  fake_it("a refused grant is kind 'auth' naming the stage; the secret is not in it",
    with_oauth(function(url)
      local msg, _, detail = H.assert_failure("baton.mcp.connect", "auth", mcp.connect {
        url = url, timeout_ms = 10000, auth = {
          grant = "client_credentials", client_id = "who", client_secret = "s3cret-value" } })
      assert.matches("token endpoint refused: invalid_client", msg)
      assert.equal("token", detail.stage)
      assert.is_nil(msg:find("s3cret", 1, true))
    end))

  -- A program that connects with every default (auth = true) and says how it went.
  local DEFAULTS_CLIENT = [[
local mcp = require "baton.mcp"
local c, e, k = mcp.connect { url = arg[1], auth = arg[2] and { redirect_uri = arg[2] } or true,
                              timeout_ms = 10000 }
print("RESULT", c and mcp.text(assert(c:call("whoami"))) or e, k)
if c then c:close() end
]]

  fake_it("the default authorize: or the person pastes the redirect on the terminal",
    with_oauth(function(url)
      if not H.have("script") then return pending("script (util-linux) is missing") end
      local prog = H.write_temp(DEFAULTS_CLIENT)
      local exe = H.EXE:sub(1, 1) == "/" and H.EXE or (H.SRC .. "/" .. H.EXE)
      -- script(1) gives the program a terminal; the test is the person at it
      local p <close> = assert(baton.process.spawn {
        "script", "-qfec", H.q(exe) .. " " .. H.q(prog) .. " " .. H.q(url), "/dev/null", stdin = true })
      local result, saw_url
      for _ = 1, 20 do
        local line = p:read_line(10000)
        if not line then break end
        local auth_url = line:match("(http://%S+/authorize%?%S+)")
        if auth_url then
          saw_url = true
          local r = assert(baton.http.request { url = auth_url })
          assert(p:write(r.headers.location .. "\n"))
        end
        result = line:match("RESULT\t([^\r]*)")  -- a terminal ends lines with CR LF
        if result then break end
      end
      os.remove(prog)
      assert.is_true(saw_url)
      assert.equal("whoami with mcp:read offline_access\tnil", result)
    end))

  fake_it("the default authorize: the browser comes back to a loopback listener with the code",
    with_oauth(function(url)
      local prog = H.write_temp(DEFAULTS_CLIENT)
      local exe = H.EXE:sub(1, 1) == "/" and H.EXE or (H.SRC .. "/" .. H.EXE)
      local p <close> = assert(baton.process.spawn { exe, prog, url })   -- no terminal
      local auth_url
      for _ = 1, 100 do
        auth_url = p:stderr():match("(http://%S+/authorize%?%S+)")
        if auth_url then break end
        baton.sleep(50)
      end
      assert.truthy(auth_url, "no URL on stderr: " .. p:stderr())
      local redirect = auth_url:match("redirect_uri=([^&]+)")
      assert.matches("^http%%3A%%2F%%2F127%.0%.0%.1%%3A%d+%%2Fcallback$", redirect)
      -- the browser: the authorization server's redirect, then the loopback page
      local r = assert(baton.http.request { url = auth_url })
      assert.equal(302, r.status)
      local back = assert(baton.http.request { url = r.headers.location, timeout_ms = 5000 })
      assert.equal(200, back.status)
      assert.matches("You may close this window", back.body)
      local line = assert(p:read_line(10000))
      os.remove(prog)
      assert.equal("RESULT\twhoami with mcp:read offline_access\tnil", line)
    end))

  -- Runs DEFAULTS_CLIENT (no terminal) against url with auth.redirect_uri `redirect`; once
  -- it has printed the authorization URL, browser(auth_url) plays the browser. Its RESULT line.
  local function run_defaults(url, redirect, browser)
    local prog = H.write_temp(DEFAULTS_CLIENT)
    local exe = H.EXE:sub(1, 1) == "/" and H.EXE or (H.SRC .. "/" .. H.EXE)
    local p <close> = assert(baton.process.spawn { exe, prog, url, redirect })
    local auth_url
    for _ = 1, 200 do
      auth_url = p:stderr():match("(http://%S+/authorize%?%S+)")
      if auth_url then break end
      baton.sleep(50)
    end
    assert.truthy(auth_url, "no URL on stderr: " .. p:stderr())
    browser(auth_url)
    local line = p:read_line(10000)
    os.remove(prog)
    return line
  end

  -- A port free a moment ago (for a configured redirect_uri).
  local function free_port()
    local l <close> = assert(baton.http._loopback(0))
    return l:port()
  end

  -- The browser: the authorization server's redirect, then the loopback page.
  local function browse(auth_url)
    local r = assert(baton.http.request { url = auth_url })
    assert.equal(302, r.status)
    local back = assert(baton.http.request { url = r.headers.location, timeout_ms = 5000 })
    assert.equal(200, back.status)
  end

  fake_it("the default authorize: a configured loopback redirect_uri is sent exactly as written "
          .. "(localhost, a query, upper case) and listened on at its port",
    with_oauth(function(url, _, _, stats)
      for i, form in ipairs { "http://localhost:%d/cb", "http://127.0.0.1:%d/cb?tenant=a",
                              "HTTP://LOCALHOST:%d/cb" } do
        local redirect = form:format(free_port())
        local line = run_defaults(url, redirect, browse)
        assert.equal("RESULT\twhoami with mcp:read offline_access\tnil", line)
        -- the authorization request and the token request (checked by the server) both
        -- carried it byte for byte
        assert.equal(redirect, stats().redirect_uris[i])
      end
    end))

  fake_it("the default authorize: a loopback redirect_uri whose port another process holds "
          .. "fails at once naming the address and the bind error (kind io)",
    with_oauth(function(url)
      local squatter <close> = assert(baton.http._loopback(0))
      local redirect = ("http://127.0.0.1:%d/callback"):format(squatter:port())
      local prog = H.write_temp(DEFAULTS_CLIENT)
      local exe = H.EXE:sub(1, 1) == "/" and H.EXE or (H.SRC .. "/" .. H.EXE)
      local t0 = baton.now()
      local r = assert(baton.process.run { exe, prog, url, redirect, timeout_ms = 20000 })
      os.remove(prog)
      assert.is_true(baton.now() - t0 < 8000)
      assert.is_nil(r.stderr:find("open this URL"))  -- nothing would come back: no URL to open
      local line = r.stdout:match("[^\n]*")
      assert.equal("RESULT\tbaton.mcp.connect: initialize failed: POST initialize: cannot listen for "
                   .. "the redirect to " .. redirect .. ": baton.http._loopback: cannot listen on "
                   .. "127.0.0.1:" .. squatter:port() .. ": Address already in use\tio", line)
      assert.is_nil(squatter:poll())
    end))

  fake_it("the default authorize: a redirect carrying error= and error_description= fails "
          .. "with them cut and their control characters shown as '?'",
    with_oauth(function(url)
      local line = run_defaults(url, "http://127.0.0.1:" .. free_port() .. "/callback", function(auth_url)
        local a = require "baton.mcp.auth"
        local back = a.query_param(auth_url, "redirect_uri") .. "?state=" .. a.query_param(auth_url, "state")
                     .. "&error=%1b%5d0%3bpwned%07%1b%5b2J" .. ("A"):rep(5000)
                     .. "&error_description=x%0d%0ay" .. ("z"):rep(5000)
        assert.equal(200, assert(baton.http.request { url = back, timeout_ms = 5000 }).status)
      end)
      local msg = assert(line):match("^RESULT\t(.*)\tauth$")
      assert.truthy(msg, line)
      assert.is_nil(msg:find("[%c\127]"))
      assert.matches("the authorization server answered: %?%]0;pwned%?%?%[2JA+: x%?%?yz+$", msg)
      assert.is_true(#msg < 700, #msg)
    end))

  fake_it("the default authorize: a failure of the loopback listener (out of descriptors) is the "
          .. "flow's failure at once, with its kind, naming the listener",
    with_oauth(function(url)
      local auth = require "baton.mcp.auth"
      local polls = 0
      local broken = { poll = function()
        polls = polls + 1
        return nil, "baton.http._loopback:poll: accept on 127.0.0.1:1: Too many open files", "resource"
      end }
      local t0 = baton.now()
      local msg, kind, detail = H.assert_failure("baton.mcp.connect", "resource", mcp.connect {
        url = url, timeout_ms = 10000, auth = { authorize = function(u, info)
          return auth.default_authorize(u, { redirect_uri = info.redirect_uri, state = info.state,
                                             listener = broken })
        end } })
      assert.equal("resource", kind)
      assert.equal("authorize", detail.stage)
      assert.matches("the loopback listener for the redirect to http://127%.0%.0%.1/callback failed: "
                     .. "baton.http._loopback:poll: accept on 127.0.0.1:1: Too many open files", msg)
      assert.equal(1, polls)
      assert.is_true(baton.now() - t0 < 8000)
    end))

  fake_it("the default authorize with neither a loopback redirect nor a terminal: 'auth' at once",
    with_oauth(function(url)
      local prog = H.write_temp(DEFAULTS_CLIENT)
      local exe = H.EXE:sub(1, 1) == "/" and H.EXE or (H.SRC .. "/" .. H.EXE)
      local t0 = baton.now()
      local r = assert(baton.process.run { exe, prog, url, "https://app.example/callback",
                                           timeout_ms = 20000 })  -- setsid: no tty
      os.remove(prog)
      assert.is_true(baton.now() - t0 < 8000)
      assert.matches("RESULT\t.*no terminal to read the authorization code from.*\tauth", r.stdout)
      assert.matches("open this URL", r.stderr)
      assert.matches("/authorize%?response_type=code", r.stderr)
    end))

  it("private_key_jwt's ES256 signatures verify with OpenSSL", H.async(function()
    if not H.have("openssl") then return pending("openssl is missing") end
    local es256 = require "baton.mcp.es256"
    local dir = H.temp_dir()
    local g = assert(baton.process.run { "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                                         "ec_paramgen_curve:P-256", "-out", dir .. "/k.pem" })
    assert.equal(0, g.code)
    assert(baton.process.run { "openssl", "pkey", "-in", dir .. "/k.pem", "-pubout",
                               "-out", dir .. "/pub.pem" })
    local pem = H.slurp(dir .. "/k.pem")
    local function der_int(b)
      b = b:gsub("^%z+", "")
      if b:byte(1) >= 0x80 then b = "\0" .. b end
      return "\2" .. string.char(#b) .. b
    end
    for i = 1, 3 do
      local msg = "header.claims" .. i
      local sig = assert(es256.sign(pem, msg))
      assert.equal(64, #sig)
      local body = der_int(sig:sub(1, 32)) .. der_int(sig:sub(33))
      H.write_file(dir .. "/sig", "\48" .. string.char(#body) .. body)
      H.write_file(dir .. "/msg", msg)
      local r = assert(baton.process.run { "openssl", "dgst", "-sha256", "-verify", dir .. "/pub.pem",
                                           "-signature", dir .. "/sig", dir .. "/msg" })
      assert.equal(0, r.code, r.stdout .. r.stderr)
      -- and a signature of another message does not verify
      H.write_file(dir .. "/msg", msg .. "x")
      r = assert(baton.process.run { "openssl", "dgst", "-sha256", "-verify", dir .. "/pub.pem",
                                     "-signature", dir .. "/sig", dir .. "/msg" })
      assert.are_not.equal(0, r.code)
    end
    assert.same({ nil, "not a PEM private key" }, { es256.sign("nope", "x") })
    H.remove_dir(dir)
  end))

  it("misuse: auth options are checked", function()
    H.raises("baton.mcp.connect: bad argument #1 'auth.nope' %(unknown option%)", mcp.connect,
             { url = "http://x/mcp", auth = { nope = 1 } })
    H.raises("baton.http._loopback: bad argument #1 'port' %(expected an integer 0..65535",
             baton.http._loopback, 70000)
    H.raises("'auth.authorize' %(expected function, got 1%)", mcp.connect,
             { url = "http://x/mcp", auth = { authorize = 1 } })
    H.raises("'auth' %(expected nil with command", mcp.connect,
             { command = { "x" }, auth = {} })
    H.raises("'auth.client_id' %(expected string %(the client_credentials grant needs it%)",
             mcp.connect, { url = "http://x/mcp", auth = { grant = "client_credentials" } })
  end)
end)
