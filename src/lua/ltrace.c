/*
 * ltrace.c — baton.trace: a timeline of the run as Chrome trace-event JSON (Perfetto,
 * chrome://tracing), written by the streaming writer of src/core/trace.c.
 *
 * What is written: one track per task (tid = task id, named "<id> <name>" when the task
 * ends) holding one complete span (ph "X", cat "task") from its first resume to the end of
 * its body, with args.status done | failed | cancelled; inside it one span per wait, from
 * the moment the task parked to the moment it was resumed, named as baton.tasks() words
 * the wait ("sleep until +100 ms", "http GET host/path", ...) and with the first word as
 * cat (an HTTP request is cat "http"); activity spans (baton.activity: MCP calls); instant
 * events (limiter decisions, baton.trace.instant); and one track per child process with a
 * span from spawn to exit. A task that never ran (aborted while pending) has no span.
 *
 * Cost. Off, each hook site in the binding is one test of R->trace (a pointer the hot
 * paths already have in hand), predicted not taken. On, a resume costs two clock reads and
 * a wait one description (a Lua string built, then copied with strdup) and one event. The
 * per-task state lives in the fiber (lbaton.h: tr_*), valid only while its tr_sess is the
 * runtime's trace session: a task that started before the trace did is adopted at its
 * next resume (its span is clipped to the trace's start), and stop frees what fibers hold.
 *
 * BATON_TRACE=<path> in the environment starts a trace when the module is opened (the
 * `baton` executable, or require "baton") and is then removed from the environment, so that
 * child processes (another baton) do not write over the file; the runtime's closing ends it. Errors: start
 * returns nil, msg, "io" when the file cannot be opened; stop the same for a write error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbaton.h"
#include "trace.h"

#define PROC_TRACK_BASE 1000000000ull  /* child processes' tracks: base + pid */

uint64_t lbt_trace_clock(void) { return bt__trace_now(); }

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p != NULL) memcpy(p, s, n);
  return p;
}

static void fiber_forget(lbt_fiber *f) {
  free(f->tr_what);
  free(f->tr_name);
  f->tr_what = f->tr_name = NULL;
  f->tr_wait = 0;
}

/* The fiber's state for this trace session: a fiber of another session is adopted. */
static void adopt(lbt_rt *R, lbt_fiber *f) {
  if (f->tr_sess == R->trace_sess) return;
  f->tr_what = f->tr_name = NULL;  /* freed by the stop that ended that session */
  f->tr_sess = R->trace_sess;
  f->tr_start = 0;  /* clipped to the trace's start */
  f->tr_wait = 0;
}

/* The first word of a description, if it is a plain word, else "wait". */
static void cat_of(const char *what, char *cat, size_t n) {
  size_t c = strcspn(what, " ");
  if (c == 0 || c >= n || memchr(what, '.', c) != NULL) {
    strcpy(cat, "wait");
    return;
  }
  memcpy(cat, what, c);
  cat[c] = '\0';
}

void lbt_trace_resume(lbt_rt *R, lbt_task *T, lbt_fiber *f) {
  uint64_t now = bt__trace_now();
  if (lua_status(f->co) == LUA_OK) {  /* first run: the function is at the bottom */
    if (f->tr_sess == R->trace_sess) fiber_forget(f);
    f->tr_sess = R->trace_sess;
    f->tr_start = now;
    f->tr_wait = 0;
    f->tr_what = NULL;
    f->tr_name = NULL;
    lua_Debug ar;
    lua_State *L = R->L;
    if (lua_checkstack(f->co, 1) && lua_checkstack(L, 2)) {
      lua_pushvalue(f->co, 1);
      lua_xmove(f->co, L, 1);
      if (lua_isfunction(L, -1)) {
        lua_getinfo(L, ">S", &ar);
        lua_pushfstring(L, "%s:%d", ar.short_src, ar.linedefined);
        f->tr_name = dup_str(lua_tostring(L, -1));
      }
      lua_settop(L, lua_gettop(L) - 1);
    }
    (void)T;
    return;
  }
  adopt(R, f);
  if (f->tr_wait != 0 && f->tr_what != NULL) {
    char cat[32];
    cat_of(f->tr_what, cat, sizeof cat);
    bt__trace_span(R->trace, T->t.id, f->tr_what, cat, f->tr_wait, now, NULL);
  }
  free(f->tr_what);
  f->tr_what = NULL;
  f->tr_wait = 0;
}

