/*
 * lcli.c — the bindings' side of the `baton` executable (export/baton_cli.h): the one place
 * where the executable's needs meet the bindings' runtime (lbt_rt), so that src/cli needs
 * neither lbaton.h nor the core's internals.
 *
 * The lbt_cli is a userdata in the registry (CLI_KEY), made by lbt_cli_open and living as
 * long as the state. It points at the runtime and holds what the executable waits on: at
 * most one task in lbt_cli_await (`waiter`, with the token of its wait) and at most one
 * foreground task (`fg`, awaited by `fg_waiter`, the main task). Both awaits follow the
 * bindings' protocol (lbaton.h): lbt_await_begin, one wait on the fiber's record, a yield
 * whose continuation checks for cancellation first. The callers' C functions are the
 * executable's and have no runtime upvalue, so this file yields itself (suspend) rather
 * than through lbt_suspend.
 *
 * Invariants: `waiter` is set iff a task waits in lbt_cli_await (wait_cancel clears it, and
 * runs the caller's on_end, whatever ends the wait); `fg` and `fg_waiter` are set iff the
 * main task waits in lbt_cli_foreground; `fg_aborted` says an interrupt aborted `fg`.
 */
#include <string.h>

#include "export/baton_cli.h"
#include "lbaton.h"

#define CLI_KEY "baton.cli"          /* registry: the lbt_cli userdata */
#define RT_KEY "baton.runtime"       /* registry: the runtime userdata (lbaton.c) */
#define WARN_KEY "baton.on_warning"  /* registry: baton.on_warning's handler (lbaton.c) */
#define FG_DETACHED 1                /* wake status: the foreground is no longer waited for */

struct lbt_cli {
  lbt_rt *R;
  /* lbt_cli_await */
  lbt_task *waiter;
  uint32_t token;
  void (*on_end)(void *ud);
  void *ud;
  /* the foreground task */
  lbt_task *fg;
  lbt_task *fg_waiter;
  int fg_aborted;
};

/* The handle a signal handler hooked a coroutine for (one executable per process). */
static lbt_cli *volatile hooked;

lbt_cli *lbt_cli_open(lua_State *L, size_t *unjoined) {
  luaL_requiref(L, "baton", lbt_open, 1);  /* package.loaded.baton, global baton */
  if (lua_getfield(L, LUA_REGISTRYINDEX, CLI_KEY) == LUA_TUSERDATA) {
    lbt_cli *c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return c;
  }
  lua_pop(L, 1);
  lbt_cli *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  lua_setfield(L, LUA_REGISTRYINDEX, CLI_KEY);
  lua_getfield(L, LUA_REGISTRYINDEX, RT_KEY);
  c->R = lua_touserdata(L, -1);
  lua_pop(L, 1);
  c->R->cli = 1;
  c->R->unjoined = unjoined;
  return c;
}

int (*lbt_console_shown)(void);
void (*lbt_console_clear)(void);

void lbt_cli_set_console(int (*shown)(void), void (*clear)(void)) {
  lbt_console_shown = shown;
  lbt_console_clear = clear;
}

uv_loop_t *lbt_cli_loop(lbt_cli *c) { return bt_rt_loop(c->R->rt); }

int lbt_cli_exit_status(const lbt_cli *c, int *signum) {
  if (signum != NULL) *signum = c->R->exit_status >= 0 ? c->R->exit_signal : 0;
  return c->R->exit_status;
}

void lbt_cli_take_sigint(lbt_cli *c, int (*take)(void)) { c->R->take_sigint = take; }

void lbt_cli_default_warning(lua_State *L, lua_CFunction fn) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, WARN_KEY) == LUA_TNIL) {
    lua_pushcfunction(L, fn);
    lua_setfield(L, LUA_REGISTRYINDEX, WARN_KEY);
  }
  lua_pop(L, 1);
}

/* ---- awaits ------------------------------------------------------------------------------ */

/* lbt_suspend without the runtime upvalue: through baton.coroutine.wrap's marker when the
 * task waits from a wrapped coroutine. */
static int suspend(lua_State *L, lbt_cli *c, lua_KContext ctx, lua_KFunction k) {
  lbt_task *T = (lbt_task *)bt_rt_current(c->R->rt);
  if (lbt_fib(T)->co == L) return lua_yieldk(L, 0, ctx, k);
  lbt_push_wrap_marker(L);
  return lua_yieldk(L, 1, ctx, k);
}

