/*
 * lsignal.c — signals and the ways out of baton.run: the default action of SIGINT, SIGTERM
 * and SIGHUP, baton.on_signal handlers, and baton.exit.
 *
 * Signals are watched only while baton.run runs (in the executable and from a stock lua5.4
 * alike): outside it no task can run a <close> handler, so the process keeps whatever
 * dispositions it had (lua.c's own SIGINT handler, a host's handlers, nohup's SIG_IGN), and
 * baton.run puts each back exactly as it found it when it ends. While it runs:
 *
 *  - SIGINT, SIGTERM and SIGHUP without a handler take the default action: the run is to end
 *    with status 128 + signal; the main task is aborted, so its <close> handlers run, then
 *    baton.run aborts the rest and releases the child processes as it always does. The first
 *    one puts the signal back to SIG_DFL, so a second ends the process at once (a closer that
 *    hangs cannot keep it alive); the raw handler counts deliveries too, so a second one
 *    ends it even when the first was never acted on (Lua looping in a plain coroutine, a
 *    task blocked in a C call). SIGHUP already ignored when the run starts (nohup) stays
 *    ignored.
 *  - A signal with a baton.on_signal handler runs the handler as a task (fn(name)) on each
 *    delivery, and takes no other action.
 *
 * The first request to end the run, a default action or baton.exit(code), decides the
 * status (R->exit_status); when the run is over, the executable returns it from main after
 * closing the state, and baton.run from a stock interpreter calls os.exit with it.
 *
 * Code that never yields holds the loop, so the libuv watcher would never run. As lua.c
 * does, a handler of ours sits over libuv's for each watched signal: when the default
 * action applies it sets a hook on the coroutine of the task that is running, which aborts
 * that task and the main task from there; it always passes the signal on to libuv's
 * handler. The REPL (repl.c) puts a handler of its own over ours for SIGINT and sets
 * R->take_sigint, which makes ours leave SIGINT's hook to it.
 *
 * Invariants: one runtime at a time watches signals (`active`; dispositions are
 * process-wide). The uv_signal_t handles are the runtime's, unreferenced (a watcher never
 * keeps the loop alive), not counted by baton.stats(), stopped when baton.run ends and
 * closed when the runtime closes (lbt_signals_close, before bt_rt_free runs the loop for
 * the last time).
 *
 * Errors (docs/errors.md): baton.on_signal and baton.exit raise on misuse and return no
 * failures; baton.exit inside a task raises the cancellation error (the task is aborted).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbaton.h"

#define NSIGS 5
#define HANDLERS_KEY "baton.signal_handlers"  /* registry: name -> handler function */
#define OS_EXIT_KEY "baton.os_exit"           /* registry: the os library's own os.exit */

static const struct {
  const char *name;
  int signum;
  int dflt;  /* has a default action while baton.run runs */
} sigs[NSIGS] = {
  {"int", SIGINT, 1}, {"term", SIGTERM, 1}, {"hup", SIGHUP, 1},
  {"usr1", SIGUSR1, 0}, {"usr2", SIGUSR2, 0},
};

struct lbt_signals {
  lbt_rt *R;
  uv_signal_t h[NSIGS];
  struct sigaction prior[NSIGS];   /* the disposition before the run, put back after it */
  struct sigaction uv_act[NSIGS];  /* libuv's handler, which ours passes signals on to */
  uint8_t inited[NSIGS];           /* uv_signal_init done: to close */
  uint8_t watching[NSIGS];         /* started in this run, prior saved */
  uint8_t layered[NSIGS];          /* our handler sits over libuv's */
  uint8_t has_fn[NSIGS];           /* a baton.on_signal handler is installed */
  volatile sig_atomic_t armed[NSIGS];  /* the default action applies (read at signal time) */
  volatile sig_atomic_t taken[NSIGS];  /* the default action was taken in this run */
  volatile sig_atomic_t seen[NSIGS];   /* delivered with the default action in this run */
  volatile sig_atomic_t hook_sig;      /* the signal whose hook is set, 0 if none */
};

