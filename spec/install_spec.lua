-- `cmake --install` puts every piece where Lua and C users look for it, and the installed
-- module works from a stock lua5.4 outside the source tree; the installed `baton` finds its
-- modules beside itself (never in the checkout) even once the install tree is moved; C hosts
-- build against it with pkg-config under -std=c11 and with CMake's find_package(baton); and
-- `luarocks make` builds from a copy of the checkout that is deleted before the rock's
-- `baton` runs.
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

  it("baton.pc lets a C program build against the core under -std=c11", function()
    local src = os.tmpname() .. ".c"
    local f = assert(io.open(src, "w"))
    f:write('#include <baton.h>\nint main(void){bt_rt_t *rt=bt_rt_new(0);return bt_rt_free(rt);}\n')
    f:close()
    local pc = ("PKG_CONFIG_PATH=$(dirname $(find %q -name baton.pc))"):format(prefix)
    local ok, out = sh(("%s cc -std=c11 -Wall -Werror %s %q $(%s pkg-config --cflags --libs baton) -o %q.bin && %q.bin")
      :format(pc, os.getenv("BATON_CFLAGS") or "", src, pc, src, src))
    os.remove(src)
    os.remove(src .. ".bin")
    assert.is_true(ok, out)
  end)

  it("baton.pc finds the tree from a multiarch libdir (Debian's lib/x86_64-linux-gnu)", function()
    -- configured (not built) with that libdir; its baton.pc laid out as an install there would
    local cfg, tree = os.tmpname(), os.tmpname()
    os.remove(cfg)
    os.remove(tree)
    local libdir = tree .. "/lib/x86_64-linux-gnu"
    local src = os.tmpname() .. ".c"
    local ok, out = sh(("cmake -S . -B %q -DCMAKE_INSTALL_LIBDIR=lib/x86_64-linux-gnu >/dev/null && " ..
                        "mkdir -p %q/pkgconfig %q/include && cp %q/baton.pc %q/pkgconfig/ && " ..
                        "cp $(find %q -name libbaton_core.a) %q/ && cp %q/include/baton.h %q/include/")
      :format(cfg, libdir, tree, cfg, libdir, prefix, libdir, prefix, tree))
    assert.is_true(ok, out)
    local f = assert(io.open(src, "w"))
    f:write('#include <baton.h>\nint main(void){bt_rt_t *rt=bt_rt_new(0);return bt_rt_free(rt);}\n')
    f:close()
    local pc = ("PKG_CONFIG_PATH=%q/pkgconfig"):format(libdir)
    ok, out = sh(("%s cc -std=c11 %s %q $(%s pkg-config --cflags --libs baton) -o %q.bin && %q.bin")
      :format(pc, os.getenv("BATON_CFLAGS") or "", src, pc, src, src))
    sh(("rm -rf %q %q %q %q.bin"):format(cfg, tree, src, src))
    assert.is_true(ok, out)
  end)

  -- The install tree copied elsewhere, with a clean environment: what it runs is its own.
  local function moved_copy()
    local dir = os.tmpname()
    os.remove(dir)
    assert(sh(("cp -a %q %q"):format(prefix, dir)))
    return dir
  end
  -- Sanitizer builds need their runtime options in the child's environment.
  local function clean_env()
    local keep = {}
    for _, v in ipairs { "ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS" } do
      if os.getenv(v) then keep[#keep + 1] = ("%s=%q"):format(v, os.getenv(v)) end
    end
    return "env -i PATH=/usr/bin:/bin " .. table.concat(keep, " ")
  end

  it("the installed baton finds baton.mcp beside itself, not in the checkout, once moved", function()
    local dir = moved_copy()
    local ok, out = sh(("cd / && %s %q/bin/baton -e %q"):format(clean_env(), dir,
      'print(package.searchpath("baton.mcp", package.path)) print(require("baton.mcp").VERSION)'))
    local ok_v, version = sh(("cd / && %s %q/bin/baton -v"):format(clean_env(), dir))
    sh(("rm -rf %q"):format(dir))
    assert.is_true(ok, out)
    assert.equal(dir .. "/share/lua/5.4/baton/mcp.lua\n0.1.0\n", out)
    assert.is_true(ok_v, version)
    assert.matches("^baton %d+%.%d+%.%d+ %(Lua 5%.4", version)
  end)

  it("LUA_PATH comes before the installed baton's own directory", function()
    local dir = moved_copy()
    local mine = os.tmpname()
    os.remove(mine)
    assert(sh(("mkdir -p %q/baton && echo 'return { VERSION = \"mine\" }' > %q/baton/mcp.lua")
      :format(mine, mine)))
    local ok, out = sh(("cd / && %s LUA_PATH=%q %q/bin/baton -e %q"):format(clean_env(),
      mine .. "/?.lua;;", dir, 'print(require("baton.mcp").VERSION)'))
    sh(("rm -rf %q %q"):format(dir, mine))
    assert.is_true(ok, out)
    assert.equal("mine\n", out)
  end)

  it("installs the docs in share/doc/baton", function()
    assert.is_true(exists("share/doc/baton/README.md"))
    assert.is_true(exists("share/doc/baton/api.md"))
    assert.is_true(exists("share/doc/baton/errors.md"))
  end)

  it("find_package(baton) gives a CMake project baton::core under -std=c11", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(sh(("mkdir -p %q"):format(dir)))
    local f = assert(io.open(dir .. "/CMakeLists.txt", "w"))
    f:write([[
cmake_minimum_required(VERSION 3.16)
project(consumer C)
set(CMAKE_C_STANDARD 11)
set(CMAKE_C_EXTENSIONS OFF)
find_package(baton 0.1 REQUIRED)
add_executable(consumer main.c)
target_link_libraries(consumer PRIVATE baton::core)
]])
    f:close()
    f = assert(io.open(dir .. "/main.c", "w"))
    f:write('#include <baton.h>\nint main(void){bt_rt_t *rt=bt_rt_new(0);return bt_rt_free(rt);}\n')
    f:close()
    local flags = os.getenv("BATON_CFLAGS") or ""
    local ok, out = sh(("cmake -S %q -B %q/b -DCMAKE_PREFIX_PATH=%q -DCMAKE_C_FLAGS=%q "
      .. "-DCMAKE_EXE_LINKER_FLAGS=%q >/dev/null && cmake --build %q/b >/dev/null && %q/b/consumer")
      :format(dir, dir, prefix, flags, flags, dir, dir))
    sh(("rm -rf %q"):format(dir))
    assert.is_true(ok, out)
  end)
end)

