/*
 * gcra.h — the generic cell rate algorithm (GCRA) on one theoretical arrival time: pure
 * arithmetic, no clock, no allocation (see gcra.c). Lua-agnostic; src/lua/lratelimit.c
 * binds it, and lua/baton/store.lua's memory store does the same arithmetic in Lua.
 *
 * Time is whatever integer unit the caller passes `now` in (the binding uses nanoseconds
 * of the monotonic clock); every result is in that unit. The struct is storage the caller
 * embeds; its fields are read-only outside gcra.c.
 */
#ifndef BATON_GCRA_H
#define BATON_GCRA_H

#include <stdint.h>

typedef struct bt_gcra {
  double interval;   /* emission interval: time a unit of cost takes up (per / rate) */
  int64_t tolerance; /* burst * interval: how far ahead of now the TAT may run */
  int64_t tat;       /* theoretical arrival time: when the last unit taken is "paid" */
} bt_gcra_t;

/* `rate` units per `per` time units, at most `burst` units at once (a burst of 1 spaces
 * every unit by `per / rate`). Returns 0, or BT_EINVAL unless rate > 0, per > 0, burst >= 1
 * and the interval and tolerance fit in 2^62 time units. The TAT starts at 0 (everything
 * free at any now >= 0). */
int bt__gcra_init(bt_gcra_t *g, double rate, double per, double burst);
/* The time cost units take up (cost * interval, rounded to the nearest unit). */
int64_t bt__gcra_cost(const bt_gcra_t *g, double cost);
/* How long from `now` until `cost` units fit: 0 when they fit now, -1 when they never can
 * (cost > burst). Changes nothing. */
int64_t bt__gcra_wait(const bt_gcra_t *g, int64_t now, double cost);
/* Takes `cost` units at `now` if they fit (0: the TAT advanced), else changes nothing and
 * returns what bt__gcra_wait would (> 0, or -1). */
int64_t bt__gcra_take(bt_gcra_t *g, int64_t now, double cost);
/* The same for a caller that has waited since `since` (<= now): if the cost fits now, it
 * is taken as of the moment it first fitted after `since`, not as of now, so a queue
 * served late by a coarse timer does not drift behind the rate (the TAT advances by
 * exactly the cost whenever it lay ahead of that moment). */
int64_t bt__gcra_take_since(bt_gcra_t *g, int64_t now, int64_t since, double cost);
/* Moves the TAT by `delta` units of cost whether or not they fit: positive to charge what
 * an estimate missed, negative to give back what it over-charged (never back past now:
 * giving back cannot make more than a full burst free). */
void bt__gcra_adjust(bt_gcra_t *g, int64_t now, double delta);
/* Units that fit at `now` (floor; 0 when even one does not). */
double bt__gcra_available(const bt_gcra_t *g, int64_t now);

#endif
