-- The documentation's Lua runs: every ```lua block of README.md and docs/*.md is run as it
-- is by the `baton` executable and must exit 0 with nothing on stderr, unless its fence
-- says ```lua fragment (a synopsis, or an excerpt of a larger program). Any other tag that
-- starts with "lua" is a mistake and fails here, so a typo cannot hide a block.
--
-- Each block runs on its own from spec/fixtures/mcp, where `npx` finds the pinned MCP
-- servers without the network (npm_config_offline=true: it never fetches), with CHAT_URL
-- naming the local HTTP fixture server's /echo. A block that needs npx is pending when node
-- or the pinned servers are missing.
local H = require "spec.helper"

local SRC = H.SRC

-- The documents: README.md and docs/*.md.
local function documents()
  local out = { "README.md" }
  local p = assert(io.popen("cd " .. H.q(SRC .. "/docs") .. " && ls *.md"))
  for name in p:lines() do out[#out + 1] = "docs/" .. name end
  p:close()
  return out
end

-- The fenced blocks of a Markdown file whose info string starts with "lua":
-- { { file =, line = (of the opening fence), tag =, code = }... }. A fence may be indented
-- (inside a list item): the block's lines lose that indentation.
local function lua_blocks(file)
  local text = assert(H.slurp(SRC .. "/" .. file), "cannot read " .. file)
  local out, n, open = {}, 0, nil
  for line in (text .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if open then
      if line:match("^%s*```%s*$") then
        if open.tag:match("^lua") then
          open.code = table.concat(open.lines, "\n") .. "\n"
          out[#out + 1] = open
        end
        open = nil
      else
        local body = line:sub(1, #open.indent) == open.indent and line:sub(#open.indent + 1)
                     or line:match("^%s*(.*)$")
        open.lines[#open.lines + 1] = body
      end
    else
      local indent, tag = line:match("^(%s*)```%s*(.-)%s*$")
      if indent then open = { file = file, line = n, tag = tag, indent = indent, lines = {} } end
    end
  end
  assert(open == nil, file .. ": a fence opened on line " .. (open and open.line or 0)
                      .. " is never closed")
  return out
end

local runnable, fragments, unknown = {}, {}, {}
for _, file in ipairs(documents()) do
  for _, b in ipairs(lua_blocks(file)) do
    if b.tag == "lua" then
      runnable[#runnable + 1] = b
    elseif b.tag == "lua fragment" then
      fragments[#fragments + 1] = b
    else
      unknown[#unknown + 1] = ("%s:%d: ```%s"):format(b.file, b.line, b.tag)
    end
  end
end

local have_npx = H.have("npx") and H.exists(H.mcp.FILESYSTEM)

describe("the documentation's Lua blocks", function()
  local server = H.http_server()
  lazy_setup(function() server:start() end)
  lazy_teardown(function() server:stop() end)

  it("are all tagged lua or lua fragment, and the README's all run", function()
    assert.same({}, unknown)
    local readme = 0
    for _, b in ipairs(runnable) do
      if b.file == "README.md" then readme = readme + 1 end
    end
    assert.is_true(readme >= 2, "the README's snippets are not found")
    for _, b in ipairs(fragments) do
      assert.are_not.equal("README.md", b.file, "a fragment in the README, line " .. b.line)
    end
    assert.is_true(#runnable >= 6, "only " .. #runnable .. " runnable blocks found")
  end)

  for _, b in ipairs(runnable) do
    local name = ("%s:%d runs and exits 0"):format(b.file, b.line)
    local needs_npx = b.code:find("npx", 1, true) ~= nil
    local test = (needs_npx and not have_npx)
      and function(n) pending(n .. " -- npx or the pinned MCP servers are missing") end or it
    test(name, function()
      local path = H.write_temp(b.code)
      local r = H.run(H.q(path), {
        cwd = H.mcp.FIX, timeout = 120,
        env = "npm_config_offline=true CHAT_URL=" .. H.q(server:url("/echo")),
      })
      os.remove(path)
      local report = ("exit %d\n--- the block:\n%s--- stdout:\n%s--- stderr:\n%s")
                     :format(r.code, b.code, r.out, r.err)
      assert(r.code == 0 and r.err == "", report)
    end)
  end
end)
