/*
 * lengine.c — baton.engine: speculative prefetch of tool calls (the core is engine.c).
 *
 * The userdata embeds the engine's task group, registered with the runtime's open groups so
 * that the end of baton.run aborts its tasks like any group's, and the core engine hooked on
 * that group. dispatch() asks the core about each request and spawns every admitted one as
 * a task running dispatcher(tool, args, request); the core gives back its host slot and
 * in-flight count from the group's finish hook, whatever ends the task. Outcomes are built
 * here, when a finished task is popped from the group: settled (a body), failed (an error,
 * a baton.Error { kind, message, detail }), or failed with kind "cancelled" for a task
 * aborted by anything but shutdown. The request of each task waits in user value 2, by
 * task id, until then.
 *
 * Errors (docs/errors.md). Raise: a bad configuration (baton.engine, naming the key), a bad
 * request (baton.engine:dispatch: bad argument #1 'requests[2].tool' ...; none is started),
 * use after close (baton.engine:dispatch: used after it was closed), a wait outside a task,
 * and the cancellation error of the caller. Return failures: none — skips and the failures
 * of dispatchers are outcomes, in the lists the methods return. A dispatcher fails when it
 * raises or returns `nil, msg[, kind[, detail]]`, both read by lbt_outcome (the one rule:
 * a returned kind is kept; kind "error" when it gave none). wait_within and shutdown await
 * (shutdown only when it can: in __close or __gc it just aborts).
 */
#include <math.h>
#include <string.h>

#include "engine.h"
#include "lbaton.h"

#define BT_ENGINE_MT "baton.Engine"
#define TRACEBACK_SEP "\nstack traceback:"

static const char *const F_NEW = "baton.engine";
static const char *const F_DISPATCH = "baton.engine:dispatch";

/* User values: 1 the dispatcher, 2 requests by task id, 3 the shared budget (or nil), 4 the
 * per-host caps when per_host_cap is a table ({ [host] = cap }, checked), else nil. */
typedef struct lengine {
  struct lgroup lg;  /* lg.g is NULL until the engine is open and once it is closed */
  bt_engine_t e;
} lengine;

LBT_HANDLE_FIRST(lengine, lg.g);

static lengine *check_engine(lua_State *L) { return lbt_check_handle(L, 1, LBT_ENGINE); }

/* ---- configuration and requests ----------------------------------------------------- */

/* Raises "baton.engine:dispatch: bad argument #1 'requests[i].<field>' (expected X, got
 * <the value at idx>)"; field NULL names the request itself. */
static int bad_request(lua_State *L, lua_Integer i, const char *field, const char *expected,
                       int idx) {
  const char *got = lbt_push_got(L, idx);
  const char *name = field ? lua_pushfstring(L, "requests[%I].%s", (LUAI_UACINT)i, field)
                           : lua_pushfstring(L, "requests[%I]", (LUAI_UACINT)i);
  return lbt_argerror_got(L, F_DISPATCH, 1, name, expected, got);
}

/* Raises unless the request at idx (requests[i]) is well formed; unknown keys first. */
static void check_request(lua_State *L, int idx, lua_Integer i) {
  static const char *const known[] = {"tool", "args", "host", "cost_tokens", "speculate", NULL};
  if (!lua_istable(L, idx)) bad_request(L, i, NULL, "table", idx);
  int top = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    int n = 0;
    while (k != NULL && known[n] != NULL && strcmp(k, known[n]) != 0) n++;
    if (k == NULL) bad_request(L, i, NULL, "string keys", -2);
    if (known[n] == NULL)
      luaL_error(L, "%s: bad argument #1 'requests[%I].%s' (unknown option)", F_DISPATCH,
                 (LUAI_UACINT)i, k);
    lua_pop(L, 1);
  }
  if (lua_getfield(L, idx, "tool") != LUA_TSTRING) bad_request(L, i, "tool", "string", -1);
  int t = lua_getfield(L, idx, "host");
  if (t != LUA_TNIL && t != LUA_TSTRING) bad_request(L, i, "host", "string or nil", -1);
  int isint = 0;
  t = lua_getfield(L, idx, "cost_tokens");
  lua_Integer cost = lua_tointegerx(L, -1, &isint);
  if (t != LUA_TNIL && (t != LUA_TNUMBER || !isint || cost < 0))
    bad_request(L, i, "cost_tokens", "integer >= 0", -1);
  t = lua_getfield(L, idx, "speculate");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN) bad_request(L, i, "speculate", "boolean", -1);
  lua_settop(L, top);
}

