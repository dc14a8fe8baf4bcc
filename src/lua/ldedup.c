/*
 * ldedup.c — baton.dedup{ ttl_ms =, clock = }: request de-duplication by key, and
 * single-flight execution, in process. baton.dedup{ ttl_ms =, store =, key_prefix =,
 * poll_ms = } is the same API over a store (docs/store.md), written in Lua
 * (lua/baton/store.lua, store._dedup): this file checks its options and hands over.
 *
 *   d:check(key [, ttl_ms]) -> "new" (now in progress for ttl_ms, default the table's TTL:
 *                     the caller does the work)
 *                        | "in_progress" | "cached", value...
 *   d:complete(key, v)   caches v for ttl_ms        d:fail(key)  forgets an in-progress key
 *   d:run(key, fn, ...)  -> fn's results, shared: see below
 *   d:size()             entries held (expired ones not yet swept included)
 *
 * run is single-flight. A cached key returns its values at once without running fn. The
 * first caller of a key not in progress starts fn(...) as a task of its own; every caller
 * of that key, the first included, waits for it, and all get what fn returned — or the
 * error it raised, raised again in each caller: run behaves like calling fn, once. A
 * successful result (not a raise, not `nil, err`) is cached for ttl_ms. A caller that is
 * cancelled stops waiting (and raises the cancellation error); the execution goes on for
 * the others, and is aborted only when its last waiter has gone — the key is then
 * forgotten at once, so a new caller starts afresh.
 *
 * Errors (docs/errors.md). Raise: misuse (bad options, a key that is not a string or a
 * number, fn not a function, run outside a task when it would wait, an execution running
 * run for its own key), a clock() that does not return a number, and the cancellation
 * error. Return failures: run only — what fn returned, passed through unchanged, and, for a
 * key put in progress by check() (no execution to share),
 * `nil, "baton.dedup:run: key 'k' is in progress (claimed by check)", "busy", { key = "k" }`.
 * check's "new" / "in_progress" / "cached" are answers, not failures.
 *
 * The table, its states, the TTL expiry and the waiter counts are the core's (dedup.c).
 * This file keeps the Lua side: user value 1 maps keys to cached values (packed result
 * tables), 2 maps keys in flight to their execution task, 3 is the clock. Invariant: a
 * key is in the flights table iff the core has it in flight — except after an execution
 * died without settling (it never ran: its runtime ended first), which lookups detect and
 * repair.
 */
#include <math.h>
#include <string.h>

#include "dedup.h"
#include "lbaton.h"

#define BT_DEDUP_MT  "baton.Dedup"
#define BT_TICKET_MT "baton.Dedup.Waiter"

enum { UV_VALUES = 1, UV_FLIGHTS, UV_CLOCK };

static const char *const F_RUN = "baton.dedup:run";

typedef struct ldedup {
  bt_dedup_t *d;
} ldedup;

/* One waiting caller of run (to-be-closed): closing it leaves the flight, and aborts the
 * execution when it was the last waiter. User values: 1 the dedup, 2 the key, 3 the task. */
typedef struct lwaiter {
  uint64_t gen;
  int joined;
} lwaiter;

LBT_HANDLE_FIRST(ldedup, d);

static ldedup *check_dedup(lua_State *L, int idx) { return lbt_check_handle(L, idx, LBT_DEDUP); }

/* The method's key argument (index 2): a string, or a number (converted in place). */
static const char *check_key(lua_State *L, const char *fname, size_t *len) {
  if (lua_type(L, 2) != LUA_TNUMBER) return lbt_arg_string(L, fname, 2, "key", len);
  return lua_tolstring(L, 2, len);
}

/* With `store =`, the dedup is the Lua one of lua/baton/store.lua (store._dedup), built on
 * the options checked here; `clock` is refused there (the store keeps time), and
 * `key_prefix` and `poll_ms` without a store. */
