/*
 * lines.c — a byte stream cut into lines at "\n": what a child writes to stdout, read by
 * proc:read_line (and so by the MCP client over stdio, one JSON-RPC message a line). Kept
 * apart from the process code, with no I/O, so that a fuzzer can drive it (see internal.h).
 *
 * Invariants: buf.p[0, pos) is consumed, buf.p[pos, buf.len) unread; pos <= scan <= len and
 * buf.p[pos, scan) holds no '\n', so a long line arriving in small pieces is searched once
 * (linear, not quadratic). Consumed bytes are dropped only when an append would otherwise
 * grow the buffer, so a line handed out stays valid until the next append.
 *
 * The splitting itself is bt__lines_find, on bytes the caller may not own: the HTTP
 * stream's read_line (lhttpstream.c) cuts the transfer's unread body with it in place, so
 * process output and HTTP bodies are cut by the same code.
 */
#include <string.h>

#include "internal.h"

size_t bt__lines_unread(const bt_lines *l) { return l->buf.len - l->pos; }

const char *bt__lines_peek(const bt_lines *l) { return l->buf.p + l->pos; }

int bt__lines_append(bt_lines *l, const char *data, size_t n) {
  bt_buf *b = &l->buf;
  if (l->pos > 0 && b->len + n > b->cap) {
    memmove(b->p, b->p + l->pos, b->len - l->pos);
    b->len -= l->pos;
    l->scan -= l->pos;
    l->pos = 0;
  }
  return bt__buf_append(b, data, n);
}

void bt__lines_consume(bt_lines *l, size_t n) {
  l->pos += n <= bt__lines_unread(l) ? n : bt__lines_unread(l);
  if (l->scan < l->pos) l->scan = l->pos;
  if (l->pos == l->buf.len) l->pos = l->scan = l->buf.len = 0;
}

int bt__lines_find(const char *p, size_t n, size_t max, size_t *seen, size_t *len) {
  /* Only the first max + 1 bytes matter: a '\n' beyond them ends a line that is too long. */
  size_t end = n <= max ? n : max + 1;
  if (*seen < end) {
    const char *nl = memchr(p + *seen, '\n', end - *seen);
    *seen = nl != NULL ? (size_t)(nl - p) : end;
  }
  if (*seen >= end) return n > max ? BT_LINE_TOO_LONG : BT_LINE_NONE;
  *len = *seen;  /* < end <= max + 1 */
  return BT_LINE_OK;
}

int bt__lines_scan(bt_lines *l, size_t max, size_t *len) {
  size_t unread = bt__lines_unread(l);
  if (unread == 0) return BT_LINE_NONE;  /* (the buffer may not exist yet) */
  size_t seen = l->scan - l->pos;
  int rc = bt__lines_find(bt__lines_peek(l), unread, max, &seen, len);
  l->scan = l->pos + seen;
  return rc;
}

int bt__lines_next(bt_lines *l, size_t max, const char **line, size_t *len) {
  int rc = bt__lines_scan(l, max, len);
  if (rc != BT_LINE_OK) return rc;
  *line = bt__lines_peek(l);
  bt__lines_consume(l, *len + 1);
  return BT_LINE_OK;
}

void bt__lines_free(bt_lines *l) {
  bt__buf_free(&l->buf);
  l->pos = l->scan = 0;
}
