/*
 * ljson.c — baton.json: encode, decode, null, array, object. Both are direct: the encoder
 * writes the text from the values, the decoder pushes values as it reads the text (no tree
 * in between).
 *
 * Tables encode by their raw contents (no __index, __pairs or __tojson), by this rule:
 *  - a table whose metatable has __jsontype = "array" (set by json.array) encodes as an
 *    array and must have keys exactly 1..n (n >= 0); __jsontype = "object" (json.object)
 *    encodes as an object and must have only string keys;
 *  - otherwise a table with keys exactly 1..n (n > 0) is an array, one with only string
 *    keys is an object, and an empty table is {};
 *  - anything else raises, naming the table's path: string and integer keys mixed, holes
 *    or integer keys outside 1..n, keys of any other type (float, boolean, table, ...).
 * Object keys are written in byte order, so equal tables encode to equal strings. Integers
 * are written as integers; floats in the shortest form that reads back to the same double,
 * with ".0" when that form looks integral; NaN and ±inf raise. Strings (values and keys)
 * are written as their bytes with ", \ and control characters escaped; they must be valid
 * UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), else encode
 * raises naming the path and the byte — unless { raw_bytes = true }, which writes every
 * byte >= 0x80 unchanged (the output is then JSON only if the caller's bytes are UTF-8).
 * JSON null is json.null; encode also writes a NULL light userdata as null (lua-cjson's
 * cjson.null, so values decoded by lua-cjson encode here unchanged).
 * Also raised: nil as the value, functions, threads, userdata other than those two nulls,
 * a table inside itself (cycle), tables nested deeper than 1000 (decode's limit, so what
 * decode returns always encodes). Paths read $.key, $["odd key"] and
 * $[i], with i the Lua (1-based) index.
 *
 * Errors (docs/errors.md). encode raises on anything it cannot encode, as misuse of its
 * argument: "baton.json.encode: bad argument #1 'v' (expected a value JSON can encode, got
 * a function at $.a)". decode raises only when s is not a string; bad text is a failure:
 * nil, "baton.json.decode: malformed JSON at byte N: ...", "malformed", { byte = N }.
 * array and object raise on misuse.
 *
 * Decoding never raises on bad input: it returns nil, message, "malformed" (bytes of the
 * text shown in the message as '?' unless ASCII, so the message is valid UTF-8 whatever the
 * input). Strings must be UTF-8 unless decode's { raw_bytes = true }. JSON null decodes
 * to json.null (so arrays keep their positions). Arrays decode to tables marked as by
 * json.array, so one that is or becomes empty encodes back as []. A number written without
 * fraction or exponent that fits decodes to an integer, any other to a float (as tonumber);
 * one too large for a double (1e400) is malformed, never ±inf.
 * Numbers and strings are read from the text itself: big integers stay exact, strings keep
 * their zero bytes (\u0000). Whitespace between tokens is any byte up to ' ', as cJSON (the
 * decoder baton used before) read it. Nesting beyond 1000 arrays/objects is malformed.
 *
 * Memory: the encoder's buffers belong to a scratch userdata marked to-be-closed, so an
 * error anywhere (ours or a memory error) frees them; the decoder holds nothing outside the
 * Lua stack.
 */
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbaton.h"

#define SCRATCH_MT "baton.json.Scratch"
#define NULL_MT    "baton.json.null"
#define NULL_KEY   "baton.json.null_value"  /* registry: the sentinel */
#define MAX_DEPTH  1000  /* decode's limit too: what decodes, encodes */

/* ---- scratch memory ------------------------------------------------------------------ */

typedef struct keyent {
  const char *s;   /* borrowed from the key string, anchored by the keys table */
  size_t len;
  lua_Integer i;   /* index of the key in the keys table */
} keyent;

typedef struct scratch {
  lua_Alloc f;
  void *ud;
  char *buf;       /* encoder output */
  size_t n, cap;
  keyent *keys;    /* stack of sorted object keys, one slice per open object */
  size_t nkeys, capkeys;
} scratch;

static int scratch_close(lua_State *L) {
  scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
  if (s->buf != NULL) s->f(s->ud, s->buf, s->cap, 0);
  if (s->keys != NULL) s->f(s->ud, s->keys, s->capkeys * sizeof(keyent), 0);
  s->buf = NULL, s->keys = NULL;
  s->n = s->cap = s->nkeys = s->capkeys = 0;
  return 0;
}

