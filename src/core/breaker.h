/*
 * breaker.h — a circuit breaker's decisions, the cursor of one guarded call, and the
 * in-memory state backend (see breaker.c). Lua-agnostic.
 *
 * A breaker's shared state — the consecutive failure count and the time the circuit
 * opened — lives in a backend, per service name, so that several breakers (or processes)
 * can share it. The backend may be remote and slow, so the cursor never calls it: it
 * tells the embedder which backend operation comes next and is told the result, and the
 * embedder may suspend in between. Probe accounting (how many half-open probes are in
 * flight) is local to the breaker object; a backend shared by a fleet may also grant a
 * probe lease (fleet_probe), so that one call in the whole fleet probes a half-open
 * circuit: the cursor then asks for the lease (ACQUIRE_PROBE) after the local slot, and
 * gives it back (RELEASE_PROBE) once the probe's outcome is recorded.
 */
#ifndef BATON_BREAKER_H
#define BATON_BREAKER_H

#include <stddef.h>
#include <stdint.h>

typedef enum { BT_BREAKER_CLOSED = 0, BT_BREAKER_OPEN, BT_BREAKER_HALF_OPEN } bt_breaker_state_t;

typedef struct bt_breaker {
  uint32_t threshold;      /* >= 1 consecutive counted failures open the circuit */
  uint32_t half_open_max;  /* >= 1 concurrent probes while half-open */
  uint32_t probes;         /* probes in flight */
  uint8_t has_counts;      /* a predicate decides which failures count */
  uint8_t fleet_probe;     /* the backend grants probes (one lease, shared by every breaker
                            * and process on it): a half-open call also needs that lease */
  int64_t recovery_ms;     /* >= 0: how long the circuit stays open before probing */
} bt_breaker_t;

/* Checks and stores the configuration. Returns 0 or BT_EINVAL. */
int bt__breaker_init(bt_breaker_t *b, uint32_t threshold, int64_t recovery_ms,
                    uint32_t half_open_max, int has_counts);
/* Fleet probes on (the backend grants a probe lease) or off (the default). */
void bt__breaker_fleet_probe(bt_breaker_t *b, int on);
/* The state the backend's values mean at time `now`: open while `now` is within
 * recovery_ms of `open_at`, half-open after that; with no open time, half-open when the
 * count has reached the threshold (the seed's encoding of a half-open circuit), else
 * closed. */
bt_breaker_state_t bt__breaker_state(const bt_breaker_t *b, int has_open, int64_t open_at,
                                uint32_t failures, int64_t now);

/* What a guarded call (or a state query) does next. Backend steps are reported with
 * bt__breaker_report(); the value is noted per step. */
typedef enum {
  BT_BREAKER_GET_OPEN_AT = 0,  /* report has + the open time */
  BT_BREAKER_GET_FAILURES,     /* report the count */
  BT_BREAKER_RUN,              /* run the call; report a bt_breaker_outcome_t */
  BT_BREAKER_COUNTS,           /* ask the predicate; report 1 if the failure counts */
  BT_BREAKER_INCREMENT,        /* increment the count; report the new count */
  BT_BREAKER_SET_OPEN_AT,      /* record the current time as the open time; report nothing */
  BT_BREAKER_RESET,            /* reset the count; report nothing */
  BT_BREAKER_CLEAR_OPEN_AT,    /* clear the open time; report nothing */
  BT_BREAKER_ACQUIRE_PROBE,    /* (fleet probes) take the backend's probe lease for the
                                * opening at open_at; report has = 1 when it was granted */
  BT_BREAKER_RELEASE_PROBE,    /* (fleet probes) give the probe lease back; report nothing */
  BT_BREAKER_REJECT,           /* end: fast-fail, the circuit is open (or the probes are busy) */
  BT_BREAKER_DONE              /* end: the call's outcome (or the state) is the result */
} bt_breaker_step_t;

typedef enum { BT_BREAKER_OK = 0, BT_BREAKER_FAILED, BT_BREAKER_ABANDONED } bt_breaker_outcome_t;

typedef struct bt_breaker_call {
  uint8_t step;      /* bt_breaker_step_t */
  uint8_t state;     /* bt_breaker_state_t seen when the call began */
  uint8_t probe;     /* holds one of the breaker's probe slots */
  uint8_t peek;      /* a state query: decide the state, admit nothing */
  uint8_t has_open;
  uint8_t lease;     /* holds the backend's probe lease (fleet probes): released before DONE */
  uint32_t failures;
  int64_t open_at, now;
} bt_breaker_call_t;

/* Begins a call (peek 0) or a state query (peek 1) at time `now`. */
bt_breaker_step_t bt__breaker_begin(bt_breaker_t *b, bt_breaker_call_t *c, int64_t now, int peek);
/* Reports the result of the current step and returns the next one. */
bt_breaker_step_t bt__breaker_report(bt_breaker_t *b, bt_breaker_call_t *c, int has, int64_t value);
/* Gives back the call's probe slot, if it holds one. Idempotent; called by the cursor at
 * REJECT/DONE, and by the embedder when a call is torn down midway (an error, a cancel). */
void bt__breaker_end(bt_breaker_t *b, bt_breaker_call_t *c);

/* ---- the in-memory backend: per service, a count and an optional open time ---------- */

typedef struct bt_breaker_mem bt_breaker_mem_t;

/* Returns NULL on allocation failure. bt__breaker_mem_free() accepts NULL. */
bt_breaker_mem_t *bt__breaker_mem_new(void);
void bt__breaker_mem_free(bt_breaker_mem_t *m);
/* Services are `len` bytes (copied). Writers that create a service's record return
 * BT_ENOMEM when they cannot; the increment returns the new count (saturating). */
int bt__breaker_mem_increment(bt_breaker_mem_t *m, const char *svc, size_t len, uint32_t *count);
void bt__breaker_mem_reset(bt_breaker_mem_t *m, const char *svc, size_t len);
uint32_t bt__breaker_mem_failures(bt_breaker_mem_t *m, const char *svc, size_t len);
int bt__breaker_mem_set_open_at(bt_breaker_mem_t *m, const char *svc, size_t len, int64_t at);
void bt__breaker_mem_clear_open_at(bt_breaker_mem_t *m, const char *svc, size_t len);
/* 1 and *at when the service has an open time, else 0. */
int bt__breaker_mem_open_at(bt_breaker_mem_t *m, const char *svc, size_t len, int64_t *at);

#endif