static int new_over_store(lua_State *L, const char *F, lua_Integer ttl) {
  if (lua_getfield(L, 1, "clock") != LUA_TNIL)
    lbt_field_error(L, F, 1, "clock", "nil with a store (the store keeps time)");
  lua_pop(L, 1);
  lbt_opt_string(L, F, 1, "key_prefix", "dedup:", NULL);
  lua_Number poll = lbt_opt_ms(L, F, 1, "poll_ms", 20);
  if (poll <= 0) lbt_field_error(L, F, 1, "poll_ms", "milliseconds > 0");
  lua_getfield(L, LUA_REGISTRYINDEX, "baton.module");
  lua_getfield(L, -1, "store");
  lua_getfield(L, -1, "_dedup");
  lua_getfield(L, 1, "store");
  lua_pushinteger(L, ttl);
  if (lua_getfield(L, 1, "key_prefix") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushliteral(L, "dedup:");
  }
  lua_pushnumber(L, poll);
  lua_call(L, 4, 1);
  return 1;
}

static int ldedup_new(lua_State *L) {
  static const char *const F = "baton.dedup";
  static const char *const known[] = {"ttl_ms", "clock", "store", "key_prefix", "poll_ms", NULL};
  lbt_check_opts(L, F, 1, "options", known);
  lua_settop(L, 1);
  lua_Integer ttl = lbt_opt_count(L, F, 1, "ttl_ms", 0, -1);
  if (lua_getfield(L, 1, "store") != LUA_TNIL) return new_over_store(L, F, ttl);
  lua_pop(L, 1);
  if (lua_getfield(L, 1, "key_prefix") != LUA_TNIL)
    lbt_field_error(L, F, 1, "key_prefix", "nil without a store");
  if (lua_getfield(L, 1, "poll_ms") != LUA_TNIL)
    lbt_field_error(L, F, 1, "poll_ms", "nil without a store");
  lua_settop(L, 1);
  lbt_opt_function(L, F, 1, "clock");
  ldedup *D = lua_newuserdatauv(L, sizeof *D, 3);
  D->d = NULL;
  luaL_setmetatable(L, BT_DEDUP_MT);
  lua_insert(L, -2);
  lua_setiuservalue(L, -2, UV_CLOCK);
  lua_newtable(L);
  lua_setiuservalue(L, -2, UV_VALUES);
  lua_newtable(L);
  lua_setiuservalue(L, -2, UV_FLIGHTS);
  if ((D->d = bt__dedup_new((uint64_t)ttl)) == NULL)
    return luaL_error(L, "%s: out of memory", F);
  return 1;
}

/* The time; fname names the method that asked, for a clock() that misbehaves. */
static int64_t now_ms(lua_State *L, const char *fname) {
  if (lua_getiuservalue(L, 1, UV_CLOCK) == LUA_TNIL) {
    lua_pop(L, 1);
    return (int64_t)bt_now(lbt_R(L)->rt);
  }
  lua_call(L, 0, 1);
  int isnum = 0;
  lua_Number v = lua_tonumberx(L, -1, &isnum);
  if (!isnum || !(v > -9e18 && v < 9e18))
    luaL_error(L, "%s: clock() returned %s (expected a number)", fname, lbt_push_got(L, -1));
  lua_pop(L, 1);
  if (((ldedup *)lua_touserdata(L, 1))->d == NULL)  /* the clock finalized it */
    lbt_closed_error(L, LBT_DEDUP);
  return (int64_t)v;
}