/* Pushes an empty scratch, marked to-be-closed. */
static scratch *new_scratch(lua_State *L) {
  scratch *s = lua_newuserdatauv(L, sizeof(scratch), 0);
  memset(s, 0, sizeof *s);
  s->f = lua_getallocf(L, &s->ud);
  luaL_setmetatable(L, SCRATCH_MT);
  lua_toclose(L, -1);
  return s;
}

/* Grows the block *p of *cap elements to hold at least `need`; raises on no memory. */
static void grow(lua_State *L, scratch *s, void **p, size_t *cap, size_t need, size_t elem) {
  size_t ncap = *cap ? *cap : 64;
  while (ncap < need) ncap *= 2;
  void *np = s->f(s->ud, *p, *cap * elem, ncap * elem);
  if (np == NULL) luaL_error(L, "baton.json.encode: not enough memory");
  *p = np, *cap = ncap;
}

/* ---- encode -------------------------------------------------------------------------- */

typedef struct seg {
  const char *key;   /* object key (borrowed), or NULL for an array index */
  size_t len;
  lua_Integer i;
} seg;

typedef struct enc {
  lua_State *L;
  scratch *s;
  int pretty;
  int raw;                      /* raw_bytes: no UTF-8 check */
  int null_idx;
  const void *open[MAX_DEPTH];  /* tables being written, for cycle detection */
  seg path[MAX_DEPTH];          /* path[d]: where the value at depth d+1 sits */
} enc;

static void put(enc *e, const char *p, size_t n) {
  scratch *s = e->s;
  if (n == 0) return;
  if (s->cap - s->n < n) grow(e->L, s, (void **)&s->buf, &s->cap, s->n + n, 1);
  memcpy(s->buf + s->n, p, n);
  s->n += n;
}

#define put_lit(e, lit) put((e), (lit), sizeof(lit) - 1)

static int is_ident(const char *k, size_t n) {
  if (n == 0 || !(k[0] == '_' || (unsigned)((k[0] | 32) - 'a') < 26u)) return 0;
  for (size_t i = 1; i < n; i++)
    if (!(k[i] == '_' || (unsigned)((k[i] | 32) - 'a') < 26u || (unsigned)(k[i] - '0') < 10u))
      return 0;
  return 1;
}

/* The length of the valid UTF-8 sequence at p (n > 0 bytes left, p[0] >= 0x80), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n) {
  unsigned char c = p[0], lo = 0x80, hi = 0xbf;
  size_t len;
  if (c >= 0xc2 && c <= 0xdf) len = 2;
  else if (c >= 0xe0 && c <= 0xef) len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
  else if (c >= 0xf0 && c <= 0xf4) len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
  else return 0;
  if (n < len || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (p[i] < 0x80 || p[i] > 0xbf) return 0;
  return len;
}

/* Raises "baton.json.encode: bad argument #1 'v' (expected a value JSON can encode, got
 * <what> at <path of the value at depth><why>)". */
static void fail(enc *e, int depth, const char *what, const char *why) {
  lua_State *L = e->L;
  luaL_Buffer b;
  luaL_checkstack(L, 4, NULL);
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '$');
  for (int d = 0; d < depth; d++) {
    const seg *g = &e->path[d];
    if (g->key == NULL) {
      lua_pushfstring(L, "[%I]", (LUAI_UACINT)g->i);
      luaL_addvalue(&b);
    } else if (is_ident(g->key, g->len)) {
      luaL_addchar(&b, '.');
      luaL_addlstring(&b, g->key, g->len);
    } else {
      luaL_addstring(&b, "[\"");
      for (size_t i = 0; i < g->len && i < 40; i++) {
        const unsigned char *k = (const unsigned char *)g->key;
        size_t u = k[i] >= 0x80 ? utf8_len(k + i, g->len - i) : 1;
        if (u > 1) {  /* whole characters only; invalid bytes show as '?' */
          luaL_addlstring(&b, g->key + i, u);
          i += u - 1;
          continue;
        }
        unsigned char c = k[i];
        luaL_addchar(&b, (char)(c < 0x20 || c == '"' || c == '\\' || c >= 0x7f ? '?' : c));
      }
      luaL_addstring(&b, g->len > 40 ? "...\"]" : "\"]");
    }
  }
  luaL_pushresult(&b);
  luaL_error(L, "baton.json.encode: bad argument #1 'v' (expected a value JSON can encode, "
             "got %s at %s%s)", what, lua_tostring(L, -1), why);
}

