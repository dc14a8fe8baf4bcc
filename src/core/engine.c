/*
 * engine.c — the speculation engine's core: admission, per-task records, and the release of
 * what a prefetch holds when its task ends.
 *
 * A request is skipped, in this order, when the engine is disabled, when the request is
 * not speculatable, when max_parallel of the engine's tasks have not ended yet (whichever
 * dispatch started them), or when its host's count in the budget is at per_host_cap. A
 * request with no host, or any request with respect_rate_limits off, is never counted in
 * the budget. An admitted request gets a record holding its host slot; it is staged until
 * the binding has spawned the task into the engine's group, then found by task (uthash).
 *
 * Invariants:
 *  - `live` counts records whose task has not ended (the staged one included); such a
 *    record, and only such a record, holds its host slot.
 *  - Slot and `live` are given back by the group's finish hook, however the task ended: it
 *    returned, raised, was cancelled while waiting, or was aborted before it ever ran. No
 *    Lua code has to run for it. bt__engine_destroy() gives back the slots of tasks that have
 *    not ended: it aborts them, which cancels their waits (timer stopped, child signalled)
 *    at once, and detaches them, since the engine no longer exists to be told of their end.
 *  - Every task in the group has a record until the binding collects its outcome, except
 *    tasks shutdown forgot (`forgotten` counts those not yet ended): they leave the group,
 *    record and all, the moment they end. Pending outcomes = group length - forgotten.
 */
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "engine.h"
#include "internal.h"

struct bt_engine_rec {
  UT_hash_handle hh;
  bt_task_t *task;          /* the key; NULL while staged */
  bt_budget_key_t *slot;    /* the host slot, NULL when none is held */
  uint64_t started, ended;  /* loop milliseconds */
  uint8_t ended_flag;
  uint8_t forgotten;
};

static const char *const skip_names[BT_ENGINE_SKIP__N] = {
  NULL, "disabled", "not_speculatable", "max_parallel", "host_saturated"};

const char *bt__engine_skip_name(int reason) {
  return reason > 0 && reason < BT_ENGINE_SKIP__N ? skip_names[reason] : "?";
}

/* The task of `r` has ended (or is being let go): give back what it holds. Idempotent. */
static void rec_end(bt_engine_t *e, bt_engine_rec_t *r) {
  if (r->ended_flag) return;
  r->ended_flag = 1;
  r->ended = bt_now(e->group->rt);
  if (r->slot != NULL) {
    bt_budget_release(e->budget, r->slot);
    r->slot = NULL;
  }
  e->live--;
  if (r->forgotten) e->forgotten--;
}

static void on_task_finished(bt_group_t *g, bt_task_t *t, void *data) {
  BT_UNUSED(g);
  bt_engine_t *e = data;
  bt_engine_rec_t *r;
  HASH_FIND_PTR(e->recs, &t, r);
  if (r == NULL) return;
  int forgotten = r->forgotten;
  rec_end(e, r);
  if (t->state == BT_TASK_CANCELLED) e->stats.aborted++;
  if (forgotten) {  /* nobody will collect it: it leaves now, its outcome unseen */
    HASH_DEL(e->recs, r);
    free(r);
    t->flags |= BT_TASK_F_JOINED;
    bt_group_remove(t);
  }
}

/* A staged record whose task was never attached (the binding raised in between). */
static void drop_staged(bt_engine_t *e) {
  bt_engine_rec_t *r = e->staged;
  if (r == NULL) return;
  e->staged = NULL;
  rec_end(e, r);
  e->stats.dispatched--;
  free(r);
}

int bt__engine_init(bt_engine_t *e, bt_group_t *g, bt_budget_t *shared,
                   const bt_engine_cfg *cfg) {
  memset(e, 0, sizeof *e);
  e->budget = shared != NULL ? shared : bt_budget_new(cfg->per_host_cap);
  if (e->budget == NULL) return BT_ENOMEM;
  e->own_budget = shared == NULL;
  e->cfg = *cfg;
  e->group = g;
  bt_group_on_finish(g, on_task_finished, e);
  return 0;
}

void bt__engine_destroy(bt_engine_t *e) {
  if (e->group == NULL) return;
  bt_group_t *g = e->group;
  bt_group_on_finish(g, NULL, NULL);
  /* Their outcomes go unseen on purpose: no "nobody joined it" warning later. */
  for (bt_task_t *t = bt_group_next(g, NULL); t != NULL; t = bt_group_next(g, t))
    t->flags |= BT_TASK_F_JOINED;
  bt_group_detach_all(g);
  drop_staged(e);
  bt_engine_rec_t *r, *tmp;
  HASH_ITER(hh, e->recs, r, tmp) {
    if (!r->ended_flag) e->stats.aborted++;
    rec_end(e, r);
    HASH_DEL(e->recs, r);
    free(r);
  }
  if (e->own_budget) bt_budget_free(e->budget);
  e->budget = NULL;
  e->group = NULL;
}

int bt__engine_admit(bt_engine_t *e, const char *host, size_t len, size_t cap, int speculate) {
  drop_staged(e);
  int why = !e->cfg.enabled ? BT_ENGINE_SKIP_DISABLED
          : !speculate ? BT_ENGINE_SKIP_NOT_SPECULATABLE
          : e->live >= e->cfg.max_parallel ? BT_ENGINE_SKIP_MAX_PARALLEL : 0;
  bt_engine_rec_t *r = NULL;
  if (why == 0) {
    r = calloc(1, sizeof *r);
    if (r == NULL) return BT_ENOMEM;
    if (host != NULL && e->cfg.respect_rate_limits) {
      int err = 0;
      if (cap == SIZE_MAX) cap = e->cfg.per_host_cap;
      r->slot = bt_budget_try_acquire(e->budget, host, len, cap, &err);
      if (r->slot == NULL) {
        free(r);
        if (err == BT_ENOMEM) return BT_ENOMEM;
        why = BT_ENGINE_SKIP_HOST_SATURATED;
      }
    }
  }
  if (why != 0) {
    e->stats.skipped[why]++;
    return why;
  }
  r->started = bt_now(e->group->rt);
  e->live++;
  e->stats.dispatched++;
  e->staged = r;
  return 0;
}

void bt__engine_attach(bt_engine_t *e, bt_task_t *t) {
  bt_engine_rec_t *r = e->staged;
  e->staged = NULL;
  r->task = t;
  HASH_ADD_PTR(e->recs, task, r);
}

uint64_t bt__engine_collect(bt_engine_t *e, bt_task_t *t) {
  bt_engine_rec_t *r;
  HASH_FIND_PTR(e->recs, &t, r);
  if (r == NULL) return 0;
  rec_end(e, r);
  uint64_t elapsed = r->ended - r->started;
  HASH_DEL(e->recs, r);
  free(r);
  return elapsed;
}

void bt__engine_note(bt_engine_t *e, int settled, int in_wait) {
  if (!settled) {
    e->stats.failed++;
    return;
  }
  e->stats.settled++;
  if (in_wait) e->stats.won_race++;
}

void bt__engine_shutdown(bt_engine_t *e) {
  bt_engine_rec_t *r, *tmp;
  HASH_ITER(hh, e->recs, r, tmp) {
    if (r->ended_flag || r->forgotten) continue;
    r->forgotten = 1;
    e->forgotten++;
  }
  bt_group_abort_all(e->group);
}

size_t bt__engine_pending(const bt_engine_t *e) {
  return e->group ? bt_group_len(e->group) - e->forgotten : 0;
}
