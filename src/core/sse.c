/*
 * sse.c — the server-sent events parser (sse.h): a state machine over bytes, fed whatever
 * pieces arrive. A line is read as it comes — its field name into `name` (only the first
 * bytes matter: the four known names are short), its value straight into the buffer of
 * the field it belongs to, or nowhere for comments and unknown fields — so no line is held
 * whole and a value is copied once. A "\r" ends a line at once; a "\n" right after it (in
 * this piece or the next) is then skipped.
 *
 * Invariants: data.len + type.len <= max_event and pending.len <= max_event (when a limit
 * is set); `ready` only between returning BT_SSE_EVENT and the next feed; `skip` from a
 * limit crossed to the end of that event.
 */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

enum { S_NAME, S_SPACE, S_VALUE };                     /* where in the line */
enum { F_IGNORE, F_DATA, F_EVENT, F_ID, F_RETRY };     /* what the value is for */

#define BIG_BUFFER ((size_t)1 << 20)  /* an event buffer above this is freed once read */

void bt__sse_init(bt_sse *s, size_t max_event) {
  memset(s, 0, sizeof *s);
  s->max_event = max_event;
  s->retry_ms = -1;
}

void bt__sse_free(bt_sse *s) {
  bt__buf_free(&s->data);
  bt__buf_free(&s->type);
  bt__buf_free(&s->id);
  bt__buf_free(&s->pending);
}

static void buf_clear(bt_buf *b) {
  b->len = 0;
  if (b->p) b->p[0] = '\0';
}

static void clear_event(bt_sse *s) {
  buf_clear(&s->data);
  buf_clear(&s->type);
  s->has_data = 0;
}

/* The event being read is dropped: the rest of it, to the next blank line, is skipped. */
static int drop(bt_sse *s, int why) {
  clear_event(s);
  buf_clear(&s->pending);
  s->skip = 1;
  s->field = F_IGNORE;
  return why;
}

/* Appends to data or type, within the event's limit. */
static int keep(bt_sse *s, bt_buf *b, const char *p, size_t n) {
  if (s->max_event && n > s->max_event - (s->data.len + s->type.len))
    return drop(s, BT_SSE_TOO_LARGE);
  if (bt__buf_append(b, p, n) != 0) return drop(s, BT_SSE_NOMEM);
  return BT_SSE_MORE;
}

static int field_of(const bt_sse *s) {
  if (s->skip) return F_IGNORE;
  size_t n = s->name_len;
  const char *m = s->name;
  if (n == 4 && memcmp(m, "data", 4) == 0) return F_DATA;
  if (n == 5 && memcmp(m, "event", 5) == 0) return F_EVENT;
  if (n == 2 && memcmp(m, "id", 2) == 0) return F_ID;
  if (n == 5 && memcmp(m, "retry", 5) == 0) return F_RETRY;
  return F_IGNORE;
}

/* The field's name is known and its value starts (empty if the line has no colon). */
static int begin_value(bt_sse *s) {
  s->field = field_of(s);
  switch (s->field) {
  case F_DATA:
    if (s->has_data) {
      int r = keep(s, &s->data, "\n", 1);
      if (r != BT_SSE_MORE) return r;
    }
    s->has_data = 1;
    break;
  case F_EVENT:
    buf_clear(&s->type);
    break;
  case F_ID:
    buf_clear(&s->pending);
    s->id_nul = s->id_over = 0;
    break;
  case F_RETRY:
    s->retry_acc = 0;
    s->retry_digits = s->retry_bad = 0;
    break;
  default:
    break;
  }
  return BT_SSE_MORE;
}

static int add_value(bt_sse *s, const char *p, size_t n) {
  switch (s->field) {
  case F_DATA:
    return keep(s, &s->data, p, n);
  case F_EVENT:
    return keep(s, &s->type, p, n);
  case F_ID:
    /* Whether the id is ignored (a NUL) or too large is known at the line's end. */
    if (s->id_nul) return BT_SSE_MORE;
    if (memchr(p, '\0', n) != NULL) {
      s->id_nul = 1;
      buf_clear(&s->pending);
      return BT_SSE_MORE;
    }
    if (s->id_over || (s->max_event && n > s->max_event - s->pending.len)) {
      s->id_over = 1;
      return BT_SSE_MORE;
    }
    if (bt__buf_append(&s->pending, p, n) != 0) return drop(s, BT_SSE_NOMEM);
    return BT_SSE_MORE;
  case F_RETRY:
    for (size_t i = 0; i < n && !s->retry_bad; i++) {
      if (p[i] < '0' || p[i] > '9' || s->retry_digits >= 15) s->retry_bad = 1;
      else s->retry_acc = s->retry_acc * 10 + (p[i] - '0'), s->retry_digits++;
    }
    return BT_SSE_MORE;
  default:
    return BT_SSE_MORE;
  }
}

