/*
 * lbaton.h — shared by the Lua bindings (src/lua/l*.c): the per-state runtime, tasks as
 * userdata with lazily attached coroutines ("fibers"), and the await protocol.
 *
 * Await protocol. A binding that waits:
 *   1. calls lbt_await_begin(L, R, "name") — raises unless the caller is a baton task on its
 *      own coroutine and may yield, and raises the cancellation error if the task is already
 *      cancelled (cancellation is level-triggered);
 *   2. registers with a core source using the fiber's storage (fib->wait, fib->joiner, ...)
 *      and bt_task_wait(), or calls bt_task_yield();
 *   3. returns lbt_suspend(L, ctx, k). When the task is resumed, k runs with fib->status set
 *      to what the wake delivered (0, BT_ETIMEDOUT, BT_ECANCELED, BT_ECLOSED, ...); k undoes
 *      what it must (e.g. gives back a granted permit) before raising on cancellation.
 */
#ifndef BATON_LBATON_H
#define BATON_LBATON_H

#include <lauxlib.h>
#include <lua.h>

#include "internal.h"

#define BT_RT_MT     "baton.Runtime"
#define BT_TASK_MT   "baton.Task"
#define BT_TASK_GC_MT "baton.Task.failed"
#define BT_GROUP_MT  "baton.Group"
#define BT_SEM_MT    "baton.Semaphore"
#define BT_PERMIT_MT "baton.Permit"
#define BT_PERMIT_FREE_MT "baton.Permit.released"
#define BT_BUDGET_MT "baton.Budget"
#define BT_PROC_MT   "baton.Process"
#define BT_ERROR_MT  "baton.Error"

typedef struct lbt_rt lbt_rt;
typedef struct lbt_signals lbt_signals;

/* The classes of baton userdata (and of the one table class, the limiter's grant). Each has
 * a metatable made once per state by lbt_new_class, whose address the runtime caches: a
 * type check is then a metatable fetch and a pointer comparison, not a registry lookup by
 * name. Keep in step with the names in lbaton.c. */
typedef enum lbt_class {
  LBT_TASK, LBT_TASK_GC, LBT_GROUP, LBT_SEM, LBT_PERMIT, LBT_PERMIT_FREE, LBT_BUDGET, LBT_PROC,
  LBT_FUTURE,
  LBT_ENGINE, LBT_LIMITER, LBT_LIM_PERMIT, LBT_LIM_GRANT, LBT_RETRY, LBT_BREAKER,
  LBT_BRK_BACKEND, LBT_BRK_CALL, LBT_DEDUP, LBT_DEDUP_WAITER, LBT_BP, LBT_BP_PERMIT,
  LBT_PIPELINE, LBT_RUNNER, LBT_HTTP_STREAM, LBT_HTTP_XFER,
  LBT_CHAN, LBT_WATCH, LBT_NOTIFY,  /* lchan.c, lsync.c */
  LBT_RATELIMIT,  /* lratelimit.c */
  LBT_REDIS, LBT_REDIS_CALL, LBT_REDIS_SUB,  /* lredis.c */
  LBT_PROGRESS,  /* lprogress.c */
  LBT_NCLASSES
} lbt_class;

/* A closable class's userdata opens with its handle: a pointer to what it owns (or to its
 * own embedded storage) that is NULL once the object is closed or finalized. Its __gc may
 * be called by hand (getmetatable(x).__gc(x)), and the collector finalizes an object before
 * the finalizer of an older object that still uses it, so every method checks the handle
 * (lbt_check_handle) before it touches what the handle points to. */
