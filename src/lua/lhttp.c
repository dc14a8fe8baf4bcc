/*
 * lhttp.c — baton.http: HTTP requests on the core's libcurl multi handle (src/core/http.c).
 *
 * A request is an await. The calling task keeps a Transfer userdata on its own stack for the
 * whole request; the core transfer's done callback points at that userdata, never at Lua.
 * Whatever ends the wait — the response, the deadline, an abort, the coroutine being closed
 * or collected — the continuation (or the userdata's __gc/__close) frees the core transfer,
 * which removes it from the multi handle if it is still running: no socket is left watched
 * and no callback comes later. This happens from a task or a finalizer, never from inside a
 * libcurl callback.
 *
 * API:
 *   baton.http.request{ url =, method =, headers = { Name = value }, body = string,
 *                       timeout_ms =, connect_timeout_ms =, max_body_bytes = (64 MiB),
 *                       max_header_bytes = (256 KiB), follow_redirects = false | true | n,
 *                       ca_file = path }
 *     → { status =, headers = { [lowercase name] = value }, body =, url =, retry_after_ms = }
 *     | nil, message, kind   ("timeout", "connect", "too_large", "tls", "protocol", "io",
 *                             "nomem")
 *   baton.http.json{ ..., body = value }  — encodes body as JSON (Content-Type and Accept
 *     default to application/json) and decodes a non-empty reply into resp.body, the raw text
 *     in resp.text; a reply that is not JSON → nil, message, "malformed", resp.
 *   baton.http.stream{ ... } → stream | nil, message, kind: returns once the head is in;
 *     stream.status/.headers/.url; stream:read/read_line/read_event([ms]) hand the body
 *     over as it arrives (below).
 * Any status is a response (a 500 is not an error); retry_after_ms is set when the response
 * carries a Retry-After header (seconds or an HTTP date). Misuse raises: a bad option, a URL
 * that is not absolute http(s), a header with CR/LF, a call outside a task.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lbaton.h"

#define BT_XFER_MT "baton.HttpTransfer"
#define DEFAULT_MAX_BODY ((lua_Integer)64 << 20)
#define DEFAULT_MAX_HEADER ((lua_Integer)256 << 10)  /* libcurl's own cap is 300 KiB */
#define DEFAULT_REDIRECTS 10

typedef struct lxfer {
  bt_http_req_t *r;       /* NULL until started and once freed */
  bt_rt_t *rt;
  bt_task_t *waiter;      /* the task waiting for it, or NULL */
  uint32_t token;
} lxfer;

static void xfer_free(lxfer *x) {
  bt_http_free(x->r);
  x->r = NULL;
}

static int lxfer_gc(lua_State *L) {
  xfer_free(lua_touserdata(L, 1));
  return 0;
}

/* Core callback, from the loop: wake the waiter (it only enqueues). */
static void on_done(bt_http_req_t *r, void *data) {
  (void)r;
  lxfer *x = data;
  if (x->waiter != NULL) bt_task_wake(x->rt, x->waiter, x->token, 0);
}

static void xfer_wait_cancel(bt_wait_t *w) {
  lxfer *x = w->src;
  x->waiter = NULL;
}

/* ---- options ------------------------------------------------------------------------ */