static void newline(enc *e, int depth) {
  if (!e->pretty) return;
  put_lit(e, "\n");
  for (int i = 0; i < depth; i++) put_lit(e, "  ");
}

/* Writes the string p (n bytes), the value at `depth` or (key) a key of the object there. */
static void put_string(enc *e, const char *p, size_t n, int depth, int key) {
  static const char hex[] = "0123456789abcdef";
  static const char short_esc[32] = {['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r',
                                     ['\t'] = 't'};
  put_lit(e, "\"");
  size_t run = 0;  /* start of the pending run of bytes that need no escape */
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c >= 0x80) {
      size_t len = e->raw ? 1 : utf8_len((const unsigned char *)p + i, n - i);
      if (len == 0) {
        char why[96];
        snprintf(why, sizeof why, ", byte %zu of the %s; { raw_bytes = true } writes bytes "
                 "as they are", i + 1, key ? "key" : "string");
        fail(e, depth + key, "invalid UTF-8", why);
      }
      i += len - 1;
      continue;
    }
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    put(e, p + run, i - run);
    run = i + 1;
    char u[6] = {'\\', (char)c, 'u', '0', '0', '0'};
    if (c >= 0x20) put(e, u, 2);
    else if (short_esc[c]) u[1] = short_esc[c], put(e, u, 2);
    else u[1] = 'u', u[2] = u[3] = '0', u[4] = hex[c >> 4], u[5] = hex[c & 15], put(e, u, 6);
  }
  put(e, p + run, n - run);
  put_lit(e, "\"");
}

static void put_number(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  char b[64];
  int len;
  if (lua_isinteger(L, idx)) {
    len = snprintf(b, sizeof b, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
  } else {
    double d = (double)lua_tonumber(L, idx);
    if (isnan(d) || isinf(d)) fail(e, depth, "NaN/inf", "");
    for (int prec = 15;; prec++) {
      len = snprintf(b, sizeof b, "%.*g", prec, d);
      if (prec == 17 || strtod(b, NULL) == d) break;
    }
    int integral = 1;
    for (int i = 0; i < len; i++) {
      if (b[i] == 'e') integral = 0;
      else if (b[i] != '-' && b[i] != '+' && (unsigned char)(b[i] - '0') >= 10u)
        b[i] = '.', integral = 0;  /* the locale's decimal point */
    }
    if (integral) b[len++] = '.', b[len++] = '0';
  }
  put(e, b, (size_t)len);
}

static void put_value(enc *e, int idx, int depth);

/* Writes the table at idx (absolute) as an array of n elements. */
static void put_array(enc *e, int idx, int depth, lua_Integer n) {
  put_lit(e, "[");
  for (lua_Integer i = 1; i <= n; i++) {
    if (i > 1) put_lit(e, ",");
    newline(e, depth + 1);
    e->path[depth] = (seg){NULL, 0, i};
    lua_rawgeti(e->L, idx, i);
    put_value(e, lua_gettop(e->L), depth + 1);
    lua_pop(e->L, 1);
  }
  if (n > 0) newline(e, depth);
  put_lit(e, "]");
}

static int keycmp(const void *a, const void *b) {
  const keyent *x = a, *y = b;
  int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
  return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

/* Writes the table at idx (absolute), whose n keys are all strings, as an object. */
static void put_object(enc *e, int idx, int depth, size_t n) {
  lua_State *L = e->L;
  scratch *s = e->s;
  size_t base = s->nkeys;
  if (s->capkeys - base < n)
    grow(L, s, (void **)&s->keys, &s->capkeys, base + n, sizeof(keyent));
  lua_createtable(L, (int)n, 0);  /* anchors the keys while they are written */
  int kt = lua_gettop(L);
  lua_Integer j = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, kt, ++j);
    keyent *k = &s->keys[base + (size_t)j - 1];
    k->s = lua_tolstring(L, -1, &k->len);
    k->i = j;
  }
  s->nkeys = base + n;
  if (n > 1) qsort(s->keys + base, n, sizeof(keyent), keycmp);
  put_lit(e, "{");
  for (size_t i = 0; i < n; i++) {
    keyent k = s->keys[base + i];  /* a copy: nested objects may move the array */
    if (i > 0) put_lit(e, ",");
    newline(e, depth + 1);
    e->path[depth] = (seg){k.s, k.len, 0};
    put_string(e, k.s, k.len, depth, 1);
    if (e->pretty) put_lit(e, ": ");
    else put_lit(e, ":");
    lua_rawgeti(L, kt, k.i);
    lua_rawget(L, idx);
    put_value(e, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  if (n > 0) newline(e, depth);
  put_lit(e, "}");
  s->nkeys = base;
  lua_pop(L, 1);
}

static void put_table(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  const void *p = lua_topointer(L, idx);
  for (int d = 0; d < depth; d++)
    if (e->open[d] == p) fail(e, depth, "a cycle", "");
  if (depth >= MAX_DEPTH) fail(e, depth, "a table", " nested deeper than 1000 tables");
  e->open[depth] = p;
  luaL_checkstack(L, 6, "baton.json.encode: nesting too deep");
  int marked = 0;  /* 'a' or 'o' from __jsontype */
  if (luaL_getmetafield(L, idx, "__jsontype") != LUA_TNIL) {
    const char *t = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    if (strcmp(t, "array") == 0) marked = 'a';
    else if (strcmp(t, "object") == 0) marked = 'o';
    else fail(e, depth, "a table", " with a __jsontype other than \"array\" or \"object\"");
    lua_pop(L, 1);
  }
  size_t nstr = 0;
  lua_Integer nint = 0, lo = 1, hi = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      nstr++;
    } else if (lua_isinteger(L, -1)) {
      lua_Integer k = lua_tointeger(L, -1);
      nint++;
      if (k < lo) lo = k;
      if (k > hi) hi = k;
    } else {
      char why[64];
      snprintf(why, sizeof why, " with a %s key",
               lua_type(L, -1) == LUA_TNUMBER ? "float" : luaL_typename(L, -1));
      fail(e, depth, "a table", why);
    }
  }
  int dense = lo == 1 && hi == nint;
  if (marked == 'o' && nint > 0)
    fail(e, depth, "a table", " marked as an object but with integer keys");
  if (marked == 'a' && nstr > 0)
    fail(e, depth, "a table", " marked as an array but with string keys");
  if (nint > 0 && nstr > 0) fail(e, depth, "a table", " mixing array and object keys");
  if (nint > 0 && !dense) fail(e, depth, "a table", " that is a sparse array (keys must be 1..n)");
  if (nint > 0 || marked == 'a') put_array(e, idx, depth, nint);
  else put_object(e, idx, depth, nstr);
}