/* The runtime watching signals now, for the signal handler and the hook. */
static lbt_signals *volatile active;

static int sig_index(int signum) {
  for (int i = 0; i < NSIGS; i++)
    if (sigs[i].signum == signum) return i;
  return -1;
}

static lbt_signals *signals_of(lua_State *L, lbt_rt *R) {
  if (R->sig == NULL) {
    R->sig = calloc(1, sizeof *R->sig);
    if (R->sig == NULL) luaL_error(L, "baton: out of memory");
    R->sig->R = R;
  }
  return R->sig;
}

/* ---- the default action --------------------------------------------------------------- */

/* The run is to end with status 128 + signal (unless something asked first): abort the main
 * task, and let a second such signal end the process. */
static void take_default(lbt_signals *S, int i) {
  lbt_rt *R = S->R;
  int signum = sigs[i].signum;
  /* Taken (by the watcher, or by the hook itself): a hook the raw handler set on a task
   * that yielded before any Lua ran is stale. It stays set on that coroutine until it fires
   * (perhaps in a __close handler of the unwinding this action starts): it must then do
   * nothing, or it would cut that cleanup short. */
  S->hook_sig = 0;
  if (!S->taken[i]) {
    S->taken[i] = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(signum, &sa, NULL);
  }
  if (R->exit_status < 0) {
    R->exit_status = 128 + signum;
    R->exit_signal = signum;
  }
  if (R->running && R->main != NULL) bt_task_abort(R->rt, &R->main->t);
}

/* Runs in the coroutine the signal handler hooked, as the task that held the loop. */
static void signal_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  lbt_signals *S = active;
  int i = S != NULL ? sig_index(S->hook_sig) : -1;
  if (i < 0) return;
  S->hook_sig = 0;
  take_default(S, i);
  bt_task_t *t = bt_rt_current(S->R->rt);
  if (t == NULL) return;
  bt_task_abort(S->R->rt, t);
  lbt_raise_cancelled(L);
}

/* The signal handler over libuv's: touches only lua_sethook and plain loads and stores. */
static void on_signal_raw(int signum, siginfo_t *info, void *uctx) {
  int saved = errno;
  lbt_signals *S = active;
  int i = sig_index(signum);
  if (S != NULL && i >= 0) {
    int dflt = S->armed[i] && !(signum == SIGINT && S->R->take_sigint != NULL);
    /* A second one while our handler is still in place: end now. Counted here, not only
     * once taken: the hook may never fire (Lua looping in a plain coroutine the task
     * resumed, or a task blocked in a C call), and the watcher never runs meanwhile. */
    if (S->taken[i] || (dflt && S->seen[i])) {
      signal(signum, SIG_DFL);
      raise(signum);    /* blocked until this handler returns */
    } else if (dflt) {
      S->seen[i] = 1;
      bt_task_t *t = S->hook_sig == 0 ? bt_rt_current(S->R->rt) : NULL;
      lbt_fiber *f = t != NULL ? lbt_fib((lbt_task *)t) : NULL;
      if (f != NULL) {
        S->hook_sig = signum;
        lua_sethook(f->co, signal_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
      }
    }
    const struct sigaction *next = &S->uv_act[i];
    if (next->sa_flags & SA_SIGINFO) next->sa_sigaction(signum, info, uctx);
    else if (next->sa_handler != SIG_DFL && next->sa_handler != SIG_IGN)
      next->sa_handler(signum);
  }
  errno = saved;
}

/* ---- watchers ------------------------------------------------------------------------- */

/* Under lua_pcall, with (runtime, handler, name): spawns the handler as a task fn(name). */
static int spawn_handler(lua_State *L) {
  lbt_rt *R = lua_touserdata(L, 1);
  lbt_task_new(L, R, 2, 1, R->root, NULL, 0);
  return 0;
}

static void on_signal(uv_signal_t *h, int signum) {
  lbt_signals *S = h->data;
  lbt_rt *R = S->R;
  int i = sig_index(signum);
  if (i < 0 || !R->running) return;
  if (signum == SIGINT && R->take_sigint != NULL && R->take_sigint()) return;
  if (S->has_fn[i]) {
    lua_State *L = R->L;
    lua_pushcfunction(L, spawn_handler);
    lua_pushlightuserdata(L, R);
    lua_getfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
    lua_getfield(L, -1, sigs[i].name);
    lua_remove(L, -2);
    lua_pushstring(L, sigs[i].name);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
      lbt_warn(R, "baton.on_signal: cannot run the %s handler: %s", sigs[i].name,
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
      lua_pop(L, 1);
    }
    return;
  }
  if (sigs[i].dflt) take_default(S, i);
}

static void start_watch(lbt_signals *S, int i) {
  lbt_rt *R = S->R;
  int signum = sigs[i].signum;
  if (S->watching[i]) return;
  if (!S->inited[i]) {
    if (uv_signal_init(bt_rt_loop(R->rt), &S->h[i]) != 0) return;
    S->inited[i] = 1;
    S->h[i].data = S;
  }
  if (sigaction(signum, NULL, &S->prior[i]) != 0) return;
  if (uv_signal_start(&S->h[i], on_signal, signum) != 0) return;
  uv_unref((uv_handle_t *)&S->h[i]);
  S->watching[i] = 1;
  S->layered[i] = 0;
  if (sigaction(signum, NULL, &S->uv_act[i]) == 0 &&
      ((S->uv_act[i].sa_flags & SA_SIGINFO) ||
       (S->uv_act[i].sa_handler != SIG_DFL && S->uv_act[i].sa_handler != SIG_IGN))) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal_raw;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&sa.sa_mask);
    S->layered[i] = sigaction(signum, &sa, NULL) == 0;
  }
}

