/*
 * limiter.c — the model limiter: per-model caps under one global cap (max_agents), a
 * fallback search, and one FIFO queue of waiters.
 *
 * A grant takes two slots at once, one of its key and one of the global cap, and a release
 * gives both back: a holder keeps its global slot for as long as it holds the key, on the
 * search path and on the queue path alike, so max_agents bounds concurrent holders.
 *
 * The search (bt__limiter_try) tries, in order: the primary; the explicit chain, skipping the
 * primary; capability matches among the non-CLI provider models in configuration order (same
 * cost tier or one tier cheaper; a tool-using primary needs a tool-using model); the CLI
 * providers (a tool-using primary needs a tool-using one). Nothing is taken when the global
 * cap is full.
 *
 * Invariants:
 *  - in_use <= cap, for every key and for the limiter; nwaiting counts queued waiters (per
 *    key, and all of them on the limiter).
 *  - Between calls, no queued waiter could be granted: each is blocked by a full key or by a
 *    full global cap. Every release runs the grant loop, which gives the freed slots to the
 *    oldest waiter that fits, skipping waiters whose key is full (one saturated model does
 *    not hold up the others; per key, the order is FIFO). Two consequences: a try that
 *    succeeds never takes a slot a waiter could have had, so fairness needs no extra check;
 *    and a waiter leaving the queue frees nothing, so cancel only unlinks (unlike sem.c,
 *    where a large request at the head can hold smaller ones back, every request here is one
 *    slot of each).
 *  - Keys live as long as the limiter: their number is bounded by the models a policy
 *    names, and a permit may point at its key until it is released.
 * Waiters are caller-owned records: waiting never allocates.
 */
#include <stdlib.h>
#include <string.h>

#include "limiter.h"

bt_limiter_t *bt__limiter_new(size_t max_agents) {
  bt_limiter_t *l = calloc(1, sizeof *l);
  if (l == NULL) return NULL;
  l->cap = max_agents;
  TAILQ_INIT(&l->waiters);
  return l;
}

static void unlink_waiter(bt_limiter_t *l, bt_limiter_waiter_t *w) {
  TAILQ_REMOVE(&l->waiters, w, link);
  l->nwaiting--;
  w->key->nwaiting--;
  w->key = NULL;
}

void bt__limiter_free(bt_limiter_t *l) {
  if (l == NULL) return;
  bt_limiter_waiter_t *w;
  while ((w = TAILQ_FIRST(&l->waiters)) != NULL) {
    unlink_waiter(l, w);
    w->cb(w, BT_ECLOSED);
  }
  bt_limiter_key_t *k, *tmp;
  HASH_ITER(hh, l->keys, k, tmp) {
    HASH_DEL(l->keys, k);
    free(k);
  }
  free(l->cands);
  free(l);
}

bt_limiter_key_t *bt__limiter_key(bt_limiter_t *l, const char *name, size_t len) {
  bt_limiter_key_t *k;
  HASH_FIND(hh, l->keys, name, len, k);
  return k;
}

bt_limiter_key_t *bt__limiter_add_key(bt_limiter_t *l, const char *name, size_t len, size_t cap,
                                 bt_limiter_tier_t tier, int tools) {
  bt_limiter_key_t *k = bt__limiter_key(l, name, len);
  if (k != NULL) return k;
  k = calloc(1, sizeof *k + len + 1);
  if (k == NULL) return NULL;
  k->cap = cap;
  k->tier = (uint8_t)tier;
  k->tools = tools != 0;
  k->len = len;
  memcpy(k->name, name, len);
  k->name[len] = '\0';
  HASH_ADD(hh, l->keys, name[0], len, k);
  return k;
}

int bt__limiter_add_candidate(bt_limiter_t *l, bt_limiter_key_t *k, int cli) {
  if (l->ncands == l->cands_cap) {
    size_t cap = l->cands_cap ? l->cands_cap * 2 : 8;
    bt_limiter_cand *c = realloc(l->cands, cap * sizeof *c);
    if (c == NULL) return BT_ENOMEM;
    l->cands = c;
    l->cands_cap = cap;
  }
  l->cands[l->ncands].key = k;
  l->cands[l->ncands].cli = cli != 0;
  l->ncands++;
  return 0;
}

bt_limiter_key_t *bt__limiter_next(bt_limiter_t *l, bt_limiter_key_t *k) {
  return k == NULL ? l->keys : k->hh.next;
}

static int fits(const bt_limiter_t *l, const bt_limiter_key_t *k) {
  return k->in_use < k->cap && l->in_use < l->cap;
}

static void take(bt_limiter_t *l, bt_limiter_key_t *k) {
  k->in_use++;
  l->in_use++;
}

/* Capability match: same tier or one cheaper, and tools kept if the primary uses them. */
static int capable(const bt_limiter_key_t *primary, const bt_limiter_key_t *c) {
  if (c->tier != primary->tier && c->tier != primary->tier + 1) return 0;
  return c->tools || !primary->tools;
}

bt_limiter_key_t *bt__limiter_try(bt_limiter_t *l, bt_limiter_key_t *primary, bt_limiter_key_t *const *chain,
                             size_t n, bt_limiter_via_t *via) {
  bt_limiter_key_t *got = NULL;
  if (l->in_use >= l->cap) return NULL;
  if (fits(l, primary)) {
    *via = BT_LIMITER_VIA_PRIMARY;
    got = primary;
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    if (chain[i] != primary && fits(l, chain[i])) {
      *via = BT_LIMITER_VIA_CHAIN;
      got = chain[i];
      goto done;
    }
  }
  for (int cli = 0; cli <= 1; cli++) {
    for (size_t i = 0; i < l->ncands; i++) {
      bt_limiter_key_t *c = l->cands[i].key;
      if (l->cands[i].cli != cli || c == primary || !fits(l, c)) continue;
      if (cli ? (primary->tools && !c->tools) : !capable(primary, c)) continue;
      *via = cli ? BT_LIMITER_VIA_CLI : BT_LIMITER_VIA_CAPABILITY;
      got = c;
      goto done;
    }
  }
  return NULL;
done:
  take(l, got);
  return got;
}

int bt__limiter_wait(bt_limiter_t *l, bt_limiter_key_t *k, bt_limiter_waiter_t *w, bt_limiter_cb cb) {
  if (k->cap == 0) return BT_EBUSY;
  if (fits(l, k)) {  /* by the invariant, no waiter could have used these slots */
    take(l, k);
    return 1;
  }
  w->lim = l;
  w->key = k;
  w->cb = cb;
  TAILQ_INSERT_TAIL(&l->waiters, w, link);
  l->nwaiting++;
  k->nwaiting++;
  return 0;
}

void bt__limiter_cancel(bt_limiter_waiter_t *w) {
  if (w->key != NULL) unlink_waiter(w->lim, w);
}

/* Grants the oldest waiter that fits, until none does. Re-scans from the head after each
 * callback, which may queue, cancel or release. */
static void grant(bt_limiter_t *l) {
  for (;;) {
    if (l->in_use >= l->cap) return;
    bt_limiter_waiter_t *w;
    TAILQ_FOREACH(w, &l->waiters, link) if (w->key->in_use < w->key->cap) break;
    if (w == NULL) return;
    take(l, w->key);
    unlink_waiter(l, w);
    w->cb(w, 0);
  }
}

void bt__limiter_release(bt_limiter_t *l, bt_limiter_key_t *k) {
  if (k->in_use == 0 || l->in_use == 0) return;  /* a double release must not mint slots */
  k->in_use--;
  l->in_use--;
  grant(l);
}