static int is_token_char(unsigned char c) {
  return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Pushes the header lines ("Name: value") of options.headers into a scratch userdata of
 * pointers (kept on the stack with a table anchoring the strings) and returns it. `json`
 * adds Content-Type/Accept unless given. */
static const char **check_headers(lua_State *L, const char *fname, int json, int has_body) {
  lua_newtable(L);
  int keep = lua_gettop(L);
  int n = 0, has_ct = 0, has_accept = 0;
  int t = lua_getfield(L, 1, "headers");
  if (t != LUA_TNIL && t != LUA_TTABLE)
    luaL_error(L, "%s: headers must be a table { Name = value } (got %s)", fname,
               luaL_typename(L, -1));
  if (t == LUA_TTABLE) {
    int hi = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, hi)) {
      if (lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "%s: header names must be strings (got %s)", fname,
                   luaL_typename(L, -2));
      size_t klen, vlen;
      const char *k = lua_tolstring(L, -2, &klen);
      for (size_t i = 0; i < klen; i++)
        if (!is_token_char((unsigned char)k[i]))
          luaL_error(L, "%s: header name '%s' is not a valid HTTP token", fname, k);
      if (klen == 0) luaL_error(L, "%s: a header name is empty", fname);
      int vt = lua_type(L, -1);
      if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
        luaL_error(L, "%s: headers['%s'] must be a string (got %s)", fname, k,
                   luaL_typename(L, -1));
      lua_pushvalue(L, -1);
      const char *v = lua_tolstring(L, -1, &vlen);
      if (strlen(v) != vlen || strpbrk(v, "\r\n") != NULL)
        luaL_error(L, "%s: headers['%s'] contains CR, LF or NUL", fname, k);
      if (strcasecmp(k, "content-type") == 0) has_ct = 1;
      if (strcasecmp(k, "accept") == 0) has_accept = 1;
      /* "Name:" with nothing after it would remove a header libcurl adds; "Name;" sends
       * it empty, which is what an empty value means here. */
      if (vlen == 0) lua_pushfstring(L, "%s;", k);
      else lua_pushfstring(L, "%s: %s", k, v);
      lua_rawseti(L, keep, ++n);
      lua_pop(L, 2);
    }
  }
  lua_pop(L, 1);
  if (json && has_body && !has_ct) {
    lua_pushliteral(L, "Content-Type: application/json");
    lua_rawseti(L, keep, ++n);
  }
  if (json && !has_accept) {
    lua_pushliteral(L, "Accept: application/json");
    lua_rawseti(L, keep, ++n);
  }
  const char **lines = lua_newuserdatauv(L, ((size_t)n + 1) * sizeof *lines, 0);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, keep, i);
    lines[i - 1] = lua_tostring(L, -1);  /* anchored by `keep` */
    lua_pop(L, 1);
  }
  lines[n] = NULL;
  return lines;
}

static const char *check_method(lua_State *L, const char *fname) {
  if (lua_getfield(L, 1, "method") == LUA_TNIL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "%s: method must be a string (got %s)", fname, luaL_typename(L, -1));
  size_t len;
  const char *m = lua_tolstring(L, -1, &len);
  if (len == 0 || len > 32) luaL_error(L, "%s: method '%s' is not an HTTP method", fname, m);
  char up[33];
  for (size_t i = 0; i < len; i++) {
    if (!isalpha((unsigned char)m[i]))
      luaL_error(L, "%s: method '%s' is not an HTTP method", fname, m);
    up[i] = (char)toupper((unsigned char)m[i]);
  }
  up[len] = '\0';
  lua_pop(L, 1);
  lua_pushstring(L, up);  /* stays on the stack until the start */
  return lua_tostring(L, -1);
}

/* An optional non-negative number of milliseconds; -1 when absent. */
static lua_Integer opt_ms(lua_State *L, const char *fname, const char *key) {
  if (lua_getfield(L, 1, key) == LUA_TNIL) {
    lua_pop(L, 1);
    return -1;
  }
  lua_Number ms = lua_tonumber(L, -1);
  if (lua_type(L, -1) != LUA_TNUMBER || !(ms >= 0 && ms < 1e15))
    luaL_error(L, "%s: %s must be a number of milliseconds >= 0 (got %s)", fname, key,
               luaL_tolstring(L, -1, NULL));
  lua_pop(L, 1);
  lua_Integer v = (lua_Integer)ms;
  return (lua_Number)v < ms ? v + 1 : v;
}

/* ---- the response ------------------------------------------------------------------- */

/* Pushes the header lines as a table of lowercase names; repeated headers are joined
 * with ", " (Set-Cookie with "\n", since its values contain commas). */
static void push_headers(lua_State *L, const char *p, size_t len) {
  lua_newtable(L);
  int t = lua_gettop(L);
  const char *end = p + len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *next = eol ? eol + 1 : end;
    if (eol == NULL) eol = end;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon != NULL && colon > p && *p != ' ' && *p != '\t') {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (const char *c = p; c < colon; c++) luaL_addchar(&b, (char)tolower((unsigned char)*c));
      luaL_pushresult(&b);
      const char *v = colon + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_pushvalue(L, -1);
      if (lua_rawget(L, t) == LUA_TSTRING) {
        const char *sep = strcmp(lua_tostring(L, -2), "set-cookie") == 0 ? "\n" : ", ";
        lua_pushstring(L, sep);
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, t);
    }
    p = next;
  }
}

