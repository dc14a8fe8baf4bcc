/*
 * pipeline.c — the order of named stages and the decisions of one run through them.
 *
 * A pipeline is a list of stage names; the stage code is the embedder's (Lua functions in
 * lpipeline.c). A run walks stage 0 .. n-1 in insertion order: each stage gets the previous
 * stage's output. When a stage fails, the run either stops there (FAILED, no handler) or
 * asks for a replacement value (RECOVER) that becomes that stage's output, and goes on.
 * Each stage is timed with uv_hrtime() from the moment the run hands it out to the moment
 * its outcome is reported — a recovered stage's time includes its handler. A handler may
 * also decline (report not ok from RECOVER): the run then fails at that stage.
 *
 * Invariants of a run: i < n while the state is STAGE or RECOVER; ns[0 .. i-1] hold the
 * times of finished stages; DONE and FAILED are final.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pipeline.h"

void bt__pipeline_init(bt_pipeline_t *p) {
  p->names = NULL;
  p->n = p->cap = 0;
}

void bt__pipeline_destroy(bt_pipeline_t *p) {
  for (size_t i = 0; i < p->n; i++) free(p->names[i]);
  free(p->names);
  bt__pipeline_init(p);
}

int bt__pipeline_add(bt_pipeline_t *p, const char *name, size_t len) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 4;
    char **names = realloc(p->names, cap * sizeof *names);
    if (names == NULL) return BT_ENOMEM;
    p->names = names;
    p->cap = cap;
  }
  char *copy = malloc(len + 1);
  if (copy == NULL) return BT_ENOMEM;
  memcpy(copy, name, len);
  copy[len] = '\0';
  p->names[p->n++] = copy;
  return 0;
}

const char *bt__pipeline_name(const bt_pipeline_t *p, size_t i) {
  return i < p->n ? p->names[i] : NULL;
}

size_t bt__pipeline_run_size(size_t nstages) {
  return sizeof(bt_pipeline_run_t) + nstages * sizeof(uint64_t);
}

static bt_pipeline_step_t start_stage(bt_pipeline_run_t *r) {
  if (r->i >= r->n) return (bt_pipeline_step_t)(r->state = BT_PIPELINE_DONE);
  r->t0 = uv_hrtime();
  return (bt_pipeline_step_t)(r->state = BT_PIPELINE_STAGE);
}

bt_pipeline_step_t bt__pipeline_run_begin(bt_pipeline_run_t *r, size_t n, int has_handler) {
  r->n = n;
  r->i = 0;
  r->recover = has_handler != 0;
  memset(r->ns, 0, n * sizeof r->ns[0]);
  return start_stage(r);
}

bt_pipeline_step_t bt__pipeline_run_next(bt_pipeline_run_t *r, int ok) {
  if (r->state != BT_PIPELINE_STAGE && r->state != BT_PIPELINE_RECOVER)
    return (bt_pipeline_step_t)r->state;  /* DONE and FAILED are final */
  if (!ok && r->state == BT_PIPELINE_STAGE && r->recover)
    return (bt_pipeline_step_t)(r->state = BT_PIPELINE_RECOVER);
  r->ns[r->i] = uv_hrtime() - r->t0;
  if (!ok) return (bt_pipeline_step_t)(r->state = BT_PIPELINE_FAILED);
  r->i++;  /* the stage's output, or the handler's replacement for it */
  return start_stage(r);
}

double bt__pipeline_run_ms(const bt_pipeline_run_t *r, size_t i) {
  return i < r->n ? (double)r->ns[i] / 1e6 : 0.0;
}
