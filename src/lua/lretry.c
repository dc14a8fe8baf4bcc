/*
 * lretry.c — baton.retry{ max_attempts =, base_ms =, max_delay_ms =, jitter =, retry_on =,
 * on_retry = }: run a function again after failures, waiting between attempts.
 *
 *   r:call(fn, ...)     -> fn's results | nil, msg, kind, { attempts =, last = }
 *   r:delay_for(n)      -> ms to wait after the n-th failed attempt (jitter applied)
 *
 * Errors (docs/errors.md). Raise: misuse — bad options (baton.retry), fn not a function,
 * n not an integer >= 1, a wait outside a task — and the cancellation error. Return
 * failures: only call, when it gives up: after the last attempt, or when
 * retry_on(msg, kind, detail) says no, it returns `nil, "baton.retry:call: gave up after N
 * attempts: <last msg>", <last kind>, { attempts = N, last = <last detail> }` — the kind
 * fn gave is kept. An attempt fails when fn raises or returns `nil, msg[, kind[, detail]]`,
 * both read by lbt_outcome (one rule: kind "error" when fn gave none). A failure whose
 * detail (or, as before the detail existed, whose raised or returned error table) has a
 * numeric `retry_after_ms` sets the next wait itself (capped at max_delay_ms, no jitter).
 * Cancellation is never retried: a cancellation error raised by fn, or any error while
 * the task is cancelled, propagates, and the wait between attempts is a cancellable
 * await.
 *
 * The decisions are the core's (retry.c); the loop is C driving fn, retry_on and on_retry
 * through lua_pcallk/lua_callk, so each may await. Its state lives on the stack of the
 * calling coroutine:  1 policy  2 run cursor  3-5 the last failure (message, kind,
 * detail)  6 fn  7.. fn's arguments.
 */
#include <math.h>
#include <string.h>

#include "lbaton.h"
#include "retry.h"

#define BT_RETRY_MT "baton.Retry"

static const char *const F_NEW = "baton.retry";
static const char *const F_CALL = "baton.retry:call";

enum { S_SELF = 1, S_RUN, S_MSG, S_KIND, S_DETAIL, S_FN };

typedef struct lrun {
  bt_retry_run_t c;
  int nargs;
} lrun;

static const char *const jitter_names[] = {"none", "full", "equal", NULL};

static bt_retry_t *check_retry(lua_State *L, int idx) {
  return lbt_check_type(L, idx, LBT_RETRY);  /* never closed: no __gc, nothing owned */
}

static int lretry_new(lua_State *L) {
  static const char *const known[] = {"max_attempts", "base_ms", "max_delay_ms", "jitter",
                                      "retry_on", "on_retry", NULL};
  lbt_check_opts(L, F_NEW, 1, "options", known);
  lua_settop(L, 1);
  lua_Integer attempts = lbt_opt_count(L, F_NEW, 1, "max_attempts", 1, -1);
  if (attempts > UINT32_MAX) lbt_field_error(L, F_NEW, 1, "max_attempts", "integer <= 2^32-1");
  lua_Integer base = lbt_opt_count(L, F_NEW, 1, "base_ms", 1, -1);
  lua_Integer max = lbt_opt_count(L, F_NEW, 1, "max_delay_ms", 1, 60000);
  if (max < base)
    lbt_field_error(L, F_NEW, 1, "max_delay_ms",
                    lua_pushfstring(L, "integer >= base_ms %I", (LUAI_UACINT)base));
  int jitter = lbt_opt_enum(L, F_NEW, 1, "jitter", jitter_names, BT_RETRY_JITTER_NONE);
  bt_retry_t *r = lua_newuserdatauv(L, sizeof *r, 2);
  luaL_setmetatable(L, BT_RETRY_MT);
  bt__retry_init(r, (uint32_t)attempts, (uint64_t)base, (uint64_t)max, (bt_retry_jitter_t)jitter,
                uv_hrtime() ^ (uint64_t)(uintptr_t)r);
  lbt_opt_function(L, F_NEW, 1, "retry_on");
  lua_setiuservalue(L, -2, 1);
  lbt_opt_function(L, F_NEW, 1, "on_retry");
  lua_setiuservalue(L, -2, 2);
  return 1;
}