#define LBT_HANDLE_FIRST(type, field) \
  _Static_assert(offsetof(type, field) == 0, #type ": the handle must come first")

/* A semaphore userdata (lsem.c). The semaphore lives in the userdata itself, so that
 * whatever holds the userdata (a permit's or a task's user value, a group's keep table)
 * keeps the semaphore's memory valid after it was finalized: a permit released late, or a
 * bounded task ending, gives back to a closed semaphore, never to freed memory. */
typedef struct lsem {
  bt_sem_t *s;              /* &storage while open, NULL once finalized */
  bt_sem_t storage;
  size_t permits;           /* permit userdata still held: while > 0, anchored at `ref` */
  int ref;
  const char *name;         /* baton.semaphore(n, { name = }): user value 1 holds it; or NULL */
} lsem;

/* A budget userdata (lsem.c); other bindings may accept one (baton.engine{ budget = }).
 * Embedded for the same reason: a permit or an engine holding a key keeps the budget. */
typedef struct lbudget {
  bt_budget_t *b;           /* &storage while open, NULL once finalized */
  bt_budget_t storage;
  size_t permits;           /* as lsem's */
  int ref;
} lbudget;

/* A group userdata (lgroup.c). */
struct lgroup {
  bt_group_t *g;            /* &storage while open, NULL once closed */
  bt_gate_t *limit;         /* gate of the group's `limit`, or NULL */
  LIST_ENTRY(lgroup) link;  /* in the runtime's list of open groups */
  const char *name;         /* baton.group{ name = }: the keep table holds it; or NULL */
  bt_group_t storage;
};
typedef struct lbt_task lbt_task;

/* A coroutine with the wait storage a running task needs. Taken from the runtime's pool when
 * a task first runs and given back when it ends, so pending and finished tasks cost no
 * coroutine. */
typedef struct lbt_fiber {
  struct lbt_fiber *next_free;
  LIST_ENTRY(lbt_fiber) all;  /* every fiber of the runtime, freed when it closes */
  lua_State *co;
  int co_ref;             /* the coroutine's anchor slot */
  lbt_task *task;
  int status;             /* what the last wake delivered */
  lua_Integer kdata;      /* a continuation's own state, from its suspend to its resume */
  const char *what;       /* the function of the last lbt_await_begin (a static string): what
                           * the task waits on while it waits (baton.tasks, deadlock error) */
  uint64_t started;       /* loop ms when its task first ran (baton.tasks: age_ms) */
  /* Tracing (ltrace.c), valid only while tr_sess is the runtime's trace session: when the
   * task started and its current wait began (uv_hrtime ns), what it waits on, its default
   * name (both malloc'd, freed when written or when the trace stops). */
  uint64_t tr_start, tr_wait;
  char *tr_what, *tr_name;
  uint32_t tr_sess;
  bt_wait_t wait;
  bt_joiner_t joiner;
  union {                 /* one wait at a time: a semaphore's, or a channel's, a notify's */
    bt_sem_waiter_t semw;
    bt_waiter_t waiter;
  };
} lbt_fiber;

/* A task's fiber, NULL unless it is running or suspended. The Lua layer keeps t.wait
 * pointing at its fiber's wait record for as long as it holds one; the core reads t.wait
 * only while the task waits. This saves a pointer per task. */
#define lbt_fib(T) ((T)->t.wait ? bt_container_of((T)->t.wait, lbt_fiber, wait) : NULL)

struct lbt_task {
  bt_task_t t;
  int ref;                /* anchor slot (ltask.c), LUA_NOREF when not anchored */
  uint16_t nargs;         /* arguments kept in user values 2..nargs+1 until first run */
  uint8_t gated;          /* last user value is the gate's semaphore */
};

struct lbt_rt {
  bt_rt_t *rt;
  lua_State *L;           /* the main thread */
  lua_State *from;        /* the thread running the loop (inside baton.run) */
  int anchors;            /* registry ref: table holding the anchor stacks (ltask.c) */
  struct lbt_astack *astacks;  /* threads whose stacks anchor tasks and coroutines */
  int nastacks;
  LIST_HEAD(, lbt_fiber) fibers;
  int *free_slots;        /* reusable anchor slots (a stack) */
  int nfree, cap_free, top_slot;
  lbt_fiber *pool;        /* free fibers */
  int npool;
  int running;            /* inside baton.run */
  lbt_task *main;         /* the current baton.run's main task */
  bt_group_t *root;       /* tasks of baton.spawn */
  size_t live;            /* tasks spawned and not finished */
  LIST_HEAD(, lgroup) groups;  /* open groups, aborted when baton.run ends */
  lbt_signals *sig;          /* lsignal.c: watchers and handlers, NULL until first needed */
  int (*take_sigint)(void);  /* CLI, while the REPL runs: SIGINT goes to it first (1: taken) */
  int exit_status;        /* -1, or the status the run ends the process with (lsignal.c) */
  int exit_signal;        /* the signal whose default action ended the run, or 0 */
  int exit_close;         /* baton.exit(code, true): close the state before exiting */
  size_t *unjoined;       /* CLI: counts failed tasks reported as never joined, or NULL */
  int cli;                /* inside the baton executable: baton.run in a task calls fn */
  int closed;
  const void *classes[LBT_NCLASSES];  /* each class's metatable (lbt_check_type) */
  int class_refs[LBT_NCLASSES];       /* registry refs of the same (lbt_set_class) */
  void *open_memo[LBT_NCLASSES];      /* lbt_check_handle's last open object, per class */
  struct bt__trace *trace;  /* ltrace.c: the open trace writer, or NULL (tracing off) */
  uint32_t trace_sess;      /* bumped by each baton.trace.start */
};

/* The runtime of L's state. Every binding function has the runtime userdata as upvalue 1,
 * but reading an upvalue through the API costs some thirty instructions, and this is asked
 * on every call: so lbt_open also keeps the pointer in the state's extra space
 * (LUA_EXTRASPACE, which Lua copies from the main thread into every thread it creates),
 * read here with one load. A thread made before baton was loaded holds NULL there and reads
 * the upvalue. A state whose extra space was not NULL when baton was loaded (its host uses
 * it, or it holds stale bytes) is left alone, and from then on every state of the process
 * reads the upvalue (lbt_extra_foreign): a host must not write the extra space of a state
 * after loading baton into it. */
extern _Atomic int lbt_extra_foreign;
static inline lbt_rt *lbt_R(lua_State *L) {
  lbt_rt *R = *(lbt_rt **)lua_getextraspace(L);
  if (R != NULL && !lbt_extra_foreign) return R;
  return (lbt_rt *)lua_touserdata(L, lua_upvalueindex(1));
}

/* ltask.c */
void lbt_fiber_free(lbt_rt *R, lbt_fiber *f);
lbt_task *lbt_task_new(lua_State *L, lbt_rt *R, int fn_idx, int nargs, bt_group_t *g,
                       bt_gate_t *gate, int sem_idx);
lbt_task *lbt_check_task(lua_State *L, int idx);
void lbt_push_task(lua_State *L, lbt_rt *R, lbt_task *T);
/* Writes "task N name (what it waits on), ..." for every waiting task into buf
 * (NUL-terminated, cut at n bytes), using L's stack for the names; the deadlock error of
 * baton.run. */
void lbt_describe_waiting(lua_State *L, lbt_rt *R, char *buf, size_t n);
int lbt_tasks(lua_State *L);  /* baton.tasks */
/* Pushes the name of task T (set, or the default from its function; nil if none). */
void lbt_push_task_name(lua_State *L, lbt_rt *R, lbt_task *T);
/* Sets the name of the task at idx to the string at name_idx. */
void lbt_task_set_name(lua_State *L, int idx, int name_idx);

/* lintrospect.c: what a waiting task waits on, in words ("sleep until +120 ms",
 * "semaphore \"api\" (3rd in line)", "process 1234", "http GET host/path", "join task 17",
 * an activity's label, else the await's function), pushed; for a task of fiber f that
 * waits. Returns 1 when the words are an activity's label (baton.activity), else 0.
 * baton.activity, task:traceback, and the name option of spawn. */
int lbt_describe_wait(lua_State *L, lbt_rt *R, lbt_fiber *f);
int lbt_task_traceback(lua_State *L);  /* task:traceback() */
/* spawn{ name =, fn, args... } for a spawn function whose function argument is at idx:
 * unpacks the table in place, calls spawn(L) and names the task it returns. */
int lbt_spawn_opts(lua_State *L, int idx, const char *fname, lua_CFunction spawn);
void lbt_open_introspect(lua_State *L, int rt_idx);  /* baton.activity */

/* lprogress.c: baton.progress; the redraw timers close when baton.run ends. */
void lbt_open_progress(lua_State *L, int rt_idx);
void lbt_close_progress(lua_State *L);

/* ltrace.c: baton.trace and the hooks of the binding. The hooks are called only while
 * R->trace != NULL (one test of it at each call site, LBT_TRACING: predicted off). */
#define LBT_TRACING(R) __builtin_expect((R)->trace != NULL, 0)
void lbt_open_trace(lua_State *L, int rt_idx);
void lbt_trace_resume(lbt_rt *R, lbt_task *T, lbt_fiber *f);           /* before a resume */
void lbt_trace_suspend(lbt_rt *R, lbt_task *T, lbt_fiber *f, int rc);    /* after it */
/* An instant event on the running task's track (or track 0); args NULL or a JSON object. */
void lbt_trace_instant(lbt_rt *R, const char *name, const char *cat, const char *args);
/* A process's run, on a track of its own ("process <pid>"): begin_ns from bt__trace_now. */
void lbt_trace_process(lbt_rt *R, int pid, const char *file, uint64_t begin_ns, int64_t code,
                       int signal);
uint64_t lbt_trace_clock(void);
void lbt_trace_close(lbt_rt *R);  /* the runtime closes: finish the file */
void lbt_trace_flush(lbt_rt *R);  /* baton.run ends: the events on disk; a write error warned once */
void lbt_task_release(lbt_rt *R, lbt_task *T);  /* drop the anchor if nothing needs it */
/* Anchor slots (ltask.c) for any value C must keep alive: lbt_anchor pops the value on top
 * of L into a slot and returns it; lbt_unanchor frees the slot (plain C, never raises: safe
 * in __close and __gc). */
int lbt_anchor(lua_State *L, lbt_rt *R);
void lbt_unanchor(lbt_rt *R, int slot);
/* A finished task out of its group: pushed, and its anchor dropped (push + release). */
void lbt_task_take(lua_State *L, lbt_rt *R, lbt_task *T);
int lbt_push_outcome(lua_State *L, int idx);  /* task at idx: true, res... | false, err */
/* lbt_await_begin and lbt_suspend are inline for their common case (the task's own
 * coroutine, not cancelled); the _slow functions do the rest. The running task is read
 * from the core's runtime directly (internal.h). */
lbt_task *lbt_await_begin_slow(lua_State *L, lbt_rt *R, const char *fname);
int lbt_suspend_wrapped(lua_State *L, lua_KContext ctx, lua_KFunction k);
static inline lbt_task *lbt_current(lbt_rt *R) { return (lbt_task *)R->rt->current; }
/* lua_close runs the finalizers of objects made before baton was loaded after the
 * runtime's own: one that calls baton then finds the runtime freed. The entry points that
 * reach it (run, spawn and every task made, every await, now, stats, tasks, group) check. */
_Noreturn void lbt_closed_runtime(lua_State *L);
static inline void lbt_check_open(lua_State *L, lbt_rt *R) {
  if (R->closed) lbt_closed_runtime(L);
}
static inline lbt_task *lbt_await_begin(lua_State *L, lbt_rt *R, const char *fname) {
  lbt_check_open(L, R);
  lbt_task *T = lbt_current(R);
  if (T == NULL || lbt_fib(T)->co != L || !lua_isyieldable(L) || (T->t.flags & BT_TASK_F_CANCEL))
    return lbt_await_begin_slow(L, R, fname);
  lbt_fib(T)->what = fname;
  return T;
}
static inline int lbt_suspend_task(lua_State *L, lbt_task *T, lua_KContext ctx,
                                   lua_KFunction k) {
  if (lbt_fib(T)->co == L) return lua_yieldk(L, 0, ctx, k);
  return lbt_suspend_wrapped(L, ctx, k);  /* inside baton.coroutine.wrap */
}
static inline int lbt_suspend(lua_State *L, lua_KContext ctx, lua_KFunction k) {
  return lbt_suspend_task(L, lbt_current(lbt_R(L)), ctx, k);
}
int lbt_is_wrapped(lua_State *L);          /* L runs under baton.coroutine.wrap */
void lbt_push_wrap_marker(lua_State *L);
int lbt_raise_cancelled(lua_State *L);
void lbt_push_error(lua_State *L, const char *kind, const char *msg);
int lbt_push_timeout(lua_State *L);  /* nil, "timeout", "timeout"; returns 3 */
int lbt_is_cancel_error(lua_State *L, int idx);
void lbt_warn(lbt_rt *R, const char *fmt, ...);
void lbt_warn_on(lua_State *L, const char *msg);  /* the same, on L's stack, unformatted */
void lbt_warn_unjoined(lbt_rt *R, lbt_task *T, const char *msg);  /* failed, never joined */
int lbt_run_loop(lua_State *L, lbt_rt *R);  /* runs until the main task ends */
void lbt_abort_all(lbt_rt *R);

/* lbaton.c, per type opener: each sets its metatable and adds its functions to the module
 * table at -1, with the runtime userdata at index `rt_idx` as upvalue. */
void lbt_open_task(lua_State *L, int rt_idx);
void lbt_open_group(lua_State *L, int rt_idx);
void lbt_open_sem(lua_State *L, int rt_idx);
void lbt_open_json(lua_State *L, int rt_idx);
void lbt_open_proc(lua_State *L, int rt_idx);
void lbt_close_procs(lua_State *L);  /* lproc.c: release every open process (never waits) */
/* lproc.c: the pid of the process a read, wait or run waits on (w: its wait record), or 0. */
int lbt_proc_wait_pid(const bt_wait_t *w);
void lbt_open_engine(lua_State *L, int rt_idx);   /* lengine.c: baton.engine */
void lbt_open_limiter(lua_State *L, int rt_idx);  /* llimiter.c: baton.limiter, parse_key, parse_chain */
void lbt_open_retry(lua_State *L, int rt_idx);         /* lretry.c */
void lbt_open_breaker(lua_State *L, int rt_idx);       /* lbreaker.c */
void lbt_open_dedup(lua_State *L, int rt_idx);         /* ldedup.c */
void lbt_open_backpressure(lua_State *L, int rt_idx);  /* lbackpressure.c */
void lbt_open_pipeline(lua_State *L, int rt_idx);      /* lpipeline.c */
void lbt_open_runner(lua_State *L, int rt_idx);        /* lrunner.c */
void lbt_open_http(lua_State *L, int rt_idx);          /* lhttp.c: baton.http */
void lbt_open_loopback(lua_State *L);  /* lloopback.c: baton.http._loopback, on baton.http (top) */
void lbt_open_future(lua_State *L, int rt_idx);        /* lfuture.c: baton.future */
void lbt_open_chan(lua_State *L, int rt_idx);          /* lchan.c: baton.channel */
void lbt_open_sync(lua_State *L, int rt_idx);          /* lsync.c: watch, notify, shield */
void lbt_open_select(lua_State *L, int rt_idx);        /* lselect.c: baton.select */
void lbt_open_ratelimit(lua_State *L, int rt_idx);     /* lratelimit.c: baton.ratelimit */
void lbt_open_redis(lua_State *L, int rt_idx);  /* lredis.c: baton.redis */
void lbt_close_redis(lua_State *L);             /* close every open Redis client (never waits) */
/* lsync.c: race, first_ok, hedge, interval (lua/baton/concurrency.lua, compiled in); after
 * the other openers, whose functions it uses */
void lbt_open_concurrency(lua_State *L, int rt_idx);
void lbt_open_router(lua_State *L, int rt_idx);  /* lrouter.c: store.lua, router.lua (compiled in) */
/* lqueue.c: baton.redis.queue and baton.runner{ queue = } (queue.lua, compiled in); after
 * lbt_open_runner and lbt_open_redis, whose functions it wraps */
void lbt_open_queue(lua_State *L, int rt_idx);
/* lhttp.c and lhttpstream.c: response heads as tables, and the stream half of
 * baton.http (options checked by lhttp.c; strings in `o` anchored on the stack). */
void lbt_http_push_headers(lua_State *L, const char *p, size_t len);  /* raw lines -> table */
lua_Integer lbt_http_retry_after(lua_State *L);  /* of the headers table at -1, in ms, or -1 */
void lbt_http_push_head(lua_State *L, const bt_http_req_t *r);  /* { status, headers, url, ... } */
/* A transfer and the task waiting on it (the head of a request's and a stream's state): the
 * transfer's events wake the task (lbt_http_wake, data = the struct), a wait's cancel
 * forgets it (lbt_http_wait_cancel, w->src = the struct). */
typedef struct lbt_http_wait {
  bt_http_req_t *r;       /* NULL until started and once freed */
  bt_rt_t *rt;
  bt_task_t *waiter;      /* the task waiting on it, or NULL */
  uint32_t token;
} lbt_http_wait;
void lbt_http_wake(bt_http_req_t *r, void *data);
void lbt_http_wait_cancel(bt_wait_t *w);
/* nil, "<fname>: <the transfer's error>", its kind, { url = }; and a timeout's failure. */
int lbt_http_fail(lua_State *L, const char *fname, const bt_http_req_t *r);
int lbt_http_timeout(lua_State *L, const char *fname, const char *url, lua_Number ms);
int lbt_http_stream_start(lua_State *L, lbt_rt *R, bt_http_opts *o, lua_Integer timeout);
void lbt_open_http_stream(lua_State *L, int rt_idx);
void lbt_close_streams(lua_State *L);  /* close every open HTTP stream (never waits) */

/* Helpers for option tables: reject unknown keys (a typo must not pass silently). A list
 * that starts with LBT_POSITIONAL also accepts integer keys (argv-style tables), whose
 * values the caller checks. lbt_check_fields, lbt_opt_int and lbt_opt_func are the old
 * forms ("fname: unknown option 'x'", "fname: key must be ..."), kept until the policy
 * bindings move to lbt_check_opts and the lbt_opt_* readers below (lfail.c). */
#define LBT_POSITIONAL "[positional]"
void lbt_check_fields(lua_State *L, int idx, const char *fname, const char *const known[]);
/* Option-table fields of the table at index 1: an integer in [min, 1e15], or `def` when
 * absent (def < 0: required), raising "fname: key must be ..."; and an optional function
 * stored as user value `uv` of the userdata on top of the stack. */
lua_Integer lbt_opt_int(lua_State *L, const char *fname, const char *key, lua_Integer min,
                        lua_Integer def);
void lbt_opt_func(lua_State *L, const char *fname, const char *key, int uv);
/* Weak-keyed sets of userdata in the registry under `key`, for what baton.run must close
 * when it ends (processes, HTTP streams): create, add the userdata at idx, visit each. `fn`
 * must not raise or touch the Lua stack. */
void lbt_weak_set_new(lua_State *L, const char *key);
/* Pushes registry[key], a table with weak keys, made on first use. */
void lbt_push_weak_table(lua_State *L, const char *key);
void lbt_weak_set_add(lua_State *L, const char *key, int idx);
void lbt_weak_set_each(lua_State *L, const char *key, void (*fn)(void *ud));
/* Registers `l` as methods under metatable `mt` (created), with the runtime as upvalue.
 * `mt` must be the name of one of the classes (lbt_class). */
void lbt_new_class(lua_State *L, int rt_idx, const char *mt, const luaL_Reg *methods,
                   const luaL_Reg *meta);
/* Type checks, for functions that have the runtime as upvalue 1. lbt_check_type returns
 * the userdata at idx, or raises "<fname>: bad argument #0 'self' (expected baton.X, got
 * ...)" (fname found by lbt_fname; a non-self argument is named after its class);
 * lbt_test_type returns NULL instead. lbt_check_handle also refuses a closed object of a
 * class whose userdata opens with its handle (LBT_HANDLE_FIRST), raising
 * "baton.group:spawn: used after it was closed" for self (lbt_closed_error, which names
 * the class too when the running function is not one of its methods). Methods that stay
 * meaningful on a closed object (close, release, closed, held, __tostring) use
 * lbt_check_type. */
void *lbt_check_type(lua_State *L, int idx, lbt_class cls);
/* Sets the metatable of class cls on the value on top of L (a registry read by number:
 * luaL_setmetatable looks the name up). */
static inline void lbt_set_class(lua_State *L, lbt_class cls) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, lbt_R(L)->class_refs[cls]);
  lua_setmetatable(L, -2);
}
void *lbt_test_type(lua_State *L, int idx, lbt_class cls);
void *lbt_check_handle(lua_State *L, int idx, lbt_class cls);
int lbt_closed_error(lua_State *L, lbt_class cls);
/* lbt_check_handle remembers, for a group, a semaphore and a channel, the last object it
 * found open, and takes the same object again for one of them at a pointer comparison
 * (the same address is the same live object). That holds because these classes' objects
 * have a __gc from birth, and that __gc, like every other path that closes one, clears the
 * handle through lbt_handle_clear, which forgets the object: memory is freed only after
 * __gc ran, and a closed object is never remembered again. */
