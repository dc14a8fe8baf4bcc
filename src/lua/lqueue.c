/*
 * lqueue.c — opens lua/baton/queue.lua (compiled into the module): baton.redis.queue, the
 * work queue on a Redis stream, and the distributed runner that baton.runner{ queue = }
 * builds over it (docs/redis.md, "The work queue").
 *
 * The chunk is loaded lazily, as lrouter.c loads store.lua: until first used,
 * baton.redis.queue is a small function that runs the chunk (which sets the real one in
 * baton.redis and the runner constructor in its table) and forwards to it. baton.runner
 * stays the in-process runner of lrunner.c: it is wrapped here so that options with a
 * `queue` go to the queue's runner and everything else, misuse included, to the C
 * constructor untouched (a tail call, so its errors are the same). A chunk that fails to
 * load or run is a build defect: the error propagates to that first use.
 */
#include "lbaton.h"
#include "queue_lua.h"  /* lbt_queue_lua: lua/baton/queue.lua */

/* Upvalue 1: the module table. Runs the chunk with it; returns the chunk's table. */
static int load_queue(lua_State *L) {
  if (luaL_loadbufferx(L, lbt_queue_lua, sizeof lbt_queue_lua, "@lua/baton/queue.lua", "t") !=
      LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 1, 1);
  return 1;
}

static const char wrap[] =
  "local baton, load = ...\n"
  "local mod\n"
  "local function get()\n"
  "  if mod == nil then mod = load() end\n"
  "  return mod\n"
  "end\n"
  "if baton.redis then\n"
  "  baton.redis.queue = function(opts) return get().queue(opts) end\n"
  "end\n"
  "local inproc = baton.runner\n"
  "baton.runner = function(...)\n"
  "  local opts = ...\n"
  "  if type(opts) == 'table' and rawget(opts, 'queue') ~= nil then\n"
  "    return get().runner(opts)\n"
  "  end\n"
  "  return inproc(...)\n"
  "end\n";

void lbt_open_queue(lua_State *L, int rt_idx) {
  (void)rt_idx;
  if (luaL_loadbufferx(L, wrap, sizeof wrap - 1, "=baton.queue", "t") != LUA_OK) lua_error(L);
  lua_pushvalue(L, -2);
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, load_queue, 1);
  lua_call(L, 2, 0);
}
