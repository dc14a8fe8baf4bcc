/* Core groups (a JoinSet) and gates (bounded spawn), with a tiny C task type that sleeps
 * `ms`, then finishes. Groups: finished tasks pop in completion order; a task waiting on
 * the group is woken by each completion, told when nothing is left, and times out; the
 * iteration order; removal; the finish hook, for every ending; detaching everything so the
 * group can go while its tasks live on. Gates: concurrency bounded by the semaphore,
 * permits back however tasks end, a queued task aborted without ever taking a permit, a
 * closed semaphore starting the queue with the error. Each ends with nothing left. */
#include "test.h"

typedef struct ctask {
  bt_task_t t;
  bt_wait_t w;
  bt_joiner_t j;
  uint64_t ms;
  int runs;
  int first_status;       /* what the first resume got (a gate's error) */
  int last_status;
} ctask;

static uv_loop_t loop;
static bt_rt_t *rt;
static int holding, peak;

static void sleeper_resume(bt_rt_t *r, bt_task_t *t, int status) {
  ctask *c = (ctask *)t;
  if (c->runs++ == 0) c->first_status = status;
  c->last_status = status;
  if (c->runs == 1 && status == 0) {
    if (++holding > peak) peak = holding;
    bt_task_wait(r, t, &c->w, NULL, bt_now(r) + c->ms);
    return;
  }
  if (c->runs == 2) holding--;
  bt_task_finish(r, t, status == BT_ECANCELED ? BT_TASK_CANCELLED : BT_TASK_DONE);
}
static const bt_task_vt sleeper_vt = {sleeper_resume, NULL};

static void run_until_idle(void) { uv_run(&loop, UV_RUN_DEFAULT); }

/* ---- groups ------------------------------------------------------------------------------ */

static void test_pop_in_completion_order(void) {
  ctask c[4] = {{.ms = 30}, {.ms = 10}, {.ms = 20}, {.ms = 0}};
  bt_group_t *g = bt_group_new(rt);
  CHECK(g != NULL && bt_group_len(g) == 0 && bt_group_pop(g) == NULL);
  for (int i = 0; i < 4; i++) bt_task_spawn(rt, &c[i].t, &sleeper_vt, g);
  CHECK(bt_group_len(g) == 4 && bt_group_live(g) == 4 && c[0].t.group == g);
  run_until_idle();
  CHECK(bt_group_len(g) == 4 && bt_group_live(g) == 0);
  static const uint64_t want[4] = {0, 10, 20, 30};
  for (int i = 0; i < 4; i++) {
    ctask *t = (ctask *)bt_group_pop(g);  /* the caller now holds it: no group */
    CHECK(t != NULL && t->ms == want[i] && t->t.state == BT_TASK_DONE && t->t.group == NULL);
  }
  CHECK(bt_group_pop(g) == NULL && bt_group_len(g) == 0);
  bt_group_free(g);
  bt_group_free(NULL);
}

/* A task that takes every finished task of `g` as it comes, until nothing is left. */
typedef struct gwaiter {
  ctask c;
  bt_group_t *g;
  uint64_t due_after;     /* the deadline of each wait; UINT64_MAX: none */
  uint64_t got[8];        /* the ms of each task popped, in order */
  int ngot, waits, empty;
} gwaiter;

static void gwaiter_resume(bt_rt_t *r, bt_task_t *t, int status) {
  gwaiter *w = (gwaiter *)t;
  w->c.last_status = status;
  if (status != 0) {  /* timed out or aborted */
    bt_task_finish(r, t, status == BT_ECANCELED ? BT_TASK_CANCELLED : BT_TASK_DONE);
    return;
  }
  for (;;) {
    uint64_t due = w->due_after == UINT64_MAX ? UINT64_MAX : bt_now(r) + w->due_after;
    int rc = bt_group_wait(w->g, t, &w->c.j, &w->c.w, due);
    if (rc == 0) {
      w->waits++;
      return;
    }
    if (rc < 0) {  /* empty: nothing to wait for */
      w->empty = 1;
      bt_task_finish(r, t, BT_TASK_DONE);
      return;
    }
    ctask *done = (ctask *)bt_group_pop(w->g);
    CHECK(done != NULL && w->ngot < 8);
    w->got[w->ngot++] = done->ms;
  }
}
static const bt_task_vt gwaiter_vt = {gwaiter_resume, NULL};

