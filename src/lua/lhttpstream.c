/*
 * lhttpstream.c — baton.http.stream: an HTTP response whose body is handed over as it
 * arrives (lhttp.c checks the options and calls lbt_http_stream_start).
 *
 * A Stream userdata embeds its state (lstream); the core transfer's events point at it and
 * are stopped (bt_http_free) before the userdata can go. User value 1 is the response head
 * table (status, headers, url, retry_after_ms, retry_ms) read through __index. read_event
 * parses with the core's server-sent events parser (src/core/sse.c), whose state — the
 * event being assembled, the last id — lives in the lstream across waits and is freed when
 * the stream closes. At most one task waits on a stream; an aborted read leaves the stream
 * open (close it, or let <close> do it). baton.run closes the streams still open when it
 * ends.
 *
 * A read does a bounded amount of work per loop turn: read_event parses at most READ_BUDGET
 * bytes and hands out at most EVENT_BUDGET events between two waits, then lets the loop
 * turn (a wait due at once) before going on, so a peer sending a long event, or a flood of
 * small ones, in a hurry cannot hold timers and other tasks back. (Per call, a reader
 * looping on read_event handed out the whole 1 MiB buffer, ~116,000 small events, in one
 * turn: other tasks waited 200-400 ms.)
 *
 * Errors (docs/errors.md). Raise: misuse (a bad timeout, a read on a closed stream, a second
 * reader). Return `nil, msg, kind, detail`: baton.http.stream as baton.http.request does
 * (lbt_http_fail); the reads: the transfer's failure (lbt_http_fail: io, too_large, ...),
 * timeout ({ url =, timeout_ms = }: the stream goes on), closed (closed while waiting),
 * too_large (a line or an event over its limit: { limit = }), resource. The end of the body
 * is a plain nil.
 */

#include <string.h>

#include "lbaton.h"
#include "sse.h"

#define BT_STREAM_MT "baton.HttpStream"
#define STREAMS_KEY "baton.http.streams"  /* registry: weak set of open streams */
#define MAX_LINE ((size_t)1 << 20)        /* read_line; also the buffer */
#define READ_BUDGET ((size_t)256 << 10)   /* read_event: bytes parsed between two waits */
#define EVENT_BUDGET 256                  /* read_event: events handed out between two waits */

typedef struct lstream {
  lbt_http_wait h;        /* first: the transfer's events and waits point at the lstream */
  int yielded;            /* the waiter only lets the loop turn (read_event's budget) */
  size_t budget;          /* read_event: bytes it may still parse before it waits */
  unsigned events;        /* read_event: events it may still hand out before it waits */
  bt_sse sse;             /* read_event's parser */
} lstream;

enum { OP_HEAD, OP_READ, OP_LINE, OP_EVENT };
static const char *const op_names[] = {"baton.http.stream", "baton.http.stream:read",
                                       "baton.http.stream:read_line",
                                       "baton.http.stream:read_event"};

static void stream_close(void *arg) {
  lstream *st = arg;
  if (st->h.waiter != NULL) bt_task_wake(st->h.rt, st->h.waiter, st->h.token, BT_ECLOSED);
  bt_http_free(st->h.r);
  st->h.r = NULL;
  bt__sse_free(&st->sse);
}

static lstream *check_stream(lua_State *L, const char *fname) {
  lstream *st = lbt_check_type(L, 1, LBT_HTTP_STREAM);
  if (st->h.r == NULL) luaL_error(L, "%s: the stream is closed", fname);
  return st;
}

/* The end of a finished transfer: pushes nil (the body is complete) or its failure. */
static int push_end(lua_State *L, lstream *st, const char *fname) {
  if (bt_http_result(st->h.r) != 0) return lbt_http_fail(L, fname, st->h.r);
  lua_pushnil(L);
  return 1;
}

/* nil, msg, "too_large", { limit = }: a line or an event over its limit. */
static int fail_too_large(lua_State *L, const char *fname, size_t limit, const char *what,
                          const char *then) {
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, (lua_Integer)limit);
  lua_setfield(L, -2, "limit");
  return lbt_fail_detail(L, fname, "too_large", -1, "%s exceeds %zu bytes%s", what, limit, then);
}

