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
 *   listener:poll() -> target | nil | nil, message, kind
 *     Accepts a pending connection (one at a time), reads what has arrived of its request;
 *     once the head is complete (a blank line, at most 8 KiB) it answers with a short HTML
 *     page saying the window may be closed, closes the connection and returns the request
 *     target ("/callback?code=...&state=..."). nil: nothing complete yet.
 *   listener:close() (also __close, __gc): closes the sockets; idempotent.
 *
 * Invariants: the listening socket and the connection being read are non-blocking and
 * owned by the userdata (closed by close/__gc/__close, never leaked); the answer is small
 * and written with a 1 s send timeout, so poll never stalls the loop for long. Only
 * 127.0.0.1 is ever bound.
 *
 * Errors: misuse raises ("baton.http._loopback: bad argument #1 'port' ..."); the world's
 * failures (bind refused, the port taken, accept or read failing) return nil, message,
 * "io" ("resource" when out of descriptors).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lbaton.h"

#define LOOPBACK_MT "baton.Loopback"
#define HEAD_MAX 8192

typedef struct {
  int lfd;                 /* the listening socket, -1 once closed */
  int cfd;                 /* the connection being read, -1 when none */
  int port;
  size_t len;              /* bytes of the request head read so far */
  char head[HEAD_MAX + 1];
} lloop;

static const char PAGE[] =
  "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n"
  "Cache-Control: no-store\r\nContent-Length: 93\r\n\r\n"
  "<!doctype html><title>baton</title><p>Authorization received. You may close this window.</p>\n";

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static const char *kind_of_errno(int e) {
  return (e == EMFILE || e == ENFILE || e == ENOMEM || e == ENOBUFS) ? "resource" : "io";
}

static void close_conn(lloop *l) {
  if (l->cfd >= 0) close(l->cfd);
  l->cfd = -1;
  l->len = 0;
}

static int lloop_new(lua_State *L) {
  const char *F = "baton.http._loopback";
  lua_Integer port = 0;
  if (!lua_isnoneornil(L, 1)) {
    if (!lua_isinteger(L, 1) || (port = lua_tointeger(L, 1)) < 0 || port > 65535)
      return lbt_argerror(L, F, 1, "port", "an integer 0..65535");
  }
  lloop *l = lua_newuserdatauv(L, sizeof *l, 0);
  l->lfd = l->cfd = -1;
  l->len = 0;
  l->port = 0;
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
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4) < 0 || set_nonblock(fd) < 0) {
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

/* The request target of a complete head: the second word of its first line. */
static int push_target(lua_State *L, const char *head) {
  const char *sp = strchr(head, ' ');
  if (!sp) return 0;
  const char *end = sp + 1;
  while (*end && *end != ' ' && *end != '\r' && *end != '\n') end++;
  lua_pushlstring(L, sp + 1, (size_t)(end - sp - 1));
  return 1;
}

static int lloop_poll(lua_State *L) {
  const char *F = "baton.http._loopback:poll";
  lloop *l = check_loop(L, F);
  if (l->lfd < 0) return lbt_fail(L, F, "the listener is closed", "closed");
  if (l->cfd < 0) {
    int c = accept(l->lfd, NULL, NULL);
    if (c < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
        lua_pushnil(L);
        return 1;
      }
      return lbt_fail_detail(L, F, kind_of_errno(errno), 0, "accept: %s", strerror(errno));
    }
    if (set_nonblock(c) < 0) {
      close(c);
      lua_pushnil(L);
      return 1;
    }
    (void)fcntl(c, F_SETFD, FD_CLOEXEC);
    l->cfd = c;
    l->len = 0;
  }
  for (;;) {
    ssize_t r = read(l->cfd, l->head + l->len, HEAD_MAX - l->len);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      close_conn(l);  /* the browser went away: wait for the next connection */
      break;
    }
    if (r == 0) {  /* closed before a whole head: forget it */
      close_conn(l);
      break;
    }
    l->len += (size_t)r;
    l->head[l->len] = '\0';
    if (strstr(l->head, "\r\n\r\n") || strstr(l->head, "\n\n") || l->len == HEAD_MAX) {
      struct timeval tv = {1, 0};
      (void)setsockopt(l->cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      int fl = fcntl(l->cfd, F_GETFL, 0);
      if (fl >= 0) (void)fcntl(l->cfd, F_SETFL, fl & ~O_NONBLOCK);
      (void)send(l->cfd, PAGE, sizeof PAGE - 1, MSG_NOSIGNAL);
      int got = push_target(L, l->head);
      close_conn(l);
      if (got) return 1;
      break;
    }
  }
  lua_pushnil(L);
  return 1;
}

static int lloop_close(lua_State *L) {
  lloop *l = luaL_testudata(L, 1, LOOPBACK_MT);
  if (!l) return lbt_argerror(L, "baton.http._loopback:close", 1, "self", LOOPBACK_MT);
  close_conn(l);
  if (l->lfd >= 0) close(l->lfd);
  l->lfd = -1;
  return 0;
}

void lbt_open_loopback(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"port", lloop_port}, {"poll", lloop_poll}, {"close", lloop_close}, {NULL, NULL}};
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
