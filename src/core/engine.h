/*
 * engine.h — the speculation engine's core (engine.c): which prefetches may start, what each
 * holds while its task runs, and what it gives back when the task ends. Lua-agnostic; the
 * binding (src/lua/lengine.c) spawns the tasks, calls the dispatcher and builds outcomes.
 * Private to the core and its binding: not installed.
 */
#ifndef BATON_ENGINE_H
#define BATON_ENGINE_H

#include "baton.h"

/* Why a request was not started (0 = admitted). Names: bt__engine_skip_name(). */
enum {
  BT_ENGINE_SKIP_DISABLED = 1,      /* the engine is off */
  BT_ENGINE_SKIP_NOT_SPECULATABLE,  /* the request said speculate = false */
  BT_ENGINE_SKIP_MAX_PARALLEL,      /* max_parallel prefetches of this engine are in flight */
  BT_ENGINE_SKIP_HOST_SATURATED,    /* its host holds per_host_cap slots (cap 0: always) */
  BT_ENGINE_SKIP__N
};

typedef struct bt_engine_cfg {
  size_t max_parallel;       /* in-flight prefetches of the engine, across dispatches */
  size_t per_host_cap;       /* slots per host key in the budget, unless admit gives one */
  uint64_t timeout_ms;       /* the binding's default wait; kept here with the rest */
  int enabled;
  int respect_rate_limits;   /* 0: hosts are neither counted nor capped */
} bt_engine_cfg;

typedef struct bt_engine_stats {
  uint64_t dispatched;       /* admitted */
  uint64_t settled, failed;  /* outcomes reported (bt__engine_note) */
  uint64_t won_race;         /* settled outcomes reported by a wait */
  uint64_t aborted;          /* tasks that ended cancelled */
  uint64_t skipped[BT_ENGINE_SKIP__N];
} bt_engine_stats;

typedef struct bt_engine_rec bt_engine_rec_t;

/* Caller-owned storage (the binding embeds it in its userdata). Fields are read-only. */
typedef struct bt_engine {
  bt_group_t *group;         /* borrowed; hooked while the engine is initialised */
  bt_budget_t *budget;       /* per-host in-flight counts; owned unless shared */
  int own_budget;
  bt_engine_cfg cfg;
  bt_engine_rec_t *recs;     /* by task: admitted and not yet collected */
  bt_engine_rec_t *staged;   /* admitted, its task not yet attached */
  size_t live;               /* admitted tasks that have not ended (in flight) */
  size_t forgotten;          /* of those, the ones shutdown dropped */
  bt_engine_stats stats;
} bt_engine_t;

/* Initialises `e` over group `g` (which must hold only the engine's tasks and outlive it)
 * and hooks the group's finish. `shared` is a budget to count hosts in (borrowed, must
 * outlive the engine), or NULL for one of its own. Returns 0 or BT_ENOMEM. */
int bt__engine_init(bt_engine_t *e, bt_group_t *g, bt_budget_t *shared,
                   const bt_engine_cfg *cfg);
/* Aborts and detaches every task still in the group, gives back every slot still held,
 * frees the records (and its own budget). Finished tasks still in the group are detached
 * too: the caller pops them first if it must release them. Idempotent. */
void bt__engine_destroy(bt_engine_t *e);
/* Decides about one request: `host` (len bytes, borrowed for the call) or NULL for none,
 * capped at `cap` slots (the host's own cap; SIZE_MAX: cfg.per_host_cap). Returns 0
 * (admitted: a slot is held and a record staged for bt__engine_attach), a BT_ENGINE_SKIP_*
 * reason (counted), or BT_ENOMEM (nothing held). */
int bt__engine_admit(bt_engine_t *e, const char *host, size_t len, size_t cap, int speculate);
/* Gives the staged record to `t`, just spawned into the engine's group. */
void bt__engine_attach(bt_engine_t *e, bt_task_t *t);
/* Forgets finished task `t` (popped from the group by the caller): frees its record and
 * returns the milliseconds from its admission to its end. */
uint64_t bt__engine_collect(bt_engine_t *e, bt_task_t *t);
/* Counts one reported outcome: settled (in_wait: within a wait) or failed. */
void bt__engine_note(bt_engine_t *e, int settled, int in_wait);
/* Aborts every task still running and drops its outcome: it leaves the group when it ends,
 * its slot given back then. The caller collects finished tasks first. */
void bt__engine_shutdown(bt_engine_t *e);
/* Outcomes still to come or not yet collected. */
size_t bt__engine_pending(const bt_engine_t *e);
const char *bt__engine_skip_name(int reason);

#endif
