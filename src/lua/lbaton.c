/*
 * lbaton.c — the `baton` module: one runtime per Lua state, baton.run and the running
 * functions (spawn, sleep, yield, now, timeout), and the helpers the other bindings share.
 *
 * The runtime is a full userdata kept in the registry and passed to every binding function
 * as upvalue 1 (its address is also in the state's extra space, where lbt_R finds it with
 * one load); it owns the core bt_rt_t, the anchor stacks (tasks and coroutines that C
 * holds, ltask.c) and the fiber pool. It is closed when the Lua state is: its __gc frees
 * the core runtime and the loop, after every other baton object has been finalised (Lua
 * finalises in reverse order of creation, and the runtime is created first).
 *
 * baton.run(fn, ...) makes fn the main task and runs the loop until it ends; then it aborts
 * every other task, keeps the loop running until they and their child processes are gone,
 * and returns the main task's results or raises its error. While it runs it watches signals
 * (lsignal.c); a run that a signal or baton.exit ended ends the process once that cleanup is
 * done (the executable does it itself, after closing the state).
 *
 * Errors (docs/errors.md). Raise: misuse (bad arguments, nesting baton.run), a deadlock
 * (baton.run), and the main task's error (baton.run re-raises it). Return `nil, msg, kind,
 * detail`: baton.timeout (timeout, { timeout_ms = }), baton.sleep (resource: no memory for
 * its timer). The shared helpers below raise in the misuse form of lfail.c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lbaton.h"
#include "trace.h"

#define RT_KEY "baton.runtime"


/* ---- shared helpers ----------------------------------------------------------------- */

/* Each class (lbt_class): its metatable name, also its __name and the X in "expected
 * baton.X"; and the path the user calls its methods by ("baton.group" of
 * "baton.group:spawn"), the prefix of messages (docs/errors.md). */
static const struct { const char *name, *path; } classes[LBT_NCLASSES] = {
  [LBT_TASK] = {BT_TASK_MT, "baton.task"}, [LBT_TASK_GC] = {BT_TASK_GC_MT, "baton.task"},
  [LBT_GROUP] = {BT_GROUP_MT, "baton.group"}, [LBT_SEM] = {BT_SEM_MT, "baton.semaphore"},
  [LBT_PERMIT] = {BT_PERMIT_MT, "baton.permit"},
  [LBT_PERMIT_FREE] = {BT_PERMIT_FREE_MT, "baton.permit"},
  [LBT_BUDGET] = {BT_BUDGET_MT, "baton.budget"},
  [LBT_PROC] = {BT_PROC_MT, "baton.process"}, [LBT_FUTURE] = {"baton.Future", "baton.future"},
  [LBT_ENGINE] = {"baton.Engine", "baton.engine"},
  [LBT_LIMITER] = {"baton.Limiter", "baton.limiter"},
  [LBT_LIM_PERMIT] = {"baton.Limiter.Permit", "baton.limiter.permit"},
  [LBT_LIM_GRANT] = {"baton.Limiter.Grant", "baton.limiter.grant"},
  [LBT_RETRY] = {"baton.Retry", "baton.retry"}, [LBT_BREAKER] = {"baton.Breaker", "baton.breaker"},
  [LBT_BRK_BACKEND] = {"baton.BreakerBackend", "baton.breaker_backend"},
  [LBT_BRK_CALL] = {"baton.Breaker.Call", "baton.breaker.call"},
  [LBT_DEDUP] = {"baton.Dedup", "baton.dedup"},
  [LBT_DEDUP_WAITER] = {"baton.Dedup.Waiter", "baton.dedup.waiter"},
  [LBT_BP] = {"baton.Backpressure", "baton.backpressure"},
  [LBT_BP_PERMIT] = {"baton.Backpressure.Permit", "baton.backpressure.permit"},
  [LBT_PIPELINE] = {"baton.Pipeline", "baton.pipeline"},
  [LBT_RUNNER] = {"baton.Runner", "baton.runner"},
  [LBT_HTTP_STREAM] = {"baton.HttpStream", "baton.http.stream"},
  [LBT_HTTP_XFER] = {"baton.HttpTransfer", "baton.http.transfer"},
  [LBT_CHAN] = {"baton.Channel", "baton.channel"}, [LBT_WATCH] = {"baton.Watch", "baton.watch"},
  [LBT_NOTIFY] = {"baton.Notify", "baton.notify"},
  [LBT_RATELIMIT] = {"baton.RateLimit", "baton.ratelimit"},
  [LBT_REDIS] = {"baton.Redis", "baton.redis"}, [LBT_REDIS_CALL] = {"baton.Redis.Call", "baton.redis.call"},
  [LBT_REDIS_SUB] = {"baton.Redis.Subscription", "baton.redis.subscription"},
  [LBT_PROGRESS] = {"baton.Progress", "baton.progress"}};

