/* The runtime and its timers: a runtime on the caller's loop or on its own, the clock and
 * the embedder's pointer; timers fire in (due, start order), never before a bt_due()
 * deadline, re-arming moves one, stopping is idempotent; the ready queue's admission (woken tasks before fresh ones, each FIFO, a
 * fresh task started at least once every BT_FRESH_EVERY + 1 = 65 resumes, a yielder's own
 * spawns started before it resumes), at most `budget` resumes a loop turn, with
 * bt_rt_current naming the task being resumed; error names and messages; and each ends
 * with nothing left on the loop. */
#include "test.h"

static uv_loop_t loop;

/* ---- timers ---------------------------------------------------------------------------- */

typedef struct ttimer {
  bt_timer_t t;  /* first: the callback's pointer is the record's */
  int id;
} ttimer;

static int fired[16], nfired;

static void on_fire(bt_timer_t *t) {
  ttimer *x = (ttimer *)t;
  CHECK(nfired < 16);
  fired[nfired++] = x->id;
}

static void test_timers(void) {
  bt_rt_t *rt = test_rt_new(&loop);
  uint64_t now = bt_now(rt);
  static const uint64_t after[6] = {20, 5, 20, 5, 0, 40};
  ttimer t[6];
  memset(t, 0, sizeof t);
  nfired = 0;
  for (int i = 0; i < 6; i++) {
    t[i].id = i;
    CHECK(bt_timer_start(rt, &t[i].t, now + after[i], on_fire) == 0);
  }
  CHECK(bt_rt_timers(rt) == 6);
  CHECK(bt_timer_start(rt, &t[5].t, now + 1, on_fire) == 0);  /* re-armed: moved, not added */
  CHECK(bt_rt_timers(rt) == 6);
  bt_timer_stop(rt, &t[2].t);
  bt_timer_stop(rt, &t[2].t);  /* not armed any more: a no-op */
  CHECK(bt_rt_timers(rt) == 5);
  uv_run(&loop, UV_RUN_DEFAULT);  /* returns once no timer is armed */
  static const int want[5] = {4, 5, 1, 3, 0};  /* by due time, ties in start order */
  CHECK(nfired == 5);
  for (int i = 0; i < 5; i++) CHECK(fired[i] == want[i]);
  CHECK(bt_now(rt) >= now + 20);
  bt_timer_stop(rt, &t[0].t);  /* fired: a no-op */
  /* Many ties, started in an order the heap must keep. */
  ttimer same[12];
  memset(same, 0, sizeof same);
  nfired = 0;
  now = bt_now(rt);
  for (int i = 0; i < 12; i++) {
    same[i].id = i;
    CHECK(bt_timer_start(rt, &same[i].t, now + (i % 3 == 0 ? 1 : 2), on_fire) == 0);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  static const int ties[12] = {0, 3, 6, 9, 1, 2, 4, 5, 7, 8, 10, 11};
  CHECK(nfired == 12);
  for (int i = 0; i < 12; i++) CHECK(fired[i] == ties[i]);
  test_rt_end(rt, &loop);
}

/* A deadline from bt_due() is never early: the loop's clock is whole milliseconds, so
 * now + 1 taken late in a millisecond fires a few microseconds later on a busy loop. Started at 100 phases
 * across the millisecond, each 1 ms timer fires at least 1 ms (uv_hrtime) after its start. */
static uint64_t fired_at;

static void on_fire_at(bt_timer_t *t) {
  (void)t;
  fired_at = uv_hrtime();
}

static void test_due_never_early(void) {
  bt_rt_t *rt = test_rt_new(&loop);
  CHECK(bt_due(rt, 0) <= bt_now(rt));
  bt_timer_t t;
  memset(&t, 0, sizeof t);
  for (int i = 0; i < 100; i++) {
    uint64_t phase = (uint64_t)i * 10000u, start;
    do start = uv_hrtime(); while (start % 1000000u / 10000u != phase / 10000u);
    CHECK(bt_timer_start(rt, &t, bt_due(rt, 1), on_fire_at) == 0);
    fired_at = 0;
    while (fired_at == 0) uv_run(&loop, UV_RUN_NOWAIT);  /* a busy loop: timers checked often */
    CHECK(fired_at - start >= 1000000u);
  }
  test_rt_end(rt, &loop);
}

/* ---- the ready queue -------------------------------------------------------------------- */

typedef struct ytask {
  bt_task_t t;
  int id, left;  /* resumes left: yields until the last, then finishes */
} ytask;

static int resumed[32], nresumed;

static void yield_resume(bt_rt_t *rt, bt_task_t *t, int status) {
  ytask *y = (ytask *)t;
  CHECK(status == 0 && bt_rt_current(rt) == t && t->state == BT_TASK_RUNNING);
  CHECK(nresumed < 32);
  resumed[nresumed++] = y->id;
  if (--y->left > 0) bt_task_yield(rt, t);
  else bt_task_finish(rt, t, BT_TASK_DONE);
}
static const bt_task_vt yield_vt = {yield_resume, NULL};

static void test_budget_and_order(void) {
  bt_rt_t *rt = test_rt_new(&loop);
  ytask y[3];
  memset(y, 0, sizeof y);
  bt_rt_set_budget(rt, 2);
  nresumed = 0;
  for (int i = 0; i < 3; i++) {
    y[i].id = i;
    y[i].left = 2;
    bt_task_spawn(rt, &y[i].t, &yield_vt, NULL);
    CHECK(y[i].t.state == BT_TASK_PENDING);
  }
  CHECK(bt_rt_ready(rt) == 3 && bt_rt_current(rt) == NULL && nresumed == 0);
  /* One turn: two resumes. A starts and yields; woken A goes before fresh B and C. */
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(nresumed == 2 && resumed[0] == 0 && resumed[1] == 0);
  CHECK(y[0].t.state == BT_TASK_DONE && bt_task_finished(&y[0].t) && bt_rt_ready(rt) == 2);
  CHECK(bt_rt_current(rt) == NULL);
  uv_run(&loop, UV_RUN_NOWAIT);  /* B starts, yields, finishes */
  CHECK(nresumed == 4 && resumed[2] == 1 && resumed[3] == 1 && bt_rt_ready(rt) == 1);
  bt_rt_set_budget(rt, 0);  /* 0 means 1: the queue always moves */
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(nresumed == 5 && resumed[4] == 2 && bt_rt_ready(rt) == 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(nresumed == 6 && resumed[5] == 2);
  for (int i = 0; i < 3; i++) CHECK(y[i].t.state == BT_TASK_DONE);
  test_rt_end(rt, &loop);
}

/* The bound: a pinger that stays woken (it yields 500 times) cannot keep fresh tasks out.
 * Each fresh task starts after exactly 64 of its resumes; woken tasks among themselves and
 * fresh ones among themselves keep FIFO order. */
static int order[1024], norder;

static void log_resume(bt_rt_t *rt, bt_task_t *t, int status) {
  ytask *y = (ytask *)t;
  CHECK(status == 0 && norder < 1024);
  order[norder++] = y->id;
  if (--y->left > 0) bt_task_yield(rt, t);
  else bt_task_finish(rt, t, BT_TASK_DONE);
}
static const bt_task_vt log_vt = {log_resume, NULL};

static void test_fresh_bound(void) {
  bt_rt_t *rt = test_rt_new(&loop);
  ytask p = {.id = 100, .left = 500}, f[3];
  memset(f, 0, sizeof f);
  norder = 0;
  bt_task_spawn(rt, &p.t, &log_vt, NULL);
  for (int i = 0; i < 3; i++) {
    f[i].id = i;
    f[i].left = 1;
    bt_task_spawn(rt, &f[i].t, &log_vt, NULL);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(norder == 503);
  int at[3] = {-1, -1, -1};
  for (int k = 0; k < norder; k++)
    if (order[k] < 3) at[order[k]] = k;
  /* the pinger's first resume, 64 woken ones, f0; 64 more, f1; 64 more, f2 */
  CHECK(at[0] == 65 && at[1] == 130 && at[2] == 195);
  for (int i = 0; i < 3; i++) CHECK(f[i].t.state == BT_TASK_DONE);
  test_rt_end(rt, &loop);
}

/* A task that yields lets the tasks it spawned in that slice start first, ahead of fresh
 * tasks spawned before it ran. */
typedef struct stask {
  bt_task_t t;
  int runs;
  ytask kids[2];
} stask;

static void spawner_resume(bt_rt_t *rt, bt_task_t *t, int status) {
  stask *s = (stask *)t;
  CHECK(status == 0 && norder < 1024);
  order[norder++] = 50;
  if (s->runs++ == 0) {
    for (int i = 0; i < 2; i++) {
      s->kids[i].id = 60 + i;
      s->kids[i].left = 1;
      bt_task_spawn(rt, &s->kids[i].t, &log_vt, NULL);
    }
    bt_task_yield(rt, t);
  } else {
    bt_task_finish(rt, t, BT_TASK_DONE);
  }
}
static const bt_task_vt spawner_vt = {spawner_resume, NULL};

static void test_yield_starts_own_spawns(void) {
  bt_rt_t *rt = test_rt_new(&loop);
  stask s;
  memset(&s, 0, sizeof s);
  ytask other = {.id = 1, .left = 1};
  norder = 0;
  bt_task_spawn(rt, &s.t, &spawner_vt, NULL);
  bt_task_spawn(rt, &other.t, &log_vt, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  int want[] = {50, 60, 61, 50, 1};
  CHECK(norder == 5);
  for (int k = 0; k < 5; k++) CHECK(order[k] == want[k]);
  test_rt_end(rt, &loop);
}

/* A task woken by its timer queues with the fresh tasks, behind those already queued, unless
 * it holds a permit: then it goes first, as any woken task. */
typedef struct wtask {
  ytask y;
  int holder;
  bt_wait_t w;
} wtask;

static void sleeper_resume(bt_rt_t *rt, bt_task_t *t, int status) {
  wtask *s = (wtask *)t;
  CHECK(norder < 1024);
  order[norder++] = s->y.id;
  if (s->y.left-- == 2) {
    CHECK(status == 0);
    if (s->holder) t->flags |= BT_TASK_F_PERMIT;  /* as if a gate had granted it one */
    bt_task_wait(rt, t, &s->w, NULL, bt_now(rt));  /* due now: fires on the next turn */
  } else {
    CHECK(status == BT_ETIMEDOUT);
    t->flags &= (uint8_t)~BT_TASK_F_PERMIT;
    bt_task_finish(rt, t, BT_TASK_DONE);
  }
}
static const bt_task_vt sleeper_vt = {sleeper_resume, NULL};

static void test_timer_wake_queues_with_fresh(void) {
  bt_rt_t *rt = test_rt_new(&loop);
  wtask s[2];
  memset(s, 0, sizeof s);
  ytask f[2];
  memset(f, 0, sizeof f);
  norder = 0;
  for (int i = 0; i < 2; i++) {
    s[i].y.id = 10 + i;
    s[i].y.left = 2;
    s[i].holder = i == 1;
    bt_task_spawn(rt, &s[i].y.t, &sleeper_vt, NULL);
  }
  uv_run(&loop, UV_RUN_NOWAIT);  /* both start and wait on a timer due now */
  CHECK(norder == 2 && bt_rt_timers(rt) == 2);
  for (int i = 0; i < 2; i++) {
    f[i].id = i;
    f[i].left = 1;
    bt_task_spawn(rt, &f[i].t, &log_vt, NULL);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  int want[] = {10, 11, 11, 0, 1, 10};  /* the holder first, the plain sleeper after f0, f1 */
  CHECK(norder == 6);
  for (int k = 0; k < 6; k++) CHECK(order[k] == want[k]);
  test_rt_end(rt, &loop);
}

/* ---- the runtime itself ----------------------------------------------------------------- */

static void test_own_loop_and_data(void) {
  bt_rt_t *rt = bt_rt_new(NULL);
  CHECK(rt != NULL && bt_rt_loop(rt) != NULL && bt_rt_data(rt) == NULL);
  int x;
  bt_rt_set_data(rt, &x);
  CHECK(bt_rt_data(rt) == &x);
  uint64_t a = bt_now(rt), b = bt_now(rt);
  CHECK(b >= a);
  CHECK(bt_rt_free(rt) == 0);  /* its own loop, closed clean */
  CHECK(bt_rt_free(NULL) == 0);
  /* A handle of the embedder's left on the runtime's own loop: closed, freed, reported. */
  rt = bt_rt_new(NULL);
  CHECK(rt != NULL);
  uv_timer_t left;
  CHECK(uv_timer_init(bt_rt_loop(rt), &left) == 0);
  CHECK(bt_rt_free(rt) == UV_EBUSY);
}

static void test_error_names(void) {
  CHECK(strcmp(bt_err_name(BT_ETIMEDOUT), "timeout") == 0);
  CHECK(strcmp(bt_err_name(BT_ECANCELED), "cancelled") == 0);
  CHECK(strcmp(bt_err_name(BT_ECLOSED), "closed") == 0);
  CHECK(strcmp(bt_err_name(BT_EBUSY), "busy") == 0);
  CHECK(strcmp(bt_err_name(UV_ENOENT), "ENOENT") == 0);  /* libuv's, passed through */
  CHECK(strcmp(bt_err_name(0), "ok") == 0);
  CHECK(strcmp(bt_strerror(BT_ECLOSED), "object is closed") == 0);
  CHECK(strcmp(bt_strerror(UV_ENOENT), uv_strerror(UV_ENOENT)) == 0);
  CHECK(strcmp(bt_strerror(0), "success") == 0);
}

int main(void) {
  RUN(test_timers);
  RUN(test_due_never_early);
  RUN(test_budget_and_order);
  RUN(test_fresh_bound);
  RUN(test_yield_starts_own_spawns);
  RUN(test_timer_wake_queues_with_fresh);
  RUN(test_own_loop_and_data);
  RUN(test_error_names);
  return 0;
}
