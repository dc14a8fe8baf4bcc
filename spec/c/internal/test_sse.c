/* The server-sent events parser (core/sse.c), which stream:read_event reads with: fields
 * and line ends as EventSource reads them, however the bytes are cut (fed one byte at a
 * time and whole, the events are the same); the id staying for later events; retry; an
 * event over max_event reported once, skipped, and the stream read on after it. The
 * fuzzer (spec/fuzz) checks the same against a plain reading on arbitrary bytes. */
#include "test.h"

#include "sse.h"  /* on purpose: the parser is the core's, not public */

static const char stream[] =
  "\xef\xbb\xbf: a comment\n"
  "retry: 1500\n\n"
  "event: tick\r\nid: 7\r\ndata: one\r\ndata:two\r\n\r\n"
  "data: three\r\r"
  "data: " "0123456789abcdef0123456789abcdef" "\n\n"  /* over max_event (16) */
  "data: after\nid\n\n";

typedef struct { char data[64], type[16], id[16]; int has_id; } event;

/* Feeds `text` in pieces of `step` bytes (0: whole); returns the events, counts too large. */
static int parse(size_t step, event *out, int max, int *too_large, long long *retry) {
  bt_sse s;
  bt__sse_init(&s, 16);
  size_t len = sizeof stream - 1, off = 0;
  int n = 0;
  *too_large = 0;
  while (off < len) {
    size_t k = step == 0 || step > len - off ? len - off : step;
    int res;
    size_t used = bt__sse_feed(&s, stream + off, k, &res);
    off += used;
    if (res == BT_SSE_EVENT) {
      CHECK(n < max && s.data.len < 64 && s.type.len < 16 && s.id.len < 16);
      memset(&out[n], 0, sizeof out[n]);
      if (s.data.p) memcpy(out[n].data, s.data.p, s.data.len);
      if (s.type.p) memcpy(out[n].type, s.type.p, s.type.len);
      if (s.id.p) memcpy(out[n].id, s.id.p, s.id.len);
      out[n++].has_id = s.has_id;
    } else if (res == BT_SSE_TOO_LARGE) {
      ++*too_large;
    } else {
      CHECK(res == BT_SSE_MORE && used == k);
    }
  }
  *retry = s.retry_ms;
  bt__sse_free(&s);
  return n;
}

static void test_events_however_cut(void) {
  size_t steps[] = {0, 1, 2, 7};
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    event ev[8];
    int too_large;
    long long retry;
    int n = parse(steps[i], ev, 8, &too_large, &retry);
    CHECK(n == 3 && too_large == 1 && retry == 1500);
    CHECK(strcmp(ev[0].type, "tick") == 0 && strcmp(ev[0].data, "one\ntwo") == 0);
    CHECK(ev[0].has_id && strcmp(ev[0].id, "7") == 0);
    CHECK(ev[1].type[0] == '\0' && strcmp(ev[1].data, "three") == 0);
    CHECK(ev[1].has_id && strcmp(ev[1].id, "7") == 0);  /* the last id stays */
    CHECK(strcmp(ev[2].data, "after") == 0 && ev[2].has_id && ev[2].id[0] == '\0');
  }
}

int main(void) {
  RUN(test_events_however_cut);
  return 0;
}
