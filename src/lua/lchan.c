/*
 * lchan.c — baton.channel(capacity): a bounded FIFO of Lua values between tasks, on the
 * core's channel (core/chan.c), which decides who waits and whose turn it is; the values
 * stay in a ring in the userdata's user value, where the collector sees them.
 *
 *   ch:send(v [, ms])  -> true | nil, msg, "closed" | nil, msg, "timeout", { timeout_ms }
 *   ch:recv([ms])      -> v    | nil, msg, "closed" (closed and drained) | ... "timeout"
 *   ch:try_send(v)     -> true | nil, msg, "busy", { len, capacity } | nil, msg, "closed"
 *   ch:try_recv()      -> v    | nil, msg, "busy", { len, capacity } | nil, msg, "closed"
 *   ch:send_many(list [, i [, j [, ms]]]) -> k (1 <= k: list[i..i+k-1] sent; 0 for i > j)
 *   ch:recv_many(buf, max [, ms])   -> k, buf (buf[1..k] written, 1 <= k <= max) | nil, msg, kind
 *   ch:recv_many(nil, max [, ms])   -> k, list (a new list of k values)
 *   for v in ch:iter() do ... end    (ends when the channel is closed and drained)
 *   ch:close() (also <close>), ch:closed(), ch:capacity(), #ch (values queued)
 * send and recv are awaits and raise the cancellation error; misuse (a nil value, a bad
 * capacity or timeout, a method on a finalized channel) raises. Everything else returns.
 *
 * Cancellation-safe by construction (baton.h, "channels"): a value leaves the ring only in
 * the receiving task, when it runs. A receiver woken for a value and aborted before it runs
 * gives its reservation back and the value, still at the head, goes to the next receiver;
 * a sender woken with room and aborted before it runs never puts its value. So recv that
 * raised took nothing, and send that raised or failed sent nothing. Capacity 0 is a
 * rendezvous: a value is put only for a receiver waiting for it (send waits until one
 * does; try_send fails unless one is waiting).
 *
 * The batch forms wait like send and recv (for room for one value, for one value), then
 * move as many as there are room or values for, at once: a batch call is all-or-nothing in
 * its wait, like send and recv, and a partial send says how far it got (write(2)'s shape).
 *
 * The ring grows by doubling when it is full: it holds `capacity` values, plus one per
 * receiver a value is reserved for, plus values given back by aborted receivers.
 */
#include <string.h>

#include "lsync.h"

#define FN_NEW      "baton.channel"
#define FN_SEND     "baton.channel:send"
#define FN_RECV     "baton.channel:recv"
#define FN_TRY_SEND "baton.channel:try_send"
#define FN_TRY_RECV "baton.channel:try_recv"
#define FN_ITER     "baton.channel:iter"
#define FN_SEND_MANY "baton.channel:send_many"
#define FN_RECV_MANY "baton.channel:recv_many"

LBT_HANDLE_FIRST(lchan, c);

static lchan *check_chan(lua_State *L, int idx) { return lbt_check_handle(L, idx, LBT_CHAN); }

/* The same for send and recv, the hot path: the channel checked last (lbt_check_handle's
 * memo), else one metatable comparison, the runtime already at hand; anything else goes
 * through lbt_check_handle, which remembers it, or raises with its message. The memo's
 * test is inlined in each caller, the rest (slow_chan) is not. */
static lchan *slow_chan(lua_State *L, lbt_rt *R, int idx, lchan *C);

static inline lchan *fast_chan(lua_State *L, lbt_rt *R, int idx) {
  lchan *C = lua_touserdata(L, idx);
  if (C != NULL && (void *)C == R->open_memo[LBT_CHAN] && lua_type(L, idx) == LUA_TUSERDATA)
    return C;  /* the channel lbt_check_handle saw last, still open (lbaton.h) */
  return slow_chan(L, R, idx, C);
}

static lchan *slow_chan(lua_State *L, lbt_rt *R, int idx, lchan *C) {
  if (C != NULL && lua_getmetatable(L, idx)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == R->classes[LBT_CHAN] && C->c != NULL) {
      R->open_memo[LBT_CHAN] = C;
      return C;
    }
  }
  return check_chan(L, idx);
}

/* ---- the ring ------------------------------------------------------------------------ */

