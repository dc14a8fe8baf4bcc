/*
 * waitq.h — the FIFO of waiter records under channels and notifications (waitq.c). Private
 * to the core; the record types are public (baton.h) because callers own their storage.
 *
 * A waiter is on at most one queue, and w->q says which (NULL: none). Unqueuing always goes
 * through bt__waitq_shift() or bt_waiter_cancel(), so w->q and the count stay true.
 */
#ifndef BATON_WAITQ_H
#define BATON_WAITQ_H

#include "internal.h"

void bt__waitq_init(bt_waitq_t *q);
void bt__waitq_push(bt_waitq_t *q, bt_waiter_t *w, bt_waiter_cb cb);
/* Unlinks and returns the oldest waiter (its callback not called), or NULL. */
bt_waiter_t *bt__waitq_shift(bt_waitq_t *q);

#endif
