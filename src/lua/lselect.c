/*
 * lselect.c — baton.select { src1, src2, ..., timeout_ms = } waits for the first of several
 * sources and returns its index and what waiting on it alone would have returned:
 *
 *   channel  i, v  (recv)                     | i, nil, msg, "closed" (closed and drained)
 *   watch    i, value, version (changed)       | i, nil, msg, "closed"
 *   notify   i, true (notified)
 *   future   i, its values                     | i, nil, msg, "closed" (finalized)
 *   task     i, true, results... | i, false, err   (join)
 *   none within timeout_ms: nil, "baton.select: timed out after N ms", "timeout", { timeout_ms }
 *
 * Sources already ready are taken in the order listed (the first wins: biased, like
 * `tokio::select! { biased; ... }`); select is a cancellation point even then. Otherwise the
 * task registers one node per source, all under its ONE wait record: the nodes live in a
 * userdata on the task's stack, and the wait's cancel unlinks every node still registered.
 * Whichever source fires first wakes the task through the wait's token, so a second source
 * firing meanwhile is a stale wake, and the wake's cancel unlinks the others. Losing sources
 * never gave anything: a channel reserves a value for the winning node only (taken when the
 * task runs, or given back if it was aborted first), a notify_one that reached a task aborted
 * before it ran is passed on, and watches, futures and tasks are not consumed by waiting.
 *
 * Misuse raises: a source of another type, an unknown option, no source and no timeout, a
 * task selecting itself.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lsync.h"

#define FN "baton.select"

enum { SRC_CHAN, SRC_WATCH, SRC_NOTIFY, SRC_FUTURE, SRC_TASK };

typedef struct sel_node {
  union {
    bt_waiter_t w;          /* channel, watch, notify */
    bt_joiner_t j;          /* future, task */
  };
  struct lselect *sel;
  void *src;                /* the bt_chan_t or bt_notify_t of a waiter node */
  int kind;
  int idx;                  /* the source's index in the table */
} sel_node;

typedef struct lselect {
  bt_wait_t *wait;          /* the task's (its fiber's) one wait record */
  int n;
  int fired;                /* index of the source that woke the task, 0 while none */
  lua_Number ms;            /* timeout_ms, or -1 */
  sel_node nodes[];
} lselect;


/* The kind of the value at idx, or -1. */
static int source_kind(lua_State *L, int idx) {
  if (lbt_test_type(L, idx, LBT_CHAN)) return SRC_CHAN;
  if (lbt_test_type(L, idx, LBT_WATCH)) return SRC_WATCH;
  if (lbt_test_type(L, idx, LBT_NOTIFY)) return SRC_NOTIFY;
  if (lbt_test_type(L, idx, LBT_FUTURE)) return SRC_FUTURE;
  if (lbt_test_type(L, idx, LBT_TASK) || lbt_test_type(L, idx, LBT_TASK_GC)) return SRC_TASK;
  return -1;
}

/* A future userdata opens with its handle (LBT_HANDLE_FIRST): the event, NULL once
 * finalized. Its values are user value 1, a table packed with their count (lfuture.c). */
static bt_event_t *future_event(lua_State *L, int idx) {
  return *(bt_event_t **)lua_touserdata(L, idx);
}

static int push_future_values(lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 1);
  int t = lua_gettop(L);
  lua_getfield(L, t, "n");
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, FN ": too many values");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, t, i);
  lua_remove(L, t);
  return n;
}

static int closed_result(lua_State *L, int i, const char *what) {
  lua_pushinteger(L, i);
  lua_pushnil(L);
  lua_pushfstring(L, FN ": source #%d (a %s) is closed", i, what);
  lua_pushliteral(L, "closed");
  return 4;
}

/* Is the source at stack index si (kind k) ready? Consumes nothing. */
static int ready(lua_State *L, int si, int k) {
  switch (k) {
  case SRC_CHAN: return bt_chan_can_recv(((lchan *)lua_touserdata(L, si))->c) != BT_EBUSY;
  case SRC_WATCH: {
    lwatch *w = lua_touserdata(L, si);
    return w->st->version > w->seen || w->st->closed;
  }
  case SRC_NOTIFY: return ((lnotify *)lua_touserdata(L, si))->n.permit;
  case SRC_FUTURE: return future_event(L, si)->set;
  default: return bt_task_finished(&((lbt_task *)lua_touserdata(L, si))->t);
  }
}

