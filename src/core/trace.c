/*
 * trace.c — the streaming Chrome trace-event writer (trace.h): events formatted into one
 * fixed buffer and written to the file when it fills, so memory stays at BT__TRACE_BUF
 * however long the run. One event is at most BT__TRACE_EVENT bytes (names and args are cut
 * to fit), so it always fits in an emptied buffer.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "trace.h"

#define BT__TRACE_EVENT 2048u  /* the longest event written */

struct bt__trace {
  FILE *f;
  uint64_t t0;
  uint64_t count;
  int err;          /* first write error (negative errno), or 0 */
  int pid;
  size_t len;
  char buf[BT__TRACE_BUF];
};

uint64_t bt__trace_now(void) { return uv_hrtime(); }
uint64_t bt__trace_t0(const bt__trace_t *tr) { return tr->t0; }
uint64_t bt__trace_count(const bt__trace_t *tr) { return tr->count; }

void bt__trace_flush(bt__trace_t *tr) {
  if (tr->len > 0 && tr->err == 0) {
    if (fwrite(tr->buf, 1, tr->len, tr->f) != tr->len || fflush(tr->f) != 0)
      tr->err = errno ? -errno : -EIO;
  }
  tr->len = 0;
}

/* Room for one more event: the buffer is written out when less than an event is left. */
static char *reserve(bt__trace_t *tr) {
  if (BT__TRACE_BUF - tr->len < BT__TRACE_EVENT) bt__trace_flush(tr);
  return tr->buf + tr->len;
}

void bt__trace_json_str(char *buf, size_t cap, size_t *len, const char *s) {
  size_t n = *len;
  if (cap < n + 3) return;
  buf[n++] = '"';
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (n + 8 >= cap) break;  /* room for the longest escape, the quote and the NUL */
    unsigned char c = *p;
    if (c == '"' || c == '\\') {
      buf[n++] = '\\';
      buf[n++] = (char)c;
    } else if (c < 0x20) {
      n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", c);
    } else {
      buf[n++] = (char)c;
    }
  }
  buf[n++] = '"';
  buf[n] = '\0';
  *len = n;
}

/* Appends printf output to the event being built at e (cut at the event's size). */
static void put(char *e, size_t *n, const char *fmt, ...) {
  if (*n >= BT__TRACE_EVENT - 1) return;
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(e + *n, BT__TRACE_EVENT - *n, fmt, ap);
  va_end(ap);
  if (w > 0) *n += (size_t)w < BT__TRACE_EVENT - *n ? (size_t)w : BT__TRACE_EVENT - 1 - *n;
}

/* Microseconds since t0, three decimals. */
static void put_us(char *e, size_t *n, uint64_t ns) {
  put(e, n, "%llu.%03u", (unsigned long long)(ns / 1000u), (unsigned)(ns % 1000u));
}

/* The common head of an event: separator, name, cat, ph, pid, tid. Returns its length. */
static size_t head(bt__trace_t *tr, char *e, const char *name, const char *cat, char ph,
                   uint64_t tid) {
  size_t n = 0;
  put(e, &n, "%s{\"name\":", tr->count ? ",\n" : "\n");
  bt__trace_json_str(e, 512, &n, name);
  if (cat != NULL) {
    put(e, &n, ",\"cat\":");
    bt__trace_json_str(e, n + 64, &n, cat);
  }
  put(e, &n, ",\"ph\":\"%c\",\"pid\":%d,\"tid\":%llu", ph, tr->pid, (unsigned long long)tid);
  return n;
}

/* Closes the event with args and '}' and commits it. */
static void commit(bt__trace_t *tr, char *e, size_t n, const char *args) {
  if (args != NULL && n + strlen(args) + 16 < BT__TRACE_EVENT) put(e, &n, ",\"args\":%s", args);
  if (n > BT__TRACE_EVENT - 2) n = BT__TRACE_EVENT - 2;
  e[n++] = '}';
  tr->len += n;
  tr->count++;
}

bt__trace_t *bt__trace_open(const char *path, const char *pname, int *err) {
  bt__trace_t *tr = malloc(sizeof *tr);
  if (tr == NULL) {
    *err = -ENOMEM;
    return NULL;
  }
  tr->f = fopen(path, "w");
  if (tr->f == NULL) {
    *err = -errno;
    free(tr);
    return NULL;
  }
  tr->t0 = bt__trace_now();
  tr->count = 0;
  tr->err = 0;
  tr->pid = (int)getpid();
  tr->len = 0;
  tr->buf[tr->len++] = '[';
  char *e = reserve(tr);
  size_t n = head(tr, e, "process_name", NULL, 'M', 0);
  char args[600];
  size_t an = 0;
  memcpy(args, "{\"name\":", 8);
  an = 8;
  bt__trace_json_str(args, sizeof args - 2, &an, pname ? pname : "baton");
  args[an++] = '}';
  args[an] = '\0';
  commit(tr, e, n, args);
  return tr;
}

int bt__trace_close(bt__trace_t *tr) {
  if (tr == NULL) return 0;
  char *e = reserve(tr);
  memcpy(e, "\n]\n", 3);
  tr->len += 3;
  bt__trace_flush(tr);
  int rc = tr->err;
  if (fclose(tr->f) != 0 && rc == 0) rc = errno ? -errno : -EIO;
  free(tr);
  return rc;
}

void bt__trace_span(bt__trace_t *tr, uint64_t tid, const char *name, const char *cat,
                    uint64_t begin_ns, uint64_t end_ns, const char *args) {
  if (begin_ns < tr->t0) begin_ns = tr->t0;
  if (end_ns < begin_ns) end_ns = begin_ns;
  char *e = reserve(tr);
  size_t n = head(tr, e, name, cat, 'X', tid);
  put(e, &n, ",\"ts\":");
  put_us(e, &n, begin_ns - tr->t0);
  put(e, &n, ",\"dur\":");
  put_us(e, &n, end_ns - begin_ns);
  commit(tr, e, n, args);
}

void bt__trace_instant(bt__trace_t *tr, uint64_t tid, const char *name, const char *cat,
                       uint64_t at_ns, const char *args) {
  if (at_ns < tr->t0) at_ns = tr->t0;
  char *e = reserve(tr);
  size_t n = head(tr, e, name, cat, 'i', tid);
  put(e, &n, ",\"s\":\"t\",\"ts\":");
  put_us(e, &n, at_ns - tr->t0);
  commit(tr, e, n, args);
}

void bt__trace_track(bt__trace_t *tr, uint64_t tid, const char *name) {
  char *e = reserve(tr);
  size_t n = head(tr, e, "thread_name", NULL, 'M', tid);
  char args[600];
  size_t an = 8;
  memcpy(args, "{\"name\":", 8);
  bt__trace_json_str(args, sizeof args - 2, &an, name);
  args[an++] = '}';
  args[an] = '\0';
  commit(tr, e, n, args);
}
