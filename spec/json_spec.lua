-- baton.json: encode (the array/object rule, numbers, strings, errors naming the path,
-- options), decode (null sentinel, integers vs floats, escapes, malformed input as return
-- values) and round trips. Malformed inputs are data: spec/fixtures/json/malformed_*.json.
local baton = require "baton"
local json = baton.json
local H = require "spec.helper"

local FIXTURES = (os.getenv("BATON_SRC") or ".") .. "/spec/fixtures/json/"

-- What encode's misuse errors start with, before the offending value and its path.
local P = "baton.json.encode: bad argument #1 'v' (expected a value JSON can encode, got "

local function encode_error(v, opts)
  local ok, err = pcall(json.encode, v, opts)
  assert.is_false(ok, "expected encode to raise")
  return err
end

local function nest(n)
  local t = {}
  for _ = 2, n do t = { t } end
  return t
end

describe("baton.json", function()
  describe("encode", function()
    it("writes integers without a decimal point", function()
      assert.equal("42", json.encode(42))
      assert.equal("-7", json.encode(-7))
      assert.equal(tostring(math.maxinteger), json.encode(math.maxinteger))
      assert.equal(tostring(math.mininteger), json.encode(math.mininteger))
    end)

    it("writes floats that read back as the same float", function()
      assert.equal("1.0", json.encode(1.0))
      assert.equal("0.1", json.encode(0.1))
      assert.equal("-2.5", json.encode(-2.5))
      for _, x in ipairs { 1.0, 0.1, 1 / 3, -2.5, 1e300, 5e-324, 2 ^ 53 + 0.0, -0.0, 123.456 } do
        local back = json.decode(json.encode(x))
        assert.equal(x, back)
        assert.equal("float", math.type(back))
      end
    end)

    it("writes booleans and json.null", function()
      assert.equal("true", json.encode(true))
      assert.equal("false", json.encode(false))
      assert.equal("null", json.encode(json.null))
    end)

    it("escapes quotes, backslashes and control characters in strings", function()
      assert.equal([["a\"b\\c\n\t\r\b\f\u0000\u0001\u001f"]],
                   json.encode('a"b\\c\n\t\r\b\f\0\1\31'))
      assert.equal('"/ \127"', json.encode("/ \127"))
    end)

    it("passes UTF-8 through unchanged", function()
      assert.equal('"é😀"', json.encode("é😀"))
      assert.equal('"\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}"',
                   json.encode("\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}"))
    end)

    it("refuses a string that is not UTF-8, naming the path and the byte", function()
      assert.matches(P .. "invalid UTF-8 at $, byte 1 of the string",
                     encode_error("\xff"), 1, true)
      assert.matches("invalid UTF-8 at $.a[2], byte 3 of the string",
                     encode_error { a = { "ok", "ab\x80" } }, 1, true)
      assert.matches('invalid UTF-8 at $["k?"], byte 2 of the key',
                     encode_error { ["k\xff"] = 1 }, 1, true)
      for _, bad in ipairs {
        "\xc0\xaf",          -- overlong '/'
        "\xe0\x80\xaf",      -- overlong, three bytes
        "\xed\xa0\x80",      -- a UTF-16 surrogate (U+D800)
        "\xf4\x90\x80\x80",  -- above U+10FFFF
        "\xe2\x82",          -- truncated
        "\xbf",              -- a lone continuation byte
        "\xf8\x88\x80\x80\x80",  -- five bytes
      } do
        assert.matches("invalid UTF-8", encode_error("a" .. bad .. "z"), 1, true)
      end
    end)

    it("writes the bytes as they are under { raw_bytes = true }", function()
      assert.equal('"\xff\xc0\xaf"', json.encode("\xff\xc0\xaf", { raw_bytes = true }))
      assert.equal('{"k\xff":"\\n"}', json.encode({ ["k\xff"] = "\n" }, { raw_bytes = true }))
      assert.matches("baton.json.encode: bad argument #2 'raw_bytes' (expected boolean, got 1)",
                     encode_error("x", { raw_bytes = 1 }), 1, true)
    end)

    it("encodes a table with keys 1..n as an array", function()
      assert.equal("[1,2,3]", json.encode { 1, 2, 3 })
      assert.equal('[[],"x",{"a":true}]', json.encode { json.array {}, "x", { a = true } })
    end)

    it("encodes a table with only string keys as an object, keys in byte order", function()
      assert.equal('{"A":3,"a":2,"b":1,"ba":4}', json.encode { b = 1, a = 2, A = 3, ba = 4 })
    end)

    it("encodes equal tables to equal strings whatever their insertion order", function()
      local t1, t2 = {}, {}
      for i = 1, 50 do t1["k" .. i] = i end
      for i = 50, 1, -1 do t2["k" .. i] = i end
      assert.equal(json.encode(t1), json.encode(t2))
    end)

    it("encodes an empty table as an object", function()
      assert.equal("{}", json.encode {})
    end)

    it("encodes json.array(t) as an array, even when empty", function()
      assert.equal("[]", json.encode(json.array {}))
      assert.equal("[]", json.encode(json.array()))
      assert.equal("[1,2]", json.encode(json.array { 1, 2 }))
      local t = {}
      assert.equal(t, json.array(t))
    end)

    it("encodes json.object(t) as an object", function()
      assert.equal("{}", json.encode(json.object {}))
      assert.equal('{"a":1}', json.encode(json.object { a = 1 }))
    end)

    it("rejects string keys in a table marked as an array", function()
      assert.matches("a table at %$ marked as an array but with string keys",
                     encode_error(json.array { 1, x = 2 }))
    end)

    it("rejects integer keys in a table marked as an object", function()
      assert.matches("a table at %$%.o marked as an object but with integer keys",
                     encode_error { o = json.object { 1 } })
    end)

    it("refuses to mark a table that has another metatable", function()
      local ok, err = pcall(json.array, setmetatable({}, {}))
      assert.is_false(ok)
      assert.matches("baton.json.array: bad argument #1 't' (expected a table without a " ..
                     "metatable, got a table with one)", err, 1, true)
      ok, err = pcall(json.object, 42)
      assert.is_false(ok)
      assert.matches("baton.json.object: bad argument #1 't' (expected table or nil, got 42)",
                     err, 1, true)
    end)

    it("lets json.array and json.object re-mark each other's tables", function()
      local t = json.object {}
      assert.equal("[]", json.encode(json.array(t)))
      assert.equal("{}", json.encode(json.object(t)))
    end)

    it("writes json.null as null, keeping positions in arrays", function()
      assert.equal("[1,null,3,null]", json.encode { 1, json.null, 3, json.null })
      assert.equal('{"a":null}', json.encode { a = json.null })
    end)

    it("rejects a table that mixes array and object keys, naming its path", function()
      local err = encode_error { a = { 1, 2, { 1, x = 2 } } }
      assert.matches(P .. "a table at $.a[3] mixing array and object keys)", err, 1, true)
    end)

    it("rejects arrays with holes or keys outside 1..n", function()
      assert.matches("table at $ that is a sparse array", encode_error { [1] = 1, [3] = 3 }, 1, true)
      assert.matches("table at $ that is a sparse array", encode_error { [0] = 1, [1] = 2 }, 1, true)
      assert.matches("table at $.x that is a sparse array", encode_error { x = { [2] = 1 } }, 1,
                     true)
    end)

    it("rejects float, boolean and table keys", function()
      assert.matches("table at $ with a float key", encode_error { [1.5] = 1 }, 1, true)
      assert.matches("table at $[1] with a boolean key", encode_error { { [true] = 1 } }, 1, true)
      assert.matches("with a table key", encode_error { [{}] = 1 }, 1, true)
    end)

    it("rejects NaN with a message naming the path", function()
      assert.matches(P .. "NaN/inf at $.x[2])",
                     encode_error { x = { 1, 0 / 0 } }, 1, true)
    end)

    it("rejects infinities with a message naming the path", function()
      assert.matches("got NaN/inf at $)", encode_error(math.huge), 1, true)
      assert.matches("got NaN/inf at $[1])", encode_error { -math.huge }, 1, true)
    end)

    it("names odd keys in paths with brackets and quotes", function()
      assert.matches('at $["a b"][1]', encode_error { ["a b"] = { 0 / 0 } }, 1, true)
    end)

    it("rejects a cycle, naming where it closes", function()
      local t = {}
      t.a = { b = t }
      assert.matches(P .. "a cycle at $.a.b)", encode_error(t), 1, true)
      local arr = {}
      arr[1] = arr
      assert.matches("a cycle at $[1]", encode_error(arr), 1, true)
    end)

    it("accepts the same table twice when it is not inside itself", function()
      local shared = { 1 }
      assert.equal("[[1],[1]]", json.encode { shared, shared })
    end)

    it("accepts 1000 nested tables, decode's limit, and rejects 1001", function()
      assert.equal(string.rep("[", 999) .. "{}" .. string.rep("]", 999), json.encode(nest(1000)))
      assert.matches("nested deeper than 1000", encode_error(nest(1001)), 1, true)
      local deepest = string.rep("[", 1000) .. string.rep("]", 1000)  -- decode's deepest
      assert.equal(deepest, json.encode(json.decode(deepest)))
    end)

    it("rejects a function value, naming the path", function()
      assert.matches(P .. "a function at $.tools[1].handler)",
                     encode_error { tools = { { handler = print } } }, 1, true)
    end)

    it("rejects threads and userdata other than json.null", function()
      assert.matches("got a thread at $)", encode_error(coroutine.create(print)), 1, true)
      assert.matches("got a userdata at $.f)", encode_error { f = io.stdout }, 1, true)
    end)

    it("writes lua-cjson's cjson.null (a NULL light userdata) as null", function()
      local ok, cjson = pcall(require, "cjson")
      assert.is_true(ok, "lua-cjson is missing: install it (bash scripts/deps.sh)")
      assert.equal('{"a":null,"b":[1,null]}', json.encode { a = cjson.null, b = { 1, cjson.null } })
      -- what lua-cjson decoded passes through unchanged
      local v = cjson.decode('{"id":"7","error":null,"list":[null,"x"]}')
      assert.equal('{"error":null,"id":"7","list":[null,"x"]}', json.encode(v))
    end)

    it("rejects light userdata other than NULL", function()
      local up = 1
      local light = debug.upvalueid(function() return up end, 1)  -- a non-NULL light userdata
      assert.matches("got a userdata at $.p)", encode_error { p = light }, 1, true)
    end)

    it("raises on nil, pointing at json.null", function()
      local ok, err = pcall(json.encode, nil)
      assert.is_false(ok)
      assert.matches("baton.json.encode: bad argument #1 'v' (expected a value JSON can encode " ..
                     "(baton.json.null is null), got nil)", err, 1, true)
    end)

    it("indents with two spaces under { pretty = true }", function()
      local out = json.encode({ a = { 1, 2 }, b = {}, c = json.array {} }, { pretty = true })
      assert.equal('{\n  "a": [\n    1,\n    2\n  ],\n  "b": {},\n  "c": []\n}', out)
      assert.equal('{"a":1}', json.encode({ a = 1 }, { pretty = false }))
    end)

    it("rejects unknown options", function()
      assert.matches("baton.json.encode: bad argument #2 'prety' (unknown option)",
                     encode_error({}, { prety = true }), 1, true)
      assert.matches("baton.json.encode: bad argument #2 'opts' (expected string keys, got 1)",
                     encode_error({}, { true }), 1, true)
    end)

    it("rejects an options argument or pretty value of the wrong type", function()
      assert.matches("baton.json.encode: bad argument #2 'opts' (expected table, got 'pretty')",
                     encode_error({}, "pretty"), 1, true)
      assert.matches("bad argument #2 'pretty' (expected boolean, got 1)",
                     encode_error({}, { pretty = 1 }), 1, true)
    end)
  end)

  describe("decode", function()
    it("decodes objects, arrays, strings and booleans", function()
      local v = json.decode(' {"a": [true, false, "x"], "b": {"c": "d"}} ')
      assert.same({ a = { true, false, "x" }, b = { c = "d" } }, v)
    end)

    it("decodes null to json.null, keeping positions in arrays", function()
      local v = json.decode("[null, 1, null, null]")
      assert.equal(4, #v)
      assert.equal(json.null, v[1])
      assert.equal(1, v[2])
      assert.equal(json.null, v[4])
      assert.equal(json.null, json.decode("null"))
      assert.equal(json.null, json.decode('{"a":null}').a)
      assert.equal("null", tostring(json.null))
    end)

    it("decodes numbers without fraction or exponent as integers", function()
      assert.equal("integer", math.type(json.decode("42")))
      assert.equal("integer", math.type(json.decode("-0")))
      assert.equal(math.mininteger, json.decode(tostring(math.mininteger)))
    end)

    it("decodes numbers with a fraction or exponent as floats", function()
      local v = json.decode("[2.0, 1e2, -1.5E-3]")
      assert.equal("float", math.type(v[1]))
      assert.equal(100.0, v[2])
      assert.equal("float", math.type(v[2]))
      assert.equal(-1.5e-3, v[3])
    end)

    it("keeps integers beyond 2^53 exact", function()
      assert.equal(9007199254740993, json.decode("9007199254740993"))
      assert.equal(math.maxinteger, json.decode("[9223372036854775807]")[1])
    end)

    it("refuses numbers too large for a double rather than returning inf", function()
      for text, byte in pairs { ["1e400"] = 1, ["[1, -1e400]"] = 5, ['{"a": 2e308}'] = 7,
                                ["1" .. ("0"):rep(400)] = false } do
        local v, err, kind = json.decode(text)
        assert.is_nil(v, text)
        assert.equal("malformed", kind)
        if byte then
          assert.matches(("malformed JSON at byte %d: number out of range '"):format(byte), err,
                         1, true)
        end
      end
      assert.equal(0.0, json.decode("1e-400"))
      assert.equal(1.7976931348623157e308, json.decode("1.7976931348623157e308"))
    end)

    it("refuses strings that are not UTF-8, naming the byte, unless { raw_bytes = true }",
       function()
      assert.equal("caf\xc3\xa9 \xf0\x9f\x8e\x89", json.decode('"caf\xc3\xa9 \xf0\x9f\x8e\x89"'))
      for text, byte in pairs {
        ['["ok", "a\xffz"]'] = 10,              -- a stray byte
        ['{"k\xc0\xaf": 1}'] = 4,              -- an overlong form, in a key
        ['"\xed\xa0\x80"'] = 2,               -- a UTF-16 surrogate written as UTF-8
        ['"\xf4\x90\x80\x80"'] = 2,          -- above U+10FFFF
        ['["\xe2\x82"]'] = 3,                  -- truncated
      } do
        local v, err, kind, detail = json.decode(text)
        assert.is_nil(v, text)
        assert.equal("malformed", kind)
        assert.equal(byte, detail.byte, text)
        assert.matches("invalid UTF-8 in a string", err, 1, true)
        assert.is_truthy(utf8.len(err), "the message itself is UTF-8: " .. err)
        assert.is_nil((err:find("[\x80-\xff]")))
      end
      assert.same({ "a\xffz" }, json.decode('["a\xffz"]', { raw_bytes = true }))
      H.raises_misuse("baton.json.decode", 2, "bogus", nil, json.decode, "[]", { bogus = true })
    end)

    it("decodes integers too big for Lua as floats", function()
      local v = json.decode("18446744073709551616")
      assert.equal("float", math.type(v))
      assert.equal(2.0 ^ 64, v)
    end)

    it("turns \\u escapes into UTF-8, including surrogate pairs", function()
      assert.equal("é", json.decode([["\u00e9"]]))
      assert.equal("😀", json.decode([["\ud83d\ude00"]]))
      assert.equal("aé😀b", json.decode([["a\u00E9\uD83D\uDE00b"]]))
      assert.equal('"\\/\b\f\n\r\t', json.decode([["\"\\\/\b\f\n\r\t"]]))
    end)

    it("refuses what RFC 8259 does not write: leading zeros, signs, bare points, lone surrogates",
       function()
      for text, byte in pairs {
        ["01"] = 2, ["[-01]"] = 4, ["+1"] = 1, [".5"] = 1, ["[1.]"] = 4, ["1.e3"] = 3,
        ["[1e]"] = 4, ["1e+"] = 4, ["-"] = 1, ["[-x]"] = 2, ["[1,]"] = 4, ["{,}"] = 2,
        ['"\\udc00"'] = 2, ['"a\\ud800b"'] = 3, ['"\\ud800\\u0041"'] = 2, ['"\\ud800\\n"'] = 2,
        ['"\\q"'] = 3, ["[true false]"] = 7, ["nul"] = 1, ["[nulll]"] = 6, ['{"a":1 "b":2}'] = 8,
      } do
        local err, _, detail = H.assert_failure("baton.json.decode", "malformed", json.decode(text))
        assert.equal(byte, detail.byte, text .. ": " .. err)
      end
      assert.matches("a lone UTF-16 surrogate at", select(2, json.decode('"\\udc00"')), 1, true)
    end)

    it("decodes long strings with escapes, and surrogate pairs at a string's ends", function()
      local part = 'ab\\n\\"\\u00e9\\ud83d\\ude00'
      local text = '"' .. part:rep(20000) .. '"'
      local want = ('ab\n"\u{e9}\u{1f600}'):rep(20000)
      assert.equal(want, json.decode(text))
      assert.equal("\u{1f600}", json.decode('"\\ud83d\\ude00"'))
      assert.same({ ["\u{1f600}"] = "\u{10ffff}" }, json.decode('{"\\uD83D\\uDE00":"\\udbff\\udfff"}'))
      assert.equal(("x"):rep(100000), json.decode('"' .. ("x"):rep(100000) .. '"'))
    end)

    it("fails cleanly in a long escaped string at any depth (its buffer is closed first)",
       function()
      -- found by spec/fuzz: with Lua 5.4.4, dropping the buffer's to-be-closed box with
      -- lua_settop could leave the stack pointer dangling
      for depth = 1, 300, 7 do
        local text = ("["):rep(depth) .. '"' .. ("\\n"):rep(700) .. "\xff" .. '"' .. ("]"):rep(depth)
        local err, _, detail = H.assert_failure("baton.json.decode", "malformed", json.decode(text))
        assert.equal(depth + 1 + 1400 + 1, detail.byte, err)
        assert.same({ { "ok" } }, json.decode('[["ok"]]'))
      end
    end)

    it("reports a failure at the offending byte, even when only whitespace follows it", function()
      for text, byte in pairs { ['"a\1'] = 3, ["1.\n"] = 3, ['"\\ud800\\u12G4"'] = 12,
                                ['"\\ud800\\u12"'] = 12, ["[1, 2 \n"] = 8, ['{"a" '] = 6 } do
        local err, _, detail = H.assert_failure("baton.json.decode", "malformed", json.decode(text))
        assert.equal(byte, detail.byte, ("%q: %s"):format(text, err))
      end
    end)

    it("reads long floats under a locale whose decimal point is a comma", function()
      -- Lua's own reader gives up on numerals over 200 bytes under such a locale; a child
      -- process runs with a de_DE locale built into a temp dir (localedef, package locales)
      local dir = H.temp_dir()
      finally(function() H.remove_dir(dir) end)
      assert(os.execute(("localedef -i de_DE -f UTF-8 %s/de_DE.UTF-8 2>/dev/null"):format(H.q(dir))),
             "localedef failed: install the locales package (bash scripts/deps.sh)")
      local script = H.write_file(dir .. "/locale.lua", [=[
        assert(os.setlocale("de_DE.UTF-8", "numeric"), "no de_DE locale")
        local json = require("baton").json
        local big = "0." .. ("0"):rep(199) .. "1"
        assert(json.decode(big) == 1e-200, "top level")
        local t = assert(json.decode("[7," .. big .. ", 2.5]"))
        assert(t[1] == 7 and t[2] == 1e-200 and t[3] == 2.5, "in an array")
        local long = json.decode("[" .. ("1"):rep(300) .. ".5]")[1]  -- tonumber gives up here
        assert(long > 1.1111111111e299 and long < 1.1111111112e299, "a long one")
        print("ok")
      ]=])
      local r = H.run(H.q(script), { env = "LOCPATH=" .. H.q(dir) })
      assert.equal("ok\n", r.out, r.err)
    end)

    it("reads any byte up to a space as whitespace, as before (a trailing NUL decodes)", function()
      assert.same({ a = 1 }, json.decode('{"a":1}\0'))
      assert.same({ 1, 2 }, json.decode('\1[1,\31 2]\0\0'))
    end)

    it("decodes what lua-cjson decodes, to the same values (5,000 random documents)", function()
      local ok, cjson = pcall(require, "cjson")
      assert.is_true(ok, "lua-cjson is missing: install it (bash scripts/deps.sh)")
      cjson.decode_max_depth(2000)
      math.randomseed(42)
      local rnd = math.random
      local pieces = { "a", "é", "\\n", "\\\"", "\\\\", "\\/", "\\u00e9", "\\ud83d\\ude00", "😀",
                       "\\t", " ", "\\u0000", "\\b\\f\\r", "key" }
      local function ws() return ({ "", " ", "\n", "\t ", "\r\n" })[rnd(5)] end
      local function str()
        local t = {}
        for i = 1, rnd(0, 6) do t[i] = pieces[rnd(#pieces)] end
        return '"' .. table.concat(t) .. '"'
      end
      local numbers = { "0", "-0", "7", "-12", "9007199254740993", "9223372036854775807",
                        "-9223372036854775808", "18446744073709551616", "1.5", "-0.25", "1e2",
                        "2E-3", "1.7976931348623157e308", "1e-400", "123456789012345678",
                        "1234567890123456789" }
      local function value(depth)
        local k = rnd(depth > 6 and 6 or 8)
        if k == 1 then return numbers[rnd(#numbers)]
        elseif k == 2 then return str()
        elseif k == 3 then return ({ "true", "false", "null" })[rnd(3)]
        elseif k == 4 then return numbers[rnd(#numbers)]
        elseif k == 5 then return str()
        elseif k == 6 then return "[]"
        elseif k == 7 then
          local t = {}
          for i = 1, rnd(1, 5) do t[i] = ws() .. value(depth + 1) .. ws() end
          return "[" .. table.concat(t, ",") .. "]"
        else
          local t = {}
          for i = 1, rnd(0, 5) do t[i] = ws() .. str() .. ws() .. ":" .. ws() .. value(depth + 1) end
          return "{" .. table.concat(t, ",") .. "}"
        end
      end
      local function same(a, b, path)
        if b == cjson.null then
          assert(a == json.null, path .. ": expected null")
        elseif type(b) == "table" then
          assert(type(a) == "table", path .. ": expected a table")
          for k, v in pairs(b) do same(a[k], v, path .. "." .. tostring(k)) end
          for k in pairs(a) do assert(b[k] ~= nil, path .. ": extra key " .. tostring(k)) end
        else  -- lua-cjson may read an integer as a float: baton's is exact, or rounds to it
          local equal = a == b and (math.type(b) ~= "integer" or math.type(a) == "integer")
                        or math.type(a) == "integer" and math.type(b) == "float" and a + 0.0 == b
          assert(equal, ("%s: %s (%s) vs lua-cjson's %s (%s)"):format(path, tostring(a),
                 math.type(a), tostring(b), math.type(b)))
        end
      end
      for i = 1, 5000 do
        local text = ws() .. value(0) .. ws()
        local want = cjson.decode(text)
        local got, err = json.decode(text)
        assert(got ~= nil, err)
        local ok2, why = pcall(same, got, want, "$")
        if not ok2 then error(("document %d: %s\n%s"):format(i, why, text)) end
      end
    end)

    it("keeps zero bytes written as \\u0000, in values and keys", function()
      local v = json.decode([[{"k\u0000ey": "a\u0000b\u0000", "n": 1}]])
      assert.equal("a\0b\0", v["k\0ey"])
      assert.equal(1, v.n)
    end)

    it("marks decoded arrays so that empty ones encode back as []", function()
      assert.equal("[[],{},[[]]]", json.encode(json.decode("[[],{},[[]]]")))
      local v = json.decode("[1]")
      v[1] = nil
      assert.equal("[]", json.encode(v))
    end)

    for _, case in ipairs {
      { "malformed_trailing_garbage.json", 9 },
      { "malformed_two_values.json", 5 },
      { "malformed_trailing_comma.json", 13 },
      { "malformed_object_trailing_comma.json", 8 },
      { "malformed_bad_literal.json", 2 },
      { "malformed_nan.json", 2 },
      { "malformed_plus_sign.json", 2 },
      { "malformed_hex.json", 3 },
      { "malformed_missing_colon.json", 6 },
      { "malformed_only_whitespace.json", 5 },
      { "malformed_unclosed_array.json" },
      { "malformed_single_quotes.json" },
      { "malformed_unquoted_key.json" },
      { "malformed_bad_escape.json" },
      { "malformed_lone_surrogate.json" },
      { "malformed_unterminated_string.json" },
      -- cJSON let these through; baton refuses them (the last was found by spec/fuzz)
      { "malformed_bad_unicode_hex.json", 10 },
      { "malformed_short_unicode_escape.json", 8 },  -- the '"' where a hex digit should be
      { "malformed_raw_control_char.json", 11 },
      { "malformed_fuzz_nul_escape.json", 6 },
    } do
      local file, byte = case[1], case[2]
      it("returns nil and a message with the byte position for " .. file, function()
        local f = assert(io.open(FIXTURES .. file, "rb"))
        local text = f:read("a")
        f:close()
        local err, _, detail = H.assert_failure("baton.json.decode", "malformed", json.decode(text))
        local at = assert(err:match("^baton%.json%.decode: malformed JSON at byte (%d+)"), err)
        assert.equal(tonumber(at), detail.byte)
        if byte then assert.equal(byte, tonumber(at)) end
        assert.is_true(tonumber(at) >= 1 and tonumber(at) <= #text + 1)
      end)
    end

    it("returns nil and a message for an empty string", function()
      local v, err = json.decode("")
      assert.is_nil(v)
      assert.matches("malformed JSON at byte 1: unexpected end of input", err, 1, true)
    end)

    it("treats bytes after an embedded zero byte as trailing garbage", function()
      local v, err = json.decode('{"a":1}\0{"b":2}')
      assert.is_nil(v)
      assert.matches("at byte 9", err, 1, true)
    end)

    it("accepts surrounding whitespace", function()
      assert.same({ 1 }, json.decode(" \t\r\n[1] \n"))
    end)

    it("decodes 1000 nested arrays and returns nil beyond", function()
      local v = json.decode(string.rep("[", 1000) .. string.rep("]", 1000))
      assert.equal("table", type(v))
      local none, err = json.decode(string.rep("[", 1001) .. string.rep("]", 1001))
      assert.is_nil(none)
      assert.matches("at byte 1001: nesting deeper than 1000", err, 1, true)
    end)

    it("raises when given a non-string, naming decode", function()
      for _, bad in ipairs { {}, 42, true } do
        local ok, err = pcall(json.decode, bad)
        assert.is_false(ok)
        assert.matches("baton.json.decode: bad argument #1 's' (expected string, got", err, 1, true)
      end
      assert.has_error(function() json.decode() end)
    end)
  end)

  describe("round trips", function()
    it("decode(encode(v)) equals v for nested values", function()
      local v = { name = "x", list = { 1, 2.5, "three", true, false, json.null },
                  nested = { deep = { deeper = { n = -12 } } }, empty = {} }
      assert.same(v, json.decode(json.encode(v)))
      assert.same(v, json.decode(json.encode(v, { pretty = true })))
    end)

    it("round-trips every byte value in a string (raw_bytes for those >= 0x80)", function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local s = table.concat(bytes)
      local raw = { raw_bytes = true }
      assert.equal(s, json.decode(json.encode(s, raw), raw))
      assert.equal(s, json.decode(json.encode({ [s] = s }, raw), raw)[s])
      local ascii = s:sub(1, 128) .. "é😀"
      assert.equal(ascii, json.decode(json.encode(ascii)))
    end)

    it("round-trips an array of 100000 numbers", function()
      local t = {}
      for i = 1, 100000 do t[i] = (i % 2 == 0) and i * 3 or i / 7 end
      local back = json.decode(json.encode(t))
      assert.equal(100000, #back)
      for i = 1, 100000 do
        if back[i] ~= t[i] or math.type(back[i]) ~= math.type(t[i]) then
          error(("element %d: %s became %s"):format(i, t[i], back[i]))
        end
      end
    end)

    it("encode(decode(s)) reproduces canonical text", function()
      local s = '{"a":[1,2.5,null,"x"],"b":{"c":[]},"d":9007199254740993}'
      assert.equal(s, json.encode(json.decode(s)))
    end)
  end)
end)
