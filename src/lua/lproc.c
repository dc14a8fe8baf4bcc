/*
 * lproc.c — baton.process: run a program to completion (process.run) or drive a running one
 * (process.spawn → a baton.Process userdata). Programs are started from an argv, never
 * through a shell; argv[1] is looked up on the PATH of the child's environment.
 *
 * State. A Process userdata holds a pointer to a malloc'd `lproc`, created closed (NULL)
 * before anything is acquired. The core process's events point at the lproc, never at the
 * userdata; the lproc (with its output buffers) is freed in the on_close event, which comes
 * only after the binding has released the child (bt_proc_close) and the child has exited.
 * The userdata and the lproc point at each other; __gc clears the lproc's pointer and
 * releases the child, on_close clears the userdata's. process.run keeps its own Process
 * userdata on the running coroutine's stack, so a task that disappears still releases its
 * child through __gc.
 *
 * Waiting. At most one task waits to read from a process at a time (a second reader is
 * misuse). The lproc records the waiter (task, token) and what it waits for; every event
 * re-checks that condition and wakes the task with bt_task_wake() once it holds. The wait's
 * cancel only unregisters the waiter: cancelling a read leaves the child running
 * (process.run is the exception: its continuation releases the child before raising the
 * cancellation error). Continuations re-fetch the lproc from the userdata, since another
 * task may have closed the process between the wake and the resume.
 *
 * Writing (spawn). At most max_write_queue_bytes wait in the stdin pipe's queue: a write
 * that does not fit waits for the child to read (backpressure), in a FIFO of writers (a
 * `wnode` userdata on each writer's stack). Only the head of the FIFO writes, so the pieces
 * of a write larger than the bound are never interleaved with another task's; the head is
 * woken (`granted`) when on_written leaves room for its next piece, and leaves the FIFO
 * when its last piece is queued. A writer aborted while it waits leaves the FIFO; what it
 * had queued stays queued. Release and close_stdin wake every writer with "closed".
 *
 * Output. process.run buffers each stream up to max_output_bytes and kills the child
 * beyond that. A spawned process keeps stdout until read; when more than 1 MiB is unread it
 * stops reading the pipes (the child blocks) until read/read_line consume below that. While
 * a task is in wait(), the limit rises to max_output_bytes, and in read_line() to
 * max_line_bytes, so that a child writing more before exiting, or a longer line, gets
 * through. stderr is kept up to max_output_bytes; the rest is dropped. Lines are cut by the
 * core's line splitter (bt_lines, core/lines.c).
 *
 * Errors: misuse raises (bad options, use after close, a second reader, waiting outside a
 * task); the world's outcomes return nil, message, kind ("io", "resource", "timeout",
 * "too_large", "closed", "nomem"). A nonzero exit or a signal is not an error: it is in
 * the results.
 *
 * API (options: argv as the positional entries; cwd = string; env = { NAME = "value" }
 * replacing the whole environment, PATH included; max_output_bytes = integer, 64 MiB;
 * process_group = boolean, true: the child leads a process group (and session) of its own,
 * and every signal below goes to that group):
 *   process.run{ argv..., stdin = string, timeout_ms = ms, ... }
 *       → { code, signal, stdout, stderr }
 *       | nil, msg, "io" | "resource" | "timeout" | "too_large"
 *       stdin defaults to /dev/null. code is 128 + signal for a child killed by a signal.
 *       Returns only once the child has exited and its handles are closed.
 *   process.spawn{ argv..., stdin = boolean (true: a pipe; false: /dev/null),
 *                  max_write_queue_bytes = n (1 MiB), max_line_bytes = n (1 MiB), ... }
 *       → proc | nil, msg, "io" | "resource"
 *   proc:write(s, [ms]) → true | nil, msg, "io" | "closed" | "timeout"
 *       (waits while the queue is full; on a timeout, pieces already queued stay queued)
 *   proc:close_stdin()                      (after the queued writes: EOF for the child)
 *   proc:read_line([ms]) → line | nil (EOF) | nil, msg, "timeout"|"too_large"|"closed"
 *   proc:read([ms]) → bytes | nil (EOF) | nil, msg, "timeout"|"closed"
 *   proc:wait([ms]) → code, signal | nil, msg, "timeout"|"closed"   (exit and both EOFs)
 *   proc:stderr() → what the child wrote to stderr so far
 *   proc:kill([sig]) → true | nil, msg, "io"   (number or "TERM", "KILL", "INT", ...)
 *   proc:pid() ; proc:close([grace_ms], [wait]) (idempotent; SIGTERM, SIGKILL after
 *   grace_ms, 2000 by default; with wait, in a task, returns once the child is reaped) ;
 *   <close> and __gc close ; __tostring shows pid and state
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbaton.h"

#define DEFAULT_MAX_OUTPUT ((size_t)64 << 20)  /* per stream */
#define BACKLOG ((size_t)1 << 20)              /* unread stdout of a spawned process */
#define DEFAULT_MAX_LINE BACKLOG               /* read_line */
#define DEFAULT_MAX_WQUEUE ((size_t)1 << 20)   /* max_write_queue_bytes */
#define DEFAULT_GRACE_MS 2000                  /* SIGTERM → SIGKILL */
#define WRITE_CHUNK ((size_t)1 << 30)
#define PROCS_KEY "baton.procs"                /* registry: weak set of Process userdata */

