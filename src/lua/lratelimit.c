/*
 * lratelimit.c — baton.ratelimit{ rate =, per_ms =, burst =, store =, key = }: a rate
 * limit of `rate` units per `per_ms` milliseconds, `burst` of them at once, kept by the
 * GCRA of src/core/gcra.c on the monotonic clock (nanoseconds, uv_hrtime: the base of the
 * loop's millisecond clock).
 *
 *   rl:acquire(cost [, { timeout_ms = }]) -> grant (= cost)  | nil, msg, "timeout", { timeout_ms }
 *   rl:try_acquire(cost)                  -> grant            | nil, msg, "rate_limited", { retry_after_ms }
 *   rl:adjust(grant, actual)              -- charge or give back the difference
 *   rl:retry_after(cost) -> ms until a new caller's cost would fit (0: now)
 *   rl:available() -> units free now ; rl:waiting() -> callers queued
 *
 * The waiting is FIFO: a caller that finds others queued queues behind them even if its
 * cost would fit (try_acquire fails then), so a large cost is never starved by small ones.
 * Only the head of the queue is timed: one timer of the runtime is armed for the moment
 * the head's cost fits, and when it fires the head is granted, then the next, until one
 * does not fit yet. A queued cost is taken as of the moment it fitted (bt__gcra_take_since),
 * not as of the timer's late firing, so a queue keeps the rate exactly. Waiting records are small userdata on the waiting
 * call's stack (rl_node), so they live exactly as long as the call. An aborted or timed-out
 * waiter is unlinked by its wait's cancel, and if it was the head the next is scheduled: it
 * took nothing and blocks nobody. A waiter granted and aborted before it ran gives its cost
 * back (lbt_resumed's undo), so an abort never takes anything either.
 *
 * With `store =` the state lives in a store (docs/store.md) under `key`, and the limiter is
 * the Lua one of lua/baton/store.lua (store._ratelimit), built here after the options are
 * checked: its takes may await (a remote store) and use the store's clock.
 *
 * Errors (docs/errors.md). Raise: misuse (options; a cost that is not an integer >= 0 or is
 * above the burst, which could never fit; a wait outside a task). Return: acquire "timeout"
 * (and "resource" when no timer can be armed); try_acquire "rate_limited" with
 * { retry_after_ms } (milliseconds, rounded up) when the cost does not fit now or others
 * are queued.
 */
#include <math.h>
#include <string.h>

#include "gcra.h"
#include "lbaton.h"
#include "waitq.h"

#define RL_MT "baton.RateLimit"
#define ACQUIRE "baton.ratelimit:acquire"
#define NS_PER_MS 1000000.0

typedef struct lratelimit {
  bt_rt_t *rt;
  bt_gcra_t g;
  bt_waitq_t q;          /* rl_node.w, FIFO */
  double queued;         /* the sum of the queued costs */
  bt_timer_t timer;      /* armed for the head while the queue is not empty */
  double rate, per_ms, burst;
} lratelimit;

/* One waiting acquire, a userdata on its stack (index 4 of the call). */
typedef struct rl_node {
  bt_waiter_t w;         /* on rl->q while queued */
  lratelimit *rl;
  bt_wait_t *wait;       /* the task's wait record */
  double cost;
  int64_t since;         /* when it queued (ns) */
  lua_Number ms;         /* timeout_ms, for the timeout's detail */
} rl_node;

static int64_t now_ns(void) { return (int64_t)uv_hrtime(); }

static lratelimit *check_rl(lua_State *L) { return lbt_check_type(L, 1, LBT_RATELIMIT); }

/* The cost argument at idx: an integer >= 0 and at most the burst (more could never fit). */
static double check_cost(lua_State *L, lratelimit *rl, const char *fname, int idx,
                         const char *name) {
  double cost = (double)lbt_arg_count(L, fname, idx, name, 0, -1);
  if (cost > rl->burst)
    lbt_argerror(L, fname, idx, name,
                 lua_pushfstring(L, "integer <= the burst %I", (LUAI_UACINT)rl->burst));
  return cost;
}

static uint64_t ms_ceil(int64_t ns) { return (uint64_t)((ns + 999999) / 1000000); }

static void on_timer(bt_timer_t *t);

/* Grants the queue's head while its cost fits, then arms the timer for the next one (or
 * stops it when the queue is empty). Called whenever the head or the TAT may have changed.
 * A timer that cannot be armed (no memory) fails the head with BT_ENOMEM. */
static void schedule(lratelimit *rl) {
  for (;;) {
    bt_waiter_t *w = TAILQ_FIRST(&rl->q.head);
    if (w == NULL) {
      bt_timer_stop(rl->rt, &rl->timer);
      return;
    }
    rl_node *n = bt_container_of(w, rl_node, w);
    int64_t now = now_ns(), wait = bt__gcra_take_since(&rl->g, now, n->since, n->cost);
    int status = 0;
    if (wait > 0) {
      if (bt_timer_start(rl->rt, &rl->timer, ms_ceil(now + wait), on_timer) == 0) return;
      status = BT_ENOMEM;
    }
    bt__waitq_shift(&rl->q);
    rl->queued -= n->cost;
    bt_task_wake(rl->rt, n->wait->task, n->wait->token, status);
  }
}

