/*
 * retry.c — exponential backoff with jitter, and the decisions of one retried call.
 *
 * The delay before retry n (after the n-th failed attempt) is base * 2^(n-1), capped at
 * max_delay_ms. It is computed without ever forming a product that could overflow: the
 * shift is compared with the cap first, so any attempt number, up to UINT64_MAX, is safe.
 * Jitter follows AWS's "Exponential Backoff And Jitter": full draws from [0, d], equal
 * from [d/2, d]. The generator is splitmix64, one state per policy: no global state, and
 * good enough for spreading retries (it is not for secrets).
 *
 * A call's cursor: CALL -> (failed) -> ASK? -> WAIT -> CALL ... until an attempt succeeds
 * (the embedder stops asking) or GIVE_UP: the attempts are used up, or the predicate said
 * no. Invariant: 1 <= attempt <= max_attempts.
 */
#include "retry.h"
#include "baton.h"

int bt__retry_init(bt_retry_t *r, uint32_t max_attempts, uint64_t base_ms, uint64_t max_delay_ms,
                  bt_retry_jitter_t jitter, uint64_t seed) {
  if (max_attempts == 0 || base_ms == 0 || max_delay_ms < base_ms || jitter > BT_RETRY_JITTER_EQUAL)
    return BT_EINVAL;
  r->max_attempts = max_attempts;
  r->base_ms = base_ms;
  r->max_delay_ms = max_delay_ms;
  r->jitter = (uint8_t)jitter;
  r->rng = seed;
  return 0;
}

uint64_t bt__retry_backoff(const bt_retry_t *r, uint64_t attempt) {
  uint64_t shift = attempt > 1 ? attempt - 1 : 0;
  if (shift >= 64 || r->base_ms > (r->max_delay_ms >> shift)) return r->max_delay_ms;
  return r->base_ms << shift;  /* <= max_delay_ms, so it did not overflow */
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

/* Uniform in [0, n]. The modulo bias is about n / 2^64: nothing for any real delay. */
static uint64_t uniform(bt_retry_t *r, uint64_t n) {
  uint64_t x = splitmix64(&r->rng);
  return n == UINT64_MAX ? x : x % (n + 1);
}

uint64_t bt__retry_delay(bt_retry_t *r, uint64_t attempt) {
  uint64_t d = bt__retry_backoff(r, attempt);
  switch (r->jitter) {
  case BT_RETRY_JITTER_FULL: return uniform(r, d);
  case BT_RETRY_JITTER_EQUAL: return (d - d / 2) + uniform(r, d / 2);
  default: return d;
  }
}

bt_retry_step_t bt__retry_begin(bt_retry_run_t *c, int has_predicate) {
  c->attempt = 1;
  c->ask = has_predicate != 0;
  c->retry_after = -1;
  c->delay = 0;
  return BT_RETRY_CALL;
}

static bt_retry_step_t plan_wait(bt_retry_t *r, bt_retry_run_t *c) {
  if (c->retry_after >= 0)
    c->delay = (uint64_t)c->retry_after < r->max_delay_ms ? (uint64_t)c->retry_after
                                                          : r->max_delay_ms;
  else
    c->delay = bt__retry_delay(r, c->attempt);
  return BT_RETRY_WAIT;
}

bt_retry_step_t bt__retry_failed(bt_retry_t *r, bt_retry_run_t *c, int64_t retry_after) {
  c->retry_after = retry_after;
  if (c->attempt >= r->max_attempts) return BT_RETRY_GIVE_UP;
  return c->ask ? BT_RETRY_ASK : plan_wait(r, c);
}

bt_retry_step_t bt__retry_answer(bt_retry_t *r, bt_retry_run_t *c, int retry) {
  return retry ? plan_wait(r, c) : BT_RETRY_GIVE_UP;
}

bt_retry_step_t bt__retry_waited(bt_retry_run_t *c) {
  c->attempt++;
  return BT_RETRY_CALL;
}
