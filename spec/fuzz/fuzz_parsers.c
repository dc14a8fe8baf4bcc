/*
 * fuzz_parsers.c — a libFuzzer target for the parsers of what peers send: baton.json.decode
 * (cJSON plus baton's conversion to Lua values, integers, depth limit, error positions) and
 * the HTTP response-head reader (header lines to a table, Retry-After). The first byte of
 * an input picks the parser; the rest is the peer's bytes. Built by `make fuzz` (clang,
 * -DBATON_FUZZ=ON); not a test.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>

#include "lbaton.h"

static lua_State *L;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "baton", lbt_open, 1);
    lua_getfield(L, -1, "json");
    lua_getfield(L, -1, "decode");
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.decode");
    lua_settop(L, 0);
  }
  if (size == 0) return 0;
  const char *p = (const char *)data + 1;
  size_t n = size - 1;
  if (data[0] & 1) {
    lbt_http_push_headers(L, p, n);
    lbt_http_retry_after(L);
  } else {
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.decode");
    lua_pushlstring(L, p, n);
    if (lua_pcall(L, 1, 2, 0) != LUA_OK) abort();  /* decode returns failures, never raises */
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