/* read_line: one line of the unread body, cut by the core's line splitter in the
 * transfer's own buffer, pushed without its end ("\n" or "\r\n") and consumed. A line
 * must fit the buffer with its "\n" (the transfer pauses once MAX_LINE bytes are unread):
 * a longer one is too_large, however much of it has come. When the transfer has ended,
 * the bytes after the last "\n" are the last line. Returns the results' count, or -1 to
 * wait for bytes. */
static int take_line(lua_State *L, lstream *st, const char *fname) {
  size_t len, n, seen = 0;
  const char *p = bt_http_peek(st->h.r, &len);
  int rc = bt__lines_find(p, len, MAX_LINE - 1, &seen, &n);
  if (rc == BT_LINE_TOO_LONG)
    return fail_too_large(L, fname, MAX_LINE, "a line", " (use stream:read)");
  if (rc == BT_LINE_OK) {
    lua_pushlstring(L, p, n > 0 && p[n - 1] == '\r' ? n - 1 : n);
    bt_http_consume(st->h.r, n + 1);
    return 1;
  }
  if (!bt_http_finished(st->h.r)) return -1;
  if (len == 0) return push_end(L, st, fname);
  lua_pushlstring(L, p, len);  /* the last line, with no "\n" after it */
  bt_http_consume(st->h.r, len);
  return 1;
}

/* Pushes the event the parser completed: { event =, data =, id = }. */
static void push_event(lua_State *L, const bt_sse *e) {
  lua_createtable(L, 0, 3);
  if (e->type.len > 0) lua_pushlstring(L, e->type.p, e->type.len);
  else lua_pushliteral(L, "message");
  lua_setfield(L, -2, "event");
  lua_pushlstring(L, e->data.p ? e->data.p : "", e->data.len);
  lua_setfield(L, -2, "data");
  if (e->has_id) {
    lua_pushlstring(L, e->id.p ? e->id.p : "", e->id.len);
    lua_setfield(L, -2, "id");
  }
}

/* A "retry" field read: the stream's retry_ms, in the head table (user value 1). */
static void note_retry(lua_State *L, lstream *st) {
  st->sse.retry_new = 0;
  if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
    lua_pushinteger(L, (lua_Integer)st->sse.retry_ms);
    lua_setfield(L, -2, "retry_ms");
  }
  lua_pop(L, 1);
}

/* Parses the unread body, at most READ_BUDGET bytes. Pushes the results and returns their
 * count when read_event can answer, else -1 (wait for bytes) or -2 (the budget is spent:
 * let the loop turn, then go on). */
static int next_event(lua_State *L, lstream *st, const char *fname) {
  for (;;) {
    size_t len;
    const char *p = bt_http_peek(st->h.r, &len);
    if (len == 0) break;
    if (st->budget == 0 || st->events == 0) return -2;
    int res;
    size_t used = bt__sse_feed(&st->sse, p, len < st->budget ? len : st->budget, &res);
    st->budget -= used;
    bt_http_consume(st->h.r, used);  /* may resume the transfer, adding bytes */
    if (st->sse.retry_new) note_retry(L, st);
    if (res == BT_SSE_EVENT) {
      st->events--;
      push_event(L, &st->sse);
      return 1;
    }
    if (res == BT_SSE_TOO_LARGE) return fail_too_large(L, fname, st->sse.max_event, "an event",
                                                   " (max_event_bytes); it is skipped");
    if (res == BT_SSE_NOMEM)
      return lbt_fail(L, fname, "out of memory for an event; it is skipped", "resource");
  }
  /* A partial event at the end is dropped, as the SSE spec says. */
  return bt_http_finished(st->h.r) ? push_end(L, st, fname) : -1;
}

/* Pushes the results of `op` if it can complete now and returns their count, else -1 (or
 * -2: a read_event to go on after the loop turns), pushing nothing. Stack: 1 = the stream. */
