/* Core semaphore: FIFO hand-off, fairness, cancel re-running the grant loop, close, and
 * free failing the waiters still queued. No loop: a semaphore's callbacks run from the
 * releasing call. */
#include "test.h"

static int granted[8], closed_n;
static bt_sem_waiter_t ws[8];
static void on_grant_idx(bt_sem_waiter_t *w, int status) {
  if (status == 0) granted[w - ws] = 1;
  else if (status == BT_ECLOSED) closed_n++;
}

static void test_fifo_and_fairness(void) {
  bt_sem_t *s = bt_sem_new(2);
  CHECK(bt_sem_try_acquire(s, 2) == 0);
  CHECK(bt_sem_acquire(s, &ws[0], 1, on_grant_idx) == 0);
  CHECK(bt_sem_acquire(s, &ws[1], 1, on_grant_idx) == 0);
  CHECK(bt_sem_waiting(s) == 2);
  bt_sem_release(s, 1);
  CHECK(granted[0] && !granted[1]);
  CHECK(bt_sem_try_acquire(s, 1) == BT_EBUSY);  /* ws[1] is queued: no overtaking */
  bt_sem_release(s, 1);
  CHECK(granted[1]);
  CHECK(bt_sem_available(s) == 0);
  bt_sem_release(s, 2);
  CHECK(bt_sem_available(s) == 2);
  bt_sem_release(s, 1);  /* a double release never mints permits */
  CHECK(bt_sem_available(s) == 2);
  CHECK(bt_sem_try_acquire(s, 3) == BT_EINVAL);
  bt_sem_free(s);
}

static void test_cancel_head_regrants(void) {
  for (int i = 0; i < 8; i++) granted[i] = 0;
  bt_sem_t *s = bt_sem_new(3);
  CHECK(bt_sem_try_acquire(s, 2) == 0);
  CHECK(bt_sem_acquire(s, &ws[0], 3, on_grant_idx) == 0);  /* big head */
  CHECK(bt_sem_acquire(s, &ws[1], 1, on_grant_idx) == 0);  /* fits, but waits behind */
  CHECK(!granted[1]);
  bt_sem_cancel(&ws[0]);
  CHECK(granted[1]);
  CHECK(ws[0].sem == NULL && bt_sem_waiting(s) == 0);
  bt_sem_cancel(&ws[0]);  /* a no-op once unlinked */
  bt_sem_release(s, 3);
  bt_sem_free(s);
}

static void test_close_fails_waiters(void) {
  bt_sem_t *s = bt_sem_new(1);
  CHECK(bt_sem_try_acquire(s, 1) == 0);
  closed_n = 0;
  for (int i = 0; i < 3; i++) CHECK(bt_sem_acquire(s, &ws[i], 1, on_grant_idx) == 0);
  bt_sem_close(s);
  CHECK(closed_n == 3 && bt_sem_closed(s));
  bt_sem_close(s);  /* idempotent */
  CHECK(bt_sem_waiting(s) == 0);
  CHECK(bt_sem_try_acquire(s, 1) == BT_ECLOSED);
  CHECK(bt_sem_acquire(s, &ws[0], 1, on_grant_idx) == BT_ECLOSED);
  bt_sem_free(s);
}

/* Freeing a semaphore fails its queued waiters, as closing does. */
static void test_free_fails_waiters(void) {
  bt_sem_t *s = bt_sem_new(1);
  CHECK(bt_sem_capacity(s) == 1 && !bt_sem_closed(s));
  CHECK(bt_sem_try_acquire(s, 1) == 0);
  closed_n = 0;
  CHECK(bt_sem_acquire(s, &ws[0], 1, on_grant_idx) == 0);
  bt_sem_free(s);
  CHECK(closed_n == 1 && ws[0].sem == NULL);
  bt_sem_free(NULL);
}

/* Weighted requests are head-of-line FIFO: a large request at the head is served before
 * small ones behind it that would fit, so a stream of small requests cannot starve it. */
static int order[8], norder;
static void on_grant_order(bt_sem_waiter_t *w, int status) {
  if (status == 0) order[norder++] = (int)(w - ws);
}

static void test_weighted_fifo(void) {
  bt_sem_t *s = bt_sem_new(4);
  norder = 0;
  CHECK(bt_sem_try_acquire(s, 3) == 0);                     /* 1 left */
  CHECK(bt_sem_acquire(s, &ws[0], 4, on_grant_order) == 0); /* big: needs all 4 */
  CHECK(bt_sem_acquire(s, &ws[1], 1, on_grant_order) == 0); /* fits now, waits behind */
  CHECK(bt_sem_try_acquire(s, 1) == BT_EBUSY);              /* no overtaking either */
  CHECK(norder == 0 && bt_sem_available(s) == 1);
  bt_sem_release(s, 1);
  bt_sem_release(s, 1);
  CHECK(norder == 0);                                       /* 3 available: still waiting */
  bt_sem_release(s, 1);
  CHECK(norder == 1 && order[0] == 0 && bt_sem_available(s) == 0);
  bt_sem_release(s, 4);
  CHECK(norder == 2 && order[1] == 1 && bt_sem_available(s) == 3);
  bt_sem_release(s, 1);
  bt_sem_free(s);
}

/* add_permits grows capacity and availability and grants waiters in FIFO order from
 * inside the call; forget takes only available permits and says how many. */
static void test_add_permits_and_forget(void) {
  bt_sem_t *s = bt_sem_new(1);
  norder = 0;
  CHECK(bt_sem_try_acquire(s, 1) == 0);
  for (int i = 0; i < 4; i++) CHECK(bt_sem_acquire(s, &ws[i], 1, on_grant_order) == 0);
  bt_sem_add_permits(s, 3);
  CHECK(bt_sem_capacity(s) == 4 && bt_sem_available(s) == 0);
  CHECK(norder == 3 && order[0] == 0 && order[1] == 1 && order[2] == 2);
  CHECK(bt_sem_waiting(s) == 1);
  bt_sem_release(s, 1);                                     /* the 4th gets it */
  CHECK(norder == 4 && order[3] == 3);
  /* 4 held: forget finds none available */
  CHECK(bt_sem_forget(s, 2) == 0 && bt_sem_capacity(s) == 4);
  bt_sem_release(s, 3);                                     /* 3 available, 1 held */
  CHECK(bt_sem_forget(s, 5) == 3);                          /* only what is available */
  CHECK(bt_sem_capacity(s) == 1 && bt_sem_available(s) == 0);
  bt_sem_release(s, 1);                                     /* the held one comes back */
  CHECK(bt_sem_available(s) == 1 && bt_sem_capacity(s) == 1);
  CHECK(bt_sem_try_acquire(s, 2) == BT_EINVAL);             /* past the new capacity */
  bt_sem_add_permits(s, 0);
  CHECK(bt_sem_forget(s, 0) == 0 && bt_sem_capacity(s) == 1);
  bt_sem_free(s);
}

int main(void) {
  RUN(test_fifo_and_fairness);
  RUN(test_cancel_head_regrants);
  RUN(test_close_fails_waiters);
  RUN(test_free_fails_waiters);
  RUN(test_weighted_fifo);
  RUN(test_add_permits_and_forget);
  return 0;
}
