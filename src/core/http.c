/*
 * http.c — HTTP transfers on libcurl's multi interface, driven by the runtime's loop.
 *
 * One multi handle per runtime, created on first use and closed with the runtime; its
 * connection cache lets later transfers to a host reuse connections. libcurl says which
 * sockets to watch (socket callback: one uv_poll_t per socket, hung on the socket with
 * curl_multi_assign) and when to call it back (timer callback: one bt_timer_t on the
 * runtime's heap). Each event calls curl_multi_socket_action() and then collects finished
 * transfers with curl_multi_info_read(), calling their done callbacks — from the loop, never
 * from inside a libcurl callback, so a done callback may free any transfer.
 *
 * Invariants:
 *  - A transfer is on h->reqs from bt_http_start() until bt_http_free() (or until the
 *    runtime's HTTP state goes away first: r->h is then NULL); its easy handle is in the
 *    multi while r->running.
 *  - A socket's poll handle is freed only in its close callback; when libcurl says REMOVE,
 *    the context is detached from the socket at once, because the fd may be reused next.
 *  - Limits on what a peer sends (body, headers) are enforced in the write callbacks, so a
 *    response over a limit stops being read as soon as it crosses it.
 *  - A streamed transfer hands its body over as it arrives: body[consumed, len) is unread,
 *    and once `stream_buffer` bytes are unread the write callback pauses the transfer
 *    (without taking the bytes: libcurl delivers them again) until bt_http_consume()
 *    brings it below, outside any libcurl callback.
 *  - Every socket libcurl opens is made here (open-socket callback), close-on-exec, so a
 *    child process never holds one of baton's connections; a failure to make one is
 *    remembered (its errno) to tell "out of descriptors" from a host that refuses.
 *  - Only a status line at the start of a response head starts a new response (after a
 *    1xx or a redirect being followed); lines after the final head are trailers.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define POOL_MAX 16  /* easy handles kept for reuse */

typedef struct hsock {
  uv_poll_t poll;
  LIST_ENTRY(hsock) link;
  struct bt_http *h;
  curl_socket_t fd;
  int events;                 /* UV_READABLE | UV_WRITABLE: what libcurl asked to watch */
} hsock;

struct bt_http {
  bt_rt_t *rt;
  CURLM *multi;
  bt_timer_t timer;
  LIST_HEAD(, bt_http_req) reqs;
  LIST_HEAD(, hsock) socks;
  size_t nreqs, nsocks;
  CURL *pool[POOL_MAX];
  int npool;
};

struct bt_http_req {
  LIST_ENTRY(bt_http_req) link;
  struct bt_http *h;          /* NULL once the runtime's HTTP state is gone */
  CURL *easy;
  struct curl_slist *hdrs;
  bt_http_cb done;
  bt_http_cb on_event;        /* stream: head complete or body bytes arrived */
  void *data;
  bt_buf body, head;
  size_t max_body, max_head;
  size_t consumed;            /* stream: body bytes already handed over */
  size_t total;               /* body bytes received, for max_body */
  size_t highwater;           /* stream: unread bytes at which the transfer pauses */
  int stream, paused, head_done, follow;
  int final;                  /* the latest status line: final 1, not 0, a redirect -1 */
  int in_head;                /* header lines: 0 a head may start, 1 in one, 2 trailers */
  int sock_errno;             /* the last socket could not be made for want of descriptors
                                 or memory: its errno, else 0 */
  int running, finished;
  int result;
  int over;                   /* 1: body over max_body, 2: headers over max_head, 3: no memory */
  long status;
  const char *kind;
  char errbuf[CURL_ERROR_SIZE];
  char msg[CURL_ERROR_SIZE + 96];
};

/* ---- sockets and the timer (libcurl callbacks: no calls back into libcurl) ----------- */

static void collect(struct bt_http *h);

static void on_sock_closed(uv_handle_t *hd) { free(hd->data); }

