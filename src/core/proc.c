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
 * Process groups. Unless opts->no_process_group, the child starts a session of its own
 * (libuv's UV_PROCESS_DETACHED: setsid() before exec), so it leads a process group that
 * holds everything it starts (a shell's pipeline, `cmd &`) unless those move out by
 * themselves. Signals then go to the whole group (kill(-pid)): bt_proc_kill, and the TERM
 * and KILL of a release. A release also covers what is left of the group after the child
 * itself has exited: while a member other than a zombie lives, the handles stay open, polled
 * every POLL_MS, until it is gone or the grace period ends in SIGKILL. The pid cannot be
 * reused while the group exists (the kernel keeps a pid allocated while it names a group),
 * so signalling -pid after the child was reaped reaches only its own stragglers.
 * setsid rather than setpgid (which libuv does not offer) has two consequences for the
 * host: the child has no controlling terminal (a program that opens /dev/tty to prompt
 * fails rather than stops), and the terminal's signals (Ctrl-C, hangup) reach the host
 * only; the host passes them on by releasing its children.
 *
 * Writes. With nothing queued, a write goes to the pipe at once (uv_try_write: no request,
 * no callback, no extra loop turn for the completion); what the pipe does not take is
 * copied into a request of its own; the bytes not yet taken by the pipe are reported by
 * bt_proc_write_queue(), and on_written fires as each request completes, so that the
 * embedder can bound what it queues. The first failed write is remembered and returned by
 * every later bt_proc_write.
 *
 * SIGPIPE. Writing to the stdin pipe of a child that has exited raises SIGPIPE, whose default
 * action kills the whole host. The first spawn with a stdin pipe therefore sets SIGPIPE to
 * SIG_IGN if it is still SIG_DFL (a host's own handler is left alone), so such a write fails
 * with UV_EPIPE instead; libuv resets every signal to its default in the child.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define POLL_MS 20  /* a released group's stragglers: how often to look whether they left */

struct bt_proc {
  uv_process_t process;
  uv_pipe_t pipes[3];           /* 0 stdin, 1 stdout, 2 stderr */
  uv_timer_t kill_timer;        /* a release: SIGKILL at kill_due, and the straggler poll */
  uv_shutdown_t shutdown;       /* close_stdin: pending writes drain first */
  bt_rt_t *rt;
  bt_proc_events ev;
  int pid;
  int group;                    /* the child leads its own process group: signal -pid */
  int has_pipe[3];              /* initialised (must be closed) */
  int reading[3];               /* stdout/stderr still open for reading */
  int stdin_done;               /* close_stdin was called */
  int write_err;                /* the first failed write, returned by later writes */
  int exited;
  int released;                 /* bt_proc_close() was called */
  int reaping;                  /* released, and the group still has members */
  int killed;                   /* SIGKILL was sent */
  int closing;                  /* handles are being closed */
  int open_handles;             /* initialised handles not yet through their close callback */
  int notify;                   /* deliver on_close (0 when spawn failed) */
  uint64_t kill_due;            /* loop time of the SIGKILL of a release */
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

/* ---- signals -------------------------------------------------------------------------- */

/* Sends `sig` to the child's group (or to the child alone without one). 0 or a libuv error;
 * UV_ESRCH when nothing is left to signal. */
static int signal_child(bt_proc_t *p, int sig) {
  if (p->group) {
    if (kill(-p->pid, sig) == 0) return 0;
    if (errno != ESRCH || p->exited) return uv_translate_sys_error(errno);
  }
  if (p->exited) return UV_ESRCH;
  return uv_process_kill(&p->process, sig);
}

#ifdef __linux__
/* 1 if a process of group `pgid` other than a zombie exists. Orphaned zombies stay in the
 * group until their new parent reaps them, which some init processes never do. */
static int group_has_live_member(int pgid) {
  DIR *d = opendir("/proc");
  if (d == NULL) return 1;  /* cannot tell: assume so (the grace period bounds the wait) */
  int found = 0;
  struct dirent *e;
  while (!found && (e = readdir(d)) != NULL) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    char path[300], buf[512];
    snprintf(path, sizeof path, "/proc/%.255s/stat", e->d_name);
    FILE *f = fopen(path, "re");
    if (f == NULL) continue;  /* gone meanwhile */
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* "pid (comm) S ppid pgrp ...": comm may hold anything, so parse after the last ')'. */
    char *rp = strrchr(buf, ')');
    char state;
    int ppid, pgrp;
    if (rp != NULL && sscanf(rp + 1, " %c %d %d", &state, &ppid, &pgrp) == 3 &&
        pgrp == pgid && state != 'Z' && state != 'X')
      found = 1;
  }
  closedir(d);
  return found;
}
#else
static int group_has_live_member(int pgid) {
  BT_UNUSED(pgid);
  return 1;  /* no portable way to tell a zombie: the grace period bounds the wait */
}
#endif

/* 1 if the child's group (the child included) may still have a live member. */
static int group_alive(bt_proc_t *p) {
  if (!p->group) return !p->exited;
  if (kill(-p->pid, 0) != 0) return errno == EPERM;  /* ESRCH: nobody is left */
  return !p->exited || group_has_live_member(p->pid);
}

/* ---- closing -------------------------------------------------------------------------- */

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
  if (p->exited && p->released && !p->reaping) close_all(p);
}

/* A released child: SIGKILL once kill_due has come; then, the child having exited, the
 * handles close as soon as its group has no live member left (or right after the KILL). */
static void on_kill_timer(uv_timer_t *h) {
  bt_proc_t *p = h->data;
  if (!p->killed && uv_now(p->rt->loop) >= p->kill_due) {
    p->killed = 1;
    signal_child(p, SIGKILL);
  }
  if (p->exited && (p->killed || !group_alive(p))) {
    p->reaping = 0;
    uv_timer_stop(&p->kill_timer);
    maybe_finish(p);
  }
}

/* Arms the kill timer: at kill_due, and every POLL_MS before it once the child has exited
 * while its group lives on. */
static void arm_kill_timer(bt_proc_t *p) {
  uint64_t now = uv_now(p->rt->loop);
  uint64_t left = p->kill_due > now ? p->kill_due - now : 0;
  if (p->exited && p->group && left > POLL_MS)
    uv_timer_start(&p->kill_timer, on_kill_timer, POLL_MS, POLL_MS);
  else if (!p->killed)
    uv_timer_start(&p->kill_timer, on_kill_timer, left, p->exited ? POLL_MS : 0);
}

static void on_exit_cb(uv_process_t *h, int64_t code, int sig) {
  bt_proc_t *p = h->data;
  p->exited = 1;
  if (p->ev.on_exit && !p->released) p->ev.on_exit(p, code, sig);
  if (p->reaping) {
    if (p->killed || !group_alive(p)) {
      p->reaping = 0;
      uv_timer_stop(&p->kill_timer);
    } else {
      arm_kill_timer(p);  /* stragglers: poll until they are gone or KILL time */
    }
  }
  maybe_finish(p);
}

/* ---- I/O ------------------------------------------------------------------------------ */

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
  if (!o->no_process_group) opts.flags |= UV_PROCESS_DETACHED;
  /* uv_spawn returns once the child has exec'd (or failed to): setsid() has happened. */
  int rc = uv_spawn(rt->loop, &p->process, &opts);
  if (rc != 0) {
    p->exited = p->released = 1;
    close_all(p);  /* notify stays 0: a failed call delivers no event */
    return rc;
  }
  p->notify = 1;
  p->pid = p->process.pid;
  p->group = !o->no_process_group;
  rt->nprocs++;
  for (int fd = 1; fd <= 2; fd++) {
    p->reading[fd] = 1;
    uv_read_start((uv_stream_t *)&p->pipes[fd], on_alloc, on_read);
  }
  *out = p;
  return 0;
}

static void on_written(uv_write_t *req, int status) {
  bt_proc_t *p = req->handle->data;
  free(bt_container_of(req, write_req, req));
  if (status < 0 && p->write_err == 0) p->write_err = status;
  if (p->ev.on_written && !p->released) p->ev.on_written(p, status);
}

int bt_proc_write(bt_proc_t *p, const char *data, size_t len) {
  if (!p->has_pipe[0] || p->stdin_done || p->closing) return UV_EPIPE;
  if (p->write_err != 0) return p->write_err;
  if (len > UINT_MAX) return BT_EINVAL;  /* a uv_buf_t holds at most UINT_MAX bytes */
  uv_stream_t *s = (uv_stream_t *)&p->pipes[0];
  if (uv_stream_get_write_queue_size(s) == 0) {  /* nothing queued: order is kept */
    uv_buf_t now = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write(s, &now, 1);
    if (n >= 0 && (size_t)n == len) return 0;
    if (n >= 0) {
      data += n;
      len -= (size_t)n;
    } else if (n != UV_EAGAIN) {
      p->write_err = n;  /* reported by the next write, as a queued write's failure is: the */
      return 0;          /* caller learns why from the child's exit and stderr first */
    }
  }
  write_req *w = malloc(sizeof *w + len);
  if (w == NULL) return BT_ENOMEM;
  memcpy(w->data, data, len);
  uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
  int rc = uv_write(&w->req, s, &buf, 1, on_written);
  if (rc != 0) free(w);
  return rc;
}

size_t bt_proc_write_queue(const bt_proc_t *p) {
  if (!p->has_pipe[0] || p->closing) return 0;
  return uv_stream_get_write_queue_size((const uv_stream_t *)&p->pipes[0]);
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
  int rc = signal_child(p, signum);
  return rc == UV_ESRCH && p->exited ? 0 : rc;
}

void bt_proc_read_stop(bt_proc_t *p) {
  for (int fd = 1; fd <= 2; fd++)
    if (p->reading[fd]) uv_read_stop((uv_stream_t *)&p->pipes[fd]);
}

void bt_proc_read_start(bt_proc_t *p) {
  for (int fd = 1; fd <= 2; fd++)
    if (p->reading[fd]) uv_read_start((uv_stream_t *)&p->pipes[fd], on_alloc, on_read);
}

void bt_proc_close(bt_proc_t *p, uint64_t grace_ms) {
  if (p->released) return;
  p->released = 1;
  if (!p->exited) {
    bt_proc_close_stdin(p);
    /* Keep draining output so a child blocked on a full pipe can reach its exit. */
    bt_proc_read_start(p);
  }
  if (group_alive(p)) {
    p->reaping = 1;
    p->kill_due = uv_now(p->rt->loop) + grace_ms;
    signal_child(p, SIGTERM);
    arm_kill_timer(p);
  }
  maybe_finish(p);
}

int bt_proc_pid(const bt_proc_t *p) { return p->pid; }
/* The embedder's pointer given as bt_proc_events.data: the only way an event callback can
 * find its own state. */
void *bt_proc_data(const bt_proc_t *p) { return p->ev.data; }
int bt_proc_exited(const bt_proc_t *p) { return p->exited; }
