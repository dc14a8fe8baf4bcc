/*
 * dedup.h — a table of request keys, each pending, in flight or cached, with TTL expiry
 * that never sweeps the whole table (see dedup.c). Lua-agnostic: values belong to the
 * embedder, which is told through a callback when a cached key expires.
 */
#ifndef BATON_DEDUP_H
#define BATON_DEDUP_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  BT_DEDUP_ABSENT = 0,  /* unknown, or expired */
  BT_DEDUP_PENDING,     /* registered by a check; the caller does the work; expires */
  BT_DEDUP_FLIGHT,      /* a shared execution runs for it; never expires while it runs */
  BT_DEDUP_CACHED       /* completed; expires */
} bt_dedup_state_t;

/* Most expired entries removed per call, on top of the key the call looks at. */
#define BT_DEDUP_SWEEP 8

typedef struct bt_dedup bt_dedup_t;

/* Called for each entry that expires, with its key (borrowed for the call). It must not
 * raise or call back into the table. */
typedef void (*bt_dedup_drop_cb)(void *ud, const char *key, size_t len);

/* Returns NULL on allocation failure; bt__dedup_free() accepts NULL. */
bt_dedup_t *bt__dedup_new(uint64_t ttl_ms);
void bt__dedup_free(bt_dedup_t *d);
uint64_t bt__dedup_ttl(const bt_dedup_t *d);
/* Entries held, expired ones not yet removed included. */
size_t bt__dedup_size(const bt_dedup_t *d);

/* Removes at most `max` entries whose time has come, oldest first; returns how many. */
size_t bt__dedup_expire(bt_dedup_t *d, int64_t now, size_t max, bt_dedup_drop_cb drop,
                       void *ud);
/* The key's state at `now`; an expired entry is removed first (through `drop`). For a
 * flight, *gen (when not NULL) receives its generation. Keys are `len` bytes. */
bt_dedup_state_t bt__dedup_get(bt_dedup_t *d, const char *key, size_t len, int64_t now,
                              uint64_t *gen, bt_dedup_drop_cb drop, void *ud);
/* Marks an absent key pending until now + ttl (the table's, bt__dedup_ttl(d), or one of
 * its own). Returns 0 or BT_ENOMEM. */
int bt__dedup_register(bt_dedup_t *d, const char *key, size_t len, int64_t now, uint64_t ttl);
/* Marks an absent key in flight; returns the flight's generation (never 0), or 0 when out
 * of memory. */
uint64_t bt__dedup_begin_flight(bt_dedup_t *d, const char *key, size_t len);
/* Caches the key until now + ttl, whatever its state was (a flight is detached: its end
 * will change nothing). Returns the previous state, or BT_ENOMEM (negative). */
int bt__dedup_complete(bt_dedup_t *d, const char *key, size_t len, int64_t now);
/* Forgets a pending or in-flight key; a cached one stays. Returns the previous state. */
bt_dedup_state_t bt__dedup_fail(bt_dedup_t *d, const char *key, size_t len);
/* The end of flight `gen`: if the key is still that flight, it becomes cached until
 * now + ttl (ok) or is forgotten (!ok), and 1 is returned; otherwise nothing happens (0). */
int bt__dedup_settle(bt_dedup_t *d, const char *key, size_t len, uint64_t gen, int ok,
                    int64_t now);
/* A caller starts / stops waiting for flight `gen`. bt__dedup_leave() returns 1 when it was
 * the last waiter of a flight still running: the key is forgotten and the caller must
 * abort the execution, which nobody wants any more. Both are no-ops (0) for a flight that
 * has ended. */
void bt__dedup_join(bt_dedup_t *d, const char *key, size_t len, uint64_t gen);
int bt__dedup_leave(bt_dedup_t *d, const char *key, size_t len, uint64_t gen);

#endif
