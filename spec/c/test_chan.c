/* Core channels and notifications, and task shielding. The channel is driven by a model:
 * senders and receivers that find room or items, wait, are woken, and are cancelled while
 * queued or after being woken but before running (the window an abort can hit); each
 * sender's items are numbered, and every item put must be taken exactly once, in each
 * sender's order, with capacity respected, whatever the interleaving. */
#include "test.h"

/* ---- a model channel: the items live here, the bt_chan_t decides who moves ------------ */

enum { IDLE, QUEUED, WOKEN, DONE };
typedef struct actor {
  bt_waiter_t w;
  int state, status, id;
  long next;     /* sender: its next item's number */
  long last[8];  /* receiver: last number seen per sender (-1: none) */
} actor;

#define RING 4096
static long ring[RING];
static size_t head, count;
static long taken[8];   /* items taken per sender */

static void woken(bt_waiter_t *w, int status) {
  actor *a = (actor *)w;
  CHECK(a->state == QUEUED);
  a->state = WOKEN;
  a->status = status;
}

static void put(bt_chan_t *c, actor *s, int reserved) {
  CHECK(count < RING);
  ring[(head + count++) % RING] = s->id * 1000000L + s->next++;
  bt_chan_push(c, reserved);
}

static void take(bt_chan_t *c, actor *r, int reserved) {
  CHECK(count > 0);
  long v = ring[head];
  head = (head + 1) % RING;
  count--;
  bt_chan_pop(c, reserved);
  int s = (int)(v / 1000000L);
  long k = v % 1000000L;
  CHECK(k == taken[s]);       /* exactly once, in the sender's order */
  CHECK(k > r->last[s]);
  r->last[s] = k;
  taken[s]++;
}

static unsigned rnd_state = 12345;
static unsigned rnd(unsigned n) {
  rnd_state = rnd_state * 1103515245u + 12345u;
  return (rnd_state >> 16) % n;
}

static void step_sender(bt_chan_t *c, actor *s) {
  switch (s->state) {
  case IDLE: {
    int rc = bt_chan_can_send(c);
    if (rc == 0) put(c, s, 0);
    else if (rc == BT_EBUSY) {
      s->state = QUEUED;
      bt_chan_wait_send(c, &s->w, woken);
    } else s->state = DONE;
    break;
  }
  case QUEUED:
    if (rnd(4) == 0) {  /* timed out or aborted while queued */
      bt_waiter_cancel(&s->w);
      s->state = IDLE;
    }
    break;
  case WOKEN:
    s->state = IDLE;
    if (s->status != 0) s->state = DONE;
    else if (rnd(4) == 0 || bt_chan_closed(c)) bt_chan_unreserve_room(c);  /* sent nothing */
    else put(c, s, 1);
    break;
  }
}

static void step_receiver(bt_chan_t *c, actor *r) {
  switch (r->state) {
  case IDLE: {
    int rc = bt_chan_can_recv(c);
    if (rc == 0) take(c, r, 0);
    else if (rc == BT_EBUSY) {
      r->state = QUEUED;
      bt_chan_wait_recv(c, &r->w, woken);
    } else r->state = DONE;
    break;
  }
  case QUEUED:
    if (rnd(4) == 0) {
      bt_waiter_cancel(&r->w);
      r->state = IDLE;
    }
    break;
  case WOKEN:
    r->state = IDLE;
    if (r->status == BT_ECLOSED) {
      if (bt_chan_can_recv(c) == 0) take(c, r, 0);
      else r->state = DONE;
    } else if (rnd(4) == 0) bt_chan_unreserve_item(c);  /* aborted before it ran */
    else take(c, r, 1);
    break;
  }
}

static void check_invariants(bt_chan_t *c) {
  CHECK(c->len == count);
  CHECK(c->rsv_items <= c->len);
  if (bt_chan_len(c) > 0) CHECK(bt_chan_receivers(c) == 0);
}

