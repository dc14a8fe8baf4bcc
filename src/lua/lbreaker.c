/*
 * lbreaker.c — baton.breaker{ service =, threshold =, recovery_ms =, half_open_max =,
 * counts =, backend =, clock = } and baton.breaker_backend(), the in-memory backend.
 *
 *   b:call(fn, ...)  -> fn's results | nil, msg, kind, detail (fn failed)
 *                       | nil, "baton.breaker:call: circuit 's' is open", "circuit_open",
 *                         { service =, state =, failures =, retry_after_ms = }
 *   b:state()        -> "closed" | "open" | "half_open"
 *   b:failures()     -> the consecutive failure count
 *
 * Errors (docs/errors.md). Raise: misuse (bad options, fn not a function, a backend
 * without one of the six methods, bad arguments to the in-memory backend's methods), a
 * backend that raises or answers something other than a number, a clock that does, and
 * the cancellation error. Return failures: call only — fn's failure, and circuit_open.
 * A call fails when fn raises or returns `nil, msg[, kind[, detail]]`, both read by
 * lbt_outcome (the one rule; kind "error" when fn gave none): call never re-raises fn's
 * error, it returns `nil, msg, kind, detail`. Counted failures (all of them, or those
 * counts(msg, kind, detail) approves) move the breaker; see breaker.c for the transitions.
 * While open, and while half_open_max probes are already running, calls fast-fail without
 * running fn (kind "circuit_open", the facts the call saw in the detail). Cancellation is
 * not a failure: it propagates, counts nothing and frees the probe slot.
 *
 * The backend holds the state per service: the default is a private in-memory one (C);
 * `backend` may be one from baton.breaker_backend() (shareable), or any table or object
 * with these six methods, called as methods with the service name:
 *   increment_failures(s) -> n ; reset_failures(s) ; get_failures(s) -> n
 *   set_open_at(s, ms) ; clear_open_at(s) ; get_open_at(s) -> ms | nil
 * A Lua backend's methods may await (a remote store). Times come from `clock()` (integer
 * ms) when given, else baton.now(). Two optional parts of a backend shared by a fleet
 * (baton.store.breaker_backend):
 *   now() -> ms: the backend keeps time by a clock of its own (a shared server's). Without
 *     a `clock` option the breaker then decides on it: get_open_at(s) answers `ms, now`
 *     (the backend's reading beside the open time, one round trip) and set_open_at(s) is
 *     called without ms (the backend stamps its own now).
 *   acquire_probe(s, open_at) -> true | false ; release_probe(s): a probe lease for the
 *     opening at open_at, one for the whole fleet; a half-open call runs only with it, and
 *     gives it back once the outcome is written. A probe cancelled midway gives it back
 *     under a shield before the cancellation goes on; one whose coroutine is merely
 *     closed leaves it to the lease's expiry.
 *
 * The decisions are the core's cursor (breaker.c); this file performs the steps it asks
 * for, through lua_callk/lua_pcallk so that fn, counts and backend methods may yield. Stack
 * of a call:  1 breaker  2 cursor (to-be-closed: an error or a closed coroutine gives its
 * probe slot back)  3 fn  4.. arguments, then fn's results from 3 (a failure: 3 nil
 * 4 message 5 kind 6 detail).
 */
#include <math.h>
#include <string.h>

#include "breaker.h"
#include "lbaton.h"

#define BT_BREAKER_MT "baton.Breaker"
#define BT_BRKMEM_MT  "baton.BreakerBackend"
#define BT_BRKCALL_MT "baton.Breaker.Call"

static const char *const F_NEW = "baton.breaker";
static const char *const F_CALL = "baton.breaker:call";

enum { UV_BACKEND = 1, UV_COUNTS, UV_CLOCK, UV_SERVICE };
enum { MODE_CALL = 0, MODE_STATE };

typedef struct lbreaker {
  bt_breaker_t b;
  bt_breaker_mem_t **mem;  /* the handle of the backend's userdata (user value 1) when it is an
                        * in-memory one, or NULL: read through mem_of, since the backend may
                        * be finalized while the breaker still holds it */
  const char *svc;     /* the service name, user value 4 */
  size_t len;
  int backend_clock;   /* no clock option and the backend has now(): times are the backend's */
} lbreaker;

