/*
 * chan.c — a channel: who waits and in what order around a bounded FIFO queue whose items
 * the caller stores (baton.h explains the protocol). The core never touches an item, so the
 * Lua binding keeps Lua values where the collector sees them.
 *
 * Counts: `len` items queued, `rsv_items` of them reserved for woken receivers (the oldest
 * ones), `rsv_room` room reserved for woken senders. Unclaimed items U = len - rsv_items.
 * Invariants at every return:
 *  - U > 0 implies no receiver is queued (one would have been woken for it);
 *  - a send fits iff U + rsv_room < cap + (receivers queued): a queued receiver is room for
 *    one more item, which makes capacity 0 a rendezvous; queued senders mean it does not
 *    fit (one would have been woken), so a newcomer never overtakes them;
 *  - every waiter unqueued by a grant is called exactly once, after the counts were updated,
 *    so its callback may wake a task whose wait's cancel unqueues other waiters (a select
 *    over several channels) from this very channel: the grant loops re-read the queues.
 * Cancelling a queued waiter needs no re-grant: a queued sender holds no room, and a
 * queued receiver that leaves only takes room away (an item already put for it stays
 * queued, unclaimed, for the next receiver).
 */
#include "waitq.h"

void bt_chan_init(bt_chan_t *c, size_t cap) {
  c->cap = cap;
  c->len = c->rsv_items = c->rsv_room = 0;
  c->closed = 0;
  bt__waitq_init(&c->senders);
  bt__waitq_init(&c->receivers);
}

static size_t unclaimed(const bt_chan_t *c) { return c->len - c->rsv_items; }

static int fits(const bt_chan_t *c) {
  return unclaimed(c) + c->rsv_room < c->cap + c->receivers.n;
}

/* The grant loops, called when something may be granted; push and pop test the queue's
 * count first, so a value passed while nobody waits (a channel's usual state between task
 * switches) costs no call. */
static void grant_receivers(bt_chan_t *c) {
  bt_waiter_t *w;
  while (unclaimed(c) > 0 && (w = bt__waitq_shift(&c->receivers)) != NULL) {
    c->rsv_items++;
    w->cb(w, 0);
  }
}

static void grant_senders(bt_chan_t *c) {
  while (!c->closed && c->senders.n > 0 && fits(c)) {
    bt_waiter_t *w = bt__waitq_shift(&c->senders);
    c->rsv_room++;
    w->cb(w, 0);
  }
}

static inline void push_n(bt_chan_t *c, size_t n, int reserved) {
  c->len += n;
  if (reserved && c->rsv_room > 0) c->rsv_room--;
  if (c->receivers.n > 0) grant_receivers(c);
}

static inline void pop_n(bt_chan_t *c, size_t n, int reserved) {
  c->len = n < c->len ? c->len - n : 0;
  if (reserved && c->rsv_items > 0) c->rsv_items--;
  if (c->senders.n > 0) grant_senders(c);
}

int bt_chan_can_send(const bt_chan_t *c) {
  if (c->closed) return BT_ECLOSED;
  return c->senders.n == 0 && fits(c) ? 0 : BT_EBUSY;
}

void bt_chan_wait_send(bt_chan_t *c, bt_waiter_t *w, bt_waiter_cb cb) {
  bt__waitq_push(&c->senders, w, cb);
}

size_t bt_chan_room(const bt_chan_t *c) {
  if (c->closed || c->senders.n > 0) return 0;
  size_t have = unclaimed(c) + c->rsv_room, limit = c->cap + c->receivers.n;
  return have < limit ? limit - have : 0;
}

void bt_chan_push_n(bt_chan_t *c, size_t n, int reserved) { push_n(c, n, reserved); }
void bt_chan_push(bt_chan_t *c, int reserved) { push_n(c, 1, reserved); }

void bt_chan_unreserve_room(bt_chan_t *c) {
  if (c->rsv_room > 0) c->rsv_room--;
  grant_senders(c);
}

int bt_chan_can_recv(const bt_chan_t *c) {
  if (unclaimed(c) > 0) return 0;
  return c->closed ? BT_ECLOSED : BT_EBUSY;
}

void bt_chan_wait_recv(bt_chan_t *c, bt_waiter_t *w, bt_waiter_cb cb) {
  bt__waitq_push(&c->receivers, w, cb);
  grant_senders(c);  /* a waiting receiver is room for one more item */
}

void bt_chan_pop_n(bt_chan_t *c, size_t n, int reserved) { pop_n(c, n, reserved); }
void bt_chan_pop(bt_chan_t *c, int reserved) { pop_n(c, 1, reserved); }

void bt_chan_unreserve_item(bt_chan_t *c) {
  if (c->rsv_items > 0) c->rsv_items--;
  grant_receivers(c);
}

void bt_chan_close(bt_chan_t *c) {
  if (c->closed) return;
  c->closed = 1;
  bt_waiter_t *w;
  while ((w = bt__waitq_shift(&c->senders)) != NULL) w->cb(w, BT_ECLOSED);
  while ((w = bt__waitq_shift(&c->receivers)) != NULL) w->cb(w, BT_ECLOSED);
}

size_t bt_chan_len(const bt_chan_t *c) { return unclaimed(c); }
size_t bt_chan_capacity(const bt_chan_t *c) { return c->cap; }
int bt_chan_closed(const bt_chan_t *c) { return c->closed; }
size_t bt_chan_senders(const bt_chan_t *c) { return c->senders.n; }
size_t bt_chan_receivers(const bt_chan_t *c) { return c->receivers.n; }
