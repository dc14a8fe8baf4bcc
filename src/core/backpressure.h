/*
 * backpressure.h — a load-shedding guard: a depth counter with a hard capacity and an
 * optional soft limit (see backpressure.c). Lua-agnostic; src/lua/lbackpressure.c binds it.
 *
 * The struct is storage the caller embeds (no allocation); its fields are read-only
 * outside backpressure.c.
 */
#ifndef BATON_BACKPRESSURE_H
#define BATON_BACKPRESSURE_H

#include <stddef.h>

typedef struct bt_backpressure {
  size_t capacity;   /* hard capacity, >= 1 */
  size_t soft;       /* soft limit, 1 <= soft < capacity, or 0 for none */
  size_t depth;      /* slots held now, never above capacity */
  int over_soft;     /* the soft limit was reported since depth last fell below it */
} bt_backpressure_t;

/* Initialises `bp`. Returns 0, or BT_EINVAL when capacity is 0 or soft >= capacity
 * (soft 0 means no soft limit). */
int bt__backpressure_init(bt_backpressure_t *bp, size_t capacity, size_t soft);
/* Takes a slot: 0, or BT_EBUSY when depth is at capacity (shed; nothing changes).
 * *crossed (may be NULL) is set to 1 when this acquire took depth up to the soft limit
 * from below — once per crossing — else 0. */
int bt__backpressure_try_acquire(bt_backpressure_t *bp, int *crossed);
/* Gives a slot back; a no-op when depth is already 0. */
void bt__backpressure_release(bt_backpressure_t *bp);
/* depth / soft, or 0.0 without a soft limit; above 1.0 when over the soft limit. */
double bt__backpressure_soft_ratio(const bt_backpressure_t *bp);

#endif
