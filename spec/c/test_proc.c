/* Core subprocesses: output and exit status arrive; releasing a live child sends TERM and
 * its handles close only after it exited; releasing it reaches what it started (its process
 * group) unless no_process_group; writes report their queue and keep their order; reading stops and starts
 * again with nothing lost; a missing program, or no descriptors left, fails with no event;
 * the loop closes clean afterwards. */
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "test.h"

typedef struct {
  char out[256];
  size_t n;
  int eof_out, eof_err, exited, closed, sig, written, write_status;
  int64_t code;
} seen;

static void on_data(bt_proc_t *p, int fd, const char *data, size_t len) {
  seen *s = bt_proc_data(p);
  if (len == 0) {
    if (fd == 1) s->eof_out = 1;
    else s->eof_err = 1;
    return;
  }
  if (fd == 1 && s->n + len < sizeof s->out) {
    memcpy(s->out + s->n, data, len);
    s->n += len;
  }
}
static void on_exit_ev(bt_proc_t *p, int64_t code, int sig) {
  seen *s = bt_proc_data(p);
  s->exited = 1;
  s->code = code;
  s->sig = sig;
}
static void on_close_ev(bt_proc_t *p) {
  seen *s = bt_proc_data(p);
  s->closed = 1;
}
static void on_written_ev(bt_proc_t *p, int status) {
  seen *s = bt_proc_data(p);
  s->written++;
  if (status != 0) s->write_status = status;
}

static uv_loop_t loop;
static bt_rt_t *rt;

static bt_proc_t *start_opts(seen *s, bt_proc_opts o, int *rc) {
  bt_proc_events ev = {on_data, on_exit_ev, on_close_ev, on_written_ev, s};
  bt_proc_t *p = NULL;
  *rc = bt_proc_spawn(rt, &o, &ev, &p);
  return p;
}

static bt_proc_t *start(seen *s, char **argv, int *rc) {
  bt_proc_opts o = {.argv = argv};
  return start_opts(s, o, rc);
}

/* Whether pid is a process other than a zombie (an orphan's zombie may stay unreaped). */
static int alive(int pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *rp = strrchr(buf, ')');
  return rp != NULL && rp[1] == ' ' && rp[2] != 'Z';
}

/* Runs the loop until the child has printed a line; returns it as a number. */
static int read_number(seen *s) {
  while (memchr(s->out, '\n', s->n) == NULL) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  return atoi(s->out);
}

static void test_output_and_exit_code(void) {
  seen s = {0};
  char *argv[] = {"sh", "-c", "echo hello; exit 3", NULL};
  int rc;
  bt_proc_t *p = start(&s, argv, &rc);
  CHECK(rc == 0 && p != NULL && bt_rt_procs(rt) == 1 && !bt_proc_exited(p));
  while (!(s.exited && s.eof_out && s.eof_err)) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(s.code == 3 && s.sig == 0 && bt_proc_exited(p));
  CHECK(s.n == 6 && memcmp(s.out, "hello\n", 6) == 0);
  bt_proc_close(p, 1000);
  while (!s.closed) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(bt_rt_procs(rt) == 0);
}

static void test_release_kills_live_child(void) {
  seen s = {0};
  char *argv[] = {"sleep", "30", NULL};
  int rc;
  bt_proc_t *p = start(&s, argv, &rc);
  CHECK(rc == 0);
  int pid = bt_proc_pid(p);
  CHECK(pid > 0 && kill(pid, 0) == 0);
  bt_proc_close(p, 2000);  /* TERM now, KILL after 2 s */
  while (!s.closed) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(kill(pid, 0) != 0);  /* reaped: no such process */
  CHECK(bt_rt_procs(rt) == 0);
}

static void test_missing_program(void) {
  seen s = {0};
  char *argv[] = {"no-such-program-baton-test", NULL};
  int rc;
  start(&s, argv, &rc);
  CHECK(rc == UV_ENOENT);
  uv_run(bt_rt_loop(rt), UV_RUN_DEFAULT);  /* let the failed handles close */
  CHECK(!s.exited && !s.closed && bt_rt_procs(rt) == 0);
}

/* The child's background job gets the TERM too; with no_process_group it does not. */
static void test_release_reaches_the_group(void) {
  for (int no_group = 0; no_group <= 1; no_group++) {
    seen s = {0};
    char *argv[] = {"sh", "-c", "sleep 30 & echo $!; wait", NULL};
    int rc;
    bt_proc_t *p = start_opts(&s, (bt_proc_opts){.argv = argv, .no_process_group = no_group},
                              &rc);
    CHECK(rc == 0);
    int bg = read_number(&s);
    CHECK(bg > 0 && alive(bg));
    bt_proc_close(p, 2000);
    while (!s.closed) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
    CHECK(alive(bg) == no_group);
    if (no_group) kill(bg, SIGKILL);
  }
}

/* A kill reaches the whole group: the pipeline's processes hold stdout until they die. */
static void test_kill_signals_the_group(void) {
  seen s = {0};
  char *argv[] = {"sh", "-c", "sleep 30 | cat", NULL};
  int rc;
  bt_proc_t *p = start(&s, argv, &rc);
  CHECK(rc == 0);
  usleep(100000);  /* the shell starts its pipeline */
  CHECK(bt_proc_kill(p, SIGTERM) == 0);
  while (!(s.exited && s.eof_out)) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(s.sig == SIGTERM);
  bt_proc_close(p, 0);
  while (!s.closed) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
}