int lbt_cli_resumed(lua_State *L, lbt_cli *c) {
  lbt_task *T = (lbt_task *)bt_rt_current(c->R->rt);
  int status = lbt_fib(T)->status;
  if (status == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL)) lbt_raise_cancelled(L);
  return status;
}

static void wait_cancel(bt_wait_t *w) {
  lbt_cli *c = w->src;
  c->waiter = NULL;
  if (c->on_end != NULL) c->on_end(c->ud);
}

int lbt_cli_await(lua_State *L, lbt_cli *c, const char *fname, void (*on_end)(void *ud),
                  void *ud, lua_KFunction k) {
  lbt_task *T = lbt_await_begin(L, c->R, fname);
  if (c->waiter != NULL) return luaL_error(L, "%s: another task is already waiting", fname);
  lbt_fiber *f = lbt_fib(T);
  c->waiter = T;
  c->on_end = on_end;
  c->ud = ud;
  f->wait.src = c;
  c->token = bt_task_wait(c->R->rt, &T->t, &f->wait, wait_cancel, UINT64_MAX);
  return suspend(L, c, 0, k);
}

int lbt_cli_wake(lbt_cli *c, int status) {
  if (c->waiter == NULL) return 0;
  return bt_task_wake(c->R->rt, &c->waiter->t, c->token, status);  /* runs wait_cancel */
}

/* ---- the foreground task ------------------------------------------------------------------ */

/* Stack: 1 = the function, 2 = the foreground task. */
static int foreground_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  lbt_cli *c = (lbt_cli *)ctx;
  int aborted = c->fg_aborted;
  c->fg = c->fg_waiter = NULL;
  c->fg_aborted = 0;
  if (lbt_cli_resumed(L, c) == FG_DETACHED) {
    lua_pushnil(L);
    lua_pushvalue(L, 2);
    return 2;
  }
  lbt_task *T = lua_touserdata(L, 2);
  int n = lbt_push_outcome(L, 2);
  if (aborted && T->t.state == BT_TASK_CANCELLED && !lua_toboolean(L, -n)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "interrupted");
  }
  return n;
}

int lbt_cli_foreground(lua_State *L, lbt_cli *c, const char *fname) {
  lbt_rt *R = c->R;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lbt_task *self = lbt_await_begin(L, R, fname);
  lbt_task *T = lbt_task_new(L, R, 1, 0, R->root, NULL, 0);  /* at index 2 */
  c->fg = T;
  c->fg_waiter = self;
  c->fg_aborted = 0;
  lbt_fiber *f = lbt_fib(self);
  lua_KContext ctx = (lua_KContext)c;
  if (bt_task_join(R->rt, &self->t, &T->t, &f->joiner, &f->wait, UINT64_MAX))
    return foreground_k(L, LUA_OK, ctx);
  return suspend(L, c, ctx, foreground_k);
}

int lbt_cli_interrupt(lbt_cli *c, int detach) {
  if (c->fg == NULL || bt_task_finished(&c->fg->t)) return LBT_CLI_NO_TASK;
  if (!c->fg_aborted) {
    c->fg_aborted = 1;
    bt_task_abort(c->R->rt, &c->fg->t);
    return LBT_CLI_ABORTED;
  }
  if (!detach) return LBT_CLI_WAS_ABORTED;
  lbt_task *W = c->fg_waiter;
  bt_task_wake(c->R->rt, &W->t, W->t.token, FG_DETACHED);
  return LBT_CLI_DETACHED;
}

/* Runs in the coroutine the signal handler hooked, as the task that held the loop: aborts
 * it, as Ctrl-C would have had the loop been free to notice. */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  lbt_cli *c = hooked;
  bt_task_t *t = c != NULL ? bt_rt_current(c->R->rt) : NULL;
  if (t == NULL) return;
  if (c->fg != NULL && t == &c->fg->t) c->fg_aborted = 1;
  bt_task_abort(c->R->rt, t);
  lbt_raise_cancelled(L);
}

int lbt_cli_interrupt_running(lbt_cli *c) {
  bt_task_t *t = bt_rt_current(c->R->rt);
  lbt_fiber *f = t != NULL ? lbt_fib((lbt_task *)t) : NULL;
  if (f == NULL) return 0;
  hooked = c;
  lua_sethook(f->co, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  return 1;
}
