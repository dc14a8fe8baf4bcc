/*
 * lredis.c — baton.redis: a Redis client on hiredis's async API, driven by the runtime's
 * loop the way libcurl is (src/core/http.c): hiredis asks for read/write interest through
 * its ev hooks, which start and stop one uv_poll_t on the connection's socket; the poll's
 * events call redisAsyncHandleRead/Write. Deadlines are the waits' own (bt_task_wait's due,
 * on the timer heap); hiredis keeps no timer of its own.
 *
 * API (docs/redis.md):
 *   baton.redis.connect{ url = "redis://[[user]:password@]host[:port][/db]" | path =,
 *                        password =, db =, timeout_ms =, reconnect = false }
 *     → client | nil, msg, kind   (reconnect: a call on a lost connection opens a new one,
 *       with a backoff of 50 ms doubling to 5 s after failed tries; a host name is resolved
 *       on the thread pool first, see "resolving" below)
 *   client:call(cmd, ...) → reply | nil (a Redis nil reply: no second value)
 *                         | nil, msg, kind   (redis, timeout, closed, io, protocol, resource)
 *   client:pipeline(function(p) p:call(cmd, ...) ... end) → { reply... } | nil, msg, kind
 *     (the commands go out together; in the list a nil reply is false and an error reply a
 *     baton.Error { kind = "redis" }; a failure of the connection fails the whole)
 *   client:eval(script, keys, args) → as call: EVALSHA, with SCRIPT LOAD on first use and on
 *     NOSCRIPT (the Lua at eval_lua)
 *   client:subscribe(channel, ...) → subscription (its own connection) | nil, msg, kind;
 *     subscription:next([ms]) → payload, channel | nil, msg, kind; :close(); :dropped()
 *   client:duplicate() → a new client to the same server, set up the same way (a connection
 *     of its own, for blocking commands) | nil, msg, kind
 *   client:close(), <close>, __gc; client:closed()
 *
 * Ownership. A client userdata (lredis) owns the hiredis context (`ac`, NULL once hiredis
 * freed it: on close, or on its own when the connection failed) and, through the ev hooks,
 * one heap-allocated uv_poll_t, closed by the cleanup hook and freed by its close callback
 * (it may outlive the userdata by a loop turn). Each command in flight has a request record
 * (lrreq) shared by two owners: hiredis (the reply callback's privdata) and the calling
 * task's Call userdata (on its stack for the whole await). Whichever lets go second frees
 * it: so a call aborted or timed out while in flight leaves its record to hiredis, whose
 * reply callback later frees the record and the reply without touching the task, and
 * pipelining keeps its order (the command stays in hiredis's queue).
 *
 * No Lua runs inside a hiredis callback: the callbacks copy the reply (hiredis frees its
 * own when the callback returns) and wake the task, so hiredis is never re-entered.
 *
 * The poll handle is referenced (keeps the loop alive) only while a task waits for a reply:
 * an idle client, or one whose only calls in flight were abandoned (timed out, aborted),
 * does not keep baton.run from finding a deadlock or from ending.
 *
 * A hostile server. hiredis 0.14 asserts (aborts the process) on a reply no command waits
 * for outside subscribed mode, and on a pub/sub message of the wrong shape; and it builds an
 * announced array of a billion elements, then frees it slot by slot. The reader's object
 * hooks (reader_*) see each value as it is parsed, before hiredis dispatches it: they refuse
 * those, and replies past REPLY_MAX_ELEMENTS elements or REPLY_MAX_BYTES bytes, which fails
 * the connection with kind "protocol" naming what came. Commands that change the
 * connection's mode (SUBSCRIBE, MONITOR, ...) are refused by call and pipeline: only
 * client:subscribe makes a subscribed connection.
 *
 * Errors (docs/errors.md): misuse raises ("baton.redis:call: bad argument #1 'cmd' ...",
 * use after close); failures of the world return nil, message, kind.
 */
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lbaton.h"

#define REDIS_KEY "baton.redis.clients"  /* registry: weak set of open clients */
#define MSG_MAX 200
#define REPLY_MAX_ELEMENTS ((long long)1 << 24)  /* in one array */
#define REPLY_MAX_BYTES ((size_t)512 << 20)      /* in one reply: Redis's own bulk limit */

/* Where a client connects, and how it sets the connection up (kept for reconnecting). */
typedef struct target {
  char host[256];
  int port;
  char path[108];           /* a unix socket, or "" */
  char user[128], pass[256];
  int has_user, has_pass;
  lua_Integer db;
} target;

#define BACKOFF_MIN 50      /* ms: the first wait after a failed reconnect */
#define BACKOFF_MAX 5000    /* ms: doubling up to this */

typedef struct lredis {
  struct lredis *h;          /* handle: self while open, NULL once closed by the user */
  redisAsyncContext *ac;     /* NULL once hiredis freed it */
  uv_poll_t *poll;           /* NULL once closed (the cleanup hook) */
  bt_rt_t *rt;
  int events;                /* UV_READABLE | UV_WRITABLE wanted by hiredis */
  int applied;               /* the events the poll handle watches now */
  int hold;                  /* > 0: a call is sending; the poll is updated when it is done */
  int quiet;                 /* the state is closing: wake nobody */
  size_t inflight;           /* commands whose reply callback has not run */
  size_t waiting;            /* tasks waiting for a reply (or a message): the poll's ref */
  const redisReplyObjectFunctions *base;  /* hiredis's own reader hooks */
  redisReplyObjectFunctions hooks;        /* reader_*: checks, then base */
  size_t reply_bytes;        /* of the reply being read */
  int sub_shape;             /* the reply being read is a pub/sub message: its shape checked */
  int refused;               /* the reader refused a reply: why[] says what came */
  int is_sub;                /* the connection of a subscription (lsub) */
  char why[MSG_MAX];
  lua_Integer timeout_ms;    /* per call, -1: none */
  const char *kind;          /* why ac went away (copied at cleanup) */
  char msg[MSG_MAX];
  int reconnect;             /* a call on a lost connection opens a new one */
  uint64_t next_try;         /* not before this (bt_now): the backoff after a failed try */
  uint64_t backoff;          /* ms, 0 after a success */
  target t;
} lredis;
LBT_HANDLE_FIRST(lredis, h);

typedef struct lrreq {
  bt_rt_t *rt;
  struct lredis *c;          /* while a task waits and the reply has not come: counted in
                              * c->waiting (NULL once either ends) */
  bt_task_t *waiter;         /* NULL when nobody waits (cancelled, or not yet) */
  uint32_t token;
  unsigned done : 1;         /* the reply callback ran */
  unsigned gone : 1;         /* the Call userdata let go */
  redisReply *reply;         /* owned once done; NULL: failed (kind, msg) */
  const char *kind;
  char msg[MSG_MAX];
} lrreq;

typedef struct lcall { lrreq *q; } lcall;

/* hiredis 0.14 frees a reply once its callback returns: the callback keeps a copy, in the
 * same layout, allocated and freed here. */
static void reply_free(redisReply *r) {
  if (r == NULL) return;
  if (r->element != NULL)
    for (size_t i = 0; i < r->elements; i++) reply_free(r->element[i]);
  free(r->element);
  free(r->str);
  free(r);
}

static redisReply *reply_dup(const redisReply *r) {
  redisReply *d = calloc(1, sizeof *d);
  if (d == NULL) return NULL;
  d->type = r->type;
  d->integer = r->integer;
  if (r->str != NULL) {
    d->str = malloc(r->len + 1);
    if (d->str == NULL) goto fail;
    memcpy(d->str, r->str, r->len);
    d->str[r->len] = 0;
    d->len = r->len;
  }
  if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
    d->element = calloc(r->elements, sizeof *d->element);
    if (d->element == NULL) goto fail;
    d->elements = r->elements;
    for (size_t i = 0; i < r->elements; i++)
      if ((d->element[i] = reply_dup(r->element[i])) == NULL) goto fail;
  }
  return d;
fail:
  reply_free(d);
  return NULL;
}

static void req_free(lrreq *q) {
  reply_free(q->reply);
  free(q);
}

/* ---- hiredis's event hooks ------------------------------------------------------------ */

static void poll_closed(uv_handle_t *h) { free(h); }

