/*
 * rt.c — the runtime: one uv_loop_t, the ready queue and the timer heap.
 *
 * The ready queue is two singly linked FIFOs threaded through bt_task_t.rq_next: woken
 * tasks (they ran before and were woken or yielded, or hold a gate's permit) and fresh ones
 * (spawned, never run; and woken joiners, below). Wake-ups and spawns only append; the
 * check handle drains after each poll, at most `budget` resumes per loop iteration so timers
 * and I/O keep getting turns. While either queue is non-empty the idle handle is active,
 * which makes the loop poll without blocking (Node's setImmediate pattern). The check handle
 * is unreferenced: an empty runtime does not keep the loop alive.
 *
 * Admission: woken tasks go first, so work already under way (holding permits, buffers, a
 * coroutine) finishes before new work starts; a million tasks spawned at once that each
 * take a permit inside therefore start one after another as permits come back, instead of
 * all starting and parking. The bound: while fresh tasks wait, at least one of every
 * BT_FRESH_EVERY + 1 resumes starts one, so the fresh queue's head starts after at most
 * BT_FRESH_EVERY woken resumes, and a fresh task with p tasks ahead of it after at most
 * (p + 1) * BT_FRESH_EVERY. A fresh task also starts whenever no woken task is ready.
 * A task woken by the end of a task it joins (join, a group's join_next, join_all,
 * wait_within) queues behind the fresh ones, as in one FIFO: a collector that ran after
 * each ending would cost a resume per task. So does a task woken by its timer unless it
 * holds a permit (task.c): sleepers then begin their sleeps in spawn order, before the
 * early wakers run their tails, rather than each start waiting behind those tails.
 * A task that yields lets the tasks it spawned since it was resumed start before it: what
 * entered the fresh queue during its slice (its spawns, and any joiner it woke) moves to the
 * woken queue, ahead of it, so "spawn, then yield" still sees the child started. That
 * stretch is found from the fresh tail noted when the slice began (slice_fresh): nothing
 * leaves the fresh queue while a task runs.
 *
 * Timers are a binary min-heap on (due, seq) of caller-owned bt_timer_t records, the keys
 * copied into the heap's entries (comparing never reads a timer: with 100,000 timers armed,
 * popping them all took half the time); a single uv_timer_t is armed at the heap's head. Starting or stopping a timer never allocates once
 * the heap has grown, and ties fire in start order.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void on_check(uv_check_t *h);
static void on_idle(uv_idle_t *h) { BT_UNUSED(h); }
static void on_timer(uv_timer_t *h);

/* A process started with stdin, stdout or stderr closed gives the loop's epoll descriptor
 * one of those numbers: written to as stderr, and closed at the end, which libuv asserts
 * never happens (every run ended in an abort). Those left closed point at /dev/null. */
static void std_fds_open(void) {
  for (;;) {
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0 || fd > STDERR_FILENO) {
      if (fd >= 0) close(fd);
      return;
    }
    fcntl(fd, F_SETFD, 0);  /* a standard stream is inherited by children */
  }
}

bt_rt_t *bt_rt_new(uv_loop_t *loop) {
  if (loop == NULL) std_fds_open();
  bt_rt_t *rt = calloc(1, sizeof *rt);
  if (rt == NULL) return NULL;
  if (loop == NULL) {
    if (uv_loop_init(&rt->own) != 0) goto fail;
    rt->own_loop = 1;
    loop = &rt->own;
  }
  rt->loop = loop;
  rt->budget = 1024;
  rt->armed_due = UINT64_MAX;
  uv_check_init(loop, &rt->check);
  uv_idle_init(loop, &rt->idle);
  uv_timer_init(loop, &rt->timer);
  rt->check.data = rt->idle.data = rt->timer.data = rt;
  uv_check_start(&rt->check, on_check);
  uv_unref((uv_handle_t *)&rt->check);
  return rt;
fail:
  free(rt);
  return NULL;
}

static void on_close_count(uv_handle_t *h) {
  int *n = h->data;
  (*n)--;
}

