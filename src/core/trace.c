/*
 * trace.c — the streaming Chrome trace-event writer (trace.h): events formatted into one
 * fixed buffer and written to the file when it fills, so memory stays at BT__TRACE_BUF
 * however long the run. One event is at most BT__TRACE_EVENT bytes (names and args are cut
 * to fit), so it always fits in an emptied buffer.
 *
 * Strings are written as valid JSON whatever bytes they hold: controls, '"' and '\\'
 * escaped, valid UTF-8 copied, and each byte that does not start a valid UTF-8 sequence
 * (a stray continuation, an overlong form, a surrogate, past U+10FFFF, cut short) written
 * as \ufffd; a string cut to fit is cut between characters.
 */
#include <errno.h>
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
  int err_taken;    /* bt__trace_take_error handed it over */
  int pid;
  size_t len;
  char buf[BT__TRACE_BUF];
};

uint64_t bt__trace_now(void) { return uv_hrtime(); }
uint64_t bt__trace_t0(const bt__trace_t *tr) { return tr->t0; }
uint64_t bt__trace_count(const bt__trace_t *tr) { return tr->count; }
int bt__trace_error_taken(const bt__trace_t *tr) { return tr->err_taken; }

int bt__trace_take_error(bt__trace_t *tr) {
  if (tr->err == 0 || tr->err_taken) return 0;
  tr->err_taken = 1;
  return tr->err;
}

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

/* The bytes not copied as they are: 1, what JSON strings escape (controls, '"', '\\');
 * 2, the bytes of UTF-8 sequences, which are checked. */
#define C8(x) x, x, x, x, x, x, x, x
static const unsigned char escaped[256] = {
    C8(1), C8(1), C8(1), C8(1), 0, 0, 1, 0, 0, 0, 0, 0, ['\\'] = 1,
    [0x80] = C8(2), C8(2), C8(2), C8(2), C8(2), C8(2), C8(2), C8(2),
    C8(2), C8(2), C8(2), C8(2), C8(2), C8(2), C8(2), C8(2)};
#undef C8

/* The length of the valid UTF-8 sequence at p (2 to 4), or 0 (RFC 3629's table; a NUL
 * ends the string and is no continuation byte, so nothing past it is read). */
static size_t utf8_seq(const unsigned char *p) {
  unsigned char c = p[0], lo = 0x80, hi = 0xBF;
  size_t len;
  if (c < 0xC2) return 0;
  if (c < 0xE0) len = 2;
  else if (c < 0xF0) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;  /* no surrogates */
  } else if (c < 0xF5) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;  /* up to U+10FFFF */
  } else {
    return 0;
  }
  if (p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (p[i] < 0x80 || p[i] > 0xBF) return 0;
  return len;
}
static inline int needs_escape(unsigned char c) { return escaped[c]; }

void bt__trace_json_str(char *buf, size_t cap, size_t *len, const char *s) {
  size_t n = *len;
  if (cap < n + 3) return;
  buf[n++] = '"';
  const unsigned char *p = (const unsigned char *)s;
  for (;;) {
    size_t run = 0;  /* the next run of characters copied as they are */
    while (p[run] != 0 && !needs_escape(p[run])) run++;
    size_t room = cap - n > 8 ? cap - n - 8 : 0;  /* keep room for an escape, '"', NUL */
    if (run > room) run = room;
    memcpy(buf + n, p, run);
    n += run;
    p += run;
    if (*p == 0 || n + 8 >= cap) break;
    unsigned char c = *p++;
    if (c >= 0x80) {
      size_t sl = utf8_seq(p - 1);
      if (sl > 0) {
        memcpy(buf + n, p - 1, sl);
        n += sl;
        p += sl - 1;
      } else {
        memcpy(buf + n, "\\ufffd", 6);
        n += 6;
      }
    } else if (c == '"' || c == '\\') {
      buf[n++] = '\\';
      buf[n++] = (char)c;
    } else {
      static const char hex[] = "0123456789abcdef";
      memcpy(buf + n, "\\u00", 4);
      buf[n + 4] = hex[c >> 4];
      buf[n + 5] = hex[c & 15];
      n += 6;
    }
  }
  buf[n++] = '"';
  buf[n] = '\0';
  *len = n;
}

