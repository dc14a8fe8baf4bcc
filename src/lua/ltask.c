/*
 * ltask.c — tasks as Lua userdata: lazy coroutines, resume, results, errors, join, abort.
 *
 * A task userdata embeds a core bt_task_t. Until it first runs it holds only its function
 * and arguments (user values 1..nargs+1); when the ready queue reaches it, it borrows a
 * fiber (a coroutine plus wait storage) from the runtime's pool, and gives it back when it
 * ends, so a million spawned tasks cost a million small userdata, not a million coroutines.
 * When it ends, user value 1 holds its outcome: the results table ({n=, ...}, or nil for no
 * results) or the error value (a string error carries its traceback).
 *
 * Anchoring: a task is held in an anchor slot (below) while it is unfinished
 * or sits in a group's finished list; after that only Lua references keep it alive, so
 * results outlive the coroutine and nothing is pinned forever.
 *
 * Errors inside a task never unwind through libuv: lua_resume() returns them. A cancelled
 * task is resumed with BT_ECANCELED and its await raises the cancellation error; a task's
 * status is "cancelled" whenever it was aborted, even if it caught that error with pcall.
 *
 * Errors (docs/errors.md). Raise: misuse (a bad argument, a task joining itself, results of
 * an unfinished task). Return `nil, msg, kind, detail`: join (timeout, with { task =,
 * timeout_ms = }; resource). A task's own failure is not join's: join returns false and
 * the error value, which is a baton.Error { kind =, message = } for a task cancelled or
 * never started, whatever the task raised otherwise (a table keeps its identity and gains
 * a traceback; a string gains the traceback).
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbaton.h"

#define FIBER_POOL_MAX 64

static void task_resume(bt_rt_t *rt, bt_task_t *bt, int status);
static void task_finished(bt_rt_t *rt, bt_task_t *bt);
static const bt_task_vt task_vt = {task_resume, task_finished};

/* ---- anchors ------------------------------------------------------------------------ */

/* What C holds and Lua must not collect (an unfinished task, a task in a group's finished
 * list, a fiber's coroutine) sits in an anchor slot: a value on the stack of an anchor
 * thread, a thread that never runs, kept by the runtime (the table R->anchors in the
 * registry holds them). Slot s is index (s % ASTACK_SLOTS) + 2 of anchor stack
 * s / ASTACK_SLOTS; index 1 holds the nil copied over a slot to clear it. A slot is then one
 * API call away (lua_pushvalue, lua_getiuservalue, lua_copy on the anchor thread) and
 * lua_xmove carries a value to or from the thread that needs it: a table's slot needed the
 * table fetched from the registry first, and taken off the stack again. Only calls that
 * cannot raise are made on an anchor thread (moves, copies, user values, and pushes within
 * the room lua_checkstack gave): an error there would reset its stack and lose every
 * anchor. Slots are handed out in order and freed ones reused LIFO from a C stack; a Lua
 * stack holds at most LUAI_MAXSTACK values, hence several anchor stacks. */
#define ASTACK_SLOTS 32768
#define ASTACK_ROOM 8  /* free values kept above an anchor stack's top, for moves */

struct lbt_astack {
  lua_State *th;
  int room;  /* the highest index lua_checkstack has made usable */
};

static inline lua_State *astack(lbt_rt *R, int slot, int *idx) {
  *idx = (int)((unsigned)slot % ASTACK_SLOTS) + 2;
  return R->astacks[(unsigned)slot / ASTACK_SLOTS].th;
}

/* A new anchor stack, at the end of R->astacks. Raises on L when memory runs out. */
static void astack_new(lua_State *L, lbt_rt *R) {
  int n = R->nastacks;
  struct lbt_astack *a = realloc(R->astacks, (size_t)(n + 1) * sizeof *a);
  if (a == NULL) luaL_error(L, "baton: out of memory");
  R->astacks = a;
  lua_rawgeti(L, LUA_REGISTRYINDEX, R->anchors);
  lua_State *th = lua_newthread(L);
  lua_rawseti(L, -2, n + 1);
  lua_pop(L, 1);
  if (!lua_checkstack(th, 64)) luaL_error(L, "baton: out of memory");
  lua_pushnil(th);
  a[n].th = th;
  a[n].room = 64;
  R->nastacks = n + 1;
}

/* The value on top of L goes into a free slot, which is returned; it is popped from L, or
 * left there with `keep`. */