static void close_foreign(uv_handle_t *h, void *arg) {
  BT_UNUSED(arg);
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

int bt_rt_free(bt_rt_t *rt) {
  if (rt == NULL) return 0;
  int pending = 3, rc = 0;
  bt__http_free(rt);
  uv_handle_t *hs[3] = {(uv_handle_t *)&rt->check, (uv_handle_t *)&rt->idle,
                        (uv_handle_t *)&rt->timer};
  for (int i = 0; i < 3; i++) {
    hs[i]->data = &pending;
    uv_close(hs[i], on_close_count);
  }
  while (pending > 0) uv_run(rt->loop, UV_RUN_ONCE);
  if (rt->own_loop) {
    if (uv_loop_close(&rt->own) == UV_EBUSY) {
      rc = UV_EBUSY;
      uv_walk(&rt->own, close_foreign, NULL);
      uv_run(&rt->own, UV_RUN_DEFAULT);
      uv_loop_close(&rt->own);
    }
  }
  free(rt->heap);
  free(rt);
  return rc;
}

uv_loop_t *bt_rt_loop(bt_rt_t *rt) { return rt->loop; }
bt_task_t *bt_rt_current(bt_rt_t *rt) { return rt->current; }
size_t bt_rt_ready(bt_rt_t *rt) { return rt->rq_len; }
size_t bt_rt_timers(bt_rt_t *rt) { return rt->heap_len; }
size_t bt_rt_procs(bt_rt_t *rt) { return rt->nprocs; }
void bt_rt_set_data(bt_rt_t *rt, void *data) { rt->data = data; }
void *bt_rt_data(bt_rt_t *rt) { return rt->data; }
void bt_rt_set_budget(bt_rt_t *rt, unsigned resumes) { rt->budget = resumes ? resumes : 1; }

uint64_t bt_now(bt_rt_t *rt) {
  uv_update_time(rt->loop);
  return uv_now(rt->loop);
}

/* The loop's clock is whole milliseconds cut down from uv_hrtime(): a deadline of now + ms
 * fires up to 1 ms early when the current millisecond is almost over. Counting from the next
 * whole millisecond of the same (CLOCK_MONOTONIC) clock makes it never early. One clock
 * read: the loop's own time need not be fresh, since a timer's due is absolute (rearm). */
uint64_t bt_due(bt_rt_t *rt, uint64_t ms) {
  if (ms == 0) return bt_now(rt);
  return (uv_hrtime() + 999999u) / 1000000u + ms;
}

/* ---- ready queue -------------------------------------------------------------------- */

static void push(bt_rt_t *rt, bt_task_t *t, int fresh) {
  t->flags |= BT_TASK_F_QUEUED;
  t->rq_next = NULL;
  if (fresh) {
    if (rt->fq_tail) rt->fq_tail->rq_next = t;
    else rt->fq_head = t;
    rt->fq_tail = t;
  } else {
    if (rt->rq_tail) rt->rq_tail->rq_next = t;
    else rt->rq_head = t;
    rt->rq_tail = t;
  }
  if (rt->rq_len++ == 0) uv_idle_start(&rt->idle, on_idle);
}

void bt__enqueue(bt_rt_t *rt, bt_task_t *t) {
  if (t->flags & BT_TASK_F_QUEUED) return;
  /* Fresh: never ran, holds no permit, not cancelled (a cancelled one only has to end). */
  push(rt, t, t->state == BT_TASK_PENDING &&
                  !(t->flags & (BT_TASK_F_PERMIT | BT_TASK_F_CANCEL)));
}

void bt__enqueue_fresh(bt_rt_t *rt, bt_task_t *t) {
  if (!(t->flags & BT_TASK_F_QUEUED)) push(rt, t, 1);
}

void bt__enqueue_yield(bt_rt_t *rt, bt_task_t *t) {
  if (t == rt->current && !(t->flags & BT_TASK_F_QUEUED)) {
    bt_task_t *mark = rt->slice_fresh;
    bt_task_t *first = mark ? mark->rq_next : rt->fq_head;
    if (first != NULL) {
      bt_task_t *last = rt->fq_tail;
      if (mark) mark->rq_next = NULL;
      else rt->fq_head = NULL;
      rt->fq_tail = mark;
      if (rt->rq_tail) rt->rq_tail->rq_next = first;
      else rt->rq_head = first;
      rt->rq_tail = last;
    }
  }
  bt__enqueue(rt, t);
}

/* The next task to resume (see Admission above), or NULL when both queues are empty. */
static bt_task_t *next_ready(bt_rt_t *rt) {
  bt_task_t *t;
  if (rt->rq_head != NULL && (rt->fq_head == NULL || rt->since_fresh < BT_FRESH_EVERY)) {
    t = rt->rq_head;
    rt->rq_head = t->rq_next;
    if (rt->rq_head == NULL) rt->rq_tail = NULL;
    if (rt->fq_head != NULL) rt->since_fresh++;
  } else if ((t = rt->fq_head) != NULL) {
    rt->fq_head = t->rq_next;
    if (rt->fq_head == NULL) rt->fq_tail = NULL;
    rt->since_fresh = 0;
  }
  return t;
}

static void on_check(uv_check_t *h) {
  bt_rt_t *rt = h->data;
  unsigned budget = rt->budget;
  bt_task_t *t;
  while (budget > 0 && (t = next_ready(rt)) != NULL) {
    budget--;
    rt->rq_len--;
    t->flags &= (uint8_t)~BT_TASK_F_QUEUED;
    t->rq_next = NULL;
    if (bt_task_finished(t)) continue;
    int status = t->status;
    if (t->state == BT_TASK_PENDING && (t->flags & BT_TASK_F_CANCEL)) status = BT_ECANCELED;
    t->status = 0;
    bt_task_t *prev = rt->current;
    rt->current = t;
    rt->slice_fresh = rt->fq_tail;
    t->state = BT_TASK_RUNNING;
    t->vt->resume(rt, t, status);
    rt->current = prev;
  }
  if (rt->rq_len == 0) uv_idle_stop(&rt->idle);
}

/* ---- timers ------------------------------------------------------------------------- */

typedef struct bt_heap_entry entry;

static inline int entry_less(const entry *a, const entry *b) {
  return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static inline void heap_place(bt_rt_t *rt, size_t i, entry e) {
  rt->heap[i] = e;
  e.t->slot = i + 1;
}

static void sift_up(bt_rt_t *rt, size_t i) {
  entry e = rt->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!entry_less(&e, &rt->heap[p])) break;
    heap_place(rt, i, rt->heap[p]);
    i = p;
  }
  heap_place(rt, i, e);
}

