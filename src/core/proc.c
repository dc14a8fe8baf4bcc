/*
 * proc.c — child processes on uv_spawn: argv only (never a shell), stdin/stdout/stderr
 * pipes, cwd, env, exit code and signal.
 *
 * Lifetime. A bt_proc_t is created by bt_proc_spawn() and held by the caller until
 * bt_proc_close(). Its handles are closed only once the child has exited AND the caller has
 * let go, so an exit status is never lost and no handle outlives the child. Letting go of a
 * live child sends SIGTERM, then SIGKILL after a grace period. Memory is freed in the last
 * close callback, right after on_close runs (libuv's rule: close is asynchronous).
 *
 * SIGPIPE. Writing to the stdin pipe of a child that has exited raises SIGPIPE, whose default
 * action kills the whole host. The first spawn with a stdin pipe therefore sets SIGPIPE to
 * SIG_IGN if it is still SIG_DFL (a host's own handler is left alone), so such a write fails
 * with UV_EPIPE instead; libuv resets every signal to its default in the child.
 */
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct bt_proc {
  uv_process_t process;
  uv_pipe_t pipes[3];           /* 0 stdin, 1 stdout, 2 stderr */
  uv_timer_t kill_timer;
  uv_shutdown_t shutdown;       /* close_stdin: pending writes drain first */
  bt_rt_t *rt;
  bt_proc_events ev;
  int has_pipe[3];              /* initialised (must be closed) */
  int reading[3];               /* stdout/stderr still open for reading */
  int stdin_done;               /* close_stdin was called */
  int exited;
  int released;                 /* bt_proc_close() was called */
  int closing;                  /* handles are being closed */
  int open_handles;             /* initialised handles not yet through their close callback */
  int notify;                   /* deliver on_close (0 when spawn failed) */
  uint64_t grace_ms;
};

typedef struct {
  uv_write_t req;
  char data[];
} write_req;

static void ignore_sigpipe(void) {
  static int done;
  if (done) return;
  done = 1;
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) != 0 || sa.sa_handler != SIG_DFL) return;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPIPE, &sa, NULL);
}

static void on_handle_closed(uv_handle_t *h) {
  bt_proc_t *p = h->data;
  if (--p->open_handles > 0) return;
  p->rt->nprocs -= p->notify ? 1 : 0;
  if (p->notify && p->ev.on_close) p->ev.on_close(p);
  free(p);
}

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, on_handle_closed);
}

static void close_all(bt_proc_t *p) {
  if (p->closing) return;
  p->closing = 1;
  close_handle((uv_handle_t *)&p->process);
  close_handle((uv_handle_t *)&p->kill_timer);
  for (int i = 0; i < 3; i++)
    if (p->has_pipe[i]) close_handle((uv_handle_t *)&p->pipes[i]);
}

static void maybe_finish(bt_proc_t *p) {
  if (p->exited && p->released) close_all(p);
}

static void on_exit_cb(uv_process_t *h, int64_t code, int sig) {
  bt_proc_t *p = h->data;
  p->exited = 1;
  uv_timer_stop(&p->kill_timer);
  if (p->ev.on_exit && !p->released) p->ev.on_exit(p, code, sig);
  maybe_finish(p);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  BT_UNUSED(h);
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  bt_proc_t *p = s->data;
  int fd = s == (uv_stream_t *)&p->pipes[1] ? 1 : 2;
  if (n > 0) {
    if (p->ev.on_data && !p->released) p->ev.on_data(p, fd, buf->base, (size_t)n);
  } else if (n < 0) {  /* EOF or a read error: either way the stream is over */
    uv_read_stop(s);
    p->reading[fd] = 0;
    if (p->ev.on_data && !p->released) p->ev.on_data(p, fd, NULL, 0);
  }
  free(buf->base);
}