enum { W_NONE, W_LINE, W_DATA, W_DONE, W_CLOSED };
enum { OP_LINE, OP_READ, OP_WAIT };

typedef struct lproc_ud lproc_ud;

/* A task waiting in proc:write: a userdata on its stack, linked in the lproc's FIFO. */
typedef struct wnode {
  TAILQ_ENTRY(wnode) link;
  struct lproc *st;
  bt_task_t *task;
  uint32_t token;
  size_t left;            /* bytes of its string still to queue */
  int in_fifo;
  int granted;            /* woken to write its next piece (stays the head) */
} wnode;

typedef struct lproc {
  bt_proc_t *p;           /* the core process; not to be touched once released */
  bt_rt_t *rt;
  lproc_ud *ud;           /* the userdata, NULL once collected */
  bt_task_t *waiter;      /* the task waiting to read from this process, or NULL */
  uint32_t token;
  int want;               /* W_*: what the waiter waits for */
  bt_lines out;           /* unread stdout */
  bt_buf err;
  size_t max;             /* max_output_bytes */
  size_t line_max;        /* max_line_bytes */
  size_t wmax;            /* max_write_queue_bytes */
  TAILQ_HEAD(, wnode) writers;
  int64_t code;
  int signal;
  int run;                /* started by process.run */
  int exited, out_eof, err_eof;
  int released;           /* bt_proc_close() was called */
  int stopped;            /* reading stopped (backpressure, too_large or fail) */
  int too_large;          /* process.run: a stream went over max */
  int fail;               /* a buffer could not grow (out of memory) */
} lproc;

struct lproc_ud {
  lproc *st;              /* NULL until spawned and again after on_close */
  int pid;
  int has_stdin;
};

/* The options of process.run and process.spawn, checked. Strings are borrowed from the
 * options table and from Lua values kept on the stack until the spawn. */
typedef struct spawn_args {
  bt_proc_opts o;
  const char *input;      /* run: stdin = string */
  size_t input_len;
  uint64_t due;           /* run: absolute deadline, or UINT64_MAX */
  size_t max, line_max, wmax;
} spawn_args;

/* ---- buffers ------------------------------------------------------------------------ */

static size_t unread(const lproc *st) { return bt__lines_unread(&st->out); }

static size_t out_limit(const lproc *st) {
  if (st->run) return st->max;
  if (st->waiter == NULL) return BACKLOG;
  if (st->want == W_DONE) return st->max;
  if (st->want == W_LINE && st->line_max >= BACKLOG) return st->line_max + 1;
  return BACKLOG;
}

/* Reading stopped for backpressure: start again once below the current limit. */
static void maybe_resume(lproc *st) {
  if (st->stopped && !st->fail && unread(st) < out_limit(st)) {
    bt_proc_read_start(st->p);
    st->stopped = 0;
  }
}

/* Pushes n unread stdout bytes and consumes them (plus `skip` more, the newline). */
static void push_out(lua_State *L, lproc *st, size_t n, size_t skip) {
  lua_pushlstring(L, bt__lines_peek(&st->out), n);
  bt__lines_consume(&st->out, n + skip);
  if (unread(st) == 0 && st->out.buf.cap > 2 * BACKLOG) bt__lines_free(&st->out);
  maybe_resume(st);
}

/* ---- waiting ------------------------------------------------------------------------ */

static int satisfied(lproc *st) {
  if (st->fail) return st->want != W_CLOSED;
  switch (st->want) {
  case W_LINE: {
    size_t n;
    return st->out_eof || bt__lines_scan(&st->out, st->line_max, &n) != BT_LINE_NONE;
  }
  case W_DATA: return st->out_eof || unread(st) > 0;
  case W_DONE: return st->too_large || (st->exited && st->out_eof && st->err_eof);
  default: return 0;  /* W_CLOSED: on_close wakes it */
  }
}

static void poke(lproc *st) {
  if (st->waiter != NULL && satisfied(st)) bt_task_wake(st->rt, st->waiter, st->token, 0);
}

static void proc_wait_cancel(bt_wait_t *w) {
  lproc *st = w->src;
  st->waiter = NULL;
  st->want = W_NONE;
}

static void await_on(lbt_rt *R, lbt_task *T, lproc *st, int want, uint64_t due) {
  lbt_fiber *f = lbt_fib(T);
  st->waiter = &T->t;
  st->want = want;
  f->wait.src = st;
  st->token = bt_task_wait(R->rt, &T->t, &f->wait, proc_wait_cancel, due);
}

/* ---- writers ------------------------------------------------------------------------ */

/* Whether the queue has room for the next piece of a write with `left` bytes to go: a piece
 * is at most wmax bytes, and goes in when it fits under wmax or the queue is empty. */
static int has_room(const lproc *st, size_t left) {
  size_t q = bt_proc_write_queue(st->p);
  size_t piece = left < st->wmax ? left : st->wmax;
  return q == 0 || q + piece <= st->wmax;
}

static void unlink_writer(lproc *st, wnode *n) {
  if (!n->in_fifo) return;
  TAILQ_REMOVE(&st->writers, n, link);
  n->in_fifo = 0;
}

/* Wakes the head of the FIFO if its next piece fits. */
static void poke_writers(lproc *st) {
  wnode *n = TAILQ_FIRST(&st->writers);
  if (n == NULL || n->granted || !has_room(st, n->left)) return;
  n->granted = 1;
  bt_task_wake(st->rt, n->task, n->token, 0);
}