static void sift_down(bt_rt_t *rt, size_t i) {
  entry e = rt->heap[i];
  size_t n = rt->heap_len;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && entry_less(&rt->heap[c + 1], &rt->heap[c])) c++;
    if (!entry_less(&rt->heap[c], &e)) break;
    heap_place(rt, i, rt->heap[c]);
    i = c;
  }
  heap_place(rt, i, e);
}

static void heap_remove(bt_rt_t *rt, bt_timer_t *t) {
  size_t i = t->slot - 1;
  entry last = rt->heap[--rt->heap_len];
  t->slot = 0;
  if (last.t == t) return;
  heap_place(rt, i, last);
  if (i > 0 && entry_less(&last, &rt->heap[(i - 1) / 2])) sift_up(rt, i);
  else sift_down(rt, i);
}

/* Points the uv timer at the heap's head (or stops it). */
static void rearm(bt_rt_t *rt) {
  if (rt->heap_len == 0) {
    if (rt->armed_due != UINT64_MAX) uv_timer_stop(&rt->timer);
    rt->armed_due = UINT64_MAX;
    return;
  }
  uint64_t due = rt->heap[0].due;
  if (due == rt->armed_due) return;
  uint64_t now = uv_now(rt->loop);
  uv_timer_start(&rt->timer, on_timer, due > now ? due - now : 0, 0);
  rt->armed_due = due;
}

int bt_timer_start(bt_rt_t *rt, bt_timer_t *t, uint64_t due, bt_timer_cb cb) {
  if (t->slot) heap_remove(rt, t);
  if (rt->heap_len == rt->heap_cap) {
    size_t cap = rt->heap_cap ? rt->heap_cap * 2 : 64;
    entry *h = realloc(rt->heap, cap * sizeof *h);
    if (h == NULL) return BT_ENOMEM;
    rt->heap = h;
    rt->heap_cap = cap;
  }
  t->due = due;
  t->seq = rt->timer_seq++;
  t->cb = cb;
  heap_place(rt, rt->heap_len++, (entry){due, t->seq, t});
  sift_up(rt, rt->heap_len - 1);
  if (rt->heap[0].t == t) rearm(rt);
  return 0;
}

void bt_timer_stop(bt_rt_t *rt, bt_timer_t *t) {
  if (t->slot == 0) return;
  int was_head = rt->heap[0].t == t;
  heap_remove(rt, t);
  if (was_head) rearm(rt);
}

static void on_timer(uv_timer_t *h) {
  bt_rt_t *rt = h->data;
  rt->armed_due = UINT64_MAX;
  uint64_t now = uv_now(rt->loop);
  while (rt->heap_len > 0 && rt->heap[0].due <= now) {
    bt_timer_t *t = rt->heap[0].t;
    heap_remove(rt, t);
    t->cb(t);
  }
  rearm(rt);
}
