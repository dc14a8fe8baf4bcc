/* Core tasks, driven by a tiny C task type: each task sleeps `ms` on its wait record, then
 * finishes. Checks completion order, one-deadline waits, abort of waiting and pending
 * tasks, aborting the running task, stale wakes dropped, joins (done,
 * waited for, timed out, aborted), the `finished` hook, and that the loop closes clean. */
#include "test.h"

typedef struct ctask {
  bt_task_t t;
  bt_wait_t w;
  bt_joiner_t j;
  uint64_t ms;
  int runs;
  int last_status;
  int finished;           /* the vtable's finished hook ran (count) */
} ctask;

static uv_loop_t loop;
static bt_rt_t *rt;
static int order[64], norder;

static void sleeper_resume(bt_rt_t *r, bt_task_t *t, int status) {
  ctask *c = (ctask *)t;
  c->last_status = status;
  if (c->runs++ == 0 && status == 0) {
    bt_task_wait(r, t, &c->w, NULL, bt_now(r) + c->ms);
    return;
  }
  if (norder < 64) order[norder++] = (int)c->ms;
  bt_task_finish(r, t, status == BT_ECANCELED ? BT_TASK_CANCELLED : BT_TASK_DONE);
}
static void sleeper_finished(bt_rt_t *r, bt_task_t *t) {
  (void)r;
  ((ctask *)t)->finished++;
}
static const bt_task_vt sleeper_vt = {sleeper_resume, sleeper_finished};

static void run_until_idle(void) { uv_run(&loop, UV_RUN_DEFAULT); }

static void test_completion_order(void) {
  ctask c[4] = {{.ms = 30}, {.ms = 10}, {.ms = 20}, {.ms = 0}};
  norder = 0;
  for (int i = 0; i < 4; i++) bt_task_spawn(rt, &c[i].t, &sleeper_vt, NULL);
  CHECK(bt_rt_ready(rt) == 4);
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(bt_rt_timers(rt) == 4);  /* one deadline each, on the runtime's one timer */
  for (int i = 0; i < 4; i++) CHECK(c[i].t.state == BT_TASK_WAITING || c[i].ms == 0);
  run_until_idle();
  CHECK(norder == 4);
  CHECK(order[0] == 0 && order[1] == 10 && order[2] == 20 && order[3] == 30);
  for (int i = 0; i < 4; i++) {
    CHECK(c[i].t.state == BT_TASK_DONE && c[i].finished == 1 && c[i].last_status == BT_ETIMEDOUT);
    CHECK(bt_task_finished(&c[i].t));
  }
  CHECK(bt_rt_timers(rt) == 0);
}

static void test_abort_waiting_and_pending(void) {
  ctask a = {.ms = 60000}, b = {.ms = 5};
  bt_task_spawn(rt, &a.t, &sleeper_vt, NULL);
  bt_task_spawn(rt, &b.t, &sleeper_vt, NULL);
  bt_task_abort(rt, &b.t);          /* pending: it must never start its sleep */
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(a.t.state == BT_TASK_WAITING && bt_rt_timers(rt) == 1);
  CHECK(b.t.state == BT_TASK_CANCELLED && b.runs == 1 && b.last_status == BT_ECANCELED);
  bt_task_abort(rt, &a.t);          /* waiting: timer stopped, woken cancelled */
  bt_task_abort(rt, &a.t);          /* idempotent */
  CHECK(bt_rt_timers(rt) == 0 && a.t.state == BT_TASK_READY);
  run_until_idle();
  CHECK(a.t.state == BT_TASK_CANCELLED && a.last_status == BT_ECANCELED && a.finished == 1);
  bt_task_abort(rt, &a.t);          /* finished: nothing happens */
  CHECK(bt_rt_ready(rt) == 0 && a.finished == 1);
}

/* Aborting the running task only sets the level-triggered flag (nothing is queued, no
 * wait is woken): the embedder sees it at its next wait and ends the task, as the Lua
 * binding's await does. */
static void self_abort_resume(bt_rt_t *r, bt_task_t *t, int status) {
  ctask *c = (ctask *)t;
  c->runs++;
  c->last_status = status;
  bt_task_abort(r, t);
  CHECK(t->state == BT_TASK_RUNNING && (t->flags & BT_TASK_F_CANCEL) && bt_rt_ready(r) == 0);
  bt_task_finish(r, t, BT_TASK_CANCELLED);
}
static const bt_task_vt self_abort_vt = {self_abort_resume, NULL};

