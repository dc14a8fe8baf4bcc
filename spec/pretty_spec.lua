-- baton.pretty: how the REPL shows values, and what scripts get from require "baton.pretty".
local pretty = require "baton.pretty"
local fmt = pretty.format

describe("baton.pretty", function()
  describe("scalars", function()
    it("quotes strings so that they read back as the same string", function()
      assert.equal('"hi"', fmt("hi"))
      assert.equal('"say \\"x\\"\\n\\ttab \\\\ back"', fmt('say "x"\n\ttab \\ back'))
      for _, s in ipairs({ "\0", "\1" .. "2", "\127", "caf\195\169", "\r\a\b\f\v", "" }) do
        assert.equal(s, load("return " .. fmt(s))())
      end
      assert.equal('"\\0012"', fmt("\1" .. "2"))  -- a digit after an escape: three digits
    end)

    it("writes numbers, booleans and nil as Lua does, and the odd floats as expressions",
       function()
      assert.equal("42", fmt(42))
      assert.equal("1.0", fmt(1.0))
      assert.equal("-0.5", fmt(-0.5))
      assert.equal("math.huge", fmt(math.huge))
      assert.equal("-math.huge", fmt(-math.huge))
      assert.equal("0/0", fmt(0 / 0))
      assert.equal("true", fmt(true))
      assert.equal("nil", fmt(nil))
    end)

    it("shows functions, threads and userdata by tostring, through __tostring", function()
      assert.matches("^function: ", fmt(print))
      assert.matches("^thread: ", fmt(coroutine.create(print)))
      assert.matches("^file %(", fmt(io.stdout))
      local obj = setmetatable({ hidden = true }, { __tostring = function() return "OBJ" end })
      assert.equal("OBJ", fmt(obj))
      assert.equal("{ OBJ }", fmt({ obj }))
    end)

    it("never raises: a failing __tostring is shown as such", function()
      local bad = setmetatable({}, { __tostring = function() error("no way") end })
      assert.matches("^<__tostring failed: .*no way>$", fmt(bad))
    end)
  end)

  describe("tables", function()
    it("prints the sequence first, then the other keys sorted", function()
      assert.equal("{}", fmt({}))
      assert.equal('{ 1, 2, 3 }', fmt({ 1, 2, 3 }))
      assert.equal('{ "x", a = 1, b = 2, z = 3 }', fmt({ z = 3, b = 2, a = 1, "x" }))
      assert.equal('{ [-1] = "m", [0] = "z", [1.5] = "f", [10] = "t", k = "v", [true] = 1 }',
                   fmt({ [10] = "t", k = "v", [0] = "z", [-1] = "m", [1.5] = "f", [true] = 1 }))
    end)

    it("writes keys that are not identifiers in brackets, quoted", function()
      assert.equal('{ ["1x"] = 3, ["a b"] = 1, ["end"] = 2 }',
                   fmt({ ["a b"] = 1, ["end"] = 2, ["1x"] = 3 }))
    end)

    it("nests, breaking a table over lines when it does not fit the width", function()
      assert.equal("{ a = { b = { c = {} } } }", fmt({ a = { b = { c = {} } } }))
      local t = { name = string.rep("n", 40), list = { 1, 2, 3 }, ok = true, sub = { x = 1 } }
      assert.equal('{\n  list = { 1, 2, 3 },\n  name = "' .. string.rep("n", 40) .. '",\n' ..
                   '  ok = true,\n  sub = { x = 1 }\n}', fmt(t))
      assert.equal('{\n    list = { 1, 2, 3 },\n    name = "' .. string.rep("n", 40) ..
                   '",\n    ok = true,\n    sub = { x = 1 }\n}', fmt(t, { indent = "    " }))
    end)

    it("packs short sequence items on shared lines", function()
      local t = {}
      for i = 1, 40 do t[i] = i end
      local s = fmt(t, { width = 40 })
      local first = "{\n  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,\n"
      assert.equal(first, s:sub(1, #first))
      for line in s:gmatch("[^\n]+") do assert.is_true(#line <= 40, line) end
      assert.same(t, load("return " .. s)())
    end)

    it("marks cycles and numbers them, but repeats a table shared without a cycle", function()
      local t = { name = "root" }
      t.self = t
      assert.equal('<1>{ name = "root", self = <cycle 1> }', fmt(t))
      local a, b = {}, {}
      a.b, b.a = b, a
      assert.equal("<1>{ b = { a = <cycle 1> } }", fmt(a))
      local shared = { 1 }
      assert.equal("{ x = { 1 }, y = { 1 } }", fmt({ x = shared, y = shared }))
      local outer = { inner = {} }
      outer.inner.up, outer.inner.me = outer, outer.inner
      assert.equal("<1>{ inner = <2>{ me = <cycle 2>, up = <cycle 1> } }", fmt(outer))
    end)

    it("elides the entries past `items` with a count", function()
      local t = {}
      for i = 1, 250 do t[i] = i end
      t.extra = true
      local s = fmt(t)
      assert.matches("100,\n  %.%.%. 151 more\n}$", s)
      assert.not_matches("101", s, 1, true)
      assert.equal("{ 1, 2, ... 3 more }", fmt({ 1, 2, 3, 4, 5 }, { items = 2 }))
      assert.equal("{ a = 1, ... 2 more }", fmt({ a = 1, b = 2, c = 3 }, { items = 1 }))
    end)

    it("stops at `depth`", function()
      assert.equal("{ a = { b = {...} } }", fmt({ a = { b = { c = 1 } } }, { depth = 2 }))
      assert.equal("{ a = { b = {} } }", fmt({ a = { b = {} } }, { depth = 2 }))
    end)

    it("reads tables raw: __index and __pairs are not consulted", function()
      local t = setmetatable({ own = 1 }, {
        __index = function() error("must not be called") end,
        __pairs = function() error("must not be called") end })
      assert.equal("{ own = 1 }", fmt(t))
    end)
  end)

  describe("the module", function()
    it("is callable and rejects unknown options (a typo must not pass silently)", function()
      assert.equal(fmt({ 1 }), pretty({ 1 }))
      assert.has_error(function() fmt({}, { widht = 10 }) end,
                       "baton.pretty.format: unknown option 'widht'")
      assert.has_error(function() fmt({}, 3) end)
    end)

    it("prints values like print with pretty.print", function()
      local saved, out = _G.print, nil
      _G.print = function(s) out = s end
      local ok, err = pcall(pretty.print, "a", { 1 }, nil)
      _G.print = saved
      assert(ok, err)
      assert.equal('"a"\t{ 1 }\tnil', out)
    end)

    it("is what the baton executable finds with require 'baton.pretty'", function()
      local exe = os.getenv("BATON_EXE") or "build/baton"
      local p = assert(io.popen("'" .. exe .. "' -e 'print(require(\"baton.pretty\")" ..
                                ".format({ b = 1, a = { \"x\" } }))' </dev/null"))
      local out = p:read("a")
      p:close()
      assert.equal('{ a = { "x" }, b = 1 }\n', out)
    end)
  end)
end)
