/*
 * lfuture.c — baton.future: values delivered once, by any task (or none), to any number of
 * tasks waiting for them (the core's one-shot event, event.c). A reply slot for a request
 * answered by another task (the MCP client's), a result many tasks wait on, a start signal.
 *
 *   local f = baton.future()
 *   f:set(...)     -> true | false (already set: the first values stay)   never waits
 *   f:wait([ms])   -> the values given to set | nil, msg, kind, detail     an await
 *   f:done()       -> whether it is set ; f:waiting() -> tasks waiting now
 *
 * The values live in user value 1, a table packed with their count. A waiter aborted or
 * timed out unlinks itself; a future finalized (the state closing, or __gc called by hand)
 * fails what still waits with "closed" (nil, message, "closed"), so no wait record points
 * into it, and its methods raise "used after it was closed".
 *
 * Errors (docs/errors.md). Raise: misuse (a bad timeout, a finalized future, waiting
 * outside a task). Return `nil, msg, kind, detail`: wait (timeout, with { timeout_ms = };
 * closed when the future is finalized while it waits; resource).
 */
#include <string.h>

#include "lbaton.h"

#define BT_FUTURE_MT "baton.Future"

typedef struct lfuture {
  bt_event_t *ev;           /* &storage until finalized, then NULL */
  bt_event_t storage;
} lfuture;
LBT_HANDLE_FIRST(lfuture, ev);

static bt_event_t *check_future(lua_State *L) {
  return ((lfuture *)lbt_check_handle(L, 1, LBT_FUTURE))->ev;
}

static int lfuture_new(lua_State *L) {
  lfuture *f = lua_newuserdatauv(L, sizeof *f, 1);
  bt_event_init(&f->storage);
  f->ev = &f->storage;
  lbt_set_class(L, LBT_FUTURE);
  return 1;
}

static int lfuture_set(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  bt_event_t *ev = check_future(L);
  if (ev->set) {
    lua_pushboolean(L, 0);
    return 1;
  }
  int n = lua_gettop(L) - 1;
  lua_createtable(L, n, 1);
  lua_insert(L, 2);
  for (int i = n; i >= 1; i--) lua_rawseti(L, 2, i);
  lua_pushinteger(L, n);
  lua_setfield(L, 2, "n");
  lua_setiuservalue(L, 1, 1);
  bt_event_set(R->rt, ev);
  lua_pushboolean(L, 1);
  return 1;
}

/* Pushes the values of the set future at 1. */
static int push_values(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  int t = lua_gettop(L);
  lua_getfield(L, t, "n");
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "baton.future: too many values");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, t, i);
  return n;
}

static const char WAIT[] = "baton.future:wait";

/* Stack: future, timeout. */
static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int s = lbt_resumed(L, NULL, NULL, NULL);
  if (s == BT_ETIMEDOUT) return lbt_fail_timeout(L, WAIT, lua_tonumber(L, 2));
  if (s == BT_ECLOSED) return lbt_fail(L, WAIT, "the future was finalized while waiting", "closed");
  if (s != 0) return lbt_fail_status(L, WAIT, s);
  return push_values(L);
}

static int lfuture_wait(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  bt_event_t *ev = check_future(L);
  uint64_t due = lbt_arg_due(L, R, WAIT, 2);
  lua_settop(L, 2);
  if (ev->set) {
    lbt_cancel_point(L, NULL, NULL);
    return push_values(L);
  }
  lbt_task *T = lbt_await_begin(L, R, WAIT);
  lbt_fiber *fib = lbt_fib(T);
  bt_event_wait(R->rt, ev, &T->t, &fib->joiner, &fib->wait, due);
  return lbt_suspend(L, 0, wait_k);
}

static int lfuture_done(lua_State *L) {
  lua_pushboolean(L, check_future(L)->set);
  return 1;
}

static int lfuture_waiting(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)bt_event_waiting(check_future(L)));
  return 1;
}

static int lfuture_gc(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lfuture *f = lbt_check_type(L, 1, LBT_FUTURE);
  bt_joiner_t *j;
  while ((j = LIST_FIRST(&f->storage.waiters)) != NULL) {
    bt_wait_t *w = j->wait;
    LIST_REMOVE(j, link);
    j->wait = NULL;
    if (!R->closed) bt_task_wake(R->rt, w->task, w->token, BT_ECLOSED);
  }
  f->ev = NULL;
  return 0;
}

static int lfuture_tostring(lua_State *L) {
  lfuture *f = lbt_check_type(L, 1, LBT_FUTURE);
  if (f->ev == NULL) lua_pushliteral(L, "baton.Future (finalized)");
  else if (f->ev->set) lua_pushliteral(L, "baton.Future (set)");
  else lua_pushfstring(L, "baton.Future (pending, %I waiting)",
                       (LUAI_UACINT)bt_event_waiting(f->ev));
  return 1;
}

void lbt_open_future(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {{"set", lfuture_set}, {"wait", lfuture_wait},
                                     {"done", lfuture_done}, {"waiting", lfuture_waiting},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", lfuture_gc}, {"__tostring", lfuture_tostring},
                                  {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_FUTURE_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"future", lfuture_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
