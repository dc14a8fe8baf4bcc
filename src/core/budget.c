/*
 * budget.c — per-key in-flight counts with a cap (per host, per model).
 *
 * A key exists only while its count is above zero: the entry is created by the first
 * acquire and freed by the last release, so a long-running process that sees many hosts
 * keeps only the busy ones. The hash table is uthash (a header library), keyed by the
 * key's bytes, which are stored inline after the entry.
 */
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "internal.h"

struct bt_budget_key {
  UT_hash_handle hh;
  size_t count;
  size_t len;
  char key[];
};

const char *bt__budget_key_name(const bt_budget_key_t *k) { return k->key; }

void bt__budget_init(bt_budget_t *b, size_t default_cap) {
  b->keys = NULL;
  b->default_cap = default_cap;
}

void bt__budget_destroy(bt_budget_t *b) {
  bt_budget_key_t *e, *tmp;
  HASH_ITER(hh, b->keys, e, tmp) {
    HASH_DEL(b->keys, e);
    free(e);
  }
}

bt_budget_t *bt_budget_new(size_t default_cap) {
  bt_budget_t *b = malloc(sizeof *b);
  if (b) bt__budget_init(b, default_cap);
  return b;
}

void bt_budget_free(bt_budget_t *b) {
  if (b == NULL) return;
  bt__budget_destroy(b);
  free(b);
}

size_t bt_budget_default_cap(const bt_budget_t *b) { return b->default_cap; }

bt_budget_key_t *bt_budget_try_acquire(bt_budget_t *b, const char *key, size_t len, size_t cap,
                                       int *err) {
  bt_budget_key_t *e;
  HASH_FIND(hh, b->keys, key, len, e);
  if (e == NULL) {
    if (cap == 0) goto busy;
    e = malloc(sizeof *e + len + 1);
    if (e == NULL) {
      if (err) *err = BT_ENOMEM;
      return NULL;
    }
    e->count = 0;
    e->len = len;
    memcpy(e->key, key, len);
    e->key[len] = '\0';
    HASH_ADD(hh, b->keys, key[0], len, e);
  } else if (e->count >= cap) {
    goto busy;
  }
  e->count++;
  return e;
busy:
  if (err) *err = BT_EBUSY;
  return NULL;
}

void bt_budget_release(bt_budget_t *b, bt_budget_key_t *e) {
  if (--e->count == 0) {
    HASH_DEL(b->keys, e);
    free(e);
  }
}

size_t bt_budget_count(bt_budget_t *b, const char *key, size_t len) {
  bt_budget_key_t *e;
  HASH_FIND(hh, b->keys, key, len, e);
  return e ? e->count : 0;
}

void bt_budget_foreach(bt_budget_t *b,
                       void (*fn)(void *ud, const char *key, size_t len, size_t n), void *ud) {
  bt_budget_key_t *e, *tmp;
  HASH_ITER(hh, b->keys, e, tmp) fn(ud, e->key, e->len, e->count);
}