static void put_value(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TBOOLEAN: lua_toboolean(L, idx) ? put_lit(e, "true") : put_lit(e, "false"); break;
  case LUA_TNUMBER: put_number(e, idx, depth); break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    put_string(e, s, n, depth, 0);
  } break;
  case LUA_TTABLE: put_table(e, idx, depth); break;
  default:
    if (lua_rawequal(L, idx, e->null_idx) ||
        (lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL)) {
      put_lit(e, "null");  /* json.null, or lua-cjson's cjson.null (a NULL light userdata) */
    } else {
      char what[64];
      snprintf(what, sizeof what, "a %s", luaL_typename(L, idx));
      fail(e, depth, what, "");
    }
  }
}

/* encode(v [, { pretty = bool, raw_bytes = bool }]) -> string. Raises on any value it
 * cannot encode. */
static int ljson_encode(lua_State *L) {
  enc e;
  e.L = L;
  e.pretty = 0;
  e.raw = 0;
  e.null_idx = lua_upvalueindex(1);
  static const char fname[] = "baton.json.encode";
  if (lua_isnoneornil(L, 1))
    return lbt_argerror(L, fname, 1, "v", "a value JSON can encode (baton.json.null is null)");
  if (!lua_isnoneornil(L, 2)) {
    static const char *const known[] = {"pretty", "raw_bytes", NULL};
    lbt_check_opts(L, fname, 2, "opts", known);
    e.pretty = lbt_opt_bool(L, fname, 2, "pretty", 0);
    e.raw = lbt_opt_bool(L, fname, 2, "raw_bytes", 0);
  }
  lua_settop(L, 1);
  e.s = new_scratch(L);
  put_value(&e, 1, 0);
  lua_pushlstring(L, e.s->buf, e.s->n);
  return 1;
}

/* ---- decode -------------------------------------------------------------------------- */

