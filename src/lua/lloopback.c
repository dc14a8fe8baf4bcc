/*
 * lloopback.c — baton.http._loopback: a one-request HTTP listener on 127.0.0.1, internal to
 * baton.mcp's default OAuth `authorize` (lua/baton/mcp/auth.lua), which waits there for the
 * browser's redirect carrying the authorization code (RFC 8252 §7.3, a loopback redirect).
 *
 * Deliberately not an await: every call is non-blocking and returns at once, and the Lua
 * side polls between baton.sleep()s, so waiting stays cancellable and bounded by the
 * caller's deadline without a new source in the core. A person takes seconds to consent;
 * a poll every few tens of milliseconds costs nothing.
 *
 * API (internal: names with "_" are not part of the documented surface):
 *   baton.http._loopback(port) -> listener | nil, message, kind   (port 0: any free port)
 *   listener:port() -> the port bound
 *   listener:poll([state]) -> target | nil | nil, message, kind
 *     Reads what has arrived on the connections held, then accepts the pending ones (each
 *     read as it is accepted); once a head is complete (a blank line, at most 8 KiB) it is answered with a short HTML page
 *     and closed, and its request target ("/callback?code=...&state=...") returned. nil:
 *     nothing complete yet. With `state`, a request whose query does not carry exactly
 *     that state (none, another: a forged redirect, CSRF) is answered 400 and not returned.
 *   listener:refused() -> how many requests were answered 400
 *   listener:close() (also __close, __gc): closes the sockets; idempotent.
 *
 * Hostile clients: up to SLOTS connections are read at once, each for at most SLOT_MS
 * from its accept; a connection that has not sent a whole head by then (a slowloris, an
 * idle socket) is closed. Each connection is read the moment it is accepted, and when the
 * slots are full every held one is read before the oldest of those still without a whole
 * head gives way to the new one: a request that has arrived whole is always answered,
 * never dropped for a crowd that connected after it, and no client can keep the browser's
 * redirect waiting in the backlog. Answers are sent without blocking (a page of a few
 * hundred bytes fits in any socket buffer).
 *
 * Invariants: every socket is non-blocking, close-on-exec and owned by the userdata (closed
 * by close/__gc/__close, never leaked); poll never waits. Only 127.0.0.1 is ever bound.
 *
 * Errors: misuse raises ("baton.http._loopback: bad argument #1 'port' ..."); the world's
 * failures (bind refused, the port taken, accept failing) return nil, message, "io"
 * ("resource" when out of descriptors).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lbaton.h"

#define LOOPBACK_MT "baton.Loopback"
#define HEAD_MAX 8192
#define SLOTS 8
#define SLOT_MS 5000u
#define ACCEPTS_PER_POLL 64

typedef struct {
  int fd;                  /* -1 when free */
  size_t len;              /* bytes of the request head read so far */
  uint64_t since;          /* uv_hrtime at accept */
  char head[HEAD_MAX + 1];
} lconn;

typedef struct {
  int lfd;                 /* the listening socket, -1 once closed */
  int port;
  lua_Integer refused;
  lconn c[SLOTS];
} lloop;

static const char PAGE[] =
  "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n"
  "Cache-Control: no-store\r\nContent-Length: 93\r\n\r\n"
  "<!doctype html><title>baton</title><p>Authorization received. You may close this window.</p>\n";

static const char PAGE_400[] =
  "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n"
  "Cache-Control: no-store\r\nContent-Length: 104\r\n\r\n"
  "<!doctype html><title>baton</title><p>This is not the redirect of the authorization in "
  "progress.</p>\n";

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static const char *kind_of_errno(int e) {
  return (e == EMFILE || e == ENFILE || e == ENOMEM || e == ENOBUFS) ? "resource" : "io";
}

static void close_conn(lconn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->len = 0;
}

static void close_all(lloop *l) {
  for (int i = 0; i < SLOTS; i++) close_conn(&l->c[i]);
  if (l->lfd >= 0) close(l->lfd);
  l->lfd = -1;
}

