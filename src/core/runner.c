/*
 * runner.c — the queued-work runner (seed 004): decides when the embedder's handler is
 * driven, and for which session.
 *
 * Requests come from three places: commands queued by bt__runner_poke()/complete() (FIFO,
 * the startup drive at the head), and the poll, due every poll_ms. One driver serves them
 * one at a time; queued commands first, then a due poll. A request is suppressed — taken
 * off and dropped without driving — when it is global and any session is in flight, or
 * when its session is in flight. A completion first removes its session from the in-flight
 * set, so its own drive goes ahead; a drive that reports a submitted session puts that
 * session in flight.
 *
 * The poll (Tokio's interval with MissedTickBehavior::Delay): a poll that comes due while
 * a drive is out waits for it, then fires once, and the next one is due poll_ms after
 * that — missed ticks are delayed, never bunched. An on-time poll keeps the cadence
 * (next = due + poll_ms). The first poll is due poll_ms after the startup drive ends.
 *
 * Invariants: `busy` iff a request is out (then `cur` is its command, or NULL for a poll);
 * the timer is armed only while a driver is parked (`wake` != NULL) and a poll is
 * scheduled; nothing is queued or in flight once STOPPED.
 */
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "internal.h"
#include "runner.h"

enum { K_STARTUP, K_POKE, K_COMPLETE };

typedef struct cmd {
  STAILQ_ENTRY(cmd) link;
  int kind;
  char *sid;               /* into buf, or NULL (global) */
  size_t sid_len;
  char *reason;            /* into buf */
  size_t reason_len;
  char buf[];
} cmd;

typedef struct session {
  UT_hash_handle hh;
  size_t len;
  char id[];
} session;

struct bt_runner {
  bt_rt_t *rt;
  uint64_t poll_ms;
  uint64_t next_poll;      /* absolute loop ms; 0 until the startup drive is done */
  int state;               /* bt_runner_state_t */
  int busy;
  cmd *cur;
  STAILQ_HEAD(, cmd) queue;
  size_t nqueued;
  session *inflight;       /* uthash, submission order */
  bt_timer_t timer;
  bt_runner_wake_cb wake;
  void *wake_data;
};

bt_runner_t *bt__runner_new(bt_rt_t *rt, uint64_t poll_ms) {
  bt_runner_t *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  r->rt = rt;
  r->poll_ms = poll_ms ? poll_ms : 1;
  r->state = BT_RUNNER_NEW;
  STAILQ_INIT(&r->queue);
  return r;
}

static void clear_queue(bt_runner_t *r) {
  cmd *c;
  while ((c = STAILQ_FIRST(&r->queue)) != NULL) {
    STAILQ_REMOVE_HEAD(&r->queue, link);
    free(c);
  }
  r->nqueued = 0;
}

static void clear_inflight(bt_runner_t *r) {
  session *s, *tmp;
  HASH_ITER(hh, r->inflight, s, tmp) {
    HASH_DEL(r->inflight, s);
    free(s);
  }
}

void bt__runner_free(bt_runner_t *r) {
  if (r == NULL) return;
  bt__runner_stop(r);
  free(r->cur);
  free(r);
}

/* Calls the parked driver's wake callback once. */
static void wake(bt_runner_t *r) {
  bt_runner_wake_cb cb = r->wake;
  void *data = r->wake_data;
  bt__runner_unpark(r);
  if (cb != NULL) cb(r, data);
}

void bt__runner_stop(bt_runner_t *r) {
  if (r->state == BT_RUNNER_STOPPED) return;
  r->state = BT_RUNNER_STOPPED;
  clear_queue(r);
  clear_inflight(r);
  wake(r);
}

bt_runner_state_t bt__runner_state(const bt_runner_t *r) { return (bt_runner_state_t)r->state; }

static cmd *new_cmd(int kind, const char *sid, size_t sid_len, const char *reason,
                    size_t reason_len) {
  size_t n = reason_len + 1 + (sid ? sid_len + 1 : 0);
  cmd *c = malloc(sizeof *c + n);
  if (c == NULL) return NULL;
  c->kind = kind;
  c->reason = c->buf;
  memcpy(c->reason, reason, reason_len);
  c->reason[reason_len] = '\0';
  c->reason_len = reason_len;
  c->sid = NULL;
  c->sid_len = 0;
  if (sid != NULL) {
    c->sid = c->buf + reason_len + 1;
    memcpy(c->sid, sid, sid_len);
    c->sid[sid_len] = '\0';
    c->sid_len = sid_len;
  }
  return c;
}

int bt__runner_start(bt_runner_t *r) {
  if (r->state != BT_RUNNER_NEW) return BT_EINVAL;
  cmd *c = new_cmd(K_STARTUP, NULL, 0, "startup", 7);
  if (c == NULL) return BT_ENOMEM;
  STAILQ_INSERT_HEAD(&r->queue, c, link);
  r->nqueued++;
  r->state = BT_RUNNER_STARTED;
  wake(r);
  return 0;
}

