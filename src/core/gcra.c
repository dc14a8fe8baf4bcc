/*
 * gcra.c — the generic cell rate algorithm, as redis-cell and go-redis/redis_rate use it
 * for rate limits: the state is one number, the theoretical arrival time (TAT), the time at
 * which everything taken so far would have been paid for at the steady rate. Taking `cost`
 * units moves it forward by cost * interval (starting from now when it lies in the past);
 * the take is allowed when the new TAT is no further than `tolerance` (= burst * interval)
 * ahead of now. So a burst of `burst` units may go at once, after which units come back
 * one every interval; and the time until a refused take fits is exactly how far the TAT
 * would overshoot.
 *
 * Invariants: tat - now <= tolerance after every successful take (adjust may push it
 * further: a charge for what an estimate missed is owed whatever it costs); the TAT never
 * moves back past now. Pure arithmetic: the caller supplies the time, so the C test can
 * drive it by hand and a store can run the same steps on its own clock.
 */
#include "gcra.h"
#include "internal.h"

#define GCRA_MAX 4.6e18  /* below 2^62: sums of two values stay inside int64_t */

/* Rounded to the nearest integer (no libm: the core links none); |x| < GCRA_MAX. */
static int64_t round_i64(double x) { return (int64_t)(x >= 0 ? x + 0.5 : x - 0.5); }

int bt__gcra_init(bt_gcra_t *g, double rate, double per, double burst) {
  if (!(rate > 0) || !(per > 0) || !(burst >= 1)) return BT_EINVAL;
  double interval = per / rate, tolerance = burst * interval;
  if (!(interval < GCRA_MAX) || !(tolerance < GCRA_MAX)) return BT_EINVAL;
  g->interval = interval;
  g->tolerance = round_i64(tolerance);
  g->tat = 0;
  return 0;
}

int64_t bt__gcra_cost(const bt_gcra_t *g, double cost) {
  double t = cost * g->interval;
  if (!(t < GCRA_MAX)) return INT64_MAX / 2;  /* never fits; no overflow downstream */
  if (t < -GCRA_MAX) return -(INT64_MAX / 2);
  return round_i64(t);
}

int64_t bt__gcra_wait(const bt_gcra_t *g, int64_t now, double cost) {
  int64_t inc = bt__gcra_cost(g, cost);
  if (inc > g->tolerance) return -1;
  int64_t tat = g->tat > now ? g->tat : now;
  int64_t allow_at = tat + inc - g->tolerance;
  return allow_at > now ? allow_at - now : 0;
}

int64_t bt__gcra_take(bt_gcra_t *g, int64_t now, double cost) {
  int64_t wait = bt__gcra_wait(g, now, cost);
  if (wait != 0) return wait;
  g->tat = (g->tat > now ? g->tat : now) + bt__gcra_cost(g, cost);
  return 0;
}

int64_t bt__gcra_take_since(bt_gcra_t *g, int64_t now, int64_t since, double cost) {
  int64_t wait = bt__gcra_wait(g, now, cost);
  if (wait != 0) return wait;
  int64_t at = g->tat + bt__gcra_cost(g, cost) - g->tolerance;  /* when it first fitted */
  if (at < since) at = since;
  if (at > now) at = now;
  g->tat = (g->tat > at ? g->tat : at) + bt__gcra_cost(g, cost);
  return 0;
}

void bt__gcra_adjust(bt_gcra_t *g, int64_t now, double delta) {
  int64_t d = bt__gcra_cost(g, delta);
  if (d >= 0) {  /* charges pile up to the far future, never past it (they wrapped) */
    int64_t base = g->tat > now ? g->tat : now;
    g->tat = d > INT64_MAX / 2 - base ? INT64_MAX / 2 : base + d;
  } else {
    int64_t floor_ = g->tat < now ? g->tat : now;
    g->tat = g->tat + d < floor_ ? floor_ : g->tat + d;
  }
}

double bt__gcra_available(const bt_gcra_t *g, int64_t now) {
  int64_t tat = g->tat > now ? g->tat : now;
  double free_ = (double)(now + g->tolerance - tat);
  return free_ > 0 ? (double)(int64_t)(free_ / g->interval + 1e-9) : 0;
}
