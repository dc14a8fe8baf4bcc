/*
 * lsem.c — baton.semaphore, baton.budget and their permits.
 *
 * A permit is a closable userdata: release() (idempotent), <close>, or — as a last
 * resort, with a warning — the garbage collector gives it back. It is small (24 bytes, no
 * user value: a million tasks each taking a permit make a million of them, garbage once
 * released): what keeps the semaphore or budget userdata alive, and with it the core
 * semaphore or budget that live inside it (lbaton.h), is an anchor slot the semaphore or
 * budget holds while any permit of it is held (lsem.permits > 0). A semaphore or budget
 * finalized by hand is closed, not freed, so a permit released after that gives back to a
 * closed semaphore, or to a key that only it still holds; when the state closes, the
 * permits' finalizers run before anything is freed. Methods of a finalized
 * semaphore or budget raise "used after it was closed". Permit release is plain C and
 * never waits, so it is safe from __close handlers and from a task being unwound by
 * cancellation. A permit carries one of two metatables, like a task: the one with __gc
 * while held, and once released by release() or <close> the same without __gc, so that the
 * collector frees it without calling a finalizer that has nothing left to do.
 *
 * acquire() is an await: it queues the task's fiber record on the semaphore (FIFO, direct
 * hand-off, head-of-line for weighted requests: sem.c) with an optional deadline; a task aborted while queued is unlinked and the grant
 * loop re-runs, so the next waiter gets the permit. A permit granted to a task that was
 * cancelled before it resumed goes straight back.
 *
 * add_permits(n) and forget(n) change the capacity (sem.c: forget takes only available
 * permits and says how many).
 *
 * Errors (docs/errors.md). Raise: misuse (bad arguments, more permits than the capacity,
 * a semaphore closed (s:close()) or finalized before the call; add_permits and forget on
 * a closed semaphore). Return `nil, msg, kind,
 * detail`: try_acquire when nothing is free ("busy", { available =, capacity = }: still
 * falsy), acquire (timeout; closed when the semaphore is closed while it waits; resource),
 * budget:try_acquire ("busy" at the key's cap; resource).
 */
#include <string.h>

#include "lbaton.h"

/* `owner` is the lsem or lbudget userdata, anchored while the permit is held, NULL once
 * released (held = owner != NULL). */
typedef struct lpermit {
  void *owner;
  bt_budget_key_t *key;     /* budget permit: the key; semaphore permit: NULL */
  size_t k;                 /* permits held (a semaphore's; a budget permit holds 1) */
} lpermit;

/* A new held permit of the semaphore or budget at owner_idx, whose held-permit count is
 * *permits and anchor slot *ref: pushed. */
static lpermit *new_permit(lua_State *L, int owner_idx, void *owner, size_t *permits, int *ref) {
  lpermit *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->owner = owner;
  p->key = NULL;
  p->k = 1;
  lbt_set_class(L, LBT_PERMIT);
  if ((*permits)++ == 0) {
    lua_pushvalue(L, owner_idx);
    *ref = lbt_anchor(L, lbt_R(L));
  }
  return p;
}

LBT_HANDLE_FIRST(lsem, s);
LBT_HANDLE_FIRST(lbudget, b);

static bt_sem_t *check_sem(lua_State *L, int idx) {
  return ((lsem *)lbt_check_handle(L, idx, LBT_SEM))->s;
}

/* The permit count argument at idx: 1 by default, at most the capacity. */
static size_t opt_k(lua_State *L, int idx, bt_sem_t *s, const char *fname) {
  lua_Integer k = lbt_arg_count(L, fname, idx, "permits", 1, 1);
  if ((size_t)k > bt_sem_capacity(s)) {  /* (k may be the default: the argument is absent) */
    const char *want = lua_pushfstring(L, "permits <= %I (the capacity)",
                                       (LUAI_UACINT)bt_sem_capacity(s));
    lbt_argerror_got(L, fname, lbt_argn(fname, idx), "permits", want,
                     lua_pushfstring(L, "%I", (LUAI_UACINT)k));
  }
  return (size_t)k;
}

