/*
 * lsync.c — baton.watch, baton.notify and baton.shield; the helpers the synchronisation
 * bindings share (lsync.h); and the opener of lua/baton/concurrency.lua (race, first_ok,
 * hedge, interval), which is compiled into the module.
 *
 * baton.watch(initial): the latest of a series of values, for tasks that care about the
 * newest one only (configuration, a leader's address, a health state). Every handle has
 * its own "seen" version; baton.watch returns the first, w:subscribe() makes more.
 *   w:send(v)       -> true | nil, msg, "closed"        never waits; wakes every changed()
 *   w:get()         -> value, version                    (marks nothing)
 *   w:borrow()      -> value, version, now seen by this handle
 *   w:changed([ms]) -> value, version: the first newer than this handle has seen, at once if
 *                      there is one | nil, msg, "closed" | nil, msg, "timeout", { timeout_ms }
 *   w:subscribe(), w:close() (changed() then drains the newest and reports closed), w:closed()
 * Values are never nil (a nil would read as a failure). Sends in between are coalesced:
 * changed() returns the newest value, never a backlog.
 *
 * baton.notify(): Tokio's Notify (core/notify.c).
 *   n:notified([ms]) -> true | nil, msg, "timeout", { timeout_ms }   an await
 *   n:notify_one()   -> true if a waiter was woken, false if the permit was stored
 *   n:notify_all()   -> how many waiters were woken (no permit is stored)
 * A task woken by notify_one and aborted before it ran passes the notification on.
 *
 * baton.shield(fn, ...): runs fn(...) in the calling task with aborts held back
 * (bt_task_shield): waits inside complete as if nothing happened, and a cancellation that
 * arrived before or during fn is raised when fn returns. What fn raises is re-raised.
 */
#include "lsync.h"
#include "concurrency_lua.h"  /* lbt_concurrency_lua: lua/baton/concurrency.lua */

#define FN_CHANGED "baton.watch:changed"

/* ---- shared helpers ------------------------------------------------------------------ */

void lbt_waiter_turn(bt_waiter_t *w, int status) {
  lbt_fiber *f = bt_container_of(w, lbt_fiber, waiter);
  bt_task_wake(f->wait.rt, f->wait.task, f->wait.token, status);
}

void lbt_waiter_wait_cancel(bt_wait_t *w) { bt_waiter_cancel(w->src); }

static void check_not_nil(lua_State *L, int idx, const char *fname) {
  if (lua_isnoneornil(L, idx)) lbt_argerror(L, fname, idx, "value", "a value other than nil");
}

/* ---- watch --------------------------------------------------------------------------- */

static lwatch *check_watch(lua_State *L) { return lbt_check_type(L, 1, LBT_WATCH); }

/* A new handle on the state at state_idx, which has seen the current version. */
static void push_handle(lua_State *L, int state_idx, lwatch_state *st) {
  lwatch *w = lua_newuserdatauv(L, sizeof *w, 1);
  w->st = st;
  w->seen = st->version;
  lua_pushvalue(L, state_idx);
  lua_setiuservalue(L, -2, 1);
  lbt_set_class(L, LBT_WATCH);
}

static int lwatch_new(lua_State *L) {
  check_not_nil(L, 1, "baton.watch");
  lwatch_state *st = lua_newuserdatauv(L, sizeof *st, 1);
  bt_notify_init(&st->changed);
  st->version = 0;
  st->closed = 0;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  push_handle(L, lua_gettop(L), st);
  return 1;
}

/* Pushes the current value and version of the handle at idx. */
static int push_current(lua_State *L, int idx, lwatch *w) {
  lua_getiuservalue(L, idx, 1);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  lua_pushinteger(L, (lua_Integer)w->st->version);
  return 2;
}

int lbt_watch_take(lua_State *L, int idx) {
  lwatch *w = lua_touserdata(L, idx);
  w->seen = w->st->version;
  return push_current(L, idx, w);
}

static int lwatch_send(lua_State *L) {
  lwatch *w = check_watch(L);
  check_not_nil(L, 2, "baton.watch:send");
  if (w->st->closed) return lbt_fail(L, "baton.watch:send", "the watch is closed", "closed");
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  w->st->version++;
  bt_notify_all(&w->st->changed, LBT_BROADCAST);
  lua_pushboolean(L, 1);
  return 1;
}