/* Tasks and permits have two classes each, one without __gc (ltask.c, lsem.c): the user
 * sees one. */
static lbt_class seen_as(lbt_class cls) {
  return cls == LBT_TASK_GC ? LBT_TASK : cls == LBT_PERMIT_FREE ? LBT_PERMIT : cls;
}

const char *lbt_class_name(lbt_class cls) { return classes[seen_as(cls)].name; }

void *lbt_test_type(lua_State *L, int idx, lbt_class cls) {
  /* Userdata only (a table given a class's metatable is not one), but for the grant */
  void *p = cls == LBT_LIM_GRANT ? (lua_istable(L, idx) ? (void *)lua_topointer(L, idx) : NULL)
                                 : lua_touserdata(L, idx);
  if (p == NULL || !lua_getmetatable(L, idx)) return NULL;
  const void *mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  return mt == lbt_R(L)->classes[cls] ? p : NULL;
}

/* The string key under which the table at t holds the value at v, or NULL. */
static const char *key_of(lua_State *L, int t, int v) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_rawequal(L, -1, v) && lua_type(L, -2) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -2);  /* the table keeps it */
      lua_pop(L, 2);
      return k;
    }
    lua_pop(L, 1);
  }
  return NULL;
}

/* The name at the top replaces the function at fn, and is returned. */
static const char *found(lua_State *L, int fn) {
  lua_replace(L, fn);
  lua_settop(L, fn);
  return lua_tostring(L, fn);
}

/* Found by identity: among the methods (and metamethods) of the classes, then among the
 * module's functions and those of its sub-tables (baton.http.request). Sets *cls to the
 * class of a method, or -1. The name is pushed (on error paths only: it costs a walk). */
static const char *find_fname(lua_State *L, int *cls) {
  *cls = -1;
  lua_Debug ar;
  if (!lua_getstack(L, 0, &ar) || !lua_getinfo(L, "f", &ar)) return lua_pushliteral(L, "baton");
  int fn = lua_gettop(L);
  for (int c = 0; c < LBT_NCLASSES; c++) {
    if (luaL_getmetatable(L, classes[c].name) == LUA_TTABLE) {
      const char *k = NULL;
      if (lua_getfield(L, fn + 1, "__methods") == LUA_TTABLE) k = key_of(L, fn + 2, fn);
      if (k == NULL) k = key_of(L, fn + 1, fn);
      if (k != NULL) {
        *cls = c;
        lua_pushfstring(L, "%s:%s", classes[c].path, k);
        return found(L, fn);
      }
    }
    lua_settop(L, fn);
  }
  if (lua_getfield(L, LUA_REGISTRYINDEX, "baton.module") == LUA_TTABLE) {
    const char *k = key_of(L, fn + 1, fn);
    if (k != NULL) {
      lua_pushfstring(L, "baton.%s", k);
      return found(L, fn);
    }
    lua_pushnil(L);
    while (lua_next(L, fn + 1)) {  /* key at fn + 2, value at fn + 3 */
      if (lua_istable(L, fn + 3) && lua_type(L, fn + 2) == LUA_TSTRING) {
        const char *k2 = key_of(L, fn + 3, fn);
        if (k2 != NULL) {
          lua_pushfstring(L, "baton.%s.%s", lua_tostring(L, fn + 2), k2);
          return found(L, fn);
        }
      }
      lua_pop(L, 1);
    }
  }
  lua_settop(L, fn - 1);
  if (!lua_getinfo(L, "n", &ar) || ar.name == NULL) return lua_pushliteral(L, "baton");
  return lua_pushfstring(L, "baton.%s", ar.name);
}