static void test_wait(void) {
  ctask c[3] = {{.ms = 20}, {.ms = 0}, {.ms = 10}};
  bt_group_t *g = bt_group_new(rt);
  for (int i = 0; i < 3; i++) bt_task_spawn(rt, &c[i].t, &sleeper_vt, g);
  gwaiter w = {.g = g, .due_after = UINT64_MAX};
  bt_task_spawn(rt, &w.c.t, &gwaiter_vt, NULL);
  run_until_idle();
  CHECK(w.c.t.state == BT_TASK_DONE && w.empty && w.ngot == 3 && w.waits >= 1);
  CHECK(w.got[0] == 0 && w.got[1] == 10 && w.got[2] == 20);
  /* A wait with a deadline, on a group whose task takes longer: it times out and leaves
   * the group's waiters; the task is then aborted with the rest. */
  ctask slow = {.ms = 60000};
  bt_task_spawn(rt, &slow.t, &sleeper_vt, g);
  gwaiter impatient = {.g = g, .due_after = 5};
  bt_task_spawn(rt, &impatient.c.t, &gwaiter_vt, NULL);
  while (!bt_task_finished(&impatient.c.t)) uv_run(&loop, UV_RUN_ONCE);
  CHECK(impatient.c.last_status == BT_ETIMEDOUT && impatient.ngot == 0);
  bt_group_abort_all(g);
  run_until_idle();
  CHECK(slow.t.state == BT_TASK_CANCELLED && slow.last_status == BT_ECANCELED);
  CHECK(bt_group_pop(g) == &slow.t && bt_group_len(g) == 0);
  bt_group_free(g);
}

static int hooked[8], nhooked;
static void on_finish_hook(bt_group_t *g, bt_task_t *t, void *data) {
  CHECK(data == &nhooked && t->group == g && bt_task_finished(t) && nhooked < 8);
  hooked[nhooked++] = (int)((ctask *)t)->ms;
  if (((ctask *)t)->ms == 2) bt_group_remove(t);  /* the hook may take the task out */
}

static void test_next_remove_and_finish_hook(void) {
  ctask c[4] = {{.ms = 1}, {.ms = 2}, {.ms = 3}, {.ms = 60000}};
  bt_group_t *g = bt_group_new(rt);
  bt_group_on_finish(g, on_finish_hook, &nhooked);
  nhooked = 0;
  for (int i = 0; i < 4; i++) bt_task_spawn(rt, &c[i].t, &sleeper_vt, g);
  bt_group_remove(&c[2].t);  /* out of the group while live: no hook when it ends */
  CHECK(c[2].t.group == NULL && bt_group_len(g) == 3);
  bt_task_abort(rt, &c[3].t);  /* aborted before it ever ran: the hook runs all the same */
  while (c[1].t.state != BT_TASK_DONE || c[2].t.state != BT_TASK_DONE)
    uv_run(&loop, UV_RUN_ONCE);
  CHECK(nhooked == 3 && hooked[0] == 60000);  /* the abort ended first */
  CHECK((hooked[1] == 1 && hooked[2] == 2) || (hooked[1] == 2 && hooked[2] == 1));
  CHECK(bt_group_len(g) == 2 && bt_group_live(g) == 0 && c[1].t.group == NULL);
  /* Iteration: live tasks first, then finished ones in completion order. */
  ctask d = {.ms = 60000};
  bt_task_spawn(rt, &d.t, &sleeper_vt, g);
  bt_task_t *seen[4];
  int n = 0;
  for (bt_task_t *t = bt_group_next(g, NULL); t != NULL; t = bt_group_next(g, t)) {
    CHECK(n < 4);
    seen[n++] = t;
  }
  CHECK(n == 3 && seen[0] == &d.t && seen[1] == &c[3].t && seen[2] == &c[0].t);
  bt_group_on_finish(g, NULL, NULL);
  bt_group_abort_all(g);
  run_until_idle();
  CHECK(nhooked == 3 && d.t.state == BT_TASK_CANCELLED);
  while (bt_group_pop(g) != NULL) {}
  bt_group_free(g);
}