static void on_poll(uv_poll_t *p, int status, int events) {
  lredis *c = p->data;
  if (status < 0) events = UV_READABLE;  /* hiredis's read reports the socket's error */
  if (c->ac != NULL && (events & UV_WRITABLE)) redisAsyncHandleWrite(c->ac);
  if (c->ac != NULL && (events & UV_READABLE)) redisAsyncHandleRead(c->ac);
}

static void update_ref(lredis *c) {
  if (c->poll == NULL) return;
  if (c->waiting > 0) uv_ref((uv_handle_t *)c->poll);
  else uv_unref((uv_handle_t *)c->poll);
}

/* Points the poll handle at the events hiredis wants. libuv's uv_poll_start takes the fd
 * out of epoll and puts it back (two epoll_ctl calls, more costly than the round trip's
 * own read and write here), so a call that sends at once does not touch the poll: hiredis
 * asks for WRITABLE and, once flush_early wrote, no longer; with `hold` the two cancel out
 * and only what is left when the call is done reaches the poll. */
static void apply_events(lredis *c) {
  if (c->poll == NULL || c->events == c->applied) return;
  c->applied = c->events;
  if (c->events == 0) uv_poll_stop(c->poll);
  else uv_poll_start(c->poll, c->events, on_poll);
}

static void set_events(lredis *c, int events) {
  c->events = events;
  if (c->hold == 0) apply_events(c);
}

static void ev_add_read(void *d) { lredis *c = d; set_events(c, c->events | UV_READABLE); }
static void ev_del_read(void *d) { lredis *c = d; set_events(c, c->events & ~UV_READABLE); }
static void ev_add_write(void *d) { lredis *c = d; set_events(c, c->events | UV_WRITABLE); }
static void ev_del_write(void *d) { lredis *c = d; set_events(c, c->events & ~UV_WRITABLE); }

/* The kind of the context's error (it is still readable in the hooks and callbacks). */
static const char *err_kind(const redisAsyncContext *ac) {
  const lredis *c = ac->data;
  if (c != NULL && c->refused) return "protocol";
  switch (ac->err) {
  case 0: return "closed";  /* freed by the user */
  case REDIS_ERR_EOF: return "closed";
  case REDIS_ERR_PROTOCOL: return "protocol";
  case REDIS_ERR_OOM: return "resource";
  default: return (ac->c.flags & REDIS_CONNECTED) ? "io" : "connect";
  }
}

static void err_msg(const redisAsyncContext *ac, char *buf) {
  const lredis *c = ac->data;
  if (c != NULL && c->refused) {
    snprintf(buf, MSG_MAX, "%s", c->why);
    return;
  }
  snprintf(buf, MSG_MAX, "%s",
           ac->err == 0 ? "connection closed"
           : ac->err == REDIS_ERR_EOF ? "connection closed by the server"
           : ac->errstr[0] ? ac->errstr : "connection failed");
}

static void sub_lost(lredis *c);

/* hiredis is freeing the context (after every pending callback ran with a NULL reply). */
static void ev_cleanup(void *d) {
  lredis *c = d;
  if (c->ac != NULL) {
    c->kind = err_kind(c->ac);
    err_msg(c->ac, c->msg);
  }
  c->ac = NULL;
  if (c->is_sub) sub_lost(c);
  if (c->poll != NULL) {
    uv_close((uv_handle_t *)c->poll, poll_closed);
    c->poll = NULL;
  }
}

/* A reply, or NULL when the context is going away. Only stores and wakes. */
static void on_reply(redisAsyncContext *ac, void *r, void *privdata) {
  lrreq *q = privdata;
  lredis *c = ac->data;
  q->done = 1;
  if (c->inflight > 0) c->inflight--;
  if (q->c != NULL) {  /* its waiter is woken below: it no longer holds the loop */
    q->c = NULL;
    c->waiting--;
    update_ref(c);
  }
  if (q->gone) {
    free(q);  /* nobody waits: the reply is dropped (hiredis frees it) */
    return;
  }
  if (r == NULL) {
    q->kind = err_kind(ac);
    err_msg(ac, q->msg);
  } else if ((q->reply = reply_dup(r)) == NULL) {
    q->kind = "resource";
    snprintf(q->msg, MSG_MAX, "out of memory for the reply");
  }
  if (q->waiter != NULL && !c->quiet) bt_task_wake(q->rt, q->waiter, q->token, 0);
}

static void wait_cancel(bt_wait_t *w) {
  lrreq *q = w->src;
  q->waiter = NULL;
  if (q->c != NULL) {  /* timed out or aborted before the reply: it no longer holds the loop */
    q->c->waiting--;
    update_ref(q->c);
    q->c = NULL;
  }
}

/* The calling task waits for q's reply until `due`. */
static void wait_reply(lbt_rt *R, lredis *c, lrreq *q, lbt_task *T, uint64_t due) {
  lbt_fiber *f = lbt_fib(T);
  f->wait.src = q;
  q->waiter = &T->t;
  q->c = c;
  c->waiting++;
  update_ref(c);
  q->token = bt_task_wait(R->rt, &T->t, &f->wait, wait_cancel, due);
}

/* The Call userdata lets go of its record (continuation, cancellation, __gc). */
static void call_release(void *arg) {
  lcall *k = arg;
  lrreq *q = k->q;
  if (q == NULL) return;
  k->q = NULL;
  q->waiter = NULL;
  if (q->done) req_free(q);
  else q->gone = 1;
}

static int lcall_gc(lua_State *L) {
  call_release(lbt_check_type(L, 1, LBT_REDIS_CALL));
  return 0;
}

/* ---- closing ---------------------------------------------------------------------------- */

/* Frees the hiredis context: every command in flight fails with "closed". */
static void client_drop(lredis *c) {
  if (c->ac != NULL) redisAsyncFree(c->ac);  /* runs the callbacks, then ev_cleanup */
  c->ac = NULL;
}

static int lredis_close(lua_State *L) {
  lredis *c = lbt_check_type(L, 1, LBT_REDIS);
  if (c->h != NULL) lbt_handle_clear(L, c, LBT_REDIS);
  c->h = NULL;
  if (lbt_R(L)->closed) c->quiet = 1;
  client_drop(c);
  return 0;
}

static int lredis_closed(lua_State *L) {
  lredis *c = lbt_check_type(L, 1, LBT_REDIS);
  lua_pushboolean(L, c->h == NULL || c->ac == NULL);
  return 1;
}

static void close_one(void *ud) {
  lredis *c = ud;
  c->h = NULL;
  client_drop(c);
}

/* baton.run's end: every client still open is closed (never waits, never raises). */
void lbt_close_redis(lua_State *L) { lbt_weak_set_each(L, REDIS_KEY, close_one); }

/* ---- replies ------------------------------------------------------------------------------ */

static void push_reply(lua_State *L, const redisReply *r, int top) {
  luaL_checkstack(L, 4, "baton.redis: reply nested too deep");
  switch (r->type) {
  case REDIS_REPLY_STRING: case REDIS_REPLY_STATUS:
    lua_pushlstring(L, r->str, r->len);
    break;
  case REDIS_REPLY_INTEGER:
    lua_pushinteger(L, (lua_Integer)r->integer);
    break;
  case REDIS_REPLY_NIL:
    if (top) lua_pushnil(L);
    else lua_pushboolean(L, 0);  /* a nil inside an array: a table cannot hold nil */
    break;
  case REDIS_REPLY_ERROR:  /* inside an array (EXEC): an error value, not a failure */
    lua_pushlstring(L, r->str, r->len);
    lbt_push_error_detail(L, "redis", lua_tostring(L, -1), 0);
    lua_remove(L, -2);
    break;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, (int)r->elements, 0);
    for (size_t i = 0; i < r->elements; i++) {
      push_reply(L, r->element[i], 0);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  default:
    lua_pushnil(L);
  }
}

/* ---- calls ------------------------------------------------------------------------------- */

/* Sends argv (strings on the stack from `first` to the top) with a new request record,
 * which the Call userdata pushed on top holds. Returns 0, or the kind of the failure. */
/* Writes v's digits at p; returns the end. */
static char *put_u64(char *p, unsigned long long v) {
  char t[24];
  int n = 0;
  do t[n++] = (char)('0' + v % 10); while ((v /= 10) != 0);
  while (n > 0) *p++ = t[--n];
  return p;
}