-- The rock: built by `luarocks --lua-version=5.4 make` with no variables, from a copy of the
-- checkout that is deleted (and the tree moved) before its `baton` runs.
describe("luarocks make", function()
  local src = os.getenv("BATON_SRC") or "."
  local have = sh("command -v luarocks")

  it("installs only modules into the module directories, and its baton finds baton.mcp "
     .. "once the checkout is gone", function()
    assert.is_true(have, "luarocks is missing: install it (bash scripts/deps.sh)")
    local work = os.tmpname()
    os.remove(work)
    local co, tree, moved = work .. "/checkout", work .. "/tree", work .. "/moved"
    local ok, out = sh(("mkdir -p %q && cd %q && cp -r CMakeLists.txt README.md baton-scm-1.rockspec "
      .. "include src lua scripts types docs %q"):format(co, src, co))
    assert.is_true(ok, out)
    ok, out = sh(("cd %q && luarocks --lua-version=5.4 --tree %q make baton-scm-1.rockspec")
                 :format(co, tree))
    local _, listing = sh(("cd %q && find share/lua lib/lua -type f | sort"):format(tree))
    -- the annotations stay in the rock's own directory (README, "Editor support")
    local types_dir = tree .. "/lib/luarocks/rocks-5.4/baton/scm-1/share/baton/types"
    local ok_t = sh(("test -f %q/baton.lua && test -f %q/baton/mcp.lua"):format(types_dir, types_dir))
    local _, rock_dir = sh(("luarocks --lua-version=5.4 --tree %q show --rock-dir baton"):format(tree))
    sh(("rm -rf %q && mv %q %q"):format(co, tree, moved))
    local ok_m, mcp = sh(("cd / && %s %q/bin/baton -e %q"):format(
      "env -i PATH=/usr/bin:/bin", moved,
      'print(package.searchpath("baton.mcp", package.path)) print(require("baton.mcp").VERSION)'))
    local ok_v, version = sh(("cd / && env -i %q/bin/baton -v"):format(moved))
    sh(("rm -rf %q"):format(work))
    assert.is_true(ok, out)
    for file in listing:gmatch("[^\n]+") do
      assert.is_truthy(file == "lib/lua/5.4/baton.so" or file:match("^share/lua/5%.4/baton/[%w_/]+%.lua$"),
                       "not a module in a module directory: " .. file)
    end
    assert.matches("share/lua/5.4/baton/mcp/session.lua", listing, 1, true)
    assert.is_true(ok_t, "no annotations in " .. types_dir)
    assert.equal(tree .. "/lib/luarocks/rocks-5.4/baton/scm-1\n", rock_dir)
    assert.is_true(ok_m, mcp)
    assert.equal(moved .. "/share/lua/5.4/baton/mcp.lua\n0.1.0\n", mcp)
    assert.is_true(ok_v, version)
    assert.matches("^baton %d+%.%d+%.%d+ %(Lua 5%.4", version)
  end)
end)