static int lengine_new(lua_State *L) {
  static const char *const known[] = {"enabled", "max_parallel", "timeout_ms", "per_host_cap",
                                      "respect_rate_limits", "dispatcher", "budget", NULL};
  lbt_rt *R = lbt_R(L);
  lbt_check_opts(L, F_NEW, 1, "options", known);
  lua_settop(L, 1);
  bt_engine_cfg cfg;
  cfg.enabled = lbt_opt_bool(L, F_NEW, 1, "enabled", 1);
  cfg.respect_rate_limits = lbt_opt_bool(L, F_NEW, 1, "respect_rate_limits", 1);
  cfg.max_parallel = (size_t)lbt_opt_count(L, F_NEW, 1, "max_parallel", 0, -1);
  int caps = 0;  /* per_host_cap = { default = n, [host] = n }: stack index of a checked copy */
  if (lua_getfield(L, 1, "per_host_cap") == LUA_TTABLE) {
    lua_newtable(L);
    caps = lua_gettop(L);
    cfg.per_host_cap = 4;
    lua_pushnil(L);
    while (lua_next(L, caps - 1)) {
      int isint = 0;
      lua_Integer n = lua_tointegerx(L, -1, &isint);
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      if (k == NULL)
        lbt_argerror_got(L, F_NEW, 1, "per_host_cap", "host names as keys", lbt_push_got(L, -2));
      if (lua_type(L, -1) != LUA_TNUMBER || !isint || n < 0) {
        const char *got = lbt_push_got(L, -1);
        lbt_argerror_got(L, F_NEW, 1, lua_pushfstring(L, "per_host_cap.%s", k), "integer >= 0", got);
      }
      if (strcmp(k, "default") == 0) {
        cfg.per_host_cap = (size_t)n;
      } else {
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, caps);
      }
      lua_pop(L, 1);
    }
    lua_replace(L, caps - 1);  /* the copy where the option was */
    caps = caps - 1;
  } else {
    lua_pop(L, 1);
    cfg.per_host_cap = (size_t)lbt_opt_count(L, F_NEW, 1, "per_host_cap", 0, 4);
    lua_pushnil(L);
    caps = lua_gettop(L);
  }
  lua_Number ms = lbt_opt_ms(L, F_NEW, 1, "timeout_ms", -1);
  if (ms < 0) lbt_field_error(L, F_NEW, 1, "timeout_ms", "milliseconds >= 0");
  cfg.timeout_ms = (uint64_t)ceil(ms);
  if (!lbt_opt_function(L, F_NEW, 1, "dispatcher"))  /* 3 */
    lbt_field_error(L, F_NEW, 1, "dispatcher", "function");
  bt_budget_t *shared = NULL;
  if (lua_getfield(L, 1, "budget") != LUA_TNIL) {   /* 4 */
    lbudget *B = lbt_test_type(L, -1, LBT_BUDGET);
    if (B == NULL) lbt_field_error(L, F_NEW, 1, "budget", "baton.budget");
    if (B->b == NULL) return lbt_closed_error(L, LBT_BUDGET);
    shared = B->b;  /* in the budget's userdata, which user value 3 keeps */
  }
  lengine *E = lua_newuserdatauv(L, sizeof *E, 4);  /* created closed */
  memset(E, 0, sizeof *E);
  luaL_setmetatable(L, BT_ENGINE_MT);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, 1);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 2);
  lua_pushvalue(L, 4);
  lua_setiuservalue(L, -2, 3);
  lua_pushvalue(L, caps);
  lua_setiuservalue(L, -2, 4);
  bt__group_init(&E->lg.storage, R->rt);
  if (bt__engine_init(&E->e, &E->lg.storage, shared, &cfg) != 0)
    return luaL_error(L, "%s: out of memory", F_NEW);
  E->lg.g = &E->lg.storage;
  LIST_INSERT_HEAD(&R->groups, &E->lg, link);
  return 1;
}

