/*
 * lretry.c — baton.retry{ max_attempts =, base_ms =, max_delay_ms =, jitter =, retry_on =,
 * on_retry = }: run a function again after failures, waiting between attempts.
 *
 *   r:call(fn, ...)     -> fn's results | nil, err, attempts
 *   r:delay_for(n)      -> ms to wait after the n-th failed attempt (jitter applied)
 *
 * An attempt fails when fn raises, or returns `nil, err` (err not nil) — the way baton's
 * own calls report failures of the world (lpipeline.c's rule too). Giving up is
 * an outcome, not a misuse: after the last attempt, or when retry_on(err) says no, call
 * returns `nil, err, attempts` (the last error, and how many attempts ran). An error that
 * is a table with a numeric `retry_after_ms` sets the next wait itself (capped at
 * max_delay_ms, no jitter). Cancellation is never retried: a cancellation error raised by
 * fn, or any error while the task is cancelled, propagates, and the wait between attempts
 * is a cancellable await. Misuse (bad options, a wait outside a task) raises.
 *
 * The decisions are the core's (retry.c); the loop is C driving fn, retry_on and on_retry
 * through lua_pcallk/lua_callk, so each may await. Its state lives on the stack of the
 * calling coroutine:  1 policy  2 run cursor  3 last error  4 fn  5.. fn's arguments.
 */
#include <math.h>
#include <string.h>

#include "lbaton.h"
#include "retry.h"

#define BT_RETRY_MT "baton.Retry"

enum { S_SELF = 1, S_RUN, S_ERR, S_FN };

typedef struct lrun {
  bt_retry_run_t c;
  int nargs;
} lrun;

static const char *const jitter_names[] = {"none", "full", "equal", NULL};

static bt_retry_t *check_retry(lua_State *L, int idx) {
  return lbt_check_type(L, idx, LBT_RETRY);  /* never closed: no __gc, nothing owned */
}

static int lretry_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  static const char *const known[] = {"max_attempts", "base_ms", "max_delay_ms", "jitter",
                                      "retry_on", "on_retry", NULL};
  lbt_check_fields(L, 1, "baton.retry", known);
  lua_Integer attempts = lbt_opt_int(L, "baton.retry", "max_attempts", 1, -1);
  if (attempts > UINT32_MAX) luaL_error(L, "baton.retry: max_attempts is too large");
  lua_Integer base = lbt_opt_int(L, "baton.retry", "base_ms", 1, -1);
  lua_Integer max = lbt_opt_int(L, "baton.retry", "max_delay_ms", 1, 60000);
  if (max < base)
    luaL_error(L, "baton.retry: max_delay_ms (%I) must be >= base_ms (%I)", max, base);
  lua_getfield(L, 1, "jitter");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "baton.retry: jitter must be \"none\", \"full\" or \"equal\"");
  int jitter = 0;
  if (lua_isstring(L, -1)) {
    const char *j = lua_tostring(L, -1);
    while (jitter_names[jitter] && strcmp(jitter_names[jitter], j) != 0) jitter++;
    if (!jitter_names[jitter])
      luaL_error(L, "baton.retry: jitter must be \"none\", \"full\" or \"equal\" (got \"%s\")", j);
  }
  lua_pop(L, 1);
  bt_retry_t *r = lua_newuserdatauv(L, sizeof *r, 2);
  luaL_setmetatable(L, BT_RETRY_MT);
  bt__retry_init(r, (uint32_t)attempts, (uint64_t)base, (uint64_t)max, (bt_retry_jitter_t)jitter,
                uv_hrtime() ^ (uint64_t)(uintptr_t)r);
  lbt_opt_func(L, "baton.retry", "retry_on", 1);
  lbt_opt_func(L, "baton.retry", "on_retry", 2);
  return 1;
}

static int lretry_delay_for(lua_State *L) {
  bt_retry_t *r = check_retry(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 1, 2, "attempt numbers start at 1");
  lua_pushinteger(L, (lua_Integer)bt__retry_delay(r, (uint64_t)n));
  return 1;
}

static int lretry_tostring(lua_State *L) {
  bt_retry_t *r = check_retry(L, 1);
  lua_pushfstring(L, "baton.Retry (%I attempts, base %I ms, max %I ms, jitter %s)",
                  (LUAI_UACINT)r->max_attempts, (LUAI_UACINT)r->base_ms,
                  (LUAI_UACINT)r->max_delay_ms, jitter_names[r->jitter]);
  return 1;
}

/* ---- call --------------------------------------------------------------------------- */

static lrun *run_of(lua_State *L) { return lua_touserdata(L, S_RUN); }

