/* Core per-key budgets: a key counts in-flight uses up to its cap, exists only while its
 * count is above zero, is compared by its bytes (NUL included), and is visited with its
 * count; freeing the budget drops the keys still held. No loop: nothing here waits. */
#include "test.h"

typedef struct { char keys[8][8]; size_t lens[8], counts[8]; int n; } visit;

static void on_key(void *ud, const char *key, size_t len, size_t n) {
  visit *v = ud;
  CHECK(v->n < 8 && len < 8);
  memcpy(v->keys[v->n], key, len);
  v->lens[v->n] = len;
  v->counts[v->n++] = n;
}

static void test_caps_and_counts(void) {
  bt_budget_t *b = bt_budget_new(2);
  CHECK(b != NULL && bt_budget_default_cap(b) == 2);
  int err = 0;
  bt_budget_key_t *a1 = bt_budget_try_acquire(b, "a", 1, 2, &err);
  bt_budget_key_t *a2 = bt_budget_try_acquire(b, "a", 1, 2, &err);
  CHECK(a1 && a2 && a1 == a2);  /* one entry per key */
  CHECK(bt_budget_try_acquire(b, "a", 1, 2, &err) == NULL && err == BT_EBUSY);
  CHECK(bt_budget_try_acquire(b, "a", 1, 3, &err) == a1);  /* the cap is the caller's */
  CHECK(bt_budget_try_acquire(b, "z", 1, 0, &err) == NULL && err == BT_EBUSY);
  CHECK(bt_budget_try_acquire(b, "z", 1, 0, NULL) == NULL);  /* err is optional */
  CHECK(bt_budget_count(b, "a", 1) == 3 && bt_budget_count(b, "z", 1) == 0);
  /* Keys are bytes: "k\0x" and "k\0y" differ, "k" is a third. */
  bt_budget_key_t *kx = bt_budget_try_acquire(b, "k\0x", 3, 1, &err);
  bt_budget_key_t *ky = bt_budget_try_acquire(b, "k\0y", 3, 1, &err);
  CHECK(kx && ky && kx != ky && bt_budget_count(b, "k", 1) == 0);
  visit v = {0};
  bt_budget_foreach(b, on_key, &v);
  CHECK(v.n == 3);
  size_t total = 0;
  for (int i = 0; i < v.n; i++) {
    total += v.counts[i];
    if (v.lens[i] == 1) CHECK(v.keys[i][0] == 'a' && v.counts[i] == 3);
    else CHECK(v.lens[i] == 3 && v.keys[i][1] == '\0' && v.counts[i] == 1);
  }
  CHECK(total == 5);
  for (int i = 0; i < 3; i++) bt_budget_release(b, a1);
  CHECK(bt_budget_count(b, "a", 1) == 0);  /* gone with its last release */
  bt_budget_release(b, kx);
  v.n = 0;
  bt_budget_foreach(b, on_key, &v);
  CHECK(v.n == 1 && v.lens[0] == 3 && v.keys[0][2] == 'y');
  bt_budget_free(b);  /* "k\0y" is still held: dropped */
  bt_budget_free(NULL);
}

int main(void) {
  RUN(test_caps_and_counts);
  return 0;
}
