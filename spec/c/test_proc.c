/* Core subprocesses: output and exit status arrive; releasing a live child sends TERM and
 * its handles close only after it exited; a missing program fails with no event; the loop
 * closes clean afterwards. */
#include <signal.h>

#include "test.h"

typedef struct {
  char out[256];
  size_t n;
  int eof_out, eof_err, exited, closed, sig;
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

static bt_rt_t *rt;

static bt_proc_t *start(seen *s, char **argv, int *rc) {
  bt_proc_opts o = {.argv = argv};
  bt_proc_events ev = {on_data, on_exit_ev, on_close_ev, s};
  bt_proc_t *p = NULL;
  *rc = bt_proc_spawn(rt, &o, &ev, &p);
  return p;
}

static void test_output_and_exit_code(void) {
  seen s = {0};
  char *argv[] = {"sh", "-c", "echo hello; exit 3", NULL};
  int rc;
  bt_proc_t *p = start(&s, argv, &rc);
  CHECK(rc == 0 && p != NULL && bt_rt_procs(rt) == 1);
  while (!(s.exited && s.eof_out && s.eof_err)) uv_run(bt_rt_loop(rt), UV_RUN_ONCE);
  CHECK(s.code == 3 && s.sig == 0);
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

int main(void) {
  rt = bt_rt_new(NULL);
  RUN(test_output_and_exit_code);
  RUN(test_release_kills_live_child);
  RUN(test_missing_program);
  CHECK(bt_rt_free(rt) == 0);
  return 0;
}