static void on_timer(bt_timer_t *t) { schedule(bt_container_of(t, lratelimit, timer)); }

/* The cancel of a queued acquire (timeout, abort): unlinked; the next is scheduled if it
 * was the head. A no-op for a node granted already (its wake unqueued it). */
static void rl_wait_cancel(bt_wait_t *wait) {
  rl_node *n = wait->src;
  if (n->w.q == NULL) return;
  lratelimit *rl = n->rl;
  int head = TAILQ_FIRST(&rl->q.head) == &n->w;
  bt_waiter_cancel(&n->w);
  rl->queued -= n->cost;
  if (head) schedule(rl);
}

/* A grant that reached a task aborted before it ran goes back. */
typedef struct { lratelimit *rl; double cost; } giveback;
static void give_back(void *arg) {
  giveback *g = arg;
  bt__gcra_adjust(&g->rl->g, now_ns(), -g->cost);
  schedule(g->rl);
}

static int push_grant(lua_State *L, double cost) {
  lua_pushinteger(L, (lua_Integer)cost);
  return 1;
}

/* Stack: self, cost, opts, node. */
static int acquire_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  rl_node *n = lua_touserdata(L, 4);
  giveback g = {n->rl, n->cost};
  int status = lbt_resumed(L, NULL, give_back, &g);
  if (status == 0) return push_grant(L, n->cost);
  if (status == BT_ETIMEDOUT) return lbt_fail_timeout(L, ACQUIRE, n->ms);
  return lbt_fail_status(L, ACQUIRE, status);
}

static int lrl_acquire(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lratelimit *rl = check_rl(L);
  double cost = check_cost(L, rl, ACQUIRE, 2, "cost");
  lua_Number ms = -1;
  if (!lua_isnoneornil(L, 3)) {
    static const char *const known[] = {"timeout_ms", NULL};
    lbt_check_opts(L, ACQUIRE, 3, "opts", known);
    ms = lbt_opt_ms(L, ACQUIRE, 3, "timeout_ms", -1);
  }
  lua_settop(L, 3);
  if (rl->q.n == 0 && bt__gcra_take(&rl->g, now_ns(), cost) == 0) {
    giveback g = {rl, cost};
    lbt_cancel_point(L, give_back, &g);  /* no wait, but a cancellation point */
    return push_grant(L, cost);
  }
  lbt_task *T = lbt_await_begin(L, R, ACQUIRE);
  lbt_fiber *f = lbt_fib(T);
  rl_node *n = lua_newuserdatauv(L, sizeof *n, 0);
  memset(n, 0, sizeof *n);
  n->rl = rl;
  n->wait = &f->wait;
  n->cost = cost;
  n->since = now_ns();
  n->ms = ms;
  if (rl->q.n == 0) {  /* the new head did not fit just now: only the timer can grant it */
    int64_t now = now_ns(), wait = bt__gcra_wait(&rl->g, now, cost);
    if (bt_timer_start(R->rt, &rl->timer, ms_ceil(now + (wait > 0 ? wait : 0)), on_timer) != 0)
      return lbt_fail_status(L, ACQUIRE, BT_ENOMEM);
  }
  bt__waitq_push(&rl->q, &n->w, NULL);
  rl->queued += cost;
  f->wait.src = n;
  bt_task_wait(R->rt, &T->t, &f->wait, rl_wait_cancel,
               ms < 0 ? UINT64_MAX : bt_due(R->rt, (uint64_t)ceil(ms)));
  return lbt_suspend(L, 0, acquire_k);
}

/* Time until `cost` fits for a caller arriving now, behind the queued costs. */
static int64_t wait_for(lratelimit *rl, int64_t now, double cost) {
  bt_gcra_t g = rl->g;
  if (rl->queued > 0) bt__gcra_adjust(&g, now, rl->queued);
  int64_t inc = bt__gcra_cost(&g, cost), tat = g.tat > now ? g.tat : now;
  int64_t allow = tat + inc - g.tolerance;
  return allow > now ? allow - now : 0;
}

static int lrl_try_acquire(lua_State *L) {
  static const char fname[] = "baton.ratelimit:try_acquire";
  lratelimit *rl = check_rl(L);
  double cost = check_cost(L, rl, fname, 2, "cost");
  int64_t now = now_ns();
  if (rl->q.n == 0 && bt__gcra_take(&rl->g, now, cost) == 0) return push_grant(L, cost);
  int64_t wait = wait_for(rl, now, cost);
  uint64_t ms = ms_ceil(wait > 0 ? wait : 1);
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, (lua_Integer)ms);
  lua_setfield(L, -2, "retry_after_ms");
  if (rl->q.n > 0)
    return lbt_fail_detail(L, fname, "rate_limited", -1,
                           "%zu callers are queued: retry after %llu ms", rl->q.n,
                           (unsigned long long)ms);
  return lbt_fail_detail(L, fname, "rate_limited", -1, "%.15g units do not fit: retry after %llu ms",
                         cost, (unsigned long long)ms);
}

