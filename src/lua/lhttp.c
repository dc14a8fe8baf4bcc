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
 *     | nil, message, kind, { url = [, timeout_ms =] }   ("timeout", "connect", "too_large",
 *       "tls", "protocol", "io", "resource": out of descriptors or memory)
 *   baton.http.json{ ..., body = value }  — encodes body as JSON (Content-Type and Accept
 *     default to application/json) and decodes a non-empty reply into resp.body, the raw text
 *     in resp.text; a reply that is not JSON → nil, message, "malformed", resp (the detail).
 *   baton.http.stream{ ..., max_event_bytes = (max_body_bytes) } → stream | nil, message,
 *     kind: returns once the head is in; stream.status/.headers/.url;
 *     stream:read/read_line/read_event([ms]) hand the body over as it arrives
 *     (lhttpstream.c).
 * Any status is a response (a 500 is not an error); retry_after_ms is set when the response
 * carries a Retry-After header (seconds or an HTTP date).
 *
 * Errors (docs/errors.md). Raise, as "baton.http.request: bad argument #1 'name' (expected
 * X, got Y)": a bad option, a URL that is not absolute http(s), a header with CR/LF, a JSON
 * body json.encode refuses; and a call outside a task. Return `nil, msg, kind, detail`: the
 * failures above (lbt_http_fail, shared with lhttpstream.c).
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lbaton.h"

#define BT_XFER_MT "baton.HttpTransfer"
#define DEFAULT_MAX_BODY ((lua_Integer)64 << 20)
#define DEFAULT_MAX_HEADER ((lua_Integer)256 << 10)  /* libcurl's own cap is 300 KiB */
#define DEFAULT_REDIRECTS 10

typedef lbt_http_wait lxfer;

static void xfer_free(void *arg) {
  lxfer *x = arg;
  bt_http_free(x->r);
  x->r = NULL;
}

int lbt_http_fail(lua_State *L, const char *fname, const bt_http_req_t *r) {
  const char *kind;
  const char *msg = bt_http_error(r, &kind);
  if (!lbt_is_kind(kind)) kind = "io";
  lua_createtable(L, 0, 1);
  lua_pushstring(L, bt_http_url(r));
  lua_setfield(L, -2, "url");
  return lbt_fail_detail(L, fname, kind, -1, "%s", msg);
}

int lbt_http_timeout(lua_State *L, const char *fname, const char *url, lua_Number ms) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, url);
  lua_setfield(L, -2, "url");
  lua_pushinteger(L, (lua_Integer)ms);
  lua_setfield(L, -2, "timeout_ms");
  return lbt_fail_detail(L, fname, "timeout", -1, "timed out after %.15g ms", (double)ms);
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

/* Core callback, from the loop (or inside libcurl): wake the waiter (it only enqueues). */
void lbt_http_wake(bt_http_req_t *r, void *data) {
  (void)r;
  lbt_http_wait *x = data;
  if (x->waiter != NULL) bt_task_wake(x->rt, x->waiter, x->token, 0);
}

