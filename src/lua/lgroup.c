/*
 * lgroup.c — baton.group(): a JoinSet of tasks.
 *
 * The userdata holds the core group; its user value is a table that keeps alive the
 * semaphores its gates use (bounded spawn). Finished tasks stay anchored while they sit in
 * the group's finished list; popping one (join_next, drain, join_all, wait_within) hands it
 * to Lua and drops the anchor. Closing or collecting the group aborts its live tasks,
 * forgets them, and reports failures nobody joined; its methods then raise "used after it
 * was closed", but close, live and #g (0).
 *
 * A group made inside a task is owned by it (bt_group_own): the task finishes only after
 * every task spawned into the group has (task.c). close() called from a task aborts the
 * live tasks and waits until none is live; __close and __gc cannot wait, so they abort
 * and detach them, and the owner's completion waits instead. With fail_fast the core
 * aborts the siblings of the first failure; join_all and wait_within that collect it raise
 * its error once the rest has finished (or their deadline passed).
 *
 * Waiting methods take ONE absolute deadline when called and keep it across re-waits, so
 * a batch never waits N × timeout.
 *
 * Errors (docs/errors.md). Raise: misuse (a bad argument, a closed semaphore given to
 * spawn_bounded or limit, a closed group at entry). Return `nil, msg, kind, detail`:
 * join_next (timeout; closed when the group is closed while it waits; resource), and
 * wait_within/join_all (closed, resource; detail.finished holds the tasks collected).
 * Re-raised, not returned: the first failure of a fail_fast group (docs/api.md says why).
 * A wait_within deadline is not a failure: the list is partial.
 */
#include <math.h>
#include <string.h>

#include "lbaton.h"

typedef struct lgroup lgroup;

/* The group's user value: a table of what it keeps alive (semaphores of its gates),
 * created on first need. */
static void push_keep(lua_State *L, int gi) {
  if (lua_getiuservalue(L, gi, 1) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, gi, 1);
}

LBT_HANDLE_FIRST(lgroup, g);

static lgroup *check_group(lua_State *L, int idx) {
  return lbt_check_handle(L, idx, LBT_GROUP);
}

/* The semaphore at sem_idx (argument #n `name` of fname) stays alive as long as what
 * gates on it: the group's keep table and each task's user value hold it (and its memory
 * is its userdata's, lbaton.h). */
static bt_gate_t *gate_for(lua_State *L, lgroup *G, int sem_idx, const char *fname, int n,
                           const char *name) {
  lsem *S = lbt_test_type(L, sem_idx, LBT_SEM);
  if (S == NULL)
    lbt_argerror_got(L, fname, n, name, "integer >= 1 or baton.Semaphore",
                     lbt_push_got(L, sem_idx));
  if (S->s == NULL || bt_sem_closed(S->s))
    lbt_argerror_got(L, fname, n, name, "an open semaphore", "a closed one");
  if (bt_sem_capacity(S->s) < 1)
    lbt_argerror_got(L, fname, n, name, "a semaphore of >= 1 permits", "0 permits");
  bt_gate_t *gate = bt_group_gate(G->g, S->s);
  if (gate == NULL) luaL_error(L, "%s: out of memory", fname);
  return gate;
}

