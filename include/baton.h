/*
 * baton.h — the public C API of baton's core: a runtime on a libuv loop with tasks, task
 * groups, counting semaphores, channels, notifications, per-key budgets, timers and
 * subprocesses. It knows nothing
 * of Lua; the Lua module and the `baton` executable are built on it, and a C host can embed
 * it the same way. HTTP transfers run on libcurl's multi interface on the same loop.
 *
 * The model, in one paragraph. A runtime owns a ready queue of tasks and a timer heap on one
 * uv_loop_t. A task is a resumable unit with a vtable (`resume`); whoever embeds the core
 * decides what resuming means (the Lua layer resumes a coroutine). Tasks never run from a
 * libuv callback or from inside another task: every wake-up only enqueues, and the queue is
 * drained from a check handle, woken tasks before fresh ones (at most 64 woken resumes while
 * a fresh task waits at the head; docs/architecture.md, "Start order"). A task that waits
 * registers one wait record (bt_wait_t) carrying a token and a cancel function; completion,
 * timeout and abort each go through bt_task_wake(), which drops stale tokens, unregisters
 * the wait and enqueues.
 *
 * Conventions (libuv's):
 *  - Functions that can fail return 0 or a negative error code: one of BT_E* below, or a
 *    libuv code passed through unchanged. bt_strerror()/bt_err_name() name both.
 *  - A call that fails never invokes its callback.
 *  - Structs declared here with visible fields (bt_task_t, bt_wait_t, bt_timer_t,
 *    bt_sem_waiter_t, bt_waiter_t, bt_chan_t, bt_notify_t) are storage the caller embeds
 *    in its own objects, so that waiting never allocates. Their fields are private to the
 *    core unless documented.
 *  - Ownership is written on every function that takes or returns a pointer.
 */
#ifndef BATON_H
#define BATON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define BT_EXTERN __attribute__((visibility("default")))
#else
#define BT_EXTERN
#endif

#define BT_VERSION_MAJOR 0
#define BT_VERSION_MINOR 1
#define BT_VERSION_PATCH 0
#define BT_VERSION_STRING "0.1.0"

/* Error codes. libuv's codes (negative errno values) pass through unchanged; baton's own
 * live below -5000 so they never collide. */
#define BT_ERRNO_MAP(XX)                                        \
  XX(TIMEDOUT,  -5001, "timeout", "operation timed out")       \
  XX(CANCELED,  -5002, "cancelled", "task cancelled")          \
  XX(CLOSED,    -5003, "closed", "object is closed")           \
  XX(BUSY,      -5004, "busy", "would have to wait")           \
  XX(NOMEM,     -5005, "nomem", "out of memory")               \
  XX(INVAL,     -5006, "inval", "invalid argument")

typedef enum {
#define XX(name, code, kind, msg) BT_E##name = code,
  BT_ERRNO_MAP(XX)
#undef XX
} bt_errno_t;

/* A short lowercase name for an error ("timeout", "cancelled", or libuv's "ENOENT"). */
BT_EXTERN const char *bt_err_name(int err);
/* A human-readable message. Static storage; never NULL. */
BT_EXTERN const char *bt_strerror(int err);

typedef struct bt_rt bt_rt_t;
typedef struct bt_task bt_task_t;
typedef struct bt_wait bt_wait_t;
typedef struct bt_timer bt_timer_t;
typedef struct bt_group bt_group_t;
typedef struct bt_sem bt_sem_t;
typedef struct bt_sem_waiter bt_sem_waiter_t;
typedef struct bt_budget bt_budget_t;
typedef struct bt_budget_key bt_budget_key_t;
typedef struct bt_proc bt_proc_t;

/* ---- runtime ------------------------------------------------------------------------ */

/* Creates a runtime on `loop`, or on a loop of its own when `loop` is NULL (then fds 0-2, if
 * closed, are first pointed at /dev/null, so the loop's descriptor cannot take one of their
 * numbers). Returns NULL on allocation failure. The caller owns the result and frees it with bt_rt_free(). */
BT_EXTERN bt_rt_t *bt_rt_new(uv_loop_t *loop);
/* Closes the runtime's handles, runs the loop until they are closed, and frees it (and its
 * own loop). Tasks must have finished; their storage is the embedder's. Accepts NULL.
 * Returns 0, or UV_EBUSY if its own loop still had foreign handles (freed anyway). */
BT_EXTERN int bt_rt_free(bt_rt_t *rt);
/* The loop, borrowed for the runtime's lifetime. */
BT_EXTERN uv_loop_t *bt_rt_loop(bt_rt_t *rt);
/* The loop's monotonic clock in milliseconds, refreshed on each call. */
BT_EXTERN uint64_t bt_now(bt_rt_t *rt);
/* The deadline `ms` milliseconds from now on that clock, for bt_task_wait() and timers: never
 * reached before `ms` have passed (the fraction of the current millisecond is rounded up, as
 * Tokio's timer does). bt_due(rt, 0) is bt_now(rt). */