/* The text of the number at idx into b (at least 32 bytes); its length. Integers, and
 * floats with an integer's value but 0, as digits; other floats with 17 significant
 * digits, which read back the same. */
static size_t number_text(lua_State *L, int idx, char *b) {
  lua_Integer iv;
  int isint = lua_isinteger(L, idx);
  lua_Number v = lua_tonumber(L, idx);
  if (isint) iv = lua_tointeger(L, idx);
  if (isint || (v != 0 && v == floor(v) && lua_numbertointeger(v, &iv))) {
    char *p = b;
    unsigned long long u = (unsigned long long)iv;
    if (iv < 0) {
      *p++ = '-';
      u = 0 - u;
    }
    return (size_t)(put_u64(p, u) - b);
  }
  return (size_t)snprintf(b, 32, "%.17g", (double)v);
}

/* Sends the command at first..top (strings and numbers: check_args) as RESP, written here
 * in one pass (hiredis's own formatting went through sdscatfmt and a Lua string per
 * number: a quarter of a call's instructions), and pushes its Call. */
static const char *send_argv(lua_State *L, lredis *c, int first, lrreq **qp) {
  int top = lua_gettop(L), argc = top - first + 1;
  size_t need = 16;
  for (int i = first; i <= top; i++)
    need += 32 + (lua_type(L, i) == LUA_TNUMBER ? 32 : lua_rawlen(L, i));  /* "$len\r\n" "\r\n" */
  char stackbuf[1024];
  char *buf = need <= sizeof stackbuf ? stackbuf : malloc(need);
  if (buf == NULL) return "resource";
  char *p = buf;
  *p++ = '*';
  p = put_u64(p, (unsigned long long)argc);
  *p++ = '\r', *p++ = '\n';
  for (int i = first; i <= top; i++) {
    char num[32];
    size_t len;
    const char *a;
    if (lua_type(L, i) == LUA_TNUMBER) {
      len = number_text(L, i, num);
      a = num;
    } else {
      a = lua_tolstring(L, i, &len);
    }
    *p++ = '$';
    p = put_u64(p, (unsigned long long)len);
    *p++ = '\r', *p++ = '\n';
    memcpy(p, a, len);
    p += len;
    *p++ = '\r', *p++ = '\n';
  }
  lcall *k = lua_newuserdatauv(L, sizeof *k, 0);
  k->q = NULL;
  lbt_set_class(L, LBT_REDIS_CALL);
  lrreq *q = calloc(1, sizeof *q);
  int rc = q == NULL ? REDIS_ERR : redisAsyncFormattedCommand(c->ac, on_reply, q, buf, (size_t)(p - buf));
  if (buf != stackbuf) free(buf);
  if (q == NULL) return "resource";
  if (rc != REDIS_OK) {
    free(q);
    return "closed";
  }
  q->rt = c->rt;
  k->q = q;
  c->inflight++;
  *qp = q;
  return NULL;
}

static int call_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  const char *fname = "baton.redis:call";
  lcall *k = lua_touserdata(L, -1);
  int s = lbt_resumed_free(L, NULL, call_release, k);
  lredis *c = lua_touserdata(L, 1);
  lrreq *q = k->q;
  if (s == BT_ETIMEDOUT) {
    call_release(k);
    return lbt_fail_timeout(L, fname, (lua_Number)c->timeout_ms);
  }
  if (s != 0 || q == NULL || !q->done) {
    call_release(k);
    return lbt_fail_status(L, fname, s != 0 ? s : BT_ECLOSED);
  }
  const redisReply *r = q->reply;
  int n;
  if (r == NULL) {
    n = lbt_fail(L, fname, q->msg, q->kind);
  } else if (r->type == REDIS_REPLY_ERROR) {
    n = lbt_fail(L, fname, r->str, "redis");
  } else {
    push_reply(L, r, 1);
    n = 1;
  }
  call_release(k);
  return n;
}

static int client_ensure(lua_State *L, const char *fname, lredis *c);

/* When a command goes out. hiredis buffers it until the poll reports the socket writable,
 * a turn of the loop later: that batches the commands of many tasks into one write, but
 * costs a lone call a turn of the loop, and a big batch (64 tasks woken by one read, each
 * sending its next command) keeps the server idle while this process makes the whole of
 * it. So the buffer goes out at once when the command is the only one in flight (nothing
 * to batch it with: the round trip starts now), and when FLUSH_EARLY bytes wait (the server
 * starts on them while the rest are made). Called once the caller's wait is registered: a
 * write that fails wakes it through on_reply like any failure (the context may be gone
 * afterwards). */
#define FLUSH_EARLY 2048
static void flush_early(lredis *c) {
  redisAsyncContext *ac = c->ac;
  if (ac != NULL && (ac->c.flags & REDIS_CONNECTED) &&
      (c->inflight == 1 || sdslen(ac->c.obuf) >= FLUSH_EARLY))
    redisAsyncHandleWrite(ac);
}

/* Checks a command's arguments at first..top: cmd a string, the rest strings or numbers
 * (send_argv writes the numbers as text). */
static void check_args(lua_State *L, const char *fname, int first, int top) {
  if (top < first || lua_type(L, first) != LUA_TSTRING)
    lbt_argerror(L, fname, first, "cmd", "string");
  static const char *const modes[] = {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE",
                                      "PUNSUBSCRIBE", "SUNSUBSCRIBE", "MONITOR", NULL};
  const char *cmd = lua_tostring(L, first);
  if (strchr("SsUuPpMm", cmd[0]) != NULL && cmd[0] != '\0')  /* what the names begin with */
    for (int i = 0; modes[i] != NULL; i++)
      if (strcasecmp(cmd, modes[i]) == 0)
        luaL_error(L, "%s: %s changes the connection's mode: use client:subscribe(channel, ...) "
                   "for pub/sub (a connection of its own)", fname, modes[i]);
  for (int i = first + 1; i <= top; i++) {
    int t = lua_type(L, i);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      lbt_argerror(L, fname, i, "arg", "string or number");
  }
}

static int lredis_call(lua_State *L) {
  static const char fname[] = "baton.redis:call";
  lbt_rt *R = lbt_R(L);
  lredis *c = lbt_check_handle(L, 1, LBT_REDIS);
  check_args(L, fname, 2, lua_gettop(L));
  lbt_task *T = lbt_await_begin(L, R, fname);
  int nf = client_ensure(L, fname, c);
  if (nf > 0) return nf;
  lrreq *q = NULL;
  c->hold++;
  const char *kind = send_argv(L, c, 2, &q);
  if (kind != NULL) {
    c->hold--;
    apply_events(c);
    return lbt_fail(L, fname, kind[0] == 'r' ? "out of memory" : "connection closed", kind);
  }
  lua_replace(L, 2);
  lua_settop(L, 2);
  wait_reply(R, c, q, T, c->timeout_ms < 0 ? UINT64_MAX : bt_due(R->rt, (uint64_t)c->timeout_ms));
  flush_early(c);
  c->hold--;
  apply_events(c);
  return lbt_suspend(L, 0, call_k);
}

/* ---- pipelines ---------------------------------------------------------------------------- */

/* p:call(cmd, ...) inside r:pipeline's function: checks and queues (upvalue 2: the list). */
static int lpipe_call(lua_State *L) {
  static const char fname[] = "baton.redis.pipe:call";
  if (!lua_istable(L, 1)) lbt_argerror(L, fname, 1, "self", "the pipe");
  lua_pushvalue(L, lua_upvalueindex(2));
  if (lua_toboolean(L, lua_upvalueindex(3)) || lua_isnil(L, -1))
    return luaL_error(L, "%s: the pipeline was already sent", fname);
  lua_pop(L, 1);
  int top = lua_gettop(L);
  check_args(L, fname, 2, top);
  lua_createtable(L, top - 1, 0);
  for (int i = 2; i <= top; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i - 1);
  }
  lua_rawseti(L, lua_upvalueindex(2), (lua_Integer)lua_rawlen(L, lua_upvalueindex(2)) + 1);
  return 0;
}