void lbt_trace_suspend(lbt_rt *R, lbt_task *T, lbt_fiber *f, int rc) {
  adopt(R, f);
  uint64_t now = bt__trace_now();
  lua_State *L = R->L;
  if (rc == LUA_YIELD) {
    if (T->t.state != BT_TASK_WAITING) return;  /* a yield: not a wait */
    int top = lua_gettop(L);
    if (!lua_checkstack(L, 10)) return;
    /* A wait inside baton.activity is worded by the activity's label: the activity's own
     * span (lintrospect.c), which encloses it, already says that; no second span. */
    int labelled = lbt_describe_wait(L, R, f);
    free(f->tr_what);
    f->tr_what = labelled ? NULL : dup_str(lua_tostring(L, -1));
    f->tr_wait = labelled ? 0 : now;
    lua_settop(L, top);
    return;
  }
  const char *status = "done";
  if (T->t.flags & BT_TASK_F_CANCEL) status = "cancelled";
  else if (rc != LUA_OK) status = lbt_is_cancel_error(f->co, -1) ? "cancelled" : "failed";
  int top = lua_gettop(L);
  const char *name = NULL;
  if (T->ref != LUA_NOREF && lua_checkstack(L, 4)) {
    lbt_push_task_name(L, R, T);
    name = lua_tostring(L, -1);
  }
  if (T == R->main && (name == NULL || strncmp(name, "[C]", 3) == 0)) name = "main";
  if (name == NULL) name = f->tr_name;
  char fallback[32];
  if (name == NULL) {
    snprintf(fallback, sizeof fallback, "task %u", (unsigned)T->t.id);
    name = fallback;
  }
  bt__trace_task(R->trace, T->t.id, name, f->tr_start, now, status);
  lua_settop(L, top);
  fiber_forget(f);
}

void lbt_trace_instant(lbt_rt *R, const char *name, const char *cat, const char *args) {
  if (R->trace == NULL) return;
  lbt_task *T = lbt_current(R);
  bt__trace_instant(R->trace, T != NULL ? T->t.id : 0, name, cat, bt__trace_now(), args);
}

void lbt_trace_process(lbt_rt *R, int pid, const char *file, uint64_t begin_ns, int64_t code,
                       int signal) {
  if (R->trace == NULL) return;
  uint64_t tid = PROC_TRACK_BASE + (uint64_t)(pid > 0 ? pid : 0);
  char name[300], args[600];
  size_t n = 0;
  snprintf(name, sizeof name, "process %d %s", pid, file ? file : "");
  bt__trace_track(R->trace, tid, name);
  snprintf(name, sizeof name, "process %s", file ? file : "");
  n = (size_t)snprintf(args, sizeof args, "{\"pid\":%d,\"code\":%lld,\"signal\":%d,\"file\":",
                       pid, (long long)code, signal);
  bt__trace_json_str(args, sizeof args - 2, &n, file ? file : "");
  args[n++] = '}';
  args[n] = '\0';
  bt__trace_span(R->trace, tid, name, "process", begin_ns, bt__trace_now(), args);
}

/* ---- start, stop -------------------------------------------------------------------- */

static int trace_start(lbt_rt *R, const char *path, int *err) {
  bt__trace_t *tr = bt__trace_open(path, "baton", err);
  if (tr == NULL) return -1;
  R->trace = tr;
  R->trace_sess++;
  if (R->trace_sess == 0) R->trace_sess = 1;  /* 0: a fiber never traced */
  return 0;
}

/* Ends the trace: frees what fibers hold, writes the closing bracket. */
static int trace_stop(lbt_rt *R) {
  bt__trace_t *tr = R->trace;
  if (tr == NULL) return 0;
  lbt_fiber *f;
  LIST_FOREACH(f, &R->fibers, all) {
    if (f->tr_sess == R->trace_sess) fiber_forget(f);
  }
  R->trace = NULL;
  return bt__trace_close(tr);
}

/* The runtime's closing: no Lua to warn through any more, so a write error nobody was told
 * of (the end of a run warns) goes to stderr. */
void lbt_trace_close(lbt_rt *R) {
  if (R->trace == NULL) return;
  int told = bt__trace_error_taken(R->trace);
  int rc = trace_stop(R);
  if (rc != 0 && !told)
    fprintf(stderr, "baton: warning: baton.trace: the trace could not be written: %s\n",
            uv_strerror(rc));
}

void lbt_trace_flush(lbt_rt *R) {
  if (R->trace == NULL) return;
  bt__trace_flush(R->trace);
  int e = bt__trace_take_error(R->trace);
  if (e != 0)
    lbt_warn(R, "baton.trace: the trace cannot be written (%s): its events are dropped until "
             "baton.trace.stop()", uv_strerror(e));
}

