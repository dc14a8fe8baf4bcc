---@meta baton.pretty
-- require "baton.pretty" (lua/baton/pretty.lua): the REPL's printer. Checked by spec/types_spec.lua.

---@class baton.pretty.Options
---@field indent? string default two spaces
---@field width? integer default 80
---@field depth? integer default 8
---@field items? integer default 100

---@class baton.pretty
---@overload fun(v: any, opts?: baton.pretty.Options): string
local pretty = {}

---Sorted keys, quoted strings, cycles marked, long tables elided.
---@param v any
---@param opts? baton.pretty.Options
---@return string
function pretty.format(v, opts) end

---Prints each value formatted.
function pretty.print(...) end

---A string quoted as Lua would read it back.
---@param s string
---@return string
function pretty.quote(s) end

return pretty