/* One pass over the text, straight onto the Lua stack: no tree, no copy of the input, and a
 * string without escapes is pushed from the text itself. A failure records where and why
 * and unwinds by returning NULL; ljson_decode then drops what was pushed. The only C state
 * is a luaL_Buffer for a string with escapes, which lives on the Lua stack, so a memory
 * error raised anywhere leaves nothing behind. */

#define DEC_DEPTH 1000  /* nesting limit, as cJSON's (the limit callers have seen) */

enum { AT_SYNTAX, AT_DEPTH };

#define BAD_UTF8 "invalid UTF-8 in a string ({ raw_bytes = true } keeps such bytes) at"

typedef struct dec {
  lua_State *L;
  const char *end;
  int raw;              /* raw_bytes: no UTF-8 check in strings */
  int null_idx, array_mt;
  int depth;
  const char *at;       /* where decoding failed */
  const char *why;      /* what is wrong there, or NULL for bad syntax */
  int what;             /* AT_* */
} dec;

static const char *dec_fail(dec *d, const char *at, const char *why) {
  d->at = at, d->why = why, d->what = AT_SYNTAX;
  return NULL;
}

/* Whitespace is any byte up to ' ' (cJSON's rule, kept: a text that ends in a NUL, as C
 * callers sometimes send, still decodes). */
static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (unsigned char)*p <= ' ') p++;
  return p;
}

static const char *dec_value(dec *d, const char *p);

static int hex4(const char *p, const char *end, const char **bad) {
  int v = 0;
  for (int k = 0; k < 4; k++) {
    unsigned char c = p + k < end ? (unsigned char)p[k] : 0;
    int x = (unsigned)(c - '0') < 10u ? c - '0'
            : (unsigned)((c | 32) - 'a') < 6u ? (c | 32) - 'a' + 10 : -1;
    if (x < 0) {
      *bad = p + k;
      return -1;
    }
    v = v << 4 | x;
  }
  return v;
}

/* The string whose contents start at p, with escapes: its closing quote is at q. Decoded
 * into a buffer as long as the source, which no escape makes longer. A failure closes the
 * buffer itself before returning: a long string's buffer is a to-be-closed box, and Lua
 * 5.4.4's lua_settop can corrupt the stack when it closes one (fixed in 5.4.5). */
static const char *dec_escaped(dec *d, const char *p, const char *q) {
  luaL_Buffer b;
  char *o = luaL_buffinitsize(d->L, &b, (size_t)(q - p)), *o0 = o;
  const char *at = NULL, *why = NULL;
  while (p < q) {
    unsigned char c = (unsigned char)*p;
    if (c == '\\') {
      const char *e = p++;  /* the escape's backslash */
      switch (*p++) {
      case '"': *o++ = '"'; break;
      case '\\': *o++ = '\\'; break;
      case '/': *o++ = '/'; break;
      case 'b': *o++ = '\b'; break;
      case 'f': *o++ = '\f'; break;
      case 'n': *o++ = '\n'; break;
      case 'r': *o++ = '\r'; break;
      case 't': *o++ = '\t'; break;
      case 'u': {
        const char *bad = p;
        long u = hex4(p, q, &bad);
        if (u < 0) {
          at = bad;
          goto fail;
        }
        p += 4;
        if (u >= 0xdc00 && u <= 0xdfff) {
          at = e, why = "a lone UTF-16 surrogate at";
          goto fail;
        }
        if (u >= 0xd800 && u <= 0xdbff) {  /* must be followed by its low half */
          long lo = q - p >= 2 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2, q, &bad) : 0;
          if (lo < 0) {  /* \u without four hex digits: at the first that is not one */
            at = bad;
            goto fail;
          }
          if (lo < 0xdc00 || lo > 0xdfff) {
            at = e, why = "a lone UTF-16 surrogate at";
            goto fail;
          }
          p += 6;
          u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (u < 0x80) {
          *o++ = (char)u;
        } else if (u < 0x800) {
          *o++ = (char)(0xc0 | u >> 6), *o++ = (char)(0x80 | (u & 0x3f));
        } else if (u < 0x10000) {
          *o++ = (char)(0xe0 | u >> 12), *o++ = (char)(0x80 | (u >> 6 & 0x3f));
          *o++ = (char)(0x80 | (u & 0x3f));
        } else {
          *o++ = (char)(0xf0 | u >> 18), *o++ = (char)(0x80 | (u >> 12 & 0x3f));
          *o++ = (char)(0x80 | (u >> 6 & 0x3f)), *o++ = (char)(0x80 | (u & 0x3f));
        }
        break;
      }
      default:
        at = p - 1;
        goto fail;
      }
    } else if (c < 0x20) {
      at = p;
      goto fail;
    } else if (c >= 0x80 && !d->raw) {
      size_t n = utf8_len((const unsigned char *)p, (size_t)(q - p));
      if (n == 0) {
        at = p, why = BAD_UTF8;
        goto fail;
      }
      memcpy(o, p, n), o += n, p += n;
    } else {
      *o++ = (char)c, p++;
    }
  }
  luaL_pushresultsize(&b, (size_t)(o - o0));
  return q + 1;
fail:
  luaL_pushresultsize(&b, 0);
  lua_pop(d->L, 1);
  return dec_fail(d, at, why);
}