/* Wakes every writer with `status` (BT_ECLOSED: release, close_stdin) and empties the FIFO. */
static void fail_writers(lproc *st, int status) {
  wnode *n;
  while ((n = TAILQ_FIRST(&st->writers)) != NULL) {
    unlink_writer(st, n);
    bt_task_wake(st->rt, n->task, n->token, status);
  }
}

/* The cancel of a write wait. A granted head stays the head until its continuation runs
 * (it writes on, or leaves the FIFO if it was aborted meanwhile); any other writer leaves. */
static void write_wait_cancel(bt_wait_t *w) {
  wnode *n = w->src;
  if (n->granted) return;
  lproc *st = n->st;
  int was_head = TAILQ_FIRST(&st->writers) == n;
  unlink_writer(st, n);
  if (was_head) poke_writers(st);
}

/* Lets go of the child: a waiter hears BT_ECLOSED, the child gets SIGTERM then SIGKILL
 * after grace_ms; the lproc is freed in on_close. */
static void release(lproc *st, uint64_t grace_ms) {
  if (st->released) return;
  st->released = 1;
  if (st->waiter != NULL) bt_task_wake(st->rt, st->waiter, st->token, BT_ECLOSED);
  fail_writers(st, BT_ECLOSED);
  bt_proc_close(st->p, grace_ms);
}

static void stop_reading(lproc *st) {
  if (st->stopped) return;
  bt_proc_read_stop(st->p);
  st->stopped = 1;
}

/* ---- core events (called from libuv callbacks: no Lua here) ------------------------- */

static void on_proc_data(bt_proc_t *p, int fd, const char *data, size_t len) {
  lproc *st = bt_proc_data(p);
  if (len == 0) {
    if (fd == 1) st->out_eof = 1;
    else st->err_eof = 1;
  } else if (fd == 1) {
    if (st->run && len > st->max - unread(st)) {
      st->too_large = 1;
      stop_reading(st);
    } else if (bt__lines_append(&st->out, data, len) != 0) {
      st->fail = 1;
      stop_reading(st);
    } else if (!st->run && unread(st) >= out_limit(st)) {
      stop_reading(st);
    }
  } else {
    size_t room = st->max - st->err.len, keep = len < room ? len : room;
    if (st->run && keep < len) {
      st->too_large = 1;
      stop_reading(st);
    } else if (bt__buf_append(&st->err, data, keep) != 0) {
      st->fail = 1;
      stop_reading(st);
    }
  }
  poke(st);
}

static void on_proc_exit(bt_proc_t *p, int64_t code, int sig) {
  lproc *st = bt_proc_data(p);
  st->exited = 1;
  /* A signal reads as the shell reports it, so that code == 0 always means success. */
  st->code = sig ? 128 + sig : code;
  st->signal = sig;
  poke(st);
}

static void on_proc_written(bt_proc_t *p, int status) {
  BT_UNUSED(status);  /* a failure is kept by the core: the next bt_proc_write returns it */
  poke_writers(bt_proc_data(p));
}

static void on_proc_close(bt_proc_t *p) {
  lproc *st = bt_proc_data(p);
  if (st->waiter != NULL) bt_task_wake(st->rt, st->waiter, st->token, 0);
  if (st->ud != NULL) st->ud->st = NULL;
  bt__lines_free(&st->out);
  bt__buf_free(&st->err);
  free(st);
}

/* ---- options ------------------------------------------------------------------------ */

static const char *check_string(lua_State *L, int idx, const char *fname, const char *what) {
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "%s: %s must be a string (got %s)", fname, what, luaL_typename(L, idx));
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len) luaL_error(L, "%s: %s contains a NUL byte", fname, what);
  return s;
}

/* Pushes onto the stack (kept until the spawn) a scratch userdata for argv, and for env a
 * table anchoring the "K=V" strings and a scratch userdata for the pointer array. */
static void check_argv(lua_State *L, const char *fname, spawn_args *a) {
  size_t n = lua_rawlen(L, 1);
  if (n == 0)
    luaL_error(L, "%s: argv is empty: give the program as the first entry, "
               "e.g. { \"ls\", \"-l\" }", fname);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TNUMBER) continue;  /* named options: checked elsewhere */
    lua_Integer i = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
    if (i < 1 || (lua_Unsigned)i > n)
      luaL_error(L, "%s: argv must be a sequence (found key %s next to %d entries)", fname,
                 lua_tostring(L, -1), (int)n);
  }
  if (n > 100000) luaL_error(L, "%s: argv has too many entries (%d)", fname, (int)n);
  char **argv = lua_newuserdatauv(L, (n + 1) * sizeof *argv, 0);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, (lua_Integer)i);
    char what[32];
    snprintf(what, sizeof what, "argv[%d]", (int)i);
    argv[i - 1] = (char *)check_string(L, -1, fname, what);
    lua_pop(L, 1);  /* the table still holds the string */
  }
  argv[n] = NULL;
  a->o.argv = argv;
}

