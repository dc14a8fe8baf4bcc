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
 * Errors (docs/errors.md): misuse raises, as "baton.process.run: bad argument #1 'cwd'
 * (expected string, got 1)" (bad options, use after close, a second reader, waiting outside
 * a task); the world's outcomes return nil, message, kind, detail ("io", "resource",
 * "timeout", "too_large", "closed"; detail { argv0 =, cwd =, errno = } when a program cannot
 * start, { argv0 =, pid =, timeout_ms = } for run's timeout, { limit =, stream = } for
 * too_large, { pid = } for the methods'). The prefix is the function as called:
 * baton.process.run, baton.process.spawn, baton.process:read_line, ... A nonzero exit or a
 * signal is not an error: it is in the results.
 *
 * API (options: argv as the positional entries; cwd = string; env = { NAME = "value" }
 * replacing the whole environment, PATH included; max_output_bytes = integer, 64 MiB;
 * process_group = boolean, true: the child leads a process group (and session) of its own,
 * and every signal below goes to that group):
 *   process.run{ argv..., stdin = string, timeout_ms = ms, ... }
 *       → { code, signal, stdout, stderr }
 *       | nil, msg, "io" | "resource" | "timeout" | "too_large", detail
 *       stdin defaults to /dev/null. code is 128 + signal for a child killed by a signal.
 *       Returns only once the child has exited and its handles are closed.
 *   process.spawn{ argv..., stdin = boolean (true: a pipe; false: /dev/null),
 *                  max_write_queue_bytes = n (1 MiB), max_line_bytes = n (1 MiB), ... }
 *       → proc | nil, msg, "io" | "resource", detail
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
  int too_large;          /* process.run: the stream (1, 2) that went over max, or 0 */
  int fail;               /* a buffer could not grow (out of memory) */
  uint64_t tr_start;      /* tracing: when it was spawned (ltrace.c clock), or 0 */
  char *tr_file;          /* tracing: its argv[0] (malloc'd), or NULL */
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

/* wait() can answer: the child exited and its output was read to the end, or to where
 * reading stopped at max_output_bytes (a line that long: the end would never come; what is
 * buffered stays readable). */
static int done(const lproc *st) {  /* (stopped: stderr is not read either) */
  return st->exited && ((st->out_eof && st->err_eof) || (st->stopped && unread(st) >= st->max));
}

static int satisfied(lproc *st) {
  if (st->fail) return st->want != W_CLOSED;
  switch (st->want) {
  case W_LINE: {
    size_t n;
    return st->out_eof || bt__lines_scan(&st->out, st->line_max, &n) != BT_LINE_NONE;
  }
  case W_DATA: return st->out_eof || unread(st) > 0;
  case W_DONE: return st->too_large || done(st);
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

int lbt_proc_wait_pid(const bt_wait_t *w) {
  if (w->cancel != proc_wait_cancel) return 0;  /* not a wait of await_on: src is not ours */
  const lproc *st = w->src;
  return st != NULL && st->ud != NULL ? st->ud->pid : 0;
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
      st->too_large = 1;  /* stdout */
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
      st->too_large = 2;  /* stderr */
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
  if (st->tr_start != 0) {  /* tracing: its run, on a track of its own */
    lbt_rt *R = bt_rt_data(st->rt);
    lbt_trace_process(R, bt_proc_pid(p), st->tr_file, st->tr_start, code, sig);
  }
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
  free(st->tr_file);
  bt__lines_free(&st->out);
  bt__buf_free(&st->err);
  free(st);
}

/* ---- options ------------------------------------------------------------------------ */

/* Misuse of the field `what` of the options (argument #1), whose value is at idx. */
static int bad_opt(lua_State *L, const char *fname, const char *what, const char *expected,
                   int idx) {
  return lbt_argerror_got(L, fname, 1, what, expected, lbt_push_got(L, idx));
}

static const char *check_string(lua_State *L, int idx, const char *fname, const char *what) {
  if (lua_type(L, idx) != LUA_TSTRING) bad_opt(L, fname, what, "string", idx);
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len)
    lbt_argerror_got(L, fname, 1, what, "a string without NUL bytes", "a string with one");
  return s;
}

/* Pushes onto the stack (kept until the spawn) a scratch userdata for argv, and for env a
 * table anchoring the "K=V" strings and a scratch userdata for the pointer array. */
static void check_argv(lua_State *L, const char *fname, spawn_args *a) {
  size_t n = lua_rawlen(L, 1);
  if (n == 0)
    lbt_argerror_got(L, fname, 1, "cmd", "the program as the first entry, e.g. "
                     "{ \"ls\", \"-l\" }", "no entries");
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TNUMBER) continue;  /* named options: checked elsewhere */
    lua_Integer i = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
    if (i < 1 || (lua_Unsigned)i > n)
      lbt_argerror_got(L, fname, 1, "cmd", "a sequence of arguments",
                       lua_pushfstring(L, "key %s next to %d entries", lua_tostring(L, -1),
                                       (int)n));
  }
  if (n > 100000)
    lbt_argerror_got(L, fname, 1, "cmd", "at most 100000 arguments",
                     lua_pushfstring(L, "%d", (int)n));
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
    size_t klen = 0;
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
    if (k == NULL || klen == 0 || strlen(k) != klen || memchr(k, '=', klen) != NULL)
      bad_opt(L, fname, "env", "variable names as keys", -2);
    int vt = lua_type(L, -1);
    if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
      bad_opt(L, fname, lua_pushfstring(L, "env.%s", k), "string", -2);
    lua_pushvalue(L, -1);
    size_t vlen;
    const char *v = lua_tolstring(L, -1, &vlen);  /* converts the copy, not the table's */
    if (strlen(v) != vlen)
      lbt_argerror_got(L, fname, 1, lua_pushfstring(L, "env.%s", k),
                       "a string without NUL bytes", "a string with one");
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
  return (size_t)lbt_opt_count(L, fname, 1, name, min, (lua_Integer)def);
}