static int enqueue(bt_runner_t *r, int kind, const char *sid, size_t sid_len,
                   const char *reason, size_t reason_len) {
  if (r->state == BT_RUNNER_STOPPED) return BT_ECLOSED;
  cmd *c = new_cmd(kind, sid, sid_len, reason, reason_len);
  if (c == NULL) return BT_ENOMEM;
  STAILQ_INSERT_TAIL(&r->queue, c, link);
  r->nqueued++;
  wake(r);
  return 0;
}

int bt__runner_poke(bt_runner_t *r, const char *session_id, size_t session_len,
                   const char *reason, size_t reason_len) {
  return enqueue(r, K_POKE, session_id, session_len, reason, reason_len);
}

int bt__runner_complete(bt_runner_t *r, const char *session_id, size_t session_len,
                       const char *reason, size_t reason_len) {
  return enqueue(r, K_COMPLETE, session_id, session_len, reason, reason_len);
}

static session *find(const bt_runner_t *r, const char *id, size_t len) {
  session *s;
  HASH_FIND(hh, r->inflight, id, len, s);
  return s;
}

int bt__runner_is_inflight(const bt_runner_t *r, const char *id, size_t len) {
  return find(r, id, len) != NULL;
}

size_t bt__runner_inflight(const bt_runner_t *r) { return HASH_COUNT(r->inflight); }

void bt__runner_foreach_inflight(const bt_runner_t *r,
                                void (*fn)(void *ud, const char *id, size_t len), void *ud) {
  for (const session *s = r->inflight; s != NULL; s = s->hh.next) fn(ud, s->id, s->len);
}

size_t bt__runner_pending(const bt_runner_t *r) { return r->nqueued + (r->busy ? 1u : 0u); }

static int suppressed(const bt_runner_t *r, const cmd *c) {
  if (c->sid == NULL) return r->inflight != NULL;
  return find(r, c->sid, c->sid_len) != NULL;
}

int bt__runner_next(bt_runner_t *r, bt_runner_req *req) {
  if (r->state != BT_RUNNER_STARTED || r->busy) return 0;
  cmd *c;
  while ((c = STAILQ_FIRST(&r->queue)) != NULL) {
    STAILQ_REMOVE_HEAD(&r->queue, link);
    r->nqueued--;
    if (c->kind == K_COMPLETE) {
      session *s = find(r, c->sid, c->sid_len);
      if (s != NULL) {
        HASH_DEL(r->inflight, s);
        free(s);
      }
    }
    if (suppressed(r, c)) {
      free(c);
      continue;
    }
    r->busy = 1;
    r->cur = c;
    req->session_id = c->sid;
    req->session_len = c->sid_len;
    req->reason = c->reason;
    req->reason_len = c->reason_len;
    req->trace_idle = c->kind == K_POKE;
    return 1;
  }
  if (r->next_poll == 0) return 0;
  uint64_t now = bt_now(r->rt);
  if (now < r->next_poll) return 0;
  /* On time: keep the cadence. Late (a drive was out, or the loop lagged): fire once now
   * and delay the next one by a whole period. */
  r->next_poll = r->next_poll + r->poll_ms > now ? r->next_poll + r->poll_ms : now + r->poll_ms;
  if (r->inflight != NULL) return 0;  /* suppressed; the tick is spent */
  r->busy = 1;
  r->cur = NULL;
  req->session_id = NULL;
  req->session_len = 0;
  req->reason = "poll";
  req->reason_len = 4;
  req->trace_idle = 0;
  return 1;
}

int bt__runner_done(bt_runner_t *r, const char *submitted, size_t len) {
  if (!r->busy) return 0;
  r->busy = 0;
  free(r->cur);
  r->cur = NULL;
  if (r->state != BT_RUNNER_STARTED) return 0;
  if (r->next_poll == 0) r->next_poll = bt_now(r->rt) + r->poll_ms;
  if (submitted == NULL || find(r, submitted, len) != NULL) return 0;
  session *s = malloc(sizeof *s + len + 1);
  if (s == NULL) return BT_ENOMEM;
  s->len = len;
  memcpy(s->id, submitted, len);
  s->id[len] = '\0';
  HASH_ADD(hh, r->inflight, id[0], len, s);
  return 0;
}

static void on_poll(bt_timer_t *t) { wake(bt_container_of(t, bt_runner_t, timer)); }

int bt__runner_park(bt_runner_t *r, bt_runner_wake_cb cb, void *data) {
  if (r->state == BT_RUNNER_STOPPED) return BT_ECLOSED;
  if (r->state == BT_RUNNER_STARTED && !r->busy &&
      (r->nqueued > 0 || (r->next_poll != 0 && bt_now(r->rt) >= r->next_poll)))
    return 1;
  r->wake = cb;
  r->wake_data = data;
  if (r->state == BT_RUNNER_STARTED && r->next_poll != 0) {
    int rc = bt_timer_start(r->rt, &r->timer, r->next_poll, on_poll);
    if (rc != 0) {
      r->wake = NULL;
      return rc;
    }
  }
  return 0;
}

void bt__runner_unpark(bt_runner_t *r) {
  r->wake = NULL;
  r->wake_data = NULL;
  bt_timer_stop(r->rt, &r->timer);
}