static void check_env(lua_State *L, int env_idx, const char *fname, spawn_args *a) {
  env_idx = lua_absindex(L, env_idx);
  lua_newtable(L);
  int keep = lua_gettop(L);
  lua_Integer count = 0;
  lua_pushnil(L);
  while (lua_next(L, env_idx)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "%s: env keys must be strings (got %s)", fname, luaL_typename(L, -2));
    size_t klen;
    const char *k = lua_tolstring(L, -2, &klen);
    if (klen == 0 || strlen(k) != klen || memchr(k, '=', klen) != NULL)
      luaL_error(L, "%s: env key '%s' is not a valid variable name", fname, k);
    int vt = lua_type(L, -1);
    if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
      luaL_error(L, "%s: env.%s must be a string (got %s)", fname, k, luaL_typename(L, -1));
    lua_pushvalue(L, -1);
    size_t vlen;
    const char *v = lua_tolstring(L, -1, &vlen);  /* converts the copy, not the table's */
    if (strlen(v) != vlen) luaL_error(L, "%s: env.%s contains a NUL byte", fname, k);
    lua_pushfstring(L, "%s=%s", k, v);
    lua_rawseti(L, keep, ++count);
    lua_pop(L, 2);
  }
  char **env = lua_newuserdatauv(L, ((size_t)count + 1) * sizeof *env, 0);
  for (lua_Integer i = 1; i <= count; i++) {
    lua_rawgeti(L, keep, i);
    env[i - 1] = (char *)lua_tostring(L, -1);  /* anchored by `keep` */
    lua_pop(L, 1);
  }
  env[count] = NULL;
  a->o.env = env;
}

/* Pushes field `name` of the options table (raw: no metamethod runs while strings are
 * borrowed) and returns its type. */
static int get_opt(lua_State *L, const char *name) {
  lua_pushstring(L, name);
  return lua_rawget(L, 1);
}

/* An integer option >= min (a byte count), or `def` when absent. */
static size_t opt_size(lua_State *L, const char *fname, const char *name, lua_Integer min,
                       size_t def) {
  size_t v = def;
  if (get_opt(L, name) != LUA_TNIL) {
    int isint;
    lua_Integer m = lua_tointegerx(L, -1, &isint);
    if (!isint || m < min)
      luaL_error(L, "%s: %s must be an integer >= %d", fname, name, (int)min);
    v = (size_t)m;
  }
  lua_pop(L, 1);
  return v;
}

static void check_opts(lua_State *L, lbt_rt *R, int run, spawn_args *a) {
  const char *fname = run ? "baton.process.run" : "baton.process.spawn";
  if (lua_type(L, 1) != LUA_TTABLE)
    luaL_error(L, "bad argument #1 to '%s' (table { \"program\", \"arg\", ... } expected, "
               "got %s)", fname, luaL_typename(L, 1));
  static const char *const run_known[] = {LBT_POSITIONAL, "stdin", "cwd", "env",
                                          "timeout_ms", "max_output_bytes", "process_group",
                                          NULL};
  static const char *const spawn_known[] = {LBT_POSITIONAL, "stdin", "cwd", "env",
                                            "max_output_bytes", "process_group",
                                            "max_write_queue_bytes", "max_line_bytes", NULL};
  lbt_check_fields(L, 1, fname, run ? run_known : spawn_known);
  memset(a, 0, sizeof *a);
  a->due = UINT64_MAX;
  a->max = DEFAULT_MAX_OUTPUT;
  a->line_max = DEFAULT_MAX_LINE;
  a->wmax = DEFAULT_MAX_WQUEUE;
  check_argv(L, fname, a);

  if (get_opt(L, "cwd") != LUA_TNIL) a->o.cwd = check_string(L, -1, fname, "cwd");
  lua_pop(L, 1);  /* the table still holds it */

  int t = get_opt(L, "env");
  if (t == LUA_TTABLE) check_env(L, -1, fname, a);
  else if (t != LUA_TNIL)
    luaL_error(L, "%s: env must be a table { NAME = \"value\" } (got %s)", fname,
               luaL_typename(L, -1));
  /* The env table, its "K=V" strings and their array stay on the stack until the spawn. */

  t = get_opt(L, "stdin");
  if (run) {
    if (t == LUA_TSTRING) {
      a->input = lua_tolstring(L, -1, &a->input_len);
      a->o.pipe_stdin = 1;
    } else if (t != LUA_TNIL) {
      luaL_error(L, "%s: stdin must be a string (got %s)", fname, luaL_typename(L, -1));
    }
  } else {
    if (t == LUA_TNIL) a->o.pipe_stdin = 1;
    else if (t == LUA_TBOOLEAN) a->o.pipe_stdin = lua_toboolean(L, -1);
    else luaL_error(L, "%s: stdin must be a boolean (got %s)", fname, luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  a->max = opt_size(L, fname, "max_output_bytes", 0, a->max);
  if (!run) {
    a->wmax = opt_size(L, fname, "max_write_queue_bytes", 1, a->wmax);
    a->line_max = opt_size(L, fname, "max_line_bytes", 1, a->line_max);
  }
  t = get_opt(L, "process_group");
  if (t == LUA_TBOOLEAN) a->o.no_process_group = !lua_toboolean(L, -1);
  else if (t != LUA_TNIL)
    luaL_error(L, "%s: process_group must be a boolean (got %s)", fname, luaL_typename(L, -1));
  lua_pop(L, 1);

  if (run && get_opt(L, "timeout_ms") != LUA_TNIL) {
    int isnum;
    lua_Number ms = lua_tonumberx(L, -1, &isnum);
    if (!isnum || !(ms >= 0 && ms < 1e15))
      luaL_error(L, "%s: timeout_ms must be a number of milliseconds >= 0", fname);
    a->due = bt_now(R->rt) + (uint64_t)(ms + 0.999999);
  }
  if (run) lua_pop(L, 1);
}

/* The kind of a failed spawn: "resource" when the system ran out of something (descriptors,
 * processes, memory for the fork), "nomem" when baton did, else "io" (no such program, no
 * permission, a bad cwd, ...). */
static const char *spawn_kind(int rc) {
  switch (rc) {
  case UV_EMFILE: case UV_ENFILE: case UV_EAGAIN: case UV_ENOMEM: return "resource";
  case BT_ENOMEM: return "nomem";
  default: return "io";
  }
}

/* Creates the Process userdata (closed), then its state, and spawns. Returns the userdata's
 * stack index, or 0 after pushing nil, message, kind when the program cannot start. */
static int start(lua_State *L, lbt_rt *R, spawn_args *a, int run, const char *fname) {
  lproc_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->st = NULL;
  ud->pid = 0;
  ud->has_stdin = a->o.pipe_stdin;
  luaL_setmetatable(L, BT_PROC_MT);
  int ui = lua_gettop(L);
  lbt_weak_set_add(L, PROCS_KEY, ui);
  lproc *st = calloc(1, sizeof *st);
  if (st == NULL) luaL_error(L, "%s: out of memory", fname);
  st->rt = R->rt;
  st->max = a->max;
  st->run = run;
  TAILQ_INIT(&st->writers);
  st->line_max = a->line_max;
  st->wmax = a->wmax;
  bt_proc_events ev = {on_proc_data, on_proc_exit, on_proc_close, on_proc_written, st};
  int rc = bt_proc_spawn(R->rt, &a->o, &ev, &st->p);
  if (rc != 0) {
    free(st);
    lua_pushnil(L);
    if (a->o.cwd != NULL)
      lua_pushfstring(L, "%s: cannot start '%s' (in '%s'): %s", fname, a->o.argv[0],
                      a->o.cwd, bt_strerror(rc));
    else
      lua_pushfstring(L, "%s: cannot start '%s': %s", fname, a->o.argv[0], bt_strerror(rc));
    lua_pushstring(L, spawn_kind(rc));
    return 0;
  }
  ud->st = st;
  st->ud = ud;
  ud->pid = bt_proc_pid(st->p);
  return ui;
}

/* ---- process.run -------------------------------------------------------------------- */

/* Stack in the continuations: 1 = options, 2 = the Process userdata, then the results. */

static int run_closed_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = (lbt_task *)bt_rt_current(R->rt);
  if (lbt_fib(T)->status == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL))
    return lbt_raise_cancelled(L);
  return (int)ctx;
}

