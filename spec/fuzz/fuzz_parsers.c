/*
 * fuzz_parsers.c — a libFuzzer target for the parsers of what peers send: baton.json.decode
 * (its one-pass reader: Lua values, integers, depth limit, error positions),
 * the HTTP response-head reader (header lines to a table, Retry-After), the server-sent
 * events parser (src/core/sse.c) and the line splitter of process output (src/core/lines.c,
 * which the MCP client's stdio transport reads through). Built by `make fuzz` (clang, -DBATON_FUZZ=ON); not a test.
 *
 * The first byte of an input, modulo the number of targets, picks the parser (the index in
 * `targets`); the rest is the peer's bytes. Corpus files (spec/fuzz/corpus) start with their
 * target's index, so a new target goes at the end of the table and the corpus stays valid.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbaton.h"
#include "sse.h"

static lua_State *L;

static void need_lua(void) {
  if (L != NULL) return;
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "baton", lbt_open, 1);
  /* decode never raises; what it decodes, encode writes (the two share their depth limit),
   * and that reads back as the same text: decode(encode(v)) encodes to encode(v). */
  static const char check[] =
    "local json = ...\n"
    "return function(s)\n"
    "  local v = json.decode(s)\n"
    "  if v == nil then return end\n"
    "  local t = json.encode(v)\n"
    "  local back, err = json.decode(t)\n"
    "  assert(err == nil, err)\n"
    "  assert(json.encode(back) == t, 'the decoded value reads back differently')\n"
    "end\n";
  if (luaL_loadbuffer(L, check, sizeof check - 1, "=fuzz_json") != LUA_OK) abort();
  lua_getfield(L, -2, "json");
  lua_call(L, 1, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.decode");
  lua_settop(L, 0);
}

/* ---- 0: baton.json.decode ----------------------------------------------------------- */

static void fuzz_json(const char *p, size_t n) {
  need_lua();
  lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.decode");
  lua_pushlstring(L, p, n);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
}

/* ---- 1: response heads -------------------------------------------------------------- */

static void fuzz_head(const char *p, size_t n) {
  need_lua();
  lbt_http_push_headers(L, p, n);
  lbt_http_retry_after(L);
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
}

/* ---- 2: server-sent events -----------------------------------------------------------
 * Input: one byte choosing the event limit (0: none, else a small one), then the stream.
 * The stream is parsed whole and in pieces of 1..8 bytes; both must read the same events,
 * and with no limit they must be those of a plain reading (lines first, then fields) that
 * follows the rules in sse.h. Every event must fit the limit. */

static void out_add(bt_buf *o, const char *p, size_t n) {
  if (n > 0 && bt__buf_append(o, p, n) != 0) abort();
}

static void out_event(bt_buf *o, const char *type, size_t tlen, const char *data, size_t dlen,
                      const char *id, size_t idlen, int has_id) {
  char hdr[64];
  snprintf(hdr, sizeof hdr, "E%zu,%zu,%lld:", tlen, dlen, has_id ? (long long)idlen : -1LL);
  out_add(o, hdr, strlen(hdr));
  out_add(o, type, tlen);
  out_add(o, data, dlen);
  if (has_id) out_add(o, id, idlen);
}

/* Parses p[0, n) in pieces of at most `step` bytes (0: all at once, else a cycle of sizes
 * from 1 to step), writing what it reads to `o`. */
static void sse_run(const char *p, size_t n, size_t max_event, size_t step, bt_buf *o) {
  bt_sse s;
  bt__sse_init(&s, max_event);
  size_t i = 0, k = 0;
  while (i < n) {
    size_t piece = step ? 1 + (k++ % step) : n - i;
    if (piece > n - i) piece = n - i;
    int res;
    size_t used = bt__sse_feed(&s, p + i, piece, &res);
    if (used == 0 || used > piece) abort();
    if (res == BT_SSE_MORE && used != piece) abort();
    i += used;
    if (res == BT_SSE_EVENT) {
      if (max_event && s.data.len + s.type.len > max_event) abort();
      if (s.data.p && s.data.p[s.data.len] != '\0') abort();
      out_event(o, s.type.p, s.type.len, s.data.p, s.data.len, s.id.p, s.id.len, s.has_id);
    } else if (res == BT_SSE_TOO_LARGE) {
      out_add(o, "T", 1);
    } else if (res != BT_SSE_MORE) {
      abort();
    }
  }
  char tail[32];
  snprintf(tail, sizeof tail, "R%lld", s.retry_ms);
  out_add(o, tail, strlen(tail));
  bt__sse_free(&s);
}