static int lgroup_new(lua_State *L) {
  static const char *const fname = "baton.group";
  lbt_rt *R = lbt_R(L);
  lbt_check_open(L, R);
  int has_opts = !lua_isnoneornil(L, 1);
  if (has_opts) {
    static const char *const known[] = {"limit", "fail_fast", "detached", "name", NULL};
    lbt_check_opts(L, fname, 1, "opts", known);
  }
  int fail_fast = has_opts && lbt_opt_bool(L, fname, 1, "fail_fast", 0);
  int detached = has_opts && lbt_opt_bool(L, fname, 1, "detached", 0);
  lgroup *G = lua_newuserdatauv(L, sizeof *G, 2);  /* 1: keep table, 2: `limit`'s semaphore */
  G->limit = NULL;
  G->name = NULL;
  bt__group_init(&G->storage, R->rt);
  G->g = &G->storage;
  bt_group_fail_fast(G->g, fail_fast);
  bt_task_t *owner = bt_rt_current(R->rt);  /* a group made in a task is the task's, */
  if (owner != NULL && !detached) bt_group_own(G->g, owner);  /* unless it outlives it */
  LIST_INSERT_HEAD(&R->groups, G, link);
  lbt_set_class(L, LBT_GROUP);
  if (has_opts) {
    int gi = lua_gettop(L);
    const char *name = lbt_opt_string(L, fname, 1, "name", "", NULL);
    if (*name != '\0') {  /* baton.tasks() shows it; the keep table holds the string */
      push_keep(L, gi);
      lua_pushstring(L, name);
      G->name = lua_tostring(L, -1);
      lua_setfield(L, -2, "name");
      lua_pop(L, 1);
    }
    if (lua_getfield(L, 1, "limit") == LUA_TNUMBER) {  /* a semaphore of the group's own */
      lua_Integer n = lbt_opt_count(L, fname, 1, "limit", 1, -1);
      lua_getfield(L, LUA_REGISTRYINDEX, "baton.module");
      lua_getfield(L, -1, "semaphore");
      lua_pushinteger(L, n);
      lua_call(L, 1, 1);
      lua_replace(L, -3);
      lua_pop(L, 1);
    }
    if (!lua_isnil(L, -1)) {
      G->limit = gate_for(L, G, lua_gettop(L), fname, 1, "limit");
      lua_pushvalue(L, -1);
      lua_setiuservalue(L, gi, 2);  /* one API call away for every spawn */
    }
    lua_pop(L, 1);
  }
  return 1;
}

/* The function at fn_idx and its arguments, gated (sem_idx: its semaphore) or not. */
static int spawn_on(lua_State *L, lgroup *G, bt_gate_t *gate, int sem_idx, int fn_idx) {
  lbt_task_new(L, lbt_R(L), fn_idx, lua_gettop(L) - fn_idx, G->g, gate, sem_idx);
  return 1;
}

static int lgroup_spawn(lua_State *L) {
  lgroup *G = check_group(L, 1);
  if (lua_type(L, 2) != LUA_TFUNCTION) {  /* g:spawn{ name =, fn, ... } */
    if (lua_type(L, 2) == LUA_TTABLE) return lbt_spawn_opts(L, 2, "baton.group:spawn", lgroup_spawn);
    lbt_argerror(L, "baton.group:spawn", 2, "fn", "function");
  }
  if (G->limit == NULL) return spawn_on(L, G, NULL, 0, 2);
  lua_getiuservalue(L, 1, 2);
  lua_insert(L, 2);  /* the semaphore goes before the function and its arguments */
  return spawn_on(L, G, G->limit, 2, 3);
}

/* group:spawn_bounded(sem, fn, ...): the task gets a coroutine only once it holds one
 * permit of sem; the permit goes back when it ends, however it ends. */