void lbt_handle_clear(lua_State *L, void *ud, lbt_class cls);
/* Milliseconds arguments: a number in [0, 1e15) — negative, NaN and inf refused, raising
 * "<fname>: bad argument #n 'ms' (expected milliseconds >= 0, got ...)" (fname NULL: found
 * by lbt_fname). lbt_opt_due reads an optional timeout and returns its absolute due time,
 * or UINT64_MAX when absent. Prefer lbt_arg_ms / lbt_arg_due, which take the fname. */
lua_Number lbt_check_ms(lua_State *L, int idx, const char *fname);
uint64_t lbt_opt_due(lua_State *L, lbt_rt *R, int idx);
/* Sets functions from `l` into the table at -1, with the runtime at rt_idx as upvalue. */
void lbt_set_funcs(lua_State *L, int rt_idx, const luaL_Reg *l);

/* ---- lfail.c: the error toolkit (docs/errors.md) --------------------------------------
 * fname is always the function as the user calls it: "baton.http.request" for a module
 * function, "<constructor path>:<method>" for a method ("baton.semaphore:acquire"). A colon
 * in fname makes it a method: self is argument #0, stack index idx is argument #idx-1. */

/* Kinds: the one table (NULL-terminated; baton.kinds), a membership test, and the kind of a
 * baton or libuv error code (never a libuv name: unknown codes are "io"). */