void lbt_http_wait_cancel(bt_wait_t *w) {
  lbt_http_wait *x = w->src;
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
    lbt_field_error(L, fname, 1, "headers", "a table { Name = value }");
  if (t == LUA_TTABLE) {
    int hi = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, hi)) {
      size_t klen = 0, vlen;
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
      int ok = k != NULL && klen > 0;
      for (size_t i = 0; ok && i < klen; i++) ok = is_token_char((unsigned char)k[i]);
      if (!ok)
        lbt_argerror_got(L, fname, 1, "headers", "names that are HTTP tokens",
                         lbt_push_got(L, -2));
      int vt = lua_type(L, -1);
      lua_pushfstring(L, "headers.%s", k);
      const char *name = lua_tostring(L, -1);
      if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
        lbt_argerror_got(L, fname, 1, name, "string", lbt_push_got(L, -2));
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      const char *v = lua_tolstring(L, -1, &vlen);
      if (strlen(v) != vlen || strpbrk(v, "\r\n") != NULL) {
        lua_pushfstring(L, "headers.%s", k);
        const char *got = lbt_push_got(L, -2);
        lbt_argerror_got(L, fname, 1, lua_tostring(L, -2), "a value without CR, LF or NUL", got);
      }
      if (strcasecmp(k, "content-length") == 0 || strcasecmp(k, "transfer-encoding") == 0) {
        /* baton frames the body itself: a length that contradicted it would smuggle the
         * rest of the body to the server as a request of its own */
        const char *field = lua_pushfstring(L, "headers.%s", k);
        const char *got = lbt_push_got(L, -2);
        lbt_argerror_got(L, fname, 1, field, "no such header (baton frames the body itself)", got);
      }
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
  size_t len = 0;
  const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
  int ok = m != NULL && len > 0 && len <= 32;
  char up[33];
  for (size_t i = 0; ok && i < len; i++) {
    ok = isalpha((unsigned char)m[i]);
    up[i] = (char)toupper((unsigned char)m[i]);
  }
  if (!ok) lbt_argerror_got(L, fname, 1, "method", "an HTTP method", lbt_push_got(L, -1));
  up[len] = '\0';
  lua_pop(L, 1);
  lua_pushstring(L, up);  /* stays on the stack until the start */
  return lua_tostring(L, -1);
}

/* An optional number of milliseconds, rounded up; -1 when absent. */
static lua_Integer opt_ms(lua_State *L, const char *fname, const char *key) {
  return (lua_Integer)ceil(lbt_opt_ms(L, fname, 1, key, -1));
}

/* ---- the response ------------------------------------------------------------------- */

/* Pushes the value v..ve of a header line, with the continuation lines that follow it
 * (obs-fold: lines starting with SP or HT) each joined by one space, as RFC 9112 asks of a
 * recipient; *next moves past them. */
static void push_value(lua_State *L, const char *v, const char *ve, const char **next,
                       const char *end) {
  const char *p = *next;
  if (p >= end || (*p != ' ' && *p != '\t')) {
    lua_pushlstring(L, v, (size_t)(ve - v));
    return;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, v, (size_t)(ve - v));
  int any = ve > v;
  while (p < end && (*p == ' ' || *p == '\t')) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *nx = eol ? eol + 1 : end, *s = p, *e = eol ? eol : end;
    while (s < e && (*s == ' ' || *s == '\t')) s++;
    while (e > s && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) e--;
    if (e > s) {
      if (any) luaL_addchar(&b, ' ');
      luaL_addlstring(&b, s, (size_t)(e - s));
      any = 1;
    }
    p = nx;
  }
  luaL_pushresult(&b);
  *next = p;
}

/* Pushes the header lines as a table of lowercase names; repeated headers are joined
 * with ", " (Set-Cookie with "\n", since its values contain commas). The repeats of a name
 * are gathered in a list first and joined once at the end: joined as they came, 52,000
 * repeats of one name (256 KiB of head) cost O(n^2), a second of stalled loop. */