static void sock_close(struct bt_http *h, hsock *s) {
  LIST_REMOVE(s, link);
  h->nsocks--;
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

/* An error or hang-up on a socket comes as status < 0 with no events, and libuv has stopped
 * the handle. libcurl is told the socket is ready for what it watches (reading, writing)
 * as well as in error, as its own poll() wrapper says: it then reads or writes and learns
 * what happened — data that arrived before a reset, a reset, or a reused connection the
 * server had closed, which it retries on a new one. The error bit alone would fail the
 * transfer with "select/poll returned error" without looking. The handle is restarted
 * unless libcurl let go of the socket meanwhile. */
static void on_poll(uv_poll_t *p, int status, int events) {
  hsock *s = p->data;
  struct bt_http *h = s->h;
  int flags = 0;
  if (status < 0) {
    events = s->events;
    flags = CURL_CSELECT_ERR;
  }
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  if (status < 0 && !uv_is_closing((uv_handle_t *)&s->poll))
    uv_poll_start(&s->poll, s->events, on_poll);
  collect(h);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  BT_UNUSED(easy);
  struct bt_http *h = userp;
  hsock *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s != NULL) {
      curl_multi_assign(h->multi, fd, NULL);
      sock_close(h, s);
    }
    return 0;
  }
  if (s == NULL) {
    s = calloc(1, sizeof *s);
    if (s == NULL) return -1;
    if (uv_poll_init_socket(h->rt->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->h = h;
    s->poll.data = s;
    s->fd = fd;
    LIST_INSERT_HEAD(&h->socks, s, link);
    h->nsocks++;
    curl_multi_assign(h->multi, fd, s);
  }
  s->events = ((what & CURL_POLL_IN) ? UV_READABLE : 0) |
              ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
  uv_poll_start(&s->poll, s->events, on_poll);
  return 0;
}

/* libcurl's sockets, made close-on-exec from the start (no window where a concurrent
 * spawn could inherit one); libcurl sets them non-blocking itself and closes them. */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  BT_UNUSED(purpose);
  bt_http_req_t *r = ud;
#ifdef SOCK_CLOEXEC
  int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
#else
  int fd = socket(a->family, a->socktype, a->protocol);
  if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    int e = errno;
    close(fd);
    fd = -1;
    errno = e;
  }
#endif
  if (fd < 0) {
    int e = errno;
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) r->sock_errno = e;
    return CURL_SOCKET_BAD;  /* libcurl tries the next address, or fails to connect */
  }
  r->sock_errno = 0;
  return fd;
}

static void on_timeout(bt_timer_t *t) {
  struct bt_http *h = bt_container_of(t, struct bt_http, timer);
  int running;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  collect(h);
}

static int on_timer(CURLM *multi, long ms, void *userp) {
  BT_UNUSED(multi);
  struct bt_http *h = userp;
  if (ms < 0) {
    bt_timer_stop(h->rt, &h->timer);
    return 0;
  }
  /* ms == 0 fires on the loop's next turn, outside this callback. */
  return bt_timer_start(h->rt, &h->timer, uv_now(h->rt->loop) + (uint64_t)ms, on_timeout)
         ? -1 : 0;
}

/* ---- the multi handle --------------------------------------------------------------- */

/* curl_multi_init() makes a socket pair for curl_multi_wakeup() without close-on-exec
 * (libcurl 7.x), which every child would inherit. Descriptors are handed out lowest
 * first, so the pair lands on the lowest ones free before the call: those that are
 * sockets afterwards are marked close-on-exec. */
#define NPROBE 4
static int free_fds(int *fds) {
  int n = 0;
  for (int fd = 0; n < NPROBE && fd < 65536; fd++)
    if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) fds[n++] = fd;
  return n;
}

static void cloexec_new_sockets(const int *fds, int n) {
  struct stat st;
  for (int i = 0; i < n; i++) {
    int fl = fcntl(fds[i], F_GETFD);
    if (fl >= 0 && !(fl & FD_CLOEXEC) && fstat(fds[i], &st) == 0 && S_ISSOCK(st.st_mode))
      fcntl(fds[i], F_SETFD, fl | FD_CLOEXEC);
  }
}