static int anchor(lua_State *L, lbt_rt *R, int keep) {
  int slot, idx;
  if (R->nfree > 0) {
    slot = R->free_slots[R->nfree - 1];
    lua_State *A = astack(R, slot, &idx);
    R->nfree--;
    lua_xmove(L, A, 1);
    lua_copy(A, -1, idx);
    if (keep) lua_xmove(A, L, 1);
    else lua_settop(A, -2);
    return slot;
  }
  if (keep) lua_pushvalue(L, -1);
  slot = R->top_slot;
  idx = slot % ASTACK_SLOTS + 2;  /* the anchor stack's top + 1 */
  if (idx == 2 && slot / ASTACK_SLOTS == R->nastacks) astack_new(L, R);
  struct lbt_astack *a = &R->astacks[slot / ASTACK_SLOTS];
  if (idx + ASTACK_ROOM > a->room) {
    /* 64 values, then 1,024, then all: each step more than doubles the stack, so Lua
     * allocates exactly what is asked (it doubles a stack asked for less). */
    int want = a->room < 1024 ? 1024 : ASTACK_SLOTS + 2 + ASTACK_ROOM;
    if (!lua_checkstack(a->th, want - (idx - 1))) luaL_error(L, "baton: out of memory");
    a->room = want;
  }
  lua_xmove(L, a->th, 1);
  R->top_slot = slot + 1;
  return slot;
}

static void unanchor(lbt_rt *R, int slot) {
  int idx;
  lua_State *A = astack(R, slot, &idx);
  lua_copy(A, 1, idx);
  if (R->nfree == R->cap_free) {
    int cap = R->cap_free ? R->cap_free * 2 : 256;
    int *fs = realloc(R->free_slots, (size_t)cap * sizeof *fs);
    if (fs == NULL) return;  /* the slot is simply not reused */
    R->free_slots = fs;
    R->cap_free = cap;
  }
  R->free_slots[R->nfree++] = slot;
}

int lbt_anchor(lua_State *L, lbt_rt *R) { return anchor(L, R, 0); }
void lbt_unanchor(lbt_rt *R, int slot) { unanchor(R, slot); }

void lbt_push_task(lua_State *L, lbt_rt *R, lbt_task *T) {
  int idx;
  lua_State *A = astack(R, T->ref, &idx);
  lua_pushvalue(A, idx);
  lua_xmove(A, L, 1);
}

void lbt_task_take(lua_State *L, lbt_rt *R, lbt_task *T) {
  int idx;
  lua_State *A = astack(R, T->ref, &idx);
  lua_pushvalue(A, idx);
  lua_xmove(A, L, 1);
  unanchor(R, T->ref);
  T->ref = LUA_NOREF;
}

void lbt_task_release(lbt_rt *R, lbt_task *T) {
  if (T->ref == LUA_NOREF || T->t.state < BT_TASK_DONE || T->t.group != NULL) return;
  unanchor(R, T->ref);
  T->ref = LUA_NOREF;
}

/* ---- fibers ------------------------------------------------------------------------- */

void lbt_fiber_free(lbt_rt *R, lbt_fiber *f) {
  void *ud;
  lua_Alloc alloc = lua_getallocf(R->L, &ud);
  alloc(ud, f, sizeof *f, 0);
}

static lbt_fiber *fiber_get(lbt_rt *R) {
  lbt_fiber *f = R->pool;
  if (f != NULL) {
    R->pool = f->next_free;
    R->npool--;
    return f;
  }
  /* From the state's allocator: the executable's arena serves it without a malloc header. */
  void *ud;
  lua_Alloc alloc = lua_getallocf(R->L, &ud);
  f = alloc(ud, NULL, 0, sizeof *f);
  if (f == NULL) return NULL;
  memset(f, 0, sizeof *f);
  LIST_INSERT_HEAD(&R->fibers, f, all);
  f->co = lua_newthread(R->L);
  f->co_ref = anchor(R->L, R, 0);
  return f;
}

/* The coroutine's stack is empty: its results were moved out (task_returned), or
 * lua_resetthread emptied it (task_failed), or nothing was pushed (task_never_ran). */
static void fiber_put(lbt_rt *R, lbt_fiber *f) {
  assert(lua_gettop(f->co) == 0);
  f->task = NULL;
  /* a debug hook the task set stays with its coroutine, not with the next task to use it */
  if (lua_gethook(f->co) != NULL) lua_sethook(f->co, NULL, 0, 0);
  if (R->npool < FIBER_POOL_MAX) {
    f->next_free = R->pool;
    R->pool = f;
    R->npool++;
    return;
  }
  unanchor(R, f->co_ref);
  LIST_REMOVE(f, all);
  lbt_fiber_free(R, f);
}

/* ---- errors ------------------------------------------------------------------------- */

void lbt_push_error(lua_State *L, const char *kind, const char *msg) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, BT_ERROR_MT);
}

/* The old timeout shape (nil, "timeout", "timeout"), kept for the policy bindings until
 * they move to lbt_fail_timeout. */
int lbt_push_timeout(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "timeout");
  lua_pushliteral(L, "timeout");
  return 3;
}