/* A line ended: a blank one ends the event, another applies its field. */
static int line_end(bt_sse *s) {
  int r = BT_SSE_MORE;
  if (s->state == S_NAME && s->name_len == 0) {
    if (s->skip) {
      s->skip = 0;
      clear_event(s);
    } else if (s->has_data) {
      s->ready = 1;
      r = BT_SSE_EVENT;
    } else {
      clear_event(s);  /* an event without data is not one; its type goes too */
    }
  } else {
    if (s->state == S_NAME) r = begin_value(s);  /* "name" alone: an empty value */
    if (r == BT_SSE_MORE && s->field == F_ID && !s->id_nul && s->id_over) {
      r = drop(s, BT_SSE_TOO_LARGE);
    } else if (r == BT_SSE_MORE && s->field == F_ID && !s->id_nul) {
      bt_buf t = s->id;  /* the id read becomes the last event id */
      s->id = s->pending;
      s->pending = t;
      buf_clear(&s->pending);
      s->has_id = 1;
    } else if (r == BT_SSE_MORE && s->field == F_RETRY && !s->retry_bad &&
               s->retry_digits > 0) {
      s->retry_ms = s->retry_acc;
      s->retry_new = 1;
    }
  }
  s->state = S_NAME;
  s->name_len = 0;
  s->field = F_IGNORE;
  return r;
}

/* The machine after the byte-order mark; stops after an event or a limit crossed. */
static size_t run(bt_sse *s, const char *p, size_t len, int *res) {
  size_t i = 0;
  while (i < len) {
    char c = p[i];
    if (s->skip_lf) {
      s->skip_lf = 0;
      if (c == '\n') {
        i++;
        continue;
      }
    }
    if (c == '\r' || c == '\n') {
      i++;
      s->skip_lf = c == '\r';
      int r = line_end(s);
      if (r != BT_SSE_MORE) {
        *res = r;
        return i;
      }
      continue;
    }
    switch (s->state) {
    case S_NAME:
      i++;
      if (c == ':') {
        if (s->name_len == 0) {  /* a comment */
          s->field = F_IGNORE;
          s->state = S_VALUE;
        } else {
          s->state = S_SPACE;
          int r = begin_value(s);
          if (r != BT_SSE_MORE) {
            *res = r;
            return i;
          }
        }
      } else if (s->name_len < sizeof s->name) {
        s->name[s->name_len++] = c;
      } else {
        s->name_len = sizeof s->name + 1;  /* longer than any field read: ignored */
      }
      break;
    case S_SPACE:
      s->state = S_VALUE;
      if (c == ' ') {
        i++;
        break;
      }
      /* fall through */
    default: {  /* S_VALUE: the value up to the line's end, in one piece */
      size_t j = i;
      while (j < len && p[j] != '\n' && p[j] != '\r') j++;
      int r = add_value(s, p + i, j - i);
      i = j;
      if (r != BT_SSE_MORE) {
        *res = r;
        return i;
      }
      break;
    }
    }
  }
  return i;
}

size_t bt__sse_feed(bt_sse *s, const char *p, size_t len, int *res) {
  static const char bom[3] = {'\xEF', '\xBB', '\xBF'};
  *res = BT_SSE_MORE;
  if (s->ready) {
    s->ready = 0;
    clear_event(s);
    if (s->data.cap > BIG_BUFFER) bt__buf_free(&s->data);
  }
  size_t i = 0;
  while (s->bom < 3 && i < len) {  /* 0..2: that many bytes of a mark seen; 3: done */
    if (p[i] == bom[s->bom]) {
      s->bom++;
      i++;
      continue;
    }
    int k = s->bom;  /* not a mark after all: its first bytes were text */
    s->bom = 3;
    run(s, bom, (size_t)k, res);  /* no line ends among them: takes all */
  }
  return i + run(s, p + i, len - i, res);
}