static int lwatch_get(lua_State *L) { return push_current(L, 1, check_watch(L)); }

static int lwatch_borrow(lua_State *L) {
  check_watch(L);
  return lbt_watch_take(L, 1);
}

static int changed_wait(lua_State *L, lbt_rt *R, lwatch *w, uint64_t due);

static int changed_k(lua_State *L, int st, lua_KContext due) {
  (void)st;
  lwatch *w = lua_touserdata(L, 1);
  int status = lbt_resumed(L, NULL, NULL, NULL);  /* waiting consumed nothing */
  if (w->st->version > w->seen) return lbt_watch_take(L, 1);
  if (w->st->closed) return lbt_fail(L, FN_CHANGED, "the watch is closed", "closed");
  if (status == BT_ETIMEDOUT) return lbt_fail_timeout(L, FN_CHANGED, lua_tonumber(L, 2));
  if (status != 0 && status != LBT_BROADCAST) return lbt_fail_status(L, FN_CHANGED, status);
  return changed_wait(L, lbt_R(L), w, (uint64_t)due);  /* woken with nothing newer: wait on */
}

static int changed_wait(lua_State *L, lbt_rt *R, lwatch *w, uint64_t due) {
  lbt_task *T = lbt_await_begin(L, R, FN_CHANGED);
  lbt_fiber *f = lbt_fib(T);
  bt_notify_wait(&w->st->changed, &f->waiter, lbt_waiter_turn);  /* never holds a permit */
  f->wait.src = &f->waiter;
  bt_task_wait(R->rt, &T->t, &f->wait, lbt_waiter_wait_cancel, due);
  return lbt_suspend(L, (lua_KContext)due, changed_k);
}

static int lwatch_changed(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lwatch *w = check_watch(L);
  uint64_t due = lbt_arg_due(L, R, FN_CHANGED, 2);
  lua_settop(L, 2);
  lbt_cancel_point(L, NULL, NULL);
  if (w->st->version > w->seen) return lbt_watch_take(L, 1);
  if (w->st->closed) return lbt_fail(L, FN_CHANGED, "the watch is closed", "closed");
  return changed_wait(L, R, w, due);
}

static int lwatch_subscribe(lua_State *L) {
  lwatch *w = check_watch(L);
  lua_getiuservalue(L, 1, 1);
  push_handle(L, lua_gettop(L), w->st);
  return 1;
}

static int lwatch_close(lua_State *L) {
  lwatch *w = check_watch(L);
  if (!w->st->closed) {
    w->st->closed = 1;
    bt_notify_all(&w->st->changed, LBT_BROADCAST);
  }
  return 0;
}

static int lwatch_closed(lua_State *L) {
  lua_pushboolean(L, check_watch(L)->st->closed);
  return 1;
}

static int lwatch_tostring(lua_State *L) {
  lwatch *w = check_watch(L);
  lua_pushfstring(L, "baton.Watch (version %I, seen %I, %I waiting%s)",
                  (LUAI_UACINT)w->st->version, (LUAI_UACINT)w->seen,
                  (LUAI_UACINT)bt_notify_waiting(&w->st->changed),
                  w->st->closed ? ", closed" : "");
  return 1;
}

/* ---- notify -------------------------------------------------------------------------- */

static lnotify *check_notify(lua_State *L) { return lbt_check_type(L, 1, LBT_NOTIFY); }

static int lnotify_new(lua_State *L) {
  lnotify *N = lua_newuserdatauv(L, sizeof *N, 0);
  bt_notify_init(&N->n);
  lbt_set_class(L, LBT_NOTIFY);
  return 1;
}

/* Undo of a notify_one that reached a task aborted before it ran: it is not lost, but
 * passed on (a broadcast, status LBT_BROADCAST, has no undo). */
static void pass_on(void *n) { bt_notify_one(n); }