int lbt_raise_cancelled(lua_State *L) {
  lbt_push_error(L, "cancelled", "task cancelled");
  return lua_error(L);
}

int lbt_is_cancel_error(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, BT_ERROR_MT);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (!same) return 0;
  lua_getfield(L, idx, "kind");
  const char *k = lua_tostring(L, -1);
  int is = k != NULL && strcmp(k, "cancelled") == 0;
  lua_pop(L, 1);
  return is;
}

void lbt_warn(lbt_rt *R, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  lbt_warn_on(R->L, buf);
}

void lbt_warn_on(lua_State *L, const char *buf) {
  lua_getfield(L, LUA_REGISTRYINDEX, "baton.on_warning");
  if (lua_isfunction(L, -1)) {
    lua_pushstring(L, buf);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {  /* the warning is not lost with it */
      fprintf(stderr, "baton: warning handler failed: %s\nbaton: warning: %s\n",
              lbt_push_tostring(L, -1), buf);
      lua_pop(L, 2);
    }
    return;
  }
  lua_pop(L, 1);
  fprintf(stderr, "baton: warning: %s\n", buf);
}

/* The executable's --strict counts these: such a run exits 1. */
void lbt_warn_unjoined(lbt_rt *R, lbt_task *T, const char *msg) {
  if (R->unjoined != NULL) (*R->unjoined)++;
  lbt_warn(R, "task %u failed and nobody joined it: %s", (unsigned)T->t.id, msg);
}

/* ---- creating and running ----------------------------------------------------------- */

_Noreturn void lbt_closed_runtime(lua_State *L) {
  luaL_error(L, "baton: the runtime is closed (the Lua state is closing)");
  abort();  /* not reached */
}

lbt_task *lbt_task_new(lua_State *L, lbt_rt *R, int fn_idx, int nargs, bt_group_t *g,
                       bt_gate_t *gate, int sem_idx) {
  lbt_check_open(L, R);
  if (nargs > 250) luaL_error(L, "%s: too many arguments (%d, at most 250)", lbt_fname(L), nargs);
  lbt_task *T = lua_newuserdatauv(L, sizeof *T, 1 + nargs + (gate != NULL));
  T->t.wait = NULL;
  T->ref = LUA_NOREF;
  T->nargs = (uint16_t)nargs;
  T->gated = gate != NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, R->class_refs[LBT_TASK]);
  lua_setmetatable(L, -2);
  for (int i = 0; i <= nargs; i++) {
    lua_pushvalue(L, fn_idx + i);
    lua_setiuservalue(L, -2, 1 + i);
  }
  if (gate != NULL) {
    lua_pushvalue(L, sem_idx);
    lua_setiuservalue(L, -2, 2 + nargs);
  }
  T->ref = anchor(L, R, 1);
  R->live++;
  if (gate != NULL) bt_gate_spawn(R->rt, gate, &T->t, &task_vt);
  else bt_task_spawn(R->rt, &T->t, &task_vt, g);
  return T;
}

static void finish(lbt_rt *R, lbt_task *T, bt_task_state_t state) {
  if (lbt_fib(T) != NULL) {
    fiber_put(R, lbt_fib(T));
    T->t.wait = NULL;
  }
  if (T->t.flags & BT_TASK_F_CANCEL) state = BT_TASK_CANCELLED;
  bt_task_finish(R->rt, &T->t, state);
}

/* Stores the value on top of L as the task's outcome (user value 1) and pops it. The task
 * is unfinished, so anchored: this is done on its anchor stack. */
static void set_outcome(lua_State *L, lbt_rt *R, lbt_task *T) {
  int idx;
  lua_State *A = astack(R, T->ref, &idx);
  lua_xmove(L, A, 1);
  lua_setiuservalue(A, idx, 1);
  for (int i = 0; i < T->nargs; i++) {  /* drop the arguments: they may be large */
    lua_pushnil(A);
    lua_setiuservalue(A, idx, 2 + i);
  }
}

static void task_returned(lbt_rt *R, lbt_task *T, int nres) {
  lua_State *co = lbt_fib(T)->co, *L = R->L;
  if (T->t.flags & BT_TASK_F_CANCEL) {
    /* aborted, and it caught the cancellation and returned: it ends cancelled (finish), so
     * its outcome is the cancellation, not its results (join gave those as the "error") */
    lua_pop(co, nres);
    lbt_push_error(L, "cancelled", "task cancelled");
    set_outcome(L, R, T);
    finish(R, T, BT_TASK_CANCELLED);
    return;
  }
  if (nres > 0 || T->nargs > 0) {
    if (nres > 0) {
      lua_createtable(L, nres, 1);
      lua_xmove(co, L, nres);
      for (int i = nres; i >= 1; i--) lua_rawseti(L, -1 - i, i);
      lua_pushinteger(L, nres);
      lua_setfield(L, -2, "n");
    } else {
      lua_pushnil(L);
    }
    set_outcome(L, R, T);
  }
  finish(R, T, BT_TASK_DONE);
}