/* ---- gates ----------------------------------------------------------------------------- */

static void test_gate_bounds_concurrency(void) {
  ctask c[10];
  memset(c, 0, sizeof c);
  bt_sem_t *s = bt_sem_new(3);
  bt_group_t *g = bt_group_new(rt);
  bt_gate_t *gate = bt_group_gate(g, s);
  CHECK(gate != NULL && bt_group_gate(g, s) == gate);  /* one gate per semaphore */
  holding = peak = 0;
  for (int i = 0; i < 10; i++) {
    c[i].ms = 1;
    bt_gate_spawn(rt, gate, &c[i].t, &sleeper_vt);
  }
  CHECK(bt_gate_queued(gate) == 7 && bt_sem_available(s) == 0 && bt_group_len(g) == 10);
  bt_task_abort(rt, &c[9].t);  /* queued: leaves the gate, never takes a permit */
  CHECK(bt_gate_queued(gate) == 6);
  run_until_idle();
  CHECK(peak == 3 && holding == 0);
  CHECK(c[9].runs == 1 && c[9].first_status == BT_ECANCELED && c[9].t.state == BT_TASK_CANCELLED);
  CHECK(bt_group_len(g) == 10 && bt_group_live(g) == 0 && bt_gate_queued(gate) == 0);
  CHECK(bt_sem_available(s) == 3 && bt_sem_waiting(s) == 0);
  while (bt_group_pop(g)) {}
  bt_group_free(g);
  bt_sem_free(s);
}

static void test_gate_closed_semaphore(void) {
  ctask c[3];
  memset(c, 0, sizeof c);
  bt_sem_t *s = bt_sem_new(1);
  bt_group_t *g = bt_group_new(rt);
  bt_gate_t *gate = bt_group_gate(g, s);
  for (int i = 0; i < 3; i++) {
    c[i].ms = 5;
    bt_gate_spawn(rt, gate, &c[i].t, &sleeper_vt);
  }
  CHECK(bt_gate_queued(gate) == 2);
  bt_sem_close(s);  /* the queued tasks start at once, with the error */
  CHECK(bt_gate_queued(gate) == 0);
  run_until_idle();
  CHECK(c[0].first_status == 0 && c[0].t.state == BT_TASK_DONE);
  CHECK(c[1].first_status == BT_ECLOSED && c[2].first_status == BT_ECLOSED);
  while (bt_group_pop(g)) {}
  bt_group_free(g);
  bt_sem_free(s);
}

/* Detaching: live tasks aborted, gated ones still queued started as cancelled, and the
 * group freed at once while they finish, with no group. */
static void test_detach_all(void) {
  ctask c[4];
  memset(c, 0, sizeof c);
  bt_sem_t *s = bt_sem_new(1);
  bt_group_t *g = bt_group_new(rt);
  bt_gate_t *gate = bt_group_gate(g, s);
  c[0].ms = c[1].ms = c[2].ms = c[3].ms = 60000;
  bt_task_spawn(rt, &c[0].t, &sleeper_vt, g);
  for (int i = 1; i < 4; i++) bt_gate_spawn(rt, gate, &c[i].t, &sleeper_vt);
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(c[0].t.state == BT_TASK_WAITING && c[1].t.state == BT_TASK_WAITING);
  CHECK(bt_gate_queued(gate) == 2);
  bt_group_detach_all(g);
  bt_group_free(g);
  for (int i = 0; i < 4; i++) CHECK(c[i].t.group == NULL);
  run_until_idle();
  for (int i = 0; i < 4; i++) CHECK(c[i].t.state == BT_TASK_CANCELLED);
  CHECK(c[2].runs == 1 && c[3].runs == 1 && c[2].first_status == BT_ECANCELED);
  CHECK(bt_sem_available(s) == 1 && bt_sem_waiting(s) == 0);  /* c[1]'s permit came back */
  bt_sem_free(s);
}

int main(void) {
  rt = test_rt_new(&loop);
  RUN(test_pop_in_completion_order);
  RUN(test_wait);
  RUN(test_next_remove_and_finish_hook);
  RUN(test_gate_bounds_concurrency);
  RUN(test_gate_closed_semaphore);
  RUN(test_detach_all);
  test_rt_end(rt, &loop);
  return 0;
}