/* Pushes a fresh ring of `size` slots. 65 slots (a channel of capacity 64 or more: see
 * lchan_new) are 64 in the table's array part and one in its hash part: 64 values are
 * 1 KiB, the largest block of the arena (src/cli/arena.c), where 65 would be a malloc of
 * 1,040 bytes for every ring recv_many(nil, n) hands over (ring_take_many). */
static void ring_new(lua_State *L, lua_Integer size) {
  if (size == 65) lua_createtable(L, 64, 1);
  else lua_createtable(L, (int)size, 0);
}

/* Doubles the ring (table at ri), which is full: the values that wrapped around to slots
 * 1..head-1 move after the old end, so the queue is contiguous from head again. */
static void ring_grow(lua_State *L, lchan *C, int ri) {
  lua_Integer old = C->size;
  for (lua_Integer i = 1; i < C->head; i++) {
    lua_rawgeti(L, ri, i);
    lua_rawseti(L, ri, old + i);
    lua_pushnil(L);
    lua_rawseti(L, ri, i);
  }
  C->size = old * 2;
  if (C->stale > 0) C->stale = C->size;  /* a value taken may have moved with the rest */
}

/* Puts the value at vi at the tail of the channel at ci, and calls bt_chan_push. Leaves
 * the ring on the stack (the callers return right after: one API call less a value).
 * ring_put, ring_take and chan_recv are inline: they are the per-value path of send, recv
 * and iter, where each call's saved registers cost some 15 instructions a value. */
static inline void ring_put(lua_State *L, lchan *C, int ci, int vi, int reserved) {
  lua_getiuservalue(L, ci, 1);
  lua_Integer len = (lua_Integer)C->storage.len;
  if (len == C->size) ring_grow(L, C, lua_gettop(L));
  lua_Integer pos = C->head + len;
  if (pos > C->size) pos -= C->size;
  lua_pushvalue(L, vi);
  lua_rawseti(L, -2, pos);
  bt_chan_push(&C->storage, reserved);
}

/* Types whose values refer to no object: left in the ring once taken, they keep nothing
 * alive, and a put overwrites them. */
#define NO_REF ((1 << LUA_TNUMBER) | (1 << LUA_TBOOLEAN) | (1 << LUA_TLIGHTUSERDATA))

/* Takes the head value, and calls bt_chan_pop; pushes the ring, then the value on top.
 * The slot is cleared only if the value refers to an object (which the ring must not keep
 * alive): clearing a number's slot was a table store per value, a twentieth of a send and
 * recv. Such a slot is remembered (stale) for the one place the ring's table leaves the
 * channel, ring_take_many. */
static inline void ring_take(lua_State *L, lchan *C, int ci, int reserved) {
  lua_getiuservalue(L, ci, 1);
  if ((1 << lua_rawgeti(L, -1, C->head)) & NO_REF) {
    if (C->head > C->stale) C->stale = C->head;
  } else {
    lua_pushnil(L);
    lua_rawseti(L, -3, C->head);
  }
  C->head = C->head == C->size ? 1 : C->head + 1;
  bt_chan_pop(&C->storage, reserved);
  if (C->storage.len == 0) C->head = 1;  /* empty: the next values start at slot 1 */
}

static void nil_in_list(lua_State *L, lchan *C, lua_Integer at, int reserved) {
  if (reserved) bt_chan_unreserve_room(&C->storage);
  lua_pushfstring(L, "a list without nil (list[%I] is nil)", (LUAI_UACINT)at);
  lbt_argerror(L, FN_SEND_MANY, 2, "list", lua_tostring(L, -1));
}

/* Puts list[i..i+k-1] (the table at li) at the tail of the channel at ci and calls
 * bt_chan_push_n. A nil among them raises naming its index, with nothing put (the room
 * reserved for a woken sender given back first). The ring grows only for values that are
 * there: when it must grow, the range is checked for a nil first, so a j far past the
 * list's end on a channel of large capacity raises without leaving a ring of j slots. */