void lbt_http_push_headers(lua_State *L, const char *p, size_t len) {
  lua_newtable(L);
  int t = lua_gettop(L);
  int rep = 0;  /* name -> list of its values, for the names seen more than once */
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
      push_value(L, v, ve, &next, end);  /* name, value */
      lua_pushvalue(L, -2);
      if (lua_rawget(L, t) == LUA_TSTRING) {  /* a repeat (name, value, first): onto its list */
        if (rep == 0) {
          lua_newtable(L);
          lua_insert(L, t + 1);
          rep = t + 1;
        }
        lua_pushvalue(L, -3);
        if (lua_rawget(L, rep) != LUA_TTABLE) {
          lua_pop(L, 1);
          lua_createtable(L, 4, 0);
          lua_pushvalue(L, -2);  /* the first value */
          lua_rawseti(L, -2, 1);
          lua_pushvalue(L, -4);
          lua_pushvalue(L, -2);
          lua_rawset(L, rep);
        }
        lua_pushvalue(L, -3);
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
        lua_pop(L, 4);  /* the list, the first value, the value, the name */
      } else {
        lua_pop(L, 1);
        lua_rawset(L, t);
      }
    }
    p = next;
  }
  if (rep != 0) {  /* each repeated name: its values joined once */
    lua_pushnil(L);
    while (lua_next(L, rep)) {
      const char *sep = strcmp(lua_tostring(L, -2), "set-cookie") == 0 ? "\n" : ", ";
      luaL_Buffer b;
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      int list = lua_gettop(L);
      luaL_buffinit(L, &b);
      for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1) luaL_addstring(&b, sep);
        lua_rawgeti(L, list, i);
        luaL_addvalue(&b);
      }
      luaL_pushresult(&b);
      lua_pushvalue(L, list - 1);  /* the name */
      lua_insert(L, -2);
      lua_rawset(L, t);
      lua_pop(L, 1);  /* the list */
    }
    lua_remove(L, rep);
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

void lbt_http_push_head(lua_State *L, const bt_http_req_t *r) {
  lua_createtable(L, 0, 6);
  int t = lua_gettop(L);
  lua_pushinteger(L, bt_http_status(r));
  lua_setfield(L, t, "status");
  size_t len;
  const char *p = bt_http_headers(r, &len);
  lbt_http_push_headers(L, p, len);
  lua_Integer ra = lbt_http_retry_after(L);
  lua_setfield(L, t, "headers");
  if (ra >= 0) {
    lua_pushinteger(L, ra);
    lua_setfield(L, t, "retry_after_ms");
  }
  lua_pushstring(L, bt_http_url(r));
  lua_setfield(L, t, "url");
}

