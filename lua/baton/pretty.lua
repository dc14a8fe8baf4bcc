-- baton.pretty — renders Lua values for people: what the REPL prints, usable from scripts.
--
--   local pretty = require "baton.pretty"
--   print(pretty.format({ 1, 2, name = "x", nested = { ok = true } }))
--   --> { 1, 2, name = "x", nested = { ok = true } }
--   pretty.print(a, b)          -- like print, each value formatted
--   pretty(v, opts)             -- the module is callable: pretty.format
--
-- Rules: strings are quoted (escapes for control characters and quotes, other bytes as
-- they are); a table's sequence part 1..n comes first, then the other keys sorted (numbers,
-- then strings, then booleans, then the rest by their tostring); identifier keys print bare;
-- a table or userdata with __tostring prints through it; a table that contains itself is
-- marked: `<1>{ self = <cycle 1> }`; a table shown once already elsewhere in the same output
-- is shown again (only cycles are marked); tables deeper than `depth`, and any after the
-- first 10000 opened, print as `{...}`; more than `items` entries are elided with a count
-- (`... 900 more`). A table that fits in `width` columns prints on one line, else one
-- entry per line, indented (short sequence items share lines).
--
-- Options (all optional): indent (string, "  "), width (80), depth (8), items (100).
-- Raises only on bad options; never for a value: a failing __tostring prints as
-- `<__tostring failed: msg>`.
-- Reads tables raw (no __index, __pairs): what is printed is what is there.

local M = {}

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch("%a+") do KEYWORDS[w] = true end

local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\a"] = "\\a", ["\b"] = "\\b", ["\f"] = "\\f",
              ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\v"] = "\\v" }

-- Quoted so that it reads back as the same string: a control character is written `\ddd`
-- in decimal, padded to three digits when a digit follows.
local function quote(s)
  local out = s:gsub('([%c"\\])()', function(c, pos)
    if ESC[c] then return ESC[c] end
    local nextc = s:sub(pos, pos)
    if nextc:match("%d") then return string.format("\\%03d", c:byte()) end
    return "\\" .. c:byte()
  end)
  return '"' .. out .. '"'
end

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil and not KEYWORDS[k]
end

local TYPE_RANK = { number = 1, string = 2, boolean = 3 }

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  local ra, rb = TYPE_RANK[ta] or 4, TYPE_RANK[tb] or 4
  if ra ~= rb then return ra < rb end
  if ta == "number" or ta == "string" then
    if ta == tb then return a < b end
  elseif ta == "boolean" then
    return (not a) and b
  end
  return tostring(a) < tostring(b)
end

-- tostring through __tostring (or __name) without raising.
local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return "<__tostring failed: " .. tostring(s) .. ">"
end

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

local function scalar(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" then
    if v ~= v then return "0/0" end
    if v == math.huge then return "math.huge" end
    if v == -math.huge then return "-math.huge" end
    return tostring(v)
  end
  return safe_tostring(v)
end

local function format_key(k)
  if is_identifier(k) then return k end
  if type(k) == "table" and not has_tostring(k) then return "[" .. safe_tostring(k) .. "]" end
  return "[" .. scalar(k) .. "]"
end

local function options(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'baton.pretty.format' (table expected, got " .. type(opts) .. ")", 3)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "indent" and k ~= "width" and k ~= "depth" and k ~= "items" then
      error("baton.pretty.format: unknown option '" .. tostring(k) .. "'", 3)
    end
  end
  return {
    indent = opts.indent or "  ",
    width = opts.width or 80,
    depth = opts.depth or 8,
    items = opts.items or 100,
  }
end

-- What a table shows: its sequence length n, the keys shown in order (1..n, then the
-- others sorted; at most o.items), and how many entries it has in all.
local function entries(v, o)
  local n = 0
  while rawget(v, n + 1) ~= nil do n = n + 1 end
  local others, total = {}, n
  for k in next, v do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      others[#others + 1] = k
      total = total + 1
    end
  end
  table.sort(others, key_less)
  local keys = {}
  for i = 1, math.min(n, o.items) do keys[i] = i end
  for _, k in ipairs(others) do
    if #keys >= o.items then break end
    keys[#keys + 1] = k
  end
  return n, keys, total
end

-- Both passes walk the same way: a table is opened (its entries shown) unless it prints
-- through __tostring, is an ancestor (a cycle), lies at `depth`, or the budget of opened
-- tables (which bounds the work on shared sub-tables) is spent.
local BUDGET = 10000

local function opens(v, o, level, path, st)
  if type(v) ~= "table" or has_tostring(v) or path[v] then return false end
  if level >= o.depth or st.budget <= 0 or next(v) == nil then return false end
  st.budget = st.budget - 1
  return true
end

-- First pass: the tables that some cycle points back to.
local function find_cycles(v, o, level, path, st)
  if type(v) == "table" and path[v] then st.targets[v] = true end
  if not opens(v, o, level, path, st) then return end
  path[v] = true
  local _, keys = entries(v, o)
  for _, k in ipairs(keys) do find_cycles(rawget(v, k), o, level + 1, path, st) end
  path[v] = nil
end

-- Second pass: the text. Cycle targets are numbered as they appear, before their contents.
local function render(v, o, level, path, st)
  if type(v) ~= "table" or has_tostring(v) then return scalar(v) end
  if path[v] then return "<cycle " .. st.labels[v] .. ">" end
  if not opens(v, o, level, path, st) then return next(v) == nil and "{}" or "{...}" end
  local head = ""
  if st.targets[v] then
    if not st.labels[v] then
      st.n = st.n + 1
      st.labels[v] = st.n
    end
    head = "<" .. st.labels[v] .. ">"
  end
  path[v] = true
  local n, keys, total = entries(v, o)
  local parts = {}
  for i, k in ipairs(keys) do
    local text = render(rawget(v, k), o, level + 1, path, st)
    parts[i] = i <= n and text or (format_key(k) .. " = " .. text)
  end
  path[v] = nil
  if total > #keys then parts[#parts + 1] = "... " .. (total - #keys) .. " more" end

  local one = head .. "{ " .. table.concat(parts, ", ") .. " }"
  if #one + #o.indent * level <= o.width and not one:find("\n", 1, true) then return one end
  -- One entry per line, except that short sequence items share lines up to the width.
  local pad = o.indent:rep(level + 1)
  local lines, line = {}, nil
  local seq = math.min(n, #keys)
  for i, part in ipairs(parts) do
    local packable = i <= seq and not part:find("\n", 1, true)
    if line and packable and #pad + #line + #part + 3 <= o.width then
      line = line .. ", " .. part
    else
      if line then lines[#lines + 1] = line end
      line = part
    end
    if not packable then
      lines[#lines + 1] = line
      line = nil
    end
  end
  if line then lines[#lines + 1] = line end
  return head .. "{\n" .. pad .. table.concat(lines, ",\n" .. pad) .. "\n" ..
         o.indent:rep(level) .. "}"
end

--- The value as text. opts: indent, width, depth, items (see the top of the file).
function M.format(v, opts)
  local o = options(opts)
  local st = { budget = BUDGET, targets = {} }
  find_cycles(v, o, 0, {}, st)
  st.budget, st.labels, st.n = BUDGET, {}, 0
  return render(v, o, 0, {}, st)
end

--- Like print, with each value formatted (tab-separated, one newline at the end).
function M.print(...)
  local n = select("#", ...)
  local out = {}
  for i = 1, n do out[i] = M.format((select(i, ...))) end
  print(table.concat(out, "\t"))
end

M.quote = quote

return setmetatable(M, { __call = function(_, v, opts) return M.format(v, opts) end })
