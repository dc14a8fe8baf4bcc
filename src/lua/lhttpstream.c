/*
 * lhttpstream.c — baton.http.stream: an HTTP response whose body is handed over as it
 * arrives (lhttp.c checks the options and calls lbt_http_stream_start).
 *
 * A Stream userdata embeds its state (lstream); the core transfer's events point at it and
 * are stopped (bt_http_free) before the userdata can go. User value 1 is the response head
 * table (status, headers, url, retry_after_ms) read through __index; user value 2 is the
 * server-sent event being assembled by read_event, kept across waits. At most one task waits
 * on a stream; an aborted read leaves the stream open (close it, or let <close> do it).
 * baton.run closes the streams still open when it ends.
 */

#include <ctype.h>
#include <string.h>

#include "lbaton.h"

#define BT_STREAM_MT "baton.HttpStream"
#define STREAMS_KEY "baton.http.streams"  /* registry: weak set of open streams */
#define MAX_LINE ((size_t)1 << 20)        /* read_line and read_event; also the buffer */

typedef struct lstream {
  bt_http_req_t *r;       /* NULL once closed */
  bt_rt_t *rt;
  bt_task_t *waiter;
  uint32_t token;
  int bom_done;           /* read_event: a leading byte-order mark was looked for */
} lstream;

enum { OP_HEAD, OP_READ, OP_LINE, OP_EVENT };
static const char *const op_names[] = {"baton.http.stream", "stream:read", "stream:read_line",
                                       "stream:read_event"};

static void stream_close(lstream *st) {
  if (st->waiter != NULL) bt_task_wake(st->rt, st->waiter, st->token, BT_ECLOSED);
  bt_http_free(st->r);
  st->r = NULL;
}

/* Core events (the head, bytes, the end), possibly from inside libcurl: wake only. */
static void on_stream_event(bt_http_req_t *r, void *data) {
  (void)r;
  lstream *st = data;
  if (st->waiter != NULL) bt_task_wake(st->rt, st->waiter, st->token, 0);
}

static void stream_wait_cancel(bt_wait_t *w) {
  lstream *st = w->src;
  st->waiter = NULL;
}

static lstream *check_stream(lua_State *L, const char *fname) {
  lstream *st = lbt_check_type(L, 1, LBT_HTTP_STREAM);
  if (st->r == NULL) luaL_error(L, "%s: the stream is closed", fname);
  return st;
}

/* The end of a finished transfer: pushes nil (the body is complete) or nil, message, kind. */
static int push_end(lua_State *L, lstream *st, const char *fname) {
  lua_pushnil(L);
  if (bt_http_result(st->r) == 0) return 1;
  const char *kind;
  const char *msg = bt_http_error(st->r, &kind);
  lua_pushfstring(L, "%s: %s", fname, msg);
  lua_pushstring(L, kind);
  return 3;
}

static int push_too_long(lua_State *L, const char *fname) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: a line exceeds %d bytes (use stream:read)", fname, (int)MAX_LINE);
  lua_pushliteral(L, "too_large");
  return 3;
}

/* Takes one line from the unread body, without its end: "\n" or "\r\n", and with `cr`
 * also a lone "\r" (server-sent events allow all three). Returns 0 if none is whole yet. */
static int take_line(lua_State *L, lstream *st, int cr) {
  size_t len;
  const char *p = bt_http_peek(st->r, &len);
  for (size_t i = 0; i < len; i++) {
    if (p[i] != '\n' && p[i] != '\r') continue;
    size_t end = i, next = i + 1;
    if (p[i] == '\r') {
      if (i + 1 == len && !bt_http_finished(st->r)) return 0;  /* "\r\n" may be coming */
      if (i + 1 < len && p[i + 1] == '\n') next = i + 2;
      else if (!cr) continue;
    }
    lua_pushlstring(L, p, end);
    bt_http_consume(st->r, next);
    return 1;
  }
  return 0;
}

/* Drops a UTF-8 byte-order mark at the start of an event stream. Returns 0 while the first
 * bytes could still be one. */
static int skip_bom(lstream *st) {
  if (st->bom_done) return 1;
  size_t len;
  const char *p = bt_http_peek(st->r, &len);
  static const char bom[3] = {'\xEF', '\xBB', '\xBF'};
  size_t n = len < 3 ? len : 3;
  if (memcmp(p, bom, n) == 0 && n < 3 && !bt_http_finished(st->r)) return 0;
  if (n == 3 && memcmp(p, bom, 3) == 0) bt_http_consume(st->r, 3);
  st->bom_done = 1;
  return 1;
}

/* Adds one line to the event in user value 2 of the stream at 1. Returns 1 when the line
 * completed an event, which is then on top of the stack, else 0. Server-sent events:
 * "field: value" lines, a blank line ends an event, "data" lines are joined with "\n",
 * lines starting with ':' are comments, an event without data is dropped; "id" is the
 * last event id, kept for the events after it (as EventSource does); "retry" sets the
 * stream's retry_ms. */
