/*
 * buf.c — a growable byte buffer for what arrives from peers (process output, HTTP bodies
 * and headers). The bytes are always followed by a NUL, so text can be read in place.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int bt__buf_append(bt_buf *b, const char *data, size_t n) {
  if (n > SIZE_MAX / 2 - b->len - 1) return -1;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

void bt__buf_free(bt_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}