/* Pushes a permit for k permits of the semaphore at sem_idx, already taken (k is at most
 * the capacity: opt_k). */
static void push_sem_permit(lua_State *L, int sem_idx, bt_sem_t *s, size_t k) {
  lsem *S = bt_container_of(s, lsem, storage);
  new_permit(L, sem_idx, S, &S->permits, &S->ref)->k = k;
}

/* baton.semaphore(n[, { name = }]): the name shows in baton.tasks() and the trace. */
static int lsem_new(lua_State *L) {
  static const char fname[] = "baton.semaphore";
  lua_Integer n = lbt_arg_count(L, fname, 1, "permits", 0, -1);
  const char *name = NULL;
  if (!lua_isnoneornil(L, 2)) {
    static const char *const known[] = {"name", NULL};
    lbt_check_opts(L, fname, 2, "opts", known);
    name = lbt_opt_string(L, fname, 2, "name", "", NULL);
    if (*name == '\0') name = NULL;
  }
  lsem *S = lua_newuserdatauv(L, sizeof *S, name != NULL);
  bt__sem_init(&S->storage, (size_t)n);
  S->s = &S->storage;
  S->permits = 0;
  S->ref = LUA_NOREF;
  S->name = NULL;
  if (name != NULL) {
    lua_pushstring(L, name);
    S->name = lua_tostring(L, -1);  /* the user value keeps the string */
    lua_setiuservalue(L, -2, 1);
  }
  lbt_set_class(L, LBT_SEM);
  return 1;
}

/* Nothing free: nil, msg, "busy", { available =, capacity = }. */
static int fail_busy(lua_State *L, const char *fname, size_t available, size_t capacity,
                     const char *what) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)available);
  lua_setfield(L, -2, "available");
  lua_pushinteger(L, (lua_Integer)capacity);
  lua_setfield(L, -2, "capacity");
  return lbt_fail_detail(L, fname, "busy", -1, "no permit free%s", what);
}

static int lsem_try_acquire(lua_State *L) {
  static const char fname[] = "baton.semaphore:try_acquire";
  bt_sem_t *s = check_sem(L, 1);
  size_t k = opt_k(L, 2, s, fname);
  int rc = bt_sem_try_acquire(s, k);
  if (rc == BT_ECLOSED) return luaL_error(L, "%s: the semaphore is closed", fname);
  if (rc != 0) return fail_busy(L, fname, bt_sem_available(s), bt_sem_capacity(s), "");
  push_sem_permit(L, 1, s, k);
  return 1;
}

static void on_sem_granted(bt_sem_waiter_t *w, int status) {
  lbt_fiber *f = bt_container_of(w, lbt_fiber, semw);
  bt_task_wake(f->wait.rt, f->wait.task, f->wait.token, status);
}

static void sem_wait_cancel(bt_wait_t *w) { bt_sem_cancel(w->src); }

static const char ACQUIRE[] = "baton.semaphore:acquire";

/* Permits granted to a task cancelled before it could use them go back. */
typedef struct { bt_sem_t *s; size_t k; } grant;
static void give_back(void *arg) { bt_sem_release(((grant *)arg)->s, ((grant *)arg)->k); }

/* Stack: semaphore, permits, timeout. */
static int acquire_k(lua_State *L, int st, lua_KContext k) {
  (void)st;
  grant g = {&((lsem *)lua_touserdata(L, 1))->storage, (size_t)k};  /* finalized: closed */
  int status = lbt_resumed(L, NULL, give_back, &g);
  switch (status) {
  case 0:
    push_sem_permit(L, 1, g.s, g.k);
    return 1;
  case BT_ETIMEDOUT:
    return lbt_fail_timeout(L, ACQUIRE, lua_tonumber(L, 3));
  case BT_ECLOSED:
    return lbt_fail(L, ACQUIRE, "the semaphore was closed while waiting", "closed");
  default:
    return lbt_fail_status(L, ACQUIRE, status);
  }
}