static int lretry_delay_for(lua_State *L) {
  bt_retry_t *r = check_retry(L, 1);
  int isint = 0;  /* any integer >= 1: the delay saturates, math.maxinteger included */
  lua_Integer n = lua_tointegerx(L, 2, &isint);
  if (lua_type(L, 2) != LUA_TNUMBER || !isint || n < 1)
    lbt_argerror(L, "baton.retry:delay_for", 2, "n", "integer >= 1");
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

/* The delay a failure asks for: the numeric retry_after_ms >= 0 of the table at idx (its
 * detail, or the value raised or returned as the error), else -1. */
static int64_t retry_after(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return -1;
  idx = lua_absindex(L, idx);
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
  /* The error value itself may carry retry_after_ms (a table raised, or returned second,
   * before the detail existed): read it before lbt_outcome replaces it. */
  int64_t asked = status != LUA_OK && status != LUA_YIELD ? retry_after(L, -1)
                : lua_gettop(L) > base && lua_isnil(L, base) ? retry_after(L, base + 1) : -1;
  if (lbt_outcome(L, status, base)) return -1;
  for (int i = 0; i < 3; i++) lua_copy(L, base + i, S_MSG + i);  /* the last failure */
  lua_settop(L, base - 1);
  int64_t detail = retry_after(L, S_DETAIL);
  return bt__retry_failed(check_retry(L, S_SELF), &c->c, detail >= 0 ? detail : asked);
}

/* Pushes the last failure: message, kind, detail. */
static void push_failure(lua_State *L) {
  for (int i = 0; i < 3; i++) lua_pushvalue(L, S_MSG + i);
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
  lbt_resumed(L, NULL, NULL, NULL);  /* a timer: the wake grants nothing */
  return drive(L, bt__retry_waited(&run_of(L)->c));
}

static int sleep_between(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_await_begin(L, R, F_CALL);
  uint64_t due = bt_due(R->rt, run_of(L)->c.delay);
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
      luaL_checkstack(L, c->nargs + 4, "baton.retry:call: too many arguments");
      for (int i = 0; i <= c->nargs; i++) lua_pushvalue(L, S_FN + i);
      step = after_call(L, lua_pcallk(L, c->nargs, LUA_MULTRET, 0, 0, call_k));
      break;
    case BT_RETRY_ASK:  /* retry_on(msg, kind, detail) */
      lua_getiuservalue(L, S_SELF, 1);
      push_failure(L);
      lua_callk(L, 3, 1, 0, ask_k);
      return ask_k(L, LUA_OK, 0);
    case BT_RETRY_WAIT:  /* on_retry(attempt, delay_ms, msg, kind, detail) */
      if (lua_getiuservalue(L, S_SELF, 2) == LUA_TFUNCTION) {
        lua_pushinteger(L, (lua_Integer)c->c.attempt);
        lua_pushinteger(L, (lua_Integer)c->c.delay);
        push_failure(L);
        lua_callk(L, 5, 0, 0, notified_k);
      } else {
        lua_pop(L, 1);
      }
      return sleep_between(L);
    default: {  /* BT_RETRY_GIVE_UP: fn's kind, kept (user kinds too: not lbt_fail's check) */
      lua_createtable(L, 0, 2);
      lua_pushinteger(L, (lua_Integer)c->c.attempt);
      lua_setfield(L, -2, "attempts");
      lua_pushvalue(L, S_DETAIL);
      lua_setfield(L, -2, "last");
      lua_pushnil(L);
      lua_pushfstring(L, "%s: gave up after %d attempt%s: %s", F_CALL, (int)c->c.attempt,
                      c->c.attempt == 1 ? "" : "s", lua_tostring(L, S_MSG));
      lua_pushvalue(L, S_KIND);
      lua_rotate(L, -4, -1);  /* nil, message, kind, detail */
      return 4;
    }
    }
  }
}

static int lretry_call(lua_State *L) {
  check_retry(L, 1);
  lbt_arg_function(L, F_CALL, 2, "fn");
  int nargs = lua_gettop(L) - 2;
  lrun *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->nargs = nargs;
  lua_insert(L, S_RUN);
  luaL_checkstack(L, 3, "baton.retry:call: too many arguments");
  for (int i = S_MSG; i <= S_DETAIL; i++) {
    lua_pushnil(L);
    lua_insert(L, i);
  }
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