static struct bt_http *http_get(bt_rt_t *rt) {
  static int global_done;
  if (rt->http != NULL) return rt->http;
  if (!global_done) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return NULL;
    global_done = 1;
  }
  struct bt_http *h = calloc(1, sizeof *h);
  if (h == NULL) return NULL;
  h->rt = rt;
  int fds[NPROBE];
  int nfds = free_fds(fds);
  h->multi = curl_multi_init();
  if (h->multi == NULL) goto fail;
  cloexec_new_sockets(fds, nfds);
  LIST_INIT(&h->reqs);
  LIST_INIT(&h->socks);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  rt->http = h;
  return h;
fail:
  free(h);
  return NULL;
}

void bt__http_free(bt_rt_t *rt) {
  struct bt_http *h = rt->http;
  if (h == NULL) return;
  bt_http_req_t *r;
  while ((r = LIST_FIRST(&h->reqs)) != NULL) {
    if (r->running) curl_multi_remove_handle(h->multi, r->easy);
    r->running = 0;
    r->h = NULL;
    LIST_REMOVE(r, link);
  }
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, NULL);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, NULL);
  bt_timer_stop(rt, &h->timer);
  hsock *s;
  while ((s = LIST_FIRST(&h->socks)) != NULL) sock_close(h, s);
  curl_multi_cleanup(h->multi);
  for (int i = 0; i < h->npool; i++) curl_easy_cleanup(h->pool[i]);
  free(h);
  rt->http = NULL;
}

size_t bt_rt_transfers(bt_rt_t *rt) { return rt->http ? rt->http->nreqs : 0; }
size_t bt_rt_http_sockets(bt_rt_t *rt) { return rt->http ? rt->http->nsocks : 0; }

/* ---- transfers ---------------------------------------------------------------------- */

