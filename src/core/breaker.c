/*
 * breaker.c — circuit breaker decisions and the in-memory state backend.
 *
 * States, from the backend's two values (count, open time) and the clock:
 *   closed     no open time and count < threshold: calls pass;
 *   open       an open time within recovery_ms: calls fast-fail;
 *   half-open  an open time older than recovery_ms (or, the seed's encoding, no open time
 *              with count >= threshold): at most half_open_max calls at once pass as
 *              probes, the rest fast-fail (seed defect 6: the seed admitted any number).
 * A success resets the count and clears the open time (a probe's success closes the
 * circuit). A counted failure increments the count; reaching the threshold, or failing as
 * a probe, (re)opens the circuit at the time of the failure. A failure the predicate does
 * not count, or a call abandoned midway (cancelled), changes nothing but frees its probe.
 *
 * The cursor of one call walks: GET_OPEN_AT [GET_FAILURES] [ACQUIRE_PROBE] -> REJECT | RUN
 * -> (ok) RESET CLEAR_OPEN_AT | (failed) [COUNTS] INCREMENT [SET_OPEN_AT] -> [RELEASE_PROBE]
 * DONE.
 * Fleet probes: a half-open call that got a local probe slot also asks the backend for
 * its probe lease for this opening (ACQUIRE_PROBE with open_at); refused, it is rejected
 * like a call over half_open_max. The lease is given back after the outcome was written
 * (the circuit closed or reopened), so a process that takes it next sees the new state.
 * Invariants: probes == the number of cursors with probe set; a cursor with lease set
 * passes RELEASE_PROBE before DONE.
 */
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "baton.h"
#include "breaker.h"

int bt__breaker_init(bt_breaker_t *b, uint32_t threshold, int64_t recovery_ms,
                    uint32_t half_open_max, int has_counts) {
  if (threshold == 0 || half_open_max == 0 || recovery_ms < 0) return BT_EINVAL;
  b->threshold = threshold;
  b->recovery_ms = recovery_ms;
  b->half_open_max = half_open_max;
  b->probes = 0;
  b->has_counts = has_counts != 0;
  b->fleet_probe = 0;
  return 0;
}

void bt__breaker_fleet_probe(bt_breaker_t *b, int on) { b->fleet_probe = on != 0; }

bt_breaker_state_t bt__breaker_state(const bt_breaker_t *b, int has_open, int64_t open_at,
                                uint32_t failures, int64_t now) {
  if (has_open) {
    /* now < open_at: another clock (a shared backend) is ahead of ours; still open. */
    if (now < open_at || (uint64_t)now - (uint64_t)open_at < (uint64_t)b->recovery_ms)
      return BT_BREAKER_OPEN;
    return BT_BREAKER_HALF_OPEN;
  }
  return failures >= b->threshold ? BT_BREAKER_HALF_OPEN : BT_BREAKER_CLOSED;
}

void bt__breaker_end(bt_breaker_t *b, bt_breaker_call_t *c) {
  if (c->probe) {
    c->probe = 0;
    b->probes--;
  }
}

static bt_breaker_step_t to(bt_breaker_t *b, bt_breaker_call_t *c, bt_breaker_step_t step) {
  if (step == BT_BREAKER_DONE && c->lease) step = BT_BREAKER_RELEASE_PROBE;
  if (step == BT_BREAKER_DONE || step == BT_BREAKER_REJECT) bt__breaker_end(b, c);
  c->step = (uint8_t)step;
  return step;
}

/* The state is known: admit the call, or not. */
static bt_breaker_step_t admit(bt_breaker_t *b, bt_breaker_call_t *c) {
  c->state = (uint8_t)bt__breaker_state(b, c->has_open, c->open_at, c->failures, c->now);
  if (c->peek) return to(b, c, BT_BREAKER_DONE);
  switch (c->state) {
  case BT_BREAKER_CLOSED:
    return to(b, c, BT_BREAKER_RUN);
  case BT_BREAKER_HALF_OPEN:
    if (b->probes >= b->half_open_max) return to(b, c, BT_BREAKER_REJECT);
    b->probes++;
    c->probe = 1;
    /* a fleet's probe is for one opening: without an open time there is none to name */
    return to(b, c, b->fleet_probe && c->has_open ? BT_BREAKER_ACQUIRE_PROBE : BT_BREAKER_RUN);
  default:
    return to(b, c, BT_BREAKER_REJECT);
  }
}

bt_breaker_step_t bt__breaker_begin(bt_breaker_t *b, bt_breaker_call_t *c, int64_t now, int peek) {
  memset(c, 0, sizeof *c);
  c->now = now;
  c->peek = peek != 0;
  return to(b, c, BT_BREAKER_GET_OPEN_AT);
}