static void test_abort_running(void) {
  ctask a = {0};
  bt_task_spawn(rt, &a.t, &self_abort_vt, NULL);
  run_until_idle();
  CHECK(a.runs == 1 && a.last_status == 0 && a.t.state == BT_TASK_CANCELLED);
}

static void test_stale_wake_dropped(void) {
  ctask a = {.ms = 60000};
  bt_task_spawn(rt, &a.t, &sleeper_vt, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  uint32_t tok = a.t.token;
  CHECK(bt_task_wake(rt, &a.t, tok + 1, 0) == 0);   /* wrong token */
  CHECK(bt_task_wake(rt, &a.t, tok, 0) == 1);
  CHECK(bt_task_wake(rt, &a.t, tok, 0) == 0);       /* second wake of the same wait */
  run_until_idle();
  CHECK(a.t.state == BT_TASK_DONE && a.last_status == 0 && bt_rt_timers(rt) == 0);
}

/* A joiner: joins `target` with a deadline `ms` after it starts (UINT64_MAX: none). */
typedef struct jtask {
  ctask c;
  bt_task_t *target;
  uint64_t due_after;
  int joined_at_once;
} jtask;

static void joiner_resume(bt_rt_t *r, bt_task_t *t, int status) {
  jtask *j = (jtask *)t;
  j->c.last_status = status;
  if (j->c.runs++ == 0) {
    uint64_t due = j->due_after == UINT64_MAX ? UINT64_MAX : bt_now(r) + j->due_after;
    if (!bt_task_join(r, t, j->target, &j->c.j, &j->c.w, due)) return;
    j->joined_at_once = 1;
  }
  bt_task_finish(r, t, status == BT_ECANCELED ? BT_TASK_CANCELLED : BT_TASK_DONE);
}
static const bt_task_vt joiner_vt = {joiner_resume, NULL};

static void test_join(void) {
  ctask slow = {.ms = 20}, never = {.ms = 60000};
  jtask waits = {.target = &slow.t, .due_after = UINT64_MAX};
  jtask gives_up = {.target = &never.t, .due_after = 5};
  jtask aborted = {.target = &never.t, .due_after = UINT64_MAX};
  bt_task_spawn(rt, &slow.t, &sleeper_vt, NULL);
  bt_task_spawn(rt, &never.t, &sleeper_vt, NULL);
  bt_task_spawn(rt, &waits.c.t, &joiner_vt, NULL);
  bt_task_spawn(rt, &gives_up.c.t, &joiner_vt, NULL);
  bt_task_spawn(rt, &aborted.c.t, &joiner_vt, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(waits.c.t.state == BT_TASK_WAITING && aborted.c.t.state == BT_TASK_WAITING);
  bt_task_abort(rt, &aborted.c.t);  /* its joiner record leaves never's list */
  while (!bt_task_finished(&waits.c.t)) uv_run(&loop, UV_RUN_ONCE);
  CHECK(slow.t.state == BT_TASK_DONE && waits.c.last_status == 0 && !waits.joined_at_once);
  CHECK(gives_up.c.t.state == BT_TASK_DONE && gives_up.c.last_status == BT_ETIMEDOUT);
  CHECK(aborted.c.t.state == BT_TASK_CANCELLED && aborted.c.last_status == BT_ECANCELED);
  /* Joining a task already finished returns at once, with no wait. */
  jtask late = {.target = &slow.t, .due_after = UINT64_MAX};
  bt_task_spawn(rt, &late.c.t, &joiner_vt, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(late.joined_at_once && late.c.t.state == BT_TASK_DONE);
  bt_task_abort(rt, &never.t);  /* wakes no joiner: both left when they were woken */
  run_until_idle();
  CHECK(never.t.state == BT_TASK_CANCELLED && gives_up.c.runs == 2 && aborted.c.runs == 2);
}

static void test_timer_heap_order(void) {
  /* Many waits with equal and different deadlines end in (due, start order). */
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
  rt = test_rt_new(&loop);
  RUN(test_completion_order);
  RUN(test_abort_waiting_and_pending);
  RUN(test_abort_running);
  RUN(test_stale_wake_dropped);
  RUN(test_join);
  RUN(test_timer_heap_order);
  test_rt_end(rt, &loop);
  return 0;
}