/* ---- outcomes ----------------------------------------------------------------------- */

static void set_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* Copies tool, args, host and cost_tokens of the request at req into the table on top. */
static void copy_request(lua_State *L, int req) {
  static const char *const keys[] = {"tool", "args", "host", NULL};
  if (!lua_istable(L, req)) return;
  for (int i = 0; keys[i] != NULL; i++) {
    lua_getfield(L, req, keys[i]);
    lua_setfield(L, -2, keys[i]);
  }
  if (lua_getfield(L, req, "cost_tokens") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushinteger(L, 0);
  }
  lua_setfield(L, -2, "cost_tokens");
}

/* Pushes outcome.error for the failure message, kind, detail at base..base+2 (what
 * lbt_outcome left): a baton.Error { kind, message, detail }, with the traceback of a
 * raised string split off the message into `traceback`. A raised table (`raised`, its stack
 * index, or 0) keeps its other fields too: the traceback the task added, an MCP error's
 * code, data or result. */
static void push_error(lua_State *L, int base, int raised) {
  size_t len;
  const char *msg = lua_tolstring(L, base, &len);
  const char *tb = strstr(msg, TRACEBACK_SEP);
  lua_pushlstring(L, msg, tb ? (size_t)(tb - msg) : len);
  lbt_push_error_detail(L, lua_tostring(L, base + 1), lua_tostring(L, -1),
                        lua_istable(L, base + 2) ? base + 2 : 0);
  if (tb != NULL) set_str(L, "traceback", tb + 1);
  if (raised == 0 || !lua_istable(L, raised)) return;
  int e = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, raised)) {  /* fields the error does not have yet */
    lua_pushvalue(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING && lua_rawget(L, e) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, e);  /* error[key] = value; the key stays for lua_next */
    } else {
      lua_pop(L, 2);
    }
  }
}

/* Pops the oldest finished task of the engine, pushes its outcome and counts it; 0 if no
 * task has finished. The engine is at index 1. What the dispatcher returned, or nil and
 * what it raised, is read by lbt_outcome: one rule for both. A raised baton.Error (the
 * cancellation's too) is the outcome's error as it is. */