static int run_done_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = (lbt_task *)bt_rt_current(R->rt);
  lproc_ud *ud = lua_touserdata(L, 2);
  lproc *st = ud->st;  /* only this task releases a run's child: still there */
  int s = lbt_fib(T)->status;
  if (s == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL)) {
    release(st, DEFAULT_GRACE_MS);
    return lbt_raise_cancelled(L);
  }
  lua_settop(L, 2);
  int n = 3;
  if (s == BT_ETIMEDOUT) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    lua_pushliteral(L, "timeout");
  } else if (s != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "baton.process.run: %s", bt_strerror(s));
    lua_pushstring(L, bt_err_name(s));
  } else if (st->fail) {
    lua_pushnil(L);
    lua_pushliteral(L, "baton.process.run: out of memory buffering the output");
    lua_pushliteral(L, "nomem");
  } else if (st->too_large) {
    lua_pushnil(L);
    lua_pushfstring(L, "baton.process.run: output exceeds %I bytes (max_output_bytes)",
                    (lua_Integer)st->max);
    lua_pushliteral(L, "too_large");
  } else {
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)st->code);
    lua_setfield(L, -2, "code");
    lua_pushinteger(L, st->signal);
    lua_setfield(L, -2, "signal");
    lua_pushlstring(L, bt__lines_peek(&st->out), unread(st));
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, st->err.p, st->err.len);
    lua_setfield(L, -2, "stderr");
    n = 1;
  }
  /* Return only once the child is gone and its handles are closed. */
  release(st, DEFAULT_GRACE_MS);
  await_on(R, T, st, W_CLOSED, UINT64_MAX);
  return lbt_suspend(L, n, run_closed_k);
}

static int lproc_run(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  spawn_args a;
  check_opts(L, R, 1, &a);
  lbt_task *T = lbt_await_begin(L, R, "baton.process.run");
  int ui = start(L, R, &a, 1, "baton.process.run");
  if (ui == 0) {
    /* The failed spawn's handles close at the end of this loop iteration: return in the
     * next one, so that nothing of it is left when run returns. */
    bt_task_wait(R->rt, &T->t, &lbt_fib(T)->wait, NULL, bt_now(R->rt));
    return lbt_suspend(L, 3, run_closed_k);
  }
  lua_copy(L, ui, 2);
  lua_settop(L, 2);
  lproc *st = ((lproc_ud *)lua_touserdata(L, 2))->st;
  if (a.o.pipe_stdin) {
    int rc = 0;
    for (size_t off = 0; rc == 0 && off < a.input_len; off += WRITE_CHUNK) {
      size_t n = a.input_len - off < WRITE_CHUNK ? a.input_len - off : WRITE_CHUNK;
      rc = bt_proc_write(st->p, a.input + off, n);
    }
    bt_proc_close_stdin(st->p);
    if (rc != 0 && rc != UV_EPIPE) {  /* EPIPE: the child did not read its input */
      lua_pushnil(L);
      lua_pushfstring(L, "baton.process.run: cannot write stdin: %s", bt_strerror(rc));
      lua_pushstring(L, rc == BT_ENOMEM ? "nomem" : "io");
      release(st, DEFAULT_GRACE_MS);
      await_on(R, T, st, W_CLOSED, UINT64_MAX);
      return lbt_suspend(L, 3, run_closed_k);
    }
  }
  await_on(R, T, st, W_DONE, a.due);
  return lbt_suspend(L, 0, run_done_k);
}