/* Retry-After of the headers table at -1: delay-seconds or an HTTP date, in ms; -1 if
 * absent or unreadable. */
static lua_Integer retry_after_ms(lua_State *L) {
  lua_Integer ms = -1;
  if (lua_getfield(L, -1, "retry-after") == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    char *endp;
    long long secs = strtoll(s, &endp, 10);
    if (endp != s && *endp == '\0' && secs >= 0) {
      ms = secs > 1000000000LL ? (lua_Integer)1000000000LL * 1000 : (lua_Integer)secs * 1000;
    } else {
      int64_t when = bt_http_parse_date(s);
      if (when >= 0) {
        int64_t d = when - (int64_t)time(NULL);
        ms = d > 0 ? (lua_Integer)d * 1000 : 0;
      }
    }
  }
  lua_pop(L, 1);
  return ms;
}

/* Stack in the continuation: 1 = options, 2 = the Transfer userdata. */
static int request_k(lua_State *L, int status, lua_KContext json) {
  (void)status;
  lbt_rt *R = lbt_R(L);
  lbt_task *T = (lbt_task *)bt_rt_current(R->rt);
  lxfer *x = lua_touserdata(L, 2);
  int s = lbt_fib(T)->status;
  if (s == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL)) {
    xfer_free(x);
    return lbt_raise_cancelled(L);
  }
  if (s == BT_ETIMEDOUT) {
    xfer_free(x);
    return lbt_push_timeout(L);
  }
  if (s != 0) {  /* the wait itself failed (no memory for its deadline) */
    xfer_free(x);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", json ? "baton.http.json" : "baton.http.request",
                    bt_strerror(s));
    lua_pushstring(L, s == BT_ENOMEM ? "nomem" : bt_err_name(s));
    return 3;
  }
  const char *fname = json ? "baton.http.json" : "baton.http.request";
  bt_http_req_t *r = x->r;
  if (bt_http_result(r) != 0) {
    const char *kind;
    const char *msg = bt_http_error(r, &kind);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", fname, msg);
    lua_pushstring(L, kind);
    xfer_free(x);
    return 3;
  }
  lua_createtable(L, 0, 6);
  int resp = lua_gettop(L);
  lua_pushinteger(L, bt_http_status(r));
  lua_setfield(L, resp, "status");
  size_t len;
  const char *p = bt_http_headers(r, &len);
  push_headers(L, p, len);
  lua_Integer ra = retry_after_ms(L);
  lua_setfield(L, resp, "headers");
  if (ra >= 0) {
    lua_pushinteger(L, ra);
    lua_setfield(L, resp, "retry_after_ms");
  }
  lua_pushstring(L, bt_http_url(r));
  lua_setfield(L, resp, "url");
  p = bt_http_body(r, &len);
  lua_pushlstring(L, p, len);
  xfer_free(x);
  if (!json) {
    lua_setfield(L, resp, "body");
    return 1;
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, resp, "text");
  if (len == 0) {
    lua_pop(L, 1);
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(2));  /* baton.json.decode */
  lua_insert(L, -2);
  lua_call(L, 1, 2);
  if (lua_isnil(L, -2)) {
    lua_getfield(L, resp, "status");
    lua_Integer code = lua_tointeger(L, -1);
    lua_pushnil(L);
    lua_pushfstring(L, "baton.http.json: the reply (status %I) is not JSON: %s", code,
                    lua_tostring(L, -3));
    lua_pushliteral(L, "malformed");
    lua_pushvalue(L, resp);
    return 4;
  }
  lua_pop(L, 1);
  lua_setfield(L, resp, "body");
  return 1;
}

static int stream_start(lua_State *L, lbt_rt *R, bt_http_opts *o, lua_Integer timeout);

enum { M_REQUEST, M_JSON, M_STREAM };
static const char *const mode_names[] = {"baton.http.request", "baton.http.json",
                                         "baton.http.stream"};

