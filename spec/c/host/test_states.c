/*
 * test_states.c — a C host that embeds Lua and loads the built module (`require "baton"`)
 * into several Lua states, as an application would: each state has its own runtime, and
 * every binding call must find the runtime of the state it runs in, whichever state ran
 * last, from threads made before or after baton was loaded, and whether or not the host
 * uses the state's extra space (LUA_EXTRASPACE) itself (lbaton.h, lbt_R).
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
      exit(1);                                                                   \
    }                                                                            \
  } while (0)

/* Runs chunk `code` in L; its one result, an integer, is returned. */
static lua_Integer run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "error: %s\n", lua_tostring(L, -1));
    exit(1);
  }
  lua_Integer n = lua_tointeger(L, -1);
  lua_settop(L, 0);
  return n;
}

/* A state with the standard libraries and the built module on its cpath; `extra`, when
 * not NULL, is the host's own pointer in the extra space, set before baton is loaded. */
static lua_State *new_state(void *extra) {
  lua_State *L = luaL_newstate();
  CHECK(L != NULL);
  /* Lua leaves the main thread's extra space uninitialised: it is the host's to set. A
   * state whose extra space holds anything but NULL when baton is loaded makes baton read
   * its runtime from upvalues in every state from then on (still correct, only slower). */
  *(void **)lua_getextraspace(L) = extra;
  luaL_openlibs(L);
  const char *build = getenv("BATON_BUILD");
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.so", build != NULL ? build : "build");
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  /* A coroutine made before baton is loaded: its extra space was copied from the main
   * thread's before baton put its runtime there. */
  run(L, "early = coroutine.wrap(function(f) while true do f = coroutine.yield(f()) end end)"
         " return 0");
  return L;
}

/* The sum 1..n computed by n tasks of a group, each yielding once: the state's runtime
 * runs them, or baton.run reports a deadlock. */
static const char *const FANOUT =
  "local baton = require 'baton'\n"
  "return baton.run(function(n)\n"
  "  local g = baton.group()\n"
  "  local sem = baton.semaphore(2)\n"
  "  for i = 1, n do\n"
  "    g:spawn(function() local _ <close> = sem:acquire(); baton.yield(); return i end)\n"
  "  end\n"
  "  local sum = 0\n"
  "  for _, t in ipairs(g:join_all()) do sum = sum + select(2, t:join()) end\n"
  "  return sum\n"
  "end, N)\n";

static lua_Integer fanout(lua_State *L, int n) {
  lua_pushinteger(L, n);
  lua_setglobal(L, "N");
  return run(L, FANOUT);
}

static void test_states_alternate(void) {
  lua_State *a = new_state(NULL), *b = new_state(NULL);
  CHECK(fanout(a, 10) == 55);
  CHECK(fanout(b, 20) == 210);
  CHECK(fanout(a, 30) == 465);
  CHECK(fanout(b, 4) == 10);
  lua_close(b);
  CHECK(fanout(a, 3) == 6);
  lua_close(a);
  printf("ok - states_alternate\n");
}

/* Baton called from a coroutine made before it was loaded: baton.run there, and a
 * semaphore made there used by the tasks. */
static void test_early_thread(void) {
  lua_State *L = new_state(NULL);
  CHECK(run(L, "return early(function() return 1 end)") == 1);
  CHECK(run(L, "local baton = require 'baton'\n"
               "return early(function()\n"
               "  local sem = baton.semaphore(1)\n"
               "  return baton.run(function()\n"
               "    local t = baton.spawn(function() local p = sem:acquire(); p:release();"
               "                                     return 7 end)\n"
               "    return select(2, t:join()) + sem:available()\n"
               "  end)\n"
               "end)") == 8);
  CHECK(fanout(L, 6) == 21);
  lua_close(L);
  printf("ok - early_thread\n");
}

/* A host that keeps its own pointer in the extra space: baton leaves it there, and from
 * then on every state (this one, and one loaded before it) still finds its runtime. */
static void test_host_extraspace(void) {
  static int mine;
  lua_State *a = new_state(NULL);
  CHECK(fanout(a, 5) == 15);
  lua_State *h = new_state(&mine);
  CHECK(fanout(h, 7) == 28);
  CHECK(*(void **)lua_getextraspace(h) == &mine);
  CHECK(run(h, "return early(function() return #require('baton').group():join_all() end)")
        == 0);
  CHECK(fanout(a, 8) == 36);
  lua_State *b = new_state(NULL);
  CHECK(fanout(b, 9) == 45);
  CHECK(fanout(h, 2) == 3);
  CHECK(*(void **)lua_getextraspace(h) == &mine);
  lua_close(h);
  lua_close(b);
  lua_close(a);
  printf("ok - host_extraspace\n");
}

int main(void) {
  test_states_alternate();
  test_early_thread();
  test_host_extraspace();  /* last: it makes every state read the upvalue */
  return 0;
}