const char *lbt_fname(lua_State *L) {
  int cls;
  return find_fname(L, &cls);
}

/* "semaphore" for an argument of class baton.semaphore. */
static const char *arg_name(lbt_class cls) {
  const char *p = strrchr(classes[cls].path, '.');
  return p != NULL ? p + 1 : classes[cls].path;
}

void *lbt_check_type(lua_State *L, int idx, lbt_class cls) {
  void *p = lbt_test_type(L, idx, cls);
  if (p != NULL) return p;
  const char *got = lbt_push_got(L, idx);  /* first: lbt_fname pushes, and idx may be none */
  const char *fname = lbt_fname(L);
  int n = lbt_argn(fname, idx);
  lbt_argerror_got(L, fname, n, n == 0 ? "self" : arg_name(cls), lbt_class_name(cls), got);
  return NULL;
}

int lbt_closed_error(lua_State *L, lbt_class cls) {
  int c;
  const char *fname = find_fname(L, &c);
  if (c >= 0 && seen_as((lbt_class)c) == seen_as(cls))
    return luaL_error(L, "%s: used after it was closed", fname);
  return luaL_error(L, "%s: %s used after it was closed", fname, classes[cls].path);
}

/* The classes lbt_check_handle may remember (see lbaton.h for what that requires). */
static const char memo_ok[LBT_NCLASSES] = {[LBT_GROUP] = 1, [LBT_SEM] = 1, [LBT_CHAN] = 1};

void lbt_handle_clear(lua_State *L, void *ud, lbt_class cls) {
  lbt_rt *R = lbt_R(L);
  *(void **)ud = NULL;
  if (R->open_memo[cls] == ud) R->open_memo[cls] = NULL;
}

void *lbt_check_handle(lua_State *L, int idx, lbt_class cls) {
  lbt_rt *R = lbt_R(L);
  void **p = lua_touserdata(L, idx);
  if (p != NULL && p == R->open_memo[cls] && lua_type(L, idx) == LUA_TUSERDATA) return p;
  p = lbt_check_type(L, idx, cls);
  if (*p != NULL) {
    if (memo_ok[cls]) R->open_memo[cls] = p;
    return p;
  }
  int c;
  const char *fname = find_fname(L, &c);
  if (c == (int)cls && idx == 1) luaL_error(L, "%s: used after it was closed", fname);
  luaL_error(L, "%s: bad argument #%d '%s' (%s used after it was closed)", fname,
             lbt_argn(fname, idx), arg_name(cls), classes[cls].path);
  return NULL;
}

lua_Number lbt_check_ms(lua_State *L, int idx, const char *fname) {
  int isnum = 0;
  lua_Number ms = lua_tonumberx(L, idx, &isnum);
  if (isnum && ms >= 0 && ms < 1e15) return ms;  /* NaN fails both comparisons */
  return lbt_arg_ms(L, fname != NULL ? fname : lbt_fname(L), idx, "ms", -1);
}

uint64_t lbt_opt_due(lua_State *L, lbt_rt *R, int idx) {
  if (lua_isnoneornil(L, idx)) return UINT64_MAX;
  return bt_due(R->rt, (uint64_t)ceil(lbt_check_ms(L, idx, NULL)));
}

void lbt_set_funcs(lua_State *L, int rt_idx, const luaL_Reg *l) {
  for (; l->name != NULL; l++) {
    lua_pushvalue(L, rt_idx);
    lua_pushcclosure(L, l->func, 1);
    lua_setfield(L, -2, l->name);
  }
}

