/*
 * backpressure.c — the load-shedding guard: admit work while fewer than `capacity` slots
 * are held, shed it (never queue it) beyond that, and report once when the depth reaches
 * the soft limit.
 *
 * Invariants: 0 <= depth <= capacity. `over_soft` is set by the acquire that takes depth
 * from soft - 1 to soft and cleared by the release that takes it back below soft, so a
 * guard hovering around its soft limit reports each crossing once, not every acquire.
 * Slots are anonymous: who holds them, and making sure each is released exactly once, is
 * the caller's business (the Lua binding hands out permits).
 */
#include "backpressure.h"
#include "internal.h"

int bt__backpressure_init(bt_backpressure_t *bp, size_t capacity, size_t soft) {
  if (capacity == 0 || soft >= capacity) return BT_EINVAL;
  bp->capacity = capacity;
  bp->soft = soft;
  bp->depth = 0;
  bp->over_soft = 0;
  return 0;
}

int bt__backpressure_try_acquire(bt_backpressure_t *bp, int *crossed) {
  int c = 0;
  if (bp->depth >= bp->capacity) {
    if (crossed) *crossed = 0;
    return BT_EBUSY;
  }
  bp->depth++;
  if (bp->soft != 0 && bp->depth >= bp->soft && !bp->over_soft) {
    bp->over_soft = 1;
    c = 1;
  }
  if (crossed) *crossed = c;
  return 0;
}

void bt__backpressure_release(bt_backpressure_t *bp) {
  if (bp->depth == 0) return;
  bp->depth--;
  if (bp->depth < bp->soft) bp->over_soft = 0;
}

double bt__backpressure_soft_ratio(const bt_backpressure_t *bp) {
  return bp->soft ? (double)bp->depth / (double)bp->soft : 0.0;
}