static void ring_put_many(lua_State *L, lchan *C, int ci, int li, lua_Integer i, lua_Integer k,
                          int reserved) {
  lua_getiuservalue(L, ci, 1);
  int ri = lua_gettop(L);
  lua_Integer len = (lua_Integer)C->storage.len;
  if (len + k > C->size) {
    for (lua_Integer n = 0; n < k; n++) {
      int t = lua_rawgeti(L, li, i + n);
      lua_pop(L, 1);
      if (t == LUA_TNIL) nil_in_list(L, C, i + n, reserved);
    }
    while (len + k > C->size) ring_grow(L, C, ri);
  }
  lua_Integer pos = C->head + len;
  if (pos > C->size) pos -= C->size;
  for (lua_Integer n = 0; n < k; n++) {
    if (lua_rawgeti(L, li, i + n) == LUA_TNIL) {
      for (lua_Integer m = 0; m < n; m++) {  /* nothing was put */
        if (--pos < 1) pos = C->size;
        lua_rawseti(L, ri, pos);  /* the nil on top, each time */
        lua_pushnil(L);
      }
      nil_in_list(L, C, i + n, reserved);
    }
    lua_rawseti(L, ri, pos);
    pos = pos == C->size ? 1 : pos + 1;
  }
  lua_pop(L, 1);
  bt_chan_push_n(&C->storage, (size_t)k, reserved);
}

/* Takes k values from the head into buf[1..k] (the table at bi), or, bi 0, into a new list;
 * calls bt_chan_pop_n and pushes k, then the list. A new list taking at least half of what
 * is queued, from slot 1, is the ring itself: the channel takes a fresh ring, into which the
 * values left behind move (a consumer keeping up in batches copies none, or the one value a
 * sender could add beside a value reserved for it). Only when it takes at least a quarter
 * of the ring's slots, though: a fresh ring costs a store per slot and a block for the
 * collector, more than copying a handful of values (the one left behind above is taken
 * alone by the next call). Values copied out leave their slots as ring_take does. */
static void ring_take_many(lua_State *L, lchan *C, int ci, int bi, lua_Integer k, int reserved) {
  int hand = bi == 0 && C->head == 1 && 2 * k >= (lua_Integer)C->storage.len && 4 * k >= C->size;
  /* The table is made before the channel is read: making it is a step of the collector,
   * which may run a finalizer that uses this channel (try_recv, try_send). Whatever that
   * did is seen below: k is capped by what is left, the ring handed over only if it still
   * starts at slot 1 (else the new table is the list). */
  if (hand) ring_new(L, C->size);
  else if (bi == 0) lua_createtable(L, (int)k, 0);
  else lua_pushvalue(L, bi);
  lua_Integer len = (lua_Integer)C->storage.len;
  lua_Integer avail = (lua_Integer)bt_chan_len(&C->storage) + (reserved ? 1 : 0);
  if (k > avail) k = avail;
  lua_pushinteger(L, k);
  lua_insert(L, -2);  /* k, then the table */
  if (hand && C->head == 1) {
    int ni = lua_gettop(L);
    lua_getiuservalue(L, ci, 1);
    lua_insert(L, ni);  /* k, the old ring (the list), the new ring */
    int li = ni;
    for (lua_Integer j = k + 1; j <= len; j++) {
      lua_rawgeti(L, li, j);
      lua_rawseti(L, li + 1, j - k);
      lua_pushnil(L);
      lua_rawseti(L, li, j);
    }
    for (lua_Integer j = len + 1; j <= C->stale; j++) {  /* the list holds k values only */
      lua_pushnil(L);
      lua_rawseti(L, li, j);
    }
    C->stale = 0;
    lua_setiuservalue(L, ci, 1);
    bt_chan_pop_n(&C->storage, (size_t)k, reserved);
    return;
  }
  bi = lua_gettop(L);
  lua_getiuservalue(L, ci, 1);
  for (lua_Integer n = 1; n <= k; n++) {
    if ((1 << lua_rawgeti(L, bi + 1, C->head)) & NO_REF) {
      if (C->head > C->stale) C->stale = C->head;
      lua_rawseti(L, bi, n);
    } else {
      lua_rawseti(L, bi, n);
      lua_pushnil(L);
      lua_rawseti(L, bi + 1, C->head);
    }
    C->head = C->head == C->size ? 1 : C->head + 1;
  }
  lua_pop(L, 1);
  bt_chan_pop_n(&C->storage, (size_t)k, reserved);
  if (C->storage.len == 0) C->head = 1;  /* empty: the next values start at slot 1 */
}

void lbt_chan_take(lua_State *L, lchan *C, int ci, int reserved) {
  ring_take(L, C, ci, reserved);
  lua_remove(L, -2);
}

