/* test.h — a minimal assertion helper for the core's C tests (libuv's style: each test
 * ends by closing the loop and checking nothing is left). */
#ifndef BATON_TEST_H
#define BATON_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

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

#endif