static void watch_unjoined(lua_State *L, lbt_rt *R, lbt_task *T);

static void task_failed(lbt_rt *R, lbt_task *T) {
  lua_State *co = lbt_fib(T)->co, *L = R->L;
  int cancelled = lbt_is_cancel_error(co, -1);
  lua_pushvalue(co, -1);  /* the error stays on co too: __close handlers receive it */
  lua_xmove(co, L, 1);
  lua_pushvalue(L, -1);   /* L: original, outcome */
  if (!cancelled) {
    int t = lua_type(L, -1);
    const char *msg = (t == LUA_TSTRING || t == LUA_TNUMBER) ? lua_tostring(L, -1) : NULL;
    luaL_traceback(L, co, msg, 0);
    if (msg != NULL) lua_remove(L, -2);  /* a string error becomes message + traceback */
    else if (t == LUA_TTABLE) {  /* raw: a user __newindex must not run (or fail) here */
      lua_pushliteral(L, "traceback");
      lua_insert(L, -2);
      lua_rawset(L, -3);
    }
    else lua_pop(L, 1);
  }
  /* Close the coroutine's pending to-be-closed variables (permits go back) and make it
   * reusable. lua_resetthread returns the coroutine's error status; a __close handler that
   * raised leaves its own error in place of the original: report it, do not lose it. */
  if (lua_resetthread(co) != LUA_OK) {
    lua_xmove(co, L, 1);
    if (!lua_rawequal(L, -1, -3)) {
      lbt_warn(R, "task %u: a __close handler failed: %s", (unsigned)T->t.id,
               lbt_push_failure_text(L, -1));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_remove(L, -2);
  set_outcome(L, R, T);
  if (!cancelled) watch_unjoined(L, R, T);
  finish(R, T, cancelled ? BT_TASK_CANCELLED : BT_TASK_FAILED);
}

/* A failed task is reported when it is collected unjoined. Not by a __gc on the task
 * itself: Lua finds an object given a finalizer late by walking the list of every object
 * made since (luaC_checkfinalizer), so 100,000 failing tasks took O(n^2), 8 s for 32,000.
 * A new sentinel (first in that list) with the finalizer instead, kept by an ephemeron
 * table for as long as the task lives; it holds the task, to read its state then. */
#define UNJOINED_KEY "baton.task.unjoined"   /* registry: task -> sentinel, weak keys */
#define SENTINEL_MT "baton.task.sentinel"

static void watch_unjoined(lua_State *L, lbt_rt *R, lbt_task *T) {
  lua_getfield(L, LUA_REGISTRYINDEX, UNJOINED_KEY);
  lbt_push_task(L, R, T);
  lua_newuserdatauv(L, 0, 1);
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, SENTINEL_MT);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int sentinel_gc(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  if (lua_getiuservalue(L, 1, 1) != LUA_TUSERDATA) return 0;
  lbt_task *T = lua_touserdata(L, -1);
  if (T->t.state == BT_TASK_FAILED && !(T->t.flags & BT_TASK_F_JOINED)) {
    T->t.flags |= BT_TASK_F_JOINED;  /* reported once */
    lua_getiuservalue(L, -1, 1);
    lbt_warn_unjoined(R, T, lbt_push_failure_text(L, -1));
  }
  return 0;
}

/* A task that ends before it ever ran: aborted while pending, its gate's semaphore was
 * closed, or no memory for its coroutine. */
static void task_never_ran(lbt_rt *R, lbt_task *T, int status) {
  lua_State *L = R->L;
  if (status == BT_ECANCELED) {
    lbt_push_error(L, "cancelled", "task cancelled");
  } else {
    lua_pushfstring(L, "task %I never ran: %s", (LUAI_UACINT)T->t.id,
                    status == BT_ECLOSED ? "the semaphore gating it was closed"
                                         : bt_strerror(status));
    lbt_push_error(L, lbt_kind_of(status), lua_tostring(L, -1));
    lua_remove(L, -2);
  }
  set_outcome(L, R, T);
  finish(R, T, status == BT_ECANCELED ? BT_TASK_CANCELLED : BT_TASK_FAILED);
}

static void task_resume(bt_rt_t *rt, bt_task_t *bt, int status) {
  lbt_task *T = (lbt_task *)bt;
  lbt_rt *R = rt->data;
  lbt_fiber *f = lbt_fib(T);
  int nargs = 0;
  if (f == NULL) {
    if (status == 0 && (bt->flags & BT_TASK_F_CANCEL)) status = BT_ECANCELED;
    if (status != 0 || (f = fiber_get(R)) == NULL) {
      task_never_ran(R, T, status ? status : BT_ENOMEM);
      return;
    }
    T->t.wait = &f->wait;  /* the fiber rides on the wait pointer (lbt_fib) */
    f->task = T;
    f->started = uv_now(rt->loop);
    nargs = T->nargs;
    int idx;
    lua_State *A = astack(R, T->ref, &idx);  /* unfinished, so anchored */
    /* An empty coroutine has LUA_MINSTACK values of room, an anchor stack ASTACK_ROOM */
    if ((nargs + 2 > LUA_MINSTACK && !lua_checkstack(f->co, nargs + 2)) ||
        (nargs >= ASTACK_ROOM && !lua_checkstack(A, nargs + 1))) {
      task_never_ran(R, T, BT_ENOMEM);
      return;
    }
    for (int i = 0; i <= nargs; i++) lua_getiuservalue(A, idx, 1 + i);
    lua_xmove(A, f->co, nargs + 1);
  }
  f->status = status;
  if (LBT_TRACING(R)) lbt_trace_resume(R, T, f);  /* tracing: ltrace.c */
  int nres = 0;
  int rc = lua_resume(f->co, R->from ? R->from : R->L, nargs, &nres);
  if (LBT_TRACING(R)) lbt_trace_suspend(R, T, f, rc);
  if (rc == LUA_YIELD) {
    if (nres > 0) lua_pop(f->co, nres);  /* a resume must not find yielded values there */
    /* A plain coroutine.yield() inside a task: treat it as baton.yield(). */
    if (bt->state == BT_TASK_RUNNING) bt_task_yield(rt, bt);
  } else if (rc == LUA_OK) {
    task_returned(R, T, nres);
  } else {
    task_failed(R, T);
  }
}

static void task_finished(bt_rt_t *rt, bt_task_t *bt) {
  lbt_task *T = (lbt_task *)bt;
  lbt_rt *R = rt->data;
  R->live--;
  if (bt->group == R->root) bt_group_remove(bt);
  lbt_task_release(R, T);
}

/* ---- awaiting ----------------------------------------------------------------------- */

lbt_task *lbt_await_begin_slow(lua_State *L, lbt_rt *R, const char *fname) {
  bt_task_t *cur = bt_rt_current(R->rt);
  if (cur == NULL)
    luaL_error(L, "%s: not inside a baton task; run the code with baton.run(function() ... end) "
               "(the baton executable does this for a script's main chunk)", fname);
  lbt_task *T = (lbt_task *)cur;
  if (lbt_fib(T)->co != L && !lbt_is_wrapped(L))
    luaL_error(L, "%s: cannot wait inside a coroutine that baton does not run "
               "(coroutine.create/wrap inside a task); use baton.coroutine.wrap, which "
               "passes baton's waits through, or baton.spawn", fname);
  if (!lua_isyieldable(L))
    luaL_error(L, "%s: cannot wait here: a C call that cannot yield is in the way "
               "(require, a metamethod such as __tostring/__gc/__close, a table.sort "
               "comparator, a string.gsub callback, ...)", fname);
  if (cur->flags & BT_TASK_F_CANCEL) lbt_raise_cancelled(L);
  lbt_fib(T)->what = fname;
  return T;
}

/* The marker a wait yields from inside a baton.coroutine.wrap coroutine: the wrapper
 * passes it outward until the task's own coroutine yields to the scheduler. */
static char wrap_marker;

int lbt_is_wrapped(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "baton.wrapped");
  lua_pushthread(L);
  int wrapped = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return wrapped;
}

int lbt_suspend_wrapped(lua_State *L, lua_KContext ctx, lua_KFunction k) {
  lua_pushlightuserdata(L, &wrap_marker);
  return lua_yieldk(L, 1, ctx, k);
}

void lbt_push_wrap_marker(lua_State *L) { lua_pushlightuserdata(L, &wrap_marker); }

/* ---- task methods ------------------------------------------------------------------- */

/* Tasks carry one of two metatables: the plain one, without __gc, so the collector frees
 * a finished task at no finalizer cost; and the same with __gc for a task that failed,
 * which reports the failure if nobody ever looked at it. */
lbt_task *lbt_check_task(lua_State *L, int idx) {
  lbt_task *T = lbt_test_type(L, idx, LBT_TASK);
  return T != NULL ? T : lbt_check_type(L, idx, LBT_TASK_GC);
}

static const char *status_name(const bt_task_t *t) {
  switch (t->state) {
  case BT_TASK_PENDING: return "pending";
  case BT_TASK_READY:
  case BT_TASK_RUNNING: return "running";
  case BT_TASK_WAITING: return "waiting";
  case BT_TASK_FINISHING: return "finishing";
  case BT_TASK_DONE: return "done";
  case BT_TASK_FAILED: return "failed";
  default: return "cancelled";
  }
}

int lbt_push_outcome(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lbt_task *T = lua_touserdata(L, idx);
  T->t.flags |= BT_TASK_F_JOINED;
  lua_getiuservalue(L, idx, 1);
  int ri = lua_gettop(L);
  if (T->t.state != BT_TASK_DONE) {
    lua_pushboolean(L, 0);
    lua_insert(L, ri);
    return 2;
  }
  lua_pushboolean(L, 1);
  if (!lua_istable(L, ri)) {  /* no results: nil, or the function itself (never a table) */
    lua_remove(L, ri);
    return 1;
  }
  lua_getfield(L, ri, "n");
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, ri, i);
  lua_remove(L, ri);
  return 1 + n;
}