bt_breaker_step_t bt__breaker_report(bt_breaker_t *b, bt_breaker_call_t *c, int has, int64_t value) {
  switch (c->step) {
  case BT_BREAKER_GET_OPEN_AT:
    c->has_open = has != 0;
    c->open_at = value;
    /* An open time decides alone; the count matters only without one. */
    return c->has_open ? admit(b, c) : to(b, c, BT_BREAKER_GET_FAILURES);
  case BT_BREAKER_GET_FAILURES:
    c->failures = value < 0 ? 0 : value > UINT32_MAX ? UINT32_MAX : (uint32_t)value;
    return admit(b, c);
  case BT_BREAKER_RUN:
    switch ((bt_breaker_outcome_t)value) {
    case BT_BREAKER_OK: return to(b, c, BT_BREAKER_RESET);
    case BT_BREAKER_FAILED: return to(b, c, b->has_counts ? BT_BREAKER_COUNTS : BT_BREAKER_INCREMENT);
    default: return to(b, c, BT_BREAKER_DONE);
    }
  case BT_BREAKER_COUNTS:
    return to(b, c, value ? BT_BREAKER_INCREMENT : BT_BREAKER_DONE);
  case BT_BREAKER_INCREMENT:
    c->failures = value < 0 ? 0 : value > UINT32_MAX ? UINT32_MAX : (uint32_t)value;
    return to(b, c, c->probe || c->failures >= b->threshold ? BT_BREAKER_SET_OPEN_AT : BT_BREAKER_DONE);
  case BT_BREAKER_RESET:
    return to(b, c, BT_BREAKER_CLEAR_OPEN_AT);
  case BT_BREAKER_ACQUIRE_PROBE:
    if (!has) return to(b, c, BT_BREAKER_REJECT);
    c->lease = 1;
    return to(b, c, BT_BREAKER_RUN);
  case BT_BREAKER_RELEASE_PROBE:
    c->lease = 0;
    return to(b, c, BT_BREAKER_DONE);
  case BT_BREAKER_SET_OPEN_AT:
  case BT_BREAKER_CLEAR_OPEN_AT:
  default:
    return to(b, c, BT_BREAKER_DONE);
  }
}

/* ---- in-memory backend -------------------------------------------------------------- */

typedef struct svc {
  UT_hash_handle hh;
  uint32_t failures;
  int has_open;
  int64_t open_at;
  size_t len;
  char name[];
} svc;

struct bt_breaker_mem {
  svc *services;  /* uthash; a record lives as long as the backend (services are few) */
};

bt_breaker_mem_t *bt__breaker_mem_new(void) { return calloc(1, sizeof(bt_breaker_mem_t)); }

void bt__breaker_mem_free(bt_breaker_mem_t *m) {
  if (m == NULL) return;
  svc *s, *tmp;
  HASH_ITER(hh, m->services, s, tmp) {
    HASH_DEL(m->services, s);
    free(s);
  }
  free(m);
}

static svc *find(bt_breaker_mem_t *m, const char *name, size_t len) {
  svc *s;
  HASH_FIND(hh, m->services, name, len, s);
  return s;
}

static svc *find_or_add(bt_breaker_mem_t *m, const char *name, size_t len) {
  svc *s = find(m, name, len);
  if (s != NULL) return s;
  s = calloc(1, sizeof *s + len + 1);
  if (s == NULL) return NULL;
  s->len = len;
  memcpy(s->name, name, len);
  HASH_ADD(hh, m->services, name[0], len, s);
  return s;
}

int bt__breaker_mem_increment(bt_breaker_mem_t *m, const char *name, size_t len, uint32_t *count) {
  svc *s = find_or_add(m, name, len);
  if (s == NULL) return BT_ENOMEM;
  if (s->failures < UINT32_MAX) s->failures++;
  *count = s->failures;
  return 0;
}

void bt__breaker_mem_reset(bt_breaker_mem_t *m, const char *name, size_t len) {
  svc *s = find(m, name, len);
  if (s) s->failures = 0;
}

uint32_t bt__breaker_mem_failures(bt_breaker_mem_t *m, const char *name, size_t len) {
  svc *s = find(m, name, len);
  return s ? s->failures : 0;
}

int bt__breaker_mem_set_open_at(bt_breaker_mem_t *m, const char *name, size_t len, int64_t at) {
  svc *s = find_or_add(m, name, len);
  if (s == NULL) return BT_ENOMEM;
  s->has_open = 1;
  s->open_at = at;
  return 0;
}

void bt__breaker_mem_clear_open_at(bt_breaker_mem_t *m, const char *name, size_t len) {
  svc *s = find(m, name, len);
  if (s) s->has_open = 0;
}

int bt__breaker_mem_open_at(bt_breaker_mem_t *m, const char *name, size_t len, int64_t *at) {
  svc *s = find(m, name, len);
  if (s == NULL || !s->has_open) return 0;
  *at = s->open_at;
  return 1;
}