static void model(size_t cap, int nsend, int nrecv, int steps) {
  bt_chan_t c;
  bt_chan_init(&c, cap);
  actor s[8], r[8];
  memset(s, 0, sizeof s);
  memset(r, 0, sizeof r);
  head = count = 0;
  for (int i = 0; i < 8; i++) taken[i] = 0;
  for (int i = 0; i < nsend; i++) s[i].id = i;
  for (int i = 0; i < nrecv; i++)
    for (int k = 0; k < 8; k++) r[i].last[k] = -1;
  size_t max_unclaimed = 0;
  for (int i = 0; i < steps; i++) {
    if (rnd(2)) step_sender(&c, &s[rnd((unsigned)nsend)]);
    else step_receiver(&c, &r[rnd((unsigned)nrecv)]);
    check_invariants(&c);
    if (bt_chan_len(&c) > max_unclaimed) max_unclaimed = bt_chan_len(&c);
  }
  bt_chan_close(&c);
  CHECK(bt_chan_can_send(&c) == BT_ECLOSED);
  for (int round = 0; round < 10000; round++) {  /* everyone finishes; receivers drain */
    int busy = 0;
    for (int i = 0; i < nsend; i++) if (s[i].state != DONE) { busy = 1; step_sender(&c, &s[i]); }
    for (int i = 0; i < nrecv; i++) if (r[i].state != DONE) { busy = 1; step_receiver(&c, &r[i]); }
    check_invariants(&c);
    if (!busy) break;
  }
  for (int i = 0; i < nsend; i++) CHECK(s[i].state == DONE);
  for (int i = 0; i < nrecv; i++) CHECK(r[i].state == DONE);
  CHECK(count == 0 && c.len == 0 && c.rsv_items == 0 && c.rsv_room == 0);
  for (int i = 0; i < nsend; i++) CHECK(taken[i] == s[i].next);  /* nothing lost */
  CHECK(max_unclaimed <= cap + (size_t)nrecv);
}

static void test_model(void) {
  for (unsigned seed = 1; seed <= 40; seed++) {
    rnd_state = seed;
    model(seed % 3, 3, 3, 20000);  /* capacities 0, 1, 2 */
    model(8, 1 + (int)(seed % 4), 1 + (int)(seed % 3), 20000);
  }
}

/* ---- targeted cases ------------------------------------------------------------------ */

static int calls[4], statuses[4];
static bt_waiter_t ws[4];
static void note(bt_waiter_t *w, int status) {
  calls[w - ws]++;
  statuses[w - ws] = status;
}

static void test_rendezvous(void) {
  bt_chan_t c;
  bt_chan_init(&c, 0);
  memset(calls, 0, sizeof calls);
  CHECK(bt_chan_can_send(&c) == BT_EBUSY);    /* nobody to take it */
  bt_chan_wait_send(&c, &ws[0], note);
  CHECK(bt_chan_can_recv(&c) == BT_EBUSY);
  bt_chan_wait_recv(&c, &ws[1], note);        /* a receiver is room: the sender is woken */
  CHECK(calls[0] == 1 && statuses[0] == 0 && calls[1] == 0);
  CHECK(bt_chan_can_send(&c) == BT_EBUSY);    /* that room is the woken sender's */
  bt_chan_push(&c, 1);                        /* it puts: the receiver is woken */
  CHECK(calls[1] == 1 && statuses[1] == 0 && bt_chan_len(&c) == 0);
  bt_chan_unreserve_item(&c);                 /* ...and aborted: the item is unclaimed */
  CHECK(bt_chan_len(&c) == 1 && bt_chan_can_recv(&c) == 0);
  CHECK(bt_chan_can_send(&c) == BT_EBUSY);
  bt_chan_pop(&c, 0);
  CHECK(c.len == 0 && bt_chan_len(&c) == 0);
  bt_chan_wait_recv(&c, &ws[2], note);
  CHECK(bt_chan_can_send(&c) == 0);           /* a receiver waits: try_send fits */
  bt_chan_push(&c, 0);
  CHECK(calls[2] == 1 && statuses[2] == 0);
  bt_chan_pop(&c, 1);
}

