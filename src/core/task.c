/*
 * task.c — the task state machine: spawn, wait, wake, yield, finish, abort, join.
 *
 * PENDING --drain--> RUNNING --bt_task_wait--> WAITING --bt_task_wake--> READY --drain-->
 * RUNNING ... --bt_task_finish--> DONE | FAILED | CANCELLED.
 *
 * Every wake goes through bt_task_wake(): it checks the token, bumps it (so any other source
 * of the same wait is now stale), stops the wait's timer, runs the wait's cancel (which
 * unregisters the remaining source) and only then enqueues. Abort is a wake with
 * BT_ECANCELED plus the level-triggered BT_TASK_F_CANCEL flag; while the task is shielded
 * (bt_task_shield) it is only recorded, and the unshield turns it into the flag.
 *
 * Ownership: a task spawned into a group that a task owns (bt_group_own) counts in its
 * owner's `owned` from spawn to its own completion. bt_task_finish of a task with owned > 0
 * aborts the live tasks of its groups (tasks that left them were aborted when they were
 * detached, or are on their own way out) and parks it in FINISHING with the final state in
 * `status`; the completion of its last owned task completes it. So a task's joiners, its
 * group and its vtable see it end only after everything it owned has ended, recursively.
 */
#include "internal.h"

static void init(bt_rt_t *rt, bt_task_t *t, const bt_task_vt *vt, bt_group_t *g) {
  t->rq_next = t->g_prev = t->g_next = NULL;
  t->group = g;
  t->vt = vt;
  t->wait = NULL;
  LIST_INIT(&t->joiners);
  t->gate = NULL;
  t->owner = NULL;
  LIST_INIT(&t->groups);
  t->owned = 0;
  t->id = ++rt->next_id;
  t->token = 0;
  t->state = BT_TASK_PENDING;
  t->flags = 0;
  t->status = 0;
  if (g != NULL) {
    bt_tlist *l = &g->live;
    t->g_prev = l->tail;
    if (l->tail) l->tail->g_next = t;
    else l->head = t;
    l->tail = t;
    l->n++;
    if (g->owner != NULL) {
      t->owner = g->owner;
      g->owner->owned++;
    }
  }
}

void bt__task_init(bt_rt_t *rt, bt_task_t *t, const bt_task_vt *vt, bt_group_t *g) {
  init(rt, t, vt, g);
}

void bt_task_spawn(bt_rt_t *rt, bt_task_t *t, const bt_task_vt *vt, bt_group_t *g) {
  init(rt, t, vt, g);
  bt__enqueue(rt, t);
}

int bt_task_finished(const bt_task_t *t) { return t->state >= BT_TASK_DONE; }

static int wake(bt_rt_t *rt, bt_task_t *t, uint32_t token, int status, int lazy);

/* A task woken by its timer queues with the fresh tasks unless it holds a permit (rt.c:
 * admission): sleepers and new work then start in the order they became ready. */
static void on_wait_timeout(bt_timer_t *timer) {
  bt_wait_t *w = bt_container_of(timer, bt_wait_t, timer);
  wake(w->rt, w->task, w->token, BT_ETIMEDOUT, !(w->task->flags & BT_TASK_F_PERMIT));
}

uint32_t bt_task_wait(bt_rt_t *rt, bt_task_t *t, bt_wait_t *w, bt_cancel_fn cancel,
                      uint64_t due) {
  w->rt = rt;
  w->task = t;
  w->token = ++t->token;
  w->cancel = cancel;
  w->timer.slot = 0;
  t->wait = w;
  t->state = BT_TASK_WAITING;
  if (due != UINT64_MAX && bt_timer_start(rt, &w->timer, due, on_wait_timeout) != 0) {
    /* No memory for the heap slot: fail the wait at once rather than hang forever. */
    t->status = BT_ENOMEM;
    t->state = BT_TASK_READY;
    ++t->token;
    if (cancel) cancel(w);
    bt__enqueue(rt, t);
  }
  return w->token;
}

/* A joiner (`lazy`) queues behind the fresh tasks, as the old single FIFO would: it only
 * collects what ended, so running it after the work already queued lets it collect many
 * endings at once instead of one a resume (rt.c: admission). */
static int wake(bt_rt_t *rt, bt_task_t *t, uint32_t token, int status, int lazy) {
  if (t->state != BT_TASK_WAITING || t->token != token) return 0;
  bt_wait_t *w = t->wait;  /* stays set: an embedder may keep its storage there */
  t->token++;
  bt_timer_stop(rt, &w->timer);
  if (w->cancel) w->cancel(w);
  t->status = (int16_t)status;
  t->state = BT_TASK_READY;
  if (lazy) bt__enqueue_fresh(rt, t);
  else bt__enqueue(rt, t);
  return 1;
}