BT_EXTERN uint64_t bt_due(bt_rt_t *rt, uint64_t ms);
/* The task being resumed right now, or NULL outside any task. */
BT_EXTERN bt_task_t *bt_rt_current(bt_rt_t *rt);
/* Number of tasks in the ready queue. */
BT_EXTERN size_t bt_rt_ready(bt_rt_t *rt);
/* Number of armed timers. */
BT_EXTERN size_t bt_rt_timers(bt_rt_t *rt);
/* An embedder's pointer, kept for it (NULL until set). */
BT_EXTERN void bt_rt_set_data(bt_rt_t *rt, void *data);
BT_EXTERN void *bt_rt_data(bt_rt_t *rt);
/* Most resumes done per loop iteration before I/O gets a turn (default 1024). */
BT_EXTERN void bt_rt_set_budget(bt_rt_t *rt, unsigned resumes);

/* ---- timers: a heap in the runtime, one uv_timer_t armed at its head ---------------- */

typedef void (*bt_timer_cb)(bt_timer_t *timer);
struct bt_timer {
  uint64_t due;   /* absolute, loop milliseconds */
  uint64_t seq;   /* ties fire in the order they were started */
  size_t slot;    /* heap index + 1; 0 while not armed */
  bt_timer_cb cb;
};
/* Arms `t` (caller-owned storage, must stay valid until it fires or is stopped) to call
 * `cb` at absolute time `due`. Re-arming an armed timer moves it. Returns 0 or BT_ENOMEM. */
BT_EXTERN int bt_timer_start(bt_rt_t *rt, bt_timer_t *t, uint64_t due, bt_timer_cb cb);
/* Disarms `t`; a no-op if it is not armed. */
BT_EXTERN void bt_timer_stop(bt_rt_t *rt, bt_timer_t *t);

/* ---- tasks -------------------------------------------------------------------------- */

typedef enum {
  BT_TASK_PENDING = 0,  /* spawned, never run */
  BT_TASK_READY,        /* woken, in the ready queue */
  BT_TASK_RUNNING,      /* being resumed now */
  BT_TASK_WAITING,      /* suspended on a wait record */
  BT_TASK_FINISHING,    /* ended, waiting for the tasks it owns to finish (bt_group_own) */
  BT_TASK_DONE,
  BT_TASK_FAILED,
  BT_TASK_CANCELLED
} bt_task_state_t;

typedef struct bt_task_vt {
  /* Runs the task until it waits, yields or finishes. `status` is what the last wake
   * delivered (0, BT_ETIMEDOUT, BT_ECANCELED, ...); it is 0 for the first run. Before
   * returning, the implementation has called exactly one of bt_task_wait(),
   * bt_task_yield() or bt_task_finish() on `t`. */
  void (*resume)(bt_rt_t *rt, bt_task_t *t, int status);
  /* Called once when a task finishes, after it has left its group's live list (may be
   * NULL). The task must not be freed from here if it is still in a group. */
  void (*finished)(bt_rt_t *rt, bt_task_t *t);
} bt_task_vt;

typedef void (*bt_cancel_fn)(bt_wait_t *w);

/* One await. `cancel` unregisters the wait from whatever it waits on; it is called exactly
 * once per wait, by bt_task_wake(), whatever woke the task, and must be idempotent with
 * respect to a source that already unregistered itself. */
struct bt_wait {
  bt_rt_t *rt;
  bt_task_t *task;
  uint32_t token;
  bt_cancel_fn cancel;  /* may be NULL (a plain sleep has only the timer) */
  void *src;            /* the source record the wait is registered with, for `cancel` */
  bt_timer_t timer;     /* the wait's optional deadline */
};

typedef struct bt_joiner {
  LIST_ENTRY(bt_joiner) link;
  bt_wait_t *wait;      /* non-NULL while registered */
} bt_joiner_t;

typedef struct bt_gate bt_gate_t;

struct bt_task {
  bt_task_t *rq_next;                 /* ready queue (private) */
  bt_task_t *g_prev, *g_next;         /* group lists (private) */
  bt_group_t *group;                  /* NULL when the task belongs to no group */
  const bt_task_vt *vt;
  bt_wait_t *wait;                    /* the wait record; read by the core only while WAITING */
  LIST_HEAD(, bt_joiner) joiners;     /* tasks waiting for this one (private) */
  bt_gate_t *gate;                    /* bounded spawn: the gate whose permit it holds */
  bt_task_t *owner;                   /* the task owning it (bt_group_own), or NULL */
  LIST_HEAD(, bt_group) groups;       /* groups it owns (private) */
  uint32_t owned;                     /* tasks it owns not yet finished (private) */
  uint32_t id;
  uint32_t token;
  uint8_t state;                      /* bt_task_state_t */
  uint8_t flags;                      /* BT_TASK_F_* */
  int16_t status;                     /* what the last wake delivered (private) */
};
#define BT_TASK_F_QUEUED    0x01u  /* in the ready queue */
#define BT_TASK_F_CANCEL    0x02u  /* abort requested (level-triggered) */
#define BT_TASK_F_JOINED    0x04u  /* its outcome was observed by someone */
#define BT_TASK_F_PERMIT    0x08u  /* holds one permit of t->gate's semaphore */
#define BT_TASK_F_SHIELD    0x10u  /* bt_task_shield(): aborts are deferred */
#define BT_TASK_F_DEFERRED  0x20u  /* an abort arrived while shielded */
#define BT_TASK_F_USER      0x40u  /* first flag free for the embedder */