static void check_opts(lua_State *L, lbt_rt *R, int run, spawn_args *a) {
  const char *fname = run ? "baton.process.run" : "baton.process.spawn";
  static const char *const run_known[] = {LBT_POSITIONAL, "stdin", "cwd", "env",
                                          "timeout_ms", "max_output_bytes", "process_group",
                                          NULL};
  static const char *const spawn_known[] = {LBT_POSITIONAL, "stdin", "cwd", "env",
                                            "max_output_bytes", "process_group",
                                            "max_write_queue_bytes", "max_line_bytes", NULL};
  lbt_check_opts(L, fname, 1, "cmd", run ? run_known : spawn_known);
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
  else if (t != LUA_TNIL) bad_opt(L, fname, "env", "a table { NAME = \"value\" }", -1);
  /* The env table, its "K=V" strings and their array stay on the stack until the spawn. */

  t = get_opt(L, "stdin");
  if (run) {
    if (t == LUA_TSTRING) {
      a->input = lua_tolstring(L, -1, &a->input_len);
      a->o.pipe_stdin = 1;
    } else if (t != LUA_TNIL) {
      bad_opt(L, fname, "stdin", "string", -1);
    }
  } else {
    if (t == LUA_TNIL) a->o.pipe_stdin = 1;
    else if (t == LUA_TBOOLEAN) a->o.pipe_stdin = lua_toboolean(L, -1);
    else bad_opt(L, fname, "stdin", "boolean", -1);
  }
  lua_pop(L, 1);

  a->max = opt_size(L, fname, "max_output_bytes", 0, a->max);
  if (!run) {
    a->wmax = opt_size(L, fname, "max_write_queue_bytes", 1, a->wmax);
    a->line_max = opt_size(L, fname, "max_line_bytes", 1, a->line_max);
  }
  a->o.no_process_group = !lbt_opt_bool(L, fname, 1, "process_group", 1);
  lua_Number ms = run ? lbt_opt_ms(L, fname, 1, "timeout_ms", -1) : -1;
  if (ms >= 0) a->due = bt_due(R->rt, (uint64_t)(ms + 0.999999));
}

/* The kind of a failed spawn: "resource" when the system or baton ran out of something
 * (descriptors, processes, memory), else "io" (no such program, no permission, a bad cwd,
 * ...). */
static const char *spawn_kind(int rc) {
  return strcmp(lbt_kind_of(rc), "resource") == 0 ? "resource" : "io";
}