static int lsem_acquire(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  bt_sem_t *s = check_sem(L, 1);
  size_t k = opt_k(L, 2, s, ACQUIRE);
  uint64_t due = lbt_arg_due(L, R, ACQUIRE, 3);
  lua_settop(L, 3);
  int rc = bt_sem_try_acquire(s, k);
  if (rc == BT_ECLOSED) return luaL_error(L, "%s: the semaphore is closed", ACQUIRE);
  if (rc == 0) {
    grant g = {s, k};
    lbt_cancel_point(L, give_back, &g);  /* uncontended: no wait, but a cancellation point */
    push_sem_permit(L, 1, s, k);
    return 1;
  }
  lbt_task *T = lbt_await_begin(L, R, ACQUIRE);
  lbt_fiber *f = lbt_fib(T);
  bt_sem_acquire(s, &f->semw, k, on_sem_granted);
  f->wait.src = &f->semw;
  bt_task_wait(R->rt, &T->t, &f->wait, sem_wait_cancel, due);
  return lbt_suspend_task(L, T, (lua_KContext)k, acquire_k);
}

/* Misuse on a closed semaphore, as try_acquire: nothing to grow or shrink any more. */
static bt_sem_t *check_open_sem(lua_State *L, const char *fname) {
  bt_sem_t *s = check_sem(L, 1);
  if (bt_sem_closed(s)) luaL_error(L, "%s: the semaphore is closed", fname);
  return s;
}

/* Grows capacity and availability by n; waiters are granted in FIFO order at once (their
 * tasks are woken: they run at the next turn). */
static int lsem_add_permits(lua_State *L) {
  static const char fname[] = "baton.semaphore:add_permits";
  bt_sem_t *s = check_open_sem(L, fname);
  lua_Integer n = lbt_arg_count(L, fname, 2, "n", 0, -1);
  lua_Integer room = ((lua_Integer)1 << 53) - (lua_Integer)bt_sem_capacity(s);
  if (n > room)  /* counts stay exact as Lua numbers: the capacity at most 2^53 */
    lbt_argerror_got(L, fname, 1, "n", lua_pushfstring(L, "integer <= %I (2^53 - the capacity)",
                                                       (LUAI_UACINT)room),
                     lua_pushfstring(L, "%I", (LUAI_UACINT)n));
  bt_sem_add_permits(s, (size_t)n);
  return 0;
}

/* Shrinks capacity by up to n available permits; returns how many it removed. */
static int lsem_forget(lua_State *L) {
  static const char fname[] = "baton.semaphore:forget";
  bt_sem_t *s = check_open_sem(L, fname);
  lua_Integer n = lbt_arg_count(L, fname, 2, "n", 0, -1);
  lua_pushinteger(L, (lua_Integer)bt_sem_forget(s, (size_t)n));
  return 1;
}

static int lsem_available(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)bt_sem_available(check_sem(L, 1)));
  return 1;
}
static int lsem_capacity(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)bt_sem_capacity(check_sem(L, 1)));
  return 1;
}
static int lsem_waiting(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)bt_sem_waiting(check_sem(L, 1)));
  return 1;
}
/* close() and closed() also work on a finalized semaphore: it is closed. */
static int lsem_close(lua_State *L) {
  bt_sem_close(&((lsem *)lbt_check_type(L, 1, LBT_SEM))->storage);
  return 0;
}
static int lsem_closed(lua_State *L) {
  lua_pushboolean(L, bt_sem_closed(&((lsem *)lbt_check_type(L, 1, LBT_SEM))->storage));
  return 1;
}

/* Fails the waiters; the memory stays with the userdata for the permits that point at it. */
static int lsem_gc(lua_State *L) {
  lsem *S = lbt_check_type(L, 1, LBT_SEM);
  bt_sem_close(&S->storage);
  lbt_handle_clear(L, S, LBT_SEM);
  return 0;
}

