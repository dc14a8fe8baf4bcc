/* Core one-shot events: every task waiting is woken when the event is set, and only once;
 * a task arriving after it was set does not wait; a wait with a deadline times out and an
 * aborted waiter is woken cancelled, both leaving the event's waiters; nothing is left on
 * the loop afterwards. */
#include "test.h"

typedef struct etask {
  bt_task_t t;
  bt_wait_t w;
  bt_joiner_t j;
  bt_event_t *ev;
  uint64_t due_after;     /* UINT64_MAX: no deadline */
  int runs, status, at_once;
} etask;

static uv_loop_t loop;
static bt_rt_t *rt;

static void waiter_resume(bt_rt_t *r, bt_task_t *t, int status) {
  etask *e = (etask *)t;
  if (e->runs++ == 0) {
    uint64_t due = e->due_after == UINT64_MAX ? UINT64_MAX : bt_now(r) + e->due_after;
    if (!bt_event_wait(r, e->ev, t, &e->j, &e->w, due)) return;
    e->at_once = 1;
  }
  e->status = status;
  bt_task_finish(r, t, status == BT_ECANCELED ? BT_TASK_CANCELLED : BT_TASK_DONE);
}
static const bt_task_vt waiter_vt = {waiter_resume, NULL};

static void spawn(etask *e, bt_event_t *ev, uint64_t due_after) {
  memset(e, 0, sizeof *e);
  e->ev = ev;
  e->due_after = due_after;
  bt_task_spawn(rt, &e->t, &waiter_vt, NULL);
}

static void test_set_wakes_every_waiter(void) {
  bt_event_t ev;
  bt_event_init(&ev);
  etask w[3];
  for (int i = 0; i < 3; i++) spawn(&w[i], &ev, UINT64_MAX);
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(bt_event_waiting(&ev) == 3);
  for (int i = 0; i < 3; i++) CHECK(w[i].t.state == BT_TASK_WAITING);
  CHECK(bt_event_set(rt, &ev) == 1);
  CHECK(bt_event_set(rt, &ev) == 0);  /* once */
  CHECK(bt_event_waiting(&ev) == 0 && bt_rt_ready(rt) == 3);
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 3; i++)
    CHECK(w[i].t.state == BT_TASK_DONE && w[i].status == 0 && !w[i].at_once && w[i].runs == 2);
  etask late;
  spawn(&late, &ev, UINT64_MAX);  /* set already: no wait */
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(late.at_once && late.runs == 1 && late.t.state == BT_TASK_DONE);
}

static void test_timeout_and_abort_leave(void) {
  bt_event_t ev;
  bt_event_init(&ev);
  etask impatient, aborted, patient;
  spawn(&impatient, &ev, 5);
  spawn(&aborted, &ev, UINT64_MAX);
  spawn(&patient, &ev, UINT64_MAX);
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(bt_event_waiting(&ev) == 3 && bt_rt_timers(rt) == 1);
  bt_task_abort(rt, &aborted.t);
  CHECK(bt_event_waiting(&ev) == 2);
  while (!bt_task_finished(&impatient.t)) uv_run(&loop, UV_RUN_ONCE);
  CHECK(impatient.status == BT_ETIMEDOUT && bt_event_waiting(&ev) == 1);
  CHECK(aborted.status == BT_ECANCELED && aborted.t.state == BT_TASK_CANCELLED);
  CHECK(bt_event_set(rt, &ev) == 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(patient.status == 0 && patient.t.state == BT_TASK_DONE);
  CHECK(impatient.runs == 2 && aborted.runs == 2);  /* the set woke neither again */
}

int main(void) {
  rt = test_rt_new(&loop);
  RUN(test_set_wakes_every_waiter);
  RUN(test_timeout_and_abort_leave);
  test_rt_end(rt, &loop);
  return 0;
}
