-- Builds the baton Lua module with LuaRocks (offline: sources are this checkout).
--   luarocks --lua-version=5.4 make baton-scm-1.rockspec
rockspec_format = "3.0"
package = "baton"
version = "scm-1"
source = { url = "git+file://." }
description = {
  summary = "Lua-scriptable orchestration runtime: tasks, groups, semaphores, timers, processes, HTTP on libuv",
  license = "MIT",
}
dependencies = { "lua >= 5.4, < 5.5" }
-- libuv, libcurl, hiredis and (for the executable's REPL) readline are found by CMake
-- through pkg-config, as the CMake build finds them (Debian keeps curl.h in a multiarch
-- include directory LuaRocks' own header search does not look in): scripts/deps.sh installs
-- them.
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    BATON_TESTS = "OFF",
    BATON_INSTALL_DEV = "OFF",  -- only modules (and the executable) go into the tree
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    BATON_LUA_CMOD_DIR = "$(LIBDIR)",
    BATON_LUA_LMOD_DIR = "$(LUADIR)",
  },
}
