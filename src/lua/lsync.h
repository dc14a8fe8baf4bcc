/*
 * lsync.h — shared by the bindings of the synchronisation primitives: lchan.c
 * (baton.channel), lsync.c (baton.watch, baton.notify, baton.shield, and the Lua part:
 * race, first_ok, hedge, interval) and lselect.c (baton.select, which waits on all of them).
 *
 * They speak the error convention through the toolkit (lfail.c): failures of the world
 * return `nil, "baton.x:method: ...", kind [, detail]` (kinds closed, timeout with
 * { timeout_ms = }, busy with { len =, capacity = }); misuse raises
 * "baton.x:method: bad argument #n 'name' (expected ..., got ...)".
 */
#ifndef BATON_LSYNC_H
#define BATON_LSYNC_H

#include "lbaton.h"

#define BT_CHAN_MT   "baton.Channel"
#define BT_WATCH_MT  "baton.Watch"
#define BT_NOTIFY_MT "baton.Notify"

/* A channel userdata: the core channel embedded (a waiter woken by the channel's
 * finalizer still finds closed storage), and a ring of its items in user value 1, a table
 * whose slots head, head+1, ... (mod size, 1-based) hold the c->len queued values. The
 * other slots are nil, or hold a value already taken that refers to nothing (a number, a
 * boolean, a light userdata: lchan.c's ring_take), none above slot `stale`. */
typedef struct lchan {
  bt_chan_t *c;             /* &storage while open, NULL once finalized */
  bt_chan_t storage;
  lua_Integer head, size;
  lua_Integer stale;        /* 0: every slot outside the queue is nil */
  lbt_rt *R;                /* the iterator's shortcut to the runtime */
} lchan;

/* A watch's shared state: a plain userdata (no metatable, nothing to finalize) whose user
 * value 1 is the current value; every handle (baton.watch, w:subscribe) holds it in its own
 * user value 1. */
typedef struct lwatch_state {
  bt_notify_t changed;      /* changed() waiters: woken by every send, and by close */
  uint64_t version;         /* 1 for the initial value, then bumped by each send */
  int closed;
} lwatch_state;

typedef struct lwatch {
  lwatch_state *st;
  uint64_t seen;            /* the newest version this handle has returned */
} lwatch;

typedef struct lnotify {
  bt_notify_t n;
} lnotify;

/* The status a notify_all wake carries (a notify_one wake is 0): a notified task that was
 * cancelled before it ran passes a notify_one on, never a broadcast. */
#define LBT_BROADCAST 1

/* lsync.c: a fiber's waiter callback (wakes its task with the status) and the wait's
 * cancel that unqueues it. */
void lbt_waiter_turn(bt_waiter_t *w, int status);
void lbt_waiter_wait_cancel(bt_wait_t *w);
/* lchan.c: takes the head item of the channel at index ci and pushes it: after
 * bt_chan_can_recv() said 0 (reserved 0), or for a receiver an item was reserved for. */
void lbt_chan_take(lua_State *L, lchan *C, int ci, int reserved);
/* lsync.c: the watch handle at idx takes the newest value as seen and pushes it and its
 * version (2 values). */
int lbt_watch_take(lua_State *L, int idx);

#endif
