/* The line splitter of process stdout and HTTP bodies (core/lines.c): lines across chunk
 * boundaries, the max length at its edge, scan without consuming, the splitter on a buffer
 * it does not own, and a randomized check against the obvious splitter (the property the
 * libFuzzer entry checks too: every line handed out is the input's next line, "\n"
 * excluded, and a line over max is reported, never cut). */
#include "test.h"

#include "internal.h"  /* on purpose: the splitter is the core's, not public */

static void test_chunks(void) {
  bt_lines l = {0};
  const char *line;
  size_t len;
  CHECK(bt__lines_next(&l, 100, &line, &len) == BT_LINE_NONE);  /* empty, never allocated */
  CHECK(bt__lines_append(&l, "ab", 2) == 0);
  CHECK(bt__lines_next(&l, 100, &line, &len) == BT_LINE_NONE);
  CHECK(bt__lines_append(&l, "c\n\nde\nf", 7) == 0);
  CHECK(bt__lines_scan(&l, 100, &len) == BT_LINE_OK && len == 3);  /* not consumed */
  CHECK(bt__lines_next(&l, 100, &line, &len) == BT_LINE_OK && len == 3);
  CHECK(memcmp(line, "abc", 3) == 0);
  CHECK(bt__lines_next(&l, 100, &line, &len) == BT_LINE_OK && len == 0);
  CHECK(bt__lines_next(&l, 100, &line, &len) == BT_LINE_OK && len == 2);
  CHECK(memcmp(line, "de", 2) == 0);
  CHECK(bt__lines_next(&l, 100, &line, &len) == BT_LINE_NONE);
  CHECK(bt__lines_unread(&l) == 1 && *bt__lines_peek(&l) == 'f');
  bt__lines_consume(&l, 5);  /* at most what is unread */
  CHECK(bt__lines_unread(&l) == 0);
  bt__lines_free(&l);
}

static void test_max(void) {
  bt_lines l = {0};
  const char *line;
  size_t len;
  CHECK(bt__lines_append(&l, "abcd", 4) == 0);
  CHECK(bt__lines_next(&l, 4, &line, &len) == BT_LINE_NONE);  /* 4 bytes may still end */
  CHECK(bt__lines_append(&l, "\n", 1) == 0);
  CHECK(bt__lines_next(&l, 4, &line, &len) == BT_LINE_OK && len == 4);  /* exactly max */
  CHECK(bt__lines_append(&l, "abcde", 5) == 0);
  CHECK(bt__lines_next(&l, 4, &line, &len) == BT_LINE_TOO_LONG);
  CHECK(bt__lines_unread(&l) == 5);  /* nothing consumed */
  CHECK(bt__lines_append(&l, "\nxy\n", 4) == 0);
  CHECK(bt__lines_next(&l, 4, &line, &len) == BT_LINE_TOO_LONG);  /* complete, still too long */
  CHECK(bt__lines_next(&l, 5, &line, &len) == BT_LINE_OK && len == 5);  /* a larger max */
  CHECK(bt__lines_next(&l, 4, &line, &len) == BT_LINE_OK && len == 2);
  bt__lines_free(&l);
}

/* The splitter on a buffer it does not own (stream:read_line cuts an HTTP transfer's body
 * in place): the same answers, and `seen` carried over while bytes are only appended. */
static void test_find_borrowed(void) {
  const char body[] = "abc\r\nlonger line\n";
  size_t seen = 0, len = 0;
  CHECK(bt__lines_find(body, 3, 10, &seen, &len) == BT_LINE_NONE && seen == 3);
  CHECK(bt__lines_find(body, 5, 10, &seen, &len) == BT_LINE_OK && len == 4);  /* "abc\r" */
  seen = 0;
  CHECK(bt__lines_find(body + 5, 11, 10, &seen, &len) == BT_LINE_TOO_LONG);
  CHECK(seen == 11);  /* max + 1 bytes looked at, no more */
  seen = 0;
  CHECK(bt__lines_find(body + 5, 12, 11, &seen, &len) == BT_LINE_OK && len == 11);
  seen = 0;
  CHECK(bt__lines_find("", 0, 0, &seen, &len) == BT_LINE_NONE);
  CHECK(bt__lines_find("\n", 1, 0, &seen, &len) == BT_LINE_OK && len == 0);
}

static uint32_t rng = 12345;
static uint32_t next_rand(void) {
  rng = rng * 1103515245u + 12345u;
  return rng >> 16;
}

/* Random bytes with many newlines, fed in random chunks; every line and every too-long
 * report is checked against the input. */
static void test_random(void) {
  static char in[20000];
  for (int round = 0; round < 300; round++) {
    size_t n = next_rand() % sizeof in, max = next_rand() % 70 + 1;
    for (size_t i = 0; i < n; i++) in[i] = next_rand() % 8 == 0 ? '\n' : (char)next_rand();
    bt_lines l = {0};
    size_t off = 0, got = 0, len;
    const char *line;
    while (off < n) {
      size_t k = next_rand() % 40 + 1;
      if (k > n - off) k = n - off;
      CHECK(bt__lines_append(&l, in + off, k) == 0);
      off += k;
      int rc;
      while ((rc = bt__lines_next(&l, max, &line, &len)) == BT_LINE_OK) {
        CHECK(len <= max && got + len < off && in[got + len] == '\n');
        CHECK(memcmp(line, in + got, len) == 0 && memchr(line, '\n', len) == NULL);
        got += len + 1;
      }
      size_t unread = off - got;
      CHECK(bt__lines_unread(&l) == unread);
      size_t look = unread < max + 1 ? unread : max + 1;
      CHECK(memchr(in + got, '\n', look) == NULL);  /* no line was left behind */
      if (rc == BT_LINE_TOO_LONG) {
        CHECK(unread > max);
        bt__lines_consume(&l, unread);  /* what proc:read would do */
        got = off;
      } else {
        CHECK(unread <= max);
      }
    }
    bt__lines_free(&l);
  }
}

int main(void) {
  RUN(test_chunks);
  RUN(test_max);
  RUN(test_find_borrowed);
  RUN(test_random);
  return 0;
}
