/*
 * dedup.c — request de-duplication by key, with TTL expiry in O(1) per call.
 *
 * Entries live in a uthash table keyed by the key's bytes (stored inline). Every entry
 * that can expire (pending and cached ones) is also on one list ordered by expiry time,
 * where it is linked when its expiry time is set: with the table's one TTL and a clock that
 * never goes back that is the tail (O(1)); a pending key registered with a TTL of its own
 * (check(key, ttl_ms)) walks back from the tail past the entries that expire later. So
 * expiring means popping the head while the head is due. Each call pops at most BT_DEDUP_SWEEP entries (bounded work), and the key a call
 * looks at is checked on its own (lazy expiry), so an expired entry is never seen. Seed
 * defect 7 swept the whole table on every check. (A clock that goes back only delays the
 * sweep: the lazy check stays exact.)
 *
 * A flight is an entry some shared execution will settle; it is not on the list (it must
 * not expire while it runs) and carries a generation, so that the end of an execution
 * that was detached (completed or failed by hand, or abandoned by its waiters) cannot
 * touch a newer entry for the same key. Its waiter count decides when it is abandoned.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <uthash.h>

#include "baton.h"
#include "dedup.h"

typedef struct entry {
  UT_hash_handle hh;
  TAILQ_ENTRY(entry) fifo;  /* linked iff state is PENDING or CACHED */
  uint8_t state;            /* bt_dedup_state_t */
  int64_t expires;          /* PENDING, CACHED */
  uint64_t gen;             /* FLIGHT */
  size_t waiters;           /* FLIGHT */
  size_t len;
  char key[];
} entry;

struct bt_dedup {
  entry *map;
  TAILQ_HEAD(entry_list, entry) fifo;
  uint64_t ttl;
  uint64_t gen;
  size_t n;
};

bt_dedup_t *bt__dedup_new(uint64_t ttl_ms) {
  bt_dedup_t *d = calloc(1, sizeof *d);
  if (d == NULL) return NULL;
  TAILQ_INIT(&d->fifo);
  d->ttl = ttl_ms;
  return d;
}

static void drop_entry(bt_dedup_t *d, entry *e) {
  HASH_DEL(d->map, e);
  if (e->state == BT_DEDUP_PENDING || e->state == BT_DEDUP_CACHED) TAILQ_REMOVE(&d->fifo, e, fifo);
  d->n--;
  free(e);
}

void bt__dedup_free(bt_dedup_t *d) {
  if (d == NULL) return;
  entry *e, *tmp;
  HASH_ITER(hh, d->map, e, tmp) drop_entry(d, e);
  free(d);
}

uint64_t bt__dedup_ttl(const bt_dedup_t *d) { return d->ttl; }
size_t bt__dedup_size(const bt_dedup_t *d) { return d->n; }

static entry *find(bt_dedup_t *d, const char *key, size_t len) {
  entry *e;
  HASH_FIND(hh, d->map, key, len, e);
  return e;
}

static int64_t expiry(uint64_t ttl, int64_t now) {
  uint64_t room = now >= 0 ? (uint64_t)(INT64_MAX - now) : (uint64_t)INT64_MAX;
  return ttl > room ? INT64_MAX : now + (int64_t)ttl;
}

/* Gives `e` state `st` (expiring `ttl` ms from now when pending or cached), keeping the
 * list ordered by expiry: linked after the last entry that expires no later. */
static void set_state_ttl(bt_dedup_t *d, entry *e, bt_dedup_state_t st, int64_t now,
                          uint64_t ttl) {
  if (e->state == BT_DEDUP_PENDING || e->state == BT_DEDUP_CACHED) TAILQ_REMOVE(&d->fifo, e, fifo);
  e->state = (uint8_t)st;
  e->waiters = 0;
  if (st == BT_DEDUP_PENDING || st == BT_DEDUP_CACHED) {
    e->expires = expiry(ttl, now);
    entry *p = TAILQ_LAST(&d->fifo, entry_list);
    while (p != NULL && p->expires > e->expires) p = TAILQ_PREV(p, entry_list, fifo);
    if (p == NULL) TAILQ_INSERT_HEAD(&d->fifo, e, fifo);
    else TAILQ_INSERT_AFTER(&d->fifo, p, e, fifo);
  }
}