int bt_task_wake(bt_rt_t *rt, bt_task_t *t, uint32_t token, int status) {
  return wake(rt, t, token, status, 0);
}

void bt_task_yield(bt_rt_t *rt, bt_task_t *t) {
  t->state = BT_TASK_READY;
  t->status = 0;
  bt__enqueue_yield(rt, t);
}

void bt__wake_joiners(bt_rt_t *rt, void *head) {
  LIST_HEAD(, bt_joiner) *h = head;
  bt_joiner_t *j;
  while ((j = LIST_FIRST(h)) != NULL) {
    bt_wait_t *w = j->wait;
    LIST_REMOVE(j, link);
    j->wait = NULL;
    wake(rt, w->task, w->token, 0, 1);
  }
}

static void complete(bt_rt_t *rt, bt_task_t *t, bt_task_state_t state) {
  t->state = (uint8_t)state;
  if (t->flags & BT_TASK_F_PERMIT) bt__gate_release(rt, t);
  bt__wake_joiners(rt, &t->joiners);
  if (t->group) bt__group_finished(t->group, t);
  bt_task_t *owner = t->owner;
  t->owner = NULL;
  if (t->vt->finished) t->vt->finished(rt, t);
  /* The last owned task of a finishing owner completes it (t may be freed by now). */
  if (owner != NULL && --owner->owned == 0 && owner->state == BT_TASK_FINISHING)
    complete(rt, owner, (bt_task_state_t)owner->status);
}

void bt_task_finish(bt_rt_t *rt, bt_task_t *t, bt_task_state_t state) {
  t->wait = NULL;
  bt_group_t *g;
  while ((g = LIST_FIRST(&t->groups)) != NULL) {
    bt_group_abort_all(g);  /* only enqueues: nothing finishes under us */
    bt__group_disown(g);
  }
  if (t->owned > 0) {
    t->state = BT_TASK_FINISHING;
    t->status = (int16_t)state;
    return;
  }
  complete(rt, t, state);
}

void bt_task_abort(bt_rt_t *rt, bt_task_t *t) {
  if (bt_task_finished(t)) return;
  if (t->flags & BT_TASK_F_SHIELD) {  /* delivered by bt_task_unshield */
    t->flags |= BT_TASK_F_DEFERRED;
    return;
  }
  t->flags |= BT_TASK_F_CANCEL;
  switch (t->state) {
  case BT_TASK_WAITING:
    bt_task_wake(rt, t, t->token, BT_ECANCELED);
    break;
  case BT_TASK_PENDING:
    if (t->gate != NULL && !(t->flags & BT_TASK_F_QUEUED)) bt__gate_unqueue(rt, t);
    break;
  default:
    break;  /* READY or RUNNING: it sees the flag at its next wait */
  }
}

/* Moves flag `from` to `to` if it is set. */
static void move_flag(bt_task_t *t, unsigned from, unsigned to) {
  if (t->flags & from) t->flags = (uint8_t)((t->flags & ~from) | to);
}

int bt_task_shield(bt_task_t *t) {
  if (t->flags & BT_TASK_F_SHIELD) return 1;
  t->flags |= BT_TASK_F_SHIELD;
  move_flag(t, BT_TASK_F_CANCEL, BT_TASK_F_DEFERRED);  /* hidden while shielded */
  return 0;
}

int bt_task_unshield(bt_task_t *t, int was_shielded) {
  if (!was_shielded) {
    t->flags = (uint8_t)(t->flags & ~BT_TASK_F_SHIELD);
    move_flag(t, BT_TASK_F_DEFERRED, BT_TASK_F_CANCEL);
  }
  return (t->flags & BT_TASK_F_CANCEL) != 0;
}

void bt__joiner_cancel(bt_wait_t *w) {
  bt_joiner_t *j = w->src;
  if (j->wait != NULL) {
    LIST_REMOVE(j, link);
    j->wait = NULL;
  }
}

int bt_task_join(bt_rt_t *rt, bt_task_t *self, bt_task_t *t, bt_joiner_t *j, bt_wait_t *w,
                 uint64_t due) {
  if (bt_task_finished(t)) return 1;
  j->wait = w;
  LIST_INSERT_HEAD(&t->joiners, j, link);
  w->src = j;
  bt_task_wait(rt, self, w, bt__joiner_cancel, due);
  return 0;
}
