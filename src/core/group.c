/*
 * group.c — task groups (a JoinSet) and gates (bounded spawn).
 *
 * A group keeps its live tasks and its finished-but-not-joined tasks on two doubly linked
 * lists threaded through bt_task_t.g_prev/g_next; `done` is in completion order, so popping
 * its head is join_next. Waiters (bt_group_wait) are all woken on every completion and
 * re-check; a woken waiter that was cancelled meanwhile leaves nothing behind. An owner that
 * must account for every ending (the speculation engine gives back host slots) sets one
 * finish hook, called for each task that finishes while in the group, however it ends.
 *
 * A group may have an owner (bt_group_own): a task that counts every task spawned into the
 * group as its own (task.c), until the owner ends or the group is freed. With fail_fast, the
 * first task to end FAILED aborts its live siblings, once, and is remembered (`failed`)
 * until it leaves the group.
 *
 * A gate puts one waiter on a semaphore on behalf of a FIFO of pending tasks (threaded
 * through rq_next, which a pending, unqueued task does not use). Each grant starts the head
 * task holding one permit; the permit goes back in bt_task_finish(), however the task ends.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void tl_push(bt_tlist *l, bt_task_t *t) {
  t->g_next = NULL;
  t->g_prev = l->tail;
  if (l->tail) l->tail->g_next = t;
  else l->head = t;
  l->tail = t;
  l->n++;
}

static void tl_remove(bt_tlist *l, bt_task_t *t) {
  if (t->g_prev) t->g_prev->g_next = t->g_next;
  else l->head = t->g_next;
  if (t->g_next) t->g_next->g_prev = t->g_prev;
  else l->tail = t->g_prev;
  t->g_prev = t->g_next = NULL;
  l->n--;
}

void bt__group_init(bt_group_t *g, bt_rt_t *rt) {
  memset(g, 0, sizeof *g);
  g->rt = rt;
  LIST_INIT(&g->waiters);
  LIST_INIT(&g->gates);
}

bt_group_t *bt_group_new(bt_rt_t *rt) {
  bt_group_t *g = malloc(sizeof *g);
  if (g != NULL) bt__group_init(g, rt);
  return g;
}

size_t bt_group_len(const bt_group_t *g) { return g->live.n + g->done.n; }
size_t bt_group_live(const bt_group_t *g) { return g->live.n; }

void bt_group_own(bt_group_t *g, bt_task_t *owner) {
  bt__group_disown(g);
  if (owner == NULL || owner->state >= BT_TASK_FINISHING) return;
  g->owner = owner;
  LIST_INSERT_HEAD(&owner->groups, g, owner_link);
}

void bt__group_disown(bt_group_t *g) {
  if (g->owner == NULL) return;
  LIST_REMOVE(g, owner_link);
  g->owner = NULL;
}

void bt_group_fail_fast(bt_group_t *g, int on) { g->fail_fast = on != 0; }
bt_task_t *bt_group_failed(const bt_group_t *g) { return g->failed; }

/* t leaves g: fail fast forgets it. */
static void forget_failed(bt_group_t *g, bt_task_t *t) {
  if (g->failed == t) g->failed = NULL;
}

void bt__group_finished(bt_group_t *g, bt_task_t *t) {
  tl_remove(&g->live, t);
  tl_push(&g->done, t);
  if (g->fail_fast && !g->failing && t->state == BT_TASK_FAILED) {
    g->failing = 1;
    g->failed = t;
    bt_group_abort_all(g);
  }
  bt__wake_joiners(g->rt, &g->waiters);
  if (g->on_finish) g->on_finish(g, t, g->on_finish_data);
}

void bt_group_on_finish(bt_group_t *g, bt_group_finish_cb cb, void *data) {
  g->on_finish = cb;
  g->on_finish_data = data;
}

bt_task_t *bt_group_pop(bt_group_t *g) {
  bt_task_t *t = g->done.head;
  if (t == NULL) return NULL;
  tl_remove(&g->done, t);
  t->group = NULL;
  forget_failed(g, t);
  return t;
}

void bt_group_remove(bt_task_t *t) {
  bt_group_t *g = t->group;
  if (g == NULL) return;
  tl_remove(bt_task_finished(t) ? &g->done : &g->live, t);
  t->group = NULL;
  forget_failed(g, t);
  if (g->live.n == 0 && g->done.n == 0) bt__wake_joiners(g->rt, &g->waiters);
}

int bt_group_wait(bt_group_t *g, bt_task_t *self, bt_joiner_t *j, bt_wait_t *w, uint64_t due) {
  if (g->done.n > 0) return 1;
  if (g->live.n == 0) return -1;
  j->wait = w;
  LIST_INSERT_HEAD(&g->waiters, j, link);
  w->src = j;
  bt_task_wait(g->rt, self, w, bt__joiner_cancel, due);
  return 0;
}

bt_task_t *bt_group_next(bt_group_t *g, bt_task_t *t) {
  if (t == NULL) return g->live.head ? g->live.head : g->done.head;
  if (t->g_next) return t->g_next;
  return bt_task_finished(t) ? NULL : g->done.head;
}

/* Moves every cancelled task still queued on a gate to the ready queue (they finish as
 * cancelled without taking a permit). */
static void gate_flush_cancelled(bt_rt_t *rt, bt_gate_t *gate) {
  bt_task_t **pp = &gate->head, *prev = NULL;
  while (*pp != NULL) {
    bt_task_t *t = *pp;
    if (t->flags & BT_TASK_F_CANCEL) {
      *pp = t->rq_next;
      t->rq_next = NULL;
      t->gate = NULL;
      gate->n--;
      bt__enqueue(rt, t);
    } else {
      prev = t;
      pp = &t->rq_next;
    }
  }
  gate->tail = prev;
  if (gate->n == 0) bt_sem_cancel(&gate->w);
}

