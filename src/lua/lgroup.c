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
 * Waiting methods take ONE absolute deadline when called and keep it across re-waits, so
 * a batch never waits N × timeout.
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

/* The semaphore at sem_idx stays alive as long as what gates on it: the group's keep table
 * and each task's user value hold it (and its memory is its userdata's, lbaton.h). */
static bt_gate_t *gate_for(lua_State *L, lgroup *G, int sem_idx, const char *fname) {
  bt_sem_t *s = ((lsem *)lbt_check_handle(L, sem_idx, LBT_SEM))->s;
  if (bt_sem_closed(s)) luaL_error(L, "%s: the semaphore is closed", fname);
  if (bt_sem_capacity(s) < 1) luaL_error(L, "%s: a semaphore of 0 permits can never start a task", fname);
  bt_gate_t *gate = bt_group_gate(G->g, s);
  if (gate == NULL) luaL_error(L, "%s: out of memory", fname);
  return gate;
}

static int lgroup_new(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  int has_opts = !lua_isnoneornil(L, 1);
  if (has_opts) {
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const known[] = {"limit", NULL};
    lbt_check_fields(L, 1, "baton.group", known);
  }
  lgroup *G = lua_newuserdatauv(L, sizeof *G, 1);
  G->limit = NULL;
  bt__group_init(&G->storage, R->rt);
  G->g = &G->storage;
  LIST_INSERT_HEAD(&R->groups, G, link);
  luaL_setmetatable(L, BT_GROUP_MT);
  if (has_opts) {
    int gi = lua_gettop(L);
    lua_getfield(L, 1, "limit");
    if (lua_isinteger(L, -1)) {  /* a number: a semaphore of the group's own */
      lua_Integer n = lua_tointeger(L, -1);
      if (n < 1) return luaL_error(L, "baton.group: limit must be >= 1 (got %I)", (LUAI_UACINT)n);
      lua_getfield(L, LUA_REGISTRYINDEX, "baton.module");
      lua_getfield(L, -1, "semaphore");
      lua_pushinteger(L, n);
      lua_call(L, 1, 1);
      lua_replace(L, -3);
      lua_pop(L, 1);
    } else if (!lbt_test_type(L, -1, LBT_SEM)) {
      return luaL_error(L, "baton.group: limit must be an integer or a semaphore (got %s)",
                        luaL_typename(L, -1));
    }
    G->limit = gate_for(L, G, lua_gettop(L), "baton.group");
    push_keep(L, gi);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "limit");
    lua_pop(L, 2);
  }
  return 1;
}

static int spawn_on(lua_State *L, lgroup *G, bt_gate_t *gate, int sem_idx, int fn_idx) {
  lbt_rt *R = lbt_R(L);
  luaL_checktype(L, fn_idx, LUA_TFUNCTION);
  lbt_task_new(L, R, fn_idx, lua_gettop(L) - fn_idx, G->g, gate, sem_idx);
  return 1;
}

static int lgroup_spawn(lua_State *L) {
  lgroup *G = check_group(L, 1);
  if (G->limit == NULL) return spawn_on(L, G, NULL, 0, 2);
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, "limit");
  lua_replace(L, -2);
  lua_insert(L, 2);  /* the semaphore goes before the function and its arguments */
  return spawn_on(L, G, G->limit, 2, 3);
}

/* group:spawn_bounded(sem, fn, ...): the task gets a coroutine only once it holds one
 * permit of sem; the permit goes back when it ends, however it ends. */
static int lgroup_spawn_bounded(lua_State *L) {
  lgroup *G = check_group(L, 1);
  bt_gate_t *gate = gate_for(L, G, 2, "group:spawn_bounded");
  push_keep(L, 1);  /* keep the semaphore alive as long as the group */
  lua_pushvalue(L, 2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return spawn_on(L, G, gate, 2, 3);
}

/* Pops the oldest finished task onto the stack; 0 if there is none. */
static int pop_one(lua_State *L, lbt_rt *R, lgroup *G) {
  lbt_task *T = (lbt_task *)bt_group_pop(G->g);
  if (T == NULL) return 0;
  T->t.flags |= BT_TASK_F_JOINED;  /* handed over: its outcome is the caller's now */
  lbt_push_task(L, R, T);
  lbt_task_release(R, T);
  return 1;
}

static int drain_into(lua_State *L, lbt_rt *R, lgroup *G, int list) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, list);
  while (pop_one(L, R, G)) lua_rawseti(L, list, ++n);
  return (int)n;
}

static lbt_task *self_task(lbt_rt *R) { return (lbt_task *)bt_rt_current(R->rt); }

/* The common continuation head: raise on cancellation, report a timeout. */
static int woke_cancelled(lbt_task *T) {
  return lbt_fib(T)->status == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL);
}

