-- Every example runs as its header says (`baton examples/<name>.lua` from the repository's
-- root), exits 0 with nothing on stderr, and prints the line that shows it did its job.
-- BATON_EXE names the executable (ctest sets it).
local EXE = os.getenv("BATON_EXE") or "build/baton"
local SRC = os.getenv("BATON_SRC") or "."

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  os.remove(path)
  return s
end

local function run(name)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ("cd %s && timeout 120 %s examples/%s.lua </dev/null >%s 2>%s")
              :format(q(SRC), q(EXE), name, q(out), q(err))
  local _, how, code = os.execute(cmd)
  return { code = how == "exit" and code or 128 + code, out = slurp(out), err = slurp(err) }
end

local function have(path)
  local f = io.open(SRC .. "/" .. path)
  if f then f:close() end
  return f ~= nil
end

local cases = {
  { "fanout", "summary: %d+ settled, %d+ failed, %d+ still pending at the deadline" },
  { "speculate", "shutdown: 0 pending; host slots in use: {}" },
  { "fallback", "done: in use 0, waiting 0" },
  { "resilient_call", "the tool ran %d+ times for 8 requests; breaker closed" },
  { "http_gateway", "settled  /README.md%s+via fallback status 200" },
  { "http_gateway", "provider stopped; 0 transfers in flight" },
  { "pipeline_channels", "accounted for: 40 of 40 jobs" },
  { "pipeline_channels", "clean: 0 tasks left, jobs closed, results closed" },
  { "mcp_prefetch", "closed: server pid %d+ still alive: false",
    need = "spec/fixtures/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" },
}

describe("examples", function()
  local ran = {}
  for _, c in ipairs(cases) do
    local name, pattern = c[1], c[2]
    local test = (c.need and not have(c.need)) and pending or it
    test(name .. ".lua runs and prints " .. pattern, function()
      ran[name] = ran[name] or run(name)
      local r = ran[name]
      assert.equal("", r.err)
      assert.equal(0, r.code)
      assert.truthy(r.out:find(pattern), "missing in the output:\n" .. r.out)
    end)
  end
end)