/* ---- process.spawn and the Process methods ----------------------------------------- */

/* Not an await, but it must be called inside a task: baton.run, which owns the loop,
 * is then there to reap the child, and releases it when the main task ends. */
static int lproc_spawn(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  spawn_args a;
  check_opts(L, R, 0, &a);
  if (bt_rt_current(R->rt) == NULL)
    return luaL_error(L, "baton.process.spawn: not inside a baton task; run the code with "
                      "baton.run(function() ... end)");
  int ui = start(L, R, &a, 0, "baton.process.spawn");
  if (ui == 0) return 3;
  lua_pushvalue(L, ui);
  return 1;
}

static lproc_ud *check_ud(lua_State *L, int idx) {
  return lbt_check_type(L, idx, LBT_PROC);
}

/* The state of an open process; raises on use after close. */
static lproc *check_open(lua_State *L, int idx, const char *fname) {
  lproc_ud *ud = check_ud(L, idx);
  if (ud->st == NULL || ud->st->released)
    luaL_error(L, "%s: the process is closed", fname);
  return ud->st;
}

static int push_fail(lua_State *L, const char *msg, const char *kind) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, kind);
  return 3;
}

static const char *const op_names[] = {"proc:read_line", "proc:read", "proc:wait"};
static const int op_wants[] = {W_LINE, W_DATA, W_DONE};

/* Pushes the results of `op` if it can complete now and returns their count, else -1. */
static int try_op(lua_State *L, lproc *st, int op) {
  if (st->fail) return push_fail(L, "out of memory buffering the output", "nomem");
  if (op == OP_LINE) {
    size_t n;
    int rc = bt__lines_scan(&st->out, st->line_max, &n);
    if (rc == BT_LINE_OK) {
      push_out(L, st, n, 1);
      return 1;
    }
    if (rc == BT_LINE_TOO_LONG) {
      lua_pushnil(L);
      lua_pushfstring(L, "proc:read_line: a line exceeds %I bytes (max_line_bytes; or use "
                      "proc:read)", (lua_Integer)st->line_max);
      lua_pushliteral(L, "too_large");
      return 3;
    }
  }
  if (op == OP_LINE || op == OP_READ) {
    if (unread(st) > 0 && (op == OP_READ || st->out_eof)) {
      push_out(L, st, unread(st), 0);
      return 1;
    }
    if (st->out_eof) {
      lua_pushnil(L);
      return 1;
    }
    return -1;
  }
  if (st->exited && st->out_eof && st->err_eof) {
    lua_pushinteger(L, (lua_Integer)st->code);
    lua_pushinteger(L, st->signal);
    return 2;
  }
  return -1;
}

/* Registers the current task as the waiter for `op` and suspends. Stack: 1 = the userdata,
 * 2 = the deadline (an integer, -1 for none), kept for re-waits. */
static int op_suspend(lua_State *L, lbt_rt *R, lbt_task *T, lproc *st, int op);

static int op_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  int op = (int)ctx;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = (lbt_task *)bt_rt_current(R->rt);
  int s = lbt_fib(T)->status;
  if (s == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL)) return lbt_raise_cancelled(L);
  lproc *st = check_ud(L, 1)->st;
  if (s == BT_ECLOSED || st == NULL || st->released) return push_fail(L, "closed", "closed");
  if (s == BT_ETIMEDOUT) return push_fail(L, "timeout", "timeout");
  if (s != 0) return push_fail(L, bt_strerror(s), bt_err_name(s));
  int n = try_op(L, st, op);
  if (n >= 0) return n;
  /* Another task took what woke us (it read without waiting): wait again. */
  if (st->waiter != NULL)
    return luaL_error(L, "%s: another task is already waiting on this process", op_names[op]);
  return op_suspend(L, R, T, st, op);
}

static int op_suspend(lua_State *L, lbt_rt *R, lbt_task *T, lproc *st, int op) {
  lua_Integer d = lua_tointeger(L, 2);
  await_on(R, T, st, op_wants[op], d < 0 ? UINT64_MAX : (uint64_t)d);
  maybe_resume(st);  /* wait() and read_line() may lift the 1 MiB backlog limit */
  return lbt_suspend(L, op, op_k);
}

static int op_entry(lua_State *L, int op) {
  lbt_rt *R = lbt_R(L);
  const char *fname = op_names[op];
  lproc *st = check_open(L, 1, fname);
  uint64_t due = lbt_opt_due(L, R, 2);
  lua_settop(L, 1);
  if (st->waiter != NULL)
    return luaL_error(L, "%s: another task is already waiting on this process", fname);
  bt_task_t *cur = bt_rt_current(R->rt);
  if (cur != NULL && (cur->flags & BT_TASK_F_CANCEL)) return lbt_raise_cancelled(L);
  int n = try_op(L, st, op);
  if (n >= 0) return n;
  lbt_task *T = lbt_await_begin(L, R, fname);
  lua_pushinteger(L, due == UINT64_MAX ? -1 : (lua_Integer)due);
  return op_suspend(L, R, T, st, op);
}

