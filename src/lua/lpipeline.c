/*
 * lpipeline.c — baton.pipeline(): named stages run in order over one value.
 *
 *   p:stage(name, fn) -> p      fn(value) -> next value | nil, msg[, kind[, detail]]; may await
 *   p:on_error(fn) -> p         fn(stage_name, msg, kind, detail) -> replacement value
 *   p:run(input)                -> output | nil, msg, kind, { stage =, detail = }
 *   p:run_timed(input)          -> { output =, timings = { { name, ms }... } } | the same failure
 *
 * Errors (docs/errors.md). Raise: misuse (a stage name that is not a non-empty string, a
 * stage or handler that is not a function, a bad self, a pipeline finalized mid-run), an
 * error the handler raises (a bug in the policy), and the cancellation error. Return
 * failures: run and run_timed, when a stage fails and no handler recovers it:
 * `nil, "baton.pipeline:run: stage 'name' failed: <msg>", <the stage's kind>,
 * { stage = name, detail = <the stage's detail> }`. A stage fails when it raises or
 * returns `nil, msg[, kind[, detail]]`, both read by lbt_outcome (the one rule; kind
 * "error" when it gave none). With a handler, its first result replaces the failed stage's
 * output and the run goes on; a handler may decline by returning a failure (the run then
 * fails at that stage with it). Cancellation is never a stage failure: the cancellation
 * error is re-raised untouched, so the task unwinds.
 *
 * The order, the decisions and the timings are the core's (pipeline.c). The run itself is
 * a C loop that calls each stage with lua_pcallk/lua_callk, so stages and handlers may
 * yield; its state lives on the Lua stack of the calling coroutine:
 *   1 pipeline  2 current value  3 run (core cursor, a plain userdata)  4 stage functions
 *   5 error handler or nil       6-8 the last failure (message, kind, detail)
 *   9.. a stage's or the handler's results (four)
 * The stages counted when a run begins are the ones it runs.
 */
#include <string.h>

#include "lbaton.h"
#include "pipeline.h"

#define BT_PIPELINE_MT "baton.Pipeline"

enum { S_PIPE = 1, S_VALUE, S_RUN, S_FNS, S_HANDLER, S_MSG, S_KIND, S_DETAIL, S_RESULTS };

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
  static const char *const F = "baton.pipeline:stage";
  bt_pipeline_t *p = check_pipe(L, 1);
  size_t len;
  const char *name = lbt_arg_string(L, F, 2, "name", &len);
  if (len == 0) lbt_argerror(L, F, 2, "name", "non-empty string");
  lbt_arg_function(L, F, 3, "fn");
  lua_settop(L, 3);
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, (lua_Integer)p->n + 1);  /* before the name: may raise, then no harm */
  if (bt__pipeline_add(p, name, len) != 0) {
    lua_pushnil(L);
    lua_rawseti(L, -2, (lua_Integer)p->n + 1);
    return luaL_error(L, "%s: out of memory", F);
  }
  lua_settop(L, 1);
  return 1;
}

static int lpipe_on_error(lua_State *L) {
  check_pipe(L, 1);
  if (!lua_isnil(L, 2) && !lua_isfunction(L, 2))
    lbt_argerror(L, "baton.pipeline:on_error", 2, "fn", "function or nil");
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

/* A stage or the handler returned (status LUA_OK, or LUA_YIELD in its continuation: four
 * results from S_RESULTS) or a stage raised (the error there). Keeps the next value or the
 * failure; re-raises cancellation and errors pcall must not hide. */
static bt_pipeline_step_t after_call(lua_State *L, int status) {
  int ok = lbt_outcome(L, status, S_RESULTS);
  if (ok) lua_copy(L, S_RESULTS, S_VALUE);
  else for (int i = 0; i < 3; i++) lua_copy(L, S_RESULTS + i, S_MSG + i);
  lua_settop(L, S_DETAIL);
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

static int call_k(lua_State *L, int status, lua_KContext timed) {
  return drive(L, after_call(L, status), timed);
}

static int drive(lua_State *L, bt_pipeline_step_t step, lua_KContext timed) {
  for (;;) {
    bt_pipeline_run_t *r = run_of(L);
    switch (step) {
    case BT_PIPELINE_STAGE:
      lua_rawgeti(L, S_FNS, (lua_Integer)r->i + 1);
      lua_pushvalue(L, S_VALUE);
      step = after_call(L, lua_pcallk(L, 1, 4, 0, timed, call_k));
      break;
    case BT_PIPELINE_RECOVER:  /* handler(stage, msg, kind, detail): its raise propagates */
      lua_pushvalue(L, S_HANDLER);
      push_name(L, r->i);
      for (int i = S_MSG; i <= S_DETAIL; i++) lua_pushvalue(L, i);
      lua_callk(L, 4, 4, timed, call_k);
      step = after_call(L, LUA_OK);
      break;
    case BT_PIPELINE_DONE:
      return finish(L, (int)timed);
    default: {  /* BT_PIPELINE_FAILED: the stage's kind, kept (user kinds too) */
      lua_createtable(L, 0, 2);
      push_name(L, r->i);
      lua_setfield(L, -2, "stage");
      lua_pushvalue(L, S_DETAIL);
      lua_setfield(L, -2, "detail");
      lua_pushnil(L);
      lua_pushfstring(L, "baton.pipeline:%s: stage '%s' failed: %s", timed ? "run_timed" : "run",
                      bt__pipeline_name(check_pipe(L, S_PIPE), r->i), lua_tostring(L, S_MSG));
      lua_pushvalue(L, S_KIND);
      lua_rotate(L, -4, -1);  /* nil, message, kind, detail */
      return 4;
    }
    }
  }
}

static int run(lua_State *L, int timed) {
  bt_pipeline_t *p = check_pipe(L, 1);
  lua_settop(L, 2);
  bt_pipeline_run_t *r = lua_newuserdatauv(L, bt__pipeline_run_size(p->n), 0);
  lua_getiuservalue(L, 1, 1);
  lua_getiuservalue(L, 1, 2);
  lua_settop(L, S_DETAIL);
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
