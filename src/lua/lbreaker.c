/*
 * lbreaker.c — baton.breaker{ service =, threshold =, recovery_ms =, half_open_max =,
 * counts =, backend =, clock = } and baton.breaker_backend(), the in-memory backend.
 *
 *   b:call(fn, ...)  -> fn's results | nil, err (fn failed) | nil, "circuit_open", service
 *   b:state()        -> "closed" | "open" | "half_open"
 *   b:failures()     -> the consecutive failure count
 *
 * A call fails when fn raises, or returns `nil, err` (err not nil). Failures are outcomes,
 * not misuse, so call never re-raises fn's error: a raised error comes back as `nil, err`,
 * a returned failure comes back as fn returned it. Counted failures (all of them, or those
 * counts(err) approves) move the breaker; see breaker.c for the transitions. While open,
 * and while half_open_max probes are already running, calls fast-fail without running fn.
 * Cancellation is not a failure: it propagates, counts nothing and frees the probe slot.
 *
 * The backend holds the state per service: the default is a private in-memory one (C);
 * `backend` may be one from baton.breaker_backend() (shareable), or any table or object
 * with the seed's six methods, called as methods with the service name:
 *   increment_failures(s) -> n ; reset_failures(s) ; get_failures(s) -> n
 *   set_open_at(s, ms) ; clear_open_at(s) ; get_open_at(s) -> ms | nil
 * A Lua backend's methods may await (a remote store). Times come from `clock()` (integer
 * ms) when given, else baton.now().
 *
 * The decisions are the core's cursor (breaker.c); this file performs the steps it asks
 * for, through lua_callk/lua_pcallk so that fn, counts and backend methods may yield. Stack
 * of a call:  1 breaker  2 cursor (to-be-closed: an error or a closed coroutine gives its
 * probe slot back)  3 fn  4.. arguments, then fn's results from 3.
 */
#include <math.h>
#include <string.h>

#include "breaker.h"
#include "lbaton.h"

#define BT_BREAKER_MT "baton.Breaker"
#define BT_BRKMEM_MT  "baton.BreakerBackend"
#define BT_BRKCALL_MT "baton.Breaker.Call"

enum { UV_BACKEND = 1, UV_COUNTS, UV_CLOCK, UV_SERVICE };
enum { MODE_CALL = 0, MODE_STATE };

typedef struct lbreaker {
  bt_breaker_t b;
  bt_breaker_mem_t **mem;  /* the handle of the backend's userdata (user value 1) when it is an
                        * in-memory one, or NULL: read through mem_of, since the backend may
                        * be finalized while the breaker still holds it */
  const char *svc;     /* the service name, user value 4 */
  size_t len;
} lbreaker;

typedef struct lcall {
  bt_breaker_call_t c;
  bt_breaker_t *b;     /* NULL once ended; user value 1 keeps the breaker alive */
  int mode;
} lcall;

static const char *const op_names[] = {
  [BT_BREAKER_GET_OPEN_AT] = "get_open_at",     [BT_BREAKER_GET_FAILURES] = "get_failures",
  [BT_BREAKER_INCREMENT] = "increment_failures", [BT_BREAKER_SET_OPEN_AT] = "set_open_at",
  [BT_BREAKER_RESET] = "reset_failures",         [BT_BREAKER_CLEAR_OPEN_AT] = "clear_open_at"};
static const char *const state_names[] = {"closed", "open", "half_open"};

/* ---- the in-memory backend ---------------------------------------------------------- */

static bt_breaker_mem_t *check_mem(lua_State *L, int idx) {
  return *(bt_breaker_mem_t **)lbt_check_handle(L, idx, LBT_BRK_BACKEND);
}

/* The breaker's in-memory backend; raises once it was finalized. */
static bt_breaker_mem_t *mem_of(lua_State *L, const lbreaker *B) {
  if (*B->mem == NULL) lbt_closed_error(L, LBT_BRK_BACKEND);
  return *B->mem;
}

static void push_mem(lua_State *L) {
  bt_breaker_mem_t **pm = lua_newuserdatauv(L, sizeof *pm, 0);
  *pm = NULL;
  luaL_setmetatable(L, BT_BRKMEM_MT);
  if ((*pm = bt__breaker_mem_new()) == NULL) luaL_error(L, "baton.breaker_backend: out of memory");
}

static int lmem_new(lua_State *L) {
  push_mem(L);
  return 1;
}

static int lmem_gc(lua_State *L) {
  bt_breaker_mem_t **pm = lbt_check_type(L, 1, LBT_BRK_BACKEND);
  bt__breaker_mem_free(*pm);
  *pm = NULL;
  return 0;
}