typedef struct lcall {
  bt_breaker_call_t c;
  bt_breaker_t *b;     /* NULL once ended; user value 1 keeps the breaker alive */
  int mode;
} lcall;

static const char *const op_names[] = {
  [BT_BREAKER_GET_OPEN_AT] = "get_open_at",     [BT_BREAKER_GET_FAILURES] = "get_failures",
  [BT_BREAKER_INCREMENT] = "increment_failures", [BT_BREAKER_SET_OPEN_AT] = "set_open_at",
  [BT_BREAKER_RESET] = "reset_failures",         [BT_BREAKER_CLEAR_OPEN_AT] = "clear_open_at",
  [BT_BREAKER_ACQUIRE_PROBE] = "acquire_probe",   [BT_BREAKER_RELEASE_PROBE] = "release_probe"};
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

/* A number the backend method `op` (NULL: the clock) returned (numeric strings too: a
 * remote store may answer in text); anything else raises, naming the method the user
 * called. */
static int64_t to_ms(lua_State *L, int idx, const char *op) {
  int isnum = 0;
  lua_Number v = lua_tonumberx(L, idx, &isnum);
  if (!isnum || v != v) {
    const char *got = lbt_push_got(L, idx);
    luaL_error(L, "%s: %s%s returned %s (expected a number)", lbt_fname(L),
               op ? "the backend's " : "clock()", op ? op : "", got);
  }
  return clamp_ms(v);
}

/* Runs operation `op` on the in-memory backend m for service s and pushes its one result
 * (nil for the operations that answer nothing, and for no open time); `at` is the time of
 * SET_OPEN_AT. Raises naming fname when memory runs out. The Lua methods below and the
 * breaker's own steps (backend_op) both come here. */
static void mem_op(lua_State *L, bt_breaker_mem_t *m, const char *s, size_t len, int op,
                   int64_t at, const char *fname) {
  int rc = 0;
  uint32_t n = 0;
  switch (op) {
  case BT_BREAKER_GET_OPEN_AT:
    if (bt__breaker_mem_open_at(m, s, len, &at)) lua_pushinteger(L, (lua_Integer)at);
    else lua_pushnil(L);
    return;
  case BT_BREAKER_GET_FAILURES:
    lua_pushinteger(L, (lua_Integer)bt__breaker_mem_failures(m, s, len));
    return;
  case BT_BREAKER_INCREMENT:
    if (bt__breaker_mem_increment(m, s, len, &n) != 0) luaL_error(L, "%s: out of memory", fname);
    lua_pushinteger(L, (lua_Integer)n);
    return;
  case BT_BREAKER_SET_OPEN_AT: rc = bt__breaker_mem_set_open_at(m, s, len, at); break;
  case BT_BREAKER_RESET: bt__breaker_mem_reset(m, s, len); break;
  default: bt__breaker_mem_clear_open_at(m, s, len); break;
  }
  if (rc != 0) luaL_error(L, "%s: out of memory", fname);
  lua_pushnil(L);
}

/* backend:<op>(service [, ms]): the in-memory backend's six methods. */
static int mem_method(lua_State *L, int op) {
  static const char *const fnames[] = {
    [BT_BREAKER_GET_OPEN_AT] = "baton.breaker_backend:get_open_at",
    [BT_BREAKER_GET_FAILURES] = "baton.breaker_backend:get_failures",
    [BT_BREAKER_INCREMENT] = "baton.breaker_backend:increment_failures",
    [BT_BREAKER_SET_OPEN_AT] = "baton.breaker_backend:set_open_at",
    [BT_BREAKER_RESET] = "baton.breaker_backend:reset_failures",
    [BT_BREAKER_CLEAR_OPEN_AT] = "baton.breaker_backend:clear_open_at"};
  bt_breaker_mem_t *m = check_mem(L, 1);
  size_t len;
  const char *s = lbt_arg_string(L, fnames[op], 2, "service", &len);
  if (op == BT_BREAKER_SET_OPEN_AT && lua_type(L, 3) != LUA_TNUMBER)
    lbt_argerror(L, fnames[op], 3, "ms", "number");
  int64_t at = op == BT_BREAKER_SET_OPEN_AT ? clamp_ms(lua_tonumber(L, 3)) : 0;
  mem_op(L, m, s, len, op, at, fnames[op]);
  return lua_isnil(L, -1) ? 0 : 1;
}