/* Completes source i (at stack index si, kind k), ready or fired with `status`: pushes
 * i and its results. `reserved`: a channel value was reserved for this select. */
static int complete(lua_State *L, int i, int si, int k, int status, int reserved) {
  switch (k) {
  case SRC_CHAN: {
    lchan *C = lua_touserdata(L, si);
    if (status == 0 && reserved) {
      lua_pushinteger(L, i);
      lbt_chan_take(L, C, si, 1);
      return 2;
    }
    if (bt_chan_can_recv(&C->storage) != 0) return closed_result(L, i, "channel");
    lua_pushinteger(L, i);
    lbt_chan_take(L, C, si, 0);
    return 2;
  }
  case SRC_WATCH: {
    lwatch *w = lua_touserdata(L, si);
    if (w->st->version <= w->seen && w->st->closed) return closed_result(L, i, "watch");
    lua_pushinteger(L, i);
    return 1 + lbt_watch_take(L, si);
  }
  case SRC_NOTIFY:
    if (status == 0 && !reserved) ((lnotify *)lua_touserdata(L, si))->n.permit = 0;
    lua_pushinteger(L, i);
    lua_pushboolean(L, 1);
    return 2;
  case SRC_FUTURE:
    if (status == BT_ECLOSED || future_event(L, si) == NULL) return closed_result(L, i, "future");
    lua_pushinteger(L, i);
    return 1 + push_future_values(L, si);
  default:
    lua_pushinteger(L, i);
    return 1 + lbt_push_outcome(L, si);
  }
}

/* ---- waiting ------------------------------------------------------------------------- */

/* A channel, watch or notify node's turn: record it, wake the task. The wake runs the
 * wait's cancel, which unlinks the other nodes, so no second node can fire. */
static void node_fired(bt_waiter_t *w, int status) {
  sel_node *nd = bt_container_of(w, sel_node, w);
  lselect *sel = nd->sel;
  if (sel->fired == 0) sel->fired = nd->idx;
  bt_task_wake(sel->wait->rt, sel->wait->task, sel->wait->token, status);
}

/* Unlinks every node still registered. A future's or task's node has no callback: the
 * event or the finishing task unlinks it (wait NULL) before waking, so a joiner node found
 * unlinked here is the one that fired. */
static void select_cancel(bt_wait_t *w) {
  lselect *sel = w->src;
  for (int i = 0; i < sel->n; i++) {
    sel_node *nd = &sel->nodes[i];
    if (nd->kind <= SRC_NOTIFY) {
      bt_waiter_cancel(&nd->w);
    } else if (nd->j.wait != NULL) {
      LIST_REMOVE(&nd->j, link);
      nd->j.wait = NULL;
    } else if (sel->fired == 0) {
      sel->fired = nd->idx;
    }
  }
}

/* Undo of a source that fired (status 0) for a task aborted before it ran: a channel's
 * reserved value is given back, a notify_one passed on; the others consumed nothing. */
static void give_back(void *arg) {
  lselect *sel = arg;
  if (sel->fired == 0) return;
  sel_node *nd = &sel->nodes[sel->fired - 1];
  if (nd->kind == SRC_CHAN) bt_chan_unreserve_item(nd->src);
  else if (nd->kind == SRC_NOTIFY) bt_notify_one(nd->src);
}

static int select_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  lselect *sel = lua_touserdata(L, 2);
  int status = lbt_resumed(L, NULL, give_back, sel);
  int i = sel->fired;
  if (i == 0) {
    if (status == BT_ETIMEDOUT) return lbt_fail_timeout(L, FN, sel->ms);
    return lbt_fail_status(L, FN, status);  /* no memory for the deadline */
  }
  lua_getiuservalue(L, 2, 1);  /* the sources as registered, not the caller's table now */
  lua_rawgeti(L, -1, i);
  return complete(L, i, lua_gettop(L), sel->nodes[i - 1].kind, status, 1);
}