static int task_cancelled(lua_State *L) {
  bt_task_t *t = bt_rt_current(lbt_R(L)->rt);
  return t != NULL && (t->flags & BT_TASK_F_CANCEL);
}

/* The delay a failure asks for: a table error's numeric retry_after_ms >= 0, else -1. */
static int64_t retry_after(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return -1;
  lua_pushliteral(L, "retry_after_ms");
  lua_rawget(L, idx);
  lua_Number ms = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
  lua_pop(L, 1);
  if (!(ms >= 0)) return -1;  /* negative, NaN, or not a number */
  return ms >= 9e18 ? INT64_MAX : (int64_t)ceil(ms);
}

/* An attempt returned (LUA_OK, or LUA_YIELD in its continuation: results on top) or
 * raised (the error on top). Returns the next step, or -1 when it succeeded. */
static int after_call(lua_State *L, int status) {
  lrun *c = run_of(L);
  int base = S_FN + c->nargs + 1;
  if (status == LUA_OK || status == LUA_YIELD) {
    int n = lua_gettop(L) - base + 1;
    if (!(n >= 2 && lua_isnil(L, base) && !lua_isnil(L, base + 1))) return -1;
    lua_pushvalue(L, base + 1);
  } else if (status != LUA_ERRRUN || lbt_is_cancel_error(L, -1) || task_cancelled(L)) {
    lua_error(L);
  }
  lua_replace(L, S_ERR);
  lua_settop(L, base - 1);
  return bt__retry_failed(check_retry(L, S_SELF), &c->c, retry_after(L, S_ERR));
}

static int drive(lua_State *L, int step);

static int call_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  return drive(L, after_call(L, status));
}

static int ask_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int yes = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return drive(L, bt__retry_answer(check_retry(L, S_SELF), &run_of(L)->c, yes));
}

static int slept_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lbt_task *T = (lbt_task *)bt_rt_current(lbt_R(L)->rt);
  if (lbt_fib(T)->status == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL))
    return lbt_raise_cancelled(L);
  return drive(L, bt__retry_waited(&run_of(L)->c));
}

static int sleep_between(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_await_begin(L, R, "retry:call");
  uint64_t due = bt_now(R->rt) + run_of(L)->c.delay;
  bt_task_wait(R->rt, &T->t, &lbt_fib(T)->wait, NULL, due);
  return lbt_suspend(L, 0, slept_k);
}

static int notified_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return sleep_between(L);
}

static int drive(lua_State *L, int step) {
  for (;;) {
    lrun *c = run_of(L);
    switch (step) {
    case -1:  /* success: fn's results are on top */
      return lua_gettop(L) - (S_FN + c->nargs);
    case BT_RETRY_CALL:
      luaL_checkstack(L, c->nargs + 1, "retry:call: too many arguments");
      for (int i = 0; i <= c->nargs; i++) lua_pushvalue(L, S_FN + i);
      step = after_call(L, lua_pcallk(L, c->nargs, LUA_MULTRET, 0, 0, call_k));
      break;
    case BT_RETRY_ASK:
      lua_getiuservalue(L, S_SELF, 1);
      lua_pushvalue(L, S_ERR);
      lua_callk(L, 1, 1, 0, ask_k);
      return ask_k(L, LUA_OK, 0);
    case BT_RETRY_WAIT:
      if (lua_getiuservalue(L, S_SELF, 2) == LUA_TFUNCTION) {
        lua_pushinteger(L, (lua_Integer)c->c.attempt);
        lua_pushinteger(L, (lua_Integer)c->c.delay);
        lua_pushvalue(L, S_ERR);
        lua_callk(L, 3, 0, 0, notified_k);
      } else {
        lua_pop(L, 1);
      }
      return sleep_between(L);
    default:  /* BT_RETRY_GIVE_UP */
      lua_pushnil(L);
      lua_pushvalue(L, S_ERR);
      lua_pushinteger(L, (lua_Integer)c->c.attempt);
      return 3;
    }
  }
}

static int lretry_call(lua_State *L) {
  check_retry(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 2;
  lrun *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->nargs = nargs;
  lua_insert(L, S_RUN);
  lua_pushnil(L);
  lua_insert(L, S_ERR);
  int has_pred = lua_getiuservalue(L, S_SELF, 1) == LUA_TFUNCTION;
  lua_pop(L, 1);
  return drive(L, bt__retry_begin(&c->c, has_pred));
}

void lbt_open_retry(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"call", lretry_call}, {"delay_for", lretry_delay_for}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__tostring", lretry_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_RETRY_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"retry", lretry_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
