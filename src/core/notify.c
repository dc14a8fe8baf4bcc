/*
 * notify.c — a notification (Tokio's Notify): notify_one wakes the oldest waiter or stores
 * one permit for the next wait; notify_all wakes everyone waiting now and stores nothing.
 * At most one permit is stored: notifications to nobody do not pile up. The Lua binding's
 * watch (latest value, "changed") is a version counter on top of notify_all.
 */
#include "waitq.h"

void bt_notify_init(bt_notify_t *n) {
  bt__waitq_init(&n->waiters);
  n->permit = 0;
}

int bt_notify_wait(bt_notify_t *n, bt_waiter_t *w, bt_waiter_cb cb) {
  if (n->permit) {
    n->permit = 0;
    return 1;
  }
  bt__waitq_push(&n->waiters, w, cb);
  return 0;
}

int bt_notify_one(bt_notify_t *n) {
  bt_waiter_t *w = bt__waitq_shift(&n->waiters);
  if (w == NULL) {
    n->permit = 1;
    return 0;
  }
  w->cb(w, 0);
  return 1;
}

size_t bt_notify_all(bt_notify_t *n, int status) {
  /* Only those queued now: a callback that queues again waits for the next one. */
  size_t k = n->waiters.n, done = 0;
  bt_waiter_t *w;
  while (done < k && (w = bt__waitq_shift(&n->waiters)) != NULL) {
    done++;
    w->cb(w, status);
  }
  return done;
}

size_t bt_notify_waiting(const bt_notify_t *n) { return n->waiters.n; }