static int lrl_adjust(lua_State *L) {
  static const char fname[] = "baton.ratelimit:adjust";
  lratelimit *rl = check_rl(L);
  double grant = (double)lbt_arg_count(L, fname, 2, "grant", 0, -1);
  double actual = (double)lbt_arg_count(L, fname, 3, "actual", 0, -1);
  if (actual != grant) {
    bt__gcra_adjust(&rl->g, now_ns(), actual - grant);
    if (rl->q.n > 0) schedule(rl);
  }
  return 0;
}

static int lrl_retry_after(lua_State *L) {
  lratelimit *rl = check_rl(L);
  double cost = check_cost(L, rl, "baton.ratelimit:retry_after", 2, "cost");
  int64_t wait = wait_for(rl, now_ns(), cost);
  if (wait <= 0 && rl->q.n == 0) lua_pushinteger(L, 0);
  else lua_pushinteger(L, (lua_Integer)ms_ceil(wait > 0 ? wait : 1));
  return 1;
}

static int lrl_available(lua_State *L) {
  lratelimit *rl = check_rl(L);
  lua_pushinteger(L, (lua_Integer)bt__gcra_available(&rl->g, now_ns()));
  return 1;
}

static int lrl_waiting(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_rl(L)->q.n);
  return 1;
}

static int lrl_tostring(lua_State *L) {
  lratelimit *rl = check_rl(L);
  lua_pushfstring(L, RL_MT " (%f per %f ms, burst %I; %I available, %I waiting)",
                  (lua_Number)rl->rate, (lua_Number)rl->per_ms, (LUAI_UACINT)rl->burst,
                  (LUAI_UACINT)bt__gcra_available(&rl->g, now_ns()), (LUAI_UACINT)rl->q.n);
  return 1;
}

/* A limiter is reachable from every call waiting on it (their stacks hold it), so it is
 * collected with waiters only when the state closes: they are unqueued, nothing woken. */
static int lrl_gc(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lratelimit *rl = check_rl(L);
  while (!TAILQ_EMPTY(&rl->q.head)) bt_waiter_cancel(TAILQ_FIRST(&rl->q.head));
  if (!R->closed) bt_timer_stop(rl->rt, &rl->timer);
  return 0;
}

static int lrl_new(lua_State *L) {
  static const char F[] = "baton.ratelimit";
  static const char *const known[] = {"rate", "per_ms", "burst", "store", "key", NULL};
  lbt_rt *R = lbt_R(L);
  lbt_check_opts(L, F, 1, "opts", known);
  lua_settop(L, 1);
  lua_getfield(L, 1, "rate");
  lua_Number rate = lua_tonumber(L, -1);
  if (lua_type(L, -1) != LUA_TNUMBER || !(rate > 0 && rate < 1e15))
    lbt_field_error(L, F, 1, "rate", "a number > 0");
  lua_pop(L, 1);
  lua_Number per_ms = lbt_opt_ms(L, F, 1, "per_ms", 1000);
  if (per_ms <= 0) lbt_field_error(L, F, 1, "per_ms", "milliseconds > 0");
  lua_Number def_burst = floor(rate) < 1 ? 1 : floor(rate);
  lua_Integer burst = lbt_opt_count(L, F, 1, "burst", 1, (lua_Integer)def_burst);
  int has_store = lua_getfield(L, 1, "store") != LUA_TNIL;
  lua_pop(L, 1);
  if (has_store) {  /* the store's limiter (lua/baton/store.lua), on checked options */
    lbt_opt_string(L, F, 1, "key", NULL, NULL);
    lua_getfield(L, LUA_REGISTRYINDEX, "baton.module");
    lua_getfield(L, -1, "store");
    lua_getfield(L, -1, "_ratelimit");
    lua_getfield(L, 1, "store");
    lua_getfield(L, 1, "key");
    lua_pushnumber(L, rate);
    lua_pushnumber(L, per_ms);
    lua_pushinteger(L, burst);
    lua_call(L, 5, 1);
    return 1;
  }
  if (lua_getfield(L, 1, "key") != LUA_TNIL)
    lbt_field_error(L, F, 1, "key", "nil without a store");
  lua_pop(L, 1);
  lratelimit *rl = lua_newuserdatauv(L, sizeof *rl, 0);
  memset(rl, 0, sizeof *rl);
  if (bt__gcra_init(&rl->g, rate, per_ms * NS_PER_MS, (double)burst) != 0)
    return lbt_field_error(L, F, 1, "rate", "a rate whose interval fits (per_ms / rate < 2^62 ns)");
  rl->rt = R->rt;
  rl->rate = rate;
  rl->per_ms = per_ms;
  rl->burst = (double)burst;
  bt__waitq_init(&rl->q);
  luaL_setmetatable(L, RL_MT);
  return 1;
}

void lbt_open_ratelimit(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"acquire", lrl_acquire}, {"try_acquire", lrl_try_acquire}, {"adjust", lrl_adjust},
    {"retry_after", lrl_retry_after}, {"available", lrl_available},
    {"waiting", lrl_waiting}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", lrl_gc}, {"__tostring", lrl_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, RL_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"ratelimit", lrl_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