/* Appenders for the event being built at e (BT__TRACE_EVENT bytes; callers keep what they
 * add within it: names and args are cut before). No printf: an event is written per wait. */
static inline void put_lit(char *e, size_t *n, const char *s, size_t len) {
  if (*n + len >= BT__TRACE_EVENT) return;
  memcpy(e + *n, s, len);
  *n += len;
}
#define PUT(e, n, lit) put_lit(e, n, lit, sizeof lit - 1)

static void put_u64(char *e, size_t *n, uint64_t v) {
  char d[24];
  size_t k = sizeof d;
  do {
    d[--k] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  put_lit(e, n, d + k, sizeof d - k);
}

/* Microseconds with three decimals, from nanoseconds. */
static void put_us(char *e, size_t *n, uint64_t ns) {
  put_u64(e, n, ns / 1000u);
  unsigned f = (unsigned)(ns % 1000u);
  char d[4] = {'.', (char)('0' + f / 100), (char)('0' + f / 10 % 10), (char)('0' + f % 10)};
  put_lit(e, n, d, 4);
}

/* The common head of an event: separator, name, cat, ph, pid, tid. Returns its length. */
static size_t head(bt__trace_t *tr, char *e, const char *name, const char *cat, char ph,
                   uint64_t tid) {
  size_t n = 0;
  if (tr->count) PUT(e, &n, ",\n{\"name\":");
  else PUT(e, &n, "\n{\"name\":");
  bt__trace_json_str(e, 512, &n, name);
  if (cat != NULL) {
    PUT(e, &n, ",\"cat\":");
    bt__trace_json_str(e, n + 64, &n, cat);
  }
  PUT(e, &n, ",\"ph\":\"");
  e[n++] = ph;
  PUT(e, &n, "\",\"pid\":");
  put_u64(e, &n, (uint64_t)tr->pid);
  PUT(e, &n, ",\"tid\":");
  put_u64(e, &n, tid);
  return n;
}

/* Closes the event with args and '}' and commits it. */
static void commit(bt__trace_t *tr, char *e, size_t n, const char *args) {
  if (args != NULL) {
    size_t al = strlen(args);
    if (n + al + 16 < BT__TRACE_EVENT) {
      PUT(e, &n, ",\"args\":");
      put_lit(e, &n, args, al);
    }
  }
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
  tr->err_taken = 0;
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
  PUT(e, &n, ",\"ts\":");
  put_us(e, &n, begin_ns - tr->t0);
  PUT(e, &n, ",\"dur\":");
  put_us(e, &n, end_ns - begin_ns);
  commit(tr, e, n, args);
}

void bt__trace_instant(bt__trace_t *tr, uint64_t tid, const char *name, const char *cat,
                       uint64_t at_ns, const char *args) {
  if (at_ns < tr->t0) at_ns = tr->t0;
  char *e = reserve(tr);
  size_t n = head(tr, e, name, cat, 'i', tid);
  PUT(e, &n, ",\"s\":\"t\",\"ts\":");
  put_us(e, &n, at_ns - tr->t0);
  commit(tr, e, n, args);
}

void bt__trace_task(bt__trace_t *tr, uint64_t id, const char *name, uint64_t begin_ns,
                    uint64_t end_ns, const char *status) {
  char args[64];
  size_t n = 0;
  PUT(args, &n, "{\"id\":");
  put_u64(args, &n, id);
  PUT(args, &n, ",\"status\":\"");
  put_lit(args, &n, status, strlen(status) < 16 ? strlen(status) : 16);
  PUT(args, &n, "\"}");
  args[n] = '\0';
  bt__trace_span(tr, id, name, "task", begin_ns, end_ns, args);
  char track[300];
  n = 0;
  put_u64(track, &n, id);
  track[n++] = ' ';
  size_t l = strlen(name);
  if (l > sizeof track - n - 1) l = sizeof track - n - 1;
  memcpy(track + n, name, l);
  track[n + l] = '\0';
  bt__trace_track(tr, id, track);
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