/* ---- failures ------------------------------------------------------------------------ */

static int fail_closed(lua_State *L, const char *fname, int recv) {
  return lbt_fail(L, fname, recv ? "the channel is closed and drained" : "the channel is closed",
                  "closed");
}

static int fail_busy(lua_State *L, lchan *C, const char *fname, const char *msg) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)bt_chan_len(&C->storage));
  lua_setfield(L, -2, "len");
  lua_pushinteger(L, (lua_Integer)bt_chan_capacity(&C->storage));
  lua_setfield(L, -2, "capacity");
  return lbt_fail_detail(L, fname, "busy", -1, "%s", msg);
}

/* ---- construction -------------------------------------------------------------------- */

static int lchan_new(lua_State *L) {
  if (lua_isnone(L, 1))  /* (lbt_arg_count would read its own message as the argument) */
    return lbt_argerror_got(L, FN_NEW, 1, "capacity", "integer >= 0", "no value");
  lua_Integer cap = lbt_arg_count(L, FN_NEW, 1, "capacity", 0, -1);
  lchan *C = lua_newuserdatauv(L, sizeof *C, 1);
  bt_chan_init(&C->storage, (size_t)cap);
  C->c = &C->storage;
  C->R = lbt_R(L);
  C->head = 1;
  C->stale = 0;
  /* Room for one more than the capacity, up to 64: a sender may put a value beside the
   * one reserved for a receiver that has not run yet, and a ring that had to double for it
   * would hand 128 slots to every recv_many(nil, n) that takes it (ring_take_many). */
  C->size = (cap < 64 ? cap : 64) + 1;
  ring_new(L, C->size);
  lua_setiuservalue(L, -2, 1);
  lbt_set_class(L, LBT_CHAN);
  return 1;
}

/* ---- waiting --------------------------------------------------------------------------- */

/* Queues the running task as a sender (or a receiver) of the channel until its turn, the
 * deadline `due` or an abort; k runs when it resumes (the stack as the caller left it). */
static int wait_turn(lua_State *L, lbt_rt *R, lchan *C, int send, const char *fname,
                     uint64_t due, lua_KContext ctx, lua_KFunction k) {
  lbt_task *T = lbt_await_begin(L, R, fname);
  lbt_fiber *f = lbt_fib(T);
  if (send) bt_chan_wait_send(C->c, &f->waiter, lbt_waiter_turn);
  else bt_chan_wait_recv(C->c, &f->waiter, lbt_waiter_turn);
  f->wait.src = &f->waiter;
  bt_task_wait(R->rt, &T->t, &f->wait, lbt_waiter_wait_cancel, due);
  return lbt_suspend(L, ctx, k);
}

/* ---- send ---------------------------------------------------------------------------- */

static void check_value(lua_State *L, const char *fname) {
  if (lua_isnoneornil(L, 2))
    lbt_argerror(L, fname, 2, "value", "a value other than nil");
}

/* Undo of a wake that reserved room for a sender aborted before it ran: it sends nothing,
 * and the room goes to the next sender. */
static void give_back_room(void *c) { bt_chan_unreserve_room(c); }

static int send_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  lchan *C = lua_touserdata(L, 1);
  bt_chan_t *c = &C->storage;  /* finalized meanwhile: closed, still valid */
  int status = lbt_resumed(L, NULL, give_back_room, c);
  if (status == 0) {  /* room was reserved for this sender */
    if (c->closed) {
      bt_chan_unreserve_room(c);
      return fail_closed(L, FN_SEND, 0);
    }
    ring_put(L, C, 1, 2, 1);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (status == BT_ECLOSED) return fail_closed(L, FN_SEND, 0);
  if (status == BT_ETIMEDOUT) return lbt_fail_timeout(L, FN_SEND, lua_tonumber(L, 3));
  return lbt_fail_status(L, FN_SEND, status);
}

static int lchan_send(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lchan *C = fast_chan(L, R, 1);
  check_value(L, FN_SEND);
  uint64_t due = lua_gettop(L) >= 3 ? lbt_arg_due(L, R, FN_SEND, 3) : UINT64_MAX;
  if (lbt_cancelled(R)) return lbt_raise_cancelled(L);
  int rc = bt_chan_can_send(C->c);
  if (rc == 0) {
    ring_put(L, C, 1, 2, 0);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == BT_ECLOSED) return fail_closed(L, FN_SEND, 0);
  lua_settop(L, 3);  /* the continuation finds the value at 2, the timeout at 3 */
  return wait_turn(L, R, C, 1, FN_SEND, due, 0, send_k);
}