static const char JOIN[] = "baton.task:join";

/* Stack: task, timeout. */
static int join_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  int s = lbt_resumed(L, NULL, NULL, NULL);
  if (s == BT_ETIMEDOUT) {
    lbt_task *T = lua_touserdata(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)T->t.id);
    lua_setfield(L, -2, "task");
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "timeout_ms");
    return lbt_fail_detail(L, JOIN, "timeout", -1, "task %u still running after %.15g ms",
                           (unsigned)T->t.id, (double)lua_tonumber(L, 2));
  }
  if (s != 0) return lbt_fail_status(L, JOIN, s);
  return lbt_push_outcome(L, 1);
}

static int ltask_join(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_check_task(L, 1);
  uint64_t due = lbt_arg_due(L, R, JOIN, 2);
  lua_settop(L, 2);
  if (bt_task_finished(&T->t)) return lbt_push_outcome(L, 1);
  lbt_task *self = lbt_await_begin(L, R, JOIN);
  if (self == T) return luaL_error(L, "%s: a task cannot join itself", JOIN);
  bt_task_join(R->rt, &self->t, &T->t, &lbt_fib(self)->joiner, &lbt_fib(self)->wait, due);
  return lbt_suspend_task(L, self, 0, join_k);
}

static int ltask_abort(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_check_task(L, 1);
  bt_task_abort(R->rt, &T->t);
  return 0;
}