/* Stack in pipeline_k: 1 = client, 2 = the Calls (a sequence), 3 = results, 4 = due (-1:
 * none); ctx = the index of the Call waited on. The replies come in order, so it waits on
 * each in turn; most are in by the time the first is. */
static int pipeline_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  static const char fname[] = "baton.redis:pipeline";
  lbt_rt *R = lbt_R(L);
  lredis *c = lua_touserdata(L, 1);
  lua_Integer i = (lua_Integer)ctx, n = (lua_Integer)lua_rawlen(L, 2);
  if (i > 0) {  /* resumed: the records are left to their Call userdata's __gc on failure */
    int s = lbt_resumed(L, NULL, NULL, NULL);
    if (s == BT_ETIMEDOUT) return lbt_fail_timeout(L, fname, (lua_Number)c->timeout_ms);
    if (s != 0) return lbt_fail_status(L, fname, s);
  } else {
    i = 1;
  }
  for (; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    lcall *k = lua_touserdata(L, -1);
    lua_pop(L, 1);
    lrreq *q = k->q;
    if (q == NULL) return lbt_fail(L, fname, "connection closed", "closed");
    if (!q->done) {
      lua_Integer due = lua_tointeger(L, 4);
      if (due >= 0 && (uint64_t)due <= bt_now(R->rt))
        return lbt_fail_timeout(L, fname, (lua_Number)c->timeout_ms);
      wait_reply(R, c, q, lbt_current(R), due < 0 ? UINT64_MAX : (uint64_t)due);
      return lbt_suspend(L, (lua_KContext)i, pipeline_k);
    }
    if (q->reply == NULL) return lbt_fail(L, fname, q->msg, q->kind);
    push_reply(L, q->reply, 0);  /* a nil reply is false, an error reply a baton.Error */
    lua_rawseti(L, 3, i);
    call_release(k);
  }
  lua_settop(L, 3);
  return 1;
}

static int lredis_pipeline(lua_State *L) {
  static const char fname[] = "baton.redis:pipeline";
  lbt_rt *R = lbt_R(L);
  lredis *c = lbt_check_handle(L, 1, LBT_REDIS);
  lbt_arg_function(L, fname, 2, "fn");
  lua_settop(L, 2);
  lua_newtable(L);  /* 3: the queued commands */
  lua_newtable(L);  /* 4: the pipe */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 3);
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, lpipe_call, 3);
  lua_setfield(L, 4, "call");
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 4);
  lua_call(L, 1, 0);  /* fn(p) only queues: it must not wait */
  /* p:call after the function returned raises: a fresh closure with the "sent" flag */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushnil(L);
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, lpipe_call, 3);
  lua_setfield(L, 4, "call");
  lbt_await_begin(L, R, fname);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 3);
  lua_createtable(L, (int)n, 0);  /* 5: the Calls */
  if (n > 0) {
    int nf = client_ensure(L, fname, c);
    if (nf > 0) return nf;
  }
  for (lua_Integer i = 1; i <= n; i++) {
    int base = lua_gettop(L);
    lua_rawgeti(L, 3, i);
    lua_Integer argc = (lua_Integer)lua_rawlen(L, -1);
    luaL_checkstack(L, (int)argc + 4, fname);
    for (lua_Integer j = 1; j <= argc; j++) lua_rawgeti(L, base + 1, j);
    lrreq *q = NULL;
    const char *kind = c->ac == NULL ? "closed" : send_argv(L, c, base + 2, &q);
    if (kind != NULL)
      return lbt_fail(L, fname, kind[0] == 'r' ? "out of memory" : "connection closed", kind);
    lua_rawseti(L, 5, i);
    lua_settop(L, base);
  }
  lua_pushvalue(L, 5);
  lua_replace(L, 2);
  lua_newtable(L);
  lua_replace(L, 3);
  lua_pushinteger(L, c->timeout_ms < 0 ? -1 : (lua_Integer)(bt_due(R->rt, (uint64_t)c->timeout_ms)));
  lua_replace(L, 4);
  lua_settop(L, 4);
  return pipeline_k(L, LUA_OK, 0);
}

/* ---- connect ----------------------------------------------------------------------------- */

/* redis://[[user]:password@]host[:port][/db] */
static int parse_url(const char *u, target *t) {
  if (strncmp(u, "redis://", 8) != 0) return -1;
  const char *p = u + 8, *at = strrchr(p, '@');
  if (at != NULL) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (colon == NULL) return -1;
    size_t ul = (size_t)(colon - p), pl = (size_t)(at - colon - 1);
    if (ul >= sizeof t->user || pl >= sizeof t->pass) return -1;
    memcpy(t->user, p, ul);
    t->user[ul] = 0;
    t->has_user = ul > 0;
    memcpy(t->pass, colon + 1, pl);
    t->pass[pl] = 0;
    t->has_pass = 1;
    p = at + 1;
  }
  size_t hl = strcspn(p, ":/");
  if (hl == 0 || hl >= sizeof t->host) return -1;
  memcpy(t->host, p, hl);
  t->host[hl] = 0;
  p += hl;
  t->port = 6379;
  if (*p == ':') {
    char *end;
    long port = strtol(p + 1, &end, 10);
    if (end == p + 1 || port < 1 || port > 65535) return -1;
    t->port = (int)port;
    p = end;
  }
  if (*p == '/' && p[1] != 0) {
    char *end;
    long db = strtol(p + 1, &end, 10);
    if (end == p + 1 || *end != 0 || db < 0) return -1;
    t->db = db;
  } else if (*p != 0 && !(*p == '/' && p[1] == 0)) {
    return -1;
  }
  return 0;
}

/* Setup commands (AUTH, SELECT): their failure is remembered for connect's answer. */
typedef struct setup_state { char msg[MSG_MAX]; const char *kind; } setup_state;

static void on_setup(redisAsyncContext *ac, void *r, void *privdata) {
  (void)ac;
  setup_state *st = privdata;
  const redisReply *rep = r;
  if (st != NULL && rep != NULL && rep->type == REDIS_REPLY_ERROR && st->kind == NULL) {
    st->kind = strstr(rep->str, "AUTH") || strstr(rep->str, "WRONGPASS") || strstr(rep->str, "NOPERM")
                 ? "auth" : "redis";
    snprintf(st->msg, MSG_MAX, "%s", rep->str);
  }
}

/* ---- the reader's checks (see "A hostile server" above) ------------------------------------ */

static void *refuse(lredis *c, const char *what) {
  if (!c->refused) {
    c->refused = 1;
    snprintf(c->why, MSG_MAX, "the server sent %s", what);
  }
  return NULL;
}

/* Whether the value the reader is about to build (of `type`, `bytes` long, `elements` for an
 * array) may be built. */
static int reader_allows(const redisReadTask *task, int type, size_t bytes, long long elements) {
  lredis *c = task->privdata;
  const redisAsyncContext *ac = c->ac;
  if (c->refused) return 0;
  if (task->parent == NULL) {
    c->reply_bytes = 0;
    c->sub_shape = 0;
    if (ac != NULL && ac->replies.head == NULL && type != REDIS_REPLY_ERROR) {
      /* hiredis reports an unsolicited error reply itself and closes */
      if (!(ac->c.flags & REDIS_SUBSCRIBED)) {
        refuse(c, "a reply no command waits for");
        return 0;
      }
      c->sub_shape = type == REDIS_REPLY_ARRAY;
      if (c->sub_shape && elements < 3) {
        refuse(c, "a pub/sub message of fewer than 3 parts");
        return 0;
      }
    }
  } else if (c->sub_shape && task->parent->parent == NULL) {
    const redisReply *msg = task->parent->obj;
    int want = task->idx < 2 ? REDIS_REPLY_STRING : 0;
    if (task->idx == 2) {
      const char *kind = msg->element[0]->str;
      if (strcasecmp(kind, "message") == 0) want = REDIS_REPLY_STRING;
      else if (strcasecmp(kind, "unsubscribe") == 0 || strcasecmp(kind, "punsubscribe") == 0)
        want = REDIS_REPLY_INTEGER;
    }
    if (want != 0 && type != want) {
      refuse(c, "a pub/sub message with a part of the wrong type");
      return 0;
    }
  }
  if (elements > REPLY_MAX_ELEMENTS) {
    refuse(c, "an array of more than 16777216 elements");
    return 0;
  }
  c->reply_bytes += bytes;
  if (c->reply_bytes > REPLY_MAX_BYTES) {
    refuse(c, "a reply of more than 512 MiB");
    return 0;
  }
  return 1;
}