/* { pid = } of the process whose userdata is at idx, pushed. */
static void push_pid_detail(lua_State *L, int idx) {
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, ((lproc_ud *)lua_touserdata(L, idx))->pid);
  lua_setfield(L, -2, "pid");
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
    lua_createtable(L, 0, 3);
    lua_pushstring(L, a->o.argv[0]);
    lua_setfield(L, -2, "argv0");
    if (a->o.cwd != NULL) {
      lua_pushstring(L, a->o.cwd);
      lua_setfield(L, -2, "cwd");
    }
    lua_pushstring(L, rc < 0 ? uv_err_name(rc) : "ENOMEM");
    lua_setfield(L, -2, "errno");
    lua_pushfstring(L, " (in '%s')", a->o.cwd);
    lbt_fail_detail(L, fname, spawn_kind(rc), -2, "cannot start '%s'%s: %s", a->o.argv[0],
                    a->o.cwd != NULL ? lua_tostring(L, -1) : "", bt_strerror(rc));
    return 0;
  }
  ud->st = st;
  st->ud = ud;
  ud->pid = bt_proc_pid(st->p);
  if (R->trace != NULL) {
    st->tr_start = lbt_trace_clock();
    size_t n = strlen(a->o.argv[0]) + 1;
    st->tr_file = malloc(n);
    if (st->tr_file != NULL) memcpy(st->tr_file, a->o.argv[0], n);
  }
  return ui;
}

/* ---- process.run -------------------------------------------------------------------- */

/* Stack in the continuations: 1 = options, 2 = the Process userdata, then the results. */

static int run_closed_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lbt_resumed(L, NULL, NULL, NULL);
  return (int)ctx;
}

static void release_run(void *st) { release(st, DEFAULT_GRACE_MS); }

/* nil, msg, "timeout", { argv0 =, pid =, timeout_ms = } for the run of options 1, ud 2. */
static int run_timeout(lua_State *L, const char *fname, const lproc *st) {
  lua_createtable(L, 0, 3);
  lua_rawgeti(L, 1, 1);
  const char *argv0 = lua_tostring(L, -1);
  lua_setfield(L, -2, "argv0");
  lua_pushinteger(L, ((lproc_ud *)lua_touserdata(L, 2))->pid);
  lua_setfield(L, -2, "pid");
  lua_pushliteral(L, "timeout_ms");
  lua_rawget(L, 1);
  lua_Number ms = lua_tonumber(L, -1);
  lua_setfield(L, -2, "timeout_ms");
  if (st->exited)  /* it did; what it started still holds its output open */
    return lbt_fail_detail(L, fname, "timeout", -1,
                           "'%s' exited (code %d), but its output was still open after "
                           "%.15g ms: a process it started holds it", argv0, (int)st->code,
                           (double)ms);
  return lbt_fail_detail(L, fname, "timeout", -1, "'%s' did not exit within %.15g ms", argv0,
                         (double)ms);
}

static int run_done_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  static const char fname[] = "baton.process.run";
  lbt_rt *R = lbt_R(L);
  lproc_ud *ud = lua_touserdata(L, 2);
  lproc *st = ud->st;  /* only this task releases a run's child: still there */
  lbt_task *T;
  int s = lbt_resumed_free(L, &T, release_run, st);
  lua_settop(L, 2);
  int n;
  if (s == BT_ETIMEDOUT) {
    n = run_timeout(L, fname, st);
  } else if (s != 0) {
    n = lbt_fail_status(L, fname, s);
  } else if (st->fail) {
    n = lbt_fail(L, fname, "out of memory buffering the output", "resource");
  } else if (st->too_large) {
    const char *stream = st->too_large == 2 ? "stderr" : "stdout";
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)st->max);
    lua_setfield(L, -2, "limit");
    lua_pushstring(L, stream);
    lua_setfield(L, -2, "stream");
    n = lbt_fail_detail(L, fname, "too_large", -1, "%s exceeds %zu bytes (max_output_bytes)",
                        stream, st->max);
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
    return lbt_suspend(L, 4, run_closed_k);
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
      int n = lbt_fail_detail(L, "baton.process.run", spawn_kind(rc), 0,
                              "cannot write stdin: %s", bt_strerror(rc));
      release(st, DEFAULT_GRACE_MS);
      await_on(R, T, st, W_CLOSED, UINT64_MAX);
      return lbt_suspend(L, n, run_closed_k);
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
  if (ui == 0) return 4;
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

