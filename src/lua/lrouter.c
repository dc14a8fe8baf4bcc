/*
 * lrouter.c — opens the Lua-written parts of the routing layer, compiled into the module:
 * lua/baton/store.lua (baton.store: the store interface's memory implementation, the rate
 * limiter over a store that baton.ratelimit{ store = } builds, breaker backends over a
 * store, dedup over a store, the Redis store that baton.redis.store builds) and lua/baton/router.lua (baton.router, baton.router.classify, .usage).
 *
 * They are loaded lazily: compiling them costs about 1.6 ms, which a script that never
 * routes should not pay at `require "baton"`. Until first used, baton.store and
 * baton.router are small proxies; the first index or call of either runs its chunk with
 * the module table (the chunk replaces the proxy in the module table with the real table)
 * and forwards to it, as does any reference to the proxy kept from before (a tail call, so
 * misuse is still blamed on the caller). A chunk that fails to load or run is a build
 * defect: the error propagates to that first use.
 */
#include "lbaton.h"
#include "router_lua.h"  /* lbt_router_lua: lua/baton/router.lua */
#include "store_lua.h"   /* lbt_store_lua: lua/baton/store.lua */

/* Upvalue 1: the module table. Runs the chunk, which sets module[name]; returns it. */
static int load_part(lua_State *L, const char *code, size_t len, const char *chunk,
                     const char *name) {
  if (luaL_loadbufferx(L, code, len, chunk, "t") != LUA_OK) return lua_error(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 1, 0);
  lua_getfield(L, lua_upvalueindex(1), name);
  return 1;
}

static int load_store(lua_State *L) {
  return load_part(L, lbt_store_lua, sizeof lbt_store_lua, "@lua/baton/store.lua", "store");
}

static int load_router(lua_State *L) {
  return load_part(L, lbt_router_lua, sizeof lbt_router_lua, "@lua/baton/router.lua", "router");
}

static const char proxies[] =
  "local baton, load_store, load_router = ...\n"
  "local function lazy(name, load)\n"
  "  local real\n"
  "  local function get()\n"
  "    if real == nil then real = load() end\n"
  "    return real\n"
  "  end\n"
  "  return setmetatable({}, {\n"
  "    __index = function(_, k) return get()[k] end,\n"
  "    __call = function(_, ...) return get()(...) end,\n"
  "    __tostring = function() return 'baton.' .. name .. ' (not loaded yet)' end,\n"
  "  })\n"
  "end\n"
  "baton.store = lazy('store', load_store)\n"
  "baton.router = lazy('router', load_router)\n"
  "if baton.redis then\n"
  "  baton.redis.store = function(opts) return baton.store._redis(opts) end\n"
  "end\n";

void lbt_open_router(lua_State *L, int rt_idx) {
  (void)rt_idx;
  if (luaL_loadbufferx(L, proxies, sizeof proxies - 1, "=baton.router", "t") != LUA_OK)
    lua_error(L);
  lua_pushvalue(L, -2);
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, load_store, 1);
  lua_pushvalue(L, -4);
  lua_pushcclosure(L, load_router, 1);
  lua_call(L, 3, 0);
}