static int notified_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  lnotify *N = lua_touserdata(L, 1);
  int status = lbt_resumed(L, NULL, pass_on, &N->n);
  if (status == 0 || status == LBT_BROADCAST) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (status == BT_ETIMEDOUT)
    return lbt_fail_timeout(L, "baton.notify:notified", lua_tonumber(L, 2));
  return lbt_fail_status(L, "baton.notify:notified", status);
}

static int lnotify_notified(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lnotify *N = check_notify(L);
  uint64_t due = lbt_arg_due(L, R, "baton.notify:notified", 2);
  lua_settop(L, 2);
  lbt_cancel_point(L, NULL, NULL);
  if (N->n.permit) {  /* stored by a notify_one nobody waited for */
    N->n.permit = 0;
    lua_pushboolean(L, 1);
    return 1;
  }
  lbt_task *T = lbt_await_begin(L, R, "baton.notify:notified");
  lbt_fiber *f = lbt_fib(T);
  bt_notify_wait(&N->n, &f->waiter, lbt_waiter_turn);
  f->wait.src = &f->waiter;
  bt_task_wait(R->rt, &T->t, &f->wait, lbt_waiter_wait_cancel, due);
  return lbt_suspend(L, 0, notified_k);
}

static int lnotify_one(lua_State *L) {
  lua_pushboolean(L, bt_notify_one(&check_notify(L)->n));
  return 1;
}

static int lnotify_all(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)bt_notify_all(&check_notify(L)->n, LBT_BROADCAST));
  return 1;
}

static int lnotify_waiting(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)bt_notify_waiting(&check_notify(L)->n));
  return 1;
}

static int lnotify_tostring(lua_State *L) {
  lnotify *N = check_notify(L);
  lua_pushfstring(L, "baton.Notify (%I waiting%s)", (LUAI_UACINT)bt_notify_waiting(&N->n),
                  N->n.permit ? ", a permit stored" : "");
  return 1;
}

/* ---- shield -------------------------------------------------------------------------- */

static int shield_k(lua_State *L, int status, lua_KContext was) {
  lbt_rt *R = lbt_R(L);
  int cancelled = bt_task_unshield(bt_rt_current(R->rt), (int)was);
  if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);  /* fn's error */
  if (cancelled) return lbt_raise_cancelled(L);  /* delivered now that fn has returned */
  return lua_gettop(L);
}

static int lshield(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_arg_function(L, "baton.shield", 1, "fn");
  bt_task_t *t = bt_rt_current(R->rt);
  if (t == NULL) {  /* outside any task: nothing can be aborted */
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
  }
  int was = bt_task_shield(t);
  int st = lua_pcallk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, (lua_KContext)was, shield_k);
  return shield_k(L, st, was);
}

/* ---- openers ------------------------------------------------------------------------- */

void lbt_open_sync(lua_State *L, int rt_idx) {
  static const luaL_Reg watch_methods[] = {
    {"send", lwatch_send}, {"get", lwatch_get}, {"borrow", lwatch_borrow},
    {"changed", lwatch_changed}, {"subscribe", lwatch_subscribe}, {"close", lwatch_close},
    {"closed", lwatch_closed}, {NULL, NULL}};
  static const luaL_Reg watch_meta[] = {{"__tostring", lwatch_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_WATCH_MT, watch_methods, watch_meta);
  static const luaL_Reg notify_methods[] = {
    {"notified", lnotify_notified}, {"notify_one", lnotify_one}, {"notify_all", lnotify_all},
    {"waiting", lnotify_waiting}, {NULL, NULL}};
  static const luaL_Reg notify_meta[] = {{"__tostring", lnotify_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_NOTIFY_MT, notify_methods, notify_meta);
  static const luaL_Reg funcs[] = {
    {"watch", lwatch_new}, {"notify", lnotify_new}, {"shield", lshield}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}

/* Runs lua/baton/concurrency.lua with the module table (baton.error is in it already). */
void lbt_open_concurrency(lua_State *L, int rt_idx) {
  (void)rt_idx;
  if (luaL_loadbufferx(L, lbt_concurrency_lua, sizeof lbt_concurrency_lua,
                       "@lua/baton/concurrency.lua", "t") != LUA_OK)
    lua_error(L);
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
}