void lbt_new_class(lua_State *L, int rt_idx, const char *mt, const luaL_Reg *methods,
                   const luaL_Reg *meta) {
  int cls = 0;
  while (cls < LBT_NCLASSES && strcmp(classes[cls].name, mt) != 0) cls++;
  if (cls == LBT_NCLASSES) luaL_error(L, "baton: %s is not a class of lbt_class", mt);
  luaL_newmetatable(L, mt);
  lbt_rt *R = lua_touserdata(L, rt_idx);
  R->classes[cls] = lua_topointer(L, -1);
  lua_pushvalue(L, -1);
  R->class_refs[cls] = luaL_ref(L, LUA_REGISTRYINDEX);
  lbt_set_funcs(L, rt_idx, meta);
  lua_newtable(L);
  lbt_set_funcs(L, rt_idx, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__methods");
  lua_getfield(L, -2, "__index");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_setfield(L, -2, "__index");
  } else {
    lua_pop(L, 2);
  }
  lua_pushstring(L, mt);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

/* Pushes a new table with weak keys. */
static void new_weak(lua_State *L) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}

void lbt_weak_set_new(lua_State *L, const char *key) {
  new_weak(L);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
}

void lbt_push_weak_table(lua_State *L, const char *key) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  new_weak(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
}

void lbt_weak_set_add(lua_State *L, const char *key, int idx) {
  idx = lua_absindex(L, idx);
  lua_getfield(L, LUA_REGISTRYINDEX, key);
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

void lbt_weak_set_each(lua_State *L, const char *key, void (*fn)(void *ud)) {
  lua_getfield(L, LUA_REGISTRYINDEX, key);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    void *ud = lua_touserdata(L, -1);
    if (ud != NULL) fn(ud);
  }
  lua_pop(L, 1);
}

lua_Integer lbt_opt_int(lua_State *L, const char *fname, const char *key, lua_Integer min,
                        lua_Integer def) {
  lua_getfield(L, 1, key);
  int isint = 0;
  lua_Integer v = lua_tointegerx(L, -1, &isint);
  if (lua_isnil(L, -1) && def >= 0) v = def;
  else if (lua_type(L, -1) != LUA_TNUMBER || !isint || v < min || (lua_Number)v > 1e15)
    luaL_error(L, "%s: %s must be an integer >= %d (got %s)", fname, key, (int)min,
               lbt_push_got(L, -1));
  lua_pop(L, 1);
  return v;
}

void lbt_opt_func(lua_State *L, const char *fname, const char *key, int uv) {
  int t = lua_getfield(L, 1, key);
  if (t != LUA_TNIL && t != LUA_TFUNCTION)
    luaL_error(L, "%s: %s must be a function (got %s)", fname, key, luaL_typename(L, -1));
  lua_setiuservalue(L, -2, uv);
}

/* ---- running ------------------------------------------------------------------------ */

void lbt_abort_all(lbt_rt *R) {
  bt_group_abort_all(R->root);
  struct lgroup *G;
  LIST_FOREACH(G, &R->groups, link) bt_group_abort_all(G->g);
}

/* Runs the loop until the main task has finished, then until every other task and child
 * process is gone. Returns 1 if the main task could never be woken (deadlock). */
