/*
 * module.c — the entry point of baton.so for a stock Lua 5.4 interpreter:
 * `require "baton"` calls luaopen_baton. Everything else lives in the static binding
 * library shared with the `baton` executable.
 *
 * The first time it runs in a state, it gives the state the executable's allocator (the
 * size-class arena, src/cli/arena.c) when the state still has the stock one that
 * luaL_newstate installs: the blocks the state already holds stay with the stock allocator,
 * which frees and resizes them when Lua asks. A host that chose its own allocator (to count
 * or cap memory, say) keeps it. So that the arena's code outlives every call lua_close makes,
 * the module is linked never to be unloaded (-z nodelete).
 */
#include "arena.h"
#include "lbaton.h"

__attribute__((visibility("default"))) int luaopen_baton(lua_State *L);

/* Whether L allocates with luaL_newstate's allocator: compared with a scratch state's. */
static int stock_alloc(lua_State *L) {
  static lua_Alloc stock;
  if (stock == NULL) {
    lua_State *tmp = luaL_newstate();
    if (tmp == NULL) return 0;
    stock = lua_getallocf(tmp, NULL);
    lua_close(tmp);
  }
  return lua_getallocf(L, NULL) == stock;
}

int luaopen_baton(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "baton.module");
  int first = lua_isnil(L, -1);
  lua_pop(L, 1);
  if (first && bt_arena_enabled() && stock_alloc(L)) bt_arena_adopt(L);
  return lbt_open(L);
}