static int lmem_increment(lua_State *L) { return mem_method(L, BT_BREAKER_INCREMENT); }
static int lmem_reset(lua_State *L) { return mem_method(L, BT_BREAKER_RESET); }
static int lmem_failures(lua_State *L) { return mem_method(L, BT_BREAKER_GET_FAILURES); }
static int lmem_set_open_at(lua_State *L) { return mem_method(L, BT_BREAKER_SET_OPEN_AT); }
static int lmem_clear_open_at(lua_State *L) { return mem_method(L, BT_BREAKER_CLEAR_OPEN_AT); }
static int lmem_open_at(lua_State *L) { return mem_method(L, BT_BREAKER_GET_OPEN_AT); }

/* ---- the breaker -------------------------------------------------------------------- */

static lbreaker *check_breaker(lua_State *L, int idx) {
  return lbt_check_type(L, idx, LBT_BREAKER);
}

/* A count option of the table at 1 that must also fit a uint32_t. */
static uint32_t opt_u32(lua_State *L, const char *key, lua_Integer min, lua_Integer def) {
  lua_Integer v = lbt_opt_count(L, F_NEW, 1, key, min, def);
  if (v > UINT32_MAX) lbt_field_error(L, F_NEW, 1, key, "integer <= 2^32-1");
  return (uint32_t)v;
}

static int lbreaker_new(lua_State *L) {
  static const char *const known[] = {"service", "threshold", "recovery_ms", "half_open_max",
                                      "counts", "backend", "clock", NULL};
  lbt_check_opts(L, F_NEW, 1, "options", known);
  lua_settop(L, 1);
  size_t svclen;
  lbt_opt_string(L, F_NEW, 1, "service", NULL, &svclen);
  if (svclen == 0) lbt_field_error(L, F_NEW, 1, "service", "non-empty string");
  uint32_t threshold = opt_u32(L, "threshold", 1, -1);
  lua_Integer recovery = lbt_opt_count(L, F_NEW, 1, "recovery_ms", 0, -1);
  uint32_t probes = opt_u32(L, "half_open_max", 1, 1);
  int t = lua_getfield(L, 1, "backend");
  if (t != LUA_TNIL && t != LUA_TTABLE && t != LUA_TUSERDATA)
    lbt_field_error(L, F_NEW, 1, "backend", "table or object");
  if (t == LUA_TUSERDATA && lbt_test_type(L, -1, LBT_BRK_BACKEND)) {
    check_mem(L, lua_gettop(L));  /* refuses a finalized one */
  } else if (t != LUA_TNIL) {
    for (int op = BT_BREAKER_GET_OPEN_AT; op <= BT_BREAKER_CLEAR_OPEN_AT; op++) {
      if (op_names[op] == NULL) continue;
      if (lua_getfield(L, -1, op_names[op]) != LUA_TFUNCTION)
        lbt_field_error(L, F_NEW, 1, "backend",
                        lua_pushfstring(L, "object with a method '%s'", op_names[op]));
      lua_pop(L, 1);
    }
  }
  /* a Lua backend's optional parts: a clock, and the fleet's probe lease (both methods) */
  int has_now = 0, probes_lease = 0;
  if (t == LUA_TTABLE || (t == LUA_TUSERDATA && !lbt_test_type(L, -1, LBT_BRK_BACKEND))) {
    has_now = lua_getfield(L, -1, "now") == LUA_TFUNCTION;
    int acq = lua_getfield(L, -2, op_names[BT_BREAKER_ACQUIRE_PROBE]) == LUA_TFUNCTION;
    int rel = lua_getfield(L, -3, op_names[BT_BREAKER_RELEASE_PROBE]) == LUA_TFUNCTION;
    lua_pop(L, 3);
    if (acq != rel)
      lbt_field_error(L, F_NEW, 1, "backend", "both acquire_probe and release_probe, or neither");
    probes_lease = acq;
  }
  lua_pop(L, 1);

  lbreaker *B = lua_newuserdatauv(L, sizeof *B, 4);
  memset(B, 0, sizeof *B);
  luaL_setmetatable(L, BT_BREAKER_MT);
  lbt_opt_function(L, F_NEW, 1, "counts");
  lua_setiuservalue(L, -2, UV_COUNTS);
  lbt_opt_function(L, F_NEW, 1, "clock");
  lua_setiuservalue(L, -2, UV_CLOCK);
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
  bt__breaker_init(&B->b, threshold, recovery, probes, !lua_isnil(L, -1));
  lua_pop(L, 1);
  bt__breaker_fleet_probe(&B->b, probes_lease);
  lua_getiuservalue(L, -1, UV_CLOCK);
  B->backend_clock = has_now && lua_isnil(L, -1);
  lua_pop(L, 1);
  return 1;
}