static int pop_outcome(lua_State *L, lbt_rt *R, lengine *E, int in_wait) {
  if (E->lg.g == NULL) return 0;  /* closed by the Lua code the last outcome ran */
  lbt_task *T = (lbt_task *)bt_group_pop(E->lg.g);
  if (T == NULL) return 0;
  T->t.flags |= BT_TASK_F_JOINED;
  uint64_t elapsed = bt__engine_collect(&E->e, &T->t);
  lua_createtable(L, 0, 8);
  int o = lua_gettop(L);
  lua_getiuservalue(L, 1, 2);             /* o+1: requests by id */
  lua_rawgeti(L, o + 1, T->t.id);         /* o+2: this request */
  lua_pushnil(L);
  lua_rawseti(L, o + 1, T->t.id);
  lua_pushvalue(L, o);
  copy_request(L, o + 2);
  lua_pushinteger(L, (lua_Integer)elapsed);
  lua_setfield(L, -2, "elapsed_ms");
  lbt_push_task(L, R, T);
  lua_getiuservalue(L, -1, 1);            /* o+5: results {n=...}, nil, or the error */
  int done = T->t.state == BT_TASK_DONE, raised = done ? 0 : o + 5;
  for (int i = 1; i <= 4; i++) {          /* o+6..o+9: the results, or nil, the error */
    if (done && lua_istable(L, o + 5)) lua_rawgeti(L, o + 5, i);
    else if (!done && i == 2 && lua_isnil(L, o + 5)) lua_pushliteral(L, "it raised nil");
    else if (!done && i == 2) lua_pushvalue(L, o + 5);
    else lua_pushnil(L);
  }
  int settled = lbt_outcome(L, LUA_OK, o + 6);
  if (settled) {
    lua_pushvalue(L, o + 6);
    lua_setfield(L, o, "body");
  } else {
    if (raised && lua_getmetatable(L, raised)) {
      luaL_getmetatable(L, BT_ERROR_MT);
      int is_error = lua_rawequal(L, -1, -2);
      lua_pop(L, 2);
      if (is_error) lua_pushvalue(L, raised);
      else push_error(L, o + 6, raised);
    } else {
      push_error(L, o + 6, raised);
    }
    lua_setfield(L, o, "error");
  }
  lua_settop(L, o);
  set_str(L, "status", settled ? "settled" : "failed");
  /* reading the request and the error ran metamethods: the engine may be closed by now */
  if (E->lg.g != NULL && T->t.state != BT_TASK_CANCELLED) bt__engine_note(&E->e, settled, in_wait);
  lbt_task_release(R, T);
  return 1;
}

static int drain_into(lua_State *L, lbt_rt *R, lengine *E, int list, int in_wait) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, list);
  while (pop_outcome(L, R, E, in_wait)) lua_rawseti(L, list, ++n);
  return (int)n;
}

/* ---- methods ------------------------------------------------------------------------ */

/* A request's or an error's metamethod (__index) closed the engine in the middle of a call. */
static int closed(lua_State *L) { return luaL_error(L, "%s: used after it was closed", F_DISPATCH); }

static int lengine_dispatch(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lengine *E = check_engine(L);
  if (!lua_istable(L, 2)) lbt_argerror(L, F_DISPATCH, 2, "requests", "table");
  lua_settop(L, 2);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  if (n == 0 && lua_getfield(L, 2, "tool") != LUA_TNIL)  /* one request, not a list of them */
    lbt_argerror_got(L, F_DISPATCH, 1, "requests", "a list of requests",
                     "a single request (wrap it: { request })");
  lua_settop(L, 2);
  for (lua_Integer i = 1; i <= n; i++) {  /* all checked before any is started */
    lua_rawgeti(L, 2, i);
    check_request(L, 3, i);
    lua_pop(L, 1);
  }
  if (E->lg.g == NULL) return closed(L);
  lua_newtable(L);                         /* 3: the skips */
  lua_getiuservalue(L, 1, 2);              /* 4: requests by task id */
  lua_Integer nskips = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);                  /* 5: the request */
    lua_getfield(L, 5, "host");
    size_t hlen = 0;
    const char *host = lua_tolstring(L, -1, &hlen);
    lua_getfield(L, 5, "speculate");
    int spec = lua_type(L, -1) != LUA_TBOOLEAN || lua_toboolean(L, -1);
    size_t cap = SIZE_MAX;
    if (host != NULL) {
      lua_getiuservalue(L, 1, 4);
      if (lua_istable(L, -1) && lua_getfield(L, -1, host) == LUA_TNUMBER)
        cap = (size_t)lua_tointeger(L, -1);
    }
    if (E->lg.g == NULL) return closed(L);  /* by a metamethod of the request */
    int rc = bt__engine_admit(&E->e, host, hlen, cap, spec);
    lua_settop(L, 5);
    if (rc < 0) return luaL_error(L, "%s: out of memory", F_DISPATCH);
    if (rc > 0) {
      lua_createtable(L, 0, 6);
      set_str(L, "status", "skipped");
      set_str(L, "reason", bt__engine_skip_name(rc));
      copy_request(L, 5);
      lua_rawseti(L, 3, ++nskips);
    } else {
      lua_getiuservalue(L, 1, 1);          /* dispatcher(tool, args, request) */
      lua_getfield(L, 5, "tool");
      lua_getfield(L, 5, "args");
      lua_pushvalue(L, 5);
      if (E->lg.g == NULL) return closed(L);
      lbt_task *T = lbt_task_new(L, R, 6, 3, E->lg.g, NULL, 0);
      bt__engine_attach(&E->e, &T->t);
      lua_pushvalue(L, 5);
      lua_rawseti(L, 4, T->t.id);
    }
    lua_settop(L, 4);
  }
  lua_settop(L, 3);
  return 1;
}

