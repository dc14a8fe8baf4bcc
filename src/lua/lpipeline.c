/*
 * lpipeline.c — baton.pipeline(): named stages run in order over one value.
 *
 *   p:stage(name, fn) -> p      fn(value) -> next value; may await
 *   p:on_error(fn) -> p         fn(stage_name, err) -> replacement value
 *   p:run(input)                -> output | nil, err, stage_name
 *   p:run_timed(input)          -> { output =, timings = { { name, ms }... } } | nil, err, stage_name
 *
 * A stage fails when it raises, or when it returns `nil, err` (err not nil) — the way
 * baton's own calls report failures of the world. Without a handler the first failure
 * stops the run, which returns `nil, err, stage_name`: a failed stage is an outcome the
 * policy branches on, not a misuse (DESIGN's rule). With a handler, its first result
 * replaces the failed stage's output and the run goes on; a handler may decline by
 * returning `nil, err`, and an error it raises propagates. Cancellation is never a stage
 * failure: the cancellation error is re-raised untouched, so the task unwinds.
 *
 * The order, the decisions and the timings are the core's (pipeline.c). The run itself is
 * a C loop that calls each stage with lua_pcallk/lua_callk, so stages and handlers may
 * yield; its state lives on the Lua stack of the calling coroutine:
 *   1 pipeline  2 current value  3 run (core cursor, a plain userdata)  4 stage functions
 *   5 error handler or nil       6 the last stage error
 * The stages counted when a run begins are the ones it runs.
 */
#include <string.h>

#include "lbaton.h"
#include "pipeline.h"

#define BT_PIPELINE_MT "baton.Pipeline"

enum { S_PIPE = 1, S_VALUE, S_RUN, S_FNS, S_HANDLER, S_ERR };

typedef struct lpipe {
  bt_pipeline_t *p;         /* &storage until finalized, then NULL */
  bt_pipeline_t storage;
} lpipe;
LBT_HANDLE_FIRST(lpipe, p);

/* Raises once the pipeline is finalized, a run in progress included (its next stage). */
static bt_pipeline_t *check_pipe(lua_State *L, int idx) {
  return ((lpipe *)lbt_check_handle(L, idx, LBT_PIPELINE))->p;
}

static int lpipe_new(lua_State *L) {
  lpipe *P = lua_newuserdatauv(L, sizeof *P, 2);
  bt__pipeline_init(&P->storage);
  P->p = &P->storage;
  luaL_setmetatable(L, BT_PIPELINE_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static int lpipe_stage(lua_State *L) {
  bt_pipeline_t *p = check_pipe(L, 1);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, len > 0, 2, "a stage name must not be empty");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, (lua_Integer)p->n + 1);  /* before the name: may raise, then no harm */
  if (bt__pipeline_add(p, name, len) != 0) {
    lua_pushnil(L);
    lua_rawseti(L, -2, (lua_Integer)p->n + 1);
    return luaL_error(L, "pipeline:stage: out of memory");
  }
  lua_settop(L, 1);
  return 1;
}

static int lpipe_on_error(lua_State *L) {
  check_pipe(L, 1);
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, 2);
  return 1;
}

/* #p, and __tostring: 0 stages and "finalized" once it is. */
static int lpipe_len(lua_State *L) {
  lpipe *P = lbt_check_type(L, 1, LBT_PIPELINE);
  lua_pushinteger(L, P->p ? (lua_Integer)P->p->n : 0);
  return 1;
}