/* Stack in the continuation: 1 = options, 2 = the Transfer userdata, 3 = timeout_ms. */
static int request_k(lua_State *L, int status, lua_KContext json) {
  (void)status;
  const char *fname = json ? "baton.http.json" : "baton.http.request";
  lxfer *x = lua_touserdata(L, 2);
  int s = lbt_resumed_free(L, NULL, xfer_free, x);
  if (s != 0) {  /* the deadline, or the wait itself failed (no memory for its timer) */
    lua_getfield(L, 1, "url");
    int n = s == BT_ETIMEDOUT ? lbt_http_timeout(L, fname, lua_tostring(L, -1), lua_tonumber(L, 3))
                              : lbt_fail_status(L, fname, s);
    xfer_free(x);
    return n;
  }
  bt_http_req_t *r = x->r;
  if (bt_http_result(r) != 0) {
    int n = lbt_http_fail(L, fname, r);
    xfer_free(x);
    return n;
  }
  lbt_http_push_head(L, r);
  int resp = lua_gettop(L);
  size_t len;
  const char *p = bt_http_body(r, &len);
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
    const char *why = lua_tostring(L, -2);
    if (strncmp(why, "baton.json.decode: ", 19) == 0) why += 19;
    return lbt_fail_detail(L, fname, "malformed", resp, "the reply (status %d) is not JSON: %s",
                           (int)lua_tointeger(L, -1), why);
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
  static const char *const known[] = {"url", "method", "headers", "body", "timeout_ms",
                                      "connect_timeout_ms", "max_body_bytes",
                                      "max_header_bytes", "follow_redirects", "ca_file",
                                      NULL};
  static const char *const known_stream[] = {"url", "method", "headers", "body", "timeout_ms",
                                             "connect_timeout_ms", "max_body_bytes",
                                             "max_header_bytes", "follow_redirects",
                                             "ca_file", "max_event_bytes", NULL};
  lbt_check_opts(L, fname, 1, "opts", mode == M_STREAM ? known_stream : known);
  lua_settop(L, 1);
  bt_http_opts o;
  memset(&o, 0, sizeof o);
  size_t ulen;
  if (lua_getfield(L, 1, "url") != LUA_TSTRING) lbt_field_error(L, fname, 1, "url", "string");
  o.url = lua_tolstring(L, -1, &ulen);  /* stays on the stack: an __index may have made it */
  if (strlen(o.url) != ulen) lbt_field_error(L, fname, 1, "url", "a URL without NUL bytes");
  o.method = check_method(L, fname);
  int bt = lua_getfield(L, 1, "body");
  if (json && bt != LUA_TNIL) {
    lua_pushvalue(L, lua_upvalueindex(3));  /* baton.json.encode */
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {  /* blamed on the body option */
      const char *e = lua_tostring(L, -1), *p = e ? strstr(e, "bad argument #1 'v' (") : NULL;
      if (p == NULL) return lua_error(L);
      return luaL_error(L, "%s: bad argument #1 'body' (%s", fname, p + 21);
    }
    bt = LUA_TSTRING;
  }
  if (bt != LUA_TNIL && bt != LUA_TSTRING) lbt_field_error(L, fname, 1, "body", "string");
  if (bt == LUA_TSTRING) o.body = lua_tolstring(L, -1, &o.body_len);  /* stays on the stack */
  o.headers = check_headers(L, fname, json, o.body != NULL);
  lua_Integer timeout = opt_ms(L, fname, "timeout_ms");
  lua_Integer connect = opt_ms(L, fname, "connect_timeout_ms");
  o.connect_timeout_ms = connect < 0 ? 0 : (connect == 0 ? 1 : (uint64_t)connect);
  o.max_body_bytes = (size_t)lbt_opt_count(L, fname, 1, "max_body_bytes", 0, DEFAULT_MAX_BODY);
  o.max_header_bytes =
    (size_t)lbt_opt_count(L, fname, 1, "max_header_bytes", 0, DEFAULT_MAX_HEADER);
  int ft = lua_getfield(L, 1, "follow_redirects");
  lua_Integer hops = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : -1;
  if (ft == LUA_TBOOLEAN) o.max_redirects = lua_toboolean(L, -1) ? DEFAULT_REDIRECTS : 0;
  else if (hops >= 0 && hops <= 1000) o.max_redirects = (long)hops;
  else if (ft != LUA_TNIL)
    lbt_field_error(L, fname, 1, "follow_redirects", "boolean or integer 0..1000");
  lua_pop(L, 1);
  int ct = lua_getfield(L, 1, "ca_file");
  if (ct == LUA_TSTRING) o.ca_file = lua_tostring(L, -1);  /* stays on the stack */
  else if (ct != LUA_TNIL) lbt_field_error(L, fname, 1, "ca_file", "a path");
  if (mode == M_STREAM) return lbt_http_stream_start(L, R, &o, timeout);

  lbt_task *T = lbt_await_begin(L, R, fname);
  lxfer *x = lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  luaL_setmetatable(L, BT_XFER_MT);
  x->rt = R->rt;
  int rc = bt_http_start(R->rt, &o, lbt_http_wake, x, &x->r);
  if (rc == BT_EINVAL)
    return lbt_field_error(L, fname, 1, "url", "an absolute http:// or https:// URL");
  if (rc != 0) return lbt_fail_status(L, fname, rc);
  lua_copy(L, -1, 2);
  lua_settop(L, 2);
  if (timeout >= 0) lua_pushinteger(L, timeout);  /* 3: for the timeout's message */
  lbt_fiber *f = lbt_fib(T);
  f->wait.src = x;
  x->waiter = &T->t;
  x->token = bt_task_wait(R->rt, &T->t, &f->wait, lbt_http_wait_cancel,
                          timeout < 0 ? UINT64_MAX : bt_due(R->rt, (uint64_t)timeout));
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
  lbt_open_loopback(L);  /* baton.http._loopback (lloopback.c), for baton.mcp's OAuth */
  lua_setfield(L, -2, "http");
}