static void stop_watch(lbt_signals *S, int i) {
  if (!S->watching[i]) return;
  uv_signal_stop(&S->h[i]);  /* libuv puts SIG_DFL back */
  sigaction(sigs[i].signum, &S->prior[i], NULL);
  S->watching[i] = 0;
  S->layered[i] = 0;
}

/* Whether signal i is to be watched while the run goes on. */
static int wanted(lbt_signals *S, int i) {
  if (S->has_fn[i]) return 1;
  if (!sigs[i].dflt) return 0;
  if (sigs[i].signum == SIGHUP && !S->watching[i]) {  /* nohup: stays ignored */
    struct sigaction cur;
    if (sigaction(SIGHUP, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) &&
        cur.sa_handler == SIG_IGN)
      return 0;
  }
  return 1;
}

static void update(lbt_signals *S, int i) {
  S->armed[i] = sigs[i].dflt && !S->has_fn[i];
  if (active != S) return;
  if (wanted(S, i)) start_watch(S, i);
  else stop_watch(S, i);
}

void lbt_signals_start(lbt_rt *R) {
  R->exit_status = -1;
  R->exit_signal = 0;
  R->exit_close = 0;
  if (active != NULL) return;  /* another runtime of this process watches them */
  if (R->sig == NULL) {
    R->sig = calloc(1, sizeof *R->sig);
    if (R->sig == NULL) return;  /* best effort: the signals keep their dispositions */
    R->sig->R = R;
  }
  lbt_signals *S = R->sig;
  active = S;
  S->hook_sig = 0;
  for (int i = 0; i < NSIGS; i++) {
    S->taken[i] = 0;
    S->seen[i] = 0;
    update(S, i);
  }
}

void lbt_signals_stop(lbt_rt *R) {
  lbt_signals *S = R->sig;
  if (S == NULL || active != S) return;
  for (int i = 0; i < NSIGS; i++) {
    stop_watch(S, i);
    S->armed[i] = 0;
  }
  active = NULL;
  S->hook_sig = 0;
}

void lbt_signals_close(lbt_rt *R) {
  lbt_signals *S = R->sig;
  if (S == NULL) return;
  lbt_signals_stop(R);
  for (int i = 0; i < NSIGS; i++)
    if (S->inited[i]) uv_close((uv_handle_t *)&S->h[i], NULL);
}