extern const char *const lbt_kinds[];
int lbt_is_kind(const char *kind);
const char *lbt_kind_of(int err);

/* Failures of the world: push `nil, "<fname>: <msg>", kind[, detail]` and return how many
 * (3, or 4 with a detail: the table at detail_idx, 0 for none; fmt is printf's). kind must
 * be in lbt_kinds (assert). lbt_fail_status: the message and kind of an error code.
 * lbt_fail_timeout: "timed out after N ms", kind "timeout", detail { timeout_ms = N }. */
int lbt_fail(lua_State *L, const char *fname, const char *msg, const char *kind);
int lbt_fail_detail(lua_State *L, const char *fname, const char *kind, int detail_idx,
                    const char *fmt, ...)
#if defined(__GNUC__)
  __attribute__((format(printf, 5, 6)))
#endif
  ;
int lbt_fail_status(lua_State *L, const char *fname, int status);
int lbt_fail_timeout(lua_State *L, const char *fname, lua_Number ms);
/* A baton.Error table { kind =, message =, detail = } (detail_idx 0: none), pushed. */
void lbt_push_error_detail(lua_State *L, const char *kind, const char *msg, int detail_idx);

/* Misuse: raise "<fname>: bad argument #n 'name' (expected X, got Y)". lbt_argerror takes
 * the offending argument's stack index (Y shows a number's or short string's value, else
 * the type or __name); lbt_argerror_got the argument number and Y as given; lbt_field_error
 * blames field `key` of the option table at stack index tidx. lbt_push_got pushes Y. */