static int run_loop(lua_State *L, lbt_rt *R, lbt_task *M, char *why, size_t nwhy) {
  uv_loop_t *loop = bt_rt_loop(R->rt);
  int deadlock = 0;
  while (!bt_task_finished(&M->t)) {
    int alive = uv_run(loop, UV_RUN_ONCE);
    if (!alive && !bt_task_finished(&M->t) && bt_rt_ready(R->rt) == 0) {
      if (deadlock) break;  /* aborted, and still stuck: a shielded wait (baton.shield) */
      deadlock = 1;
      lbt_describe_waiting(L, R, why, nwhy);
      bt_task_abort(R->rt, &M->t);
    }
  }
  /* Everything is aborted and released, and again after each turn: an aborted task's
   * <close> handler, or a task that caught its cancellation, may still spawn a process or
   * a task, open a stream or a client (released at once, never waited for). */
  do {
    lbt_abort_all(R);
    lbt_close_procs(R->L);
    lbt_close_streams(R->L);
    lbt_close_redis(R->L);
    if (R->live == 0 && bt_rt_procs(R->rt) == 0) break;
  } while (uv_run(loop, UV_RUN_ONCE) || bt_rt_ready(R->rt) > 0);
  /* (the loop had nothing left to run: tasks stuck with nothing to wake them) */
  lbt_close_progress(R->L);  /* the redraw timers (a later run makes them again) */
  /* Nothing is in flight: close the pooled HTTP connections too, so a run leaves no
   * descriptor behind (the next request makes a new multi handle). */
  if (bt_rt_transfers(R->rt) == 0) {
    bt__http_free(R->rt);
    uv_run(loop, UV_RUN_NOWAIT);  /* the poll handles' close callbacks */
  }
  return deadlock;
}

static int run_in_task_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

static int lbaton_run(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_check_open(L, R);
  lbt_arg_function(L, "baton.run", 1, "fn");
  if (R->running && R->cli && bt_rt_current(R->rt) != NULL) {
    /* The baton executable already runs the script as the main task: a script written for
     * a stock lua5.4 (`baton.run(main)`) runs unchanged, fn called right here. */
    lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, run_in_task_k);
    return run_in_task_k(L, LUA_OK, 0);
  }
  if (R->running)
    return luaL_error(L, "baton.run: already running (baton.run cannot nest); inside a task, "
                      "call the function directly or use baton.spawn");
  int nargs = lua_gettop(L) - 1;
  lbt_task *M = lbt_task_new(L, R, 1, nargs, NULL, NULL, 0);
  int mi = lua_gettop(L);
  R->running = 1;
  R->from = L;
  R->main = M;
  lbt_signals_start(R);
  char why[1024];
  int deadlock = run_loop(L, R, M, why, sizeof why);
  lbt_trace_flush(R);  /* a run's events are on disk when it ends (or a warning says why not) */
  lbt_signals_stop(R);
  R->running = 0;
  R->from = NULL;
  R->main = NULL;
  /* Ended by baton.exit or a signal's default action: the executable takes the status from
   * R->exit_status; anywhere else the process ends here, the cleanup above done. */
  if (R->exit_status >= 0 && !R->cli) return lbt_exit_run(L, R);
  if (deadlock)
    return luaL_error(L, "baton.run: deadlock: the main task is waiting for something that "
                      "nothing left running can deliver; waiting: %s", why);
  int n = lbt_push_outcome(L, mi);
  if (lua_toboolean(L, mi + 1)) return n - 1;
  return lua_error(L);  /* the task's error value, traceback included */
}

static int lbaton_spawn(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  if (lua_type(L, 1) != LUA_TFUNCTION) {
    if (lua_type(L, 1) == LUA_TTABLE) return lbt_spawn_opts(L, 1, "baton.spawn", lbaton_spawn);
    lbt_argerror(L, "baton.spawn", 1, "fn", "function");
  }
  lbt_task_new(L, R, 1, lua_gettop(L) - 1, R->root, NULL, 0);
  return 1;
}

/* ctx: the function's name. A deadline wait that could not arm its timer (no memory)
 * wakes at once: a failure, not a silent early return. */
static int sleep_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  int s = lbt_resumed(L, NULL, NULL, NULL);
  return s == 0 || s == BT_ETIMEDOUT ? 0 : lbt_fail_status(L, (const char *)ctx, s);
}