static int ltrace_start(lua_State *L) {
  static const char fname[] = "baton.trace.start";
  lbt_rt *R = lbt_R(L);
  size_t plen = 0;
  const char *path = lbt_arg_string(L, fname, 1, "path", &plen);
  if (strlen(path) != plen || plen == 0)  /* fopen would write another file, or none */
    lbt_argerror(L, fname, 1, "path", "a non-empty path without NUL");
  if (R->trace != NULL)
    return luaL_error(L, "%s: a trace is already being written (baton.trace.stop() first)",
                      fname);
  int err = 0;
  if (trace_start(R, path, &err) != 0) {
    return lbt_fail_detail(L, fname, err == UV_ENOMEM ? "resource" : "io", 0, "%s: %s", path,
                           uv_strerror(err));
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int ltrace_stop(lua_State *L) {
  static const char fname[] = "baton.trace.stop";
  lbt_rt *R = lbt_R(L);
  if (R->trace == NULL) {
    lua_pushinteger(L, 0);
    return 1;
  }
  lua_Integer n = (lua_Integer)bt__trace_count(R->trace);
  int rc = trace_stop(R);
  if (rc != 0) return lbt_fail(L, fname, uv_strerror(rc), "io");
  lua_pushinteger(L, n);
  return 1;
}

static int ltrace_active(lua_State *L) {
  lua_pushboolean(L, lbt_R(L)->trace != NULL);
  return 1;
}

/* baton.trace.instant(name[, args]): args a table of string, number and boolean values.
 * The args object is valid JSON whatever they hold: a key is cut to leave room for its
 * value, pairs that do not fit in ARGS_MAX bytes are left out, a number that JSON cannot
 * write (nan, inf) is written as a string. */
#define ARGS_MAX 1024
static void put_num(lua_State *L, char *args, size_t *n) {
  char num[48];
  lua_Number v = lua_tonumber(L, -1);
  if (lua_isinteger(L, -1))
    snprintf(num, sizeof num, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, -1));
  else if (v != v)
    snprintf(num, sizeof num, "\"nan\"");
  else if (v == (lua_Number)HUGE_VAL || v == -(lua_Number)HUGE_VAL)
    snprintf(num, sizeof num, v > 0 ? "\"inf\"" : "\"-inf\"");
  else
    snprintf(num, sizeof num, "%.17g", (double)v);
  size_t l = strlen(num);
  memcpy(args + *n, num, l);  /* the caller left 64 bytes */
  *n += l;
}

static int ltrace_instant(lua_State *L) {
  static const char fname[] = "baton.trace.instant";
  lbt_rt *R = lbt_R(L);
  const char *name = lbt_arg_string(L, fname, 1, "name", NULL);
  int has_args = !lua_isnoneornil(L, 2);
  if (has_args && !lua_istable(L, 2)) lbt_argerror(L, fname, 2, "args", "table or nil");
  if (R->trace == NULL) return 0;
  char args[ARGS_MAX];
  size_t n = 0;
  if (has_args) {
    args[n++] = '{';
    lua_pushnil(L);
    while (lua_next(L, 2) != 0) {
      /* a pair needs room for a key of 2+ bytes, ':', a value of 64 at most or a string's
       * quotes, ',' and the closing '}' */
      if (lua_type(L, -2) == LUA_TSTRING && n + 80 < ARGS_MAX) {
        size_t at = n;
        if (n > 1) args[n++] = ',';
        size_t kcap = n + 256 < ARGS_MAX - 72 ? n + 256 : ARGS_MAX - 72;
        bt__trace_json_str(args, kcap, &n, lua_tostring(L, -2));
        args[n++] = ':';
        int t = lua_type(L, -1);
        if (t == LUA_TNUMBER) {
          put_num(L, args, &n);
        } else if (t == LUA_TBOOLEAN) {
          const char *b = lua_toboolean(L, -1) ? "true" : "false";
          memcpy(args + n, b, strlen(b));
          n += strlen(b);
        } else {
          const char *v = t == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1);
          bt__trace_json_str(args, ARGS_MAX - 2, &n, v);
        }
        if (n >= ARGS_MAX - 2) n = at;  /* (cannot happen: the string was cut to fit) */
      }
      lua_pop(L, 1);
    }
    args[n++] = '}';
    args[n] = '\0';
  }
  lbt_trace_instant(R, name, "user", has_args ? args : NULL);
  return 0;
}

void lbt_open_trace(lua_State *L, int rt_idx) {
  static const luaL_Reg funcs[] = {{"start", ltrace_start}, {"stop", ltrace_stop},
                                   {"active", ltrace_active}, {"instant", ltrace_instant},
                                   {NULL, NULL}};
  lua_newtable(L);
  lbt_set_funcs(L, rt_idx, funcs);
  lua_setfield(L, -2, "trace");
  const char *path = getenv("BATON_TRACE");
  lbt_rt *R = lua_touserdata(L, rt_idx);
  if (path != NULL && *path != '\0' && R->trace == NULL) {
    int err = 0;
    if (trace_start(R, path, &err) != 0)
      lbt_warn(R, "BATON_TRACE=%s: cannot write the trace: %s", path, uv_strerror(err));
    /* consumed: a child process (another baton) must not write over the same file */
    unsetenv("BATON_TRACE");
  }
}