int lbt_argerror(lua_State *L, const char *fname, int idx, const char *name,
                 const char *expected);
int lbt_argerror_got(lua_State *L, const char *fname, int n, const char *name,
                     const char *expected, const char *got);
int lbt_field_error(lua_State *L, const char *fname, int tidx, const char *key,
                    const char *expected);
const char *lbt_push_got(lua_State *L, int idx);
/* luaL_tolstring, protected: a failing __tostring gives "a <type> whose __tostring failed". */
const char *lbt_push_tostring(lua_State *L, int idx);
/* A failure's text for a report: a baton.Error's message, else lbt_push_tostring. */
const char *lbt_push_failure_text(lua_State *L, int idx);
int lbt_argn(const char *fname, int idx);  /* the argument number of stack index idx */
/* The running C function's name as the user calls it, found by identity (slow: for error
 * paths and for the shims below, which take no fname). Pushed. */
const char *lbt_fname(lua_State *L);
const char *lbt_class_name(lbt_class cls);  /* "baton.Semaphore" */

/* Readers. Options: lbt_check_opts raises unless the argument at idx (named `name`) is a
 * table whose string keys are all in `known` (unknown keys are reported before anything
 * else is read: a typo names the typo); then the lbt_opt_* read field `key` of the table
 * at tidx. Arguments: lbt_arg_* read the argument at stack index idx. Every reader raises
 * in the form above.
 *   count: an integer in [min, 2^53]; `def` when absent (def < 0: required).
 *   ms:    milliseconds, a number in [0, 1e15) (NaN and inf refused); `def` when absent
 *          (lbt_opt_ms: def < 0 is returned as is, meaning none; lbt_arg_ms: required).
 *   due:   an optional timeout argument "timeout_ms" -> its absolute due time, or
 *          UINT64_MAX when absent.
 *   bool, string (def NULL: required; the pointer is valid while the table holds the
 *   string: not for a value an __index makes up, which the caller must keep), enum (the
 *   index in the NULL-terminated `names`; def < 0: required).
 *   function: lbt_opt_function pushes the field (a function or nil) and returns whether it
 *   is a function; lbt_arg_function checks a required function argument.
 *   udata: the userdata of class cls at idx. */