static void head_complete(bt_http_req_t *r) {
  if (r->head_done) return;
  r->head_done = 1;
  if (r->on_event) r->on_event(r, r->data);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  bt_http_req_t *r = ud;
  size_t len = size * n;
  if (r->max_body && len > r->max_body - r->total) {
    r->over = 1;
    return 0;
  }
  if (r->stream && r->body.len - r->consumed >= r->highwater) {
    r->paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (bt__buf_append(&r->body, p, len) != 0) {
    r->over = 3;
    return 0;
  }
  r->total += len;
  if (r->stream) {
    head_complete(r);
    r->on_event(r, r->data);
  }
  return len;
}

/* 1 if the header lines kept so far have a Location. */
static int has_location(const bt_http_req_t *r) {
  const char *h = r->head.p;
  if (h == NULL) return 0;
  if (strncasecmp(h, "location:", 9) == 0) return 1;
  for (const char *nl = strchr(h, '\n'); nl; nl = strchr(nl + 1, '\n'))
    if (strncasecmp(nl + 1, "location:", 9) == 0) return 1;
  return 0;
}

/* 1 if the status line `p` starts a response that is the final one: not 1xx, and not a
 * redirect that libcurl is about to follow. */
static int final_status(bt_http_req_t *r, const char *p, size_t len) {
  const char *sp = memchr(p, ' ', len);
  if (sp == NULL || (size_t)(sp - p) + 4 > len) return 1;
  int code = (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
  if (code >= 100 && code < 200) return 0;
  if (r->follow && code >= 300 && code < 400)
    return -1;  /* libcurl follows any 3xx with a Location: decided at the end of the head */
  return 1;
}

/* Keeps the header lines of the latest response only (redirects and 1xx answers come
 * first), without its status line and the blank line that ends them. */
static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  bt_http_req_t *r = ud;
  size_t len = size * n;
  if (r->in_head == 0 && len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    r->head.len = r->body.len = r->total = r->consumed = 0;
    if (r->head.p) r->head.p[0] = '\0';
    r->final = final_status(r, p, len);
    r->in_head = 1;
    return len;
  }
  if (r->in_head == 0) r->in_head = 1;
  if (len <= 2 && (len == 0 || p[0] == '\r' || p[0] == '\n')) {
    if (r->in_head == 1) {
      int last = r->final == 1 || (r->final == -1 && !has_location(r));
      r->in_head = last ? 2 : 0;  /* after the final head, only trailers come */
      if (last && r->stream) head_complete(r);
    }
    return len;
  }
  if (r->max_head && len > r->max_head - r->head.len) {
    r->over = 2;
    return 0;
  }
  if (bt__buf_append(&r->head, p, len) != 0) {
    r->over = 3;
    return 0;
  }
  return len;
}

static void set_error(bt_http_req_t *r, int result, const char *kind, const char *fmt,
                      const char *detail) {
  r->result = result;
  r->kind = kind;
  snprintf(r->msg, sizeof r->msg, fmt, detail);
}

/* 1 if the connection was established (the failure is then not the connect's). */
static int connected(bt_http_req_t *r) {
  curl_off_t t = 0;
  curl_easy_getinfo(r->easy, CURLINFO_CONNECT_TIME_T, &t);
  return t != 0;
}

static void finish(bt_http_req_t *r, CURLcode cc) {
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
  const char *detail = r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc);
  long os_errno = 0;
  curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os_errno);
  if (cc != CURLE_OK && r->over == 0 && r->sock_errno != 0) {
    /* No socket could be made: this process is out of descriptors (or memory), which no
     * other host or a retry soon would fix; not the remote host's failure. */
    set_error(r, r->sock_errno == ENFILE ? UV_ENFILE : r->sock_errno == EMFILE ? UV_EMFILE
                                                                               : UV_ENOBUFS,
              "resource", "cannot open a socket: %s", strerror(r->sock_errno));
  } else if (r->over == 1 || cc == CURLE_FILESIZE_EXCEEDED) {
    char lim[64];
    snprintf(lim, sizeof lim, "%zu", r->max_body);
    set_error(r, UV_E2BIG, "too_large", "response body exceeds %s bytes (max_body_bytes)", lim);
  } else if (r->over == 2) {
    char lim[64];
    snprintf(lim, sizeof lim, "%zu", r->max_head);
    set_error(r, UV_E2BIG, "too_large", "response headers exceed %s bytes", lim);
  } else if (r->over == 3) {
    set_error(r, BT_ENOMEM, "resource", "%s", "out of memory buffering the response");
  } else if (cc == CURLE_OUT_OF_MEMORY) {
    /* libcurl's own cap: one header line over 100 KiB reads as out of memory (our own
     * buffers running out is over == 3): say which limit, not "Out of memory". */
    set_error(r, UV_E2BIG, "too_large",
              "response headers too large: a header line over libcurl's 100 KiB limit (%s)", detail);
  } else if (cc != CURLE_OK && strstr(detail, "Too large")) {
    /* libcurl's other cap: all the headers over 300 KiB ("Too large response headers") */
    set_error(r, UV_E2BIG, "too_large", "response headers too large: over libcurl's 300 KiB limit (%s)",
              detail);
  } else if (cc == CURLE_OK) {
    r->result = 0;
  } else {
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
      set_error(r, UV_ECONNREFUSED, "connect", "cannot connect: %s", detail);
      break;
    case CURLE_OPERATION_TIMEDOUT:
      if (!connected(r)) set_error(r, UV_ETIMEDOUT, "connect", "cannot connect: %s", detail);
      else set_error(r, BT_ETIMEDOUT, "timeout", "%s", detail);
      break;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
      set_error(r, UV_EPROTO, "tls", "TLS: %s", detail);
      break;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_TOO_MANY_REDIRECTS:
      set_error(r, UV_EPROTO, "protocol", "bad response: %s", detail);
      break;
    case CURLE_PARTIAL_FILE:
      set_error(r, UV_EIO, "io", "response cut short: %s", detail);
      break;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
      if (strstr(detail, "chunked-encoding") != NULL) {
        /* libcurl fails a malformed chunk ("Illegal or missing hexadecimal sequence in
         * chunked-encoding") as a receive error: the peer's fault, not the network's */
        set_error(r, UV_EPROTO, "protocol", "bad response: %s", detail);
      } else if (os_errno == ECONNRESET || strstr(detail, "reset by peer") != NULL) {
        int up = connected(r);
        set_error(r, UV_ECONNRESET, up ? "io" : "connect", "%s",
                  up ? "connection reset by peer" : "cannot connect: connection reset by peer");
      } else {
        set_error(r, UV_EIO, "io", "%s", detail);
      }
      break;
    default:
      set_error(r, UV_EIO, "io", "%s", detail);
      break;
    }
  }
}