static int lgroup_spawn_bounded(lua_State *L) {
  static const char *const fname = "baton.group:spawn_bounded";
  lgroup *G = check_group(L, 1);
  lbt_arg_function(L, fname, 3, "fn");
  bt_gate_t *gate = gate_for(L, G, 2, fname, 1, "sem");
  push_keep(L, 1);  /* keep the semaphore alive as long as the group */
  lua_pushvalue(L, 2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return spawn_on(L, G, gate, 2, 3);
}

/* Pops the oldest finished task onto the stack; 0 if there is none, 2 if it is the
 * group's first failure under fail_fast, else 1. */
static int pop_one(lua_State *L, lbt_rt *R, lgroup *G) {
  bt_task_t *first = bt_group_failed(G->g);
  lbt_task *T = (lbt_task *)bt_group_pop(G->g);
  if (T == NULL) return 0;
  T->t.flags |= BT_TASK_F_JOINED;  /* handed over: its outcome is the caller's now */
  lbt_task_take(L, R, T);
  return &T->t == first ? 2 : 1;
}

/* Appends the finished tasks to the list at `list`, which holds n; returns the new n. The
 * group's first failure under fail_fast is also copied to `fail` (0: nowhere). */
static lua_Integer drain_into(lua_State *L, lbt_rt *R, lgroup *G, int list, lua_Integer n,
                              int fail) {
  int rc;
  while ((rc = pop_one(L, R, G)) != 0) {
    if (rc == 2 && fail != 0) {
      lua_pushvalue(L, -1);
      lua_replace(L, fail);
    }
    lua_rawseti(L, list, ++n);
  }
  return n;
}

/* The group at 1 after a wait, or NULL if it was closed meanwhile. Slot 1 still holds the
 * group checked before the wait (its userdata memory lives as long as the slot). */
static lgroup *group_after_wait(lua_State *L) {
  lgroup *G = lua_touserdata(L, 1);
  return G->g != NULL ? G : NULL;
}

static const char JOIN_NEXT[] = "baton.group:join_next";

/* Stack: group, timeout (ms or nil). */
static int join_next_k(lua_State *L, int st, lua_KContext due) {
  (void)st;
  lbt_task *T;
  int status = lbt_resumed(L, &T, NULL, NULL);
  lgroup *G = group_after_wait(L);
  if (G == NULL) return lbt_fail(L, JOIN_NEXT, "the group was closed while waiting", "closed");
  if (pop_one(L, lbt_R(L), G)) return 1;
  if (status == BT_ETIMEDOUT) return lbt_fail_timeout(L, JOIN_NEXT, lua_tonumber(L, 2));
  if (status != 0) return lbt_fail_status(L, JOIN_NEXT, status);
  int rc = bt_group_wait(G->g, &T->t, &lbt_fib(T)->joiner, &lbt_fib(T)->wait, (uint64_t)due);
  if (rc < 0) return 0;
  return lbt_suspend_task(L, T, due, join_next_k);
}

static int lgroup_join_next(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = check_group(L, 1);
  uint64_t due = lbt_arg_due(L, R, JOIN_NEXT, 2);
  lua_settop(L, 2);
  if (pop_one(L, R, G)) return 1;
  if (bt_group_len(G->g) == 0) return 0;
  lbt_task *T = lbt_await_begin(L, R, JOIN_NEXT);
  if (due == UINT64_MAX && T->t.group == G->g && bt_group_live(G->g) == 1)
    return luaL_error(L, "%s: the only task of the group still running is the caller (it "
                      "would wait for itself)", JOIN_NEXT);
  lbt_fib(T)->status = 0;
  int rc = bt_group_wait(G->g, &T->t, &lbt_fib(T)->joiner, &lbt_fib(T)->wait, due);
  if (rc < 0) return 0;
  return lbt_suspend_task(L, T, (lua_KContext)due, join_next_k);
}

/* Shared by wait_within (a deadline) and join_all (none). Stack: group, fname (a light
 * userdata: the string), the list, the first failure collected under fail_fast (or nil).
 * A failure carries the list as detail.finished. */
static int collect_fail(lua_State *L, int status, const char *msg) {
  const char *fname = lua_touserdata(L, 2);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, "finished");
  if (msg != NULL) return lbt_fail_detail(L, fname, "closed", -1, "%s", msg);
  return lbt_fail_detail(L, fname, lbt_kind_of(status), -1, "%s", bt_strerror(status));
}

/* The end of a collect: the list, or, under fail_fast, the first failure's error raised
 * (once the siblings it aborted have finished, or the deadline passed). */
static int collect_done(lua_State *L) {
  if (!lua_isnil(L, 4)) {
    lua_getiuservalue(L, 4, 1);
    return lua_error(L);
  }
  lua_settop(L, 3);
  return 1;
}

static int collect_k(lua_State *L, int st, lua_KContext due) {
  (void)st;
  lbt_rt *R = lbt_R(L);
  lbt_task *T;
  int status = lbt_resumed(L, &T, NULL, NULL);
  lgroup *G = group_after_wait(L);
  if (G == NULL) return collect_fail(L, 0, "the group was closed while waiting");
  lbt_fiber *f = lbt_fib(T);
  lua_Integer n = drain_into(L, R, G, 3, f->kdata, 4);  /* kdata: how many the list holds */
  if (status == BT_ETIMEDOUT || bt_group_live(G->g) == 0) return collect_done(L);
  if (status != 0) return collect_fail(L, status, NULL);
  int rc = bt_group_wait(G->g, &T->t, &f->joiner, &f->wait, (uint64_t)due);
  if (rc != 0) {
    drain_into(L, R, G, 3, n, 4);
    return collect_done(L);
  }
  f->kdata = n;
  return lbt_suspend_task(L, T, due, collect_k);
}

