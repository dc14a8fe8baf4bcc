/* Core HTTP on libcurl's multi: against a tiny HTTP server on the same loop, a response
 * arrives with its status, headers and body; connections are reused; a body over the limit
 * fails as too_large; freeing a running transfer gives no callback and leaves no poll handle;
 * a streamed body comes through a small buffer with nothing lost; a refused connection and
 * a bad URL fail as they should; the loop closes clean. */
#include "test.h"

static uv_loop_t main_loop;
static bt_rt_t *rt;
static uv_tcp_t server;
static int port, accepted;

typedef struct conn {
  uv_tcp_t tcp;
  char buf[4096];
  size_t n;
} conn;

static void on_conn_closed(uv_handle_t *h) { free(h->data); }

static void on_written(uv_write_t *w, int status) {
  (void)status;
  free(w->data);
  free(w);
}

static void reply(conn *c, const char *path) {
  char head[256];
  const char *body = "hello";
  size_t blen = 5;
  char *big = NULL;
  if (strcmp(path, "/hang") == 0) return;
  if (strcmp(path, "/big") == 0) {
    blen = 100000;
    big = malloc(blen);
    memset(big, 'b', blen);
    body = big;
  }
  int hn = snprintf(head, sizeof head,
                    "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nX-Test: yes\r\n\r\n", blen);
  char *out = malloc((size_t)hn + blen);
  memcpy(out, head, (size_t)hn);
  memcpy(out + hn, body, blen);
  free(big);
  uv_write_t *w = malloc(sizeof *w);
  w->data = out;
  uv_buf_t b = uv_buf_init(out, (unsigned)((size_t)hn + blen));
  CHECK(uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_written) == 0);
}

static void on_alloc(uv_handle_t *h, size_t size, uv_buf_t *b) {
  (void)size;
  conn *c = h->data;
  *b = uv_buf_init(c->buf + c->n, (unsigned)(sizeof c->buf - c->n - 1));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  (void)b;
  conn *c = s->data;
  if (nread < 0) {
    uv_close((uv_handle_t *)s, on_conn_closed);
    return;
  }
  c->n += (size_t)nread;
  c->buf[c->n] = '\0';
  char *end;
  while ((end = strstr(c->buf, "\r\n\r\n")) != NULL) {
    char path[128] = "";
    sscanf(c->buf, "%*s %127s", path);
    reply(c, path);
    size_t used = (size_t)(end + 4 - c->buf);
    memmove(c->buf, end + 4, c->n - used + 1);
    c->n -= used;
  }
}

