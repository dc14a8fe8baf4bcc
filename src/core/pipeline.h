/*
 * pipeline.h — named stages run in order, and the per-run cursor that decides what comes
 * next and times each stage (see pipeline.c). Lua-agnostic: the stages' code belongs to
 * the embedder, which asks a run what to do next and reports how each step went; that
 * way a stage may suspend (a coroutine yield, a callback) between the two calls.
 */
#ifndef BATON_PIPELINE_H
#define BATON_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct bt_pipeline {
  char **names;      /* stage names, NUL-terminated, owned */
  size_t n, cap;
} bt_pipeline_t;

/* What a run does next. */
typedef enum {
  BT_PIPELINE_STAGE = 0,  /* run stage `i` with the current value */
  BT_PIPELINE_RECOVER,    /* stage `i` failed: call the error handler for a replacement */
  BT_PIPELINE_DONE,       /* every stage ran: the current value is the output */
  BT_PIPELINE_FAILED      /* stage `i` failed and there is no handler: stop */
} bt_pipeline_step_t;

/* One run, in caller-owned storage of bt__pipeline_run_size(n) bytes (the Lua binding keeps it
 * in a userdata, so an error unwinding the run frees it). */
typedef struct bt_pipeline_run {
  size_t n;          /* stages in this run, fixed when it begins */
  size_t i;          /* the current stage */
  int recover;       /* failures go to the error handler */
  int state;         /* bt_pipeline_step_t of the last decision */
  uint64_t t0;       /* uv_hrtime() when the current stage began */
  uint64_t ns[];     /* per stage: elapsed nanoseconds, handler included when it failed */
} bt_pipeline_run_t;

void bt__pipeline_init(bt_pipeline_t *p);
/* Frees the names; `p` can be initialised again. */
void bt__pipeline_destroy(bt_pipeline_t *p);
/* Appends a stage named `name` (len bytes, copied). Returns 0 or BT_ENOMEM. */
int bt__pipeline_add(bt_pipeline_t *p, const char *name, size_t len);
/* Stage i's name, borrowed while the pipeline lives. */
const char *bt__pipeline_name(const bt_pipeline_t *p, size_t i);

size_t bt__pipeline_run_size(size_t nstages);
/* Begins a run over the first `n` stages; the first step is BT_PIPELINE_STAGE 0, or DONE. */
bt_pipeline_step_t bt__pipeline_run_begin(bt_pipeline_run_t *r, size_t n, int has_handler);
/* Reports how the step returned by the last call went (`ok` 0: the stage failed, or the
 * handler declined to replace its output) and returns the next step. */
bt_pipeline_step_t bt__pipeline_run_next(bt_pipeline_run_t *r, int ok);
/* Elapsed milliseconds of stage i, with sub-millisecond resolution. */
double bt__pipeline_run_ms(const bt_pipeline_run_t *r, size_t i);

#endif