static lbt_task *self_task(lbt_rt *R) { return (lbt_task *)bt_rt_current(R->rt); }

/* Outcomes of tasks not forgotten by shutdown and not yet ended. */
static size_t awaited(const lengine *E) { return E->e.live - E->e.forgotten; }

/* One step of wait_within (engine at 1, list at 2): collects what has landed, then waits
 * again unless everything is in or the deadline passed. st is LUA_OK on the first step. */
static int wait_k(lua_State *L, int st, lua_KContext due) {
  lbt_rt *R = lbt_R(L);
  lengine *E = lbt_check_type(L, 1, LBT_ENGINE);
  lbt_task *T = NULL;
  lua_settop(L, 2);
  if (st == LUA_YIELD) {
    lbt_resumed(L, &T, NULL, NULL);
    if (E->lg.g == NULL) return 1;  /* closed meanwhile by another task */
  }
  drain_into(L, R, E, 2, 1);
  if (E->lg.g == NULL) return 1;  /* closed by what an outcome's reading ran */
  if ((T != NULL && lbt_fib(T)->status != 0) || awaited(E) == 0) return 1;
  if (T == NULL) T = lbt_await_begin(L, R, "baton.engine:wait_within");
  lbt_fib(T)->status = 0;
  if (bt_group_wait(E->lg.g, &T->t, &lbt_fib(T)->joiner, &lbt_fib(T)->wait, (uint64_t)due))
    return 1;
  return lbt_suspend(L, due, wait_k);
}

/* engine:wait_within([ms]): outcomes that land before ONE deadline, timeout_ms (or ms) from
 * now; tasks still running stay pending. */
static int lengine_wait_within(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lengine *E = check_engine(L);
  uint64_t due = lua_isnoneornil(L, 2) ? bt_due(R->rt, E->e.cfg.timeout_ms)
                                       : lbt_arg_due(L, R, "baton.engine:wait_within", 2);
  lua_settop(L, 1);
  lua_newtable(L);
  return wait_k(L, LUA_OK, (lua_KContext)due);
}

static int lengine_drain_pending(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lengine *E = check_engine(L);
  lua_settop(L, 1);
  lua_newtable(L);
  drain_into(L, R, E, 2, 0);
  return 1;
}

static int lengine_pending(lua_State *L) {
  lengine *E = lbt_check_type(L, 1, LBT_ENGINE);
  lua_pushinteger(L, (lua_Integer)bt__engine_pending(&E->e));
  return 1;
}

/* shutdown's wait (st LUA_OK on the first step): returns once the tasks it aborted have
 * ended, which takes one turn of the ready queue unless one catches its cancellation. */
static int shutdown_k(lua_State *L, int st, lua_KContext ctx) {
  (void)ctx;
  lbt_rt *R = lbt_R(L);
  lengine *E = lbt_check_type(L, 1, LBT_ENGINE);
  lbt_task *T = self_task(R);
  if (st == LUA_YIELD) lbt_cancel_point(L, NULL, NULL);
  if (E->lg.g == NULL || E->e.forgotten == 0) return 0;
  if (st == LUA_OK && (T == NULL || (T->t.flags & BT_TASK_F_CANCEL) || !lua_isyieldable(L) ||
                       (lbt_fib(T)->co != L && !lbt_is_wrapped(L))))
    return 0;  /* cannot wait here: the slots come back as the aborted tasks end */
  bt_task_yield(R->rt, &T->t);
  return lbt_suspend(L, 0, shutdown_k);
}