/* The rules read plainly: the stream cut into lines first, each line then taken apart. */
static void sse_reference(const char *p, size_t n, bt_buf *o) {
  bt_buf data = {0}, type = {0}, id = {0};
  int has_data = 0, has_id = 0;
  long long retry = -1;
  size_t i = 0;
  if (n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) i = 3;
  while (i < n) {
    size_t e = i;
    while (e < n && p[e] != '\r' && p[e] != '\n') e++;
    if (e == n) break;  /* no line end: not a line (yet) */
    size_t next = e + 1;
    if (p[e] == '\r' && next < n && p[next] == '\n') next++;
    const char *line = p + i;
    size_t len = e - i;
    i = next;
    if (len == 0) {
      if (has_data) out_event(o, type.p, type.len, data.p, data.len, id.p, id.len, has_id);
      data.len = type.len = 0;
      has_data = 0;
      continue;
    }
    if (line[0] == ':') continue;
    const char *colon = memchr(line, ':', len);
    size_t flen = colon ? (size_t)(colon - line) : len;
    const char *v = colon ? colon + 1 : line + len;
    if (v < line + len && *v == ' ') v++;
    size_t vlen = (size_t)(line + len - v);
    if (flen == 4 && memcmp(line, "data", 4) == 0) {
      if (has_data) out_add(&data, "\n", 1);
      out_add(&data, v, vlen);
      has_data = 1;
    } else if (flen == 5 && memcmp(line, "event", 5) == 0) {
      type.len = 0;
      out_add(&type, v, vlen);
    } else if (flen == 2 && memcmp(line, "id", 2) == 0 && memchr(v, '\0', vlen) == NULL) {
      id.len = 0;
      out_add(&id, v, vlen);
      has_id = 1;
    } else if (flen == 5 && memcmp(line, "retry", 5) == 0 && vlen > 0 && vlen < 16) {
      long long ms = 0;
      size_t d = 0;
      while (d < vlen && v[d] >= '0' && v[d] <= '9') ms = ms * 10 + (v[d++] - '0');
      if (d == vlen) retry = ms;
    }
  }
  char tail[32];
  snprintf(tail, sizeof tail, "R%lld", retry);
  out_add(o, tail, strlen(tail));
  bt__buf_free(&data);
  bt__buf_free(&type);
  bt__buf_free(&id);
}

static int same(const bt_buf *a, const bt_buf *b) {
  return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

static void fuzz_sse(const char *p, size_t n) {
  if (n == 0) return;
  size_t max_event = (unsigned char)p[0] == 0 ? 0 : (size_t)(unsigned char)p[0] % 64 + 1;
  p++, n--;
  bt_buf whole = {0}, bytes = {0}, pieces = {0}, ref = {0};
  sse_run(p, n, max_event, 0, &whole);
  sse_run(p, n, max_event, 1, &bytes);
  sse_run(p, n, max_event, 8, &pieces);
  if (!same(&whole, &bytes) || !same(&whole, &pieces)) abort();
  if (max_event == 0) {
    sse_reference(p, n, &ref);
    if (!same(&whole, &ref)) abort();
  }
  bt__buf_free(&whole);
  bt__buf_free(&bytes);
  bt__buf_free(&pieces);
  bt__buf_free(&ref);
}

/* ---- the line splitter (process stdout: proc:read_line, the MCP client over stdio) --- */

/* Bytes fed in pieces whose sizes the input picks, with a line limit it picks too: every
 * line handed out must be exactly the bytes before the next "\n", none longer than the
 * limit, and what stays unread must hold no "\n" and be too long exactly when the splitter
 * says so. */
static void fuzz_lines(const char *s, size_t n) {
  const uint8_t *p = (const uint8_t *)s;
  if (n == 0) return;
  size_t max = (size_t)(p[0] & 0x0f) * 8 + 1;
  p++, n--;
  bt_lines l = {0};
  const char *line;
  size_t off = 0, got = 0, len;
  while (off < n) {
    size_t k = (size_t)p[off] % 23 + 1, unread;
    if (k > n - off) k = n - off;
    if (bt__lines_append(&l, (const char *)p + off, k) != 0) abort();
    off += k;
    int rc;
    while ((rc = bt__lines_next(&l, max, &line, &len)) == BT_LINE_OK) {
      if (len > max || got + len >= off || p[got + len] != '\n' ||
          memcmp(line, p + got, len) != 0)
        abort();
      got += len + 1;
    }
    unread = off - got;
    if (bt__lines_unread(&l) != unread ||
        memchr(p + got, '\n', unread < max + 1 ? unread : max + 1) != NULL ||
        (rc == BT_LINE_TOO_LONG) != (unread > max))
      abort();
    if (rc == BT_LINE_TOO_LONG) {
      bt__lines_consume(&l, unread);
      got = off;
    }
  }
  bt__lines_free(&l);
}

/* ---- dispatch ----------------------------------------------------------------------- */

static void (*const targets[])(const char *p, size_t n) = {
  fuzz_json,  /* 0 */
  fuzz_head,  /* 1 */
  fuzz_sse,   /* 2 */
  fuzz_lines, /* 3 */
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  size_t ntargets = sizeof targets / sizeof targets[0];
  targets[data[0] % ntargets]((const char *)data + 1, size - 1);
  return 0;
}