static int64_t now_ms(lua_State *L, int self) {
  if (lua_getiuservalue(L, self, UV_CLOCK) == LUA_TNIL) {
    lua_pop(L, 1);
    return (int64_t)bt_now(lbt_R(L)->rt);
  }
  lua_call(L, 0, 1);
  int64_t now = to_ms(L, -1, NULL);
  lua_pop(L, 1);
  return now;
}

static lcall *call_of(lua_State *L) { return lua_touserdata(L, 2); }

/* Runs backend operation `op` for the breaker at index 1 and leaves its one result on
 * top. An in-memory backend answers at once; a Lua one is called as a method and may
 * yield, in which case `k` continues. */
static void backend_op(lua_State *L, int op, lua_KFunction k) {
  lbreaker *B = lua_touserdata(L, 1);
  if (B->mem != NULL) {
    /* clock() first, before the backend is read: it may finalize the backend */
    int64_t now = op == BT_BREAKER_SET_OPEN_AT ? now_ms(L, 1) : 0;
    mem_op(L, mem_of(L, B), B->svc, B->len, op, now, F_CALL);
    return;
  }
  int nargs = 2, nres = 1;
  luaL_checkstack(L, 4, F_CALL);
  lua_getiuservalue(L, 1, UV_BACKEND);
  lua_getfield(L, -1, op_names[op]);
  lua_insert(L, -2);
  lua_getiuservalue(L, 1, UV_SERVICE);
  if (op == BT_BREAKER_SET_OPEN_AT && !B->backend_clock) {
    lua_pushinteger(L, (lua_Integer)now_ms(L, 1));
    nargs = 3;
  } else if (op == BT_BREAKER_ACQUIRE_PROBE) {
    lua_pushinteger(L, (lua_Integer)call_of(L)->c.open_at);
    nargs = 3;
  } else if (op == BT_BREAKER_GET_OPEN_AT && B->backend_clock) {
    nres = 2;  /* ms, the backend's now */
  }
  lua_callk(L, nargs, nres, 0, k);
}

/* Reports the result on top (of a backend step, or of the counts predicate), pops it, and
 * returns the next step. A get_open_at on the backend's clock left two results: the
 * backend's now is the call's (when it gave one; else our clock's). */