static int lbaton_sleep(lua_State *L) {
  static const char fname[] = "baton.sleep";
  lbt_rt *R = lbt_R(L);
  lua_Number ms = lbt_arg_ms(L, fname, 1, "ms", -1);
  lbt_task *T = lbt_await_begin(L, R, fname);
  uint64_t due = bt_due(R->rt, (uint64_t)(ms + 0.999999));
  bt_task_wait(R->rt, &T->t, &lbt_fib(T)->wait, NULL, due);
  return lbt_suspend_task(L, T, (lua_KContext)fname, sleep_k);
}

static int lbaton_yield(lua_State *L) {
  static const char fname[] = "baton.yield";
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_await_begin(L, R, fname);
  bt_task_yield(R->rt, &T->t);
  return lbt_suspend_task(L, T, (lua_KContext)fname, sleep_k);
}

static int timeout_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  return lua_gettop(L);
}

/* baton.timeout(ms, fn, ...): the arguments are checked here, by the shared readers, so
 * that a bad one is blamed on baton.timeout; the Lua part (upvalue 2) does the rest. */
static int lbaton_timeout(lua_State *L) {
  lbt_arg_ms(L, "baton.timeout", 1, "ms", -1);
  lbt_arg_function(L, "baton.timeout", 2, "fn");
  if (lua_gettop(L) - 2 > 250)  /* named here, not as the spawn and join it is made of */
    return luaL_error(L, "baton.timeout: too many arguments (%d, at most 250)", lua_gettop(L) - 2);
  if (bt_rt_current(lbt_R(L)->rt) == NULL)
    return luaL_error(L, "baton.timeout: not inside a baton task; run the code with "
                      "baton.run(function() ... end) (the baton executable does this for a "
                      "script's main chunk)");
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, timeout_k);
  return timeout_k(L, LUA_OK, 0);
}

static int lbaton_now(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_check_open(L, R);
  lua_pushinteger(L, (lua_Integer)bt_now(R->rt));
  return 1;
}

/* Sub-millisecond monotonic clock, in milliseconds as a float. */
static int lbaton_clock(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e6);
  return 1;
}

static int lbaton_current(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  bt_task_t *t = bt_rt_current(R->rt);
  if (t == NULL) return 0;
  lbt_push_task(L, R, (lbt_task *)t);
  return 1;
}

/* baton.warn(msg): reports through the baton.on_warning handler, else stderr. */
static int lbaton_warn(lua_State *L) {
  if (lua_type(L, 1) != LUA_TNUMBER) lbt_arg_string(L, "baton.warn", 1, "msg", NULL);
  lbt_warn_on(L, lua_tostring(L, 1));
  return 0;
}

static int lbaton_on_warning(lua_State *L) {
  if (!lua_isnil(L, 1) && !lua_isfunction(L, 1))
    lbt_argerror(L, "baton.on_warning", 1, "fn", "function or nil");
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "baton.on_warning");
  return 0;
}

typedef struct { lbt_rt *R; lua_Integer n; } handle_count;

static void count_handle(uv_handle_t *h, void *arg) {
  handle_count *c = arg;
  bt_rt_t *rt = c->R->rt;
  if (h == (uv_handle_t *)&rt->check || h == (uv_handle_t *)&rt->idle ||
      h == (uv_handle_t *)&rt->timer || lbt_signals_own(c->R, h))
    return;  /* the runtime's own */
  c->n++;  /* open (not closed) handles of anything else: pipes, processes, signals */
}

/* Counters for tests and diagnostics: nothing left behind means all zero. */
static int lbaton_stats(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_check_open(L, R);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)R->live);
  lua_setfield(L, -2, "tasks");
  lua_pushinteger(L, (lua_Integer)bt_rt_ready(R->rt));
  lua_setfield(L, -2, "ready");
  lua_pushinteger(L, (lua_Integer)bt_rt_timers(R->rt));
  lua_setfield(L, -2, "timers");
  lua_pushinteger(L, (lua_Integer)bt_rt_procs(R->rt));
  lua_setfield(L, -2, "processes");
  lua_pushinteger(L, R->npool);
  lua_setfield(L, -2, "pooled_coroutines");
  handle_count c = {R, 0};
  uv_walk(bt_rt_loop(R->rt), count_handle, &c);
  lua_pushinteger(L, c.n);
  lua_setfield(L, -2, "handles");
  lua_pushinteger(L, (lua_Integer)bt_rt_transfers(R->rt));
  lua_setfield(L, -2, "transfers");
  return 1;
}

