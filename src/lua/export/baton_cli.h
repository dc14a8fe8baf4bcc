/*
 * baton_cli.h — what the Lua bindings export to the `baton` executable (src/cli), and the
 * only part of them it sees: besides this header the executable uses Lua's API, the baton
 * module's Lua API (baton.run, baton.exit, ...) and libuv, never lbaton.h, the bindings'
 * runtime struct or the core's internal.h. Implemented in src/lua/lcli.c.
 *
 * The executable holds an opaque lbt_cli, one per Lua state, owned by the state (it goes
 * with lua_close). Through it: the module opened the executable's way; SIGINT offered to
 * the executable first; the outcome of a run (exit status, signal, failed tasks nobody
 * joined); and what the REPL needs of tasks: an await of its own (the main task waiting
 * for a line), the foreground task (a line run as a task the main task awaits, which
 * Ctrl-C interrupts), and interrupting Lua code that holds the loop.
 *
 * Functions taking a lua_State run on the Lua thread; raising ones say so. The
 * *_interrupt_running function is the one called from a signal handler.
 */
#ifndef BATON_CLI_H
#define BATON_CLI_H

#include <stddef.h>

#include <lua.h>
#include <uv.h>

typedef struct lbt_cli lbt_cli;

/* Opens the baton module in L as the executable's: package.loaded.baton and the global
 * `baton` set, the module table left on the stack; baton.run called from inside a task
 * (a script written for a stock lua5.4, run as the executable's main task) calls its
 * function there, and a run ended by baton.exit or a signal returns to the caller instead
 * of exiting (lbt_cli_exit_status says how it ended). `unjoined`, when not NULL, counts
 * the failed tasks reported as never joined; it must outlive L (lua_close reports the
 * last of them). Returns the handle, owned by L. Raises on memory errors. */
lbt_cli *lbt_cli_open(lua_State *L, size_t *unjoined);

/* The runtime's loop, for the executable's own handles (stdin, SIGWINCH); borrowed for the
 * life of L. */
uv_loop_t *lbt_cli_loop(lbt_cli *c);

/* The terminal the REPL shares with baton.progress: while shown() returns nonzero (a prompt
 * is on it), a progress on the terminal writes plain lines at its interval instead of a bar
 * redrawn in place, each after clear() took the prompt off (the REPL redraws it). NULLs:
 * none. Process-wide, as the terminal is. */
void lbt_cli_set_console(int (*shown)(void), void (*clear)(void));

/* After baton.run has returned: the status the run ends the process with when baton.exit
 * or a signal's default action ended it (*signum, when not NULL, is that signal, or 0),
 * else -1. */
int lbt_cli_exit_status(const lbt_cli *c, int *signum);

/* While set, SIGINT during baton.run goes to `take` first, on the loop's thread: it returns
 * 1 if it handled the signal, 0 to let the default action apply (the main task aborted,
 * status 130). NULL unsets. */
void lbt_cli_take_sigint(lbt_cli *c, int (*take)(void));

/* Sets `fn` (called with the message) as the handler of baton's warnings, as
 * baton.on_warning(fn) would, unless the program has set one. */
void lbt_cli_default_warning(lua_State *L, lua_CFunction fn);

/* ---- an await of the executable's own ------------------------------------------------- */

/* From a C function called by the running task (on the task's own coroutine): suspends the
 * task until lbt_cli_wake, or until it is aborted. `on_end(ud)` (may be NULL) runs once
 * when the wait ends, however it ends, before the task is resumed: unregister there. Then
 * `k` runs in the task, as lua_yieldk's continuation of the calling function, and starts
 * with lbt_cli_resumed. Returns what the calling function must return. `fname` names the
 * caller in errors. One such wait at a time per lbt_cli. Raises if the caller is not a
 * task that may wait, or if it is already cancelled (on_end does not run then). */
int lbt_cli_await(lua_State *L, lbt_cli *c, const char *fname, void (*on_end)(void *ud),
                  void *ud, lua_KFunction k);
/* In `k`: raises the cancellation error if the task was aborted meanwhile; else returns the
 * status lbt_cli_wake gave. */
int lbt_cli_resumed(lua_State *L, lbt_cli *c);
/* Wakes the task waiting in lbt_cli_await with `status` (>= 0): it resumes when the loop
 * next drains the ready queue, never from here. Returns 1, or 0 if no task waits. */
int lbt_cli_wake(lbt_cli *c, int status);

/* ---- the foreground task ------------------------------------------------------------- */

/* A lua_CFunction body, called by the main task with a function at index 1: runs it as the
 * foreground task (a task of baton.spawn's group) and awaits it. Returns (to Lua) true and
 * its results, or false and its error (the string "interrupted" when lbt_cli_interrupt
 * aborted it), or nil and the task when a second interrupt left it running in the
 * background. `fname` names the caller in errors. Raises as lbt_cli_await does. */
int lbt_cli_foreground(lua_State *L, lbt_cli *c, const char *fname);

enum {
  LBT_CLI_NO_TASK = 0,   /* no foreground task is running */
  LBT_CLI_ABORTED = 1,   /* this call aborted it: its <close> handlers run, then it ends */
  LBT_CLI_WAS_ABORTED,   /* it had been aborted already; not detached */
  LBT_CLI_DETACHED       /* it had been aborted already: no longer waited for */
};
/* Ctrl-C for the foreground task: aborts it, or, when it was aborted already and `detach`
 * is set, stops waiting for it (lbt_cli_foreground returns nil, task). Never runs Lua. */
int lbt_cli_interrupt(lbt_cli *c, int detach);

/* From a signal handler (async-signal-safe: plain loads and stores and lua_sethook): when a
 * task is running, Lua code that holds the loop, sets a hook on its coroutine that aborts
 * it from there at its next instruction, as Ctrl-C would have had the loop been free to
 * notice (the foreground task counts as interrupted). Returns 1 if a hook was set, else 0. */
int lbt_cli_interrupt_running(lbt_cli *c);

#endif