static int after_op(lua_State *L) {
  lbreaker *B = lua_touserdata(L, 1);
  lcall *c = call_of(L);
  if (c->c.step == BT_BREAKER_GET_OPEN_AT && B->backend_clock) {
    if (!lua_isnil(L, -2)) {
      c->c.now = lua_isnil(L, -1) ? (int64_t)bt_now(lbt_R(L)->rt) : to_ms(L, -1, "get_open_at");
    }
    lua_pop(L, 1);
  }
  int has = !lua_isnil(L, -1);
  int64_t v = 0;
  switch (c->c.step) {
  case BT_BREAKER_COUNTS: v = lua_toboolean(L, -1); break;
  case BT_BREAKER_ACQUIRE_PROBE: has = lua_toboolean(L, -1); break;
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

/* fn returned (its results from 3) or raised (the error at 3). A failure, either way, is
 * left as nil, message, kind, detail from 3 (a cancellation is re-raised: the cursor's
 * __close frees the probe slot). */
static int release_k(lua_State *L, int status, lua_KContext was) {
  (void)status;
  bt_task_t *t = bt_rt_current(lbt_R(L)->rt);
  if (t != NULL) bt_task_unshield(t, (int)was);
  lua_settop(L, 3);  /* the cancellation, at fn's place */
  return lua_error(L);
}

/* A probe holding the fleet's lease was cancelled (or ran out of memory): the lease is
 * given back under a shield (the release awaits; the task is being aborted), then the
 * error at 3 goes on. What the release raises is dropped: the lease expires anyway. */
static int release_and_raise(lua_State *L) {
  lcall *c = call_of(L);
  c->c.lease = 0;
  bt_task_t *t = bt_rt_current(lbt_R(L)->rt);
  int was = t != NULL ? bt_task_shield(t) : 0;
  lua_settop(L, 3);
  luaL_checkstack(L, 4, F_CALL);
  lua_getiuservalue(L, 1, UV_BACKEND);
  lua_getfield(L, -1, op_names[BT_BREAKER_RELEASE_PROBE]);
  lua_insert(L, -2);
  lua_getiuservalue(L, 1, UV_SERVICE);
  int st = lua_pcallk(L, 2, 0, 0, (lua_KContext)was, release_k);
  return release_k(L, st, (lua_KContext)was);
}

static int after_run(lua_State *L, int status) {
  lbreaker *B = lua_touserdata(L, 1);
  bt_breaker_outcome_t outcome = BT_BREAKER_OK;
  if (status != LUA_OK && status != LUA_YIELD && call_of(L)->c.lease &&
      (status != LUA_ERRRUN || lbt_is_cancel_error(L, -1) || lbt_cancelled(lbt_R(L))))
    return release_and_raise(L);
  if (!lbt_outcome(L, status, 3)) {
    lua_pushnil(L);
    lua_insert(L, 3);
    outcome = BT_BREAKER_FAILED;
  }
  return bt__breaker_report(&B->b, &call_of(L)->c, 1, outcome);
}

/* The fast-fail: nil, message, "circuit_open", detail (what the call saw). */
/* a - b, saturated at the int64 range (clocks are the user's: any int64 may come). */
static int64_t sat_sub(int64_t a, int64_t b) {
  int64_t r;
  if (!__builtin_sub_overflow(a, b, &r)) return r;
  return b < 0 ? INT64_MAX : INT64_MIN;
}

static int reject(lua_State *L) {
  lbreaker *B = lua_touserdata(L, 1);
  const bt_breaker_call_t *c = &call_of(L)->c;
  int open = c->state == BT_BREAKER_OPEN;
  lua_createtable(L, 0, 4);
  lua_getiuservalue(L, 1, UV_SERVICE);
  lua_setfield(L, -2, "service");
  lua_pushstring(L, state_names[c->state]);
  lua_setfield(L, -2, "state");
  /* The count is known when the cursor read it (no open time), or cheaply from memory. */
  int64_t failures = -1;
  if (!c->has_open) failures = c->failures;
  else if (B->mem != NULL && *B->mem != NULL)
    failures = bt__breaker_mem_failures(*B->mem, B->svc, B->len);
  if (failures >= 0) {
    lua_pushinteger(L, (lua_Integer)failures);
    lua_setfield(L, -2, "failures");
  }
  if (open && c->has_open) {  /* what is left of the recovery window (a clock run back:
                               * more than recovery_ms), saturated for a clock's extremes */
    int64_t left = sat_sub(B->b.recovery_ms, sat_sub(c->now, c->open_at));
    lua_pushinteger(L, (lua_Integer)(left > 0 ? left : 0));
    lua_setfield(L, -2, "retry_after_ms");
  }
  if (open) return lbt_fail_detail(L, F_CALL, "circuit_open", -1, "circuit '%s' is open", B->svc);
  return lbt_fail_detail(L, F_CALL, "circuit_open", -1,
                         "circuit '%s' is half-open and its probes are busy", B->svc);
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
    case BT_BREAKER_COUNTS:  /* counts(msg, kind, detail) */
      lua_getiuservalue(L, 1, UV_COUNTS);
      for (int i = 4; i <= 6; i++) lua_pushvalue(L, i);
      lua_callk(L, 3, 1, 0, op_k);
      step = after_op(L);
      break;
    case BT_BREAKER_REJECT:
      return reject(L);
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
  int64_t now = B->backend_clock ? 0 : now_ms(L, 1);  /* the backend's comes with the open time */
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
  lbt_arg_function(L, F_CALL, 2, "fn");
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