void bt_group_abort_all(bt_group_t *g) {
  /* Aborting wakes tasks, which only enqueues: the live list is not changed under us. */
  for (bt_task_t *t = g->live.head; t != NULL; t = t->g_next) {
    if (t->state == BT_TASK_PENDING && t->gate != NULL) t->flags |= BT_TASK_F_CANCEL;
    else bt_task_abort(g->rt, t);
  }
  bt_gate_t *gate;
  LIST_FOREACH(gate, &g->gates, link) gate_flush_cancelled(g->rt, gate);
}

void bt_group_detach_all(bt_group_t *g) {
  bt_group_abort_all(g);
  bt_task_t *t;
  while ((t = g->live.head) != NULL) {
    tl_remove(&g->live, t);
    t->group = NULL;
  }
  while ((t = g->done.head) != NULL) {
    tl_remove(&g->done, t);
    t->group = NULL;
  }
  g->failed = NULL;
  bt__wake_joiners(g->rt, &g->waiters);
}

void bt_group_free(bt_group_t *g) {
  if (g == NULL) return;
  bt__group_destroy(g);
  free(g);
}

void bt__group_destroy(bt_group_t *g) {
  bt__group_disown(g);
  bt_gate_t *gate;
  while ((gate = LIST_FIRST(&g->gates)) != NULL) {
    LIST_REMOVE(gate, link);
    bt_sem_cancel(&gate->w);
    /* Tasks still queued here were detached by bt_group_detach_all(); they hold a gate
     * pointer no longer: give them back to the ready queue as cancelled. */
    bt_task_t *t;
    while ((t = gate->head) != NULL) {
      gate->head = t->rq_next;
      t->rq_next = NULL;
      t->gate = NULL;
      t->flags |= BT_TASK_F_CANCEL;
      bt__enqueue(g->rt, t);
    }
    /* Tasks that still hold a permit release it through the gate: it outlives the group
     * until the last of them finishes. */
    if (gate->holders == 0) free(gate);
    else gate->group = NULL;
  }
}

/* ---- gates -------------------------------------------------------------------------- */

static void gate_granted(bt_sem_waiter_t *w, int status);

static bt_task_t *gate_pop(bt_gate_t *gate) {
  bt_task_t *t = gate->head;
  gate->head = t->rq_next;
  if (gate->head == NULL) gate->tail = NULL;
  gate->n--;
  t->rq_next = NULL;
  return t;
}

/* Starts the head task: with a permit (status 0), or reporting why it got none. */
static void gate_start(bt_rt_t *rt, bt_gate_t *gate, int status) {
  bt_task_t *t = gate_pop(gate);
  if (status == 0) {
    t->flags |= BT_TASK_F_PERMIT;
    gate->holders++;
  } else {
    t->gate = NULL;
    t->status = (int16_t)status;
  }
  bt__enqueue(rt, t);
}

/* Starts queued tasks while permits come at once; leaves the gate's waiter queued on the
 * semaphore when they do not. A closed semaphore starts every queued task with the error. */
static void gate_pump(bt_rt_t *rt, bt_gate_t *gate) {
  while (gate->n > 0 && gate->w.sem == NULL) {
    /* a limit forgotten down to 0 permits: the job waits for add_permits, as one queued
     * before the shrink does */
    int rc = bt__sem_acquire_any(gate->sem, &gate->w, 1, gate_granted);
    if (rc == 0) return;  /* queued: gate_granted continues */
    gate_start(rt, gate, rc == 1 ? 0 : rc);
  }
}

static void gate_granted(bt_sem_waiter_t *w, int status) {
  bt_gate_t *gate = bt_container_of(w, bt_gate_t, w);
  if (gate->n == 0) {  /* everything queued was cancelled meanwhile: give it back */
    if (status == 0) bt_sem_release(gate->sem, 1);
    return;
  }
  gate_start(gate->rt, gate, status);
  if (status == 0) gate_pump(gate->rt, gate);
  else while (gate->n > 0) gate_start(gate->rt, gate, status);
}

bt_gate_t *bt_group_gate(bt_group_t *g, bt_sem_t *sem) {
  bt_gate_t *gate;
  LIST_FOREACH(gate, &g->gates, link)
    if (gate->sem == sem) return gate;
  gate = calloc(1, sizeof *gate);
  if (gate == NULL) return NULL;
  gate->group = g;
  gate->rt = g->rt;
  gate->sem = sem;
  LIST_INSERT_HEAD(&g->gates, gate, link);
  return gate;
}

size_t bt_gate_queued(const bt_gate_t *gate) { return gate->n; }

void bt_gate_spawn(bt_rt_t *rt, bt_gate_t *gate, bt_task_t *t, const bt_task_vt *vt) {
  bt__task_init(rt, t, vt, gate->group);
  t->gate = gate;
  t->rq_next = NULL;
  if (gate->tail) gate->tail->rq_next = t;
  else gate->head = t;
  gate->tail = t;
  gate->n++;
  gate_pump(rt, gate);
}

void bt__gate_release(bt_rt_t *rt, bt_task_t *t) {
  BT_UNUSED(rt);
  bt_gate_t *gate = t->gate;
  t->flags &= (uint8_t)~BT_TASK_F_PERMIT;
  t->gate = NULL;
  gate->holders--;
  bt_sem_release(gate->sem, 1);
  if (gate->group == NULL && gate->holders == 0) free(gate);
}

void bt__gate_unqueue(bt_rt_t *rt, bt_task_t *t) { gate_flush_cancelled(rt, t->gate); }