static int stream_try(lua_State *L, lstream *st, int op) {
  const char *fname = op_names[op];
  size_t len;
  const char *p;
  switch (op) {
  case OP_HEAD:
    /* Once the head is in, a failure later (even one already there) is the reads' to
     * report; before it, the failure is the request's. */
    if (!bt_http_head_done(st->h.r)) {
      if (!bt_http_finished(st->h.r)) return -1;
      if (bt_http_result(st->h.r) != 0) {
        int n = push_end(L, st, fname);
        stream_close(st);
        return n;
      }
    }
    lbt_http_push_head(L, st->h.r);
    lua_setiuservalue(L, 1, 1);
    lua_pushvalue(L, 1);
    return 1;
  case OP_READ:
    p = bt_http_peek(st->h.r, &len);
    if (len > 0) {
      lua_pushlstring(L, p, len);
      bt_http_consume(st->h.r, len);
      return 1;
    }
    return bt_http_finished(st->h.r) ? push_end(L, st, fname) : -1;
  case OP_LINE:
    return take_line(L, st, fname);
  default:  /* OP_EVENT */
    return next_event(L, st, fname);
  }
}

static int stream_suspend(lua_State *L, lbt_rt *R, lbt_task *T, lstream *st, int op,
                          int yield);

static void no_release(void *arg) { (void)arg; }

/* Stack: 1 = the stream, 2 = the deadline (an integer, -1 for none), 3 = the timeout in ms
 * (nil for none). */
static int stream_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  int op = (int)ctx;
  lbt_rt *R = lbt_R(L);
  lstream *st = lua_touserdata(L, 1);
  lbt_task *T;  /* a head being waited for is closed with the task */
  int s = lbt_resumed_free(L, &T, op == OP_HEAD ? stream_close : no_release, st);
  st->budget = READ_BUDGET;  /* the loop turned while it waited */
  st->events = EVENT_BUDGET;
  if (st->yielded) {  /* the loop had its turn: go on unless the read's deadline passed */
    st->yielded = 0;
    lua_Integer d = lua_tointeger(L, 2);
    if (s == BT_ETIMEDOUT && (d < 0 || bt_now(R->rt) < (uint64_t)d)) s = 0;
  }
  const char *fname = op_names[op];
  if (st->h.r == NULL) return lbt_fail(L, fname, "the stream was closed while waiting", "closed");
  if (s != 0) {
    int n = s != BT_ETIMEDOUT ? lbt_fail_status(L, fname, s)
          : lbt_http_timeout(L, fname, bt_http_url(st->h.r), lua_tonumber(L, 3));
    if (op == OP_HEAD) stream_close(st);
    return n;
  }
  lua_settop(L, 3);
  int n = stream_try(L, st, op);
  if (n >= 0) return n;
  lbt_sole_waiter(L, fname, st->h.waiter != NULL, "stream");
  return stream_suspend(L, R, T, st, op, n == -2);  /* -1: bytes that end no event yet */
}

/* Waits for the stream's next event (bytes, the end, a close) until the deadline in slot
 * 2; with `yield`, only until the loop has turned (the wait is due at once). */
static int stream_suspend(lua_State *L, lbt_rt *R, lbt_task *T, lstream *st, int op,
                          int yield) {
  lua_Integer d = lua_tointeger(L, 2);
  lbt_fiber *f = lbt_fib(T);
  f->wait.src = st;
  st->h.waiter = &T->t;
  st->yielded = yield;
  uint64_t due = d < 0 ? UINT64_MAX : (uint64_t)d;
  if (yield && due > bt_now(R->rt)) due = bt_now(R->rt);
  st->h.token = bt_task_wait(R->rt, &T->t, &f->wait, lbt_http_wait_cancel, due);
  return lbt_suspend(L, op, stream_k);
}

int lbt_http_stream_start(lua_State *L, lbt_rt *R, bt_http_opts *o, lua_Integer timeout) {
  const char *fname = op_names[OP_HEAD];
  /* An event is bounded like the body it comes in, unless the caller says otherwise. */
  lua_Integer max_event = lbt_opt_count(L, fname, 1, "max_event_bytes", 0,
                                       (lua_Integer)o->max_body_bytes);
  lbt_task *T = lbt_await_begin(L, R, fname);
  lstream *st = lua_newuserdatauv(L, sizeof *st, 1);
  memset(st, 0, sizeof *st);
  st->budget = READ_BUDGET;
  st->events = EVENT_BUDGET;
  luaL_setmetatable(L, BT_STREAM_MT);
  bt__sse_init(&st->sse, (size_t)max_event);
  st->h.rt = R->rt;
  o->stream = 1;
  o->stream_buffer = MAX_LINE;
  o->on_event = lbt_http_wake;
  int rc = bt_http_start(R->rt, o, lbt_http_wake, st, &st->h.r);
  if (rc == BT_EINVAL)
    return lbt_field_error(L, fname, 1, "url", "an absolute http:// or https:// URL");
  if (rc != 0) return lbt_fail_status(L, fname, rc);
  lbt_weak_set_add(L, STREAMS_KEY, -1);
  lua_replace(L, 1);
  lua_settop(L, 1);
  lua_pushinteger(L, timeout < 0 ? -1 : (lua_Integer)(bt_due(R->rt, (uint64_t)timeout)));
  if (timeout >= 0) lua_pushinteger(L, timeout);
  else lua_pushnil(L);
  return stream_suspend(L, R, T, st, OP_HEAD, 0);
}