static int64_t clamp_ms(lua_Number v) {
  if (v >= 9.2e18) return INT64_MAX;
  if (v <= -9.2e18) return INT64_MIN;
  return (int64_t)floor(v);
}

/* A number a backend method or the clock returned (numeric strings too: a remote store
 * may answer in text). */
static int64_t to_ms(lua_State *L, int idx, const char *what) {
  int isnum = 0;
  lua_Number v = lua_tonumberx(L, idx, &isnum);
  if (!isnum || v != v)
    luaL_error(L, "breaker: %s returned %s (a number expected)", what, luaL_typename(L, idx));
  return clamp_ms(v);
}

static int lmem_increment(lua_State *L) {
  bt_breaker_mem_t *m = check_mem(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  uint32_t n;
  if (bt__breaker_mem_increment(m, s, len, &n) != 0) return luaL_error(L, "breaker: out of memory");
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int lmem_reset(lua_State *L) {
  bt_breaker_mem_t *m = check_mem(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  bt__breaker_mem_reset(m, s, len);
  return 0;
}

static int lmem_failures(lua_State *L) {
  bt_breaker_mem_t *m = check_mem(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_pushinteger(L, (lua_Integer)bt__breaker_mem_failures(m, s, len));
  return 1;
}

static int lmem_set_open_at(lua_State *L) {
  bt_breaker_mem_t *m = check_mem(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int64_t at = clamp_ms(luaL_checknumber(L, 3));
  if (bt__breaker_mem_set_open_at(m, s, len, at) != 0) return luaL_error(L, "breaker: out of memory");
  return 0;
}

static int lmem_clear_open_at(lua_State *L) {
  bt_breaker_mem_t *m = check_mem(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  bt__breaker_mem_clear_open_at(m, s, len);
  return 0;
}

static int lmem_open_at(lua_State *L) {
  bt_breaker_mem_t *m = check_mem(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int64_t at;
  if (!bt__breaker_mem_open_at(m, s, len, &at)) return 0;
  lua_pushinteger(L, (lua_Integer)at);
  return 1;
}

/* ---- the breaker -------------------------------------------------------------------- */

static lbreaker *check_breaker(lua_State *L, int idx) {
  return lbt_check_type(L, idx, LBT_BREAKER);
}

static int lbreaker_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  static const char *const known[] = {"service", "threshold", "recovery_ms", "half_open_max",
                                      "counts", "backend", "clock", NULL};
  lbt_check_fields(L, 1, "baton.breaker", known);
  if (lua_getfield(L, 1, "service") != LUA_TSTRING || lua_rawlen(L, -1) == 0)
    luaL_error(L, "baton.breaker: service must be a non-empty string (got %s)",
               luaL_typename(L, -1));
  lua_pop(L, 1);
  lua_Integer threshold = lbt_opt_int(L, "baton.breaker", "threshold", 1, -1);
  if (threshold > UINT32_MAX) luaL_error(L, "baton.breaker: threshold is too large");
  lua_Integer recovery = lbt_opt_int(L, "baton.breaker", "recovery_ms", 0, -1);
  lua_Integer probes = lbt_opt_int(L, "baton.breaker", "half_open_max", 1, 1);
  if (probes > UINT32_MAX) luaL_error(L, "baton.breaker: half_open_max is too large");
  int t = lua_getfield(L, 1, "backend");
  if (t != LUA_TNIL && t != LUA_TTABLE && t != LUA_TUSERDATA)
    luaL_error(L, "baton.breaker: backend must be a table or an object (got %s)",
               luaL_typename(L, -1));
  if (t == LUA_TUSERDATA && lbt_test_type(L, -1, LBT_BRK_BACKEND)) {
    check_mem(L, lua_gettop(L));  /* refuses a finalized one */
  } else if (t != LUA_TNIL) {
    for (int op = BT_BREAKER_GET_OPEN_AT; op <= BT_BREAKER_CLEAR_OPEN_AT; op++) {
      if (op_names[op] == NULL) continue;
      if (lua_getfield(L, -1, op_names[op]) != LUA_TFUNCTION)
        luaL_error(L, "baton.breaker: backend has no method '%s'", op_names[op]);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);

  lbreaker *B = lua_newuserdatauv(L, sizeof *B, 4);
  memset(B, 0, sizeof *B);
  luaL_setmetatable(L, BT_BREAKER_MT);
  lbt_opt_func(L, "baton.breaker", "counts", UV_COUNTS);
  lbt_opt_func(L, "baton.breaker", "clock", UV_CLOCK);
  lua_getfield(L, 1, "service");
  B->svc = lua_tolstring(L, -1, &B->len);
  lua_setiuservalue(L, -2, UV_SERVICE);
  if (lua_getfield(L, 1, "backend") == LUA_TNIL) {
    lua_pop(L, 1);
    push_mem(L);
  }
  B->mem = lbt_test_type(L, -1, LBT_BRK_BACKEND);
  lua_setiuservalue(L, -2, UV_BACKEND);
  lua_getiuservalue(L, -1, UV_COUNTS);
  bt__breaker_init(&B->b, (uint32_t)threshold, recovery, (uint32_t)probes, !lua_isnil(L, -1));
  lua_pop(L, 1);
  return 1;
}

static int64_t now_ms(lua_State *L, int self) {
  if (lua_getiuservalue(L, self, UV_CLOCK) == LUA_TNIL) {
    lua_pop(L, 1);
    return (int64_t)bt_now(lbt_R(L)->rt);
  }
  lua_call(L, 0, 1);
  int64_t now = to_ms(L, -1, "clock()");
  lua_pop(L, 1);
  return now;
}

/* Runs backend operation `op` for the breaker at index 1 and leaves its one result on
 * top. An in-memory backend answers at once; a Lua one is called as a method and may
 * yield, in which case `k` continues. */
static void backend_op(lua_State *L, int op, lua_KFunction k) {
  lbreaker *B = lua_touserdata(L, 1);
  if (B->mem != NULL) {
    int64_t at;
    uint32_t n;
    switch (op) {
    case BT_BREAKER_GET_OPEN_AT:
      if (bt__breaker_mem_open_at(mem_of(L, B), B->svc, B->len, &at))
        lua_pushinteger(L, (lua_Integer)at);
      else lua_pushnil(L);
      return;
    case BT_BREAKER_GET_FAILURES:
      lua_pushinteger(L, (lua_Integer)bt__breaker_mem_failures(mem_of(L, B), B->svc, B->len));
      return;
    case BT_BREAKER_INCREMENT:
      if (bt__breaker_mem_increment(mem_of(L, B), B->svc, B->len, &n) != 0)
        luaL_error(L, "breaker:call: out of memory");
      lua_pushinteger(L, (lua_Integer)n);
      return;
    case BT_BREAKER_SET_OPEN_AT: {
      int64_t now = now_ms(L, 1);  /* clock() first: it may finalize the backend */
      if (bt__breaker_mem_set_open_at(mem_of(L, B), B->svc, B->len, now) != 0)
        luaL_error(L, "breaker:call: out of memory");
      break;
    }
    case BT_BREAKER_RESET:
      bt__breaker_mem_reset(mem_of(L, B), B->svc, B->len);
      break;
    default:
      bt__breaker_mem_clear_open_at(mem_of(L, B), B->svc, B->len);
      break;
    }
    lua_pushnil(L);
    return;
  }
  int nargs = 2;
  luaL_checkstack(L, 4, "breaker");
  lua_getiuservalue(L, 1, UV_BACKEND);
  lua_getfield(L, -1, op_names[op]);
  lua_insert(L, -2);
  lua_getiuservalue(L, 1, UV_SERVICE);
  if (op == BT_BREAKER_SET_OPEN_AT) {
    lua_pushinteger(L, (lua_Integer)now_ms(L, 1));
    nargs = 3;
  }
  lua_callk(L, nargs, 1, 0, k);
}

static lcall *call_of(lua_State *L) { return lua_touserdata(L, 2); }

/* Reports the result on top (of a backend step, or of the counts predicate), pops it, and
 * returns the next step. */
static int after_op(lua_State *L) {
  lbreaker *B = lua_touserdata(L, 1);
  lcall *c = call_of(L);
  int has = !lua_isnil(L, -1);
  int64_t v = 0;
  switch (c->c.step) {
  case BT_BREAKER_COUNTS: v = lua_toboolean(L, -1); break;
  case BT_BREAKER_GET_OPEN_AT:
  case BT_BREAKER_GET_FAILURES:
  case BT_BREAKER_INCREMENT:
    if (has) v = to_ms(L, -1, op_names[c->c.step]);
    break;
  default: break;
  }
  lua_pop(L, 1);
  return bt__breaker_report(&B->b, &c->c, has, v);
}

static int task_cancelled(lua_State *L) {
  bt_task_t *t = bt_rt_current(lbt_R(L)->rt);
  return t != NULL && (t->flags & BT_TASK_F_CANCEL);
}

/* fn returned (its results from 3) or raised (the error at 3). */
static int after_run(lua_State *L, int status) {
  lbreaker *B = lua_touserdata(L, 1);
  bt_breaker_outcome_t outcome = BT_BREAKER_OK;
  if (status == LUA_OK || status == LUA_YIELD) {
    if (lua_gettop(L) >= 4 && lua_isnil(L, 3) && !lua_isnil(L, 4)) outcome = BT_BREAKER_FAILED;
  } else {
    if (status != LUA_ERRRUN || lbt_is_cancel_error(L, -1) || task_cancelled(L))
      lua_error(L);  /* the cursor's __close frees the probe slot */
    lua_pushnil(L);
    lua_insert(L, 3);  /* nil, err */
    outcome = BT_BREAKER_FAILED;
  }
  return bt__breaker_report(&B->b, &call_of(L)->c, 1, outcome);
}

static int drive(lua_State *L, int step);

static int op_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return drive(L, after_op(L));
}

static int run_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  return drive(L, after_run(L, status));
}

static int drive(lua_State *L, int step) {
  for (;;) {
    switch (step) {
    case BT_BREAKER_RUN:
      step = after_run(L, lua_pcallk(L, lua_gettop(L) - 3, LUA_MULTRET, 0, 0, run_k));
      break;
    case BT_BREAKER_COUNTS:
      lua_getiuservalue(L, 1, UV_COUNTS);
      lua_pushvalue(L, 4);
      lua_callk(L, 1, 1, 0, op_k);
      step = after_op(L);
      break;
    case BT_BREAKER_REJECT:
      lua_pushnil(L);
      lua_pushliteral(L, "circuit_open");
      lua_getiuservalue(L, 1, UV_SERVICE);
      return 3;
    case BT_BREAKER_DONE:
      if (call_of(L)->mode == MODE_STATE) {
        lua_pushstring(L, state_names[call_of(L)->c.state]);
        return 1;
      }
      return lua_gettop(L) - 2;
    default:
      backend_op(L, step, op_k);
      step = after_op(L);
      break;
    }
  }
}

static int lcall_close(lua_State *L) {
  lcall *c = lbt_check_type(L, 1, LBT_BRK_CALL);
  if (c->b != NULL) bt__breaker_end(c->b, &c->c);
  c->b = NULL;
  return 0;
}

/* Puts a to-be-closed cursor at index 2 and begins it. */
static int begin(lua_State *L, int mode) {
  lbreaker *B = check_breaker(L, 1);
  int64_t now = now_ms(L, 1);
  lcall *c = lua_newuserdatauv(L, sizeof *c, 1);
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, BT_BRKCALL_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_insert(L, 2);
  lua_toclose(L, 2);
  c->b = &B->b;
  c->mode = mode;
  return drive(L, bt__breaker_begin(&B->b, &c->c, now, mode == MODE_STATE));
}

static int lbreaker_call(lua_State *L) {
  check_breaker(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  return begin(L, MODE_CALL);
}

static int lbreaker_state(lua_State *L) {
  check_breaker(L, 1);
  lua_settop(L, 1);
  return begin(L, MODE_STATE);
}

static int failures_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lua_Integer n = lua_isnil(L, -1) ? 0 : (lua_Integer)to_ms(L, -1, "get_failures");
  lua_pushinteger(L, n);
  return 1;
}

static int lbreaker_failures(lua_State *L) {
  check_breaker(L, 1);
  lua_settop(L, 1);
  backend_op(L, BT_BREAKER_GET_FAILURES, failures_k);
  return failures_k(L, LUA_OK, 0);
}

static int lbreaker_tostring(lua_State *L) {
  lbreaker *B = check_breaker(L, 1);
  lua_pushfstring(L, "baton.Breaker ('%s', threshold %I, recovery %I ms, %I/%I probes)",
                  B->svc, (LUAI_UACINT)B->b.threshold, (LUAI_UACINT)B->b.recovery_ms,
                  (LUAI_UACINT)B->b.probes, (LUAI_UACINT)B->b.half_open_max);
  return 1;
}

void lbt_open_breaker(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"call", lbreaker_call}, {"state", lbreaker_state}, {"failures", lbreaker_failures},
    {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__tostring", lbreaker_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_BREAKER_MT, methods, meta);
  static const luaL_Reg call_meta[] = {
    {"__close", lcall_close}, {"__gc", lcall_close}, {NULL, NULL}};
  static const luaL_Reg none[] = {{NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_BRKCALL_MT, none, call_meta);
  static const luaL_Reg mem_methods[] = {
    {"increment_failures", lmem_increment}, {"reset_failures", lmem_reset},
    {"get_failures", lmem_failures}, {"set_open_at", lmem_set_open_at},
    {"clear_open_at", lmem_clear_open_at}, {"get_open_at", lmem_open_at}, {NULL, NULL}};
  static const luaL_Reg mem_meta[] = {{"__gc", lmem_gc}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_BRKMEM_MT, mem_methods, mem_meta);
  static const luaL_Reg funcs[] = {
    {"breaker", lbreaker_new}, {"breaker_backend", lmem_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
