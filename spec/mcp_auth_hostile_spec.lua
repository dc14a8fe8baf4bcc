-- baton.mcp's authorization against hostile peers: authorization servers that answer
-- broken or hostile metadata and token responses (the hostile modes of
-- spec/fixtures/mcp/fake_oauth_server.py), and local clients that attack the loopback
-- listener of the default authorize (spec/fixtures/mcp/hostile_loopback_client.py):
-- garbage, forged redirects (CSRF), a slowloris and a crowd of idle connections, an abort
-- while it waits. Each either fails as "auth" naming what was wrong, or works.
local baton = require "baton"
local H = require "spec.helper"
local mcp = require "baton.mcp"

local _, fake_it = H.mcp.gates("mcp_auth_hostile_spec")
local FAKE_OAUTH = H.mcp.FIX .. "/fake_oauth_server.py"

-- Runs fn(url, base, authorize, stats) against a fresh fixture server.
local function with_oauth(fn)
  return H.async(function()
    local proc = assert(baton.process.spawn { "python3", FAKE_OAUTH })
    local port = assert(proc:read_line(10000))
    local base = "http://127.0.0.1:" .. port
    -- The person: opens the URL, consents; the code comes back in the redirect.
    local function authorize(url)
      local r = assert(baton.http.request { url = url, timeout_ms = 5000 })
      local loc = assert(r.headers.location, "no redirect")
      return loc:match("[?&]code=([^&]*)"), loc:match("[?&]state=([^&]*)")
    end
    local function stats()
      return assert(baton.http.json { url = base .. "/stats", method = "GET" }).body
    end
    local ok, err = pcall(fn, base .. "/mcp", base, authorize, stats)
    proc:close(0)
    assert(ok, err)
  end)
end