static int event_line(lua_State *L, const char *line, size_t len) {
  lua_getiuservalue(L, 1, 2);
  int ev = lua_gettop(L);
  if (len == 0) {
    int has_data = lua_getfield(L, ev, "data") != LUA_TNIL;
    lua_pop(L, 1);
    lua_newtable(L);  /* the next event starts empty but for the last event id */
    if (lua_getfield(L, ev, "id") != LUA_TNIL) lua_setfield(L, -2, "id");
    else lua_pop(L, 1);
    lua_setiuservalue(L, 1, 2);
    if (!has_data) {
      lua_pop(L, 1);
      return 0;
    }
    if (lua_getfield(L, ev, "event") == LUA_TNIL) {
      lua_pushliteral(L, "message");
      lua_setfield(L, ev, "event");
    }
    lua_pop(L, 1);
    return 1;
  }
  if (line[0] != ':') {
    const char *colon = memchr(line, ':', len);
    size_t flen = colon ? (size_t)(colon - line) : len;
    const char *v = colon ? colon + 1 : line + len;
    if (v < line + len && *v == ' ') v++;
    size_t vlen = (size_t)(line + len - v);
    if (flen == 4 && memcmp(line, "data", 4) == 0) {
      if (lua_getfield(L, ev, "data") == LUA_TSTRING) {
        lua_pushliteral(L, "\n");
        lua_pushlstring(L, v, vlen);
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, vlen);
      }
      lua_setfield(L, ev, "data");
    } else if (flen == 5 && memcmp(line, "event", 5) == 0) {
      if (vlen > 0) lua_pushlstring(L, v, vlen);
      else lua_pushnil(L);  /* an empty type is "message" */
      lua_setfield(L, ev, "event");
    } else if (flen == 2 && memcmp(line, "id", 2) == 0 && memchr(v, '\0', vlen) == NULL) {
      lua_pushlstring(L, v, vlen);  /* the last event id: it stays for the events after */
      lua_setfield(L, ev, "id");
    } else if (flen == 5 && memcmp(line, "retry", 5) == 0 && vlen > 0 && vlen < 16) {
      long long ms = 0;
      size_t i = 0;
      while (i < vlen && isdigit((unsigned char)v[i])) ms = ms * 10 + (v[i++] - '0');
      if (i == vlen) {  /* ASCII digits only: the stream's reconnection delay */
        if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
          lua_pushinteger(L, (lua_Integer)ms);
          lua_setfield(L, -2, "retry_ms");
        }
        lua_pop(L, 1);
      }
    }
  }
  lua_pop(L, 1);
  return 0;
}

static void push_head(lua_State *L, lstream *st) {
  lua_createtable(L, 0, 4);
  int t = lua_gettop(L);
  lua_pushinteger(L, bt_http_status(st->r));
  lua_setfield(L, t, "status");
  size_t len;
  const char *p = bt_http_headers(st->r, &len);
  lbt_http_push_headers(L, p, len);
  lua_Integer ra = lbt_http_retry_after(L);
  lua_setfield(L, t, "headers");
  if (ra >= 0) {
    lua_pushinteger(L, ra);
    lua_setfield(L, t, "retry_after_ms");
  }
  lua_pushstring(L, bt_http_url(st->r));
  lua_setfield(L, t, "url");
}

/* Pushes the results of `op` if it can complete now and returns their count, else -1.
 * Stack: 1 = the stream. */
static int stream_try(lua_State *L, lstream *st, int op) {
  const char *fname = op_names[op];
  size_t len;
  const char *p;
  switch (op) {
  case OP_HEAD:
    /* Once the head is in, a failure later (even one already there) is the reads' to
     * report; before it, the failure is the request's. */
    if (!bt_http_head_done(st->r)) {
      if (!bt_http_finished(st->r)) return -1;
      if (bt_http_result(st->r) != 0) {
        int n = push_end(L, st, fname);
        stream_close(st);
        return n;
      }
    }
    push_head(L, st);
    lua_setiuservalue(L, 1, 1);
    lua_pushvalue(L, 1);
    return 1;
  case OP_READ:
    p = bt_http_peek(st->r, &len);
    if (len > 0) {
      lua_pushlstring(L, p, len);
      bt_http_consume(st->r, len);
      return 1;
    }
    return bt_http_finished(st->r) ? push_end(L, st, fname) : -1;
  case OP_LINE:
    if (take_line(L, st, 0)) return 1;
    p = bt_http_peek(st->r, &len);
    if (bt_http_finished(st->r)) {
      if (len == 0) return push_end(L, st, fname);
      lua_pushlstring(L, p, len);  /* the last line, with no "\n" after it */
      bt_http_consume(st->r, len);
      return 1;
    }
    return len >= MAX_LINE ? push_too_long(L, fname) : -1;
  default:  /* OP_EVENT */
    if (!skip_bom(st)) return -1;
    while (take_line(L, st, 1)) {
      size_t n;
      const char *line = lua_tolstring(L, -1, &n);
      if (event_line(L, line, n)) return 1;  /* the event, above the line */
      lua_pop(L, 1);
    }
    bt_http_peek(st->r, &len);
    if (bt_http_finished(st->r)) return push_end(L, st, fname);  /* a partial event is dropped */
    return len >= MAX_LINE ? push_too_long(L, fname) : -1;
  }
}