void lbt_signals_free(lbt_rt *R) {
  free(R->sig);
  R->sig = NULL;
}

int lbt_signals_own(lbt_rt *R, const uv_handle_t *h) {
  lbt_signals *S = R->sig;
  if (S == NULL) return 0;
  for (int i = 0; i < NSIGS; i++)
    if (h == (const uv_handle_t *)&S->h[i]) return 1;
  return 0;
}

/* ---- baton.on_signal ------------------------------------------------------------------ */

static int lbaton_on_signal(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  static const char fname[] = "baton.on_signal";
  const char *name = lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : NULL;
  int i = 0;
  while (name != NULL && i < NSIGS && strcmp(name, sigs[i].name) != 0) i++;
  if (name == NULL || i == NSIGS)
    return lbt_argerror(L, fname, 1, "signal", "one of 'int', 'term', 'hup', 'usr1', 'usr2'");
  if (!lua_isnoneornil(L, 2) && !lua_isfunction(L, 2))
    return lbt_argerror(L, fname, 2, "fn", "function or nil");
  lbt_signals *S = signals_of(L, R);
  lua_settop(L, 2);
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, sigs[i].name);
  S->has_fn[i] = !lua_isnil(L, 2);
  update(S, i);
  return 0;
}

/* ---- leaving: baton.exit -------------------------------------------------------------- */

/* os.exit's argument: true/none -> EXIT_SUCCESS, false -> EXIT_FAILURE, or an integer. */
static int exit_code(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return EXIT_SUCCESS;
  if (lua_isboolean(L, idx)) return lua_toboolean(L, idx) ? EXIT_SUCCESS : EXIT_FAILURE;
  if (!lua_isinteger(L, idx) || lua_tointeger(L, idx) < INT_MIN || lua_tointeger(L, idx) > INT_MAX)
    lbt_argerror(L, "baton.exit", idx, "code", "boolean or integer");
  return (int)lua_tointeger(L, idx);
}

/* Leaves the process with `status` the way os.exit does (closing the state first if
 * `close`), through the os library's own os.exit when there is one. Never returns. */
static int exit_process(lua_State *L, int status, int close) {
  fflush(NULL);
  lua_getfield(L, LUA_REGISTRYINDEX, OS_EXIT_KEY);
  if (lua_isfunction(L, -1)) {
    lua_pushinteger(L, status);
    lua_pushboolean(L, close);
    lua_call(L, 2, 0);
  }
  exit(status);
}

/* baton.exit([code [, close]]): inside baton.run, ends the run as a signal's default action
 * does: the calling task and the main task are aborted (their <close> handlers run), the
 * rest aborted and children released, then the process exits with `code`. Outside a run,
 * os.exit itself. */
static int lbaton_exit(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  int status = exit_code(L, 1);
  int close = lua_toboolean(L, 2);
  if (!R->running) return exit_process(L, status, close);
  if (R->exit_status < 0) {
    R->exit_status = status;
    R->exit_close = close;
  }
  if (R->main != NULL) bt_task_abort(R->rt, &R->main->t);
  bt_task_t *t = bt_rt_current(R->rt);
  if (t == NULL) return 0;
  bt_task_abort(R->rt, t);
  return lbt_raise_cancelled(L);
}

int lbt_exit_run(lua_State *L, lbt_rt *R) {
  return exit_process(L, R->exit_status, R->exit_close);
}

void lbt_open_signal(lua_State *L, int rt_idx) {
  lbt_rt *R = lua_touserdata(L, rt_idx);
  R->exit_status = -1;
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  /* os.exit as the os library made it (the executable replaces it with baton.exit) */
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "os");
  if (lua_istable(L, -1)) lua_getfield(L, -1, "exit");
  else lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, OS_EXIT_KEY);
  lua_pop(L, 2);
  static const luaL_Reg funcs[] = {
    {"on_signal", lbaton_on_signal}, {"exit", lbaton_exit}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