/* Aborts every task and drops every outcome; inside a task that may wait, returns once the
 * aborted tasks have ended. */
static int lengine_shutdown(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lengine *E = lbt_check_type(L, 1, LBT_ENGINE);
  if (E->lg.g == NULL) return 0;
  lua_settop(L, 1);
  while (pop_outcome(L, R, E, 0)) lua_pop(L, 1);
  if (E->lg.g == NULL) return 0;
  bt__engine_shutdown(&E->e);
  lua_newtable(L);
  lua_setiuservalue(L, 1, 2);
  return shutdown_k(L, LUA_OK, 0);
}

/* __close, __gc and close(): aborts and lets go of everything, at once (never waits). */
static int lengine_close(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lengine *E = lbt_check_type(L, 1, LBT_ENGINE);
  if (E->lg.g == NULL) return 0;
  bt_task_t *t;
  while ((t = bt_group_pop(E->lg.g)) != NULL) {
    t->flags |= BT_TASK_F_JOINED;
    if (!R->closed) lbt_task_release(R, (lbt_task *)t);
  }
  bt__engine_destroy(&E->e);
  bt__group_destroy(E->lg.g);
  LIST_REMOVE(&E->lg, link);
  E->lg.g = NULL;
  return 0;
}

static void set_count(lua_State *L, const char *k, uint64_t n) {
  lua_pushinteger(L, (lua_Integer)n);
  lua_setfield(L, -2, k);
}

static int lengine_stats(lua_State *L) {
  lengine *E = lbt_check_type(L, 1, LBT_ENGINE);
  const bt_engine_stats *s = &E->e.stats;
  lua_createtable(L, 0, 9);
  set_count(L, "dispatched", s->dispatched);
  set_count(L, "settled", s->settled);
  set_count(L, "failed", s->failed);
  set_count(L, "aborted", s->aborted);
  set_count(L, "wasted", s->failed + s->aborted);
  set_count(L, "won_race", s->won_race);
  set_count(L, "in_flight", E->e.live);
  lua_createtable(L, 0, BT_ENGINE_SKIP__N - 1);
  for (int i = 1; i < BT_ENGINE_SKIP__N; i++) set_count(L, bt__engine_skip_name(i), s->skipped[i]);
  lua_setfield(L, -2, "skipped");
  return 1;
}

static void snap_one(void *ud, const char *key, size_t len, size_t n) {
  lua_State *L = ud;
  lua_pushlstring(L, key, len);
  lua_pushinteger(L, (lua_Integer)n);
  lua_rawset(L, -3);
}

static int lengine_budget_snapshot(lua_State *L) {
  lengine *E = check_engine(L);
  lua_newtable(L);
  bt_budget_foreach(E->e.budget, snap_one, L);
  return 1;
}

static int lengine_tostring(lua_State *L) {
  lengine *E = lbt_check_type(L, 1, LBT_ENGINE);
  if (E->lg.g == NULL) lua_pushliteral(L, "baton.Engine (closed)");
  else lua_pushfstring(L, "baton.Engine (%I in flight, %I pending%s)", (LUAI_UACINT)E->e.live,
                       (LUAI_UACINT)bt__engine_pending(&E->e), E->e.cfg.enabled ? "" : ", disabled");
  return 1;
}

void lbt_open_engine(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"dispatch", lengine_dispatch}, {"wait_within", lengine_wait_within},
    {"drain_pending", lengine_drain_pending}, {"pending", lengine_pending},
    {"shutdown", lengine_shutdown}, {"close", lengine_close}, {"stats", lengine_stats},
    {"budget_snapshot", lengine_budget_snapshot}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__close", lengine_close}, {"__gc", lengine_close}, {"__tostring", lengine_tostring},
    {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_ENGINE_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"engine", lengine_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