/* Sets user value `uv`[key] = value on top (popped); key at key_idx. */
static void set_field(lua_State *L, int uv, int key_idx) {
  lua_getiuservalue(L, 1, uv);
  lua_pushvalue(L, key_idx);
  lua_rotate(L, -3, -1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

typedef struct dropctx {
  lua_State *L;
  int values;
} dropctx;

static void drop_value(void *ud, const char *key, size_t len) {
  dropctx *c = ud;
  lua_pushlstring(c->L, key, len);
  lua_pushnil(c->L);
  lua_rawset(c->L, c->values);
}

/* The key's state (bounded sweep and lazy expiry first). A flight whose execution died
 * without settling is forgotten, and reads as absent. */
static bt_dedup_state_t lookup(lua_State *L, ldedup *D, int key_idx, int64_t now,
                               uint64_t *gen) {
  size_t len;
  const char *key = lua_tolstring(L, key_idx, &len);
  lua_getiuservalue(L, 1, UV_VALUES);
  dropctx c = {L, lua_gettop(L)};
  bt__dedup_expire(D->d, now, BT_DEDUP_SWEEP, drop_value, &c);
  bt_dedup_state_t st = bt__dedup_get(D->d, key, len, now, gen, drop_value, &c);
  lua_pop(L, 1);
  if (st == BT_DEDUP_FLIGHT) {
    lua_getiuservalue(L, 1, UV_FLIGHTS);
    lua_pushvalue(L, key_idx);
    lua_rawget(L, -2);
    lbt_task *T = lua_isnil(L, -1) ? NULL : lbt_check_task(L, -1);
    lua_pop(L, 2);
    if (T == NULL || bt_task_finished(&T->t)) {
      bt__dedup_fail(D->d, key, len);
      lua_pushnil(L);
      set_field(L, UV_FLIGHTS, key_idx);
      st = BT_DEDUP_ABSENT;
    }
  }
  return st;
}

/* Pushes the cached values of the key at key_idx; returns how many. */
static int push_cached(lua_State *L, int key_idx) {
  lua_getiuservalue(L, 1, UV_VALUES);
  lua_pushvalue(L, key_idx);
  if (lua_rawget(L, -2) != LUA_TTABLE) {
    lua_pop(L, 2);
    return 0;
  }
  lua_getfield(L, -1, "n");
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "baton.dedup: too many cached values");
  int t = lua_gettop(L);
  for (int i = 1; i <= n; i++) lua_rawgeti(L, t, i);
  lua_remove(L, t);
  lua_remove(L, t - 1);
  return n;
}

/* Caches values first..top (packed) under the key at key_idx. */
static void store_values(lua_State *L, int key_idx, int first) {
  int n = lua_gettop(L) - first + 1;
  lua_createtable(L, n, 1);
  for (int i = 0; i < n; i++) {
    lua_pushvalue(L, first + i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  set_field(L, UV_VALUES, key_idx);
}

/* What check and complete start from: self, the key (index 2; the stack cut to `top`), the
 * time, and the key's state (a sweep first; a stale flight repaired). */
typedef struct dcall {
  ldedup *D;
  const char *key;
  size_t len;
  int64_t now;
  bt_dedup_state_t st;
} dcall;

static dcall begin(lua_State *L, const char *fname, int top) {
  dcall c;
  c.D = check_dedup(L, 1);
  c.key = check_key(L, fname, &c.len);
  lua_settop(L, top);
  c.now = now_ms(L, fname);
  c.st = lookup(L, c.D, 2, c.now, NULL);
  return c;
}

static int ldedup_check(lua_State *L) {
  static const char *const F = "baton.dedup:check";
  lua_Number ttl = lua_isnoneornil(L, 3) ? -1 : lbt_arg_ms(L, F, 3, "ttl_ms", -1);  /* -1: the table's */
  dcall c = begin(L, F, 2);
  switch (c.st) {
  case BT_DEDUP_ABSENT:
    if (bt__dedup_register(c.D->d, c.key, c.len, c.now,
                           ttl < 0 ? bt__dedup_ttl(c.D->d) : (uint64_t)ceil(ttl)) != 0)
      return luaL_error(L, "%s: out of memory", F);
    lua_pushliteral(L, "new");
    return 1;
  case BT_DEDUP_CACHED:
    lua_pushliteral(L, "cached");
    return 1 + push_cached(L, 2);
  default:
    lua_pushliteral(L, "in_progress");
    return 1;
  }
}

static int ldedup_complete(lua_State *L) {
  static const char *const F = "baton.dedup:complete";
  dcall c = begin(L, F, 3);
  int prev = bt__dedup_complete(c.D->d, c.key, c.len, c.now);
  if (prev < 0) return luaL_error(L, "%s: out of memory", F);
  if (prev == BT_DEDUP_FLIGHT) {  /* the execution goes on for its waiters, uncached */
    lua_pushnil(L);
    set_field(L, UV_FLIGHTS, 2);
  }
  store_values(L, 2, 3);
  return 0;
}

static int ldedup_fail(lua_State *L) {
  ldedup *D = check_dedup(L, 1);
  size_t len;
  const char *key = check_key(L, "baton.dedup:fail", &len);
  lua_settop(L, 2);
  if (bt__dedup_fail(D->d, key, len) == BT_DEDUP_FLIGHT) {
    lua_pushnil(L);
    set_field(L, UV_FLIGHTS, 2);
  }
  return 0;
}

static int ldedup_size(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)bt__dedup_size(check_dedup(L, 1)->d));
  return 1;
}

static int ldedup_tostring(lua_State *L) {
  ldedup *D = lbt_check_type(L, 1, LBT_DEDUP);
  if (D->d == NULL) lua_pushliteral(L, "baton.Dedup (finalized)");
  else lua_pushfstring(L, "baton.Dedup (ttl %I ms, %I entries)",
                       (LUAI_UACINT)bt__dedup_ttl(D->d), (LUAI_UACINT)bt__dedup_size(D->d));
  return 1;
}

static int ldedup_gc(lua_State *L) {
  ldedup *D = lbt_check_type(L, 1, LBT_DEDUP);
  bt__dedup_free(D->d);
  D->d = NULL;
  return 0;
}

/* ---- run: the shared execution ------------------------------------------------------ */

/* The execution's task body: 1 dedup  2 key  3 generation  4 fn  5.. arguments. It returns
 * true, fn's results | false, fn's error; a cancellation propagates. */
static int exec_after(lua_State *L, int status) {
  ldedup *D = lua_touserdata(L, 1);
  size_t len;
  const char *key = lua_tolstring(L, 2, &len);
  uint64_t gen = (uint64_t)lua_tointeger(L, 3);
  if (status == LUA_OK || status == LUA_YIELD) {
    int n = lua_gettop(L) - 3;
    int ok = !(n >= 2 && lua_isnil(L, 4) && !lua_isnil(L, 5));
    int64_t now = D->d != NULL ? now_ms(L, F_RUN) : 0;
    if (D->d != NULL && bt__dedup_settle(D->d, key, len, gen, ok, now)) {
      lua_pushnil(L);
      set_field(L, UV_FLIGHTS, 2);
      if (ok) store_values(L, 2, 4);
    }
    lua_pushboolean(L, 1);
    lua_insert(L, 4);
    return n + 1;
  }
  if (D->d != NULL && bt__dedup_settle(D->d, key, len, gen, 0, 0)) {
    lua_pushnil(L);
    set_field(L, UV_FLIGHTS, 2);
  }
  if (status != LUA_ERRRUN || lbt_is_cancel_error(L, -1)) return lua_error(L);
  lua_pushboolean(L, 0);
  lua_insert(L, -2);
  return 2;
}

static int exec_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  return exec_after(L, status);
}