/* The string whose contents start at p (after the quote): pushed; returns what follows. */
static const char *dec_string(dec *d, const char *p) {
  const char *q = p, *end = d->end;
  for (;;) {  /* the common case: no escape, pushed from the text */
    if (q >= end) return dec_fail(d, end, NULL);
    unsigned char c = (unsigned char)*q;
    if (c == '"') {
      lua_pushlstring(d->L, p, (size_t)(q - p));
      return q + 1;
    }
    if (c == '\\') break;
    if (c < 0x20) return dec_fail(d, q, NULL);
    if (c >= 0x80 && !d->raw) {
      size_t n = utf8_len((const unsigned char *)q, (size_t)(end - q));
      if (n == 0) return dec_fail(d, q, BAD_UTF8);
      q += n;
    } else {
      q++;
    }
  }
  while (q < end && *q != '"') q += *q == '\\' ? 2 : 1;  /* the closing quote */
  if (q >= end) return dec_fail(d, end, NULL);
  return dec_escaped(d, p, q);
}

/* A number as RFC 8259 writes it: an integer when written without fraction or exponent and
 * it fits, else a float as tonumber reads it; one too large for a double is refused. */
static const char *dec_number(dec *d, const char *p) {
  lua_State *L = d->L;
  const char *q = p, *end = d->end;
  int isfloat = 0;
#define DIGIT(x) ((x) < end && (unsigned char)(*(x) - '0') < 10u)
  if (*q == '-') q++;
  if (!DIGIT(q)) return dec_fail(d, p, NULL);
  if (*q == '0') q++;
  else while (DIGIT(q)) q++;
  size_t ndig = (size_t)(q - p) - (*p == '-');
  if (q < end && *q == '.') {
    if (!DIGIT(q + 1)) return dec_fail(d, q + 1 < end ? q + 1 : end, NULL);
    for (q++; DIGIT(q); q++) {}
    isfloat = 1;
  }
  if (q < end && (*q | 32) == 'e') {
    q++;
    if (q < end && (*q == '+' || *q == '-')) q++;
    if (!DIGIT(q)) return dec_fail(d, q < end ? q : end, NULL);
    while (DIGIT(q)) q++;
    isfloat = 1;
  }
#undef DIGIT
  if (!isfloat && ndig <= 18) {  /* fits in 63 bits whatever the digits */
    lua_Integer v = 0;
    for (const char *r = p + (*p == '-'); r < q; r++) v = v * 10 + (*r - '0');
    lua_pushinteger(L, *p == '-' ? -v : v);
    return q;
  }
  char b[64];
  size_t n = (size_t)(q - p);
  if (n < sizeof b) {  /* integers that may not fit, and floats: as tonumber reads them */
    memcpy(b, p, n);
    b[n] = '\0';
    if (lua_stringtonumber(L, b) == 0) return dec_fail(d, p, "unreadable number");
  } else {
    /* A long one is a float (no integer has 64 digits). Not through lua_stringtonumber:
     * under a locale whose decimal point is not '.', Lua gives up on numerals longer than
     * 200 bytes. strtod reads the locale's point, so the copy carries that one. */
    char *c = lua_newuserdatauv(L, n + 1, 0), *cend;
    char point = localeconv()->decimal_point[0];
    for (size_t i = 0; i < n; i++) c[i] = p[i] == '.' ? point : p[i];
    c[n] = '\0';
    double v = strtod(c, &cend);
    lua_pop(L, 1);
    if (cend != c + n) return dec_fail(d, p, "unreadable number");
    lua_pushnumber(L, (lua_Number)v);
  }
  if (!lua_isinteger(L, -1) && isinf(lua_tonumber(L, -1)))
    return dec_fail(d, p, "number out of range");
  return q;
}