static int lloop_new(lua_State *L) {
  const char *F = "baton.http._loopback";
  lua_Integer port = 0;
  if (!lua_isnoneornil(L, 1)) {
    if (!lua_isinteger(L, 1) || (port = lua_tointeger(L, 1)) < 0 || port > 65535)
      return lbt_argerror(L, F, 1, "port", "an integer 0..65535");
  }
  lloop *l = lua_newuserdatauv(L, sizeof *l, 0);
  l->lfd = -1;
  l->port = 0;
  l->refused = 0;
  for (int i = 0; i < SLOTS; i++) l->c[i].fd = -1, l->c[i].len = 0;
  luaL_setmetatable(L, LOOPBACK_MT);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return lbt_fail_detail(L, F, kind_of_errno(errno), 0, "socket: %s", strerror(errno));
  l->lfd = fd;
  int one = 1;
  (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 64) < 0 || set_nonblock(fd) < 0) {
    int e = errno;
    close(fd);
    l->lfd = -1;
    return lbt_fail_detail(L, F, kind_of_errno(e), 0, "cannot listen on 127.0.0.1:%d: %s",
                           (int)port, strerror(e));
  }
  socklen_t n = sizeof a;
  if (getsockname(fd, (struct sockaddr *)&a, &n) == 0) l->port = ntohs(a.sin_port);
  return 1;
}

static lloop *check_loop(lua_State *L, const char *fname) {
  lloop *l = luaL_testudata(L, 1, LOOPBACK_MT);
  if (!l) lbt_argerror(L, fname, 1, "self", LOOPBACK_MT);
  return l;
}

static int lloop_port(lua_State *L) {
  lloop *l = check_loop(L, "baton.http._loopback:port");
  lua_pushinteger(L, l->port);
  return 1;
}

static int lloop_refused(lua_State *L) {
  lloop *l = check_loop(L, "baton.http._loopback:refused");
  lua_pushinteger(L, l->refused);
  return 1;
}

/* The request target of a complete head: the second word of its first line. */
static int target_of(const char *head, const char **t, size_t *tl) {
  const char *sp = strchr(head, ' ');
  if (!sp) return 0;
  const char *end = sp + 1;
  while (*end && *end != ' ' && *end != '\r' && *end != '\n') end++;
  *t = sp + 1;
  *tl = (size_t)(end - sp - 1);
  return 1;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Whether the query of target t (tl bytes) has the parameter state equal to `want`
 * (percent-decoded, '+' as a space), once and only once. */
static int state_matches(const char *t, size_t tl, const char *want, size_t wl) {
  const char *q = memchr(t, '?', tl), *end = t + tl;
  int found = 0;
  if (q == NULL) return 0;
  for (const char *p = q + 1; p < end;) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *pe = amp ? amp : end;
    if (pe - p > 6 && memcmp(p, "state=", 6) == 0) {
      if (found++) return 0;
      size_t k = 0;
      int ok = 1;
      for (const char *v = p + 6; v < pe; v++) {
        int ch = (unsigned char)*v;
        if (ch == '%' && pe - v > 2 && hexval(v[1]) >= 0 && hexval(v[2]) >= 0) {
          ch = hexval(v[1]) * 16 + hexval(v[2]);
          v += 2;
        } else if (ch == '+') {
          ch = ' ';
        }
        if (k >= wl || (unsigned char)want[k] != ch) ok = 0;
        k++;
      }
      if (!ok || k != wl) return 0;
    }
    p = pe + 1;
  }
  return found == 1;
}

/* Whether the bytes so far hold a blank line (NULs in garbage included). */
static int head_complete(const char *h, size_t len) {
  for (size_t i = 1; i < len; i++) {
    if (h[i] != '\n') continue;
    if (h[i - 1] == '\n' || (i >= 3 && h[i - 1] == '\r' && h[i - 2] == '\n' && h[i - 3] == '\r'))
      return 1;
  }
  return 0;
}

/* Reads what has arrived on c and, once its head is complete, answers it and closes it.
 * Returns 1 when it was the redirect (its target pushed on L's stack), 0 otherwise: still
 * incomplete (c->fd >= 0), or answered 400, or gone (closed). */