/* The parts best written in Lua, compiled into the module so it needs no search path. */
static const char *const lua_helpers =
  "local baton = ...\n"
  "local spawn = baton.spawn\n"
  "local function finish(t, ms, ok, ...)\n"
  "  if ok then return ... end\n"
  "  if ok == false then error((...), 0) end\n"
  "  t:abort(); t:join()\n"
  "  return nil, ('baton.timeout: fn did not finish within %.15g ms'):format(ms),\n"
  "         'timeout', { timeout_ms = ms }\n"
  "end\n"
  "-- fn's results, or nil, msg, 'timeout', detail (fn's task aborted and finished); fn's\n"
  "-- error re-raised; the arguments checked by lbaton_timeout, which calls this\n"
  "function baton.timeout(ms, fn, ...)\n"
  "  local t <close> = spawn(fn, ...)\n"
  "  return finish(t, ms, t:join(ms))\n"
  "end\n"
  "-- coroutines whose baton waits pass through to the task running them\n"
  "local MARK, wrapped = select(2, ...)\n"
  "local create, resume, yield, status, close ="
  "  coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.close\n"
  "-- busy[co]: a call is under way (co may be parked in a wait of the task that made it):\n"
  "-- a second call, from another task or from co itself, must not resume co\n"
  "local busy = setmetatable({}, { __mode = 'k' })\n"
  "local function step(co, ok, ...)\n"
  "  if not ok then busy[co] = nil; close(co); error((...), 0) end\n"
  "  if status(co) == 'suspended' and select('#', ...) == 1 and (...) == MARK then\n"
  "    yield(MARK)\n"
  "    return step(co, resume(co))\n"
  "  end\n"
  "  busy[co] = nil\n"
  "  return ...\n"
  "end\n"
  "baton.coroutine = {}\n"
  "function baton.coroutine.wrap(f)\n"
  "  if type(f) ~= 'function' then\n"
  "    error(\"baton.coroutine.wrap: bad argument #1 'f' (expected function, got \" ..\n"
  "          type(f) .. ')', 2)\n"
  "  end\n"
  "  local co = create(f)\n"
  "  wrapped[co] = true\n"
  "  return function(...)\n"
  "    if busy[co] then\n"
  "      error('baton.coroutine.wrap: the generator is already running (called again before '\n"
  "            .. 'it yielded or returned: from another task while it waits, or from itself)', 2)\n"
  "    end\n"
  "    busy[co] = true\n"
  "    return step(co, resume(co, ...))\n"
  "  end\n"
  "end\n";

static int lrt_gc(lua_State *L) {
  lbt_rt *R = lua_touserdata(L, 1);
  if (R->closed) return 0;
  R->closed = 1;
  lbt_trace_close(R);
  lbt_signals_close(R);
  bt_group_detach_all(R->root);
  bt_group_free(R->root);
  /* Every fiber, pooled or still held by a task suspended when the state closed. The
   * waits they held were unregistered by the finalizers of what they waited on. */
  lbt_fiber *f;
  while ((f = LIST_FIRST(&R->fibers)) != NULL) {
    LIST_REMOVE(f, all);
    lbt_fiber_free(R, f);
  }
  R->pool = NULL;
  bt_rt_free(R->rt);
  free(R->free_slots);
  R->free_slots = NULL;
  free(R->astacks);  /* the anchor threads themselves go with the state */
  R->astacks = NULL;
  lbt_signals_free(R);  /* its handles were closed by the loop's last run, in bt_rt_free */
  return 0;
}

static int lbaton_version(lua_State *L) {
  lua_pushstring(L, BATON_VERSION);
  return 1;
}

_Atomic int lbt_extra_foreign;