/* Initialises `t` (caller-owned storage that must outlive the task's stay in the runtime)
 * and enqueues it. It first runs when the loop drains the ready queue. `group` may be NULL.
 * Never fails. */
BT_EXTERN void bt_task_spawn(bt_rt_t *rt, bt_task_t *t, const bt_task_vt *vt,
                             bt_group_t *group);

/* Called from inside resume: suspends `t` on `w` (caller-owned storage valid until the wake),
 * with a deadline at absolute time `due` unless `due` is UINT64_MAX. Returns the token. */
BT_EXTERN uint32_t bt_task_wait(bt_rt_t *rt, bt_task_t *t, bt_wait_t *w, bt_cancel_fn cancel,
                                uint64_t due);
/* Wakes `t` with `status` if it still waits with `token`; a stale token is dropped.
 * Runs the wait's cancel and stops its timer, then enqueues. Returns 1 if woken, else 0. */
BT_EXTERN int bt_task_wake(bt_rt_t *rt, bt_task_t *t, uint32_t token, int status);
/* Called from inside resume: re-enqueues `t` at the back of the woken tasks, behind the
 * tasks spawned since it was resumed. */
BT_EXTERN void bt_task_yield(bt_rt_t *rt, bt_task_t *t);
/* Called from inside resume: `t` ended with `state` (DONE, FAILED or CANCELLED). Wakes its
 * joiners and moves it to its group's finished list. Structure: if `t` owns tasks not yet
 * finished (spawned into groups it owns, bt_group_own), they are aborted, and `t` stays
 * BT_TASK_FINISHING (not finished: joiners keep waiting) until the last of them has
 * finished; then `t` becomes `state` and the above happens. Its groups are disowned. */
BT_EXTERN void bt_task_finish(bt_rt_t *rt, bt_task_t *t, bt_task_state_t state);
/* Requests cancellation: sets BT_TASK_F_CANCEL (level-triggered). A waiting task is woken
 * with BT_ECANCELED; a pending one is resumed with BT_ECANCELED when drained, before it
 * ever ran (a gated one leaves its gate without a permit); the running one is not
 * disturbed: the embedder checks the flag before its next wait. A finished task is left
 * alone. Idempotent. */
BT_EXTERN void bt_task_abort(bt_rt_t *rt, bt_task_t *t);
/* 1 if the task has finished (DONE, FAILED, CANCELLED). */
BT_EXTERN int bt_task_finished(const bt_task_t *t);
/* Shielding (for cleanup that must finish): from bt_task_shield() until the matching
 * bt_task_unshield(), bt_task_abort() only records the request (BT_TASK_F_DEFERRED) and
 * wakes nothing, and a cancellation already requested is hidden the same way, so the
 * task's waits complete as if it had not been aborted. bt_task_shield() returns whether
 * `t` was already shielded (pass it back: only the outermost unshield lifts the shield);
 * bt_task_unshield() restores a deferred request as BT_TASK_F_CANCEL and returns 1 if the
 * task is now cancelled (the embedder delivers it, e.g. raises), else 0. */
BT_EXTERN int bt_task_shield(bt_task_t *t);
BT_EXTERN int bt_task_unshield(bt_task_t *t, int was_shielded);

/* Waits (from inside resume of `self`) for `t` to finish. `j` is caller-owned storage valid
 * until the wake. Returns 1 if `t` already finished (no wait registered), else 0 after
 * calling bt_task_wait() on `w`. */
BT_EXTERN int bt_task_join(bt_rt_t *rt, bt_task_t *self, bt_task_t *t, bt_joiner_t *j,
                           bt_wait_t *w, uint64_t due);

/* ---- task groups (JoinSet) ---------------------------------------------------------- */

/* A group owns two lists: live tasks and finished-but-not-joined tasks (completion order).
 * Returns NULL on allocation failure; free with bt_group_free() once empty or after
 * bt_group_detach_all(). */
BT_EXTERN bt_group_t *bt_group_new(bt_rt_t *rt);
BT_EXTERN void bt_group_free(bt_group_t *g);
/* Tasks not yet joined (live + finished). */
BT_EXTERN size_t bt_group_len(const bt_group_t *g);
BT_EXTERN size_t bt_group_live(const bt_group_t *g);
/* Pops the oldest finished task, or NULL. The caller now owns the reference the group held. */
BT_EXTERN bt_task_t *bt_group_pop(bt_group_t *g);
/* Waits (from inside resume of `self`) until the group has a finished task. Returns 1 if it
 * already has one, -1 if the group is empty (nothing to wait for), else 0 after calling
 * bt_task_wait(). `j` and `w` are caller-owned, valid until the wake. */