static int join_next_k(lua_State *L, int st, lua_KContext due) {
  (void)st;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = self_task(R);
  if (woke_cancelled(T)) return lbt_raise_cancelled(L);
  lgroup *G = check_group(L, 1);
  if (pop_one(L, R, G)) return 1;
  if (lbt_fib(T)->status == BT_ETIMEDOUT) {
    return lbt_push_timeout(L);
  }
  int rc = bt_group_wait(G->g, &T->t, &lbt_fib(T)->joiner, &lbt_fib(T)->wait, (uint64_t)due);
  if (rc < 0) return 0;
  return lbt_suspend(L, due, join_next_k);
}

static int lgroup_join_next(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = check_group(L, 1);
  uint64_t due = lbt_opt_due(L, R, 2);
  lua_settop(L, 1);
  if (pop_one(L, R, G)) return 1;
  if (bt_group_len(G->g) == 0) return 0;
  lbt_task *T = lbt_await_begin(L, R, "group:join_next");
  lbt_fib(T)->status = 0;
  int rc = bt_group_wait(G->g, &T->t, &lbt_fib(T)->joiner, &lbt_fib(T)->wait, due);
  if (rc < 0) return 0;
  return lbt_suspend(L, (lua_KContext)due, join_next_k);
}

/* Shared by wait_within (a deadline) and join_all (none): list at index 2. */
static int collect_k(lua_State *L, int st, lua_KContext due) {
  (void)st;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = self_task(R);
  if (woke_cancelled(T)) return lbt_raise_cancelled(L);
  lgroup *G = check_group(L, 1);
  drain_into(L, R, G, 2);
  if (lbt_fib(T)->status == BT_ETIMEDOUT || bt_group_live(G->g) == 0) {
    lua_settop(L, 2);
    return 1;
  }
  int rc = bt_group_wait(G->g, &T->t, &lbt_fib(T)->joiner, &lbt_fib(T)->wait, (uint64_t)due);
  if (rc != 0) {
    drain_into(L, R, G, 2);
    lua_settop(L, 2);
    return 1;
  }
  return lbt_suspend(L, due, collect_k);
}

static int collect(lua_State *L, uint64_t due, const char *fname) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = check_group(L, 1);
  lua_settop(L, 1);
  lua_createtable(L, (int)(bt_group_len(G->g) < 1u << 20 ? bt_group_len(G->g) : 1u << 20), 0);
  drain_into(L, R, G, 2);
  if (bt_group_live(G->g) == 0) return 1;
  lbt_task *T = lbt_await_begin(L, R, fname);
  lbt_fib(T)->status = 0;
  int rc = bt_group_wait(G->g, &T->t, &lbt_fib(T)->joiner, &lbt_fib(T)->wait, due);
  if (rc != 0) {
    drain_into(L, R, G, 2);
    return 1;
  }
  return lbt_suspend(L, (lua_KContext)due, collect_k);
}

static int lgroup_wait_within(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  check_group(L, 1);
  uint64_t due = bt_now(R->rt) + (uint64_t)ceil(lbt_check_ms(L, 2, NULL));
  return collect(L, due, "group:wait_within");
}

static int lgroup_join_all(lua_State *L) { return collect(L, UINT64_MAX, "group:join_all"); }

static int lgroup_drain(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = check_group(L, 1);
  lua_settop(L, 1);
  lua_newtable(L);
  drain_into(L, R, G, 2);
  return 1;
}

static int lgroup_abort_all(lua_State *L) {
  lgroup *G = check_group(L, 1);
  bt_group_abort_all(G->g);
  return 0;
}

/* Aborts the live tasks and forgets everything; reports failures nobody joined. */
static void shutdown_group(lua_State *L, lbt_rt *R, lgroup *G) {
  bt_task_t *t;
  while ((t = bt_group_pop(G->g)) != NULL) {
    lbt_task *T = (lbt_task *)t;
    if (t->state == BT_TASK_FAILED && !(t->flags & BT_TASK_F_JOINED)) {
      lbt_push_task(L, R, T);
      lua_getiuservalue(L, -1, 1);
      const char *msg = lua_tostring(L, -1);
      lbt_warn_unjoined(R, T, msg ? msg : luaL_typename(L, -1));
      lua_pop(L, 2);
      t->flags |= BT_TASK_F_JOINED;
    }
    lbt_task_release(R, T);
  }
  bt_group_detach_all(G->g);
}

static int lgroup_shutdown(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = check_group(L, 1);
  shutdown_group(L, R, G);
  return 0;
}

static int lgroup_close(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lgroup *G = lbt_check_type(L, 1, LBT_GROUP);
  if (G->g == NULL) return 0;
  if (!R->closed) shutdown_group(L, R, G);
  else bt_group_detach_all(G->g);
  bt__group_destroy(G->g);
  LIST_REMOVE(G, link);
  G->g = NULL;
  G->limit = NULL;
  return 0;
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
    {"shutdown", lgroup_shutdown}, {"live", lgroup_live}, {"close", lgroup_close},
    {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__len", lgroup_len}, {"__close", lgroup_close}, {"__gc", lgroup_close},
    {"__tostring", lgroup_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_GROUP_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"group", lgroup_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