static int exec_body(lua_State *L) {
  return exec_after(L, lua_pcallk(L, lua_gettop(L) - 4, LUA_MULTRET, 0, 0, exec_k));
}

static int lwaiter_close(lua_State *L) {
  lwaiter *w = lbt_check_type(L, 1, LBT_DEDUP_WAITER);
  lbt_rt *R = lbt_R(L);
  if (!w->joined) return 0;
  w->joined = 0;
  lua_getiuservalue(L, 1, 1);
  ldedup *D = lua_touserdata(L, -1);
  lua_getiuservalue(L, 1, 2);
  size_t len;
  const char *key = lua_tolstring(L, -1, &len);
  if (D->d == NULL || !bt__dedup_leave(D->d, key, len, w->gen)) return 0;
  /* The last waiter left a running execution: nobody wants it any more. */
  lua_getiuservalue(L, -2, UV_FLIGHTS);
  lua_pushvalue(L, -2);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_getiuservalue(L, 1, 3);
  lbt_task *E = lua_touserdata(L, -1);
  bt_task_abort(R->rt, &E->t);
  return 0;
}

/* The execution (index 3) has finished: hand its outcome to this caller. */
static int deliver(lua_State *L) {
  int n = lbt_push_outcome(L, 3);
  if (!lua_toboolean(L, -n)) return lua_error(L);  /* it died: its error is on top */
  if (lua_toboolean(L, -n + 1)) return n - 2;      /* fn's results */
  lua_pushvalue(L, -n + 2);                        /* fn's error, raised again here */
  return lua_error(L);
}

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lbt_resumed(L, NULL, NULL, NULL);  /* cancelled: closing the waiter leaves the flight */
  return deliver(L);
}

