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
external_dependencies = {
  LIBUV = { header = "uv.h" },
  CJSON = { header = "cjson/cJSON.h" },
  CURL = { header = "curl/curl.h" },
  READLINE = { header = "readline/readline.h" },  -- for the baton executable's REPL
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    BATON_TESTS = "OFF",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    BATON_LUA_CMOD_DIR = "$(LIBDIR)",
    BATON_LUA_LMOD_DIR = "$(LUADIR)",
  },
}
