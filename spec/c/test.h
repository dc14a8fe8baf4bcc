/* test.h — a minimal assertion helper for the core's C tests. They use the public API only
 * (baton.h), as a C host would; the tests of internal parsers live in spec/c/internal.
 * Each test ends as libuv's do: the runtime freed, then its loop closed with nothing left
 * on it (test_rt_end), so a handle or timer left behind fails the test. */
#ifndef BATON_TEST_H
#define BATON_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton.h"

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
      exit(1);                                                                   \
    }                                                                            \
  } while (0)

#define RUN(fn)                        \
  do {                                 \
    fn();                              \
    printf("ok - %s\n", #fn);          \
  } while (0)

/* A runtime on a loop of the test's own (storage in *loop). */
static inline bt_rt_t *test_rt_new(uv_loop_t *loop) {
  CHECK(uv_loop_init(loop) == 0);
  bt_rt_t *rt = bt_rt_new(loop);
  CHECK(rt != NULL && bt_rt_loop(rt) == loop);
  return rt;
}

/* Nothing queued, no timer armed; the runtime freed; the loop closes: no handle is left. */
static inline void test_rt_end(bt_rt_t *rt, uv_loop_t *loop) {
  CHECK(bt_rt_ready(rt) == 0 && bt_rt_timers(rt) == 0 && bt_rt_current(rt) == NULL);
  CHECK(bt_rt_free(rt) == 0);
  CHECK(uv_loop_close(loop) == 0);
}

#endif