static int lsem_tostring(lua_State *L) {
  lsem *S = lbt_check_type(L, 1, LBT_SEM);
  bt_sem_t *s = &S->storage;
  if (S->s == NULL) lua_pushliteral(L, "baton.Semaphore (finalized)");
  else lua_pushfstring(L, "baton.Semaphore (%I/%I available, %I waiting%s)",
                       (LUAI_UACINT)bt_sem_available(s), (LUAI_UACINT)bt_sem_capacity(s),
                       (LUAI_UACINT)bt_sem_waiting(s), bt_sem_closed(s) ? ", closed" : "");
  return 1;
}

/* ---- permits ------------------------------------------------------------------------ */

/* Gives back what p holds; the last held permit of its owner drops the owner's anchor
 * (not when the state is closing: the anchors go with it). */
static void permit_release(lbt_rt *R, lpermit *p) {
  if (p->owner == NULL) return;
  size_t *permits;
  int *ref;
  if (p->key == NULL) {
    lsem *S = p->owner;
    bt_sem_release(&S->storage, p->k);
    permits = &S->permits, ref = &S->ref;
  } else {
    lbudget *B = p->owner;
    bt_budget_release(&B->storage, p->key);
    permits = &B->permits, ref = &B->ref;
  }
  p->owner = NULL;
  if (--*permits == 0 && *ref != LUA_NOREF) {
    if (!R->closed) lbt_unanchor(R, *ref);
    *ref = LUA_NOREF;
  }
}

static lpermit *check_permit(lua_State *L, int idx) {
  lpermit *p = lbt_test_type(L, idx, LBT_PERMIT);
  return p != NULL ? p : lbt_check_type(L, idx, LBT_PERMIT_FREE);
}

/* release() and __close: released, the permit needs no finalizer any more. */
static int lpermit_release(lua_State *L) {
  lpermit *p = check_permit(L, 1);
  if (p->owner == NULL) return 0;
  lbt_rt *R = lbt_R(L);
  permit_release(R, p);
  lua_rawgeti(L, LUA_REGISTRYINDEX, R->class_refs[LBT_PERMIT_FREE]);
  lua_setmetatable(L, 1);
  return 0;
}

static int lpermit_gc(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lpermit *p = check_permit(L, 1);
  if (p->owner != NULL && !R->closed)
    lbt_warn(R, "a permit was collected while still held; release it, or hold it in a "
                "<close> variable (released now)");
  permit_release(R, p);
  return 0;
}

static int lpermit_held(lua_State *L) {
  lpermit *p = check_permit(L, 1);
  lua_pushboolean(L, p->owner != NULL);
  return 1;
}

static int lpermit_tostring(lua_State *L) {
  lpermit *p = check_permit(L, 1);
  if (p->key != NULL && p->owner != NULL)
    lua_pushfstring(L, "baton.Permit (budget key '%s', held)", bt__budget_key_name(p->key));
  else if (p->key != NULL) lua_pushliteral(L, "baton.Permit (budget, released)");
  else lua_pushfstring(L, "baton.Permit (%I, %s)", (LUAI_UACINT)p->k,
                       p->owner != NULL ? "held" : "released");
  return 1;
}

/* ---- budgets ------------------------------------------------------------------------ */

static lbudget *check_budget(lua_State *L, int idx) {
  return lbt_check_handle(L, idx, LBT_BUDGET);
}

static int lbudget_new(lua_State *L) {
  static const char fname[] = "baton.budget";
  lua_Integer cap = 4;
  if (!lua_isnoneornil(L, 1)) {
    static const char *const known[] = {"cap", NULL};
    lbt_check_opts(L, fname, 1, "opts", known);
    cap = lbt_opt_count(L, fname, 1, "cap", 0, 4);
  }
  lbudget *B = lua_newuserdatauv(L, sizeof *B, 0);
  bt__budget_init(&B->storage, (size_t)cap);
  B->b = &B->storage;
  B->permits = 0;
  B->ref = LUA_NOREF;
  lbt_set_class(L, LBT_BUDGET);
  return 1;
}