static int ldedup_run(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  ldedup *D = check_dedup(L, 1);
  size_t len;
  const char *key = check_key(L, F_RUN, &len);
  lbt_arg_function(L, F_RUN, 3, "fn");
  int nargs = lua_gettop(L) - 3;
  if (nargs > 240) return luaL_error(L, "%s: too many arguments (%d)", F_RUN, nargs);
  uint64_t gen = 0;
  lbt_task *self = NULL;
  switch (lookup(L, D, 2, now_ms(L, F_RUN), &gen)) {
  case BT_DEDUP_CACHED:
    return push_cached(L, 2);
  case BT_DEDUP_PENDING:  /* claimed by check(): nothing to wait for */
    lua_settop(L, 2);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "key");
    return lbt_fail_detail(L, F_RUN, "busy", -1, "key '%s' is in progress (claimed by check)",
                           key);
  case BT_DEDUP_FLIGHT:
    self = lbt_await_begin(L, R, F_RUN);
    lua_getiuservalue(L, 1, UV_FLIGHTS);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    break;
  default:  /* absent: this caller starts the execution */
    self = lbt_await_begin(L, R, F_RUN);
    if ((gen = bt__dedup_begin_flight(D->d, key, len)) == 0)
      return luaL_error(L, "%s: out of memory", F_RUN);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, exec_body, 1);
    int fi = lua_gettop(L);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushinteger(L, (lua_Integer)gen);
    for (int i = 0; i <= nargs; i++) lua_pushvalue(L, 3 + i);
    lbt_task_new(L, R, fi, 4 + nargs, R->root, NULL, 0);
    lua_pushvalue(L, -1);
    set_field(L, UV_FLIGHTS, 2);
    break;
  }
  lua_replace(L, 3);  /* 1 dedup  2 key  3 execution  4 waiter */
  lua_settop(L, 3);
  lbt_task *E = lua_touserdata(L, 3);
  if (E == self)
    return luaL_error(L, "%s: the execution for key '%s' called %s for that same key (it "
                      "would wait for itself)", F_RUN, key, F_RUN);
  lwaiter *w = lua_newuserdatauv(L, sizeof *w, 3);
  w->gen = gen;
  w->joined = 0;
  luaL_setmetatable(L, BT_TICKET_MT);
  for (int i = 1; i <= 3; i++) {
    lua_pushvalue(L, i);
    lua_setiuservalue(L, 4, i);
  }
  lua_toclose(L, 4);
  bt__dedup_join(D->d, key, len, gen);
  w->joined = 1;
  lbt_fiber *f = lbt_fib(self);
  if (bt_task_join(R->rt, &self->t, &E->t, &f->joiner, &f->wait, UINT64_MAX)) return deliver(L);
  return lbt_suspend(L, 0, join_k);
}

void lbt_open_dedup(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"check", ldedup_check}, {"complete", ldedup_complete}, {"fail", ldedup_fail},
    {"run", ldedup_run}, {"size", ldedup_size}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__gc", ldedup_gc}, {"__tostring", ldedup_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_DEDUP_MT, methods, meta);
  static const luaL_Reg none[] = {{NULL, NULL}};
  /* No __gc: a waiter's coroutine is always closed (its task finishes through
   * lua_resetthread, a wrapped coroutine is closed on error), except when the whole state
   * closes, and then there is nothing left to abort. */
  static const luaL_Reg waiter_meta[] = {{"__close", lwaiter_close}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_TICKET_MT, none, waiter_meta);
  static const luaL_Reg funcs[] = {{"dedup", ldedup_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