static void on_connection(uv_stream_t *srv, int status) {
  CHECK(status == 0);
  conn *c = calloc(1, sizeof *c);
  uv_tcp_init(bt_rt_loop(rt), &c->tcp);
  c->tcp.data = c;
  CHECK(uv_accept(srv, (uv_stream_t *)&c->tcp) == 0);
  accepted++;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void close_conn(uv_handle_t *h, void *arg) {
  (void)arg;
  if (h->type == UV_TCP && h != (uv_handle_t *)&server && !uv_is_closing(h))
    uv_close(h, on_conn_closed);
}

typedef struct { int done, events; } seen;
static void on_done(bt_http_req_t *r, void *data) {
  (void)r;
  ((seen *)data)->done++;
}

static bt_http_req_t *start(const char *path, size_t max_body, seen *s) {
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  bt_http_opts o = {.url = url, .max_body_bytes = max_body};
  bt_http_req_t *r = NULL;
  CHECK(bt_http_start(rt, &o, on_done, s, &r) == 0);
  return r;
}

static void run_until(seen *s) {
  while (!s->done) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
}

static void test_response_and_reuse(void) {
  for (int i = 0; i < 3; i++) {
    seen s = {0};
    bt_http_req_t *r = start("/ok", 0, &s);
    run_until(&s);
    CHECK(s.done == 1);
    CHECK(bt_http_result(r) == 0);
    CHECK(bt_http_status(r) == 200);
    size_t n;
    const char *body = bt_http_body(r, &n);
    CHECK(n == 5 && memcmp(body, "hello", 5) == 0);
    const char *head = bt_http_headers(r, &n);
    CHECK(strstr(head, "X-Test: yes\r\n") != NULL);
    CHECK(strstr(head, "HTTP/1.1") == NULL);
    bt_http_free(r);
  }
  CHECK(accepted == 1);
  CHECK(bt_rt_transfers(rt) == 0);
}

static void test_body_limit(void) {
  seen s = {0};
  bt_http_req_t *r = start("/big", 1000, &s);
  run_until(&s);
  const char *kind;
  CHECK(bt_http_result(r) != 0);
  CHECK(bt_http_error(r, &kind) != NULL && strcmp(kind, "too_large") == 0);
  bt_http_free(r);
  s.done = 0;
  r = start("/big", 100000, &s);
  run_until(&s);
  size_t n;
  bt_http_body(r, &n);
  CHECK(bt_http_result(r) == 0 && n == 100000);
  bt_http_free(r);
}

static void test_free_while_running(void) {
  seen s = {0};
  bt_http_req_t *r = start("/hang", 0, &s);
  for (int i = 0; i < 20; i++) uv_run(bt_rt_loop(rt), UV_RUN_NOWAIT);
  CHECK(bt_rt_transfers(rt) == 1);
  CHECK(bt_rt_http_sockets(rt) == 1);
  bt_http_free(r);
  CHECK(bt_rt_transfers(rt) == 0);
  CHECK(bt_rt_http_sockets(rt) == 0);
  for (int i = 0; i < 5; i++) uv_run(bt_rt_loop(rt), UV_RUN_NOWAIT);
  CHECK(s.done == 0);
}

static void on_stream_event(bt_http_req_t *r, void *data) {
  (void)r;
  ((seen *)data)->events++;
}

/* Streaming: the head comes first, the body in pieces through a small buffer that pauses
 * the transfer until it is consumed; nothing is lost, and the end is reported once. */
static void test_stream(void) {
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/big", port);
  seen s = {0};
  bt_http_opts o = {.url = url, .stream = 1, .stream_buffer = 4096,
                    .on_event = on_stream_event};
  bt_http_req_t *r = NULL;
  CHECK(bt_http_start(rt, &o, on_done, &s, &r) == 0);
  CHECK(!bt_http_head_done(r) && !bt_http_finished(r));
  while (!bt_http_head_done(r)) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(bt_http_status(r) == 200 && s.events > 0);
  CHECK(strcmp(bt_http_url(r), url) == 0);
  size_t total = 0, most = 0;
  for (;;) {
    size_t n;
    const char *p = bt_http_peek(r, &n);
    if (n == 0) {
      if (bt_http_finished(r)) break;
      uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
      continue;
    }
    if (n > most) most = n;
    for (size_t i = 0; i < n; i++) CHECK(p[i] == 'b');
    total += n;
    bt_http_consume(r, n);
  }
  CHECK(total == 100000 && s.done == 1 && bt_http_result(r) == 0);
  CHECK(most < 100000);  /* the buffer never held the whole body */
  bt_http_free(r);
}

static void test_refused_and_bad_url(void) {
  seen s = {0};
  bt_http_opts o = {.url = "http://127.0.0.1:1/"};
  bt_http_req_t *r = NULL;
  CHECK(bt_http_start(rt, &o, on_done, &s, &r) == 0);
  run_until(&s);
  const char *kind;
  CHECK(bt_http_error(r, &kind) != NULL && strcmp(kind, "connect") == 0);
  bt_http_free(r);
  const char *bad[] = {"file:///etc/passwd", "no scheme", "http://", NULL};
  for (int i = 0; bad[i]; i++) {
    o.url = bad[i];
    r = NULL;
    CHECK(bt_http_start(rt, &o, on_done, &s, &r) == BT_EINVAL);
    CHECK(r == NULL);
  }
  CHECK(bt_http_parse_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777);
  CHECK(bt_http_parse_date("soon") == -1);
}

int main(void) {
  rt = test_rt_new(&main_loop);
  uv_loop_t *loop = bt_rt_loop(rt);
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", 0, &addr);
  uv_tcp_init(loop, &server);
  CHECK(uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0) == 0);
  CHECK(uv_listen((uv_stream_t *)&server, 16, on_connection) == 0);
  struct sockaddr_in bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
  port = ntohs(bound.sin_port);

  RUN(test_response_and_reuse);
  RUN(test_body_limit);
  RUN(test_free_while_running);
  RUN(test_stream);
  RUN(test_refused_and_bad_url);

  uv_close((uv_handle_t *)&server, NULL);
  uv_walk(loop, close_conn, NULL);
  CHECK(bt_rt_transfers(rt) == 0);
  test_rt_end(rt, &main_loop);
  return 0;
}