static int collect(lua_State *L, lgroup *G, uint64_t due, const char *fname) {
  lbt_rt *R = lbt_R(L);
  lua_settop(L, 1);
  lua_pushlightuserdata(L, (void *)fname);
  lua_createtable(L, (int)(bt_group_len(G->g) < 1u << 20 ? bt_group_len(G->g) : 1u << 20), 0);
  lua_pushnil(L);
  lua_Integer n = drain_into(L, R, G, 3, 0, 4);
  if (bt_group_live(G->g) == 0) return collect_done(L);
  lbt_task *T = lbt_await_begin(L, R, fname);
  if (due == UINT64_MAX && T->t.group == G->g)  /* it would wait for its own end */
    return luaL_error(L, "%s: a task of the group cannot wait for all of it (it would wait "
                      "for itself); use join_next or wait_within", fname);
  lbt_fiber *f = lbt_fib(T);
  f->status = 0;
  int rc = bt_group_wait(G->g, &T->t, &f->joiner, &f->wait, due);
  if (rc != 0) {
    drain_into(L, R, G, 3, n, 4);
    return collect_done(L);
  }
  f->kdata = n;
  return lbt_suspend_task(L, T, (lua_KContext)due, collect_k);
}

static int lgroup_wait_within(lua_State *L) {
  static const char fname[] = "baton.group:wait_within";
  lbt_rt *R = lbt_R(L);
  lgroup *G = check_group(L, 1);
  uint64_t due = bt_due(R->rt, (uint64_t)ceil(lbt_arg_ms(L, fname, 2, "ms", -1)));
  return collect(L, G, due, fname);
}

static int lgroup_join_all(lua_State *L) {
  return collect(L, check_group(L, 1), UINT64_MAX, "baton.group:join_all");
}

static int lgroup_drain(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = check_group(L, 1);
  lua_settop(L, 1);
  lua_newtable(L);
  drain_into(L, R, G, 2, 0, 0);
  return 1;
}

static int lgroup_abort_all(lua_State *L) {
  lgroup *G = check_group(L, 1);
  bt_group_abort_all(G->g);
  return 0;
}

/* Forgets the finished tasks, reporting failures nobody joined. A report runs the user's
 * warning handler, which may close the group: 0 then, else 1. */
static int forget_finished(lua_State *L, lbt_rt *R, lgroup *G) {
  bt_task_t *t;
  while (G->g != NULL && (t = bt_group_pop(G->g)) != NULL) {
    lbt_task *T = (lbt_task *)t;
    if (t->state == BT_TASK_FAILED && !(t->flags & BT_TASK_F_JOINED)) {
      t->flags |= BT_TASK_F_JOINED;
      lbt_push_task(L, R, T);
      lua_getiuservalue(L, -1, 1);
      lbt_warn_unjoined(R, T, lbt_push_failure_text(L, -1));
      lua_pop(L, 3);
    }
    lbt_task_release(R, T);
  }
  return G->g != NULL;
}

/* Aborts the live tasks and forgets everything; reports failures nobody joined. */
static void shutdown_group(lua_State *L, lbt_rt *R, lgroup *G) {
  if (forget_finished(L, R, G)) bt_group_detach_all(G->g);
}

static int lgroup_shutdown(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = check_group(L, 1);
  shutdown_group(L, R, G);
  return 0;
}

/* Closes at once (never waits): aborts and forgets the live tasks, which unwind on their
 * own (an owning task's completion waits for them: task.c). */
static void close_now(lua_State *L, lbt_rt *R, lgroup *G) {
  if (!R->closed) shutdown_group(L, R, G);
  else bt_group_detach_all(G->g);
  if (G->g == NULL) return;  /* closed by the warning handler a report ran */
  bt__group_destroy(G->g);
  LIST_REMOVE(G, link);
  lbt_handle_clear(L, G, LBT_GROUP);
  G->limit = NULL;
}