static int lproc_read_line(lua_State *L) { return op_entry(L, OP_LINE); }
static int lproc_read(lua_State *L) { return op_entry(L, OP_READ); }
static int lproc_wait(lua_State *L) { return op_entry(L, OP_WAIT); }

static int write_fail(lua_State *L, int rc) {
  lua_pushnil(L);
  lua_pushfstring(L, "proc:write: %s", bt_strerror(rc));
  lua_pushstring(L, rc == BT_ENOMEM ? "nomem" : "io");
  return 3;
}

/* Queues pieces of s[*off, len) while they fit; 0 or the error of bt_proc_write. */
static int write_some(lproc *st, const char *s, size_t len, size_t *off) {
  while (*off < len && has_room(st, len - *off)) {
    size_t piece = len - *off;
    if (piece > st->wmax) piece = st->wmax;
    if (piece > WRITE_CHUNK) piece = WRITE_CHUNK;
    int rc = bt_proc_write(st->p, s + *off, piece);
    if (rc != 0) return rc;
    *off += piece;
  }
  return 0;
}

/* The writer leaves the FIFO; the next one may write. */
static void writer_done(lproc *st, wnode *n) {
  if (!n->in_fifo) return;
  unlink_writer(st, n);
  poke_writers(st);
}

/* Stack in the write continuation: 1 = the userdata, 2 = the string, 3 = the deadline (an
 * integer, -1 for none), 4 = the offset reached, 5 = the wnode. */
static int write_k(lua_State *L, int status, lua_KContext ctx);

static int write_wait(lua_State *L, lbt_rt *R, lbt_task *T, lproc *st, wnode *n) {
  lbt_fiber *f = lbt_fib(T);
  lua_Integer d = lua_tointeger(L, 3);
  f->wait.src = n;
  n->granted = 0;
  n->token = bt_task_wait(R->rt, &T->t, &f->wait, write_wait_cancel,
                          d < 0 ? UINT64_MAX : (uint64_t)d);
  poke_writers(st);  /* the head with room already (nothing else would wake it) */
  return lbt_suspend(L, 0, write_k);
}

static int write_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = (lbt_task *)bt_rt_current(R->rt);
  wnode *n = lua_touserdata(L, 5);
  lproc *st = n->st;  /* alive while n is in the FIFO: release empties it */
  int s = lbt_fib(T)->status;
  if (s == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL)) {
    writer_done(st, n);
    return lbt_raise_cancelled(L);
  }
  if (s == BT_ETIMEDOUT) {
    writer_done(st, n);
    return lbt_push_timeout(L);
  }
  if (!n->in_fifo || s == BT_ECLOSED) {  /* out of the FIFO: released, or stdin closed */
    writer_done(st, n);
    return push_fail(L, "proc:write: the process or its stdin was closed", "closed");
  }
  if (s != 0) {
    writer_done(st, n);
    return push_fail(L, bt_strerror(s), bt_err_name(s));
  }
  size_t len, off = (size_t)lua_tointeger(L, 4);
  const char *str = lua_tolstring(L, 2, &len);
  int rc = write_some(st, str, len, &off);
  if (rc != 0 || off == len) {
    writer_done(st, n);
    if (rc != 0) return write_fail(L, rc);
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)off);
  lua_replace(L, 4);
  n->left = len - off;
  return write_wait(L, R, T, st, n);
}

/* Queues s; waits (in a task, until the deadline) while the queue holds
 * max_write_queue_bytes, behind the writers already waiting. */
static int lproc_write(lua_State *L) {
  lproc *st = check_open(L, 1, "proc:write");
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lbt_rt *R = lbt_R(L);
  uint64_t due = lbt_opt_due(L, R, 3);
  if (!check_ud(L, 1)->has_stdin)
    return luaL_error(L, "proc:write: stdin is not a pipe (spawned with stdin = false)");
  lua_settop(L, 2);
  size_t off = 0;
  if (TAILQ_EMPTY(&st->writers)) {
    int rc = write_some(st, s, len, &off);
    if (rc != 0) return write_fail(L, rc);
    if (off == len) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  lbt_task *T = lbt_await_begin(L, R, "proc:write");
  lua_pushinteger(L, due == UINT64_MAX ? -1 : (lua_Integer)due);
  lua_pushinteger(L, (lua_Integer)off);
  wnode *n = lua_newuserdatauv(L, sizeof *n, 0);
  memset(n, 0, sizeof *n);
  n->st = st;
  n->task = &T->t;
  n->left = len - off;
  n->in_fifo = 1;
  TAILQ_INSERT_TAIL(&st->writers, n, link);
  return write_wait(L, R, T, st, n);
}

static int lproc_close_stdin(lua_State *L) {
  lproc *st = check_open(L, 1, "proc:close_stdin");
  if (check_ud(L, 1)->has_stdin) {
    fail_writers(st, BT_ECLOSED);
    bt_proc_close_stdin(st->p);
  }
  return 0;
}

static const struct {
  const char *name;
  int sig;
} signames[] = {{"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
                {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"STOP", SIGSTOP},
                {"CONT", SIGCONT}, {NULL, 0}};

static int check_signal(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return SIGTERM;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, idx);
    luaL_argcheck(L, n >= 0 && n < 65, idx, "signal number out of range");
    return (int)n;
  }
  const char *name = luaL_checkstring(L, idx);
  if (strncmp(name, "SIG", 3) == 0) name += 3;
  for (int i = 0; signames[i].name != NULL; i++)
    if (strcmp(name, signames[i].name) == 0) return signames[i].sig;
  return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s' (use a number or "
                       "TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT)",
                       lua_tostring(L, idx)));
}

