/*
 * event.c — a one-shot event: tasks wait until it is set, once; setting it wakes every
 * waiter (no order among them is promised). A waiter aborted or timed out unlinks itself
 * through its wait's cancel. The waiters' records are the callers' (bt_joiner_t), so
 * waiting never allocates.
 */
#include "internal.h"

void bt_event_init(bt_event_t *ev) {
  LIST_INIT(&ev->waiters);
  ev->set = 0;
}

int bt_event_wait(bt_rt_t *rt, bt_event_t *ev, bt_task_t *self, bt_joiner_t *j, bt_wait_t *w,
                  uint64_t due) {
  if (ev->set) return 1;
  j->wait = w;
  LIST_INSERT_HEAD(&ev->waiters, j, link);
  w->src = j;
  bt_task_wait(rt, self, w, bt__joiner_cancel, due);
  return 0;
}

int bt_event_set(bt_rt_t *rt, bt_event_t *ev) {
  if (ev->set) return 0;
  ev->set = 1;
  bt__wake_joiners(rt, &ev->waiters);
  return 1;
}

size_t bt_event_waiting(const bt_event_t *ev) {
  size_t n = 0;
  const bt_joiner_t *j;
  LIST_FOREACH(j, &ev->waiters, link) n++;
  return n;
}
