/*
 * sse.h — an incremental parser of server-sent events (text/event-stream), read as
 * EventSource reads them. Bytes in, events out: no I/O, no Lua, no allocation but the
 * event's own buffers, O(1) work per byte however the bytes are cut.
 *
 * The rules: lines end at "\r\n", "\n" or "\r"; a line is "field: value" (one space after
 * the colon dropped; no colon: the whole line is the field, the value empty); a line
 * starting with ':' is a comment; "data" lines are joined with "\n"; "event" sets the type
 * (empty: "message"); "id" sets the last event id unless the value holds a NUL, and it stays
 * for the events after; "retry" with ASCII digits only sets the reconnection delay; other
 * fields are ignored; a blank line dispatches the event if it has data (else just clears
 * it). A UTF-8 byte-order mark at the very start is dropped.
 *
 * Size: an event's data plus its type, or an id value, over `max_event` bytes makes
 * bt__sse_feed() report BT_SSE_TOO_LARGE once (for an id, at the end of its line: one with a
 * NUL is ignored whatever its length); that event is dropped and the parser skips the rest
 * of it (to the next blank line), then goes on. Where the bytes are cut never changes what
 * is read. Lines that are not kept (comments,
 * unknown fields) cost no memory whatever their length.
 */
#ifndef BATON_SSE_H
#define BATON_SSE_H

#include <stddef.h>

#include "internal.h"

enum {
  BT_SSE_MORE = 0,       /* every byte given was taken; no event is complete yet */
  BT_SSE_EVENT = 1,      /* an event is complete: data, type, id below */
  BT_SSE_TOO_LARGE = 2,  /* the event being read went over max_event and is dropped */
  BT_SSE_NOMEM = 3       /* no memory for the event: it is dropped as if too large */
};

typedef struct bt_sse {
  /* The event, after BT_SSE_EVENT and until the next bt__sse_feed(): data (possibly holding
   * NULs: use .len), type (empty: "message"), and the last event id when has_id. Each is
   * NUL-terminated, or has p NULL when empty. */
  bt_buf data, type, id;
  int has_id;
  long long retry_ms;    /* the latest valid "retry" value, -1 if none yet */
  int retry_new;         /* set when retry_ms changes; the caller clears it */
  size_t max_event;      /* 0: no limit */
  /* private */
  bt_buf pending;        /* an "id" value being read */
  int state, field, has_data, ready, skip, skip_lf, bom, id_nul, id_over;
  char name[8];
  size_t name_len;
  long long retry_acc;
  int retry_digits, retry_bad;
} bt_sse;

/* A parser at the start of a stream; `max_event` 0 is no limit. */
void bt__sse_init(bt_sse *s, size_t max_event);
/* Reads bytes from p[0, len) and returns how many it took, stopping early right after the
 * byte that completed an event (*res = BT_SSE_EVENT) or went over the limit (*res =
 * BT_SSE_TOO_LARGE or BT_SSE_NOMEM); else it takes all and *res = BT_SSE_MORE. */
size_t bt__sse_feed(bt_sse *s, const char *p, size_t len, int *res);
/* Frees the buffers; the parser may be initialised again. */
void bt__sse_free(bt_sse *s);

#endif