static void collect(struct bt_http *h) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(h->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL *easy = m->easy_handle;
    CURLcode cc = m->data.result;  /* m is invalid once the handle is removed */
    bt_http_req_t *r = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
    curl_multi_remove_handle(h->multi, easy);
    r->running = 0;
    finish(r, cc);
    r->finished = 1;
    r->done(r, r->data);
  }
}

static int method_is(const char *m, const char *name) { return m && strcmp(m, name) == 0; }

/* Sets the options of one transfer; returns 0 or a negative code. */
static int setup(bt_http_req_t *r, const bt_http_opts *o) {
  CURL *e = r->easy;
  CURLcode cc = CURLE_OK;
#define SET(opt, val) do { if (cc == CURLE_OK) cc = curl_easy_setopt(e, opt, val); } while (0)
  SET(CURLOPT_PRIVATE, (char *)r);
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_ERRORBUFFER, r->errbuf);
  SET(CURLOPT_WRITEFUNCTION, on_body);
  SET(CURLOPT_WRITEDATA, r);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_HEADERDATA, r);
  SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  SET(CURLOPT_OPENSOCKETDATA, r);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_ACCEPT_ENCODING, "");
  SET(CURLOPT_USERAGENT, "baton/" BT_VERSION_STRING);
  /* A proxy's "200 Connection established" is not the response (libcurl would pass its
   * head to on_header as if it were). */
  SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  SET(CURLOPT_URL, o->url);
  if (o->ca_file) SET(CURLOPT_CAINFO, o->ca_file);
  if (o->connect_timeout_ms) SET(CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms);
#ifdef CURLOPT_QUICK_EXIT
  /* Removing a transfer that is still resolving a name must not wait for the resolver's
   * thread: that would stall the loop for as long as the lookup takes. */
  SET(CURLOPT_QUICK_EXIT, 1L);
#endif
  if (o->max_redirects > 0) {
    SET(CURLOPT_FOLLOWLOCATION, 1L);
    SET(CURLOPT_MAXREDIRS, o->max_redirects);
  }
  const char *m = o->method;
  if (method_is(m, "HEAD")) {
    SET(CURLOPT_NOBODY, 1L);
  } else if (o->body != NULL || method_is(m, "POST")) {
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(o->body ? o->body_len : 0));
    SET(CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "");
    if (m && !method_is(m, "POST")) SET(CURLOPT_CUSTOMREQUEST, m);
  } else if (m && !method_is(m, "GET")) {
    SET(CURLOPT_CUSTOMREQUEST, m);
  }
  /* libcurl would send "Expect: 100-continue" for large bodies and wait for an answer many
   * servers never give: turned off unless the caller sends an Expect header itself. */
  struct curl_slist *l = NULL;
  int expect = 0, nomem = 0;
  for (const char *const *hp = o->headers; !nomem && hp && *hp; hp++) {
    if (strncasecmp(*hp, "expect", 6) == 0 && ((*hp)[6] == ':' || (*hp)[6] == ';')) expect = 1;
    struct curl_slist *n = curl_slist_append(l, *hp);
    if (n == NULL) nomem = 1;
    else l = n;
  }
  if (!nomem && !expect) {
    struct curl_slist *n = curl_slist_append(l, "Expect:");
    if (n == NULL) nomem = 1;
    else l = n;
  }
  if (nomem) {
    curl_slist_free_all(l);
    return BT_ENOMEM;
  }
  r->hdrs = l;
  SET(CURLOPT_HTTPHEADER, l);
#undef SET
  if (cc == CURLE_OUT_OF_MEMORY) return BT_ENOMEM;
  return cc == CURLE_OK ? 0 : BT_EINVAL;
}

/* 1 if `url` is an absolute http(s) URL with a host. */
static int url_ok(const char *url) {
  CURLU *u = curl_url();
  if (u == NULL) return 0;
  char *scheme = NULL, *host = NULL;
  int ok = curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
           (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) && host[0] != '\0';
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  return ok;
}