static int ltask_status(lua_State *L) {
  lbt_task *T = lbt_check_task(L, 1);
  lua_pushstring(L, status_name(&T->t));
  return 1;
}

/* baton.tasks(): one table per task that has started and not finished: each task with a
 * fiber (running or suspended; a task that has not started yet has none and is not listed),
 * and each task "finishing" (its body ended, the tasks it owns still unwinding: no fiber
 * any more, found as an owner of a listed task): id, name, status, age_ms (since it first
 * ran; not for a finishing task), parent (the id of the task owning it), group (its group's
 * name, if named), and for a waiting task `waits` (what it waits on, in words:
 * lintrospect.c), `call` (the await's function) and `due_ms` (the milliseconds left until
 * that wait's deadline, if any). */
static void push_name(lua_State *L, lbt_task *T, int idx);

/* The entry of T (fiber f, NULL for a finishing task) into the list at index list, as its
 * i-th. */
static void push_entry(lua_State *L, lbt_rt *R, lbt_task *T, lbt_fiber *f, uint64_t now,
                       int list, lua_Integer i) {
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, T->t.id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, status_name(&T->t));
  lua_setfield(L, -2, "status");
  if (f != NULL) {
    lua_pushinteger(L, now > f->started ? (lua_Integer)(now - f->started) : 0);
    lua_setfield(L, -2, "age_ms");
  }
  if (T->t.owner != NULL) {
    lua_pushinteger(L, T->t.owner->id);
    lua_setfield(L, -2, "parent");
  }
  struct lgroup *G;
  LIST_FOREACH(G, &R->groups, link) {
    if (G->g == T->t.group && G->g != NULL) {
      if (G->name != NULL) {
        lua_pushstring(L, G->name);
        lua_setfield(L, -2, "group");
      }
      break;
    }
  }
  if (f != NULL && T->t.state == BT_TASK_WAITING && f->what != NULL) {
    lua_pushstring(L, f->what);
    lua_setfield(L, -2, "call");
    lbt_describe_wait(L, R, f);
    lua_setfield(L, -2, "waits");
    if (f->wait.timer.slot != 0) {  /* the wait has a deadline (a sleep, a timeout) */
      uint64_t due = f->wait.timer.due;
      lua_pushinteger(L, due > now ? (lua_Integer)(due - now) : 0);
      lua_setfield(L, -2, "due_ms");
    }
  }
  if (T->ref != LUA_NOREF) {
    lbt_push_task(L, R, T);
    push_name(L, T, -1);
    lua_setfield(L, -3, "name");
    lua_setfield(L, -2, "task");
  }
  lua_rawseti(L, list, i);
}

