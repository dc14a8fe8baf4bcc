-- baton.redis against a private redis-server of this run (H.redis_server: a free port, a
-- temp dir, no persistence): reply shapes, many calls in flight on one connection, aborted
-- and timed-out calls that leave the connection usable and nothing behind, a server killed
-- mid-run, connect failures, and misuse raising in the convention's form.
local baton = require "baton"
local H = require "spec.helper"

local server, why = H.redis_server()
if not server then H.loud("redis_spec", why) end
local it = H.gated(why)
local async = H.async

local function connect(opts)
  opts = opts or {}
  if not opts.path then opts.url = opts.url or server.url end
  return assert(baton.redis.connect(opts))
end

describe("baton.redis", function()
  lazy_teardown(function() if server then server:stop() end end)

  describe("replies", function()
    it("maps strings, integers, arrays, nil and error replies", async(function()
      local r <close> = connect()
      assert.equal("OK", r:call("SET", "k:s", "hello"))
      assert.equal("hello", r:call("GET", "k:s"))
      r:call("DEL", "k:n")
      assert.equal(5, r:call("INCRBY", "k:n", 5))
      assert.is_true(math.type(r:call("INCR", "k:n")) == "integer")
      assert.equal("6", r:call("GET", "k:n"))
      r:call("DEL", "k:l")
      assert.equal(3, r:call("RPUSH", "k:l", "a", "b", 3))
      assert.same({ "a", "b", "3" }, r:call("LRANGE", "k:l", 0, -1))
      assert.same({}, r:call("LRANGE", "k:none", 0, -1))
      -- binary-safe
      assert.equal("OK", r:call("SET", "k:b", "a\0b\r\nc"))
      assert.equal("a\0b\r\nc", r:call("GET", "k:b"))
      -- a nil reply: nil and nothing else; a nil inside an array: false
      local n = table.pack(r:call("GET", "k:missing"))
      assert.equal(1, n.n)
      assert.is_nil(n[1])
      assert.same({ "hello", false }, r:call("MGET", "k:s", "k:missing"))
      -- an error reply: nil, the server's message, "redis"
      local msg = H.assert_failure("baton.redis:call", "redis", r:call("INCR", "k:s"))
      assert.matches("not an integer", msg)
      H.assert_failure("baton.redis:call", "redis", r:call("NOSUCHCOMMAND"))
      -- floats go over as text that reads back the same
      assert.equal("OK", r:call("SET", "k:f", 0.1))
      assert.equal(0.1, tonumber(r:call("GET", "k:f")))
      -- integers and floats with an integer's value go as digits; the command's text is
      -- written in one pass, whatever the size or the number of arguments
      for v, text in pairs { [1e9] = "1000000000", [-7] = "-7", [0] = "0",
                             [math.mininteger] = tostring(math.mininteger),
                             [math.maxinteger] = tostring(math.maxinteger), [-2.5] = "-2.5",
                             [2 ^ 63] = "9.2233720368547758e+18" } do
        assert.equal("OK", r:call("SET", "k:n", v))
        assert.equal(text, r:call("GET", "k:n"))
      end
      local big = ("x"):rep(100000)
      assert.equal("OK", r:call("SET", "k:big", big))
      assert.equal(big, r:call("GET", "k:big"))
      local many = { "RPUSH", "k:many" }
      for i = 1, 300 do many[#many + 1] = i % 2 == 0 and i or ("v" .. i) end
      assert.equal(300, r:call(table.unpack(many)))
      local got = r:call("LRANGE", "k:many", 0, -1)
      assert.equal("2", got[2])
      assert.equal("v299", got[299])
      local replies = r:pipeline(function(pp) pp:call("SET", "k:p", 42) pp:call("GET", "k:p") end)
      assert.same({ "OK", "42" }, replies)
      -- an error inside an array (EXEC) is an error value, not a failure
      assert.equal("OK", r:call("MULTI"))
      assert.equal("QUEUED", r:call("INCR", "k:s"))
      assert.equal("QUEUED", r:call("PING"))
      local ex = r:call("EXEC")
      assert.equal("redis", ex[1].kind)
      assert.equal("PONG", ex[2])
    end))

    it("connects by unix socket path and selects a db from the url", async(function()
      local a <close> = connect { path = server.socket }
      assert.equal("PONG", a:call("PING"))
      local b <close> = connect { url = server.url .. "/3" }
      b:call("SET", "k:db", "three")
      assert.is_nil(a:call("GET", "k:db"))
      a:call("SELECT", 3)
      assert.equal("three", a:call("GET", "k:db"))
    end))
  end)

  describe("in flight", function()
    it("1,000 INCRs from 50 tasks on one connection give the right total", async(function()
      local r <close> = connect()
      r:call("DEL", "k:ctr")
      local g <close> = baton.group()
      for _ = 1, 50 do
        g:spawn(function()
          for _ = 1, 20 do assert(r:call("INCR", "k:ctr")) end
        end)
      end
      g:join_all()
      assert.equal("1000", r:call("GET", "k:ctr"))
    end))

    it("each of many concurrent calls gets its own reply", async(function()
      local r <close> = connect()
      local g <close> = baton.group()
      local got = {}
      for i = 1, 200 do
        g:spawn(function() got[i] = r:call("ECHO", "v" .. i) end)
      end
      g:join_all()
      for i = 1, 200 do assert.equal("v" .. i, got[i]) end
    end))

    it("a call aborted in flight leaves the connection usable and nothing behind",
       async(function()
      local r <close> = connect()
      r:call("DEL", "k:q")
      local t0 = baton.now()
      local ok, msg, kind = baton.timeout(50, function() return r:call("BLPOP", "k:q", 5) end)
      assert.is_nil(ok)
      assert.equal("timeout", kind, msg)
      assert.is_true(baton.now() - t0 < 2000)
      -- the BLPOP is still blocked on the server: the next call's reply comes after it
      local t = baton.spawn(function() return r:call("PING") end)
      assert.equal("OK", connect():call("RPUSH", "k:q", "x") and "OK")
      assert.same({ true, "PONG" }, { t:join() })
      -- the aborted BLPOP's reply (the "x") was discarded, not handed to anyone
      assert.equal(0, r:call("LLEN", "k:q"))
      assert.equal("PONG", r:call("PING"))
      local a = baton.spawn(function() return r:call("BLPOP", "k:q", 5) end)
      baton.sleep(20)
      a:abort()
      assert.is_false((a:join()))
    end))

    it("a connect aborted while waiting leaves nothing behind", async(function()
      local o <close> = connect()
      o:call("CLIENT", "PAUSE", 200, "ALL")  -- the server holds the connect's PING
      local ok, _, kind = baton.timeout(30, function() return baton.redis.connect { url = server.url } end)
      assert.is_nil(ok)
      assert.equal("timeout", kind)
      local t = baton.spawn(function() return baton.redis.connect { url = server.url } end)
      baton.sleep(10)
      t:abort()
      assert.is_false((t:join()))
      baton.sleep(500)  -- the pause ends: the held replies come to closed connections
    end))

    it("calls aborted at random points never get another call's reply", async(function()
      local r <close> = connect()
      local g <close> = baton.group()
      local ok_n, aborted = 0, 0
      for t = 1, 40 do
        g:spawn(function()
          for i = 1, 50 do
            local want = t .. ":" .. i
            local v, _, kind = baton.timeout(math.random(0, 3), function()
              return r:call("ECHO", want)
            end)
            if v ~= nil then
              assert.equal(want, v)
              ok_n = ok_n + 1
            else
              assert.equal("timeout", kind)
              aborted = aborted + 1
            end
          end
        end)
      end
      g:join_all()
      assert.equal(2000, ok_n + aborted)
      assert.is_true(ok_n > 0 and aborted > 0, ("%d answered, %d aborted"):format(ok_n, aborted))
      assert.equal("after", r:call("ECHO", "after"))
    end))

    it("timeout_ms ends a call with timeout", async(function()
      local r <close> = connect { timeout_ms = 50 }
      local t0 = baton.now()
      local _, _, detail =
        H.assert_failure("baton.redis:call", "timeout", r:call("BLPOP", "k:never", 5))
      assert.equal(50, detail.timeout_ms)
      assert.is_true(baton.now() - t0 < 2000)
      -- the BLPOP still blocks the connection on the server (replies come in order): once
      -- another client feeds it, the connection answers again
      local o <close> = connect()
      o:call("RPUSH", "k:never", "x")
      assert.equal("PONG", r:call("PING"))
      assert.equal(0, r:call("LLEN", "k:never"))
    end))
  end)

  describe("pipelines", function()
    it("send the queued commands together and return their replies in order",
       async(function()
      local r <close> = connect()
      r:call("DEL", "k:p")
      local replies = r:pipeline(function(p)
        p:call("SET", "k:p", 1)
        p:call("INCRBY", "k:p", 41)
        p:call("GET", "k:p")
        p:call("GET", "k:p:missing")
        p:call("HGET", "k:p", "f")   -- WRONGTYPE
        p:call("LRANGE", "k:p:none", 0, -1)
      end)
      assert.equal(6, #replies)
      assert.equal("OK", replies[1])
      assert.equal(42, replies[2])
      assert.equal("42", replies[3])
      assert.is_false(replies[4])
      assert.equal("redis", replies[5].kind)
      assert.matches("WRONGTYPE", replies[5].message)
      assert.same({}, replies[6])
      assert.same({}, r:pipeline(function() end))
    end))

    it("many pipelines from many tasks keep their replies apart", async(function()
      local r <close> = connect()
      local g <close> = baton.group()
      for t = 1, 20 do
        g:spawn(function()
          local got = r:pipeline(function(p)
            for i = 1, 50 do p:call("ECHO", t .. ":" .. i) end
          end)
          for i = 1, 50 do assert.equal(t .. ":" .. i, got[i]) end
        end)
      end
      g:join_all()
    end))

    it("fail as a whole when the connection goes, and honour timeout_ms", async(function()
      local r <close> = connect { timeout_ms = 40 }
      local _, _, detail = H.assert_failure("baton.redis:pipeline", "timeout",
        r:pipeline(function(p) p:call("PING"); p:call("BLPOP", "k:p:never", 5) end))
      assert.equal(40, detail.timeout_ms)
      local o <close> = connect()
      o:call("RPUSH", "k:p:never", "x")
      local id = r:call("CLIENT", "ID")
      local t = baton.spawn(function()
        return table.pack(r:pipeline(function(p) p:call("BLPOP", "k:p:never2", 5) end))
      end)
      baton.sleep(10)
      o:call("CLIENT", "KILL", "ID", id)
      local _, res = t:join()
      H.assert_failure("baton.redis:pipeline", "closed", table.unpack(res, 1, res.n))
    end))

    it("raise on misuse", async(function()
      local r <close> = connect()
      H.raises_misuse("baton.redis:pipeline", 1, "fn", nil, r.pipeline, r, 5)
      H.raises_misuse("baton.redis.pipe:call", 3, "arg", nil, r.pipeline, r,
                      function(p) p:call("SET", "k", {}) end)
      local kept
      r:pipeline(function(p) kept = p end)
      H.raises("already sent", kept.call, kept, "PING")
    end))
  end)

  describe("scripts", function()
    it("run by SHA, loaded on first use and again after the server forgot them",
       async(function()
      local r <close> = connect()
      local script = "return { KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1]) }"
      r:call("DEL", "k:e")
      assert.same({ "k:e", "5", 5 }, r:eval(script, { "k:e" }, { 5 }))
      -- the second run goes by SHA: the server's count of EVALSHA calls shows it
      r:call("CONFIG", "RESETSTAT")
      assert.same({ "k:e", "2", 7 }, r:eval(script, { "k:e" }, { 2 }))
      local info = r:call("INFO", "commandstats")
      assert.matches("cmdstat_evalsha:calls=1,", info)
      assert.is_nil(info:find("cmdstat_script", 1, true))
      -- forgotten (SCRIPT FLUSH): NOSCRIPT, SCRIPT LOAD, EVALSHA again, transparently
      r:call("SCRIPT", "FLUSH")
      assert.same({ "k:e", "1", 8 }, r:eval(script, { "k:e" }, { 1 }))
      assert.equal(1, r:eval("return 1"))
      local none = table.pack(r:eval("return nil"))
      assert.equal(1, none.n)
      assert.is_nil(none[1])
    end))

    it("fail in the convention's form and raise on misuse", async(function()
      local r <close> = connect()
      r:call("SET", "k:e:s", "x")
      local msg = H.assert_failure("baton.redis:eval", "redis",
                             r:eval("return redis.call('INCR', KEYS[1])", { "k:e:s" }))
      assert.matches("not an integer", msg)
      H.assert_failure("baton.redis:eval", "redis", r:eval("this is not lua"))
      H.raises_misuse("baton.redis:eval", 1, "script", nil, r.eval, r, 5)
      H.raises_misuse("baton.redis:eval", 2, "keys", nil, r.eval, r, "return 1", "k")
      H.raises_misuse("baton.redis:eval", 3, "args", nil, r.eval, r, "return 1", {}, { {} })
      H.raises("baton.redis:eval: bad argument #0 'self'", r.eval, {}, "return 1")
    end))
  end)

  describe("closing", function()
    it("close fails calls in flight with closed; later use raises", async(function()
      local r = connect()
      local t = baton.spawn(function() return table.pack(r:call("BLPOP", "k:never", 5)) end)
      baton.sleep(20)
      r:close()
      local _, res = t:join()
      H.assert_failure("baton.redis:call", "closed", table.unpack(res, 1, res.n))
      assert.is_true(r:closed())
      H.raises("baton.redis:call: .*closed", function() return r:call("PING") end)
      r:close()  -- twice is fine
    end))

    it("baton.run's end closes clients left open", function()
      local r
      baton.run(function() r = connect() end)
      assert.is_true(r:closed())
      assert.equal(0, baton.stats().handles)
    end)

    it("a client dropped without close is collected", async(function()
      do local r = connect(); r:call("PING") end
      collectgarbage()
      collectgarbage()
    end))
  end)

  describe("failures", function()
    it("connect to a closed port fails with connect", async(function()
      local p = assert(io.popen("python3 -c 'import socket; s=socket.socket(); "
                                .. "s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'"))
      local port = p:read("l")
      p:close()
      H.assert_failure("baton.redis.connect", "connect",
                       baton.redis.connect { url = "redis://127.0.0.1:" .. port })
      H.assert_failure("baton.redis.connect", "connect",
                       baton.redis.connect { path = server.dir .. "/nothing.sock" })
    end))

    it("resolves a host name on the loop's thread pool, not in hiredis on the loop", async(function()
      local r <close> = assert(baton.redis.connect { url = "redis://localhost:" .. server.port, reconnect = true })
      assert.equal("PONG", r:call("PING"))
      assert.is_true(r:call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no") >= 1)
      assert.equal("PONG", r:call("PING") or r:call("PING"))     -- reconnected, to the address
      -- a connect aborted while its name resolves leaves nothing behind (H.async checks)
      local started = false
      local t = baton.spawn(function()
        started = true
        return baton.redis.connect { url = "redis://localhost:" .. server.port }
      end)
      baton.yield()
      assert.is_true(started)
      t:abort()
      assert.is_false((t:join()))
      -- a name that does not resolve: connect (or timeout, when the resolver itself hangs)
      local msg, kind = H.assert_failure("baton.redis.connect", nil,
        baton.redis.connect { url = "redis://no-such-host.invalid:6379", timeout_ms = 3000 })
      assert.is_true(kind == "connect" or kind == "timeout", kind)
      if kind == "connect" then assert.matches("cannot resolve 'no%-such%-host%.invalid'", msg) end
    end))

    it("a wrong password fails with auth", async(function()
      local r <close> = connect()
      r:call("CONFIG", "SET", "requirepass", "sekrit")
      H.assert_failure("baton.redis.connect", "auth",
                       baton.redis.connect { url = server.url, password = "wrong" })
      H.assert_failure("baton.redis.connect", "auth", baton.redis.connect { url = server.url })
      local ok <close> = connect { url = "redis://:sekrit@127.0.0.1:" .. server.port }
      assert.equal("PONG", ok:call("PING"))
      r:call("CONFIG", "SET", "requirepass", "")
    end))

    it("a server killed mid-run fails calls with closed or io, without a crash",
       async(function()
      local r <close> = connect()
      local g <close> = baton.group()
      local kinds = {}
      for i = 1, 20 do
        g:spawn(function()
          local _, _, kind = r:call("BLPOP", "k:dead" .. i, 5)
          kinds[#kinds + 1] = kind
        end)
      end
      baton.sleep(30)
      server:kill()
      g:join_all()
      assert.equal(20, #kinds)
      for _, k in ipairs(kinds) do assert.is_true(k == "closed" or k == "io", k) end
      local _, _, kind = r:call("PING")
      assert.is_true(kind == "closed" or kind == "io", kind)
      server:start()
      assert.equal("PONG", connect():call("PING"))
    end))
  end)

  describe("pub/sub", function()
    it("delivers messages published after subscribe returns, in order", async(function()
      local r <close> = connect()
      local sub <close> = r:subscribe("ch:a", "ch:b")
      assert.equal(1, r:call("PUBLISH", "ch:a", "one"))
      r:call("PUBLISH", "ch:b", "two")
      r:call("PUBLISH", "ch:none", "lost")
      for i = 1, 100 do r:call("PUBLISH", "ch:a", "m" .. i) end
      assert.same({ "one", "ch:a" }, { sub:next(1000) })
      assert.same({ "two", "ch:b" }, { sub:next(1000) })
      for i = 1, 100 do assert.equal("m" .. i, (sub:next(1000))) end
      assert.equal(0, sub:dropped())
      -- a wait with a deadline, and a message that wakes a waiting task
      local _, _, detail = H.assert_failure("baton.redis.subscription:next", "timeout",
                                            sub:next(20))
      assert.equal(20, detail.timeout_ms)
      local t = baton.spawn(function() return sub:next() end)
      baton.sleep(10)
      r:call("PUBLISH", "ch:b", "late")
      assert.same({ true, "late", "ch:b" }, { t:join() })
      -- the client itself is still a client
      assert.equal("PONG", r:call("PING"))
    end))

    it("a waiting next is cancellable, and close or a lost connection ends it",
       async(function()
      local r <close> = connect()
      local sub = r:subscribe("ch:c")
      local ok, _, kind = baton.timeout(20, function() return sub:next() end)
      assert.is_nil(ok)
      assert.equal("timeout", kind)
      local t = baton.spawn(function() return table.pack(sub:next()) end)
      baton.sleep(10)
      sub:close()
      local _, res = t:join()
      H.assert_failure("baton.redis.subscription:next", "closed", table.unpack(res, 1, res.n))
      H.raises("baton.redis.subscription:next: .*closed", function() return sub:next() end)
      local s2 = r:subscribe("ch:d")
      local o <close> = connect()
      for _, line in ipairs((function()
        local l = {}
        for x in o:call("CLIENT", "LIST"):gmatch("[^\n]+") do l[#l + 1] = x end
        return l
      end)()) do
        if line:find("cmd=subscribe", 1, true) then
          o:call("CLIENT", "KILL", "ID", line:match("id=(%d+)"))
        end
      end
      local _, _, k2 = s2:next(1000)
      assert.is_true(k2 == "closed" or k2 == "io", tostring(k2))
      -- an idle subscription does not keep the run alive; the run's end closes it
      r:subscribe("ch:e")
    end))
  end)

  describe("reconnection", function()
    it("with reconnect = true, a client finds the server again, with backoff between tries",
       async(function()
      local r <close> = connect { url = server.url .. "/2", reconnect = true }
      assert.equal("PONG", r:call("PING"))
      server:kill()
      baton.sleep(20)  -- the end of the connection is seen
      -- the first call after the loss tries at once, and the refusal starts the backoff
      local _, _, kind = r:call("PING")
      assert.equal("connect", kind)
      local msg
      msg, kind = select(2, r:call("PING"))
      assert.equal("connect", kind)
      assert.matches("next attempt in %d+ ms", msg)
      server:start()
      local got
      local deadline = baton.now() + 3000
      repeat
        got = r:call("PING")
        if not got then baton.sleep(20) end
      until got or baton.now() > deadline
      assert.equal("PONG", got)
      -- the connection was set up again: the db of the url is selected
      assert.matches("db=2", r:call("CLIENT", "INFO"))
      -- without reconnect, a lost connection stays lost
      local once <close> = connect()
      server:kill()
      baton.sleep(20)
      server:start()
      H.assert_failure("baton.redis:call", "closed", once:call("PING"))
    end))
  end)

  describe("misuse", function()
    it("raises in the convention's form", async(function()
      H.raises_misuse("baton.redis.connect", 1, "opts", nil, baton.redis.connect, 5)
      H.raises("baton.redis.connect: .*unknown", function()
        return baton.redis.connect { url = server.url, nope = 1 }
      end)
      H.raises_misuse("baton.redis.connect", 1, "url", nil, baton.redis.connect,
                      { url = "http://x" })
      H.raises_misuse("baton.redis.connect", 1, "opts", "exactly one",
                      baton.redis.connect, {})
      local r <close> = connect()
      H.raises_misuse("baton.redis:call", 1, "cmd", nil, r.call, r)
      H.raises_misuse("baton.redis:call", 2, "arg", nil, r.call, r, "SET", {}, "x")
      H.raises("baton.redis:call: bad argument #0 'self'", r.call, {}, "PING")
    end))

    it("raises outside a task", function()
      H.raises("baton.redis.connect: .*task", baton.redis.connect, { url = "redis://127.0.0.1:1" })
    end)
  end)

  -- docs/errors.md, "Redis": each failure listed there, provoked.
  describe("baton.redis failures as docs/errors.md lists them", function()
    if not server then
      it("SKIPPED: " .. why, function() end)
      return
    end
    local fresh_port = function()
      local p = assert(io.popen("python3 -c 'import socket; s=socket.socket(); "
                                .. "s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'"))
      local port = p:read("l")
      p:close()
      return port
    end
    local ROWS = {
      { "baton.redis.connect", "connect", function()
        return baton.redis.connect { url = "redis://127.0.0.1:" .. fresh_port() }
      end },
      { "baton.redis.connect", "timeout", function()
        local o <close> = connect()
        o:call("CLIENT", "PAUSE", 300, "ALL")
        return baton.redis.connect { url = server.url, timeout_ms = 30 }
      end, detail = { timeout_ms = 30 } },
      { "baton.redis.connect", "auth", function()
        return baton.redis.connect { url = server.url, password = "wrong" }
      end },
      { "baton.redis.connect", "redis", function()
        return baton.redis.connect { url = server.url .. "/9999" }
      end },
      { "baton.redis:call", "redis", function()
        local r <close> = connect()
        return r:call("NOSUCHCOMMAND")
      end },
      { "baton.redis:call", "timeout", function()
        local r <close> = connect { timeout_ms = 20 }
        local res = table.pack(r:call("BLPOP", "k:rows", 1))
        r:close()
        return table.unpack(res, 1, res.n)
      end, detail = { timeout_ms = 20 } },
      { "baton.redis:eval", "redis", function()
        local r <close> = connect()
        return r:eval("return redis.error_reply('no')")
      end },
      { "baton.redis:eval", "timeout", function()
        local r <close> = connect { timeout_ms = 20 }
        -- a script that keeps the server busy for 100 ms
        local res = table.pack(r:eval([[
          local t = redis.call('TIME')
          repeat local n = redis.call('TIME')
          until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 100000
          return 1]]))
        r:close()
        return table.unpack(res, 1, res.n)
      end, detail = { timeout_ms = 20 } },
      { "baton.redis:eval", "closed", function()
        local r <close> = connect()
        local o <close> = connect()
        o:call("CLIENT", "KILL", "ID", r:call("CLIENT", "ID"))
        baton.sleep(20)  -- the end of the connection is seen before anything is sent
        return r:eval("return 1")
      end },
      { "baton.redis:subscribe", "timeout", function()
        local r <close> = connect { timeout_ms = 30 }
        local o <close> = connect()
        o:call("CLIENT", "PAUSE", 200, "ALL")
        local res = table.pack(r:subscribe("ch:rows"))
        baton.sleep(250)
        return table.unpack(res, 1, res.n)
      end, detail = { timeout_ms = 30 } },
      { "baton.redis.subscription:next", "timeout", function()
        local r <close> = connect()
        local sub <close> = r:subscribe("ch:rows")
        return sub:next(20)
      end, detail = { timeout_ms = 20 } },
      { "baton.redis.subscription:next", "closed", function()
        local r <close> = connect()
        local sub <close> = r:subscribe("ch:rows")
        local t = baton.spawn(function() return table.pack(sub:next()) end)
        baton.sleep(10)
        sub:close()
        local _, res = t:join()
        return table.unpack(res, 1, res.n)
      end },
      { "baton.redis:pipeline", "timeout", function()
        local r <close> = connect { timeout_ms = 20 }
        local res = table.pack(r:pipeline(function(p) p:call("BLPOP", "k:rows", 1) end))
        r:close()
        return table.unpack(res, 1, res.n)
      end, detail = { timeout_ms = 20 } },
      { "baton.redis:pipeline", "closed", function()
        local r <close> = connect()
        local o <close> = connect()
        o:call("CLIENT", "KILL", "ID", r:call("CLIENT", "ID"))
        baton.sleep(20)  -- the end of the connection is seen before anything is sent
        return r:pipeline(function(p) p:call("PING") end)
      end },
      { "baton.redis:call", "closed", function()
        local r <close> = connect()
        local o <close> = connect()
        local id = r:call("CLIENT", "ID")
        o:call("CLIENT", "KILL", "ID", id)
        baton.sleep(20)  -- the end of the connection is seen before anything is sent
        return r:call("PING")
      end },
    }
    -- Not provoked: running out of memory or descriptors (resource), a peer that is not
    -- Redis (protocol), a connection reset rather than closed (io: a killed server gives
    -- closed or io, "a server killed mid-run" above accepts either); connect from a call
    -- (reconnect = true), which "reconnection" above provokes with the server killed;
    -- subscribe's closed (the server ends the new connection before it confirms) and
    -- connect (the server went away since the client connected).
    local EXEMPT = { ["baton.redis.connect resource"] = true, ["baton.redis:call resource"] = true,
                     ["baton.redis:call protocol"] = true, ["baton.redis:call io"] = true,
                     ["baton.redis:pipeline resource"] = true,
                     ["baton.redis:eval resource"] = true, ["baton.redis:eval protocol"] = true,
                     ["baton.redis:eval io"] = true, ["baton.redis:call connect"] = true,
                     ["baton.redis:eval connect"] = true,
                     ["baton.redis:subscribe io"] = true, ["baton.redis:subscribe closed"] = true, ["baton.redis:subscribe connect"] = true,
                     ["baton.redis:subscribe resource"] = true,
                     ["baton.redis.subscription:next io"] = true, ["baton.redis:pipeline connect"] = true,
                     ["baton.redis:pipeline protocol"] = true, ["baton.redis:pipeline io"] = true }
    H.failure_rows(it, "Redis", ROWS, EXEMPT)
  end)
end)