BT_EXTERN int bt_group_wait(bt_group_t *g, bt_task_t *self, bt_joiner_t *j, bt_wait_t *w,
                            uint64_t due);
/* Aborts every live task. */
BT_EXTERN void bt_group_abort_all(bt_group_t *g);
/* Iterates tasks: live ones first, then finished ones. `t` NULL starts. */
BT_EXTERN bt_task_t *bt_group_next(bt_group_t *g, bt_task_t *t);
/* Removes `t` from its group (live or finished list). */
BT_EXTERN void bt_group_remove(bt_task_t *t);
/* Detaches every task (they finish with no group) after aborting the live ones; the
 * group can then be freed. Gated tasks still waiting for a permit start as cancelled. */
BT_EXTERN void bt_group_detach_all(bt_group_t *g);
/* Ownership (structured concurrency): every task spawned into `g` while `owner` is
 * running (not yet finished nor finishing) is owned by `owner`, wherever it goes later
 * (popped, removed, detached), and `owner` does not finish until it has (bt_task_finish).
 * `owner` NULL disowns. A group is disowned when its owner ends or it is freed. */
BT_EXTERN void bt_group_own(bt_group_t *g, bt_task_t *owner);
/* Fail fast: once on, the first task of `g` to end FAILED makes the group abort every
 * other live task (once); bt_group_failed() returns that task until it leaves the group
 * (popped or removed), then NULL. */
BT_EXTERN void bt_group_fail_fast(bt_group_t *g, int on);
BT_EXTERN bt_task_t *bt_group_failed(const bt_group_t *g);
/* Calls `cb(g, t, data)` each time a task of `g` finishes, however it ends (returned,
 * failed, cancelled, or aborted before it ever ran): after the task has moved to the
 * finished list and its joiners were woken, before its vtable's `finished`. The hook may
 * take the task out of the group (bt_group_remove) and must not free it. Tasks detached by
 * bt_group_detach_all() finish without it. One hook per group; `cb` NULL removes it. */
typedef void (*bt_group_finish_cb)(bt_group_t *g, bt_task_t *t, void *data);
BT_EXTERN void bt_group_on_finish(bt_group_t *g, bt_group_finish_cb cb, void *data);

/* Bounded spawn. A gate queues tasks of group `g` behind one permit each of `sem`; a task
 * is started (enqueued) only once its permit is granted, and the permit is released when
 * it finishes, however it ends. The gate is owned by the group; `sem` must outlive it.
 * Returns NULL on allocation failure. */
BT_EXTERN bt_gate_t *bt_group_gate(bt_group_t *g, bt_sem_t *sem);
/* Initialises `t` like bt_task_spawn() into the gate's group, but queues it on `gate`
 * instead of the ready queue: it first runs once its permit is granted. Never fails. */
BT_EXTERN void bt_gate_spawn(bt_rt_t *rt, bt_gate_t *gate, bt_task_t *t, const bt_task_vt *vt);
/* Tasks queued on the gate, not yet granted. */
BT_EXTERN size_t bt_gate_queued(const bt_gate_t *gate);

/* ---- one-shot events ----------------------------------------------------------------- */

/* Set once; every task waiting on it is then woken. Caller-owned storage. */
typedef struct bt_event {
  LIST_HEAD(, bt_joiner) waiters;
  int set;
} bt_event_t;

BT_EXTERN void bt_event_init(bt_event_t *ev);
/* Waits (from inside resume of `self`) until `ev` is set, with a deadline `due` (UINT64_MAX:
 * none). Returns 1 if it is already set (no wait registered), else 0 after calling
 * bt_task_wait() on `w`. `j` and `w` are caller-owned, valid until the wake. */
BT_EXTERN int bt_event_wait(bt_rt_t *rt, bt_event_t *ev, bt_task_t *self, bt_joiner_t *j,
                            bt_wait_t *w, uint64_t due);
/* Sets `ev` and wakes its waiters; returns 1, or 0 if it was already set. */
BT_EXTERN int bt_event_set(bt_rt_t *rt, bt_event_t *ev);
BT_EXTERN size_t bt_event_waiting(const bt_event_t *ev);

/* ---- counting semaphore: FIFO with direct hand-off ---------------------------------- */
/* Weighted requests are head-of-line FIFO: the head is served first whatever its weight, so
 * a large request is not starved by small ones (which wait behind it even if they fit). */

typedef void (*bt_sem_cb)(bt_sem_waiter_t *w, int status);
struct bt_sem_waiter {
  TAILQ_ENTRY(bt_sem_waiter) link;
  bt_sem_t *sem;     /* non-NULL while queued */
  size_t k;
  bt_sem_cb cb;      /* 0 = granted (permits taken), BT_ECLOSED = semaphore closed */
};

