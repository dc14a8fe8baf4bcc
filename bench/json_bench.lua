-- baton.json.decode beside lua-cjson (when installed) on two texts: a 110-byte MCP reply
-- and an 18 KB array of 200 small objects. Not a test: it measures. Prints one JSON line
-- per (text, decoder) with ns per decode and MB/s (CPU time, os.clock).
--   lua5.4 bench/json_bench.lua [n]   (with baton.so on LUA_CPATH; or build/baton ...)
local baton = require "baton"
local json = baton.json
local ok, cjson = pcall(require, "cjson")

local n = math.tointeger(tonumber(arg and arg[1] or "200000"))
local reply = '{"jsonrpc":"2.0","id":12345,"result":{"content":[{"type":"text",' ..
              '"text":"Echo: hello world"}],"isError":false}}'
local items = {}
for i = 1, 200 do
  items[i] = { id = i, name = "item" .. i, score = i / 7, tags = { "a", "b\n" }, ok = true,
               none = json.null }
end
local texts = { { "mcp_reply", reply, n }, { "array_200_objects", json.encode(items), n // 100 } }

local decoders = { { "baton", json.decode } }
if ok then decoders[#decoders + 1] = { "lua-cjson", cjson.decode } end

for _, t in ipairs(texts) do
  local name, text, count = t[1], t[2], t[3]
  for _, d in ipairs(decoders) do
    local decode = d[2]
    for _ = 1, count // 10 do decode(text) end  -- warm up
    local t0 = os.clock()
    for _ = 1, count do decode(text) end
    local dt = os.clock() - t0
    print(json.encode { text = name, bytes = #text, decoder = d[1],
                        ns_per_decode = math.floor(dt / count * 1e9 + 0.5),
                        mb_per_s = math.floor(#text * count / dt / 1e5 + 0.5) / 10 })
  end
end