static void *reader_string(const redisReadTask *task, char *str, size_t len) {
  if (!reader_allows(task, task->type, sizeof(redisReply) + len, 0)) return NULL;
  return ((lredis *)task->privdata)->base->createString(task, str, len);
}

static void *reader_array(const redisReadTask *task, int elements) {
  size_t bytes = sizeof(redisReply) + (elements > 0 ? (size_t)elements * sizeof(redisReply *) : 0);
  if (!reader_allows(task, REDIS_REPLY_ARRAY, bytes, elements)) return NULL;
  return ((lredis *)task->privdata)->base->createArray(task, elements);
}

static void *reader_integer(const redisReadTask *task, long long v) {
  if (!reader_allows(task, REDIS_REPLY_INTEGER, sizeof(redisReply), 0)) return NULL;
  return ((lredis *)task->privdata)->base->createInteger(task, v);
}

static void *reader_nil(const redisReadTask *task) {
  if (!reader_allows(task, REDIS_REPLY_NIL, sizeof(redisReply), 0)) return NULL;
  return ((lredis *)task->privdata)->base->createNil(task);
}

/* A connection hiredis tells us is up (status REDIS_OK) or failed: the backoff. */
static void on_connect(const redisAsyncContext *ac, int status) {
  lredis *c = ac->data;
  if (status == REDIS_OK) {
    c->backoff = 0;
    c->next_try = 0;
    return;
  }
  c->backoff = c->backoff == 0 ? BACKOFF_MIN
               : c->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : c->backoff * 2;
  c->next_try = bt_now(c->rt) + c->backoff;
}

/* Opens the connection to c->t: the context, its poll handle (unreferenced), the hooks,
 * then AUTH and SELECT queued (their failures go to st, or nowhere when st is NULL). hiredis
 * queues commands until the connect completes. Returns NULL, or a kind with c->msg set. */
static const char *client_open(lredis *c, setup_state *st) {
  const target *t = &c->t;
  redisAsyncContext *ac = t->path[0] ? redisAsyncConnectUnix(t->path)
                                     : redisAsyncConnect(t->host, t->port);
  if (ac == NULL) {
    snprintf(c->msg, MSG_MAX, "out of memory");
    return "resource";
  }
  if (ac->err) {
    snprintf(c->msg, MSG_MAX, "%s", ac->errstr);
    redisAsyncFree(ac);
    return "connect";
  }
  c->poll = malloc(sizeof *c->poll);
  if (c->poll == NULL || uv_poll_init_socket(bt_rt_loop(c->rt), c->poll, ac->c.fd) != 0) {
    free(c->poll);
    c->poll = NULL;
    redisAsyncFree(ac);
    snprintf(c->msg, MSG_MAX, "cannot watch the socket");
    return "resource";
  }
  c->poll->data = c;
  c->events = c->applied = 0;
  uv_unref((uv_handle_t *)c->poll);
  c->ac = ac;
  ac->data = c;
  redisReader *rd = ac->c.reader;
  c->base = rd->fn;
  c->hooks = (redisReplyObjectFunctions){reader_string, reader_array, reader_integer,
                                         reader_nil, c->base->freeObject};
  rd->fn = &c->hooks;
  rd->privdata = c;
  c->refused = 0;
  ac->ev.data = c;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  redisAsyncSetConnectCallback(ac, on_connect);  /* also asks for writability: the connect */
  if (t->has_pass) {
    const char *argv[3] = {"AUTH", t->user, t->pass};
    size_t lens[3] = {4, strlen(t->user), strlen(t->pass)};
    if (t->has_user) redisAsyncCommandArgv(ac, on_setup, st, 3, argv, lens);
    else redisAsyncCommandArgv(ac, on_setup, st, 2, (const char *[]){"AUTH", t->pass},
                               (size_t[]){4, strlen(t->pass)});
  }
  if (t->db > 0) {
    char b[32];
    int bl = snprintf(b, sizeof b, "%lld", (long long)t->db);
    redisAsyncCommandArgv(ac, on_setup, st, 2, (const char *[]){"SELECT", b},
                          (size_t[]){6, (size_t)bl});
  }
  return NULL;
}

/* A call found the connection gone: with `reconnect`, open a new one unless the backoff
 * says not yet. Returns 0 (connected, or connecting: commands queue), or pushes the
 * failure and returns its count. */
static int client_ensure(lua_State *L, const char *fname, lredis *c) {
  if (c->ac != NULL) return 0;
  if (!c->reconnect) return lbt_fail(L, fname, c->msg, c->kind ? c->kind : "closed");
  uint64_t now = bt_now(c->rt);
  if (now < c->next_try)
    return lbt_fail_detail(L, fname, "connect", 0, "not connected (%s); next attempt in %llu ms",
                           c->msg, (unsigned long long)(c->next_try - now));
  const char *kind = client_open(c, NULL);
  if (kind != NULL) {
    on_connect(&(redisAsyncContext){.data = c}, REDIS_ERR);
    return lbt_fail(L, fname, c->msg, kind);
  }
  return 0;
}

/* A connect cancelled while waiting: the client goes too (its setup callbacks point at the
 * setup state on the task's stack, so they must run now). */
typedef struct conn_wait { lcall *k; lredis *c; } conn_wait;
static void connect_release(void *arg) {
  conn_wait *w = arg;
  call_release(w->k);
  w->c->h = NULL;
  client_drop(w->c);
}

/* Stack in connect_k: 1 = options, 2 = client, 3 = setup state, 4 = Call (the PING). */
static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  const char *fname = ctx ? "baton.redis:duplicate" : "baton.redis.connect";
  lredis *c = lua_touserdata(L, 2);
  setup_state *st = lua_touserdata(L, 3);
  lcall *k = lua_touserdata(L, 4);
  conn_wait w = {k, c};
  int s = lbt_resumed_free(L, NULL, connect_release, &w);
  if (s != 0 || k->q == NULL || k->q->reply == NULL || st->kind != NULL ||
      k->q->reply->type == REDIS_REPLY_ERROR) {
    lrreq *q = k->q;
    int n;
    if (s == BT_ETIMEDOUT) n = lbt_fail_timeout(L, fname, (lua_Number)c->timeout_ms);
    else if (s != 0) n = lbt_fail_status(L, fname, s);
    else if (st->kind != NULL) n = lbt_fail(L, fname, st->msg, st->kind);
    else if (q != NULL && q->reply != NULL)
      n = lbt_fail(L, fname, q->reply->str, strstr(q->reply->str, "NOAUTH") ? "auth" : "redis");
    else n = lbt_fail(L, fname, q != NULL ? q->msg : "connection failed",
                      q != NULL && q->kind != NULL ? q->kind : "connect");
    call_release(k);
    c->h = NULL;
    client_drop(c);  /* frees st's callbacks' use of it first: they run now */
    return n;
  }
  call_release(k);
  lua_pushvalue(L, 2);
  return 1;
}

/* What connect was asked for, kept across the resolve's wait (a userdata at 2). */
typedef struct connect_args {
  target t;
  lua_Number ms;     /* timeout_ms, -1: none */
  uint64_t due;      /* the connect's deadline (bt_now), resolve included; UINT64_MAX: none */
  int reconnect;
} connect_args;

/* The connect proper, to an address or a unix socket (stack: 1 = options, or the client
 * duplicated; the connect arguments copied out, the stack cut to 1). ctx 1: for
 * client:duplicate(), whose failures are named so. */