/* The kind of sources[i] (pushed at the top), or a raise naming it. */
static int check_source(lua_State *L, int i, bt_task_t *self) {
  int k = source_kind(L, -1);
  if (k < 0) {
    char name[32];
    snprintf(name, sizeof name, "sources[%d]", i);
    return lbt_argerror_got(L, FN, 1, name, "a channel, watch, notify, future or task",
                            lbt_push_got(L, -1));
  }
  if (k == SRC_CHAN && ((lchan *)lua_touserdata(L, -1))->c == NULL) lbt_closed_error(L, LBT_CHAN);
  if (k == SRC_FUTURE && future_event(L, -1) == NULL) lbt_closed_error(L, LBT_FUTURE);
  if (k == SRC_TASK && &((lbt_task *)lua_touserdata(L, -1))->t == self)
    luaL_error(L, FN ": sources[%d] is the calling task, which cannot wait for itself", i);
  return k;
}

static int lselect_fn(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  if (!lua_istable(L, 1)) return lbt_argerror(L, FN, 1, "sources", "table");
  lua_settop(L, 1);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  lua_Number ms = -1;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      if (strcmp(lua_tostring(L, -2), "timeout_ms") != 0)
        return luaL_error(L, FN ": bad argument #1 '%s' (unknown option)", lua_tostring(L, -2));
      ms = lbt_opt_ms(L, FN, 1, "timeout_ms", -1);
    } else if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1 || lua_tointeger(L, -2) > n) {
      return luaL_error(L, FN ": bad argument #1 'sources' (expected a list of sources and "
                        "timeout_ms, got the key %s)", lbt_push_got(L, -2));
    }
    lua_pop(L, 1);
  }
  if (n == 0 && ms < 0)
    return luaL_error(L, FN ": bad argument #1 'sources' (expected at least one source or a "
                      "timeout_ms, got none)");
  if (n > 100000)
    return luaL_error(L, FN ": too many sources (%I, at most 100000)", (LUAI_UACINT)n);
  bt_task_t *self = bt_rt_current(R->rt);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    check_source(L, i, self);
    lua_pop(L, 1);
  }
  lbt_cancel_point(L, NULL, NULL);
  for (int i = 1; i <= n; i++) {  /* ready already: the first listed wins */
    lua_rawgeti(L, 1, i);
    int k = source_kind(L, -1);
    if (ready(L, lua_gettop(L), k)) return complete(L, i, lua_gettop(L), k, 0, 0);
    lua_pop(L, 1);
  }
  lbt_task *T = lbt_await_begin(L, R, FN);
  lbt_fiber *f = lbt_fib(T);
  lselect *sel = lua_newuserdatauv(L, sizeof *sel + (size_t)n * sizeof(sel_node), 1);
  sel->wait = &f->wait;
  sel->n = (int)n;
  sel->fired = 0;
  sel->ms = ms;
  /* A copy of the list, held by the select: the caller's table may change or let go of a
   * source while the task waits (the nodes point into the sources). */
  lua_createtable(L, (int)n, 0);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    lua_rawseti(L, -2, i);
  }
  lua_setiuservalue(L, -2, 1);
  lua_getiuservalue(L, -1, 1);
  int list = lua_gettop(L);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    void *ud = lua_touserdata(L, -1);
    sel_node *nd = &sel->nodes[i - 1];
    nd->sel = sel;
    nd->idx = i;
    nd->kind = source_kind(L, -1);
    switch (nd->kind) {
    case SRC_CHAN:
      nd->src = ((lchan *)ud)->c;
      bt_chan_wait_recv(nd->src, &nd->w, node_fired);
      break;
    case SRC_WATCH: bt_notify_wait(&((lwatch *)ud)->st->changed, &nd->w, node_fired); break;
    case SRC_NOTIFY:
      nd->src = &((lnotify *)ud)->n;
      bt_notify_wait(nd->src, &nd->w, node_fired);
      break;
    case SRC_FUTURE:
      nd->j.wait = &f->wait;
      LIST_INSERT_HEAD(&future_event(L, -1)->waiters, &nd->j, link);
      break;
    default:
      nd->j.wait = &f->wait;
      LIST_INSERT_HEAD(&((lbt_task *)ud)->t.joiners, &nd->j, link);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);  /* the list */
  f->wait.src = sel;
  uint64_t due = ms >= 0 ? bt_due(R->rt, (uint64_t)ceil(ms)) : UINT64_MAX;
  bt_task_wait(R->rt, &T->t, &f->wait, select_cancel, due);
  return lbt_suspend(L, 0, select_k);
}

void lbt_open_select(lua_State *L, int rt_idx) {
  static const luaL_Reg funcs[] = {{"select", lselect_fn}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