static int lbudget_try_acquire(lua_State *L) {
  static const char fname[] = "baton.budget:try_acquire";
  lbudget *B = check_budget(L, 1);
  size_t len;
  const char *key = lbt_arg_string(L, fname, 2, "key", &len);
  lua_Integer cap = lbt_arg_count(L, fname, 3, "cap", 0,
                                  (lua_Integer)bt_budget_default_cap(B->b));
  int err = 0;
  bt_budget_key_t *k = bt_budget_try_acquire(B->b, key, len, (size_t)cap, &err);
  if (k == NULL) {
    if (err == BT_ENOMEM) return lbt_fail_status(L, fname, err);
    size_t n = bt_budget_count(B->b, key, len);
    lua_pushfstring(L, " for key '%s'", key);
    return fail_busy(L, fname, n < (size_t)cap ? (size_t)cap - n : 0, (size_t)cap,
                     lua_tostring(L, -1));
  }
  new_permit(L, 1, B, &B->permits, &B->ref)->key = k;
  return 1;
}

static void snap_one(void *ud, const char *key, size_t len, size_t n) {
  lua_State *L = ud;
  lua_pushlstring(L, key, len);
  lua_pushinteger(L, (lua_Integer)n);
  lua_rawset(L, -3);
}

static int lbudget_snapshot(lua_State *L) {
  lbudget *B = check_budget(L, 1);
  lua_newtable(L);
  bt_budget_foreach(B->b, snap_one, L);
  return 1;
}

static int lbudget_count(lua_State *L) {
  lbudget *B = check_budget(L, 1);
  size_t len;
  const char *key = lbt_arg_string(L, "baton.budget:count", 2, "key", &len);
  lua_pushinteger(L, (lua_Integer)bt_budget_count(B->b, key, len));
  return 1;
}

/* Keys still held are freed by their holders' releases (permits, engines), which keep the
 * userdata and so the budget's memory. */
static int lbudget_gc(lua_State *L) {
  lbudget *B = lbt_check_type(L, 1, LBT_BUDGET);
  B->b = NULL;
  return 0;
}

void lbt_open_sem(lua_State *L, int rt_idx) {
  static const luaL_Reg sem_methods[] = {
    {"try_acquire", lsem_try_acquire}, {"acquire", lsem_acquire},
    {"available", lsem_available}, {"capacity", lsem_capacity}, {"waiting", lsem_waiting},
    {"close", lsem_close}, {"closed", lsem_closed}, {"add_permits", lsem_add_permits},
    {"forget", lsem_forget}, {NULL, NULL}};
  static const luaL_Reg sem_meta[] = {
    {"__gc", lsem_gc}, {"__tostring", lsem_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_SEM_MT, sem_methods, sem_meta);
  static const luaL_Reg permit_methods[] = {
    {"release", lpermit_release}, {"held", lpermit_held}, {NULL, NULL}};
  static const luaL_Reg permit_meta[] = {
    {"__gc", lpermit_gc},  /* first: permit_meta + 1 is the released class's */
    {"__close", lpermit_release}, {"__tostring", lpermit_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_PERMIT_MT, permit_methods, permit_meta);
  lbt_new_class(L, rt_idx, BT_PERMIT_FREE_MT, permit_methods, permit_meta + 1);
  luaL_getmetatable(L, BT_PERMIT_FREE_MT);
  lua_pushliteral(L, BT_PERMIT_MT);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  static const luaL_Reg budget_methods[] = {
    {"try_acquire", lbudget_try_acquire}, {"snapshot", lbudget_snapshot},
    {"count", lbudget_count}, {NULL, NULL}};
  static const luaL_Reg budget_meta[] = {{"__gc", lbudget_gc}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_BUDGET_MT, budget_methods, budget_meta);
  static const luaL_Reg funcs[] = {
    {"semaphore", lsem_new}, {"budget", lbudget_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