/* What the pipe has not taken is reported, and on_written comes as it drains. */
static void test_write_queue(void) {
  seen s = {0};
  char *argv[] = {"sh", "-c", "sleep 0.2; exec cat >/dev/null", NULL};
  int rc;
  bt_proc_t *p = start_opts(&s, (bt_proc_opts){.argv = argv, .pipe_stdin = 1}, &rc);
  CHECK(rc == 0);
  size_t len = (size_t)1 << 20;
  char *big = calloc(1, len);
  CHECK(big != NULL && bt_proc_write(p, big, len) == 0);
  free(big);  /* copied */
  CHECK(bt_proc_write_queue(p) > 0 && bt_proc_write_queue(p) <= len);
  CHECK(s.written == 0);
  while (bt_proc_write_queue(p) > 0) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(s.written == 1 && s.write_status == 0);
  bt_proc_close_stdin(p);
  while (!(s.exited && s.eof_out && s.eof_err)) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(s.code == 0);
  bt_proc_close(p, 1000);
  while (!s.closed) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
}

/* A write the pipe takes at once needs no request and gets no on_written; one made while
 * others are queued waits behind them: the child reads everything in order. */
static void test_write_order(void) {
  seen s = {0};
  char *argv[] = {"sh", "-c", "sleep 0.2; exec uniq -c", NULL};
  int rc;
  bt_proc_t *p = start_opts(&s, (bt_proc_opts){.argv = argv, .pipe_stdin = 1}, &rc);
  CHECK(rc == 0);
  CHECK(bt_proc_write(p, "1\n", 2) == 0 && bt_proc_write_queue(p) == 0);
  uv_run(bt_rt_loop(rt), UV_RUN_NOWAIT);
  CHECK(s.written == 0);
  size_t len = (size_t)1 << 20;
  char *big = malloc(len);
  CHECK(big != NULL);
  for (size_t i = 0; i < len; i += 2) memcpy(big + i, "2\n", 2);
  CHECK(bt_proc_write(p, big, len) == 0);
  free(big);
  CHECK(bt_proc_write_queue(p) > 0);  /* the pipe holds 64 KiB: the rest waits */
  CHECK(bt_proc_write(p, "3\n", 2) == 0);
  while (bt_proc_write_queue(p) > 0) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(s.written == 2 && s.write_status == 0);
  bt_proc_close_stdin(p);
  while (!(s.exited && s.eof_out && s.eof_err)) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  s.out[s.n] = '\0';
  long c[3];
  int v[3];
  CHECK(sscanf(s.out, "%ld %d %ld %d %ld %d", &c[0], &v[0], &c[1], &v[1], &c[2], &v[2]) == 6);
  CHECK(c[0] == 1 && v[0] == 1 && c[1] == (long)(len / 2) && v[1] == 2 && c[2] == 1 && v[2] == 3);
  bt_proc_close(p, 1000);
  while (!s.closed) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
}

/* Reading stopped: the output waits in the pipe, even after the child exited; started
 * again, all of it arrives. */
static void test_read_stop_start(void) {
  seen s = {0};
  char *argv[] = {"sh", "-c", "echo one; echo two", NULL};
  int rc;
  bt_proc_t *p = start(&s, argv, &rc);
  CHECK(rc == 0);
  bt_proc_read_stop(p);
  while (!s.exited) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  for (int i = 0; i < 5; i++) uv_run(bt_rt_loop(rt), UV_RUN_NOWAIT);
  CHECK(bt_proc_exited(p) && s.n == 0 && !s.eof_out);
  bt_proc_read_start(p);
  while (!(s.eof_out && s.eof_err)) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(s.n == 8 && memcmp(s.out, "one\ntwo\n", 8) == 0);
  bt_proc_close(p, 1000);
  while (!s.closed) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
}

/* No descriptor left for the pipes: UV_EMFILE, no event, nothing left open. */
static void test_out_of_descriptors(void) {
  struct rlimit old, lim;
  CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
  lim = old;
  lim.rlim_cur = 64;
  CHECK(setrlimit(RLIMIT_NOFILE, &lim) == 0);
  int fds[64], n = 0;
  while (n < 64 && (fds[n] = dup(0)) >= 0) n++;
  seen s = {0};
  char *argv[] = {"true", NULL};
  int rc;
  start(&s, argv, &rc);
  while (n > 0) close(fds[--n]);
  CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
  CHECK(rc == UV_EMFILE);
  uv_run(bt_rt_loop(rt), UV_RUN_DEFAULT);
  CHECK(!s.exited && !s.closed && bt_rt_procs(rt) == 0);
}

int main(void) {
  rt = test_rt_new(&loop);
  RUN(test_output_and_exit_code);
  RUN(test_release_kills_live_child);
  RUN(test_missing_program);
  RUN(test_release_reaches_the_group);
  RUN(test_kill_signals_the_group);
  RUN(test_write_queue);
  RUN(test_write_order);
  RUN(test_read_stop_start);
  RUN(test_out_of_descriptors);
  test_rt_end(rt, &loop);
  return 0;
}