static int connect_go(lua_State *L, lbt_rt *R, lbt_task *T, const connect_args *a,
                      lua_KContext ctx) {
  const char *fname = ctx ? "baton.redis:duplicate" : "baton.redis.connect";
  lredis *c = lua_newuserdatauv(L, sizeof *c, 0);  /* 2 */
  memset(c, 0, sizeof *c);
  c->rt = R->rt;
  c->timeout_ms = a->ms < 0 ? -1 : (lua_Integer)a->ms;
  c->reconnect = a->reconnect;
  c->t = a->t;
  lbt_set_class(L, LBT_REDIS);
  c->h = c;
  lbt_weak_set_add(L, REDIS_KEY, 2);
  setup_state *st = lua_newuserdatauv(L, sizeof *st, 0);  /* 3 */
  memset(st, 0, sizeof *st);

  const char *kind = client_open(c, st);
  if (kind != NULL) {
    c->h = NULL;
    return lbt_fail(L, fname, c->msg, kind);
  }
  lua_pushliteral(L, "PING");
  lrreq *q = NULL;
  kind = send_argv(L, c, 4, &q);  /* pushes the Call at 5 */
  if (kind != NULL) {
    c->h = NULL;
    client_drop(c);
    return lbt_fail(L, fname, "cannot send", kind);
  }
  lua_replace(L, 4);
  lua_settop(L, 4);
  wait_reply(R, c, q, T, a->due);
  return lbt_suspend(L, ctx, connect_k);
}

/* client:duplicate(): a new client to the same server, set up the same way (password, db,
 * timeout_ms, reconnect; the address a host name resolved to), for what must not share a
 * connection: a blocking command (XREADGROUP BLOCK, BLPOP) holds its connection until it
 * ends. Waits as connect does. */
static int lredis_duplicate(lua_State *L) {
  lredis *c = lbt_check_handle(L, 1, LBT_REDIS);
  lbt_rt *R = lbt_R(L);
  lua_settop(L, 1);
  connect_args a;
  memset(&a, 0, sizeof a);
  a.t = c->t;
  a.ms = c->timeout_ms < 0 ? -1 : (lua_Number)c->timeout_ms;
  a.reconnect = c->reconnect;
  lbt_task *T = lbt_await_begin(L, R, "baton.redis:duplicate");
  a.due = a.ms < 0 ? UINT64_MAX : bt_due(R->rt, (uint64_t)a.ms);
  return connect_go(L, R, T, &a, 1);
}

/* ---- resolving a host name on the loop's thread pool ------------------------------------
 * hiredis resolves a name with a blocking getaddrinfo on the calling thread: the loop would
 * stop for as long as the resolver takes. So a host that is not an address is resolved
 * first with uv_getaddrinfo (the thread pool), and hiredis gets the address (the first
 * IPv4 one, else the first IPv6 one). A reconnect uses that address again. The request is freed by the
 * continuation when the answer came, else by the callback (the wait ended first: timed
 * out, aborted; the request is cancelled if it has not started). */
typedef struct resolve_req {
  uv_getaddrinfo_t req;
  bt_rt_t *rt;
  bt_task_t *waiter;   /* NULL once nobody waits: the callback frees the request */
  uint32_t token;
  int done, status;
  char addr[64];
} resolve_req;

static void on_resolved(uv_getaddrinfo_t *r, int status, struct addrinfo *res) {
  resolve_req *q = r->data;
  q->done = 1;
  q->status = status;
  if (status == 0) {  /* the first IPv4 address, else the first IPv6 one */
    q->status = UV_EAI_NONAME;
    for (int pass = 0; pass < 2 && q->status != 0; pass++) {
      for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        const void *sa = ai->ai_addr;
        if ((pass == 0 && ai->ai_family == AF_INET &&
             uv_ip4_name(sa, q->addr, sizeof q->addr) == 0) ||
            (pass == 1 && ai->ai_family == AF_INET6 &&
             uv_ip6_name(sa, q->addr, sizeof q->addr) == 0)) {
          q->status = 0;
          break;
        }
      }
    }
  }
  uv_freeaddrinfo(res);
  if (q->waiter == NULL) {
    free(q);
    return;
  }
  bt_task_wake(q->rt, q->waiter, q->token, 0);
}

static void resolve_cancel(bt_wait_t *w) {
  resolve_req *q = w->src;
  q->waiter = NULL;
  uv_cancel((uv_req_t *)&q->req);
}

/* Stack: 1 = options, 2 = connect_args. */
static int resolve_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  static const char fname[] = "baton.redis.connect";
  resolve_req *q = (resolve_req *)ctx;
  connect_args a = *(connect_args *)lua_touserdata(L, 2);
  int rc = UV_ECANCELED;
  char addr[sizeof q->addr];
  if (q->done) {
    rc = q->status;
    memcpy(addr, q->addr, sizeof addr);
    free(q);
  } else {
    q->waiter = NULL;  /* the wait ended first: the callback frees it */
    uv_cancel((uv_req_t *)&q->req);
  }
  int s = lbt_resumed(L, NULL, NULL, NULL);  /* raises the cancellation */
  if (s == BT_ETIMEDOUT) return lbt_fail_timeout(L, fname, a.ms);
  if (s != 0) return lbt_fail_status(L, fname, s);
  if (rc != 0) {
    char msg[MSG_MAX];
    snprintf(msg, sizeof msg, "cannot resolve '%.120s': %s", a.t.host, uv_strerror(rc));
    return lbt_fail(L, fname, msg, "connect");
  }
  memcpy(a.t.host, addr, sizeof addr);
  lua_settop(L, 1);
  lbt_rt *R = lbt_R(L);
  return connect_go(L, R, lbt_await_begin(L, R, fname), &a, 0);
}

/* Whether hiredis would have to resolve the host (it is not an IPv4 or IPv6 address). */
static int needs_resolve(const target *t) {
  unsigned char buf[sizeof(struct in6_addr)];
  return t->path[0] == 0 && inet_pton(AF_INET, t->host, buf) != 1 &&
         inet_pton(AF_INET6, t->host, buf) != 1;
}

static int lredis_connect(lua_State *L) {
  static const char fname[] = "baton.redis.connect";
  static const char *const known[] = {"url", "path", "password", "db", "timeout_ms",
                                      "reconnect", NULL};
  lbt_rt *R = lbt_R(L);
  lbt_check_opts(L, fname, 1, "opts", known);
  lua_settop(L, 1);
  connect_args a;
  memset(&a, 0, sizeof a);
  target *t = &a.t;
  const char *url = lbt_opt_string(L, fname, 1, "url", "", NULL);
  size_t pathlen = 0;
  const char *path = lbt_opt_string(L, fname, 1, "path", "", &pathlen);
  if (pathlen >= sizeof t->path) lbt_field_error(L, fname, 1, "path", "a path under 108 bytes");
  memcpy(t->path, path, pathlen + 1);
  if ((url[0] == 0) == (t->path[0] == 0))
    lbt_argerror_got(L, fname, 1, "opts", "exactly one of url and path", "both or neither");
  if (url[0] != 0 && parse_url(url, t) != 0)
    lbt_field_error(L, fname, 1, "url", "redis://[[user]:password@]host[:port][/db]");
  size_t plen = 0;
  const char *pw = lbt_opt_string(L, fname, 1, "password", "", &plen);
  if (plen > 0) {
    if (plen >= sizeof t->pass) lbt_field_error(L, fname, 1, "password", "a shorter string");
    memcpy(t->pass, pw, plen + 1);
    t->has_pass = 1;
  }
  t->db = lbt_opt_count(L, fname, 1, "db", 0, t->db);
  a.ms = lbt_opt_ms(L, fname, 1, "timeout_ms", -1);
  a.reconnect = lbt_opt_bool(L, fname, 1, "reconnect", 0);
  lua_settop(L, 1);
  lbt_task *T = lbt_await_begin(L, R, fname);
  a.due = a.ms < 0 ? UINT64_MAX : bt_due(R->rt, (uint64_t)a.ms);
  if (!needs_resolve(t)) return connect_go(L, R, T, &a, 0);

  connect_args *keep = lua_newuserdatauv(L, sizeof *keep, 0);  /* 2 */
  *keep = a;
  resolve_req *q = calloc(1, sizeof *q);
  if (q == NULL) return lbt_fail(L, fname, "out of memory", "resource");
  q->rt = R->rt;
  q->req.data = q;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(bt_rt_loop(R->rt), &q->req, on_resolved, t->host, NULL, &hints);
  if (rc != 0) {
    free(q);
    char msg[MSG_MAX];
    snprintf(msg, sizeof msg, "cannot resolve '%.120s': %s", t->host, uv_strerror(rc));
    return lbt_fail(L, fname, msg, "connect");
  }
  lbt_fiber *f = lbt_fib(T);
  f->wait.src = q;
  q->waiter = &T->t;
  q->token = bt_task_wait(R->rt, &T->t, &f->wait, resolve_cancel, a.due);
  return lbt_suspend(L, (lua_KContext)q, resolve_k);
}