static int lchan_try_send(lua_State *L) {
  lchan *C = check_chan(L, 1);
  check_value(L, FN_TRY_SEND);
  int rc = bt_chan_can_send(C->c);
  if (rc == BT_ECLOSED) return fail_closed(L, FN_TRY_SEND, 0);
  if (rc != 0)
    return fail_busy(L, C, FN_TRY_SEND, C->storage.cap == 0 ? "no receiver is waiting"
                                                            : "the channel is full");
  ring_put(L, C, 1, 2, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- recv ---------------------------------------------------------------------------- */

/* ctx 1: the iterator of ch:iter(), which ends the loop (nil) when closed and drained. */
/* Undo of a wake that reserved the head value for a receiver aborted before it ran: the
 * value never left the head; the next receiver is woken for it. */
static void give_back_item(void *c) { bt_chan_unreserve_item(c); }

static int recv_k(lua_State *L, int st, lua_KContext iter) {
  (void)st;
  lchan *C = lua_touserdata(L, 1);
  bt_chan_t *c = &C->storage;
  int status = lbt_resumed(L, NULL, give_back_item, c);
  if (status == 0) {  /* the head value is reserved for this receiver */
    ring_take(L, C, 1, 1);
    return 1;
  }
  if (status == BT_ECLOSED) {  /* a value an aborted receiver gave back may be there */
    if (bt_chan_can_recv(c) == 0) {
      ring_take(L, C, 1, 0);
      return 1;
    }
    if (iter) return 0;
    return fail_closed(L, FN_RECV, 1);
  }
  if (status == BT_ETIMEDOUT) return lbt_fail_timeout(L, FN_RECV, lua_tonumber(L, 2));
  return lbt_fail_status(L, iter ? FN_ITER : FN_RECV, status);
}

/* The channel at ci (1, or the iterator's upvalue), the optional timeout at 2. */
static inline int chan_recv(lua_State *L, lbt_rt *R, lchan *C, int ci, int iter) {
  const char *fname = iter ? FN_ITER : FN_RECV;
  uint64_t due = !iter && lua_gettop(L) >= 2 ? lbt_arg_due(L, R, fname, 2) : UINT64_MAX;
  if (lbt_cancelled(R)) return lbt_raise_cancelled(L);
  int rc = bt_chan_can_recv(C->c);
  if (rc == 0) {
    ring_take(L, C, ci, 0);
    return 1;
  }
  if (rc == BT_ECLOSED) return iter ? 0 : fail_closed(L, fname, 1);
  if (iter) {  /* the continuation finds the channel at 1 */
    lua_settop(L, 0);
    lua_pushvalue(L, ci);
  }
  lua_settop(L, 2);
  return wait_turn(L, R, C, 0, fname, due, iter, recv_k);
}

static int lchan_recv(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  return chan_recv(L, R, fast_chan(L, R, 1), 1, 0);
}

static int lchan_try_recv(lua_State *L) {
  lchan *C = check_chan(L, 1);
  int rc = bt_chan_can_recv(C->c);
  if (rc == BT_ECLOSED) return fail_closed(L, FN_TRY_RECV, 1);
  if (rc != 0) return fail_busy(L, C, FN_TRY_RECV, "the channel is empty");
  ring_take(L, C, 1, 0);
  return 1;
}

/* ---- batches ------------------------------------------------------------------------- */

static lua_Integer min_int(lua_Integer a, lua_Integer b) { return a < b ? a : b; }

/* lbt_arg_count for the batch calls, which a consumer keeping up makes a few times per
 * batch: an integer in range costs two API calls here, against four there; anything else
 * (absent, a float, a string, out of range) goes to lbt_arg_count, which decides. */
static lua_Integer arg_count(lua_State *L, const char *fname, int idx, const char *name,
                             lua_Integer min, lua_Integer def) {
  if (lua_isinteger(L, idx)) {
    lua_Integer v = lua_tointeger(L, idx);
    if (v >= min && v <= ((lua_Integer)1 << 53)) return v;
  }
  return lbt_arg_count(L, fname, idx, name, min, def);
}

/* Stack: 1 channel, 2 list, 3 i, 4 j, 5 timeout (normalized by send_many). */
static int send_many_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  lchan *C = lua_touserdata(L, 1);
  bt_chan_t *c = &C->storage;
  int status = lbt_resumed(L, NULL, give_back_room, c);
  if (status == 0) {  /* room for one was reserved for this sender */
    if (c->closed) {
      bt_chan_unreserve_room(c);
      return fail_closed(L, FN_SEND_MANY, 0);
    }
    lua_Integer i = lua_tointeger(L, 3), j = lua_tointeger(L, 4);
    lua_Integer k = min_int(j - i + 1, 1 + (lua_Integer)bt_chan_room(c));
    ring_put_many(L, C, 1, 2, i, k, 1);
    lua_pushinteger(L, k);
    return 1;
  }
  if (status == BT_ECLOSED) return fail_closed(L, FN_SEND_MANY, 0);
  if (status == BT_ETIMEDOUT) return lbt_fail_timeout(L, FN_SEND_MANY, lua_tonumber(L, 5));
  return lbt_fail_status(L, FN_SEND_MANY, status);
}

static int lchan_send_many(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lchan *C = fast_chan(L, R, 1);
  if (lua_type(L, 2) != LUA_TTABLE) lbt_argerror(L, FN_SEND_MANY, 2, "list", "table");
  int top = lua_gettop(L), given = 1;  /* given: i and j both passed (as counts) */
  lua_Integer i = 1, j;
  if (top < 3 || lua_isnil(L, 3)) given = 0;
  else i = arg_count(L, FN_SEND_MANY, 3, "i", 1, -1);
  if (top < 4 || lua_isnil(L, 4)) given = 0, j = (lua_Integer)lua_rawlen(L, 2);
  else j = arg_count(L, FN_SEND_MANY, 4, "j", 0, -1);
  uint64_t due = top >= 5 ? lbt_arg_due(L, R, FN_SEND_MANY, 5) : UINT64_MAX;
  if (lbt_cancelled(R)) return lbt_raise_cancelled(L);
  if (bt_chan_closed(C->c)) return fail_closed(L, FN_SEND_MANY, 0);
  if (j < i) {
    lua_pushinteger(L, 0);
    return 1;
  }
  size_t room = bt_chan_room(C->c);
  if (room > 0) {
    lua_Integer k = min_int(j - i + 1, (lua_Integer)room);
    ring_put_many(L, C, 1, 2, i, k, 0);
    lua_pushinteger(L, k);
    return 1;
  }
  lua_settop(L, 5);
  if (!given) {  /* the continuation reads i and j at 3 and 4 (a count given reads as itself) */
    lua_pushinteger(L, i);
    lua_replace(L, 3);
    lua_pushinteger(L, j);
    lua_replace(L, 4);
  }
  return wait_turn(L, R, C, 1, FN_SEND_MANY, due, 0, send_many_k);
}

/* Stack: 1 channel, 2 buf (or nil), 3 max, 4 timeout. Takes k values into buf or a new
 * list and returns k, the list. */
static int took_many(lua_State *L, lchan *C, lua_Integer k, int reserved) {
  ring_take_many(L, C, 1, lua_istable(L, 2) ? 2 : 0, k, reserved);
  return 2;
}

static int recv_many_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  lchan *C = lua_touserdata(L, 1);
  bt_chan_t *c = &C->storage;
  int status = lbt_resumed(L, NULL, give_back_item, c);
  lua_Integer max = lua_tointeger(L, 3);
  if (status == 0) {  /* the head value is reserved for this receiver */
    lua_Integer k = min_int(max, 1 + (lua_Integer)bt_chan_len(c));
    return took_many(L, C, k, 1);
  }
  if (status == BT_ECLOSED) {  /* values aborted receivers gave back may be there */
    lua_Integer k = min_int(max, (lua_Integer)bt_chan_len(c));
    if (k == 0) return fail_closed(L, FN_RECV_MANY, 1);
    return took_many(L, C, k, 0);
  }
  if (status == BT_ETIMEDOUT) return lbt_fail_timeout(L, FN_RECV_MANY, lua_tonumber(L, 4));
  return lbt_fail_status(L, FN_RECV_MANY, status);
}