static int lproc_kill(lua_State *L) {
  lproc *st = check_open(L, 1, "proc:kill");
  int sig = check_signal(L, 2);
  int rc = bt_proc_kill(st->p, sig);
  if (rc != 0 && rc != UV_ESRCH) {
    lua_pushnil(L);
    lua_pushfstring(L, "proc:kill: %s", bt_strerror(rc));
    lua_pushliteral(L, "io");
    return 3;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int lproc_pid(lua_State *L) {
  lua_pushinteger(L, check_ud(L, 1)->pid);
  return 1;
}

static int lproc_stderr(lua_State *L) {
  lproc *st = check_open(L, 1, "proc:stderr");
  lua_pushlstring(L, st->err.p, st->err.len);
  return 1;
}

static int close_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = (lbt_task *)bt_rt_current(R->rt);
  if (lbt_fib(T)->status == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL))
    return lbt_raise_cancelled(L);
  return 0;
}

/* Idempotent: the child (its group) gets SIGTERM now and SIGKILL after the grace period,
 * and is reaped by the loop (baton.run does not return before that). Never waits, unless
 * `wait` is true: then (in a task) it returns once the child is reaped and its handles are
 * closed, which takes at most about grace_ms more than the child's own exit. */
static int lproc_close(lua_State *L) {
  lproc_ud *ud = check_ud(L, 1);
  lua_Integer grace = luaL_optinteger(L, 2, DEFAULT_GRACE_MS);
  luaL_argcheck(L, grace >= 0, 2, "grace period must be >= 0 milliseconds");
  int wait = lua_toboolean(L, 3);
  lua_settop(L, 1);
  if (ud->st != NULL) release(ud->st, (uint64_t)grace);
  if (!wait || ud->st == NULL) return 0;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_await_begin(L, R, "proc:close");
  if (ud->st->waiter != NULL)
    return luaL_error(L, "proc:close: another task is already waiting for this process to "
                      "close");
  await_on(R, T, ud->st, W_CLOSED, UINT64_MAX);
  return lbt_suspend(L, 0, close_k);
}

/* __close: close() with the default grace period (argument 2 is the error, if any). */
static int lproc_close_scope(lua_State *L) {
  lproc_ud *ud = check_ud(L, 1);
  if (ud->st != NULL) release(ud->st, DEFAULT_GRACE_MS);
  return 0;
}

/* __gc: the state outlives the userdata until on_close, so unlink the two first. */
static int lproc_collect(lua_State *L) {
  lproc_ud *ud = check_ud(L, 1);
  lproc *st = ud->st;
  if (st == NULL) return 0;
  ud->st = NULL;
  st->ud = NULL;
  release(st, DEFAULT_GRACE_MS);
  return 0;
}

static int lproc_tostring(lua_State *L) {
  lproc_ud *ud = check_ud(L, 1);
  lproc *st = ud->st;
  if (st == NULL || st->released)
    lua_pushfstring(L, "baton.Process (pid %d, closed)", ud->pid);
  else if (!st->exited)
    lua_pushfstring(L, "baton.Process (pid %d, running)", ud->pid);
  else if (st->signal)
    lua_pushfstring(L, "baton.Process (pid %d, killed by signal %d)", ud->pid, st->signal);
  else
    lua_pushfstring(L, "baton.Process (pid %d, exited with code %d)", ud->pid, (int)st->code);
  return 1;
}

static void close_proc(void *p) {
  lproc_ud *ud = p;
  if (ud->st != NULL) release(ud->st, DEFAULT_GRACE_MS);
}

/* Releases every open process of this Lua state, as close() does; for baton.run once its
 * main task has ended, so that no child outlives it. Never waits, never raises. */
void lbt_close_procs(lua_State *L) { lbt_weak_set_each(L, PROCS_KEY, close_proc); }

void lbt_open_proc(lua_State *L, int rt_idx) {
  lbt_weak_set_new(L, PROCS_KEY);  /* every Process userdata, for lbt_close_procs */

  static const luaL_Reg methods[] = {
    {"write", lproc_write}, {"close_stdin", lproc_close_stdin},
    {"read_line", lproc_read_line}, {"read", lproc_read}, {"stderr", lproc_stderr},
    {"wait", lproc_wait}, {"kill", lproc_kill}, {"pid", lproc_pid}, {"close", lproc_close},
    {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__close", lproc_close_scope}, {"__gc", lproc_collect}, {"__tostring", lproc_tostring},
    {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_PROC_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"run", lproc_run}, {"spawn", lproc_spawn}, {NULL, NULL}};
  lua_newtable(L);
  lbt_set_funcs(L, rt_idx, funcs);
  lua_setfield(L, -2, "process");
}