static void set_state(bt_dedup_t *d, entry *e, bt_dedup_state_t st, int64_t now) {
  set_state_ttl(d, e, st, now, d->ttl);
}

static entry *add(bt_dedup_t *d, const char *key, size_t len) {
  entry *e = calloc(1, sizeof *e + len + 1);
  if (e == NULL) return NULL;
  e->len = len;
  memcpy(e->key, key, len);
  e->state = BT_DEDUP_ABSENT;
  HASH_ADD(hh, d->map, key[0], len, e);
  d->n++;
  return e;
}

static void expire_one(bt_dedup_t *d, entry *e, bt_dedup_drop_cb drop, void *ud) {
  HASH_DEL(d->map, e);
  TAILQ_REMOVE(&d->fifo, e, fifo);
  d->n--;
  if (drop) drop(ud, e->key, e->len);
  free(e);
}

size_t bt__dedup_expire(bt_dedup_t *d, int64_t now, size_t max, bt_dedup_drop_cb drop,
                       void *ud) {
  size_t k = 0;
  entry *e;
  while (k < max && (e = TAILQ_FIRST(&d->fifo)) != NULL && e->expires <= now) {
    expire_one(d, e, drop, ud);
    k++;
  }
  return k;
}

bt_dedup_state_t bt__dedup_get(bt_dedup_t *d, const char *key, size_t len, int64_t now,
                              uint64_t *gen, bt_dedup_drop_cb drop, void *ud) {
  entry *e = find(d, key, len);
  if (e == NULL) return BT_DEDUP_ABSENT;
  if (e->state != BT_DEDUP_FLIGHT && e->expires <= now) {
    expire_one(d, e, drop, ud);
    return BT_DEDUP_ABSENT;
  }
  if (gen) *gen = e->gen;
  return (bt_dedup_state_t)e->state;
}

int bt__dedup_register(bt_dedup_t *d, const char *key, size_t len, int64_t now, uint64_t ttl) {
  entry *e = find(d, key, len);
  if (e == NULL && (e = add(d, key, len)) == NULL) return BT_ENOMEM;
  set_state_ttl(d, e, BT_DEDUP_PENDING, now, ttl);
  return 0;
}

uint64_t bt__dedup_begin_flight(bt_dedup_t *d, const char *key, size_t len) {
  entry *e = find(d, key, len);
  if (e == NULL && (e = add(d, key, len)) == NULL) return 0;
  set_state(d, e, BT_DEDUP_FLIGHT, 0);
  e->gen = ++d->gen;
  return e->gen;
}

int bt__dedup_complete(bt_dedup_t *d, const char *key, size_t len, int64_t now) {
  entry *e = find(d, key, len);
  if (e == NULL && (e = add(d, key, len)) == NULL) return BT_ENOMEM;
  int prev = e->state;
  set_state(d, e, BT_DEDUP_CACHED, now);
  return prev;
}

bt_dedup_state_t bt__dedup_fail(bt_dedup_t *d, const char *key, size_t len) {
  entry *e = find(d, key, len);
  if (e == NULL) return BT_DEDUP_ABSENT;
  bt_dedup_state_t prev = (bt_dedup_state_t)e->state;
  if (prev == BT_DEDUP_PENDING || prev == BT_DEDUP_FLIGHT) drop_entry(d, e);
  return prev;
}

static entry *flight(bt_dedup_t *d, const char *key, size_t len, uint64_t gen) {
  entry *e = find(d, key, len);
  return e != NULL && e->state == BT_DEDUP_FLIGHT && e->gen == gen ? e : NULL;
}

int bt__dedup_settle(bt_dedup_t *d, const char *key, size_t len, uint64_t gen, int ok,
                    int64_t now) {
  entry *e = flight(d, key, len, gen);
  if (e == NULL) return 0;
  if (ok) set_state(d, e, BT_DEDUP_CACHED, now);
  else drop_entry(d, e);
  return 1;
}

void bt__dedup_join(bt_dedup_t *d, const char *key, size_t len, uint64_t gen) {
  entry *e = flight(d, key, len, gen);
  if (e) e->waiters++;
}

int bt__dedup_leave(bt_dedup_t *d, const char *key, size_t len, uint64_t gen) {
  entry *e = flight(d, key, len, gen);
  if (e == NULL || e->waiters == 0 || --e->waiters > 0) return 0;
  drop_entry(d, e);
  return 1;
}