/* Returns NULL on allocation failure. bt_sem_free() accepts NULL; it fails queued waiters. */
BT_EXTERN bt_sem_t *bt_sem_new(size_t permits);
BT_EXTERN void bt_sem_free(bt_sem_t *s);
/* Takes k permits now: 0, BT_EBUSY (not enough, or someone is queued: fairness),
 * BT_ECLOSED, BT_EINVAL (k > capacity). */
BT_EXTERN int bt_sem_try_acquire(bt_sem_t *s, size_t k);
/* Takes k permits now if possible (returns 1), or queues `w` (returns 0; `cb` runs later,
 * from the releasing call). Errors: BT_ECLOSED, BT_EINVAL. */
BT_EXTERN int bt_sem_acquire(bt_sem_t *s, bt_sem_waiter_t *w, size_t k, bt_sem_cb cb);
/* Unlinks a queued waiter without calling its callback, then re-runs the grant loop (the
 * head may have been blocking smaller requests). A no-op for a waiter not queued. */
BT_EXTERN void bt_sem_cancel(bt_sem_waiter_t *w);
/* Returns k permits and hands them to queued waiters in FIFO order. */
BT_EXTERN void bt_sem_release(bt_sem_t *s, size_t k);
/* Adds n permits to the capacity and to what is available, then hands them to queued
 * waiters in FIFO order (from inside this call). */
BT_EXTERN void bt_sem_add_permits(bt_sem_t *s, size_t n);
/* Removes up to n permits that are available now from the capacity and returns how many it
 * removed (fewer than n when fewer are available; held permits are never taken: call again
 * once they come back). A queued request larger than the new capacity waits until
 * bt_sem_add_permits grows it again, or the semaphore is closed. */
BT_EXTERN size_t bt_sem_forget(bt_sem_t *s, size_t n);
/* Fails every waiter with BT_ECLOSED; later acquires fail. Idempotent. */
BT_EXTERN void bt_sem_close(bt_sem_t *s);
BT_EXTERN size_t bt_sem_available(const bt_sem_t *s);
BT_EXTERN size_t bt_sem_capacity(const bt_sem_t *s);
BT_EXTERN size_t bt_sem_waiting(const bt_sem_t *s);
BT_EXTERN int bt_sem_closed(const bt_sem_t *s);

/* ---- per-key budgets ---------------------------------------------------------------- */

/* In-flight counts per key, each with a cap; a key disappears when its count drops to 0. */
BT_EXTERN bt_budget_t *bt_budget_new(size_t default_cap);
/* Frees the budget; keys still held are dropped. Accepts NULL. */
BT_EXTERN void bt_budget_free(bt_budget_t *b);
/* Counts one in-flight use of `key` (copied) if below `cap`. Returns the key's entry, which
 * stays valid until the matching bt_budget_release(), or NULL (saturated, or no memory:
 * *err says which: BT_EBUSY or BT_ENOMEM). */
BT_EXTERN bt_budget_key_t *bt_budget_try_acquire(bt_budget_t *b, const char *key, size_t len,
                                                 size_t cap, int *err);
BT_EXTERN void bt_budget_release(bt_budget_t *b, bt_budget_key_t *k);
BT_EXTERN size_t bt_budget_default_cap(const bt_budget_t *b);
/* Current count of `key` (0 when absent). */
BT_EXTERN size_t bt_budget_count(bt_budget_t *b, const char *key, size_t len);
/* Visits every key with its count; the key is borrowed for the call. */
BT_EXTERN void bt_budget_foreach(bt_budget_t *b,
                                 void (*fn)(void *ud, const char *key, size_t len, size_t n),
                                 void *ud);

/* ---- subprocesses ------------------------------------------------------------------- */

typedef struct bt_proc_opts {
  const char *file;           /* argv[0] is looked up on PATH */
  char **argv;                /* NULL-terminated; borrowed for the call */
  char **env;                 /* NULL = inherit; borrowed for the call */
  const char *cwd;            /* NULL = inherit */
  int pipe_stdin;             /* 1: a pipe (bt_proc_write / bt_proc_close_stdin); 0: /dev/null */
  /* 0 (the default): the child leads a new session and process group (setsid), has no
   * controlling terminal, and every signal of bt_proc_kill and bt_proc_close goes to its
   * whole group. 1: it stays in the host's group and only it is signalled. */
  int no_process_group;
} bt_proc_opts;

