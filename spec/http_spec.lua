-- baton.http against a real local server (spec/fixtures/http/server.py on 127.0.0.1):
-- responses, limits on what the peer sends, deadlines, aborts that leave no transfer,
-- socket or poll handle behind, Retry-After for baton.retry, and the JSON convenience.
local baton = require "baton"
local H = require "spec.helper"

local http = baton.http
local server = H.http_server()  -- spec/fixtures/http/server.py
local url = function(path) return server:url(path) end
local open_fds = H.open_fds

local function server_stats()
  local r = assert(http.json { url = url("/stats") })
  return r.body
end

local async = H.http_async  -- H.async, plus: no transfer left in the multi handle

describe("baton.http", function()
  lazy_setup(function() server:start() end)
  lazy_teardown(function()
    server:stop()
    if server.tls then server.tls:stop() end
  end)

  describe("responses", function()
    it("returns status, lowercase headers and body of a GET", async(function()
      local r = assert(http.request { url = url("/json") })
      assert.equal(200, r.status)
      assert.equal("application/json", r.headers["content-type"])
      assert.equal('{"ok": true, "items": [1, 2, 3]}', r.body)
      assert.equal(url("/json"), r.url)
    end))

    it("sends the method, headers and body it is given", async(function()
      local r = assert(http.request { url = url("/echo"), method = "put", body = "a\0b",
                                      headers = { ["X-Trace"] = "t-1", Accept = "text/plain" } })
      local doc = baton.json.decode(r.body)
      assert.equal("PUT", doc.method)
      assert.equal("a\0b", doc.body)
      assert.equal("t-1", doc.headers["x-trace"])
      assert.equal("text/plain", doc.headers.accept)
      assert.is_nil(doc.headers.expect)
    end))

    it("sends no Expect header unless given one, which is then honoured", async(function()
      local doc = baton.json.decode(http.request { url = url("/echo"), body = ("b"):rep(2e6) }.body)
      assert.is_nil(doc.headers.expect)
      assert.equal(2e6, #doc.body)
      doc = baton.json.decode(http.request { url = url("/echo"), body = "x",
                                             headers = { Expect = "100-continue" } }.body)
      assert.equal("100-continue", doc.headers.expect)
      assert.equal("x", doc.body)
    end))

    it("defaults to POST when there is a body, and sends HEAD without one", async(function()
      local doc = baton.json.decode(http.request { url = url("/echo"), body = "x" }.body)
      assert.equal("POST", doc.method)
      local r = assert(http.request { url = url("/json"), method = "HEAD" })
      assert.equal(200, r.status)
      assert.equal("", r.body)
    end))

    it("treats an error status as a response, not a failure", async(function()
      local r, err = http.request { url = url("/status?code=500") }
      assert.is_nil(err)
      assert.equal(500, r.status)
      assert.equal("status", r.body)
    end))

    it("does not follow redirects unless asked to", async(function()
      local r = assert(http.request { url = url("/redirect") })
      assert.equal(302, r.status)
      assert.equal("/echo", r.headers.location)
      r = assert(http.request { url = url("/redirect"), follow_redirects = true })
      assert.equal(200, r.status)
      assert.equal(url("/echo"), r.url)
    end))

    it("receives a large and a chunked body whole", async(function()
      local r = assert(http.request { url = url("/big?bytes=5000000") })
      assert.equal(5000000, #r.body)
      assert.equal(("x"):rep(5000000), r.body)
      r = assert(http.request { url = url("/chunked?bytes=300000") })
      assert.equal(("y"):rep(300000), r.body)
    end))
  end)

  describe("concurrency", function()
    it("completes 50 concurrent requests, each with its own answer", async(function()
      local g <close> = baton.group()
      for i = 1, 50 do
        g:spawn(function()
          local r = assert(http.request { url = url("/delay?ms=300"), timeout_ms = 20000 })
          assert.equal("late", r.body)
          local e = assert(http.request { url = url("/echo?i=" .. i) })
          return baton.json.decode(e.body).path
        end)
      end
      local elapsed, done = H.timed(function() return g:join_all() end)
      assert.equal(50, #done)
      local seen = {}
      for _, t in ipairs(done) do
        assert.is_true(t.ok, tostring(t.error))
        seen[t:results()] = true
      end
      for i = 1, 50 do assert.is_true(seen["/echo?i=" .. i]) end
      -- one after another these would take 15 s; in flight together, well under that
      assert.is_true(elapsed < 10000, "took " .. elapsed .. " ms")
    end))

    it("reuses connections for requests one after another", async(function()
      http.request { url = url("/echo") }
      local before = server_stats().connections
      for _ = 1, 20 do assert(http.request { url = url("/echo") }) end
      local opened = server_stats().connections - before
      assert.is_true(opened <= 2, opened .. " connections for 20 sequential requests")
    end))
  end)

  describe("deadlines and aborts", function()
    it("returns nil, msg, 'timeout', { url, timeout_ms } when timeout_ms passes first",
       async(function()
      local r = table.pack(H.timed(http.request, { url = url("/delay?ms=3000"), timeout_ms = 100 }))
      local elapsed = r[1]
      local msg, _, d = H.assert_failure("baton.http.request", "timeout", table.unpack(r, 2, r.n))
      assert.equal("baton.http.request: timed out after 100 ms", msg)
      assert.same({ url = url("/delay?ms=3000"), timeout_ms = 100 }, d)
      assert.is_true(elapsed >= 90 and elapsed < 2500, "took " .. elapsed .. " ms")
    end))

    it("holds an engine's one deadline and aborts the transfers on shutdown", async(function()
      local e <close> = baton.engine {
        max_parallel = 8, timeout_ms = 150,
        dispatcher = function(_, args)
          return http.request { url = url("/delay?ms=" .. args.ms) }.body
        end,
      }
      e:dispatch { { tool = "fast", args = { ms = 10 } }, { tool = "slow", args = { ms = 4000 } },
                   { tool = "slow2", args = { ms = 4000 } } }
      local elapsed, outcomes = H.timed(e.wait_within, e)
      assert.is_true(elapsed < 2000, "wait_within took " .. elapsed .. " ms")
      assert.equal(1, #outcomes)
      assert.equal("settled", outcomes[1].status)
      assert.equal("late", outcomes[1].body)
      assert.equal(2, e:pending())
      assert.equal(2, baton.stats().transfers)
      e:shutdown()
      assert.equal(0, baton.stats().transfers)
    end))

    it("leaves no transfer, poll handle or socket behind when aborted mid-transfer", async(function()
      http.request { url = url("/echo") }  -- the multi handle exists before counting
      local fds, gone = open_fds(), server_stats().gone
      local t = baton.spawn(function()
        return http.request { url = url("/trickle?ms=50&n=200") }
      end)
      baton.sleep(300)
      assert.equal(1, baton.stats().transfers)
      assert.is_true(baton.stats().handles >= 1)
      t:abort()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      assert.equal("cancelled", t:status())
      assert.equal(0, baton.stats().transfers)
      H.settle()
      assert.equal(0, baton.stats().handles)
      if fds then assert.is_true(open_fds() <= fds, "a socket was left open") end
      -- the server sees the connection go away
      local deadline = baton.now() + 5000
      while server_stats().gone == gone and baton.now() < deadline do baton.sleep(20) end
      assert.equal(gone + 1, server_stats().gone)
    end))

    it("is cancelled by baton.timeout around it", async(function()
      local r = table.pack(H.timed(baton.timeout, 100, http.request, { url = url("/delay?ms=3000") }))
      local elapsed = r[1]
      H.assert_failure("baton.timeout", "timeout", table.unpack(r, 2, r.n))
      assert.is_true(elapsed < 2500)
    end))

    it("releases the transfer of a task whose group is closed", async(function()
      do
        local g <close> = baton.group()
        for _ = 1, 5 do g:spawn(http.request, { url = url("/delay?ms=3000") }) end
        baton.sleep(100)
        assert.equal(5, baton.stats().transfers)
      end
      H.settle()
    end))
  end)

  describe("limits and failures of the world", function()
    it("refuses a body over max_body_bytes, announced or chunked", async(function()
      local r, err, kind = http.request { url = url("/big?bytes=2000000"), max_body_bytes = 1000000 }
      assert.is_nil(r)
      assert.equal("too_large", kind)
      assert.matches("max_body_bytes", err)
      r, err, kind = http.request { url = url("/chunked?bytes=2000000"), max_body_bytes = 1000000 }
      assert.is_nil(r)
      assert.equal("too_large", kind)
      r = assert(http.request { url = url("/big?bytes=1000"), max_body_bytes = 1000 })
      assert.equal(1000, #r.body)
    end))

    it("refuses headers over max_header_bytes, or over libcurl's own caps", async(function()
      local r, err, kind = http.request { url = url("/bigheaders?n=40"), max_header_bytes = 16384 }
      assert.is_nil(r)
      assert.equal("too_large", kind)
      assert.matches("headers", err)
      r, err, kind = http.request { url = url("/bigheader?bytes=150000"),
                                    max_header_bytes = 1000000 }
      assert.is_nil(r)
      assert.equal("too_large", kind)
      assert.matches("response headers too large: a header line over libcurl's 100 KiB limit", err)
      r = assert(http.request { url = url("/bigheaders?n=40") })
      assert.equal(("p"):rep(1024), r.headers["x-pad-39"])
    end))

    it("does not count an announced length against max_body_bytes when no body is read",
       async(function()
      local r = assert(http.request { url = url("/big?bytes=5000"), method = "HEAD",
                                      max_body_bytes = 1000 })
      assert.equal(200, r.status)
      assert.equal("5000", r.headers["content-length"])
    end))

    it("reports a body cut short as an io failure", async(function()
      local r, err, kind = http.request { url = url("/cut") }
      assert.is_nil(r)
      assert.equal("io", kind)
      assert.matches("cut short", err)
    end))

    it("reports an answer that is not HTTP as a protocol failure", async(function()
      local r, err, kind = http.request { url = url("/garbage") }
      assert.is_nil(r)
      assert.equal("protocol", kind)
      assert.matches("^baton.http.request: ", err)
    end))

    it("reports a refused connection as a connect failure", async(function()
      -- nothing listens on port 1
      local r, err, kind = http.request { url = "http://127.0.0.1:1/" }
      assert.is_nil(r)
      assert.equal("connect", kind)
      assert.matches("connect", err)
    end))

    it("keeps working after every kind of failure", async(function()
      for _, p in ipairs { "/cut", "/garbage", "/big?bytes=5000" } do
        http.request { url = url(p), max_body_bytes = 100 }
      end
      assert.equal(200, http.request { url = url("/json") }.status)
    end))
  end)

  describe("Retry-After", function()
    it("surfaces retry_after_ms from seconds and from an HTTP date", async(function()
      local r = assert(http.request { url = url("/status?code=429&retry_after=3") })
      assert.equal(429, r.status)
      assert.equal(3000, r.retry_after_ms)
      local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 30)
      r = assert(http.request { url = url("/status?code=503&retry_after=" .. when:gsub(" ", "%%20")) })
      assert.equal(503, r.status)
      assert.is_true(r.retry_after_ms >= 25000 and r.retry_after_ms <= 31000, r.retry_after_ms)
      r = assert(http.request { url = url("/status?code=200") })
      assert.is_nil(r.retry_after_ms)
    end))

    it("lets baton.retry wait as long as the server asks", async(function()
      local policy = baton.retry { max_attempts = 3, base_ms = 20000, max_delay_ms = 60000 }
      local attempts = 0
      local elapsed, v = H.timed(policy.call, policy, function()
        attempts = attempts + 1
        local path = attempts == 1 and "/status?code=429&retry_after=0" or "/json"
        local r = assert(http.request { url = url(path) })
        if r.status == 429 then
          error({ kind = "rate_limited", retry_after_ms = r.retry_after_ms })
        end
        return r.status
      end)
      assert.equal(200, v)
      assert.equal(2, attempts)
      assert.is_true(elapsed < 5000, "waited " .. elapsed .. " ms instead of Retry-After")
    end))
  end)

  describe("baton.http.stream", function()
    it("returns the head at once, then server-sent events as they arrive", async(function()
      local t0 = baton.clock()
      local s <close> = assert(http.stream { url = url("/sse?n=4&ms=150"), timeout_ms = 5000 })
      assert.equal(200, s.status)
      assert.equal("text/event-stream", s.headers["content-type"])
      assert.is_true(baton.clock() - t0 < 500, "the head waited for the body")
      local first = assert(s:read_event(5000))
      -- the comment and the retry-only block carry no data: they are not events
      assert.equal(1500, s.retry_ms)
      assert.equal("tick", first.event)
      assert.equal("0\nsecond", first.data)
      assert.equal("0", first.id)
      assert.is_true(baton.clock() - t0 < 500, "the first event waited for the others")
      for i = 1, 3 do
        local ev = assert(s:read_event(5000))
        assert.same({ event = "tick", id = tostring(i), data = i .. "\nsecond" },
                    { event = ev.event, id = ev.id, data = ev.data })
      end
      local last = assert(s:read_event(5000))
      assert.same({ event = "message", data = "done", id = "3" }, last)  -- the id carries over
      assert.is_nil(s:read_event(5000))
      assert.is_true(baton.clock() - t0 >= 500, "events came faster than the server sent them")
    end))

    -- A reference reading of server-sent events, the rules EventSource follows: lines end
    -- at "\r\n", "\n" or "\r"; "field: value" with one space after the colon
    -- dropped; a line without a colon is a field with an empty value; ':' starts a comment;
    -- a blank line dispatches the event if it has data; the last event id carries over.
    local function reference(text)
      local events, data, etype, id = {}, nil, nil, nil
      text = text:gsub("\r\n", "\n"):gsub("\r", "\n")
      for line in text:gmatch("([^\n]*)\n") do
        if line == "" then
          if data then events[#events + 1] = { event = etype or "message", data = data, id = id } end
          data, etype = nil, nil
        elseif line:sub(1, 1) ~= ":" then
          local f, v = line:match("^([^:]*):? ?(.*)$")
          if f == "data" then data = data and (data .. "\n" .. v) or v
          elseif f == "event" then etype = v ~= "" and v or nil
          elseif f == "id" and not v:find("\0", 1, true) then id = v end
        end
      end
      return events
    end

    local function random_stream(seed)
      local rnd = math.random
      math.randomseed(seed)
      local words = { "x", "hello world", "é", "\u{2028}", "{\"a\":1}", "", " lead", "a:b" }
      local kinds = { "data: %s", "data:%s", "data", "event: %s", "id: %s", ": %s",
                      "retry: 25", "other: %s", "", "", "" }
      local out = {}
      for _ = 1, 400 do
        local line = kinds[rnd(#kinds)]:format(words[rnd(#words)])
        local r = rnd(4)
        out[#out + 1] = line .. (r == 1 and "\r\n" or r == 2 and "\r" or "\n")
      end
      return table.concat(out) .. "\n"
    end

    it("parses server-sent events as EventSource does, however the bytes are cut",
       async(function()
      for seed = 1, 6 do
        local text = random_stream(seed)
        local want = reference(text)
        assert.is_true(#want > 10)
        local s <close> = assert(http.stream {
          url = url(("/replay?seed=%d&max=%d"):format(seed, seed % 2 == 1 and 7 or 300)),
          body = text })
        local got = {}
        while true do
          local ev, err = s:read_event(5000)
          if not ev then assert.is_nil(err) break end
          got[#got + 1] = { event = ev.event, data = ev.data, id = ev.id }
        end
        assert.same(want, got)
        s:close()
      end
    end))

    it("follows EventSource on a byte-order mark, CR line ends, empty types, retry",
       async(function()
      local s <close> = assert(http.stream { url = url("/sse_edge") })
      local got = {}
      while true do
        local ev = s:read_event(5000)
        if not ev then break end
        got[#got + 1] = ev.event .. "=" .. ev.data
      end
      assert.same({ "message=first", "message=second", "message=third", "message=fourth" }, got)
      assert.equal(250, s.retry_ms)
    end))

    it("returns the head of the response a redirect leads to, for any 3xx followed",
       async(function()
      for _, code in ipairs { 300, 301, 302, 303, 305, 307, 308 } do
        local s <close> = assert(http.stream { url = url("/redirect_to?code=" .. code),
                                               follow_redirects = true })
        assert.equal(200, s.status, "after a " .. code)
        assert.equal(url("/echo"), s.url)
        assert.equal("application/json", s.headers["content-type"])
        s:close()
      end
      local s <close> = assert(http.stream { url = url("/redirect_to?code=305") })
      assert.equal(305, s.status)
    end))

    it("reads lines, the last one without a newline, then nil", async(function()
      local s <close> = assert(http.stream { url = url("/lines?n=5") })
      for i = 0, 4 do assert.equal("line " .. i, s:read_line(5000)) end
      assert.is_nil(s:read_line(5000))
    end))

    it("reads lines ending in LF or CRLF, up to 1 MiB with the newline; longer is too_large",
       async(function()
      local max = 1 << 20
      local edge = ("x"):rep(max - 2) .. "\r\n"  -- the longest line, CRLF included
      local body = "a\r\nb\n\r\n\n" .. edge .. ("z"):rep(max - 1) .. "\nc\r"
      local s <close> = assert(http.stream { url = url("/replay?seed=5&max=40000"),
                                             body = body })
      for _, want in ipairs { "a", "b", "", "", ("x"):rep(max - 2), ("z"):rep(max - 1) } do
        local line, err = s:read_line(5000)
        assert.equal(want, line, err)
      end
      assert.equal("c\r", s:read_line(5000))  -- the last line is taken as it is
      assert.is_nil(s:read_line(5000))
      -- A line of 1 MiB with no end in sight: too_large, and its bytes stay for read.
      local big <close> = assert(http.stream { url = url("/chunked?bytes=1200000") })
      local line, err, kind = big:read_line(5000)
      assert.is_nil(line)
      assert.equal("too_large", kind)
      assert.matches("read_line", err)
      assert.matches("^y+$", big:read(5000))
    end))

    it("pauses the transfer while the reader lags, and loses nothing", async(function()
      local s <close> = assert(http.stream { url = url("/chunked?bytes=6000000") })
      baton.sleep(300)
      assert.is_true(s:buffered() <= (1 << 20) + (256 << 10), "buffered " .. s:buffered())
      local parts, n = {}, 0
      while true do
        local chunk, err = s:read(5000)
        if not chunk then assert.is_nil(err) break end
        n = n + #chunk
        parts[#parts + 1] = chunk
      end
      assert.equal(6000000, n)
      assert.equal(("y"):rep(6000000), table.concat(parts))
    end))

    it("times out one read and goes on with the next", async(function()
      local s <close> = assert(http.stream { url = url("/sse?n=2&ms=1500") })
      assert(s:read_event(5000))
      H.assert_failure("baton.http.stream:read_event", "timeout", s:read_event(100))
      local ev = assert(s:read_event(5000))
      assert.equal("1", ev.id)
    end))

    it("times out waiting for the head and leaves no transfer", async(function()
      H.assert_failure("baton.http.stream", "timeout",
                       http.stream { url = url("/delay?ms=3000"), timeout_ms = 100 })
      assert.equal(0, baton.stats().transfers)
    end))

    it("reports failures before the head and in the middle of the body", async(function()
      local s, err, kind = http.stream { url = "http://127.0.0.1:1/" }
      assert.is_nil(s)
      assert.equal("connect", kind)
      assert.matches("^baton.http.stream: ", err)
      s = assert(http.stream { url = url("/cut") })
      assert.equal(("z"):rep(100), s:read(5000))
      local chunk
      chunk, err, kind = s:read(5000)
      assert.is_nil(chunk)
      assert.equal("io", kind)
      assert.matches("cut short", err)
      s:close()
    end))

    it("closes with <close> when its task is aborted, and the server sees it", async(function()
      local gone = server_stats().gone
      local t = baton.spawn(function()
        local s <close> = assert(http.stream { url = url("/sse?n=1000&ms=20") })
        while s:read_event() do end
      end)
      baton.sleep(200)
      assert.equal(1, baton.stats().transfers)
      t:abort()
      assert.is_false((t:join()))
      assert.equal(0, baton.stats().transfers)
      local deadline = baton.now() + 5000
      while server_stats().gone == gone and baton.now() < deadline do baton.sleep(20) end
      assert.equal(gone + 1, server_stats().gone)
    end))

    it("is closed by baton.run when the main task leaves it open", function()
      local kept
      baton.run(function() kept = assert(http.stream { url = url("/sse?n=1000&ms=20") }) end)
      assert.equal(0, baton.stats().transfers)
      assert.matches("closed", tostring(kept))
      H.raises("the stream is closed", kept.read, kept)
    end)

    it("refuses a second reader and use after close", async(function()
      local s = assert(http.stream { url = url("/sse?n=2&ms=1000") })
      local t = baton.spawn(function()
        while true do
          local ev, err, kind = s:read_event()
          if not ev then return ev, err, kind end
        end
      end)
      baton.sleep(100)
      H.raises("another task is already waiting", s.read_event, s)
      s:close()
      local ok, ev, err, kind = t:join()
      assert.is_true(ok)
      assert.is_nil(ev)
      assert.equal("closed", kind)
      H.raises("the stream is closed", s.read, s)
      s:close()  -- idempotent
    end))
  end)

  describe("baton.http.json", function()
    it("encodes the body, sets the JSON headers and decodes the reply", async(function()
      local r = assert(http.json { url = url("/echo"), body = { model = "m", n = 2 } })
      assert.equal(200, r.status)
      assert.equal("POST", r.body.method)
      assert.equal("application/json", r.body.headers["content-type"])
      assert.equal("application/json", r.body.headers.accept)
      assert.same({ model = "m", n = 2 }, baton.json.decode(r.body.body))
      assert.is_string(r.text)
    end))

    it("returns nil, message, 'malformed', response for a reply that is not JSON", async(function()
      local r, err, kind, resp = http.json { url = url("/notjson") }
      assert.is_nil(r)
      assert.equal("malformed", kind)
      assert.matches("status 500", err)
      assert.equal(500, resp.status)
      assert.equal("<html>oops</html>", resp.text)
    end))

    it("rejects a body JSON cannot encode", async(function()
      H.raises("encode", http.json, { url = url("/echo"), body = { f = print } })
    end))
  end)

  describe("TLS", function()
    -- An HTTPS server with a self-signed certificate made for this run.
    local function tls_server()
      server.tls = server.tls or H.http_server { tls = true }:start()
      return server.tls
    end

    it("refuses a certificate it cannot verify, as a tls failure", async(function()
      local s = tls_server()
      local r, err, kind = http.request { url = ("https://127.0.0.1:%d/json"):format(s.port) }
      assert.is_nil(r)
      assert.equal("tls", kind)
      assert.matches("^baton.http.request: TLS: ", err)
    end))

    it("talks HTTPS to a server whose CA is given in ca_file", async(function()
      local s = tls_server()
      local r = assert(http.json { url = ("https://127.0.0.1:%d/json"):format(s.port),
                                   ca_file = s.cert })
      assert.equal(200, r.status)
      assert.same({ 1, 2, 3 }, r.body.items)
      local _, _, kind = http.request { url = ("https://127.0.0.1:%d/json"):format(s.port),
                                        ca_file = "/nonexistent/ca.pem" }
      assert.equal("tls", kind)
    end))
  end)

  describe("misuse", function()
    it("raises on bad options, naming them", function()
      baton.run(function()
        local function misuse(name, rest, opts)
          H.raises_misuse("baton.http.request", 1, name, rest, http.request, opts)
        end
        misuse("url", "expected string, got nil", {})
        misuse("url", "expected an absolute http:// or https:// URL, got 'ftp://x/'",
               { url = "ftp://x/" })
        misuse("url", "got 'not a url'", { url = "not a url" })
        misuse("timeout", "%(unknown option%)", { url = url("/"), timeout = 1 })
        misuse("method", "expected an HTTP method, got 'GE T'", { url = url("/"), method = "GE T" })
        misuse("headers.X", "expected a value without CR, LF or NUL",
               { url = url("/"), headers = { X = "a\r\nB: c" } })
        misuse("headers", "expected names that are HTTP tokens, got 'A B'",
               { url = url("/"), headers = { ["A B"] = "x" } })
        misuse("headers", "HTTP tokens", { url = url("/"), headers = { ["X-A\0B"] = "x" } })
        -- baton frames the body: a contradicting length would smuggle a request
        misuse("headers.Content-Length", "expected no such header %(baton frames the body itself%)",
               { url = url("/"), method = "POST", body = "GET /x HTTP/1.1\r\n\r\n",
                 headers = { ["Content-Length"] = "4" } })
        misuse("headers.transfer-encoding", "baton frames the body itself",
               { url = url("/"), headers = { ["transfer-encoding"] = "chunked" } })
        misuse("body", "expected string, got table", { url = url("/"), body = {} })
        misuse("timeout_ms", "expected milliseconds >= 0, got %-1",
               { url = url("/"), timeout_ms = -1 })
        misuse("max_body_bytes", "expected integer >= 0, got 'x'",
               { url = url("/"), max_body_bytes = "x" })
        misuse("follow_redirects", "expected boolean or integer 0..1000, got 'yes'",
               { url = url("/"), follow_redirects = "yes" })
        misuse("ca_file", "expected a path, got 1", { url = url("/"), ca_file = 1 })
        misuse("opts", "expected table, got 'http://x/'", "http://x/")
        H.raises_misuse("baton.http.json", 1, "body", "expected a value JSON can encode, got " ..
                        "a function at %$%.f%)", http.json, { url = url("/"), body = { f = print } })
      end)
    end)

    it("keeps options that an __index supplies alive while it uses them", async(function()
      local opts = setmetatable({}, { __index = function(_, k)
        collectgarbage()
        if k == "url" then return url("/json") .. "?" .. ("q"):rep(100) end
      end })
      local r = assert(http.request(opts))
      assert.equal(200, r.status)
    end))

    it("raises outside a task", function()
      H.raises("not inside a baton task", http.request, { url = url("/") })
    end)
  end)
end)