static const char *dec_literal(dec *d, const char *p, const char *lit, size_t n) {
  if ((size_t)(d->end - p) < n || memcmp(p, lit, n) != 0) return dec_fail(d, p, NULL);
  return p + n;
}

static const char *dec_nest(dec *d, const char *p) {
  if (++d->depth > DEC_DEPTH) {
    d->at = p, d->what = AT_DEPTH;
    return NULL;
  }
  luaL_checkstack(d->L, 8, "baton.json.decode: nesting too deep");
  return p;
}

static const char *dec_array(dec *d, const char *p) {
  lua_State *L = d->L;
  const char *end = d->end;
  if (dec_nest(d, p) == NULL) return NULL;
  lua_createtable(L, 0, 0);
  lua_pushvalue(L, d->array_mt);
  lua_setmetatable(L, -2);
  p = skip_ws(p + 1, end);
  if (p < end && *p == ']') {
    d->depth--;
    return p + 1;
  }
  for (lua_Integer i = 1;; i++) {
    if ((p = dec_value(d, p)) == NULL) return NULL;
    lua_rawseti(L, -2, i);
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p++;
      continue;
    }
    if (p < end && *p == ']') {
      d->depth--;
      return p + 1;
    }
    return dec_fail(d, p, NULL);
  }
}

static const char *dec_object(dec *d, const char *p) {
  lua_State *L = d->L;
  const char *end = d->end;
  if (dec_nest(d, p) == NULL) return NULL;
  lua_createtable(L, 0, 4);
  p = skip_ws(p + 1, end);
  if (p < end && *p == '}') {
    d->depth--;
    return p + 1;
  }
  for (;;) {
    if (p >= end || *p != '"') return dec_fail(d, p, NULL);
    if ((p = dec_string(d, p + 1)) == NULL) return NULL;
    p = skip_ws(p, end);
    if (p >= end || *p != ':') return dec_fail(d, p, NULL);
    if ((p = dec_value(d, p + 1)) == NULL) return NULL;
    lua_rawset(L, -3);
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p = skip_ws(p + 1, end);
      continue;
    }
    if (p < end && *p == '}') {
      d->depth--;
      return p + 1;
    }
    return dec_fail(d, p, NULL);
  }
}

/* The value at p (after any whitespace): pushed; returns what follows it, or NULL. */
static const char *dec_value(dec *d, const char *p) {
  lua_State *L = d->L;
  p = skip_ws(p, d->end);
  if (p >= d->end) return dec_fail(d, d->end, NULL);
  switch (*p) {
  case '"': return dec_string(d, p + 1);
  case '{': return dec_object(d, p);
  case '[': return dec_array(d, p);
  case 't': lua_pushboolean(L, 1); return dec_literal(d, p, "true", 4);
  case 'f': lua_pushboolean(L, 0); return dec_literal(d, p, "false", 5);
  case 'n': lua_pushvalue(L, d->null_idx); return dec_literal(d, p, "null", 4);
  default: return dec_number(d, p);
  }
}

/* Returns nil, message, "malformed", { byte = } for the failure d recorded in s. */
static int malformed(lua_State *L, const char *s, size_t len, const dec *d) {
  size_t pos = (size_t)(d->at - s);
  size_t byte = pos + 1;  /* len + 1 when the text ran out */
  if (d->what == AT_DEPTH) {
    lua_pushfstring(L, "nesting deeper than %d", DEC_DEPTH);
  } else if (pos >= len) {
    lua_pushliteral(L, "unexpected end of input");
  } else {
    char snip[24];
    size_t n = 0;
    for (; n < sizeof snip - 1 && pos + n < len; n++) {
      unsigned char c = (unsigned char)s[pos + n];
      snip[n] = (char)(c < 0x20 || c >= 0x7f ? '?' : c);  /* the message stays UTF-8 */
    }
    snip[n] = '\0';
    lua_pushfstring(L, "%s%s'%s%s'", d->why ? d->why : "", d->why ? " " : "", snip,
                    pos + n < len ? "..." : "");
  }
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, (lua_Integer)byte);
  lua_setfield(L, -2, "byte");
  return lbt_fail_detail(L, "baton.json.decode", "malformed", -1, "malformed JSON at byte %zu: %s",
                         byte, lua_tostring(L, -2));
}