describe("baton.mcp authorization against hostile peers", function()
  -- The fixture's hostile modes (POST /hostile): what a broken or hostile server answers,
  -- and what baton must make of it: an "auth" failure naming the stage, the document or
  -- field and what it held; or, where the answer is odd but usable, a working client.
  local REFUSED = {
    { "prm_junk", "metadata", "protected resource metadata at http://[^ ]+/mcp is not JSON" },
    { "prm_huge", "metadata", "protected resource metadata at http://[^ ]+ is larger than 1048576 bytes" },
    { "prm_array", "metadata", "is not a JSON object %(a list%)" },
    { "prm_servers_string", "metadata", "'authorization_servers' is the string 'http://127%.0%.0%.1:%d+', "
      .. "expected a list of absolute http%(s%) URLs" },
    { "prm_server_not_url", "metadata", "'authorization_servers' is a list, expected a list of absolute" },
    { "prm_scopes_string", "metadata", "'scopes_supported' is the string 'x', expected a list of strings" },
    { "as_junk", "metadata", "authorization server metadata at http://[^ ]+ is not JSON" },
    { "as_endpoint_5", "metadata", "'authorization_endpoint' is number 5, expected an absolute http%(s%) URL" },
    { "as_scopes_string", "metadata", "'scopes_supported' is the string 'x'" },
    { "as_http_remote", "metadata", "token_endpoint http://192%.0%.2%.1/token is not https: refused" },
    { "as_issuer_other", "metadata", "names issuer the string 'https://evil%.example', not http://127" },
    { "as_redirect_loop", "metadata", "no authorization server metadata for http://127%.0%.0%.1:%d+$" },
    { "prm_scopes_many", "scope", "the protected resource metadata's scopes_supported names 20000 "
      .. "scopes, more than 256: refused" },
    { "www_scopes_many", "scope", "the WWW%-Authenticate challenge's scope names 2000 scopes, more "
      .. "than 256: refused" },
    { "token_junk", "token", "answered HTTP 200 with a body that is not a JSON object" },
    { "token_no_at", "token", "answered HTTP 200 with no access_token" },
    { "token_crlf", "token", "an access_token with characters a header cannot carry" },
    { "token_type_mac", "token", "token_type the string 'mac', not Bearer" },
    { "token_exp_str", "token", "expires_in the string 'soon', not a number of seconds" },
    { "token_error_escape", "token", "refused: invalid_grant%?%[2J: x%?%?yz+$" },
  }
  local USABLE = { "token_exp_neg", "token_exp_huge", "token_exp_maxint", "www_unbalanced", "www_huge",
                   "www_bad_url", "prm_redirect_loop" }  -- (redirects are not followed: as none)

  fake_it("hostile authorization servers: broken metadata and token responses are 'auth' failures "
          .. "naming what was wrong; odd but usable answers work", with_oauth(function(url, base, authorize, stats)
    local function mode(m)
      assert(baton.http.json { url = base .. "/hostile", method = "POST", body = { mode = m } })
    end
    local wrong = {}
    for _, case in ipairs(REFUSED) do
      mode(case[1])
      local t0 = baton.now()
      local ok, c, msg, kind, detail = pcall(mcp.connect, { url = url, timeout_ms = 10000,
                                                           auth = { authorize = authorize } })
      if not ok then
        wrong[#wrong + 1] = ("%s: raised %s"):format(case[1], tostring(c))
      elseif c then
        wrong[#wrong + 1] = case[1] .. ": connected"
        c:close()
      elseif kind ~= "auth" or type(detail) ~= "table" or detail.stage ~= case[2]
             or not tostring(msg):find(case[3]) then
        wrong[#wrong + 1] = ("%s: %s %s (stage %s)"):format(case[1], tostring(kind), tostring(msg),
                                                           tostring(type(detail) == "table" and detail.stage))
      elseif baton.now() - t0 > 3000 then
        wrong[#wrong + 1] = case[1] .. ": took " .. (baton.now() - t0) .. " ms"
      end
    end
    local dir = H.temp_dir()
    for i, m in ipairs(USABLE) do
      mode(m)
      local before = stats().grants.refresh_token or 0
      local ok, c, msg, kind = pcall(mcp.connect, { url = url, timeout_ms = 10000, auth = {
        authorize = authorize, token_store = mcp.file_token_store(dir .. "/t" .. i .. ".json") } })
      if not ok then
        wrong[#wrong + 1] = ("%s: raised %s"):format(m, tostring(c))
      elseif not c then
        wrong[#wrong + 1] = ("%s: %s %s"):format(m, tostring(kind), tostring(msg))
      else
        for _ = 1, 3 do
          local r, e = c:call("whoami")
          if not r then wrong[#wrong + 1] = m .. ": call: " .. tostring(e) break end
        end
        local refreshed = (stats().grants.refresh_token or 0) - before
        if m ~= "token_exp_neg" and refreshed > 0 then
          wrong[#wrong + 1] = ("%s: %d refreshes for a token that had not expired"):format(m, refreshed)
        end
        c:close()
      end
    end
    mode(nil)
    H.remove_dir(dir)
    assert.same({}, wrong)
  end))

  fake_it("a 401 whose WWW-Authenticate holds terminal escapes: the failure shows them as '?'",
          with_oauth(function(url, base)
    assert(baton.http.json { url = base .. "/hostile", method = "POST", body = { mode = "www_escape" } })
    local msg, kind = H.assert_failure("baton.mcp.connect", "auth", mcp.connect { url = url })
    assert.equal("auth", kind)
    assert.is_nil(msg:find("%c"), msg)
    assert.matches('error="%?%[2J%?%]0;pwned%?"', msg)
  end))

  -- The loopback listener of the default authorize against hostile local clients
  -- (spec/fixtures/mcp/hostile_loopback_client.py).
  local HOSTILE_CLIENT = H.mcp.FIX .. "/hostile_loopback_client.py"

  -- Polls l for `state` every 20 ms until a target comes or `ms` pass: the targets seen.
  local function poll_for(l, state, ms, want)
    local got, deadline = {}, baton.now() + ms
    while baton.now() < deadline and #got < (want or 1) do
      local t, e = l:poll(state)
      assert(t or e == nil, e)
      if t then got[#got + 1] = t end
      baton.sleep(20)
    end
    return got
  end

  it("the loopback listener: garbage, no state, a wrong state are answered 400 and never "
     .. "returned (CSRF); the redirect with the flow's state is", H.async(function()
    local l <close> = assert(baton.http._loopback(0))
    local p <close> = assert(baton.process.spawn { "python3", HOSTILE_CLIENT, tostring(l:port()),
                                                   "requests", "S-state" })
    local got = poll_for(l, "S-state", 8000)
    assert.same({ "/callback?code=good&state=S-state" }, got)
    local answers = {}
    for _ = 1, 6 do answers[#answers + 1] = p:read_line(5000) end
    assert.same({ "HTTP/1.1 400 Bad Request", "HTTP/1.1 400 Bad Request", "HTTP/1.1 400 Bad Request",
                  "HTTP/1.1 400 Bad Request", "HTTP/1.1 400 Bad Request", "HTTP/1.1 200 OK" }, answers)
    assert.equal(5, l:refused())
    H.raises("bad argument #1 'state'", l.poll, l, 5)
  end))

  it("the loopback listener: a slowloris and 40 idle connections do not keep the redirect "
     .. "waiting; closing it leaves no descriptor", H.async(function()
    local fds = H.open_fds()
    do
      local l <close> = assert(baton.http._loopback(0))
      local p <close> = assert(baton.process.spawn { "python3", HOSTILE_CLIENT, tostring(l:port()),
                                                     "crowd", "S", stdin = true })
      local got = poll_for(l, "S", 6000)
      assert.same({ "/callback?code=good&state=S" }, got)
      local line = assert(p:read_line(6000))
      assert.matches("^redirect HTTP/1.1 200 OK", line)
      p:close_stdin()
    end
    collectgarbage()
    H.settle()
    if fds then assert.equal(fds, H.open_fds()) end
  end))

  it("the loopback listener: a redirect that arrived whole is answered even when 20 idle "
     .. "connections came after it before the first poll (the slots full, none evicts it)",
     H.async(function()
    local l <close> = assert(baton.http._loopback(0))
    local p <close> = assert(baton.process.spawn { "python3", HOSTILE_CLIENT, tostring(l:port()),
                                                   "evict", "S", stdin = true })
    assert.equal("ready", p:read_line(6000))   -- all 21 connected and the redirect sent
    local got = poll_for(l, "S", 6000)
    assert.same({ "/callback?code=good&state=S" }, got)
    assert.equal("redirect HTTP/1.1 200 OK", p:read_line(6000))
    assert.equal(0, l:refused())
    p:close_stdin()
  end))

  -- The TCP sockets this process holds in the LISTEN state (its descriptors' inodes found in
  -- /proc/net/tcp).
  local function listening()
    local pid = assert(io.open("/proc/self/stat")):read("l"):match("^(%d+)")
    local ls = assert(baton.process.run { "ls", "-l", "/proc/" .. pid .. "/fd" })
    local mine = {}
    for inode in ls.stdout:gmatch("socket:%[(%d+)%]") do mine[inode] = true end
    local n = 0
    for line in io.lines("/proc/net/tcp") do
      local st, inode = line:match("^%s*%d+:%s+%x+:%x+%s+%x+:%x+%s+(%x%x)%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+(%d+)")
      if st == "0A" and mine[inode] then n = n + 1 end
    end
    return n
  end

  fake_it("aborting a connect while the default authorize waits on the loopback listener closes "
          .. "the listener", with_oauth(function(url)
    local before = listening()
    local t = baton.spawn(function()
      return mcp.connect { url = url, auth = true, timeout_ms = 30000 }
    end)
    for _ = 1, 100 do                                   -- discovery, registration, the wait
      if listening() > before then break end
      baton.sleep(50)
    end
    assert.is_true(listening() > before, "no loopback listener")
    assert.equal("waiting", t:status())
    t:abort()
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.equal(before, listening())
  end))

end)