typedef struct bt_proc_events {
  /* Bytes arrived on stdout (fd 1) or stderr (fd 2); `len` 0 means end of stream. The data
   * is borrowed for the call. */
  void (*on_data)(bt_proc_t *p, int fd, const char *data, size_t len);
  /* The child exited (signal is 0 unless it was killed). Called once. */
  void (*on_exit)(bt_proc_t *p, int64_t code, int signal);
  /* Everything is closed; `p` is freed right after this returns. */
  void (*on_close)(bt_proc_t *p);
  /* Optional: one queued write to stdin completed (status 0) or failed;
   * bt_proc_write_queue() has shrunk. Not called for a write the pipe took at once, nor
   * after bt_proc_close(). */
  void (*on_written)(bt_proc_t *p, int status);
  void *data;
} bt_proc_events;

/* Spawns a child with argv (never a shell). On success *out is the process, owned by the
 * runtime until on_close; the caller must eventually call bt_proc_close(). Returns 0 or a
 * libuv error (UV_ENOENT for a missing program, UV_EMFILE when out of descriptors, ...); on
 * failure no event is delivered. */
BT_EXTERN int bt_proc_spawn(bt_rt_t *rt, const bt_proc_opts *opts, const bt_proc_events *ev,
                            bt_proc_t **out);
/* Writes to the child's stdin: at once when nothing is queued and the pipe takes it, else
 * the rest is copied and queued. Never waits: bound what is queued with
 * bt_proc_write_queue() and on_written. Returns 0 or a libuv error (UV_EPIPE after
 * close_stdin; once a write has failed, at once or queued, that error: the write that
 * failed returned 0). */
BT_EXTERN int bt_proc_write(bt_proc_t *p, const char *data, size_t len);
/* Bytes queued for stdin and not yet taken by the pipe. */
BT_EXTERN size_t bt_proc_write_queue(const bt_proc_t *p);
BT_EXTERN void bt_proc_close_stdin(bt_proc_t *p);
/* Sends a signal to the child's process group (to the child alone with no_process_group);
 * 0 when nothing is left to signal after the child has exited. */
BT_EXTERN int bt_proc_kill(bt_proc_t *p, int signum);
/* Stops reading stdout/stderr until bt_proc_read_start(). */
BT_EXTERN void bt_proc_read_stop(bt_proc_t *p);
BT_EXTERN void bt_proc_read_start(bt_proc_t *p);
/* Releases the caller's hold: if the child or (with a process group) another member of its
 * group still runs, the group gets SIGTERM, then SIGKILL after `grace_ms`; handles close once
 * the child has exited and its group has no live member left (or has been KILLed), then
 * on_close runs. Call exactly once. */
BT_EXTERN void bt_proc_close(bt_proc_t *p, uint64_t grace_ms);
BT_EXTERN int bt_proc_pid(const bt_proc_t *p);
/* The `data` pointer given in bt_proc_events. */
BT_EXTERN void *bt_proc_data(const bt_proc_t *p);
BT_EXTERN int bt_proc_exited(const bt_proc_t *p);
/* Live child processes started by this runtime and not yet closed. */
BT_EXTERN size_t bt_rt_procs(bt_rt_t *rt);

/* ---- HTTP: libcurl's multi interface driven by the runtime's loop ------------------- */

typedef struct bt_http_req bt_http_req_t;

typedef struct bt_http_opts bt_http_opts;
struct bt_http_opts {
  const char *url;                  /* absolute http:// or https:// URL; copied */
  const char *method;               /* NULL: GET, or POST when there is a body; copied */
  const char *const *headers;       /* "Name: value" lines, NULL-terminated, or NULL; copied */
  const char *body;                 /* NULL: no body; copied */
  size_t body_len;
  uint64_t connect_timeout_ms;      /* 0: libcurl's default */
  size_t max_body_bytes;            /* 0: no limit; more fails the transfer as too large */
  size_t max_header_bytes;          /* 0: no limit */
  long max_redirects;               /* 0: redirects are not followed */
  const char *ca_file;              /* PEM bundle of trusted CAs; NULL: the system's; copied */
  int stream;                       /* 1: the body is handed over as it arrives (below) */
  size_t stream_buffer;             /* stream: unread bytes at which reading pauses; 0: 1 MiB */
  /* stream: called when the response head is complete and each time body bytes arrive,
   * possibly from inside libcurl: it may record or wake a task, and must not call any
   * bt_http_* function. Required with `stream`. */
  void (*on_event)(bt_http_req_t *r, void *data);
};

/* The transfer ended (success or failure): called once, from the loop, never from inside
 * bt_http_start() or bt_http_free(). Read the outcome with the accessors below. */
typedef void (*bt_http_cb)(bt_http_req_t *r, void *data);

/* Starts a transfer on the runtime's multi handle (created on first use; connections are
 * kept and reused across transfers). On success *out is the transfer, owned by the caller
 * until bt_http_free(). Returns 0, BT_EINVAL (the URL or an option was refused: no callback,
 * no transfer) or BT_ENOMEM. */
BT_EXTERN int bt_http_start(bt_rt_t *rt, const bt_http_opts *o, bt_http_cb done, void *data,
                            bt_http_req_t **out);
