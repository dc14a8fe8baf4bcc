/*
 * waitq.c — a FIFO of caller-owned waiter records (bt_waiter_t), shared by channels
 * (chan.c) and notifications (notify.c). Queueing never allocates; a record knows its queue
 * while it is on one, so cancelling it is O(1) and idempotent.
 */
#include "waitq.h"

void bt__waitq_init(bt_waitq_t *q) {
  TAILQ_INIT(&q->head);
  q->n = 0;
}

void bt__waitq_push(bt_waitq_t *q, bt_waiter_t *w, bt_waiter_cb cb) {
  w->q = q;
  w->cb = cb;
  TAILQ_INSERT_TAIL(&q->head, w, link);
  q->n++;
}

bt_waiter_t *bt__waitq_shift(bt_waitq_t *q) {
  bt_waiter_t *w = TAILQ_FIRST(&q->head);
  if (w != NULL) bt_waiter_cancel(w);
  return w;
}

void bt_waiter_cancel(bt_waiter_t *w) {
  bt_waitq_t *q = w->q;
  if (q == NULL) return;
  TAILQ_REMOVE(&q->head, w, link);
  q->n--;
  w->q = NULL;
}
