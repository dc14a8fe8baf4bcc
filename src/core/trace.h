/*
 * trace.h — a streaming writer of Chrome trace-event JSON (the "JSON Array Format" that
 * Perfetto and chrome://tracing open): complete spans (ph "X"), instant events (ph "i") and
 * track names (ph "M"), appended to a file through one fixed buffer. Private to baton (bt__
 * prefix, not installed); the Lua binding drives it (src/lua/ltrace.c).
 *
 * Memory is bounded: the writer holds one buffer of BT__TRACE_BUF bytes and nothing per
 * event; a full buffer is written out. Timestamps are uv_hrtime() nanoseconds, written as
 * microseconds (three decimals) since the writer was opened. Events are written when they
 * complete, so on one track (tid) their end times never decrease; begin times of nested
 * spans come after their parent's in time but before it in the file (viewers sort).
 *
 * Failures: bt__trace_open returns NULL with *err a libuv/errno code; a write error later
 * is remembered (bt__trace_close returns it) and further output is dropped.
 */
#ifndef BATON_TRACE_H
#define BATON_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define BT__TRACE_BUF (64u * 1024u)

typedef struct bt__trace bt__trace_t;

/* Opens (truncates) `path` and writes the array's opening bracket and the process name
 * `pname`. Returns NULL on failure (*err: a negative errno). */
bt__trace_t *bt__trace_open(const char *path, const char *pname, int *err);
/* Writes the closing bracket, flushes and closes; frees the writer. Returns 0 or the first
 * write error (negative errno). Accepts NULL. */
int bt__trace_close(bt__trace_t *tr);
/* Writes out what the buffer holds (the file stays open). */
void bt__trace_flush(bt__trace_t *tr);
/* The first write error (negative errno) not yet taken, or 0; taken, it is 0 from then on
 * (the writer keeps it for close): one warning per trace. */
int bt__trace_take_error(bt__trace_t *tr);
/* Whether an error was taken. */
int bt__trace_error_taken(const bt__trace_t *tr);
/* The clock: uv_hrtime() nanoseconds. */
uint64_t bt__trace_now(void);
/* When the writer was opened (a bt__trace_now() value); nothing before it is written. */
uint64_t bt__trace_t0(const bt__trace_t *tr);
/* Events. `name` and `cat` are escaped; `args` is NULL or a JSON object text written as
 * is (the caller builds it with bt__trace_json_str for strings). A begin time before the
 * writer opened is clipped to it. */
void bt__trace_span(bt__trace_t *tr, uint64_t tid, const char *name, const char *cat,
                    uint64_t begin_ns, uint64_t end_ns, const char *args);
void bt__trace_instant(bt__trace_t *tr, uint64_t tid, const char *name, const char *cat,
                       uint64_t at_ns, const char *args);
/* A task's span (cat "task", args { id, status }) on its track `id`, and the track's name
 * "<id> <name>". */
void bt__trace_task(bt__trace_t *tr, uint64_t id, const char *name, uint64_t begin_ns,
                    uint64_t end_ns, const char *status);
/* Names track `tid` (a "thread_name" metadata event). */
void bt__trace_track(bt__trace_t *tr, uint64_t tid, const char *name);
/* Events written so far. */
uint64_t bt__trace_count(const bt__trace_t *tr);
/* Appends `s` as a JSON string (quoted, escaped) to buf[*len, cap), NUL-terminated; stops
 * short rather than overflow (the string is then cut, still quoted). */
void bt__trace_json_str(char *buf, size_t cap, size_t *len, const char *s);

#endif
