/*
 * limiter.h — the model limiter of the core (see limiter.c for its invariants): per-model
 * concurrency caps under one global cap, a fallback search for a model with a free slot,
 * and a FIFO queue for the primary model. Lua-agnostic; src/lua/llimiter.c binds it.
 *
 * A key is a `provider/model` pair with a cap, a cost tier and a tool flag, fixed when the
 * key is added. A grant takes one slot of its key and one of the global cap together, and
 * bt__limiter_release() gives both back. The structs below are read-only outside limiter.c.
 */
#ifndef BATON_LIMITER_H
#define BATON_LIMITER_H

#include <uthash.h>

#include "baton.h"

typedef enum { BT_LIMITER_TIER_PREMIUM = 0, BT_LIMITER_TIER_STANDARD, BT_LIMITER_TIER_CHEAP } bt_limiter_tier_t;

/* Which step of the search granted a slot; also indexes the names "primary", "chain", ... */
typedef enum {
  BT_LIMITER_VIA_PRIMARY = 0, BT_LIMITER_VIA_CHAIN, BT_LIMITER_VIA_CAPABILITY, BT_LIMITER_VIA_CLI, BT_LIMITER_VIA_QUEUE
} bt_limiter_via_t;

typedef struct bt_limiter bt_limiter_t;
typedef struct bt_limiter_key bt_limiter_key_t;
typedef struct bt_limiter_waiter bt_limiter_waiter_t;

struct bt_limiter_key {
  UT_hash_handle hh;
  size_t cap, in_use, nwaiting;
  uint8_t tier;            /* bt_limiter_tier_t */
  uint8_t tools;           /* the model can use tools */
  size_t len;
  char name[];             /* "provider/model", NUL-terminated */
};

/* status 0: granted (both slots are the waiter's now); BT_ECLOSED: the limiter was freed. */
typedef void (*bt_limiter_cb)(bt_limiter_waiter_t *w, int status);
struct bt_limiter_waiter {
  TAILQ_ENTRY(bt_limiter_waiter) link;
  bt_limiter_t *lim;
  bt_limiter_key_t *key;       /* non-NULL while queued */
  bt_limiter_cb cb;
};

typedef struct bt_limiter_cand {
  bt_limiter_key_t *key;
  int cli;                 /* a CLI provider: tried only in the CLI step */
} bt_limiter_cand;

struct bt_limiter {
  bt_limiter_key_t *keys;      /* uthash, insertion order */
  size_t cap, in_use, nwaiting;  /* the global cap (SIZE_MAX: none) and its counts */
  TAILQ_HEAD(, bt_limiter_waiter) waiters;  /* every queued waiter, oldest first */
  bt_limiter_cand *cands;      /* provider models in configuration order */
  size_t ncands, cands_cap;
};

/* Returns NULL on allocation failure. `max_agents` SIZE_MAX means no global cap. */
bt_limiter_t *bt__limiter_new(size_t max_agents);
/* Fails queued waiters with BT_ECLOSED, then frees the limiter and its keys. Accepts NULL. */
void bt__limiter_free(bt_limiter_t *l);
/* The key named `name` (len bytes), or NULL if it was never added. Borrowed: keys live as
 * long as the limiter. */
bt_limiter_key_t *bt__limiter_key(bt_limiter_t *l, const char *name, size_t len);
/* Adds a key (the name is copied), or returns the existing one unchanged. NULL: no memory. */
bt_limiter_key_t *bt__limiter_add_key(bt_limiter_t *l, const char *name, size_t len, size_t cap,
                                 bt_limiter_tier_t tier, int tools);
/* Appends a provider model to the candidates of the capability (cli 0) or CLI (cli 1) step.
 * Returns 0 or BT_ENOMEM. */
int bt__limiter_add_candidate(bt_limiter_t *l, bt_limiter_key_t *k, int cli);
/* The fallback search, without waiting: `primary`, then `chain` (n keys, borrowed for the
 * call; the primary is skipped), then capability matches, then CLI providers. Returns the
 * key granted (both slots taken) and sets *via, or NULL when every candidate is full. */
bt_limiter_key_t *bt__limiter_try(bt_limiter_t *l, bt_limiter_key_t *primary, bt_limiter_key_t *const *chain,
                             size_t n, bt_limiter_via_t *via);
/* Takes a slot of `k` now (returns 1) or queues `w` (caller-owned, valid until its callback
 * runs or it is cancelled; returns 0). BT_EBUSY: k's cap is 0, nothing could ever grant it. */
int bt__limiter_wait(bt_limiter_t *l, bt_limiter_key_t *k, bt_limiter_waiter_t *w, bt_limiter_cb cb);
/* Unlinks a queued waiter without calling its callback; a no-op if it is not queued. */
void bt__limiter_cancel(bt_limiter_waiter_t *w);
/* Gives back the key's slot and the global one, and grants queued waiters that now fit. */
void bt__limiter_release(bt_limiter_t *l, bt_limiter_key_t *k);
/* Iterates keys in the order they were added; `k` NULL starts. */
bt_limiter_key_t *bt__limiter_next(bt_limiter_t *l, bt_limiter_key_t *k);

#endif