static int stream_op(lua_State *L, int op) {
  lbt_rt *R = lbt_R(L);
  const char *fname = op_names[op];
  lstream *st = check_stream(L, fname);
  uint64_t due = lbt_arg_due(L, R, fname, 2);
  lua_settop(L, 2);
  lbt_sole_waiter(L, fname, st->h.waiter != NULL, "stream");
  int n = stream_try(L, st, op);
  if (n >= 0) return n;
  lbt_task *T = lbt_await_begin(L, R, fname);
  lbt_insert_due(L, 2, due);  /* 2: the deadline, 3: the timeout */
  return stream_suspend(L, R, T, st, op, n == -2);
}

static int lstream_read(lua_State *L) { return stream_op(L, OP_READ); }
static int lstream_read_line(lua_State *L) { return stream_op(L, OP_LINE); }
static int lstream_read_event(lua_State *L) { return stream_op(L, OP_EVENT); }

/* Unread body bytes held for the reader (at most about 1 MiB: then the transfer pauses). */
static int lstream_buffered(lua_State *L) {
  lstream *st = lbt_check_type(L, 1, LBT_HTTP_STREAM);
  size_t len = 0;
  if (st->h.r != NULL) bt_http_peek(st->h.r, &len);
  lua_pushinteger(L, (lua_Integer)len);
  return 1;
}

static int lstream_close(lua_State *L) {
  stream_close(lbt_check_type(L, 1, LBT_HTTP_STREAM));
  return 0;
}

static int lstream_gc(lua_State *L) {
  stream_close(lbt_check_type(L, 1, LBT_HTTP_STREAM));
  return 0;
}

/* Methods first, then the fields of the response head. */
static int lstream_index(lua_State *L) {
  lbt_check_type(L, 1, LBT_HTTP_STREAM);
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__methods");
  lua_pushvalue(L, 2);
  if (lua_rawget(L, -2) != LUA_TNIL) return 1;
  lua_getiuservalue(L, 1, 1);
  if (!lua_istable(L, -1)) return 0;
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int lstream_tostring(lua_State *L) {
  lstream *st = lbt_check_type(L, 1, LBT_HTTP_STREAM);
  if (st->h.r == NULL) lua_pushliteral(L, "baton.HttpStream (closed)");
  else if (bt_http_finished(st->h.r))
    lua_pushfstring(L, "baton.HttpStream (status %d, ended)", (int)bt_http_status(st->h.r));
  else
    lua_pushfstring(L, "baton.HttpStream (status %d, open)", (int)bt_http_status(st->h.r));
  return 1;
}

static void close_one(void *ud) {
  lstream *st = ud;
  if (st->h.r != NULL) stream_close(st);
}

/* Closes every stream still open, for baton.run once its main task has ended. Never waits,
 * never raises. */
void lbt_close_streams(lua_State *L) { lbt_weak_set_each(L, STREAMS_KEY, close_one); }

void lbt_open_http_stream(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"read", lstream_read}, {"read_line", lstream_read_line},
    {"read_event", lstream_read_event}, {"buffered", lstream_buffered},
    {"close", lstream_close}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__index", lstream_index}, {"__gc", lstream_gc}, {"__close", lstream_gc},
    {"__tostring", lstream_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_STREAM_MT, methods, meta);
  lbt_weak_set_new(L, STREAMS_KEY);  /* every stream, for lbt_close_streams */
}
