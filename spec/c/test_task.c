/* Core tasks, timers and groups, driven by a tiny C task type: each task sleeps `ms` on
 * its wait record, then finishes. Checks completion order, one-deadline waits, abort of
 * waiting and pending tasks, gates (bounded spawn), and that the loop closes clean. */
#include "test.h"

typedef struct ctask {
  bt_task_t t;
  bt_wait_t w;
  bt_joiner_t j;
  uint64_t ms;
  int runs;
  int last_status;
  int max_live;           /* gate test: concurrent holders seen */
} ctask;

static bt_rt_t *rt;
static int order[64], norder;
static int holding, peak;

static void sleeper_resume(bt_rt_t *r, bt_task_t *t, int status) {
  ctask *c = (ctask *)t;
  c->last_status = status;
  if (c->runs++ == 0 && status == 0) {
    holding++;
    if (holding > peak) peak = holding;
    bt_task_wait(r, t, &c->w, NULL, bt_now(r) + c->ms);
    return;
  }
  if (c->runs == 2 || status != 0) holding -= c->runs == 2;
  if (norder < 64) order[norder++] = (int)c->ms;
  bt_task_finish(r, t, status == BT_ECANCELED ? BT_TASK_CANCELLED : BT_TASK_DONE);
}
static const bt_task_vt sleeper_vt = {sleeper_resume, NULL};

static void run_until_idle(void) { uv_run(bt_rt_loop(rt), UV_RUN_DEFAULT); }

static void test_completion_order(void) {
  ctask c[4] = {{.ms = 30}, {.ms = 10}, {.ms = 20}, {.ms = 0}};
  bt_group_t *g = bt_group_new(rt);
  norder = 0;
  for (int i = 0; i < 4; i++) bt_task_spawn(rt, &c[i].t, &sleeper_vt, g);
  CHECK(bt_group_len(g) == 4 && bt_rt_ready(rt) == 4);
  run_until_idle();
  CHECK(norder == 4);
  CHECK(order[0] == 0 && order[1] == 10 && order[2] == 20 && order[3] == 30);
  int expect[4] = {0, 10, 20, 30};
  for (int i = 0; i < 4; i++) {
    ctask *t = (ctask *)bt_group_pop(g);
    CHECK(t != NULL && (int)t->ms == expect[i] && t->t.state == BT_TASK_DONE);
  }
  CHECK(bt_group_pop(g) == NULL && bt_group_len(g) == 0);
  CHECK(bt_rt_timers(rt) == 0);
  bt_group_free(g);
}

static void test_abort_waiting_and_pending(void) {
  ctask a = {.ms = 60000}, b = {.ms = 5};
  bt_group_t *g = bt_group_new(rt);
  bt_task_spawn(rt, &a.t, &sleeper_vt, g);
  bt_task_spawn(rt, &b.t, &sleeper_vt, g);
  bt_task_abort(rt, &b.t);          /* pending: it must never start its sleep */
  uv_run(bt_rt_loop(rt), UV_RUN_NOWAIT);
  CHECK(a.t.state == BT_TASK_WAITING && bt_rt_timers(rt) == 1);
  CHECK(b.t.state == BT_TASK_CANCELLED && b.runs == 1 && b.last_status == BT_ECANCELED);
  bt_group_abort_all(g);            /* waiting: timer stopped, woken cancelled */
  CHECK(bt_rt_timers(rt) == 0);
  run_until_idle();
  CHECK(a.t.state == BT_TASK_CANCELLED && a.last_status == BT_ECANCELED);
  while (bt_group_pop(g)) {}
  bt_group_free(g);
}

static void test_stale_wake_dropped(void) {
  ctask a = {.ms = 60000};
  bt_task_spawn(rt, &a.t, &sleeper_vt, NULL);
  uv_run(bt_rt_loop(rt), UV_RUN_NOWAIT);
  uint32_t tok = a.t.token;
  CHECK(bt_task_wake(rt, &a.t, tok + 1, 0) == 0);   /* wrong token */
  CHECK(bt_task_wake(rt, &a.t, tok, 0) == 1);
  CHECK(bt_task_wake(rt, &a.t, tok, 0) == 0);       /* second wake of the same wait */
  run_until_idle();
  CHECK(a.t.state == BT_TASK_DONE && bt_rt_timers(rt) == 0);
}

static void test_gate_bounds_concurrency(void) {
  ctask c[10];
  memset(c, 0, sizeof c);
  bt_sem_t *s = bt_sem_new(3);
  bt_group_t *g = bt_group_new(rt);
  bt_gate_t *gate = bt_group_gate(g, s);
  holding = peak = 0;
  for (int i = 0; i < 10; i++) {
    c[i].ms = 1;
    bt_gate_spawn(rt, gate, &c[i].t, &sleeper_vt);
  }
  CHECK(bt_gate_queued(gate) == 7 && bt_sem_available(s) == 0);
  run_until_idle();
  CHECK(peak == 3);
  CHECK(bt_group_len(g) == 10 && bt_group_live(g) == 0);
  CHECK(bt_sem_available(s) == 3 && bt_sem_waiting(s) == 0);
  while (bt_group_pop(g)) {}
  bt_group_free(g);
  bt_sem_free(s);
}

static void test_timer_heap_order(void) {
  /* Many timers with equal and different deadlines fire in (due, start order). */
  ctask c[12];
  memset(c, 0, sizeof c);
  norder = 0;
  int ms[12] = {5, 1, 5, 3, 1, 0, 2, 4, 3, 0, 2, 4};
  for (int i = 0; i < 12; i++) {
    c[i].ms = (uint64_t)ms[i];
    bt_task_spawn(rt, &c[i].t, &sleeper_vt, NULL);
  }
  run_until_idle();
  CHECK(norder == 12);
  for (int i = 1; i < 12; i++) CHECK(order[i - 1] <= order[i]);
}

int main(void) {
  rt = bt_rt_new(NULL);
  CHECK(rt != NULL);
  RUN(test_completion_order);
  RUN(test_abort_waiting_and_pending);
  RUN(test_stale_wake_dropped);
  RUN(test_gate_bounds_concurrency);
  RUN(test_timer_heap_order);
  CHECK(bt_rt_free(rt) == 0);  /* closes the loop: nothing may be left on it */
  return 0;
}
