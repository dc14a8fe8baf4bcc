/*
 * sem.c — a counting semaphore, FIFO with direct hand-off.
 *
 * Permits released go straight to the queue's head while it fits (`k` <= available), so a
 * waiter never loses its place to a newcomer: try_acquire fails while anyone is queued.
 * A waiter that leaves the queue (cancel, timeout) re-runs the grant loop, because a large
 * request at the head may have been holding back smaller ones behind it. Weighted requests
 * are head-of-line FIFO: a request for k permits at the head is served before any request
 * behind it, however small, so a large request is never starved by a stream of small ones
 * (the cost: small requests wait behind a large one even when they would fit). Waiters are
 * caller-owned records linked into the queue: waiting never allocates.
 *
 * Invariant: avail + (permits held) == cap. bt_sem_add_permits grows both; bt_sem_forget
 * shrinks both by permits that are available, never by held ones, so a release never has
 * to decide whether its permits still exist.
 */
#include <stdint.h>
#include <stdlib.h>

#include "internal.h"

void bt__sem_init(bt_sem_t *s, size_t permits) {
  s->avail = s->cap = permits;
  s->closed = 0;
  s->nwaiting = 0;
  TAILQ_INIT(&s->waiters);
}

bt_sem_t *bt_sem_new(size_t permits) {
  bt_sem_t *s = malloc(sizeof *s);
  if (s == NULL) return NULL;
  bt__sem_init(s, permits);
  return s;
}

void bt_sem_free(bt_sem_t *s) {
  if (s == NULL) return;
  bt_sem_close(s);
  free(s);
}

size_t bt_sem_available(const bt_sem_t *s) { return s->avail; }
size_t bt_sem_capacity(const bt_sem_t *s) { return s->cap; }
size_t bt_sem_waiting(const bt_sem_t *s) { return s->nwaiting; }
int bt_sem_closed(const bt_sem_t *s) { return s->closed; }

static void unlink_waiter(bt_sem_t *s, bt_sem_waiter_t *w) {
  TAILQ_REMOVE(&s->waiters, w, link);
  s->nwaiting--;
  w->sem = NULL;
}

/* Hands permits to the head while it fits. Re-reads the head after each callback, which may
 * queue or cancel waiters. */
static void grant(bt_sem_t *s) {
  bt_sem_waiter_t *w;
  while (!s->closed && (w = TAILQ_FIRST(&s->waiters)) != NULL && w->k <= s->avail) {
    s->avail -= w->k;
    unlink_waiter(s, w);
    w->cb(w, 0);
  }
}

int bt_sem_try_acquire(bt_sem_t *s, size_t k) {
  if (s->closed) return BT_ECLOSED;
  if (k > s->cap) return BT_EINVAL;
  if (s->nwaiting > 0 || k > s->avail) return BT_EBUSY;
  s->avail -= k;
  return 0;
}

static int acquire(bt_sem_t *s, bt_sem_waiter_t *w, size_t k, bt_sem_cb cb, int any) {
  int rc = bt_sem_try_acquire(s, k);
  if (rc == 0) return 1;
  if (rc != BT_EBUSY && !(any && rc == BT_EINVAL)) return rc;
  w->sem = s;
  w->k = k;
  w->cb = cb;
  TAILQ_INSERT_TAIL(&s->waiters, w, link);
  s->nwaiting++;
  return 0;
}

int bt_sem_acquire(bt_sem_t *s, bt_sem_waiter_t *w, size_t k, bt_sem_cb cb) {
  return acquire(s, w, k, cb, 0);
}

int bt__sem_acquire_any(bt_sem_t *s, bt_sem_waiter_t *w, size_t k, bt_sem_cb cb) {
  return acquire(s, w, k, cb, 1);
}

void bt_sem_cancel(bt_sem_waiter_t *w) {
  bt_sem_t *s = w->sem;
  if (s == NULL) return;
  int was_head = TAILQ_FIRST(&s->waiters) == w;
  unlink_waiter(s, w);
  if (was_head) grant(s);
}

void bt_sem_release(bt_sem_t *s, size_t k) {
  s->avail += k;
  if (s->avail > s->cap) s->avail = s->cap;  /* a double release must not mint permits */
  grant(s);
}

void bt_sem_add_permits(bt_sem_t *s, size_t n) {
  if (n > SIZE_MAX - s->cap) n = SIZE_MAX - s->cap;
  s->cap += n;
  s->avail += n;
  grant(s);
}

size_t bt_sem_forget(bt_sem_t *s, size_t n) {
  if (n > s->avail) n = s->avail;
  s->avail -= n;
  s->cap -= n;
  return n;
}

void bt_sem_close(bt_sem_t *s) {
  if (s->closed) return;
  s->closed = 1;
  bt_sem_waiter_t *w;
  while ((w = TAILQ_FIRST(&s->waiters)) != NULL) {
    unlink_waiter(s, w);
    w->cb(w, BT_ECLOSED);
  }
}
