-- baton.http against peers that misbehave, and a world that runs short, with the real local
-- server (spec/fixtures/http/server.py): an event stream that never ends an event, servers
-- that drop or reset connections, a header flood cut by a reset, a trailer that looks like
-- a status line, children that must not inherit baton's sockets, a process out of
-- descriptors.
local baton = require "baton"
local H = require "spec.helper"

local http = baton.http
local server = H.http_server()  -- spec/fixtures/http/server.py
local url = function(path) return server:url(path) end

local function server_stats() return assert(http.json { url = url("/stats") }).body end

local async = H.http_async  -- H.async, plus: no transfer left in the multi handle

-- Waits (bounded) for the server to count one more client gone from `gone`.
local function server_sees_gone(gone, ms)
  local deadline = baton.now() + ms
  while server_stats().gone == gone and baton.now() < deadline do baton.sleep(20) end
  return server_stats().gone > gone
end

describe("baton.http against hostile peers", function()
  lazy_setup(function() server:start() end)
  lazy_teardown(function() server:stop() end)

  describe("event streams", function()
    it("reads 320k data lines of one event in linear time, the loop running meanwhile",
       async(function()
      local ticks, stop = 0, false
      local ticker = baton.spawn(function()
        while not stop do
          baton.sleep(50)
          ticks = ticks + 1
        end
      end)
      local t0 = baton.now()
      local s <close> = assert(http.stream { url = url("/sse_flood?lines=320000"),
                                             timeout_ms = 10000 })
      local ev = assert(s:read_event(30000))
      local elapsed = baton.now() - t0
      stop = true
      ticker:join()
      local n = select(2, ev.data:gsub("\n", "")) + 1
      assert.equal(320000, n)
      assert.equal("0\n1\n2\n", ev.data:sub(1, 6))
      assert.equal("\n319999", ev.data:sub(-7))
      assert.is_true(elapsed < 3000, "320k lines took " .. elapsed .. " ms")
      -- a 50 ms ticker got at least half its turns while the event was read
      assert.is_true(ticks >= elapsed / 50 / 2,
                     ("%d ticks in %d ms: the loop stalled"):format(ticks, elapsed))
      assert.equal("after", assert(s:read_event(5000)).data)
      assert.is_nil(s:read_event(5000))
    end))

    it("joins 40,000 repeats of a header in linear time, the loop not held", async(function()
      local worst, r = H.stall_ms(2, http.request,
                                  { url = url("/many_headers?n=40000"), timeout_ms = 20000 })
      assert(r)
      assert.equal("ok", r.body)
      local x = r.headers.x
      assert.equal(40000 * 3 - 2, #x)
      assert.equal("0, 1, 2", x:sub(1, 7))
      assert.equal("a=1, b\nc=2", r.headers["set-cookie"])
      -- joined as they came, each repeat copied all before it: a second of held loop
      assert.is_true(worst < 300, ("the 2 ms ticker waited %.0f ms"):format(worst))
    end))

    it("a flood of small events does not hold other tasks back: a reader looping on "
       .. "read_event lets the loop turn every 256 events", async(function()
      local s <close> = assert(http.stream { url = url("/sse_many?n=300000"), timeout_ms = 30000 })
      local worst, n = H.stall_ms(2, function()
        local n = 0
        while true do
          local ev, msg = s:read_event(30000)
          if not ev then assert.is_nil(msg); return n end
          assert.equal(tostring(n), ev.data)
          n = n + 1
        end
      end)
      assert.equal(300000, n)
      -- a turn handed out ~100,000 buffered events before: the ticker waited 100-400 ms
      assert.is_true(worst < 60, ("the 2 ms ticker waited %.0f ms"):format(worst))
    end))

    it("refuses an event over max_event_bytes as too_large, skips it and goes on",
       async(function()
      local s <close> = assert(http.stream { url = url("/sse_flood?lines=5000"),
                                             max_event_bytes = 1000 })
      local err, _, detail = H.assert_failure("baton.http.stream:read_event", "too_large",
                                              s:read_event(5000))
      assert.matches("^baton%.http%.stream:read_event: an event exceeds 1000 bytes " ..
                     "%(max_event_bytes%)", err)
      assert.same({ limit = 1000 }, detail)
      local ev
      ev = assert(s:read_event(5000))
      assert.same({ event = "message", data = "after" }, ev)
      assert.is_nil(s:read_event(5000))
      -- an event of exactly the limit passes
      local exact <close> = assert(http.stream { url = url("/sse_flood?lines=1"),
                                                 max_event_bytes = 1 })
      assert.equal("0", assert(exact:read_event(5000)).data)
    end))

    it("takes max_event_bytes on streams only", function()
      baton.run(function()
        H.raises_misuse("baton.http.request", 1, "max_event_bytes", "%(unknown option%)",
                        http.request, { url = url("/json"), max_event_bytes = 10 })
        H.raises_misuse("baton.http.stream", 1, "max_event_bytes", "expected integer >= 0, got %-1",
                        http.stream, { url = url("/json"), max_event_bytes = -1 })
        H.raises_misuse("baton.http.stream", 1, "max_event_bytes", "got 'big'", http.stream,
                        { url = url("/json"), max_event_bytes = "big" })
      end)
    end)
  end)

  describe("connections", function()
    it("retries a reused connection the server had closed: 200 of 200 requests succeed",
       async(function()
      local failures = {}
      for _ = 1, 200 do
        local r, err = http.request { url = url("/idle_close?ms=5"), timeout_ms = 10000 }
        if not r then failures[#failures + 1] = err
        else assert.equal("ok", r.body) end
      end
      assert.equal(0, #failures, failures[1])
    end))

    it("reports a reset as such: kind io, 'connection reset by peer'", async(function()
      for _ = 1, 3 do
        local r, err, kind = http.request { url = url("/reset"), timeout_ms = 10000 }
        assert.is_nil(r)
        assert.equal("io", kind)
        assert.equal("baton.http.request: connection reset by peer", err)
      end
      assert.equal(200, http.request { url = url("/json") }.status)
    end))

    it("reports headers over the limit as too_large when a reset follows them",
       async(function()
      -- 20 KiB of headers and at once a reset: both are there when the loop next polls, and
      -- the headers must be read (and refused), not the reset reported instead.
      for _ = 1, 30 do
        local r, err, kind = http.request { url = url("/bigheaders?n=20&reset=1"),
                                            max_header_bytes = 8192, timeout_ms = 10000 }
        assert.is_nil(r)
        assert.equal("too_large", kind, err)
        assert.matches("headers exceed 8192 bytes", err)
      end
    end))

    it("does not let a trailer that looks like a status line reset the response",
       async(function()
      local r = assert(http.request { url = url("/trailer_status") })
      assert.equal(200, r.status)
      assert.equal("hello", r.body)
      local s <close> = assert(http.stream { url = url("/trailer_status") })
      assert.equal("hello", s:read(5000))
      assert.is_nil(s:read(5000))
    end))

    it("joins a folded header value with spaces (obs-fold), and its repeats with ', '",
       async(function()
      local r = assert(http.request { url = url("/folded") })
      assert.equal("ok", r.body)
      assert.equal("first second third, again", r.headers["x-folded"])
      assert.equal("p", r.headers["x-plain"])
    end))

    it("adds a chunked body's trailers to resp.headers; a stream's headers are its head's",
       async(function()
      local r = assert(http.request { url = url("/trailer") })
      assert.equal("hello", r.body)
      assert.equal("42", r.headers["x-sum"])
      local s <close> = assert(http.stream { url = url("/trailer") })
      assert.equal("hello", s:read(5000))
      assert.is_nil(s:read(5000))
      assert.is_nil(s.headers["x-sum"])
      assert.equal("X-Sum", s.headers["trailer"])
    end))

    it("reports a chunk size that is not hex as a protocol failure, not io", async(function()
      local r, msg, kind = http.request { url = url("/bad_chunk") }
      assert.is_nil(r)
      assert.equal("protocol", kind)
      assert.matches("^baton.http.request: bad response: .*chunked%-encoding", msg)
      local s <close> = assert(http.stream { url = url("/bad_chunk") })
      assert.equal("hello", s:read(5000))
      local v, smsg, skind = s:read(5000)
      assert.is_nil(v)
      assert.equal("protocol", skind, smsg)
    end))
  end)

  describe("descriptors", function()
    it("keeps its sockets from child processes, so a closed stream reaches the server",
       async(function()
      assert(http.request { url = url("/echo") })  -- a kept-alive connection
      local s = assert(http.stream { url = url("/sse?n=1000&ms=20") })
      assert(s:read_event(5000))
      local gone = server_stats().gone
      local p <close> = assert(baton.process.spawn {
        "sh", "-c", "ls -l /proc/self/fd; echo END; exec sleep 10" })
      local seen, sockets = 0, {}
      while true do
        local line = assert(p:read_line(5000))
        if line == "END" then break end
        local fd, what = line:match("(%d+) %-> (.*)$")
        if fd then
          seen = seen + 1
          if tonumber(fd) > 2 and what:match("^socket:") then sockets[#sockets + 1] = line end
        end
      end
      assert.is_true(seen >= 3, "could not read the child's descriptors")
      assert.same({}, sockets)
      -- the child lives on; closing the stream still closes the connection
      s:close()
      assert.is_true(server_sees_gone(gone, 3000), "the server never saw the stream closed")
    end))

    it("reports a process out of descriptors as kind resource, not the host's failure",
       async(function()
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
        local baton = require "baton"
        local base = arg[1]
        baton.run(function()
          -- the multi handle made (by a refused request: no connection kept to reuse)
          assert(not baton.http.request { url = "http://127.0.0.1:1/" })
          local hoard = {}
          while true do
            local h = io.open("/dev/null")
            if not h then break end
            hoard[#hoard + 1] = h
          end
          local r, err, kind = baton.http.request { url = base .. "/json", timeout_ms = 5000 }
          for _, h in ipairs(hoard) do h:close() end
          local again = baton.http.request { url = base .. "/json", timeout_ms = 5000 }
          print(#hoard, tostring(r), kind, err, again and again.status)
        end)
      ]])
      f:close()
      local lua = os.getenv("BATON_LUA") or "lua5.4"
      local r = baton.process.run { "sh", "-c", 'ulimit -n 64 && exec "$0" "$@"', lua, script,
                                    url(""), timeout_ms = 30000 }
      os.remove(script)
      assert.equal(0, r.code, r.stderr)
      local hoarded, res, kind, err, again = r.stdout:match("^(%d+)\t(%S+)\t(%S+)\t(.-)\t(%S+)\n")
      assert.is_true(tonumber(hoarded) > 0, r.stdout)
      assert.equal("nil", res)
      assert.equal("resource", kind, err)
      assert.matches("baton.http.request: cannot open a socket: Too many open files", err)
      assert.equal("200", again)  -- descriptors back: the same host is fine
    end))
  end)
end)