static int stream_suspend(lua_State *L, lbt_rt *R, lbt_task *T, lstream *st, int op);

/* Stack: 1 = the stream, 2 = the deadline (an integer, -1 for none). */
static int stream_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  int op = (int)ctx;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = (lbt_task *)bt_rt_current(R->rt);
  lstream *st = lua_touserdata(L, 1);
  int s = lbt_fib(T)->status;
  if (s == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL)) {
    if (op == OP_HEAD) stream_close(st);
    return lbt_raise_cancelled(L);
  }
  if (st->r == NULL) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: the stream was closed while waiting", op_names[op]);
    lua_pushliteral(L, "closed");
    return 3;
  }
  if (s != 0) {
    if (op == OP_HEAD) stream_close(st);
    if (s == BT_ETIMEDOUT) return lbt_push_timeout(L);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", op_names[op], bt_strerror(s));
    lua_pushstring(L, bt_err_name(s));
    return 3;
  }
  lua_settop(L, 2);
  int n = stream_try(L, st, op);
  if (n >= 0) return n;
  if (st->waiter != NULL)
    return luaL_error(L, "%s: another task is already waiting on this stream", op_names[op]);
  return stream_suspend(L, R, T, st, op);  /* woken by bytes that end no line yet */
}

static int stream_suspend(lua_State *L, lbt_rt *R, lbt_task *T, lstream *st, int op) {
  lua_Integer d = lua_tointeger(L, 2);
  lbt_fiber *f = lbt_fib(T);
  f->wait.src = st;
  st->waiter = &T->t;
  st->token = bt_task_wait(R->rt, &T->t, &f->wait, stream_wait_cancel,
                           d < 0 ? UINT64_MAX : (uint64_t)d);
  return lbt_suspend(L, op, stream_k);
}

int lbt_http_stream_start(lua_State *L, lbt_rt *R, bt_http_opts *o, lua_Integer timeout) {
  const char *fname = op_names[OP_HEAD];
  lbt_task *T = lbt_await_begin(L, R, fname);
  lstream *st = lua_newuserdatauv(L, sizeof *st, 2);
  memset(st, 0, sizeof *st);
  luaL_setmetatable(L, BT_STREAM_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 2);
  st->rt = R->rt;
  o->stream = 1;
  o->stream_buffer = MAX_LINE;
  o->on_event = on_stream_event;
  int rc = bt_http_start(R->rt, o, on_stream_event, st, &st->r);
  if (rc == BT_EINVAL)
    return luaL_error(L, "%s: url '%s' is not an absolute http:// or https:// URL", fname,
                      o->url);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", fname, bt_strerror(rc));
    lua_pushliteral(L, "nomem");
    return 3;
  }
  lbt_weak_set_add(L, STREAMS_KEY, -1);
  lua_replace(L, 1);
  lua_settop(L, 1);
  lua_pushinteger(L, timeout < 0 ? -1 : (lua_Integer)(bt_now(R->rt) + (uint64_t)timeout));
  return stream_suspend(L, R, T, st, OP_HEAD);
}

static int stream_op(lua_State *L, int op) {
  lbt_rt *R = lbt_R(L);
  const char *fname = op_names[op];
  lstream *st = check_stream(L, fname);
  uint64_t due = lbt_opt_due(L, R, 2);
  lua_settop(L, 1);
  if (st->waiter != NULL)
    return luaL_error(L, "%s: another task is already waiting on this stream", fname);
  bt_task_t *cur = bt_rt_current(R->rt);
  if (cur != NULL && (cur->flags & BT_TASK_F_CANCEL)) return lbt_raise_cancelled(L);
  int n = stream_try(L, st, op);
  if (n >= 0) return n;
  lbt_task *T = lbt_await_begin(L, R, fname);
  lua_pushinteger(L, due == UINT64_MAX ? -1 : (lua_Integer)due);
  return stream_suspend(L, R, T, st, op);
}

static int lstream_read(lua_State *L) { return stream_op(L, OP_READ); }
static int lstream_read_line(lua_State *L) { return stream_op(L, OP_LINE); }
static int lstream_read_event(lua_State *L) { return stream_op(L, OP_EVENT); }

/* Unread body bytes held for the reader (at most about 1 MiB: then the transfer pauses). */
static int lstream_buffered(lua_State *L) {
  lstream *st = lbt_check_type(L, 1, LBT_HTTP_STREAM);
  size_t len = 0;
  if (st->r != NULL) bt_http_peek(st->r, &len);
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
  if (st->r == NULL) lua_pushliteral(L, "baton.HttpStream (closed)");
  else if (bt_http_finished(st->r))
    lua_pushfstring(L, "baton.HttpStream (status %d, ended)", (int)bt_http_status(st->r));
  else
    lua_pushfstring(L, "baton.HttpStream (status %d, open)", (int)bt_http_status(st->r));
  return 1;
}

static void close_one(void *ud) {
  lstream *st = ud;
  if (st->r != NULL) stream_close(st);
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