static int do_request(lua_State *L, int mode) {
  lbt_rt *R = lbt_R(L);
  const char *fname = mode_names[mode];
  int json = mode == M_JSON;
  luaL_checktype(L, 1, LUA_TTABLE);
  static const char *const known[] = {"url", "method", "headers", "body", "timeout_ms",
                                      "connect_timeout_ms", "max_body_bytes",
                                      "max_header_bytes", "follow_redirects", "ca_file",
                                      NULL};
  lbt_check_fields(L, 1, fname, known);
  lua_settop(L, 1);
  bt_http_opts o;
  memset(&o, 0, sizeof o);
  if (lua_getfield(L, 1, "url") != LUA_TSTRING)
    luaL_error(L, "%s: url must be a string (got %s)", fname, luaL_typename(L, -1));
  size_t ulen;
  o.url = lua_tolstring(L, -1, &ulen);  /* stays on the stack until the start */
  if (strlen(o.url) != ulen) luaL_error(L, "%s: url contains a NUL byte", fname);
  o.method = check_method(L, fname);
  int bt = lua_getfield(L, 1, "body");
  if (json && bt != LUA_TNIL) {
    lua_pushvalue(L, lua_upvalueindex(3));  /* baton.json.encode */
    lua_insert(L, -2);
    lua_call(L, 1, 1);
    bt = LUA_TSTRING;
  }
  if (bt != LUA_TNIL && bt != LUA_TSTRING)
    luaL_error(L, "%s: body must be a string (got %s)", fname, luaL_typename(L, -1));
  if (bt == LUA_TSTRING) o.body = lua_tolstring(L, -1, &o.body_len);  /* stays on the stack */
  o.headers = check_headers(L, fname, json, o.body != NULL);
  lua_Integer timeout = opt_ms(L, fname, "timeout_ms");
  lua_Integer connect = opt_ms(L, fname, "connect_timeout_ms");
  o.connect_timeout_ms = connect < 0 ? 0 : (connect == 0 ? 1 : (uint64_t)connect);
  o.max_body_bytes = (size_t)lbt_opt_int(L, fname, "max_body_bytes", 0, DEFAULT_MAX_BODY);
  o.max_header_bytes = (size_t)lbt_opt_int(L, fname, "max_header_bytes", 0, DEFAULT_MAX_HEADER);
  int ft = lua_getfield(L, 1, "follow_redirects");
  if (ft == LUA_TBOOLEAN) o.max_redirects = lua_toboolean(L, -1) ? DEFAULT_REDIRECTS : 0;
  else if (ft == LUA_TNUMBER && lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0 &&
           lua_tointeger(L, -1) <= 1000) o.max_redirects = (long)lua_tointeger(L, -1);
  else if (ft != LUA_TNIL)
    luaL_error(L, "%s: follow_redirects must be a boolean or a count of redirects 0..1000 "
               "(got %s)", fname, luaL_tolstring(L, -1, NULL));
  lua_pop(L, 1);
  int ct = lua_getfield(L, 1, "ca_file");
  if (ct == LUA_TSTRING) o.ca_file = lua_tostring(L, -1);  /* stays on the stack */
  else if (ct != LUA_TNIL)
    luaL_error(L, "%s: ca_file must be a path (got %s)", fname, luaL_typename(L, -1));
  if (mode == M_STREAM) return stream_start(L, R, &o, timeout);

  lbt_task *T = lbt_await_begin(L, R, fname);
  lxfer *x = lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  luaL_setmetatable(L, BT_XFER_MT);
  x->rt = R->rt;
  int rc = bt_http_start(R->rt, &o, on_done, x, &x->r);
  if (rc == BT_EINVAL)
    return luaL_error(L, "%s: url '%s' is not an absolute http:// or https:// URL", fname,
                      o.url);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", fname, bt_strerror(rc));
    lua_pushliteral(L, "nomem");
    return 3;
  }
  lua_copy(L, -1, 2);
  lua_settop(L, 2);
  lbt_fiber *f = lbt_fib(T);
  f->wait.src = x;
  x->waiter = &T->t;
  x->token = bt_task_wait(R->rt, &T->t, &f->wait, xfer_wait_cancel,
                          timeout < 0 ? UINT64_MAX : bt_now(R->rt) + (uint64_t)timeout);
  return lbt_suspend(L, json, request_k);
}