static int lpipe_tostring(lua_State *L) {
  lpipe *P = lbt_check_type(L, 1, LBT_PIPELINE);
  bt_pipeline_t *p = P->p;
  if (p == NULL) {
    lua_pushliteral(L, "baton.Pipeline (finalized)");
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_pushfstring(L, "baton.Pipeline (%I stage%s", (LUAI_UACINT)p->n, p->n == 1 ? "" : "s");
  luaL_addvalue(&b);
  for (size_t i = 0; i < p->n; i++) {
    luaL_addstring(&b, i ? " -> " : ": ");
    luaL_addstring(&b, p->names[i]);
  }
  luaL_addchar(&b, ')');
  luaL_pushresult(&b);
  return 1;
}

static int lpipe_gc(lua_State *L) {
  lpipe *P = lbt_check_type(L, 1, LBT_PIPELINE);
  bt__pipeline_destroy(&P->storage);
  P->p = NULL;
  return 0;
}

/* ---- running ------------------------------------------------------------------------ */

static bt_pipeline_run_t *run_of(lua_State *L) { return lua_touserdata(L, S_RUN); }

/* A stage returned (status LUA_OK, or LUA_YIELD in its continuation: two results on top) or
 * raised (the error on top). Re-raises cancellation and errors pcall must not hide. */
static bt_pipeline_step_t after_stage(lua_State *L, int status) {
  int ok;
  if (status == LUA_OK || status == LUA_YIELD) {
    ok = !(lua_isnil(L, -2) && !lua_isnil(L, -1));
    if (ok) {
      lua_pop(L, 1);
      lua_replace(L, S_VALUE);
    } else {
      lua_replace(L, S_ERR);
      lua_pop(L, 1);
    }
  } else {
    if (status != LUA_ERRRUN || lbt_is_cancel_error(L, -1)) lua_error(L);
    ok = 0;
    lua_replace(L, S_ERR);
  }
  return bt__pipeline_run_next(run_of(L), ok);
}

/* The handler returned: a replacement (two results on top), or `nil, err` to decline. */
static bt_pipeline_step_t after_recover(lua_State *L) {
  int ok = !(lua_isnil(L, -2) && !lua_isnil(L, -1));
  if (ok) {
    lua_pop(L, 1);
    lua_replace(L, S_VALUE);
  } else {
    lua_replace(L, S_ERR);
    lua_pop(L, 1);
  }
  return bt__pipeline_run_next(run_of(L), ok);
}

static void push_name(lua_State *L, size_t i) {
  lua_pushstring(L, bt__pipeline_name(check_pipe(L, S_PIPE), i));
}

static int finish(lua_State *L, int timed) {
  bt_pipeline_run_t *r = run_of(L);
  if (!timed) {
    lua_pushvalue(L, S_VALUE);
    return 1;
  }
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, S_VALUE);
  lua_setfield(L, -2, "output");
  lua_createtable(L, (int)r->n, 0);
  for (size_t i = 0; i < r->n; i++) {
    lua_createtable(L, 2, 2);
    push_name(L, i);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, 1);
    lua_setfield(L, -2, "name");
    lua_pushnumber(L, (lua_Number)bt__pipeline_run_ms(r, i));
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, 2);
    lua_setfield(L, -2, "ms");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "timings");
  return 1;
}

static int drive(lua_State *L, bt_pipeline_step_t step, lua_KContext timed);

static int stage_k(lua_State *L, int status, lua_KContext timed) {
  return drive(L, after_stage(L, status), timed);
}

static int recover_k(lua_State *L, int status, lua_KContext timed) {
  (void)status;
  return drive(L, after_recover(L), timed);
}

static int drive(lua_State *L, bt_pipeline_step_t step, lua_KContext timed) {
  for (;;) {
    bt_pipeline_run_t *r = run_of(L);
    switch (step) {
    case BT_PIPELINE_STAGE:
      lua_rawgeti(L, S_FNS, (lua_Integer)r->i + 1);
      lua_pushvalue(L, S_VALUE);
      step = after_stage(L, lua_pcallk(L, 1, 2, 0, timed, stage_k));
      break;
    case BT_PIPELINE_RECOVER:
      lua_pushvalue(L, S_HANDLER);
      push_name(L, r->i);
      lua_pushvalue(L, S_ERR);
      lua_callk(L, 2, 2, timed, recover_k);
      step = after_recover(L);
      break;
    case BT_PIPELINE_DONE:
      return finish(L, (int)timed);
    default:  /* BT_PIPELINE_FAILED */
      lua_pushnil(L);
      lua_pushvalue(L, S_ERR);
      push_name(L, r->i);
      return 3;
    }
  }
}

static int run(lua_State *L, int timed) {
  bt_pipeline_t *p = check_pipe(L, 1);
  lua_settop(L, 2);
  bt_pipeline_run_t *r = lua_newuserdatauv(L, bt__pipeline_run_size(p->n), 0);
  lua_getiuservalue(L, 1, 1);
  lua_getiuservalue(L, 1, 2);
  lua_pushnil(L);
  return drive(L, bt__pipeline_run_begin(r, p->n, !lua_isnil(L, S_HANDLER)), timed);
}

static int lpipe_run(lua_State *L) { return run(L, 0); }
static int lpipe_run_timed(lua_State *L) { return run(L, 1); }

void lbt_open_pipeline(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"stage", lpipe_stage}, {"on_error", lpipe_on_error}, {"run", lpipe_run},
    {"run_timed", lpipe_run_timed}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__len", lpipe_len}, {"__tostring", lpipe_tostring}, {"__gc", lpipe_gc}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_PIPELINE_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"pipeline", lpipe_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