int bt_proc_spawn(bt_rt_t *rt, const bt_proc_opts *o, const bt_proc_events *ev,
                  bt_proc_t **out) {
  bt_proc_t *p = calloc(1, sizeof *p);
  if (p == NULL) return BT_ENOMEM;
  if (o->pipe_stdin) ignore_sigpipe();
  p->rt = rt;
  p->ev = *ev;
  uv_stdio_container_t stdio[3];
  for (int i = 0; i < 3; i++) {
    if (i == 0 && !o->pipe_stdin) {
      stdio[0].flags = UV_IGNORE;
      continue;
    }
    uv_pipe_init(rt->loop, &p->pipes[i], 0);
    p->pipes[i].data = p;
    p->has_pipe[i] = 1;
    stdio[i].flags = UV_CREATE_PIPE | (i == 0 ? UV_READABLE_PIPE : UV_WRITABLE_PIPE);
    stdio[i].data.stream = (uv_stream_t *)&p->pipes[i];
  }
  uv_timer_init(rt->loop, &p->kill_timer);
  p->kill_timer.data = p;
  p->process.data = p;
  p->open_handles = 2 + p->has_pipe[0] + p->has_pipe[1] + p->has_pipe[2];

  uv_process_options_t opts;
  memset(&opts, 0, sizeof opts);
  opts.file = o->file ? o->file : o->argv[0];
  opts.args = o->argv;
  opts.env = o->env;
  opts.cwd = o->cwd;
  opts.stdio = stdio;
  opts.stdio_count = 3;
  opts.exit_cb = on_exit_cb;
  int rc = uv_spawn(rt->loop, &p->process, &opts);
  if (rc != 0) {
    p->exited = p->released = 1;
    close_all(p);  /* notify stays 0: a failed call delivers no event */
    return rc;
  }
  p->notify = 1;
  rt->nprocs++;
  for (int fd = 1; fd <= 2; fd++) {
    p->reading[fd] = 1;
    uv_read_start((uv_stream_t *)&p->pipes[fd], on_alloc, on_read);
  }
  *out = p;
  return 0;
}

static void on_written(uv_write_t *req, int status) {
  BT_UNUSED(status);
  free(bt_container_of(req, write_req, req));
}

int bt_proc_write(bt_proc_t *p, const char *data, size_t len) {
  if (!p->has_pipe[0] || p->stdin_done || p->closing) return UV_EPIPE;
  if (len > UINT_MAX) return BT_EINVAL;  /* a uv_buf_t holds at most UINT_MAX bytes */
  write_req *w = malloc(sizeof *w + len);
  if (w == NULL) return BT_ENOMEM;
  memcpy(w->data, data, len);
  uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
  int rc = uv_write(&w->req, (uv_stream_t *)&p->pipes[0], &buf, 1, on_written);
  if (rc != 0) free(w);
  return rc;
}

static void on_stdin_shutdown(uv_shutdown_t *req, int status) {
  BT_UNUSED(status);  /* ECANCELED when everything is being closed: close_handle copes */
  close_handle((uv_handle_t *)req->handle);
}

/* Queued writes are delivered first (uv_shutdown), then the pipe is closed: the child reads
 * all its input, then EOF. */
void bt_proc_close_stdin(bt_proc_t *p) {
  if (!p->has_pipe[0] || p->stdin_done) return;
  p->stdin_done = 1;
  uv_stream_t *s = (uv_stream_t *)&p->pipes[0];
  if (uv_is_closing((uv_handle_t *)s) || uv_shutdown(&p->shutdown, s, on_stdin_shutdown) != 0)
    close_handle((uv_handle_t *)s);
}

int bt_proc_kill(bt_proc_t *p, int signum) {
  if (p->exited) return 0;
  return uv_process_kill(&p->process, signum);
}

void bt_proc_read_stop(bt_proc_t *p) {
  for (int fd = 1; fd <= 2; fd++)
    if (p->reading[fd]) uv_read_stop((uv_stream_t *)&p->pipes[fd]);
}

void bt_proc_read_start(bt_proc_t *p) {
  for (int fd = 1; fd <= 2; fd++)
    if (p->reading[fd]) uv_read_start((uv_stream_t *)&p->pipes[fd], on_alloc, on_read);
}

static void on_kill_timer(uv_timer_t *h) {
  bt_proc_t *p = h->data;
  if (!p->exited) uv_process_kill(&p->process, SIGKILL);
}

void bt_proc_close(bt_proc_t *p, uint64_t grace_ms) {
  if (p->released) return;
  p->released = 1;
  p->grace_ms = grace_ms;
  if (!p->exited) {
    bt_proc_close_stdin(p);
    /* Keep draining output so a child blocked on a full pipe can reach its exit. */
    bt_proc_read_start(p);
    uv_process_kill(&p->process, SIGTERM);
    uv_timer_start(&p->kill_timer, on_kill_timer, grace_ms, 0);
  }
  maybe_finish(p);
}

int bt_proc_pid(const bt_proc_t *p) { return p->process.pid; }
/* The embedder's pointer given as bt_proc_events.data: the only way an event callback can
 * find its own state. */
void *bt_proc_data(const bt_proc_t *p) { return p->ev.data; }
int bt_proc_exited(const bt_proc_t *p) { return p->exited; }