static int lhttp_request(lua_State *L) { return do_request(L, M_REQUEST); }
static int lhttp_json(lua_State *L) { return do_request(L, M_JSON); }
static int lhttp_stream(lua_State *L) { return do_request(L, M_STREAM); }

/* ---- streams ------------------------------------------------------------------------
 *
 * A Stream userdata embeds its state (lstream); the core transfer's events point at it and
 * are stopped (bt_http_free) before the userdata can go. User value 1 is the response head
 * table (status, headers, url, retry_after_ms) read through __index; user value 2 is the
 * server-sent event being assembled by read_event, kept across waits. At most one task waits
 * on a stream; an aborted read leaves the stream open (close it, or let <close> do it).
 * baton.run closes the streams still open when it ends. */

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
  lstream *st = luaL_checkudata(L, 1, BT_STREAM_MT);
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
  push_headers(L, p, len);
  lua_Integer ra = retry_after_ms(L);
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

static int stream_start(lua_State *L, lbt_rt *R, bt_http_opts *o, lua_Integer timeout) {
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
  lua_getfield(L, LUA_REGISTRYINDEX, STREAMS_KEY);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
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
  lstream *st = luaL_checkudata(L, 1, BT_STREAM_MT);
  size_t len = 0;
  if (st->r != NULL) bt_http_peek(st->r, &len);
  lua_pushinteger(L, (lua_Integer)len);
  return 1;
}

static int lstream_close(lua_State *L) {
  stream_close(luaL_checkudata(L, 1, BT_STREAM_MT));
  return 0;
}

static int lstream_gc(lua_State *L) {
  stream_close(lua_touserdata(L, 1));
  return 0;
}

/* Methods first, then the fields of the response head. */
static int lstream_index(lua_State *L) {
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
  lstream *st = luaL_checkudata(L, 1, BT_STREAM_MT);
  if (st->r == NULL) lua_pushliteral(L, "baton.HttpStream (closed)");
  else if (bt_http_finished(st->r))
    lua_pushfstring(L, "baton.HttpStream (status %d, ended)", (int)bt_http_status(st->r));
  else
    lua_pushfstring(L, "baton.HttpStream (status %d, open)", (int)bt_http_status(st->r));
  return 1;
}

/* Closes every stream still open, for baton.run once its main task has ended. Never waits,
 * never raises. */
void lbt_close_streams(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, STREAMS_KEY);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    lstream *st = lua_touserdata(L, -1);
    if (st != NULL && st->r != NULL) stream_close(st);
  }
  lua_pop(L, 1);
}

void lbt_open_http(lua_State *L, int rt_idx) {
  static const luaL_Reg meta[] = {{"__gc", lxfer_gc}, {"__close", lxfer_gc}, {NULL, NULL}};
  static const luaL_Reg none[] = {{NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_XFER_MT, none, meta);
  static const luaL_Reg smethods[] = {
    {"read", lstream_read}, {"read_line", lstream_read_line},
    {"read_event", lstream_read_event}, {"buffered", lstream_buffered},
    {"close", lstream_close}, {NULL, NULL}};
  static const luaL_Reg smeta[] = {
    {"__index", lstream_index}, {"__gc", lstream_gc}, {"__close", lstream_gc},
    {"__tostring", lstream_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_STREAM_MT, smethods, smeta);
  lua_newtable(L);  /* weak-keyed set of streams, for lbt_close_streams */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, STREAMS_KEY);
  lua_newtable(L);
  lua_getfield(L, -2, "json");
  int json = lua_gettop(L);
  lua_CFunction fns[3] = {lhttp_request, lhttp_json, lhttp_stream};
  const char *names[3] = {"request", "json", "stream"};
  for (int i = 0; i < 3; i++) {
    lua_pushvalue(L, rt_idx);
    lua_getfield(L, json, "decode");
    lua_getfield(L, json, "encode");
    lua_pushcclosure(L, fns[i], 3);
    lua_setfield(L, json - 1, names[i]);
  }
  lua_pop(L, 1);
  lua_setfield(L, -2, "http");
}