/* Removes a transfer still running (no callback follows) and frees it. Accepts NULL. Not to
 * be called from inside the done callback of another transfer's bt_http_* call chain; any
 * other time is fine (it is never called from inside libcurl). */
BT_EXTERN void bt_http_free(bt_http_req_t *r);
/* After the callback: 0 when a response was received (any status), else a negative code;
 * bt_http_error() then names it: `kind` is one of "connect", "timeout", "too_large", "tls",
 * "protocol", "io", "resource" (no socket could be made: out of descriptors, or out of
 * memory buffering the response) — the kinds of docs/errors.md — and the message (static or
 * the transfer's own storage) says what happened. */
BT_EXTERN int bt_http_result(const bt_http_req_t *r);
BT_EXTERN const char *bt_http_error(const bt_http_req_t *r, const char **kind);
BT_EXTERN long bt_http_status(const bt_http_req_t *r);
/* The final response's body and its raw header lines ("Name: value\r\n", status line
 * excluded), both NUL-terminated, borrowed until bt_http_free(). */
BT_EXTERN const char *bt_http_body(const bt_http_req_t *r, size_t *len);
BT_EXTERN const char *bt_http_headers(const bt_http_req_t *r, size_t *len);
/* The URL of the final response (after redirects), borrowed until bt_http_free(). */
BT_EXTERN const char *bt_http_url(const bt_http_req_t *r);
/* Streaming. The head (status, headers) is complete once bt_http_head_done() (a transfer
 * may also finish without one: a failure, or a response with no end of headers); the body's
 * unread bytes are bt_http_peek() (borrowed until the next bt_http_* call on `r`) and
 * bt_http_consume() hands them over, resuming a transfer paused on a full buffer (it may
 * call on_event before it returns). bt_http_finished(): the done callback has run;
 * bt_http_status() is valid from the head on. */
BT_EXTERN int bt_http_head_done(const bt_http_req_t *r);
BT_EXTERN int bt_http_finished(const bt_http_req_t *r);
BT_EXTERN const char *bt_http_peek(const bt_http_req_t *r, size_t *len);
BT_EXTERN void bt_http_consume(bt_http_req_t *r, size_t n);
/* Transfers started and not yet freed; poll handles watching sockets now. */
BT_EXTERN size_t bt_rt_transfers(bt_rt_t *rt);
BT_EXTERN size_t bt_rt_http_sockets(bt_rt_t *rt);
/* Parses an HTTP date (Retry-After); returns seconds since the epoch, or -1. */
BT_EXTERN int64_t bt_http_parse_date(const char *s);

/* ---- wait queues, channels, notifications ------------------------------------------ */

/* A FIFO of waiter records (caller-owned storage, like bt_sem_waiter_t) used by channels
 * and notifications. A queued waiter is called once, from the call that unqueued it, with
 * 0 (its turn: what that means is the source's) or BT_ECLOSED; bt_waiter_cancel() unlinks
 * it without a call (a wait's cancel function uses it). */
typedef struct bt_waiter bt_waiter_t;
typedef void (*bt_waiter_cb)(bt_waiter_t *w, int status);
typedef struct bt_waitq {
  TAILQ_HEAD(, bt_waiter) head;
  size_t n;
} bt_waitq_t;
struct bt_waiter {
  TAILQ_ENTRY(bt_waiter) link;
  bt_waitq_t *q;     /* non-NULL while queued */
  bt_waiter_cb cb;
};
/* A no-op for a waiter not queued. */
BT_EXTERN void bt_waiter_cancel(bt_waiter_t *w);

/* A channel: the waiting and the order of a bounded FIFO queue whose items the caller
 * stores (the Lua binding keeps Lua values in a ring of its own). The channel counts the
 * items, holds `cap` of them unclaimed (0: a rendezvous, an item is put only for a waiting
 * receiver), queues senders while it is full and receivers while it is empty, each side in
 * FIFO order, and never moves an item itself: it hands out turns.
 *
 * Hand-off by reservation, so that a waiter that is woken and then cancelled before it runs
 * loses nothing and takes nothing:
 *  - a receiver's waiter called with 0 has the oldest unclaimed item reserved for it; when
 *    it runs it takes the head item (bt_chan_pop(c, 1)), or, cancelled meanwhile, gives
 *    the reservation back (bt_chan_unreserve_item): the item never left the queue, and the
 *    next receiver is woken for it;
 *  - a sender's waiter called with 0 has room reserved for one item; when it runs it puts
 *    its item at the tail (bt_chan_push(c, 1)), or, cancelled meanwhile or finding the
 *    channel closed, gives the room back (bt_chan_unreserve_room): it sent nothing.
 * Reserved items and room are counted, so a newcomer never overtakes a woken waiter.
 * Closing fails every queued waiter with BT_ECLOSED; receivers still take what is queued
 * (bt_chan_can_recv() says BT_ECLOSED only once nothing unclaimed is left). Caller-owned
 * storage; no destroy (close it to fail its waiters). Fields are private. */