/* decode(s [, { raw_bytes = bool }]) -> value | nil, message, "malformed". Raises only on
 * misuse (s not a string, bad options). */
static int ljson_decode(lua_State *L) {
  size_t len;
  const char *s = lbt_arg_string(L, "baton.json.decode", 1, "s", &len);
  int raw = 0;
  if (!lua_isnoneornil(L, 2)) {
    static const char *const known[] = {"raw_bytes", NULL};
    lbt_check_opts(L, "baton.json.decode", 2, "opts", known);
    raw = lbt_opt_bool(L, "baton.json.decode", 2, "raw_bytes", 0);
  }
  lua_settop(L, 1);
  dec d = {L, s + len, raw, lua_upvalueindex(1), lua_upvalueindex(2), 0, NULL, NULL, AT_SYNTAX};
  const char *p = dec_value(&d, s);
  if (p != NULL && (p = skip_ws(p, s + len)) < s + len) dec_fail(&d, p, NULL);
  if (d.at != NULL) {
    lua_settop(L, 1);
    return malformed(L, s, len, &d);
  }
  return 1;
}

/* ---- markers and opening -------------------------------------------------------------- */

/* array(t) / object(t): sets the marker metatable (upvalue 1) on t, or a new table; t must
 * have no metatable but the other marker. */
static int mark(lua_State *L, const char *fname) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  } else if (!lua_istable(L, 1)) {
    return lbt_argerror(L, fname, 1, "t", "table or nil");
  }
  lua_settop(L, 1);
  if (lua_getmetatable(L, 1) && !lua_rawequal(L, -1, lua_upvalueindex(1)) &&
      !lua_rawequal(L, -1, lua_upvalueindex(2)))
    return lbt_argerror_got(L, fname, 1, "t", "a table without a metatable",
                            "a table with one");
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, 1);
  return 1;
}

static int ljson_array(lua_State *L) { return mark(L, "baton.json.array"); }
static int ljson_object(lua_State *L) { return mark(L, "baton.json.object"); }

static int null_tostring(lua_State *L) {
  lua_pushliteral(L, "null");
  return 1;
}

/* Pushes the marker metatable for `type`, one per state. */
static void push_marker(lua_State *L, const char *type) {
  lua_pushfstring(L, "baton.json.%s", type);
  if (luaL_newmetatable(L, lua_tostring(L, -1))) {
    lua_pushstring(L, type);
    lua_setfield(L, -2, "__jsontype");
  }
  lua_remove(L, -2);
}

/* t[name] = fn with the values at up1 and up2 (0: none) as upvalues. */
static void set_closure(lua_State *L, int t, const char *name, lua_CFunction fn, int up1,
                        int up2) {
  lua_pushvalue(L, up1);
  if (up2 != 0) lua_pushvalue(L, up2);
  lua_pushcclosure(L, fn, up2 != 0 ? 2 : 1);
  lua_setfield(L, t, name);
}

/* Adds `json` to the module table at -1. encode and decode hold json.null as upvalue 1,
 * decode the array marker as 2; array and object hold their own marker as upvalue 1 and the
 * other's as 2. */
void lbt_open_json(lua_State *L, int rt_idx) {
  BT_UNUSED(rt_idx);
  static const luaL_Reg scratch_meta[] = {
    {"__close", scratch_close}, {"__gc", scratch_close}, {NULL, NULL}};
  luaL_newmetatable(L, SCRATCH_MT);
  luaL_setfuncs(L, scratch_meta, 0);
  lua_pop(L, 1);

  lua_createtable(L, 0, 6);
  if (lua_getfield(L, LUA_REGISTRYINDEX, NULL_KEY) == LUA_TNIL) {  /* one null per state */
    lua_pop(L, 1);
    lua_newuserdatauv(L, 0, 0);
    luaL_newmetatable(L, NULL_MT);
    lua_pushcfunction(L, null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, NULL_KEY);
  }
  push_marker(L, "array");
  push_marker(L, "object");
  int json = lua_gettop(L) - 3, null = json + 1, array = json + 2, object = json + 3;
  lua_pushvalue(L, null);
  lua_setfield(L, json, "null");
  set_closure(L, json, "encode", ljson_encode, null, 0);
  set_closure(L, json, "decode", ljson_decode, null, array);
  set_closure(L, json, "array", ljson_array, array, object);
  set_closure(L, json, "object", ljson_object, object, array);
  lua_settop(L, json);
  lua_setfield(L, -2, "json");
}