static int serve(lua_State *L, lloop *l, lconn *c, const char *want, size_t wl) {
  int complete = 0;
  for (;;) {
    ssize_t r = read(c->fd, c->head + c->len, HEAD_MAX - c->len);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) close_conn(c);  /* went away */
      return 0;
    }
    if (r == 0) {  /* closed before a whole head: forget it */
      close_conn(c);
      return 0;
    }
    c->len += (size_t)r;
    c->head[c->len] = '\0';
    if (head_complete(c->head, c->len) || c->len == HEAD_MAX) {
      complete = 1;
      break;
    }
  }
  if (!complete) return 0;
  const char *t;
  size_t tl;
  int got = target_of(c->head, &t, &tl);
  if (got && want != NULL && !state_matches(t, tl, want, wl)) got = 0;
  if (got) {
    (void)send(c->fd, PAGE, sizeof PAGE - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    lua_pushlstring(L, t, tl);
    close_conn(c);
    return 1;
  }
  l->refused++;
  (void)send(c->fd, PAGE_400, sizeof PAGE_400 - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  close_conn(c);
  return 0;
}

/* Serves every open connection (closing those older than SLOT_MS with no whole head when
 * `now` is not 0): 1 when one was the redirect (its target pushed), else 0. */
static int serve_all(lua_State *L, lloop *l, const char *want, size_t wl, uint64_t now) {
  for (int i = 0; i < SLOTS; i++) {
    lconn *c = &l->c[i];
    if (c->fd < 0) continue;
    if (serve(L, l, c, want, wl)) return 1;
    if (c->fd >= 0 && now != 0 && (now - c->since) / 1000000u >= SLOT_MS) close_conn(c);  /* too slow */
  }
  return 0;
}

/* Accepts what is pending, reading each connection as it is accepted: a client that sent
 * its whole request before a crowd of others connected is answered before any of them
 * could take its slot. When the slots are full, every open connection is read first (a
 * complete head is answered, which frees its slot); only when all of them are still
 * without a whole head does the oldest give way. Returns the number of values pushed:
 * 0 (nothing complete), 1 (the redirect's target), or a failure (nil, message, kind). */
static int accept_pending(lua_State *L, lloop *l, const char *want, size_t wl, const char *F) {
  for (int n = 0; n < ACCEPTS_PER_POLL; n++) {
    int fd = accept(l->lfd, NULL, NULL);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
        return 0;
      return lbt_fail_detail(L, F, kind_of_errno(errno), 0, "accept on 127.0.0.1:%d: %s",
                             l->port, strerror(errno));
    }
    if (set_nonblock(fd) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
      close(fd);
      continue;
    }
    int found = 0, slot = -1;
    for (int i = 0; i < SLOTS && slot < 0; i++)
      if (l->c[i].fd < 0) slot = i;
    if (slot < 0) {
      /* Full: what the others sent by now is read before one of them is dropped. A found
       * redirect frees its slot; one still without a whole head can only be the oldest. */
      found = serve_all(L, l, want, wl, 0);
      for (int i = 0; i < SLOTS; i++) {
        if (l->c[i].fd < 0) {
          slot = i;
          break;
        }
        if (slot < 0 || l->c[i].since < l->c[slot].since) slot = i;
      }
      close_conn(&l->c[slot]);
    }
    lconn *c = &l->c[slot];
    c->fd = fd;
    c->len = 0;
    c->since = uv_hrtime();
    if (found) return 1;  /* the new one keeps its slot and is read at the next poll */
    if (serve(L, l, c, want, wl)) return 1;
  }
  return 0;
}

static int lloop_poll(lua_State *L) {
  const char *F = "baton.http._loopback:poll";
  lloop *l = check_loop(L, F);
  size_t wl = 0;
  const char *want = lua_isnoneornil(L, 2) ? NULL : lbt_arg_string(L, F, 2, "state", &wl);
  if (l->lfd < 0) return lbt_fail(L, F, "the listener is closed", "closed");
  /* the connections held first (they came first), then the ones waiting to be accepted */
  if (serve_all(L, l, want, wl, uv_hrtime())) return 1;
  int rc = accept_pending(L, l, want, wl, F);
  if (rc != 0) return rc;  /* the target, or nil, message, kind */
  lua_pushnil(L);
  return 1;
}

static int lloop_close(lua_State *L) {
  lloop *l = luaL_testudata(L, 1, LOOPBACK_MT);
  if (!l) return lbt_argerror(L, "baton.http._loopback:close", 1, "self", LOOPBACK_MT);
  close_all(l);
  return 0;
}

void lbt_open_loopback(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"port", lloop_port},   {"poll", lloop_poll}, {"refused", lloop_refused},
    {"close", lloop_close}, {NULL, NULL}};
  if (luaL_newmetatable(L, LOOPBACK_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lloop_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, lloop_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  /* baton.http is on top of the stack (lbt_open_http) */
  lua_pushcfunction(L, lloop_new);
  lua_setfield(L, -2, "_loopback");
}
