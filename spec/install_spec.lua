-- `cmake --install` puts every piece where Lua and C users look for it, and the installed
-- module works from a stock lua5.4 outside the source tree.
local build = os.getenv("BATON_BUILD") or "build"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok, out, code
end

describe("cmake --install", function()
  local prefix
  setup(function()
    prefix = os.tmpname()
    os.remove(prefix)
    local ok, out = sh(("cmake --install %q --prefix %q"):format(build, prefix))
    assert(ok, out)
  end)
  teardown(function() sh(("rm -rf %q"):format(prefix)) end)

  local function exists(rel)
    local f = io.open(prefix .. "/" .. rel, "r")
    if f then f:close() return true end
    return false
  end

  it("installs the executable, the module, the header, the library and baton.pc", function()
    assert.is_true(exists("bin/baton"))
    assert.is_true(exists("include/baton.h"))
    local ok, out = sh(("find %q -name baton.so -o -name baton.pc -o -name libbaton_core.a"):format(prefix))
    assert.is_true(ok)
    assert.matches("lua/5.4/baton.so", out)
    assert.matches("pkgconfig/baton.pc", out)
    assert.matches("libbaton_core.a", out)
  end)

  it("installs the LuaCATS annotations in share/baton/types, outside the module path", function()
    assert.is_true(exists("share/baton/types/baton.lua"))
    assert.is_true(exists("share/baton/types/baton/mcp.lua"))
    assert.is_false(exists("share/lua/5.4/baton/types/baton.lua"))
  end)

  it("the installed module runs under a stock lua5.4", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write('local b = require "baton"\nprint(b.run(function() b.sleep(10) return 42 end))\n')
    f:close()
    local ok, out = sh(("cd / && LUA_CPATH=$(dirname $(find %q -name baton.so))/?.so %s %q")
      :format(prefix, os.getenv("BATON_LUA") or "lua5.4", script))
    os.remove(script)
    assert.is_true(ok, out)
    assert.equal("42\n", out)
  end)

  it("installs every module of lua/baton, and they load from there under a stock lua5.4",
    function()
      local src = os.getenv("BATON_SRC") or "."
      local _, mine = sh(("cd %q/lua && find baton -name '*.lua' | sort"):format(src))
      local _, installed = sh(("cd %q/share/lua/5.4 && find baton -name '*.lua' | sort")
                              :format(prefix))
      assert.matches("baton/mcp/session.lua", mine, 1, true)
      assert.equal(mine, installed)
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      for path in mine:gmatch("[^\n]+") do
        f:write(("require %q\n"):format(path:gsub("%.lua$", ""):gsub("/", ".")))
      end
      f:write('print(package.searchpath("baton.mcp.http", package.path))\n')
      f:close()
      local ok, out = sh(("cd / && LUA_CPATH=$(dirname $(find %q -name baton.so))/?.so "
        .. "LUA_PATH=%q %s %q"):format(prefix, prefix .. "/share/lua/5.4/?.lua",
                                       os.getenv("BATON_LUA") or "lua5.4", script))
      os.remove(script)
      assert.is_true(ok, out)
      assert.equal(prefix .. "/share/lua/5.4/baton/mcp/http.lua\n", out)
    end)

  it("baton.pc lets a C program build against the core", function()
    local src = os.tmpname() .. ".c"
    local f = assert(io.open(src, "w"))
    f:write('#include <baton.h>\nint main(void){bt_rt_t *rt=bt_rt_new(0);return bt_rt_free(rt);}\n')
    f:close()
    local pc = ("PKG_CONFIG_PATH=$(dirname $(find %q -name baton.pc))"):format(prefix)
    local ok, out = sh(("%s cc %s %q $(%s pkg-config --cflags --libs baton) -o %q.bin && %q.bin")
      :format(pc, os.getenv("BATON_CFLAGS") or "", src, pc, src, src))
    os.remove(src)
    os.remove(src .. ".bin")
    assert.is_true(ok, out)
  end)
end)