static int lchan_recv_many(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lchan *C = fast_chan(L, R, 1);
  if (!lua_isnil(L, 2) && lua_type(L, 2) != LUA_TTABLE)
    lbt_argerror(L, FN_RECV_MANY, 2, "buf", "table or nil");
  lua_Integer max = arg_count(L, FN_RECV_MANY, 3, "max", 1, -1);
  uint64_t due = lua_gettop(L) >= 4 ? lbt_arg_due(L, R, FN_RECV_MANY, 4) : UINT64_MAX;
  if (lbt_cancelled(R)) return lbt_raise_cancelled(L);
  lua_Integer k = min_int(max, (lua_Integer)bt_chan_len(C->c));
  if (k > 0) {
    return took_many(L, C, k, 0);
  }
  if (bt_chan_closed(C->c)) return fail_closed(L, FN_RECV_MANY, 1);
  lua_settop(L, 4);
  return wait_turn(L, R, C, 0, FN_RECV_MANY, due, 0, recv_many_k);
}

/* The iterator: upvalue 2 is the channel (checked by iter()); the generic for's arguments
 * are ignored. */
static int iter_next(lua_State *L) {
  lchan *C = lua_touserdata(L, lua_upvalueindex(2));
  if (C->c == NULL) return lbt_closed_error(L, LBT_CHAN);
  return chan_recv(L, C->R, C, lua_upvalueindex(2), 1);
}