static void test_fifo_no_overtaking(void) {
  bt_chan_t c;
  bt_chan_init(&c, 1);
  memset(calls, 0, sizeof calls);
  CHECK(bt_chan_can_send(&c) == 0);
  bt_chan_push(&c, 0);
  bt_chan_wait_send(&c, &ws[0], note);
  bt_chan_wait_send(&c, &ws[1], note);
  CHECK(bt_chan_senders(&c) == 2);
  bt_chan_pop(&c, 0);                         /* room: the first sender only */
  CHECK(calls[0] == 1 && calls[1] == 0);
  CHECK(bt_chan_can_send(&c) == BT_EBUSY);    /* a newcomer waits behind */
  bt_chan_unreserve_room(&c);                 /* the first was aborted: room passes on */
  CHECK(calls[1] == 1);
  bt_chan_push(&c, 1);
  CHECK(bt_chan_len(&c) == 1);
}

/* Batches: room counts what fits for a sender not queued; a woken sender puts one more;
 * receivers woken for a batch each claim one, and a woken receiver takes the rest too. */
static void test_batches(void) {
  bt_chan_t c;
  bt_chan_init(&c, 4);
  memset(calls, 0, sizeof calls);
  CHECK(bt_chan_room(&c) == 4);
  bt_chan_push_n(&c, 3, 0);
  CHECK(bt_chan_room(&c) == 1 && bt_chan_len(&c) == 3);
  bt_chan_push_n(&c, 1, 0);
  CHECK(bt_chan_room(&c) == 0 && bt_chan_can_send(&c) == BT_EBUSY);
  bt_chan_wait_send(&c, &ws[0], note);
  bt_chan_pop_n(&c, 3, 0);                    /* room for 3: the queued sender is woken */
  CHECK(calls[0] == 1 && statuses[0] == 0);
  CHECK(bt_chan_room(&c) == 2);               /* 3 free, one of them reserved */
  bt_chan_push_n(&c, 3, 1);                   /* the woken sender puts 1 + room */
  CHECK(bt_chan_len(&c) == 4 && bt_chan_room(&c) == 0 && c.rsv_room == 0);
  bt_chan_pop_n(&c, 4, 0);
  CHECK(bt_chan_len(&c) == 0 && bt_chan_can_recv(&c) == BT_EBUSY);
  bt_chan_wait_recv(&c, &ws[1], note);
  bt_chan_wait_recv(&c, &ws[2], note);
  CHECK(bt_chan_room(&c) == 6);               /* each waiting receiver is room for one more */
  bt_chan_push_n(&c, 3, 0);                   /* both woken, one item each; one unclaimed */
  CHECK(calls[1] == 1 && calls[2] == 1 && bt_chan_len(&c) == 1 && c.rsv_items == 2);
  bt_chan_pop_n(&c, 2, 1);                    /* the first takes its own and the unclaimed */
  CHECK(c.len == 1 && c.rsv_items == 1 && bt_chan_len(&c) == 0);
  bt_chan_unreserve_item(&c);                 /* the second was aborted: its item is free */
  CHECK(bt_chan_len(&c) == 1);
  bt_chan_close(&c);
  CHECK(bt_chan_room(&c) == 0 && bt_chan_can_recv(&c) == 0);
}

static void test_close(void) {
  bt_chan_t c;
  bt_chan_init(&c, 2);
  memset(calls, 0, sizeof calls);
  bt_chan_push(&c, 0);
  bt_chan_push(&c, 0);
  bt_chan_wait_send(&c, &ws[0], note);
  bt_chan_close(&c);
  CHECK(calls[0] == 1 && statuses[0] == BT_ECLOSED);
  CHECK(bt_chan_can_send(&c) == BT_ECLOSED);
  CHECK(bt_chan_can_recv(&c) == 0);           /* drains */
  bt_chan_pop(&c, 0);
  bt_chan_pop(&c, 0);
  CHECK(bt_chan_can_recv(&c) == BT_ECLOSED);
  bt_chan_close(&c);                          /* idempotent */
  bt_chan_t d;
  bt_chan_init(&d, 1);
  bt_chan_wait_recv(&d, &ws[1], note);
  bt_chan_wait_recv(&d, &ws[2], note);
  bt_waiter_cancel(&ws[2]);
  bt_waiter_cancel(&ws[2]);                   /* a no-op once unlinked */
  bt_chan_close(&d);
  CHECK(calls[1] == 1 && statuses[1] == BT_ECLOSED && calls[2] == 0);
}