/* lbt_R: the runtime goes in L's extra space if nothing else is there. */
static void claim_extraspace(lua_State *L, lbt_rt *R) {
  lbt_rt **ex = lua_getextraspace(L);
  if (*ex == NULL || *ex == R) *ex = R;
  else lbt_extra_foreign = 1;
}

int lbt_open(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "baton.module");
  if (lua_istable(L, -1)) return 1;
  lua_pop(L, 1);

  lbt_rt *R = lua_newuserdatauv(L, sizeof *R, 0);
  memset(R, 0, sizeof *R);
  int rt_idx = lua_gettop(L);
  luaL_newmetatable(L, BT_RT_MT);
  lua_pushcfunction(L, lrt_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, rt_idx);
  R->rt = bt_rt_new(NULL);
  if (R->rt == NULL) return luaL_error(L, "baton: cannot create the runtime (out of memory)");
  R->root = bt_group_new(R->rt);
  if (R->root == NULL) return luaL_error(L, "baton: out of memory");
  bt_rt_set_data(R->rt, R);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  R->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  claim_extraspace(R->L, R);
  if (L != R->L) claim_extraspace(L, R);
  lua_newtable(L);
  R->anchors = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, rt_idx);
  lua_setfield(L, LUA_REGISTRYINDEX, RT_KEY);
  LIST_INIT(&R->groups);
  LIST_INIT(&R->fibers);

  static const luaL_Reg funcs[] = {
    {"run", lbaton_run}, {"spawn", lbaton_spawn}, {"sleep", lbaton_sleep},
    {"yield", lbaton_yield}, {"now", lbaton_now}, {"clock", lbaton_clock},
    {"current", lbaton_current}, {"on_warning", lbaton_on_warning}, {"warn", lbaton_warn},
    {"stats", lbaton_stats}, {"version", lbaton_version}, {"tasks", lbt_tasks},
    {NULL, NULL}};
  lua_newtable(L);
  lbt_set_funcs(L, rt_idx, funcs);
  lua_pushliteral(L, BATON_VERSION);
  lua_setfield(L, -2, "_VERSION");
  lbt_open_task(L, rt_idx);
  lbt_open_introspect(L, rt_idx);
  lbt_open_trace(L, rt_idx);
  lbt_open_progress(L, rt_idx);
  lbt_open_group(L, rt_idx);
  lbt_open_sem(L, rt_idx);
  lbt_open_json(L, rt_idx);
  lbt_open_proc(L, rt_idx);
  lbt_open_engine(L, rt_idx);
  lbt_open_limiter(L, rt_idx);
  lbt_open_retry(L, rt_idx);
  lbt_open_breaker(L, rt_idx);
  lbt_open_dedup(L, rt_idx);
  lbt_open_backpressure(L, rt_idx);
  lbt_open_pipeline(L, rt_idx);
  lbt_open_runner(L, rt_idx);
  lbt_open_http(L, rt_idx);
  lbt_open_future(L, rt_idx);
  lbt_open_signal(L, rt_idx);
  lbt_open_errors(L, rt_idx);
  lbt_open_chan(L, rt_idx);
  lbt_open_sync(L, rt_idx);
  lbt_open_select(L, rt_idx);
  lbt_open_ratelimit(L, rt_idx);
  lbt_open_redis(L, rt_idx);
  lbt_open_concurrency(L, rt_idx);
  lbt_open_router(L, rt_idx);
  lbt_open_queue(L, rt_idx);

  if (luaL_loadbuffer(L, lua_helpers, strlen(lua_helpers), "=baton") != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, -2);
  lbt_push_wrap_marker(L);
  new_weak(L);  /* the set of wrapped coroutines */
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "baton.wrapped");
  lua_call(L, 3, 0);
  lua_pushvalue(L, rt_idx);
  lua_getfield(L, -2, "timeout");
  lua_pushcclosure(L, lbaton_timeout, 2);
  lua_setfield(L, -2, "timeout");

  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "baton.module");
  return 1;
}
