-- mcp_prefetch.lua — speculative prefetch of MCP tool calls. A real MCP server (the
-- reference server-filesystem, on a scratch directory) is driven by baton.mcp; the calls an
-- agent will probably make next are dispatched through baton.engine with
-- mcp.dispatcher(client): at most 4 in flight, 2 per "host" (here: per server), one 300 ms
-- deadline for the batch. What lands in time is printed (status, tool, elapsed); one call
-- fails on purpose (a path outside the allowed directory) and shows as a failed outcome;
-- then a call skipped for max_parallel is dispatched again; then the engine shuts down and the client closes,
-- leaving no process behind.
--
--   build/baton examples/mcp_prefetch.lua        (after `bash scripts/deps.sh`)
local baton = require "baton"
local mcp = require "baton.mcp"

local server = "spec/fixtures/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js"
if not io.open(server) then
  io.stderr:write("mcp_prefetch: ", server, " is missing: run `bash scripts/deps.sh` first\n")
  os.exit(1)
end

-- A scratch directory with a few files for the server to serve.
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p '" .. dir .. "/src'")
dir = io.popen("realpath '" .. dir .. "'"):read("l")
for name, text in pairs { ["README.md"] = "# demo\nA scratch project.\n",
                          ["src/main.lua"] = "print('hello')\n",
                          ["notes.txt"] = ("a line of notes\n"):rep(2000) } do
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(text)
  f:close()
end

local t0 = baton.now()
local function say(fmt, ...) print(("[%4d ms] " .. fmt):format(baton.now() - t0, ...)) end

local client <close> = assert(mcp.connect { command = { "node", server, dir } })
say("connected to %s %s (protocol %s)", client.server_info.name, client.server_info.version,
    client.protocol_version)

local engine <close> = baton.engine {
  max_parallel = 4,   -- prefetches in flight
  per_host_cap = 2,   -- per server
  timeout_ms = 300,   -- the batch's one deadline
  dispatcher = mcp.dispatcher(client, { timeout_ms = 5000, body = mcp.text }),
}

local host = "mcp:filesystem"
local skips = engine:dispatch {
  { tool = "list_directory", args = { path = dir }, host = host },
  { tool = "read_text_file", args = { path = dir .. "/README.md" }, host = host },
  { tool = "read_text_file", args = { path = dir .. "/src/main.lua" } },
  { tool = "get_file_info", args = { path = "/etc/passwd" } },          -- fails: not allowed
  { tool = "directory_tree", args = { path = dir } },                   -- skipped: max_parallel
  { tool = "write_file", args = { path = dir .. "/x" }, speculate = false },  -- side effect
}
for _, o in ipairs(skips) do say("skipped  %-15s %s", o.tool, o.reason) end

local function report(outcomes)
  for _, o in ipairs(outcomes) do
    if o.status == "settled" then
      local first = tostring(o.body):match("[^\n]*")
      say("settled  %-15s after %3d ms: %s", o.tool, o.elapsed_ms, first)
    else
      say("failed   %-15s after %3d ms: %s (%s)", o.tool, o.elapsed_ms, o.error.message,
          o.error.kind)
    end
  end
end

report(engine:wait_within())
say("batch collected (everything lands well before the deadline); %d pending", engine:pending())

-- The slot the skipped call needed is free again: dispatch it, then collect what is late.
engine:dispatch { { tool = "directory_tree", args = { path = dir } } }
report(engine:wait_within(2000))

engine:shutdown()
local s = engine:stats()
say("engine: dispatched %d, settled %d, failed %d, won the race %d", s.dispatched, s.settled,
    s.failed, s.won_race)
local cs = client:stats()
say("client: %d messages sent, %d received", cs.sent, cs.received)
local pid = client:pid()
client:close()  -- stdin closed: the server exits on EOF; TERM/KILL would follow otherwise
say("closed: server pid %d still alive: %s", pid, tostring(os.execute("kill -0 " .. pid .. " 2>/dev/null") == true))
os.execute("rm -rf '" .. dir .. "'")