void lbt_check_opts(lua_State *L, const char *fname, int idx, const char *name,
                    const char *const known[]);
lua_Integer lbt_opt_count(lua_State *L, const char *fname, int tidx, const char *key,
                          lua_Integer min, lua_Integer def);
lua_Integer lbt_arg_count(lua_State *L, const char *fname, int idx, const char *name,
                          lua_Integer min, lua_Integer def);
lua_Number lbt_opt_ms(lua_State *L, const char *fname, int tidx, const char *key,
                      lua_Number def);
lua_Number lbt_arg_ms(lua_State *L, const char *fname, int idx, const char *name,
                      lua_Number def);
uint64_t lbt_arg_due(lua_State *L, lbt_rt *R, const char *fname, int idx);
int lbt_opt_bool(lua_State *L, const char *fname, int tidx, const char *key, int def);
int lbt_opt_function(lua_State *L, const char *fname, int tidx, const char *key);
static inline void lbt_arg_function(lua_State *L, const char *fname, int idx,
                                    const char *name) {
  if (lua_type(L, idx) != LUA_TFUNCTION) lbt_argerror(L, fname, idx, name, "function");
}
const char *lbt_opt_string(lua_State *L, const char *fname, int tidx, const char *key,
                           const char *def, size_t *len);
const char *lbt_arg_string(lua_State *L, const char *fname, int idx, const char *name,
                           size_t *len);