static int lchan_iter(lua_State *L) {
  check_chan(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, iter_next, 2);
  return 1;
}

/* ---- the rest ------------------------------------------------------------------------ */

/* close() and closed() also work on a finalized channel: it is closed. */
static int lchan_close(lua_State *L) {
  bt_chan_close(&((lchan *)lbt_check_type(L, 1, LBT_CHAN))->storage);
  return 0;
}

static int lchan_closed(lua_State *L) {
  lua_pushboolean(L, bt_chan_closed(&((lchan *)lbt_check_type(L, 1, LBT_CHAN))->storage));
  return 1;
}

static int lchan_capacity(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)bt_chan_capacity(check_chan(L, 1)->c));
  return 1;
}

static int lchan_len(lua_State *L) {
  lchan *C = lbt_check_type(L, 1, LBT_CHAN);
  lua_pushinteger(L, (lua_Integer)bt_chan_len(&C->storage));
  return 1;
}

/* Fails the waiters (they find closed storage: the memory is the userdata's). When the
 * state itself is closing, the runtime may be gone: the waiters are only unqueued. */
static int lchan_gc(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lchan *C = lbt_check_type(L, 1, LBT_CHAN);
  bt_chan_t *c = &C->storage;
  if (R->closed) {
    c->closed = 1;
    while (!TAILQ_EMPTY(&c->senders.head)) bt_waiter_cancel(TAILQ_FIRST(&c->senders.head));
    while (!TAILQ_EMPTY(&c->receivers.head)) bt_waiter_cancel(TAILQ_FIRST(&c->receivers.head));
  } else {
    bt_chan_close(c);
  }
  lbt_handle_clear(L, C, LBT_CHAN);
  return 0;
}

static int lchan_tostring(lua_State *L) {
  lchan *C = lbt_check_type(L, 1, LBT_CHAN);
  bt_chan_t *c = &C->storage;
  if (C->c == NULL) lua_pushliteral(L, "baton.Channel (finalized)");
  else lua_pushfstring(L, "baton.Channel (%I/%I queued, %I senders and %I receivers waiting%s)",
                       (LUAI_UACINT)bt_chan_len(c), (LUAI_UACINT)bt_chan_capacity(c),
                       (LUAI_UACINT)bt_chan_senders(c), (LUAI_UACINT)bt_chan_receivers(c),
                       bt_chan_closed(c) ? ", closed" : "");
  return 1;
}

void lbt_open_chan(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"send", lchan_send}, {"recv", lchan_recv}, {"try_send", lchan_try_send},
    {"try_recv", lchan_try_recv}, {"send_many", lchan_send_many},
    {"recv_many", lchan_recv_many}, {"iter", lchan_iter}, {"close", lchan_close},
    {"closed", lchan_closed}, {"capacity", lchan_capacity}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__len", lchan_len}, {"__close", lchan_close}, {"__gc", lchan_gc},
    {"__tostring", lchan_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_CHAN_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"channel", lchan_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
