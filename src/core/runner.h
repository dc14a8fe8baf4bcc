/*
 * runner.h — the queued-work runner's state machine (see runner.c): pokes and completions
 * queued in order, per-session in-flight suppression, and a periodic poll on the runtime's
 * timer heap. Lua-agnostic; src/lua/lrunner.c binds it.
 *
 * The runner does not run the work itself. One driver (a task, in the Lua binding) loops:
 *   bt__runner_next()  -> 1: a request to drive: run the handler, then bt__runner_done();
 *                        0: nothing to do now:
 *   bt__runner_park()  -> 0: parked; the wake callback runs once, when a poke or
 *                        completion arrives, the next poll is due, or the runner stops;
 *                        1: work arrived meanwhile, call next again; BT_ECLOSED: stopped.
 * Drives are serial: at most one request is out at a time, as in the seed's single loop.
 */
#ifndef BATON_RUNNER_H
#define BATON_RUNNER_H

#include "baton.h"

typedef struct bt_runner bt_runner_t;

/* A request to drive. The strings are borrowed until bt__runner_done(). */
typedef struct bt_runner_req {
  const char *session_id;  /* NUL-terminated, or NULL for a global drive */
  size_t session_len;
  const char *reason;      /* "startup", "poll", or the poke's / completion's reason */
  size_t reason_len;
  int trace_idle;          /* 1 for pokes; 0 for startup, poll and completions */
} bt_runner_req;

typedef enum { BT_RUNNER_NEW = 0, BT_RUNNER_STARTED, BT_RUNNER_STOPPED } bt_runner_state_t;

typedef void (*bt_runner_wake_cb)(bt_runner_t *r, void *data);

/* A runner polling every `poll_ms` (>= 1) once started. NULL on allocation failure. The
 * caller owns it; bt__runner_free() accepts NULL. */
bt_runner_t *bt__runner_new(bt_rt_t *rt, uint64_t poll_ms);
void bt__runner_free(bt_runner_t *r);
/* NEW -> STARTED: the startup drive goes ahead of anything poked before. The first poll is
 * due `poll_ms` after the startup drive is done. Returns 0, BT_ENOMEM, or BT_EINVAL when
 * not NEW. */
int bt__runner_start(bt_runner_t *r);
/* -> STOPPED, for good: the poll timer is stopped, queued commands and the in-flight set
 * are dropped, a parked driver is woken (its park then returns BT_ECLOSED). A drive under
 * way may still report bt__runner_done(). Idempotent. */
void bt__runner_stop(bt_runner_t *r);
bt_runner_state_t bt__runner_state(const bt_runner_t *r);

/* Queue a poke: global when `session_id` is NULL. Strings are copied. Returns 0, BT_ENOMEM,
 * or BT_ECLOSED once stopped (the poke is dropped, as the seed drops a send to a runner
 * that is gone). */
int bt__runner_poke(bt_runner_t *r, const char *session_id, size_t session_len,
                   const char *reason, size_t reason_len);
/* Queue a completion: when served, the session leaves the in-flight set and is driven
 * again. Same returns as bt__runner_poke(). */
int bt__runner_complete(bt_runner_t *r, const char *session_id, size_t session_len,
                       const char *reason, size_t reason_len);

/* The next request to drive (1), or 0 when there is none now (or a drive is out, or the
 * runner is not started). Suppressed requests are consumed here: a global request while
 * any session is in flight, a session request while that session is in flight. */
int bt__runner_next(bt_runner_t *r, bt_runner_req *req);
/* The drive handed out by bt__runner_next() is over. `submitted` (len bytes, copied) is the
 * session it submitted, which is now in flight; NULL for idle or a failed drive. Returns 0,
 * or BT_ENOMEM if the session could not be recorded. */
int bt__runner_done(bt_runner_t *r, const char *submitted, size_t len);
/* See the top of this file. `cb` runs at most once per park, from a libuv callback or from
 * the call that queued work; it must only schedule the driver, not drive. */
int bt__runner_park(bt_runner_t *r, bt_runner_wake_cb cb, void *data);
/* Drops the wake callback and stops the poll timer; a no-op when not parked. */
void bt__runner_unpark(bt_runner_t *r);

size_t bt__runner_inflight(const bt_runner_t *r);
int bt__runner_is_inflight(const bt_runner_t *r, const char *session_id, size_t len);
/* Visits the in-flight sessions in the order they were submitted; ids borrowed for the call. */
void bt__runner_foreach_inflight(const bt_runner_t *r,
                                void (*fn)(void *ud, const char *id, size_t len), void *ud);
/* Commands queued and not yet served, plus the drive under way. */
size_t bt__runner_pending(const bt_runner_t *r);

#endif