int lbt_opt_enum(lua_State *L, const char *fname, int tidx, const char *key,
                 const char *const names[], int def);
void *lbt_check_udata(lua_State *L, const char *fname, int idx, const char *name,
                      lbt_class cls);

/* The end of a wait. A continuation starts with lbt_resumed: if the task was cancelled
 * (the wake delivered BT_ECANCELED, or the flag is set whatever it delivered) it calls
 * undo(arg) when the wake had granted something (status 0; undo may be NULL) and raises
 * the cancellation error; else it returns the wake status (0, BT_ETIMEDOUT, BT_ECLOSED,
 * BT_ENOMEM, ...) and sets *Tp (if not NULL) to the running task. lbt_cancel_point is the
 * same for a call that did not wait (still a cancellation point); lbt_cancelled tests. */
_Noreturn void lbt_resumed_cancelled(lua_State *L, int status, void (*undo)(void *arg),
                                     void *arg);
static inline int lbt_resumed(lua_State *L, lbt_task **Tp, void (*undo)(void *arg),
                              void *arg) {
  lbt_task *T = lbt_current(lbt_R(L));
  int status = lbt_fib(T)->status;
  if (status == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL))
    lbt_resumed_cancelled(L, status, undo, arg);
  if (Tp != NULL) *Tp = T;
  return status;
}
/* The same for a wait that owns something whatever the wake delivered (a transfer, a
 * stream being opened): release(arg) runs before the cancellation error is raised. */