static const char *const op_names[] = {"baton.process:read_line", "baton.process:read",
                                       "baton.process:wait"};
static const int op_wants[] = {W_LINE, W_DATA, W_DONE};

/* Pushes the results of `op` if it can complete now and returns their count, else -1. */
static int try_op(lua_State *L, lproc *st, int op) {
  if (st->fail) return lbt_fail(L, op_names[op], "out of memory buffering the output", "resource");
  if (op == OP_LINE) {
    size_t n;
    int rc = bt__lines_scan(&st->out, st->line_max, &n);
    if (rc == BT_LINE_OK) {
      push_out(L, st, n, 1);
      return 1;
    }
    if (rc == BT_LINE_TOO_LONG) {
      lua_createtable(L, 0, 1);
      lua_pushinteger(L, (lua_Integer)st->line_max);
      lua_setfield(L, -2, "limit");
      return lbt_fail_detail(L, op_names[op], "too_large", -1, "a line exceeds %zu bytes "
                             "(max_line_bytes; or use proc:read)", st->line_max);
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
  if (done(st)) {
    lua_pushinteger(L, (lua_Integer)st->code);
    lua_pushinteger(L, st->signal);
    return 2;
  }
  return -1;
}

/* Registers the current task as the waiter for `op` and suspends. Stack: 1 = the userdata,
 * 2 = the deadline (an integer, -1 for none), kept for re-waits, 3 = the timeout (ms or
 * nil). */
static int op_suspend(lua_State *L, lbt_rt *R, lbt_task *T, lproc *st, int op);

static int op_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  int op = (int)ctx;
  lbt_rt *R = lbt_R(L);
  lbt_task *T;
  int s = lbt_resumed(L, &T, NULL, NULL);
  lproc *st = check_ud(L, 1)->st;
  const char *fname = op_names[op];
  if (s == BT_ECLOSED || st == NULL || st->released) {
    push_pid_detail(L, 1);
    return lbt_fail_detail(L, fname, "closed", -1, "the process was closed while waiting");
  }
  if (s == BT_ETIMEDOUT) return lbt_fail_timeout(L, fname, lua_tonumber(L, 3));
  if (s != 0) return lbt_fail_status(L, fname, s);
  lua_settop(L, 3);
  int n = try_op(L, st, op);
  if (n >= 0) return n;
  /* Another task took what woke us (it read without waiting): wait again. */
  lbt_sole_waiter(L, fname, st->waiter != NULL, "process");
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
  uint64_t due = lbt_arg_due(L, R, fname, 2);
  lua_settop(L, 2);
  lbt_sole_waiter(L, fname, st->waiter != NULL, "process");
  int n = try_op(L, st, op);
  if (n >= 0) return n;
  lbt_task *T = lbt_await_begin(L, R, fname);
  lbt_insert_due(L, 2, due);  /* 2: the deadline, 3: the timeout */
  return op_suspend(L, R, T, st, op);
}

static int lproc_read_line(lua_State *L) { return op_entry(L, OP_LINE); }
static int lproc_read(lua_State *L) { return op_entry(L, OP_READ); }
static int lproc_wait(lua_State *L) { return op_entry(L, OP_WAIT); }

static const char WRITE[] = "baton.process:write";

/* Broken pipe and the like: "io" (the child closed its stdin or exited), or "resource". */
static int write_fail(lua_State *L, int rc) {
  push_pid_detail(L, 1);
  return lbt_fail_detail(L, WRITE, spawn_kind(rc), -1, "%s", bt_strerror(rc));
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

static void leave_fifo(void *n) { writer_done(((wnode *)n)->st, n); }

/* Stack in the write continuation: 1 = the userdata, 2 = the string, 3 = the deadline (an
 * integer, -1 for none), 4 = the offset reached, 5 = the wnode, 6 = the timeout (ms or
 * nil). */
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
  wnode *n = lua_touserdata(L, 5);
  lproc *st = n->st;  /* alive while n is in the FIFO: release empties it */
  lbt_task *T;
  int s = lbt_resumed_free(L, &T, leave_fifo, n);
  if (s != 0 || !n->in_fifo) {
    writer_done(st, n);
    if (s == BT_ETIMEDOUT) return lbt_fail_timeout(L, WRITE, lua_tonumber(L, 6));
    if (s == 0 || s == BT_ECLOSED) {  /* out of the FIFO: released, or stdin closed */
      push_pid_detail(L, 1);
      return lbt_fail_detail(L, WRITE, "closed", -1, "the process or its stdin was closed");
    }
    return lbt_fail_status(L, WRITE, s);
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
  lproc *st = check_open(L, 1, WRITE);
  size_t len;
  const char *s = lbt_arg_string(L, WRITE, 2, "s", &len);
  lbt_rt *R = lbt_R(L);
  uint64_t due = lbt_arg_due(L, R, WRITE, 3);
  if (!check_ud(L, 1)->has_stdin)
    return luaL_error(L, "%s: stdin is not a pipe (spawned with stdin = false)", WRITE);
  lua_settop(L, 3);
  lua_Number ms = lua_tonumber(L, 3);
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
  lbt_task *T = lbt_await_begin(L, R, WRITE);
  lua_pushinteger(L, due == UINT64_MAX ? -1 : (lua_Integer)due);
  lua_pushinteger(L, (lua_Integer)off);
  wnode *n = lua_newuserdatauv(L, sizeof *n, 0);
  memset(n, 0, sizeof *n);
  n->st = st;
  n->task = &T->t;
  n->left = len - off;
  n->in_fifo = 1;
  TAILQ_INSERT_TAIL(&st->writers, n, link);
  lua_pushnumber(L, ms);  /* 6: for the timeout's message */
  return write_wait(L, R, T, st, n);
}

static int lproc_close_stdin(lua_State *L) {
  lproc *st = check_open(L, 1, "baton.process:close_stdin");
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

static const char KILL[] = "baton.process:kill";

static int check_signal(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return SIGTERM;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n = lbt_arg_count(L, KILL, idx, "sig", 0, -1);
    if (n > 64) lbt_argerror(L, KILL, idx, "sig", "a signal number 0..64");
    return (int)n;
  }
  const char *name = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : "";
  if (strncmp(name, "SIG", 3) == 0) name += 3;
  for (int i = 0; signames[i].name != NULL; i++)
    if (strcmp(name, signames[i].name) == 0) return signames[i].sig;
  return lbt_argerror(L, KILL, idx, "sig", "a signal number or one of TERM, KILL, INT, HUP, "
                      "QUIT, USR1, USR2, STOP, CONT");
}

static int lproc_kill(lua_State *L) {
  lproc *st = check_open(L, 1, KILL);
  int sig = check_signal(L, 2);
  int rc = bt_proc_kill(st->p, sig);
  if (rc != 0 && rc != UV_ESRCH) {
    push_pid_detail(L, 1);
    return lbt_fail_detail(L, KILL, "io", -1, "%s", bt_strerror(rc));
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int lproc_pid(lua_State *L) {
  lua_pushinteger(L, check_ud(L, 1)->pid);
  return 1;
}

static int lproc_stderr(lua_State *L) {
  lproc *st = check_open(L, 1, "baton.process:stderr");
  lua_pushlstring(L, st->err.p, st->err.len);
  return 1;
}

static int close_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lbt_resumed(L, NULL, NULL, NULL);
  return 0;
}

/* Idempotent: the child (its group) gets SIGTERM now and SIGKILL after the grace period,
 * and is reaped by the loop (baton.run does not return before that). Never waits, unless
 * `wait` is true: then (in a task) it returns once the child is reaped and its handles are
 * closed, which takes at most about grace_ms more than the child's own exit. */
static int lproc_close(lua_State *L) {
  static const char fname[] = "baton.process:close";
  lproc_ud *ud = check_ud(L, 1);
  lua_Integer grace = lbt_arg_count(L, fname, 2, "grace_ms", 0, DEFAULT_GRACE_MS);
  int wait = lua_toboolean(L, 3);
  lua_settop(L, 1);
  if (ud->st != NULL) release(ud->st, (uint64_t)grace);
  if (!wait || ud->st == NULL) return 0;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_await_begin(L, R, fname);
  if (ud->st->waiter != NULL)
    return luaL_error(L, "%s: another task is already waiting for this process to close",
                      fname);
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