int lbt_tasks(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_check_open(L, R);
  lua_newtable(L);
  int list = lua_gettop(L);
  lua_Integer i = 0;
  int finishing = 0;
  uint64_t now = bt_now(R->rt);
  lbt_fiber *f;
  LIST_FOREACH(f, &R->fibers, all) {
    lbt_task *T = f->task;
    if (T == NULL || bt_task_finished(&T->t)) continue;
    push_entry(L, R, T, f, now, list, ++i);
    for (bt_task_t *o = T->t.owner; o != NULL && !finishing; o = o->owner)
      finishing = o->state == BT_TASK_FINISHING;
  }
  if (!finishing) return 1;
  lua_newtable(L);  /* the finishing owners listed, by id */
  LIST_FOREACH(f, &R->fibers, all) {
    if (f->task == NULL || bt_task_finished(&f->task->t)) continue;
    for (bt_task_t *o = f->task->t.owner; o != NULL; o = o->owner) {
      if (o->state != BT_TASK_FINISHING) continue;
      if (lua_rawgeti(L, -1, (lua_Integer)o->id) == LUA_TNIL) {
        lua_pushboolean(L, 1);
        lua_rawseti(L, -3, (lua_Integer)o->id);
        lua_pop(L, 1);
        push_entry(L, R, (lbt_task *)o, NULL, now, list, ++i);
        continue;
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return 1;
}

void lbt_describe_waiting(lua_State *L, lbt_rt *R, char *buf, size_t n) {
  /* whole entries while they fit, then how many more were left out */
  size_t used = 0, room = n > 48 ? n - 48 : 0;
  unsigned more = 0;
  char entry[512];
  buf[0] = '\0';
  lbt_fiber *f;
  LIST_FOREACH(f, &R->fibers, all) {
    lbt_task *T = f->task;
    if (T == NULL || T->t.state != BT_TASK_WAITING) continue;
    if (more > 0) {
      more++;
      continue;
    }
    int top = lua_gettop(L);
    const char *name = NULL;
    if (T->ref != LUA_NOREF) {
      lbt_push_task(L, R, T);
      push_name(L, T, -1);
      name = lua_tostring(L, -1);
    }
    lbt_describe_wait(L, R, f);
    int w = snprintf(entry, sizeof entry, "%stask %u%s%s%s (%s)", used ? ", " : "",
                     (unsigned)T->t.id, T == R->main ? " [main]" : "", name ? " " : "",
                     name ? name : "", lua_tostring(L, -1));
    lua_settop(L, top);
    if (w < 0) break;
    if ((size_t)w >= sizeof entry || used + (size_t)w >= room) {
      more = 1;
      continue;
    }
    memcpy(buf + used, entry, (size_t)w + 1);
    used += (size_t)w;
  }
  if (more > 0 && n > used)
    snprintf(buf + used, n - used, "%s%u more waiting", used ? ", and " : "", more);
}

/* Names live in a registry table with weak keys (task userdata -> string), made on the first
 * task:set_name: a task that is never named costs nothing. The default name is computed only
 * when asked: "short_src:linedefined" of the task's function (pending: user value 1; started:
 * the bottom frame of its coroutine); nil for a finished task. */
static const char NAMES_KEY[] = "baton.task.names";

static void push_default_name(lua_State *L, lbt_task *T, int idx) {
  lua_Debug ar;
  if (T->t.state == BT_TASK_PENDING) {
    lua_getiuservalue(L, idx, 1);
    if (!lua_isfunction(L, -1)) {
      lua_pop(L, 1);
      lua_pushnil(L);
      return;
    }
    lua_getinfo(L, ">S", &ar);
  } else {
    lbt_fiber *f = lbt_fib(T);
    int lv = 0;
    if (f == NULL || !lua_getstack(f->co, 0, &ar)) {
      lua_pushnil(L);
      return;
    }
    while (lua_getstack(f->co, lv + 1, &ar)) lv++;
    lua_getstack(f->co, lv, &ar);
    lua_getinfo(f->co, "S", &ar);
  }
  if (ar.what[0] == 'C' && T == lbt_R(L)->main) lua_pushliteral(L, "main");  /* the CLI's */
  else lua_pushfstring(L, "%s:%d", ar.short_src, ar.linedefined);
}

/* Pushes the task's name (its set name, else the default) for the task userdata at idx. */
static void push_name(lua_State *L, lbt_task *T, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_getfield(L, LUA_REGISTRYINDEX, NAMES_KEY) == LUA_TTABLE) {
    lua_pushvalue(L, idx);
    if (lua_rawget(L, -2) == LUA_TSTRING) {
      lua_remove(L, -2);
      return;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  push_default_name(L, T, idx);
}

void lbt_push_task_name(lua_State *L, lbt_rt *R, lbt_task *T) {
  lbt_push_task(L, R, T);
  push_name(L, T, -1);
  lua_remove(L, -2);
}

void lbt_task_set_name(lua_State *L, int idx, int name_idx) {
  idx = lua_absindex(L, idx);
  name_idx = lua_absindex(L, name_idx);
  lbt_push_weak_table(L, NAMES_KEY);
  lua_pushvalue(L, idx);
  lua_pushvalue(L, name_idx);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int ltask_name(lua_State *L) {
  lbt_task *T = lbt_check_task(L, 1);
  push_name(L, T, 1);
  return 1;
}

static int ltask_set_name(lua_State *L) {
  lbt_check_task(L, 1);
  lbt_arg_string(L, "baton.task:set_name", 2, "name", NULL);
  lua_settop(L, 2);
  lbt_task_set_name(L, 1, 2);
  lua_settop(L, 1);
  return 1;
}

static int ltask_results(lua_State *L) {
  lbt_task *T = lbt_check_task(L, 1);
  lua_settop(L, 1);
  if (!bt_task_finished(&T->t))
    return luaL_error(L, "baton.task:results: task %I has not finished", (LUAI_UACINT)T->t.id);
  if (T->t.state != BT_TASK_DONE) return 0;
  int n = lbt_push_outcome(L, 1);
  return n - 1;  /* drop the leading true */
}

static int ltask_index(lua_State *L) {
  lbt_task *T = lbt_check_task(L, 1);
  if (lua_type(L, 2) != LUA_TSTRING) return 0;  /* t[1]: nil, as for any absent key */
  const char *k = lua_tostring(L, 2);
  if (strcmp(k, "ok") == 0) {
    lua_pushboolean(L, T->t.state == BT_TASK_DONE);
  } else if (strcmp(k, "error") == 0) {
    if (T->t.state == BT_TASK_FAILED || T->t.state == BT_TASK_CANCELLED) {
      T->t.flags |= BT_TASK_F_JOINED;
      lua_getiuservalue(L, 1, 1);
    } else {
      lua_pushnil(L);
    }
  } else if (strcmp(k, "id") == 0) {
    lua_pushinteger(L, T->t.id);
  } else {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__methods");
    lua_getfield(L, -1, k);
  }
  return 1;
}

static int ltask_tostring(lua_State *L) {
  lbt_task *T = lbt_check_task(L, 1);
  lua_pushfstring(L, "baton.Task#%I (%s)", (LUAI_UACINT)T->t.id, status_name(&T->t));
  return 1;
}

/* Collected: it has finished (or the state is closing). A failure nobody looked at is
 * reported rather than lost. */
static int ltask_gc(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_check_task(L, 1);
  if (T->t.state == BT_TASK_FAILED && !(T->t.flags & BT_TASK_F_JOINED)) {
    T->t.flags |= BT_TASK_F_JOINED;  /* reported once, even if __gc is called again */
    lua_getiuservalue(L, 1, 1);
    lbt_warn_unjoined(R, T, lbt_push_failure_text(L, -1));
  }
  return 0;
}

static int lerror_tostring(lua_State *L) {
  lua_getfield(L, 1, "message");
  if (lua_isnil(L, -1)) lua_pushliteral(L, "error");
  return 1;
}

void lbt_open_task(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"join", ltask_join}, {"abort", ltask_abort}, {"status", ltask_status},
    {"results", ltask_results}, {"name", ltask_name}, {"set_name", ltask_set_name},
    {"traceback", lbt_task_traceback}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__index", ltask_index}, {"__tostring", ltask_tostring}, {"__close", ltask_abort},
    {NULL, NULL}};
  static const luaL_Reg gc[] = {{"__gc", ltask_gc}, {NULL, NULL}};
  static const luaL_Reg sentinel[] = {{"__gc", sentinel_gc}, {NULL, NULL}};
  luaL_newmetatable(L, SENTINEL_MT);
  lbt_set_funcs(L, rt_idx, sentinel);
  lua_pop(L, 1);
  lua_createtable(L, 0, 0);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, UNJOINED_KEY);
  lbt_new_class(L, rt_idx, BT_TASK_MT, methods, meta);
  lbt_new_class(L, rt_idx, BT_TASK_GC_MT, methods, meta);
  luaL_getmetatable(L, BT_TASK_GC_MT);
  lbt_set_funcs(L, rt_idx, gc);
  lua_pushliteral(L, BT_TASK_MT);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  luaL_newmetatable(L, BT_ERROR_MT);
  lua_pushcfunction(L, lerror_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