static int lredis_gc(lua_State *L) { return lredis_close(L); }

static int lredis_tostring(lua_State *L) {
  lredis *c = lbt_check_type(L, 1, LBT_REDIS);
  lua_pushfstring(L, "baton.Redis (%s): %p", c->h == NULL ? "closed"
                  : c->ac == NULL ? "disconnected" : "open", (void *)c);
  return 1;
}

/* ---- pub/sub ----------------------------------------------------------------------------- */

/* A subscription: a connection of its own (in subscribed mode it can do nothing else), its
 * messages queued until next() takes them. The connection state comes first, so the run's
 * end closes a subscription as it closes a client (close_one). The callback's privdata is
 * the subscription, which outlives the context: __gc frees the context first. */
#define SUB_MAX_QUEUE 10000  /* messages kept unread; more are dropped (counted) */

typedef struct lmsg { struct lmsg *next; size_t clen, plen; char data[]; } lmsg;

typedef struct lsub {
  lredis c;                 /* first: its handle is the subscription's */
  lmsg *head, *tail;
  size_t queued, dropped;
  int confirmed, channels;  /* SUBSCRIBE confirmations in, out of channels */
  int gone;                 /* the connection went away (c.kind, c.msg) */
  bt_task_t *waiter;
  uint32_t token;
} lsub;

static void sub_wake(lsub *sb) {
  if (sb->waiter != NULL && !sb->c.quiet) {
    bt_task_t *w = sb->waiter;
    sb->waiter = NULL;
    bt_task_wake(sb->c.rt, w, sb->token, 0);
  }
}

/* The subscription's connection is gone, whether or not hiredis still had a channel's
 * callback to tell (after the server unsubscribed it, it has none). */
static void sub_lost(lredis *c) {
  lsub *sb = (lsub *)c;
  sb->gone = 1;
  sub_wake(sb);
}

static void on_message(redisAsyncContext *ac, void *r, void *privdata) {
  lsub *sb = privdata;
  const redisReply *rep = r;
  if (rep == NULL) {
    if (!sb->gone) {
      sb->gone = 1;
      sb->c.kind = err_kind(ac);
      err_msg(ac, sb->c.msg);
    }
    sub_wake(sb);
    return;
  }
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
      rep->element[0]->type != REDIS_REPLY_STRING)
    return;
  const char *type = rep->element[0]->str;
  if (strcmp(type, "subscribe") == 0) {
    sb->confirmed++;
    if (sb->confirmed >= sb->channels) sub_wake(sb);
    return;
  }
  if (strcmp(type, "message") != 0) return;
  const redisReply *ch = rep->element[1], *pl = rep->element[2];
  if (ch->type != REDIS_REPLY_STRING || pl->type != REDIS_REPLY_STRING) return;  /* reader_* */
  if (sb->queued >= SUB_MAX_QUEUE) {
    sb->dropped++;
    return;
  }
  lmsg *m = malloc(sizeof *m + ch->len + pl->len);
  if (m == NULL) {
    sb->dropped++;
    return;
  }
  m->next = NULL;
  m->clen = ch->len;
  m->plen = pl->len;
  memcpy(m->data, ch->str, ch->len);
  memcpy(m->data + ch->len, pl->str, pl->len);
  if (sb->tail) sb->tail->next = m;
  else sb->head = m;
  sb->tail = m;
  sb->queued++;
  /* Redis confirms a SUBSCRIBE's channels together, before any of their messages; still,
   * a message never ends subscribe's wait for the confirmations. */
  if (sb->confirmed >= sb->channels) sub_wake(sb);
}

/* The end of a wait on the subscription, whatever ended it: the poll handle keeps the loop
 * alive only while a task waits. */
static void sub_wait_cancel(bt_wait_t *w) {
  lsub *sb = w->src;
  sb->waiter = NULL;
  sb->c.waiting = 0;
  update_ref(&sb->c);
}

static void sub_free_queue(lsub *sb) {
  lmsg *m = sb->head;
  while (m != NULL) {
    lmsg *n = m->next;
    free(m);
    m = n;
  }
  sb->head = sb->tail = NULL;
  sb->queued = 0;
}

static int lsub_close(lua_State *L) {
  lsub *sb = lbt_check_type(L, 1, LBT_REDIS_SUB);
  if (sb->c.h != NULL) lbt_handle_clear(L, sb, LBT_REDIS_SUB);
  sb->c.h = NULL;
  if (lbt_R(L)->closed) sb->c.quiet = 1;
  client_drop(&sb->c);  /* on_message runs with NULL: a waiter is woken */
  sub_free_queue(sb);
  return 0;
}

/* Stack: 1 = subscription, 2 = due (-1: none), 3 = ms (for the message) */
static int sub_next_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  static const char fname[] = "baton.redis.subscription:next";
  lsub *sb = lua_touserdata(L, 1);
  if (ctx) {
    int s = lbt_resumed(L, NULL, NULL, NULL);
    if (s == BT_ETIMEDOUT && sb->head == NULL) return lbt_fail_timeout(L, fname, lua_tonumber(L, 3));
    if (s != 0 && s != BT_ETIMEDOUT) return lbt_fail_status(L, fname, s);
  }
  if (sb->c.h == NULL) return lbt_fail(L, fname, "the subscription was closed", "closed");
  lmsg *m = sb->head;
  if (m != NULL) {
    sb->head = m->next;
    if (sb->head == NULL) sb->tail = NULL;
    sb->queued--;
    lua_pushlstring(L, m->data + m->clen, m->plen);
    lua_pushlstring(L, m->data, m->clen);
    free(m);
    return 2;
  }
  if (sb->gone || sb->c.ac == NULL) return lbt_fail(L, fname, sb->c.msg, sb->c.kind ? sb->c.kind : "closed");
  lua_Integer due = lua_tointeger(L, 2);
  lbt_rt *R = lbt_R(L);
  if (due >= 0 && (uint64_t)due <= bt_now(R->rt)) return lbt_fail_timeout(L, fname, lua_tonumber(L, 3));
  lbt_task *T = lbt_current(R);
  lbt_fiber *f = lbt_fib(T);
  f->wait.src = sb;
  sb->waiter = &T->t;
  sb->c.waiting = 1;
  update_ref(&sb->c);
  sb->token = bt_task_wait(R->rt, &T->t, &f->wait, sub_wait_cancel,
                           due < 0 ? UINT64_MAX : (uint64_t)due);
  return lbt_suspend(L, 1, sub_next_k);
}

static int lsub_next(lua_State *L) {
  static const char fname[] = "baton.redis.subscription:next";
  lbt_rt *R = lbt_R(L);
  lsub *sb = lbt_check_handle(L, 1, LBT_REDIS_SUB);
  lua_Number ms = lua_isnoneornil(L, 2) ? -1 : lbt_arg_ms(L, fname, 2, "ms", -1);
  lua_settop(L, 1);
  lbt_await_begin(L, R, fname);
  lbt_sole_waiter(L, fname, sb->waiter != NULL, "subscription");
  lua_pushinteger(L, ms < 0 ? -1 : (lua_Integer)(bt_now(R->rt) + (uint64_t)ms));
  lua_pushnumber(L, ms);
  return sub_next_k(L, LUA_OK, 0);
}

static int lsub_dropped(lua_State *L) {
  lsub *sb = lbt_check_type(L, 1, LBT_REDIS_SUB);
  lua_pushinteger(L, (lua_Integer)sb->dropped);
  return 1;
}

/* Stack: 1 = client, 2 = subscription. Waits for the confirmations. */
static int subscribe_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  static const char fname[] = "baton.redis:subscribe";
  lsub *sb = lua_touserdata(L, 2);
  int s = lbt_resumed(L, NULL, NULL, NULL);  /* cancelled: the subscription's __gc frees it */
  lredis *c = lua_touserdata(L, 1);
  if (s != 0 || sb->gone || sb->confirmed < sb->channels) {
    int n = s == BT_ETIMEDOUT ? lbt_fail_timeout(L, fname, (lua_Number)c->timeout_ms)
            : s != 0 ? lbt_fail_status(L, fname, s)
            : lbt_fail(L, fname, sb->c.msg, sb->c.kind ? sb->c.kind : "closed");
    sb->c.h = NULL;
    client_drop(&sb->c);
    return n;
  }
  lua_settop(L, 2);
  return 1;
}

