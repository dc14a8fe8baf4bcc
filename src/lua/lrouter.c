/*
 * lrouter.c — opens the Lua-written parts of the routing layer, compiled into the module:
 * lua/baton/store.lua (baton.store: the store interface's memory implementation, and the
 * rate limiter over a store that baton.ratelimit{ store = } builds) and lua/baton/router.lua
 * (baton.router, baton.router.classify, baton.router.usage).
 *
 * They run with the module table as their argument when `require "baton"` opens it, after
 * the C openers whose functions they use (baton.notify, baton.clock, baton.ratelimit). A
 * chunk that fails to load or run is a build defect: the error propagates out of require.
 */
#include "lbaton.h"
#include "router_lua.h"  /* lbt_router_lua: lua/baton/router.lua */
#include "store_lua.h"   /* lbt_store_lua: lua/baton/store.lua */

static void run_chunk(lua_State *L, const char *code, size_t len, const char *name) {
  if (luaL_loadbufferx(L, code, len, name, "t") != LUA_OK) lua_error(L);
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
}

void lbt_open_router(lua_State *L, int rt_idx) {
  (void)rt_idx;
  run_chunk(L, lbt_store_lua, sizeof lbt_store_lua, "@lua/baton/store.lua");
  run_chunk(L, lbt_router_lua, sizeof lbt_router_lua, "@lua/baton/router.lua");
}
