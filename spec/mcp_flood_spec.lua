-- baton.mcp against a server that floods it with requests and never reads its stdin
-- (spec/fixtures/mcp/fake_server.py --flood): the client's answers back up in the stdin
-- pipe, proc:write waits (backpressure), so the reader stops reading and the server blocks
-- on its own stdout. Baton's memory stays bounded. A file of its own: the peak RSS it
-- measures is this process's, with nothing else of the suite in it.
local baton = require "baton"
local H = require "spec.helper"
local mcp = require "baton.mcp"

local FAKE = H.mcp.FAKE
local fake_it = H.gated(not H.have("python3") and "python3 is missing")

-- Sanitizers keep freed memory in quarantine and shadow every byte: a looser bound there.
local LIMIT_KB = H.SANITIZED and 400 * 1024 or 100 * 1024

local function status_kb(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

-- Starts measuring the peak RSS from now (Linux: "5" to clear_refs resets VmHWM); the
-- caller also samples VmRSS, for a kernel that does not allow the reset.
local function reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if f then
    f:write("5")
    f:close()
  end
end

-- Waits until the server has sent all n requests or has been blocked (no progress on its
-- stderr) for 2 s; returns how many it sent and the peak RSS seen meanwhile, in kB.
local function watch(c, n)
  local peak, last, still_since = 0, -1, baton.now()
  local deadline = baton.now() + 150000
  while baton.now() < deadline do
    baton.sleep(100)
    peak = math.max(peak, status_kb("VmRSS"))
    local err = c:stderr()
    local sent = tonumber(err:match(".*flood: sent (%d+)")) or 0
    if sent >= n then return sent, peak end
    if sent ~= last then
      last, still_since = sent, baton.now()
    elseif baton.now() - still_since > 2000 then
      return sent, peak
    end
  end
  error("the flood neither ended nor stopped")
end

describe("baton.mcp against a server that floods requests and never reads", function()
  fake_it("1M pings: the client stops reading, peak RSS stays under 100 MB, close() is prompt",
    H.async(function()
      local n = 1000000
      collectgarbage()
      reset_peak()
      local c = assert(mcp.connect { command = { "python3", FAKE, "--flood", tostring(n) } })
      local sent, peak = watch(c, n)
      peak = math.max(peak, status_kb("VmHWM"))
      assert.is_true(peak < LIMIT_KB, "peak RSS " .. peak .. " kB")
      assert.is_true(sent < n, "the server sent all its requests: nothing held it back")
      local s = c:stats()
      assert.is_true(s.server_requests < n / 4, s.server_requests .. " requests were read")
      -- A call waits in its write, within its deadline.
      assert.same({ nil, "baton.mcp.client:ping: timed out after 200 ms", "timeout",
                    { timeout_ms = 200 } }, { c:ping { timeout_ms = 200 } })
      local elapsed = H.timed(c.close, c, 500)
      assert.is_true(elapsed < 5000, "close took " .. elapsed .. " ms")
      assert.equal(0, baton.stats().processes)
    end))

  fake_it("a flood of requests with a handler: at most 64 handler tasks, the rest refused",
    H.async(function()
      local n = 200000
      collectgarbage()
      reset_peak()
      local c = assert(mcp.connect { command = { "python3", FAKE, "--flood", tostring(n),
                                                 "--flood-method", "sampling/createMessage" },
                                     on_warning = function() end })
      local most = 0
      c:handle("sampling/createMessage", function()
        most = math.max(most, baton.stats().tasks)
        baton.sleep(50)
        return { role = "assistant", content = { type = "text", text = "ok" } }
      end)
      local sent, peak = watch(c, n)
      peak = math.max(peak, status_kb("VmHWM"))
      assert.is_true(peak < LIMIT_KB, "peak RSS " .. peak .. " kB")
      assert.is_true(sent < n, "the server sent all its requests: nothing held it back")
      assert.is_true(most <= 64 + 4, most .. " tasks at once")
      assert.is_true(c:stats().rejected > 0)
      c:close(500)
      assert.equal(0, baton.stats().processes)
    end))
end)