static int lredis_subscribe(lua_State *L) {
  static const char fname[] = "baton.redis:subscribe";
  lbt_rt *R = lbt_R(L);
  lredis *c = lbt_check_handle(L, 1, LBT_REDIS);
  int top = lua_gettop(L);
  if (top < 2) lbt_argerror(L, fname, 2, "channel", "string");
  for (int i = 2; i <= top; i++)
    if (lua_type(L, i) != LUA_TSTRING) lbt_argerror(L, fname, i, "channel", "string");
  if (top - 1 > 1000) lbt_argerror(L, fname, 1002, "channel", "at most 1000 channels");
  lbt_task *T = lbt_await_begin(L, R, fname);
  lsub *sb = lua_newuserdatauv(L, sizeof *sb, 0);
  memset(sb, 0, sizeof *sb);
  sb->c.rt = R->rt;
  sb->c.is_sub = 1;
  sb->c.timeout_ms = c->timeout_ms;
  sb->c.t = c->t;
  lbt_set_class(L, LBT_REDIS_SUB);
  sb->c.h = &sb->c;
  lbt_weak_set_add(L, REDIS_KEY, -1);
  const char *kind = client_open(&sb->c, NULL);
  if (kind != NULL) {
    sb->c.h = NULL;
    return lbt_fail(L, fname, sb->c.msg, kind);
  }
  int argc = top;  /* SUBSCRIBE + channels */
  const char *argv[1001];
  size_t lens[1001];
  argv[0] = "SUBSCRIBE";
  lens[0] = 9;
  for (int i = 2; i <= top; i++) argv[i - 1] = lua_tolstring(L, i, &lens[i - 1]);
  sb->channels = top - 1;
  if (redisAsyncCommandArgv(sb->c.ac, on_message, sb, argc, argv, lens) != REDIS_OK) {
    sb->c.h = NULL;
    client_drop(&sb->c);
    return lbt_fail(L, fname, "connection closed", "closed");
  }
  sb->c.waiting = 1;
  update_ref(&sb->c);
  lua_replace(L, 2);
  lua_settop(L, 2);
  lbt_fiber *f = lbt_fib(T);
  f->wait.src = sb;
  sb->waiter = &T->t;
  sb->token = bt_task_wait(R->rt, &T->t, &f->wait, sub_wait_cancel,
                           c->timeout_ms < 0 ? UINT64_MAX
                                             : bt_due(R->rt, (uint64_t)c->timeout_ms));
  return lbt_suspend(L, 0, subscribe_k);
}

/* client:eval(script, keys, args), in Lua over client:call: the script goes by its SHA
 * (EVALSHA), loaded with SCRIPT LOAD the first time this client runs it and again when the
 * server answers NOSCRIPT (restarted, SCRIPT FLUSH). The SHAs are cached per client (weak
 * keys). Failures are call's, renamed to eval. */
static const char eval_lua[] =
  "local methods, mt = ...\n"
  "local call = methods.call\n"
  "local shas = setmetatable({}, { __mode = 'k' })\n"
  "local F = 'baton.redis:eval'\n"
  "local function got(v)\n"
  "  if type(v) == 'string' and #v <= 40 then return ('%q'):format(v) end\n"
  "  if type(v) == 'number' then return tostring(v) end\n"
  "  local m = getmetatable(v)\n"
  "  return type(m) == 'table' and type(m.__name) == 'string' and m.__name or type(v)\n"
  "end\n"
  "local function bad(n, name, expected, v)\n"
  "  error(('%s: bad argument #%d \\'%s\\' (expected %s, got %s)'):format(F, n, name, expected,\n"
  "        got(v)), 3)\n"
  "end\n"
  "local function list(t, n, name)\n"
  "  if t == nil then return {} end\n"
  "  if type(t) ~= 'table' then bad(n, name, 'table of strings or numbers or nil', t) end\n"
  "  for i = 1, #t do\n"
  "    local ty = type(t[i])\n"
  "    if ty ~= 'string' and ty ~= 'number' then\n"
  "      bad(n, name, 'table of strings or numbers or nil', t)\n"
  "    end\n"
  "  end\n"
  "  return t\n"
  "end\n"
  "local function fail(v, msg, kind, ...)\n"
  "  if v == nil and msg ~= nil then\n"
  "    return nil, F .. msg:sub(#'baton.redis:call' + 1), kind, ...\n"
  "  end\n"
  "  return v\n"
  "end\n"
  "local function load(self, script)\n"
  "  local sha, msg, kind, detail = call(self, 'SCRIPT', 'LOAD', script)\n"
  "  if not sha then return nil, msg, kind, detail end\n"
  "  local c = shas[self]\n"
  "  if not c then c = {}; shas[self] = c end\n"
  "  c[script] = sha\n"
  "  return sha\n"
  "end\n"
  "function methods.eval(self, script, keys, args)\n"
  "  if getmetatable(self) ~= mt then bad(0, 'self', 'baton.Redis', self) end\n"
  "  if type(script) ~= 'string' then bad(1, 'script', 'string', script) end\n"
  "  keys, args = list(keys, 2, 'keys'), list(args, 3, 'args')\n"
  "  local argv, n = {}, 0\n"
  "  for i = 1, #keys do n = n + 1; argv[n] = keys[i] end\n"
  "  for i = 1, #args do n = n + 1; argv[n] = args[i] end\n"
  "  local u = table.unpack\n"
  "  local sha = shas[self] and shas[self][script]\n"
  "  for _ = 1, 2 do\n"
  "    if not sha then\n"
  "      local msg, kind, detail\n"
  "      sha, msg, kind, detail = load(self, script)\n"
  "      if not sha then return fail(nil, msg, kind, detail) end\n"
  "    end\n"
  "    local v, msg, kind, detail = call(self, 'EVALSHA', sha, #keys, u(argv, 1, n))\n"
  "    if v ~= nil or kind ~= 'redis' or not msg:find('NOSCRIPT', 1, true) then\n"
  "      return fail(v, msg, kind, detail)\n"
  "    end\n"
  "    sha = nil\n"
  "  end\n"
  "  return nil, F .. ': the server keeps losing the script (NOSCRIPT twice)', 'redis'\n"
  "end\n";

void lbt_open_redis(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"call", lredis_call}, {"pipeline", lredis_pipeline}, {"subscribe", lredis_subscribe},
    {"close", lredis_close}, {"closed", lredis_closed}, {"duplicate", lredis_duplicate},
    {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__gc", lredis_gc}, {"__close", lredis_close}, {"__tostring", lredis_tostring},
    {NULL, NULL}};
  static const luaL_Reg call_meta[] = {{"__gc", lcall_gc}, {NULL, NULL}};
  static const luaL_Reg sub_methods[] = {
    {"next", lsub_next}, {"close", lsub_close}, {"dropped", lsub_dropped}, {NULL, NULL}};
  static const luaL_Reg sub_meta[] = {{"__gc", lsub_close}, {"__close", lsub_close}, {NULL, NULL}};
  static const luaL_Reg none[] = {{NULL, NULL}};
  static const luaL_Reg funcs[] = {{"connect", lredis_connect}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, "baton.Redis", methods, meta);
  if (luaL_loadbuffer(L, eval_lua, sizeof eval_lua - 1, "=baton.redis") != LUA_OK)
    lua_error(L);
  luaL_getmetatable(L, "baton.Redis");
  lua_getfield(L, -1, "__methods");
  lua_insert(L, -2);  /* chunk, methods, metatable */
  lua_call(L, 2, 0);
  lbt_new_class(L, rt_idx, "baton.Redis.Call", none, call_meta);
  lbt_new_class(L, rt_idx, "baton.Redis.Subscription", sub_methods, sub_meta);
  lbt_weak_set_new(L, REDIS_KEY);
  lua_newtable(L);
  lbt_set_funcs(L, rt_idx, funcs);
  lua_setfield(L, -2, "redis");
}