int lbt_resumed_free(lua_State *L, lbt_task **Tp, void (*release)(void *arg), void *arg);
void lbt_cancel_point(lua_State *L, void (*undo)(void *arg), void *arg);
static inline int lbt_cancelled(lbt_rt *R) {  /* the running task was aborted */
  bt_task_t *cur = R->rt->current;
  return cur != NULL && (cur->flags & BT_TASK_F_CANCEL);
}
/* Objects read by one task at a time (a process, a stream): raises "<fname>: another task
 * is already waiting on this <what>" when `busy`; else a cancellation point. */
void lbt_sole_waiter(lua_State *L, const char *fname, int busy, const char *what);
/* Inserts the absolute deadline `due` at stack index idx as an integer, -1 for none
 * (UINT64_MAX), for a continuation that may wait again. */
void lbt_insert_due(lua_State *L, int idx, uint64_t due);

/* Returned or raised: one rule. After a user function ran under pcall (status LUA_OK or
 * LUA_YIELD: its results are base..top; else its error is on top): returns 1 if it
 * succeeded (the stack untouched), else 0 with exactly message, kind, detail at base..base+2
 * (detail a table or nil): a returned `nil, msg[, kind[, detail]]` (kind "error" unless a
 * string; a table in second place read as a raised one), a raised table with a string kind
 * (its message, kind, detail), any other raised value (its text, kind "error"). The
 * cancellation error, a memory error, and any error of a cancelled task are re-raised. */
int lbt_outcome(lua_State *L, int status, int base);
void lbt_open_errors(lua_State *L, int rt_idx);  /* baton.error, baton.kinds */

/* lsignal.c: baton.on_signal and baton.exit; the signals watched while baton.run runs. */
void lbt_open_signal(lua_State *L, int rt_idx);
void lbt_signals_start(lbt_rt *R);  /* baton.run starts: watch INT, TERM, HUP, handled ones */
void lbt_signals_stop(lbt_rt *R);   /* baton.run ends: every disposition put back */
void lbt_signals_close(lbt_rt *R);  /* the runtime closes: before bt_rt_free */
void lbt_signals_free(lbt_rt *R);   /* after bt_rt_free */
int lbt_signals_own(lbt_rt *R, const uv_handle_t *h);  /* one of the watchers' handles */
/* baton.run from a stock interpreter, once a run ended by baton.exit or a signal is over:
 * exits the process with R->exit_status. Never returns. */
int lbt_exit_run(lua_State *L, lbt_rt *R);

int lbt_open(lua_State *L);  /* the module table; one runtime per Lua state */

/* The REPL's prompt, for baton.progress (lcli.c, lbt_cli_set_console): NULL outside it. */
extern int (*lbt_console_shown)(void);
extern void (*lbt_console_clear)(void);

#endif