int bt_http_start(bt_rt_t *rt, const bt_http_opts *o, bt_http_cb done, void *data,
                  bt_http_req_t **out) {
  if (o->url == NULL || !url_ok(o->url)) return BT_EINVAL;
  struct bt_http *h = http_get(rt);
  if (h == NULL) return BT_ENOMEM;
  bt_http_req_t *r = calloc(1, sizeof *r);
  if (r == NULL) return BT_ENOMEM;
  int rc = BT_ENOMEM;
  r->easy = h->npool > 0 ? h->pool[--h->npool] : curl_easy_init();
  if (r->easy == NULL) goto fail;
  r->done = done;
  r->data = data;
  r->max_body = o->max_body_bytes;
  r->max_head = o->max_header_bytes;
  r->follow = o->max_redirects > 0;
  if (o->stream) {
    if (o->on_event == NULL) {
      rc = BT_EINVAL;
      goto fail;
    }
    r->stream = 1;
    r->on_event = o->on_event;
    r->highwater = o->stream_buffer ? o->stream_buffer : (size_t)1 << 20;
  }
  if ((rc = setup(r, o)) != 0) goto fail;
  if (curl_multi_add_handle(h->multi, r->easy) != CURLM_OK) {
    rc = BT_ENOMEM;
    goto fail;
  }
  r->h = h;
  r->running = 1;
  LIST_INSERT_HEAD(&h->reqs, r, link);
  h->nreqs++;
  *out = r;
  return 0;
fail:
  if (r->easy) curl_easy_cleanup(r->easy);
  curl_slist_free_all(r->hdrs);
  free(r);
  return rc;
}

void bt_http_free(bt_http_req_t *r) {
  if (r == NULL) return;
  struct bt_http *h = r->h;
  if (h != NULL) {
    if (r->running) curl_multi_remove_handle(h->multi, r->easy);
    LIST_REMOVE(r, link);
    h->nreqs--;
  }
  if (h != NULL && h->npool < POOL_MAX) {
    curl_easy_reset(r->easy);
    h->pool[h->npool++] = r->easy;
  } else {
    curl_easy_cleanup(r->easy);
  }
  curl_slist_free_all(r->hdrs);
  bt__buf_free(&r->body);
  bt__buf_free(&r->head);
  free(r);
}

int bt_http_result(const bt_http_req_t *r) { return r->result; }

const char *bt_http_error(const bt_http_req_t *r, const char **kind) {
  if (kind) *kind = r->result ? r->kind : NULL;
  return r->result ? r->msg : NULL;
}

long bt_http_status(const bt_http_req_t *r) {
  long code = r->status;
  if (!r->finished) curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
  return code;
}

int bt_http_finished(const bt_http_req_t *r) { return r->finished; }
int bt_http_head_done(const bt_http_req_t *r) { return r->head_done; }

const char *bt_http_peek(const bt_http_req_t *r, size_t *len) {
  *len = r->body.len - r->consumed;
  return r->body.p ? r->body.p + r->consumed : "";
}

void bt_http_consume(bt_http_req_t *r, size_t n) {
  size_t unread = r->body.len - r->consumed;
  r->consumed += n < unread ? n : unread;
  if (r->consumed == r->body.len) {
    r->consumed = r->body.len = 0;
  } else if (r->consumed >= r->highwater) {  /* keep the buffer from creeping */
    memmove(r->body.p, r->body.p + r->consumed, r->body.len - r->consumed);
    r->body.len -= r->consumed;
    r->consumed = 0;
  }
  if (r->paused && r->running && r->body.len - r->consumed < r->highwater) {
    r->paused = 0;
    curl_easy_pause(r->easy, CURLPAUSE_CONT);  /* may deliver bytes right here */
  }
}

const char *bt_http_body(const bt_http_req_t *r, size_t *len) {
  *len = r->body.len;
  return r->body.p ? r->body.p : "";
}

const char *bt_http_headers(const bt_http_req_t *r, size_t *len) {
  *len = r->head.len;
  return r->head.p ? r->head.p : "";
}

const char *bt_http_url(const bt_http_req_t *r) {
  char *u = NULL;
  curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &u);
  return u ? u : "";
}

int64_t bt_http_parse_date(const char *s) {
  time_t t = curl_getdate(s, NULL);
  return t < 0 ? -1 : (int64_t)t;
}
