/*
 * retry.h — a retry policy (exponential backoff with optional jitter) and the cursor of one
 * retried call (see retry.c). Lua-agnostic: the embedder runs the attempts and the waits,
 * tells the cursor how each went, and asks it what to do next, so an attempt or a wait may
 * suspend (a coroutine yield, a callback) between the two calls.
 */
#ifndef BATON_RETRY_H
#define BATON_RETRY_H

#include <stdint.h>

typedef enum { BT_RETRY_JITTER_NONE = 0, BT_RETRY_JITTER_FULL, BT_RETRY_JITTER_EQUAL } bt_retry_jitter_t;

typedef struct bt_retry {
  uint32_t max_attempts;  /* >= 1, the first attempt included */
  uint8_t jitter;         /* bt_retry_jitter_t */
  uint64_t base_ms;       /* >= 1 */
  uint64_t max_delay_ms;  /* >= base_ms */
  uint64_t rng;           /* splitmix64 state */
} bt_retry_t;

/* Checks and stores a policy in caller-owned storage. Returns 0, or BT_EINVAL when
 * max_attempts or base_ms is 0, max_delay_ms < base_ms, or jitter is not a bt_retry_jitter_t. */
int bt__retry_init(bt_retry_t *r, uint32_t max_attempts, uint64_t base_ms, uint64_t max_delay_ms,
                  bt_retry_jitter_t jitter, uint64_t seed);
/* base * 2^(attempt-1), capped at max_delay_ms, for any attempt (0 counts as 1); never
 * overflows. */
uint64_t bt__retry_backoff(const bt_retry_t *r, uint64_t attempt);
/* The backoff with the policy's jitter (AWS's definitions): none: d; full: uniform in
 * [0, d]; equal: d/2 + uniform in [0, d/2]. Advances the generator. */
uint64_t bt__retry_delay(bt_retry_t *r, uint64_t attempt);

/* What a retried call does next. */
typedef enum {
  BT_RETRY_CALL = 0,  /* run attempt number `attempt` */
  BT_RETRY_ASK,       /* it failed: ask the predicate whether this error is worth a retry */
  BT_RETRY_WAIT,      /* wait `delay` ms, then report bt__retry_waited() */
  BT_RETRY_GIVE_UP    /* stop: the last error and `attempt` are the result */
} bt_retry_step_t;

typedef struct bt_retry_run {
  uint32_t attempt;       /* attempts made or being made (1-based) */
  uint8_t ask;            /* a predicate is to be asked about each failure */
  int64_t retry_after;    /* the failed attempt's own delay (ms), or -1 */
  uint64_t delay;         /* valid at BT_RETRY_WAIT */
} bt_retry_run_t;

/* Begins a call; the first step is BT_RETRY_CALL. */
bt_retry_step_t bt__retry_begin(bt_retry_run_t *c, int has_predicate);
/* The attempt failed. `retry_after` >= 0 is a delay the failure asked for (an HTTP 429's
 * Retry-After), which replaces the backoff (capped at max_delay_ms, no jitter); -1: none. */
bt_retry_step_t bt__retry_failed(bt_retry_t *r, bt_retry_run_t *c, int64_t retry_after);
/* The predicate answered (step BT_RETRY_ASK). */
bt_retry_step_t bt__retry_answer(bt_retry_t *r, bt_retry_run_t *c, int retry);
/* The wait is over; the next attempt runs. */
bt_retry_step_t bt__retry_waited(bt_retry_run_t *c);

#endif