typedef struct bt_chan {
  size_t cap;
  size_t len;        /* items queued */
  size_t rsv_items;  /* of them, reserved for receivers woken and not yet run */
  size_t rsv_room;   /* room reserved for senders woken and not yet run */
  int closed;
  bt_waitq_t senders, receivers;
} bt_chan_t;

BT_EXTERN void bt_chan_init(bt_chan_t *c, size_t cap);
/* 0: the caller may put one item at the tail now, then calls bt_chan_push(c, 0);
 * BT_EBUSY: it would have to wait (bt_chan_wait_send); BT_ECLOSED. */
BT_EXTERN int bt_chan_can_send(const bt_chan_t *c);
/* Queues a sender (after BT_EBUSY): `cb(w, 0)` when room is reserved for it, or
 * `cb(w, BT_ECLOSED)`. */
BT_EXTERN void bt_chan_wait_send(bt_chan_t *c, bt_waiter_t *w, bt_waiter_cb cb);
/* An item was put at the tail, by a sender that found room (`reserved` 0) or one whose
 * room was reserved (1). Wakes receivers for the items nobody has claimed. */
BT_EXTERN void bt_chan_push(bt_chan_t *c, int reserved);
BT_EXTERN void bt_chan_unreserve_room(bt_chan_t *c);
/* Batches. bt_chan_room(): how many items a sender that is not queued may put now, 0 when
 * it would have to wait (full, senders queued, or closed); a sender woken with reserved
 * room may put one more than that. bt_chan_push_n(c, n, reserved): n items put at the
 * tail at once (the first into the reserved room when `reserved`). A receiver may take
 * bt_chan_len() items from the head, one more when woken with one reserved, then calls
 * bt_chan_pop_n(c, n, reserved). */
BT_EXTERN size_t bt_chan_room(const bt_chan_t *c);
BT_EXTERN void bt_chan_push_n(bt_chan_t *c, size_t n, int reserved);
BT_EXTERN void bt_chan_pop_n(bt_chan_t *c, size_t n, int reserved);
/* 0: an unclaimed item is there: the caller takes the head now, then calls
 * bt_chan_pop(c, 0); BT_EBUSY: it would have to wait (bt_chan_wait_recv); BT_ECLOSED:
 * closed and drained. */
BT_EXTERN int bt_chan_can_recv(const bt_chan_t *c);
/* Queues a receiver (after BT_EBUSY): `cb(w, 0)` when an item is reserved for it, or
 * `cb(w, BT_ECLOSED)` when the channel closes with nothing left for it. */
BT_EXTERN void bt_chan_wait_recv(bt_chan_t *c, bt_waiter_t *w, bt_waiter_cb cb);
/* The head item was taken, by a receiver that found it (`reserved` 0) or one it was
 * reserved for (1). Wakes senders for the room. */
BT_EXTERN void bt_chan_pop(bt_chan_t *c, int reserved);
BT_EXTERN void bt_chan_unreserve_item(bt_chan_t *c);
/* Fails every queued waiter with BT_ECLOSED; later sends fail. Idempotent. */
BT_EXTERN void bt_chan_close(bt_chan_t *c);
/* Items queued and not reserved for a receiver. */
BT_EXTERN size_t bt_chan_len(const bt_chan_t *c);
BT_EXTERN size_t bt_chan_capacity(const bt_chan_t *c);
BT_EXTERN int bt_chan_closed(const bt_chan_t *c);
BT_EXTERN size_t bt_chan_senders(const bt_chan_t *c);    /* queued, not yet woken */
BT_EXTERN size_t bt_chan_receivers(const bt_chan_t *c);

/* A notification (Tokio's Notify): bt_notify_one() wakes the oldest waiter, or, when
 * nobody waits, stores one permit that the next bt_notify_wait() takes without waiting;
 * bt_notify_all() wakes every waiter queued now and stores nothing. A waiter woken by
 * bt_notify_one() whose task is cancelled before it runs should pass the notification on
 * (bt_notify_one again), so none is lost. Caller-owned storage; no destroy. */
typedef struct bt_notify {
  bt_waitq_t waiters;
  int permit;
} bt_notify_t;

BT_EXTERN void bt_notify_init(bt_notify_t *n);
/* Takes the stored permit (returns 1: no wait) or queues `w` (returns 0): `cb(w, 0)` when
 * notified. */
BT_EXTERN int bt_notify_wait(bt_notify_t *n, bt_waiter_t *w, bt_waiter_cb cb);
/* Returns 1 if a waiter was woken, 0 if the permit was stored. */
BT_EXTERN int bt_notify_one(bt_notify_t *n);
/* Calls every waiter queued now with `status` (0, or BT_ECLOSED for a source that closes);
 * returns how many. */
BT_EXTERN size_t bt_notify_all(bt_notify_t *n, int status);
BT_EXTERN size_t bt_notify_waiting(const bt_notify_t *n);

#ifdef __cplusplus
}
#endif
#endif /* BATON_H */
