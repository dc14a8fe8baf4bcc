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
 *                             "resource": out of descriptors, "nomem")
 *   baton.http.json{ ..., body = value }  — encodes body as JSON (Content-Type and Accept
 *     default to application/json) and decodes a non-empty reply into resp.body, the raw text
 *     in resp.text; a reply that is not JSON → nil, message, "malformed", resp.
 *   baton.http.stream{ ..., max_event_bytes = (max_body_bytes) } → stream | nil, message,
 *     kind: returns once the head is in; stream.status/.headers/.url;
 *     stream:read/read_line/read_event([ms]) hand the body over as it arrives
 *     (lhttpstream.c).
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

/* __gc and __close. A request still waiting on it (the transfer finalized by hand) is
 * woken with BT_ECLOSED and returns nil, message, "closed". */
static int lxfer_gc(lua_State *L) {
  lxfer *x = lbt_check_type(L, 1, LBT_HTTP_XFER);
  if (x->waiter != NULL && x->r != NULL && !lbt_R(L)->closed)
    bt_task_wake(x->rt, x->waiter, x->token, BT_ECLOSED);
  xfer_free(x);
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
void lbt_http_push_headers(lua_State *L, const char *p, size_t len) {
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
lua_Integer lbt_http_retry_after(lua_State *L) {
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
  lbt_http_push_headers(L, p, len);
  lua_Integer ra = lbt_http_retry_after(L);
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
  static const char *const known_stream[] = {"url", "method", "headers", "body", "timeout_ms",
                                             "connect_timeout_ms", "max_body_bytes",
                                             "max_header_bytes", "follow_redirects",
                                             "ca_file", "max_event_bytes", NULL};
  lbt_check_fields(L, 1, fname, mode == M_STREAM ? known_stream : known);
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
  if (mode == M_STREAM) return lbt_http_stream_start(L, R, &o, timeout);

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

void lbt_open_http(lua_State *L, int rt_idx) {
  static const luaL_Reg meta[] = {{"__gc", lxfer_gc}, {"__close", lxfer_gc}, {NULL, NULL}};
  static const luaL_Reg none[] = {{NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_XFER_MT, none, meta);
  lbt_open_http_stream(L, rt_idx);
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
