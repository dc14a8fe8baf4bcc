-- router.lua — an LLM traffic router in front of three fake deployments of one model. A
-- local server (spec/fixtures/http/server.py) stands in for the providers: each deployment
-- answers, at random, 429 with Retry-After (the router cools it down 200 ms and takes the
-- next), slowly (past the deployment's 250 ms attempt timeout: the next), a context-length
-- error (the request goes to the larger-context group), or OK with its token usage. 200
-- requests run 16 at a time, each under ONE 2 s deadline; then the per-deployment usage
-- table, a few ledgers (why each attempt went where it did), and the check that usage()
-- sums what the ledgers say.
--
--   baton examples/router.lua        (from the repository's root)
local baton = require "baton"
local http = baton.http

-- The stand-in providers: the fixture server on a free port.
local srv <close> = assert(baton.process.spawn { "python3", "-u", "spec/fixtures/http/server.py" })
local port = assert(assert(srv:read_line(5000), "the server did not start"):match("^PORT (%d+)"))
local base = "http://127.0.0.1:" .. port

-- A deployment whose n-th attempt gets the server's n-th random answer for `seed`.
local function fake(name, seed, extra)
  local n = 0
  local d = {
    name = name, model = "chat-model", rpm = 6000, tpm = 2000000, max_parallel = 6, timeout_ms = 250,
    cost = { input = 2.5e-6, output = 1e-5 },
    call = function(_, ctx)
      n = n + 1
      return http.request { url = ("%s/llm/random?seed=%d&n=%d"):format(base, seed, n), timeout_ms = ctx.timeout_ms }
    end,
  }
  for k, v in pairs(extra or {}) do d[k] = v end
  return d
end

local router = baton.router {
  deployments = {
    fake("east", 1), fake("west", 2), fake("central", 3),
    { name = "long", model = "long-model", context_window = 1000000, cost = { input = 1e-6, output = 4e-6 },
      call = function(_, ctx)
        return http.request { url = base .. "/llm/ok?ms=20&in=90000&out=50&style=anthropic",
                              timeout_ms = ctx.timeout_ms }
      end },
  },
  groups = { chat = { "east", "west", "central" }, long = { "long" } },
  context_fallbacks = { chat = { "long" } },
  cooldown_ms = 200,
}

baton.run(function()
  local ledgers, kinds, ok, failed = {}, {}, 0, 0
  local g <close> = baton.group { limit = 16 }
  for i = 1, 200 do
    g:spawn(function()
      local resp, a, kind, detail = router:call("chat", { id = i }, { estimate_tokens = 500, timeout_ms = 2000 })
      if resp then
        ok = ok + 1
        ledgers[i] = a
      else
        failed = failed + 1
        kinds[kind] = (kinds[kind] or 0) + 1
        ledgers[i] = detail.ledger
      end
    end)
  end
  g:join_all()

  print(("%-8s %8s %4s %6s %s"):format("", "attempts", "ok", "cost", "errors / latency / cooldown"))
  local usage = router:usage()
  for _, name in ipairs { "east", "west", "central", "long" } do
    local u = usage[name]
    local errs = {}
    for class, n in pairs(u.errors) do errs[#errs + 1] = class .. "=" .. n end
    table.sort(errs)
    print(("%-8s %8d %4d %6.3f %s; p50 %.0f ms p95 %.0f ms p99 %.0f ms; %d ms in cooldown"):format(
      name, u.attempts, u.ok, u.cost, #errs > 0 and table.concat(errs, " ") or "no errors",
      u.p50_ms or 0, u.p95_ms or 0, u.p99_ms or 0, math.floor(u.cooldown_ms)))
  end

  print("\nsome ledgers (deployment why -> class action, ms):")
  local shown = 0
  for i = 1, 200 do
    local l = ledgers[i]
    if l and #l > 1 and shown < 4 then
      shown = shown + 1
      local steps = {}
      for _, row in ipairs(l) do
        local what = row.class and (row.class .. " " .. row.action) or "ok"
        steps[#steps + 1] = ("%s %s -> %s, %.0f ms"):format(row.deployment, row.why, what, row.ms)
      end
      print(("  #%d: %s"):format(i, table.concat(steps, " | ")))
    end
  end

  -- usage() is the sum of the ledgers
  local attempts = {}
  for i = 1, 200 do
    for _, row in ipairs(ledgers[i]) do attempts[row.deployment] = (attempts[row.deployment] or 0) + 1 end
  end
  local match = true
  for name, u in pairs(usage) do match = match and u.attempts == (attempts[name] or 0) end
  local fk = {}
  for k, n in pairs(kinds) do fk[#fk + 1] = k .. "=" .. n end
  table.sort(fk)
  print(("\nrequests: 200, ok: %d, failed: %d (%s); usage matches the ledgers: %s"):format(
    ok, failed, #fk > 0 and table.concat(fk, " ") or "none", tostring(match)))
end)
srv:kill()