static void test_notify(void) {
  bt_notify_t n;
  bt_notify_init(&n);
  memset(calls, 0, sizeof calls);
  CHECK(bt_notify_one(&n) == 0);              /* nobody: a permit is stored */
  CHECK(bt_notify_one(&n) == 0);              /* ...only one */
  CHECK(bt_notify_wait(&n, &ws[0], note) == 1);
  CHECK(bt_notify_wait(&n, &ws[0], note) == 0);
  CHECK(bt_notify_wait(&n, &ws[1], note) == 0);
  CHECK(bt_notify_waiting(&n) == 2);
  CHECK(bt_notify_one(&n) == 1);              /* the oldest */
  CHECK(calls[0] == 1 && calls[1] == 0);
  CHECK(bt_notify_wait(&n, &ws[2], note) == 0);
  CHECK(bt_notify_all(&n, 0) == 2);
  CHECK(calls[1] == 1 && calls[2] == 1 && bt_notify_waiting(&n) == 0);
  CHECK(bt_notify_all(&n, 0) == 0);           /* stores nothing */
  CHECK(bt_notify_wait(&n, &ws[3], note) == 0);
  bt_waiter_cancel(&ws[3]);
  CHECK(bt_notify_waiting(&n) == 0);
}

/* ---- shielding: an abort is held back until the shield is lifted --------------------- */

typedef struct ctask {
  bt_task_t t;
  bt_wait_t w;
  int phase, woke_status;
} ctask;

static void shielded_resume(bt_rt_t *r, bt_task_t *t, int status) {
  ctask *c = (ctask *)t;
  switch (c->phase++) {
  case 0:  /* shield, then wait 30 ms */
    CHECK(bt_task_shield(t) == 0);
    CHECK(bt_task_shield(t) == 1);            /* nested */
    CHECK(bt_task_unshield(t, 1) == 0);       /* the inner one lifts nothing */
    bt_task_wait(r, t, &c->w, NULL, bt_now(r) + 30);
    return;
  default:
    c->woke_status = status;                  /* the deadline's, not BT_ECANCELED */
    CHECK(!(t->flags & BT_TASK_F_CANCEL) && (t->flags & BT_TASK_F_DEFERRED));
    CHECK(bt_task_unshield(t, 0) == 1);       /* the abort is delivered now */
    CHECK(t->flags & BT_TASK_F_CANCEL);
    bt_task_finish(r, t, BT_TASK_CANCELLED);
  }
}
static const bt_task_vt shielded_vt = {shielded_resume, NULL};

static void test_shield(void) {
  bt_rt_t *rt = bt_rt_new(NULL);
  ctask a = {0};
  bt_task_spawn(rt, &a.t, &shielded_vt, NULL);
  uv_run(bt_rt_loop(rt), UV_RUN_NOWAIT);
  CHECK(a.t.state == BT_TASK_WAITING);
  bt_task_abort(rt, &a.t);                    /* deferred: the wait goes on */
  CHECK(a.t.state == BT_TASK_WAITING && bt_rt_timers(rt) == 1);
  uint64_t t0 = bt_now(rt);
  uv_run(bt_rt_loop(rt), UV_RUN_DEFAULT);
  CHECK(a.t.state == BT_TASK_CANCELLED && a.woke_status == BT_ETIMEDOUT);
  CHECK(bt_now(rt) - t0 >= 25);
  /* a cancellation requested before the shield is hidden inside it, and comes back */
  bt_task_t t = {0};
  t.flags = BT_TASK_F_CANCEL;
  CHECK(bt_task_shield(&t) == 0 && !(t.flags & BT_TASK_F_CANCEL));
  CHECK(bt_task_unshield(&t, 0) == 1 && t.flags == BT_TASK_F_CANCEL);
  CHECK(bt_rt_free(rt) == 0);
}

int main(void) {
  RUN(test_model);
  RUN(test_rendezvous);
  RUN(test_fifo_no_overtaking);
  RUN(test_batches);
  RUN(test_close);
  RUN(test_notify);
  RUN(test_shield);
  return 0;
}