/* __close and __gc: cannot wait. */
static int lgroup_close(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = lbt_check_type(L, 1, LBT_GROUP);
  if (G->g != NULL) close_now(L, R, G);
  return 0;
}

static int close_k(lua_State *L, int st, lua_KContext ctx);

/* Forgets the finished tasks (reporting failures nobody joined), aborts the live ones
 * (again: tasks spawned meanwhile too) and waits for one to finish; closes once none is
 * live. Stack: group. */
static int close_wait(lua_State *L, lbt_rt *R, lgroup *G, lbt_task *T) {
  if (!forget_finished(L, R, G)) return 0;
  if (bt_group_live(G->g) == 0) {
    close_now(L, R, G);
    return 0;
  }
  bt_group_abort_all(G->g);
  lbt_fiber *f = lbt_fib(T);
  f->status = 0;
  bt_group_wait(G->g, &T->t, &f->joiner, &f->wait, UINT64_MAX);  /* live > 0: waits */
  return lbt_suspend_task(L, T, 0, close_k);
}

/* Cancelled while waiting: close at once, then raise the cancellation. */
static int close_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  lbt_rt *R = lbt_R(L);
  lgroup *G = lua_touserdata(L, 1);
  lbt_task *T = lbt_current(R);
  if (lbt_fib(T)->status == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL)) {
    if (G->g != NULL) close_now(L, R, G);
    lbt_resumed(L, NULL, NULL, NULL);  /* raises */
  }
  if (G->g == NULL) return 0;  /* closed meanwhile by someone else */
  return close_wait(L, R, G, T);
}

/* group:close() from a task that may wait: aborts the live tasks and returns once they
 * have all finished (their <close> handlers ran). Elsewhere (no task, a call that cannot
 * yield, the closing task is in the group or already cancelled) it closes at once, as
 * <close> does. */
static int lgroup_close_method(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = lbt_check_type(L, 1, LBT_GROUP);
  if (G->g == NULL) return 0;
  lbt_task *T = lbt_current(R);
  if (R->closed || T == NULL || bt_group_live(G->g) == 0 || T->t.group == G->g ||
      (T->t.flags & BT_TASK_F_CANCEL) || !lua_isyieldable(L) ||
      (lbt_fib(T)->co != L && !lbt_is_wrapped(L))) {
    close_now(L, R, G);
    return 0;
  }
  lua_settop(L, 1);
  return close_wait(L, R, G, T);
}

static int lgroup_len(lua_State *L) {
  lgroup *G = lbt_check_type(L, 1, LBT_GROUP);
  lua_pushinteger(L, G->g ? (lua_Integer)bt_group_len(G->g) : 0);
  return 1;
}

/* Live tasks (running, waiting or pending) — #g minus the finished ones. */
static int lgroup_live(lua_State *L) {
  lgroup *G = lbt_check_type(L, 1, LBT_GROUP);
  lua_pushinteger(L, G->g ? (lua_Integer)bt_group_live(G->g) : 0);
  return 1;
}

static int lgroup_tostring(lua_State *L) {
  lgroup *G = lbt_check_type(L, 1, LBT_GROUP);
  if (G->g == NULL) lua_pushliteral(L, "baton.Group (closed)");
  else lua_pushfstring(L, "baton.Group (%I live, %I finished)",
                       (LUAI_UACINT)bt_group_live(G->g),
                       (LUAI_UACINT)(bt_group_len(G->g) - bt_group_live(G->g)));
  return 1;
}

void lbt_open_group(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"spawn", lgroup_spawn}, {"spawn_bounded", lgroup_spawn_bounded},
    {"join_next", lgroup_join_next}, {"wait_within", lgroup_wait_within},
    {"drain", lgroup_drain}, {"join_all", lgroup_join_all}, {"abort_all", lgroup_abort_all},
    {"shutdown", lgroup_shutdown}, {"live", lgroup_live}, {"close", lgroup_close_method},
    {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__len", lgroup_len}, {"__close", lgroup_close}, {"__gc", lgroup_close},
    {"__tostring", lgroup_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_GROUP_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"group", lgroup_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
