/*
 * lfail.c — the binding toolkit for errors: how every binding reports a failure of the
 * world, a misuse, and the end of a wait (docs/errors.md states the convention).
 *
 *   World:  lbt_fail* push `nil, "<fname>: msg", kind[, detail]` and return the count, so a
 *           binding ends with `return lbt_fail(...)`. kind is a word of lbt_kinds (checked by
 *           assert in debug builds); lbt_kind_of maps a baton/libuv error code to one, so no
 *           libuv name ("ECONNRESET") or core name ("nomem", "inval") ever reaches Lua.
 *   Misuse: lbt_argerror and the readers (lbt_check_opts, lbt_opt_*, lbt_arg_*) raise
 *           `<fname>: bad argument #n 'name' (expected X, got Y)`. fname is the function as
 *           the user calls it ("baton.http.request", "baton.group:spawn"); a method's fname
 *           has a colon, and then self is not counted: stack index idx is argument #idx-1.
 *   Waits:  a continuation calls lbt_resumed first: it raises the cancellation error (after
 *           giving back what the wake granted, through `undo`), else returns the wake status.
 *   Outcomes of user functions (a retried fn, a dispatcher, a stage): lbt_outcome applies
 *           the one rule "returned nil, msg[, kind[, detail]] or raised: the same failure".
 *
 * Nothing here allocates outside the Lua state; every function may raise (memory errors).
 */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbaton.h"

/* ---- kinds -------------------------------------------------------------------------- */

/* The one table of kinds (docs/errors.md, "Kinds"; errors_spec compares the two). */
const char *const lbt_kinds[] = {
  "timeout", "cancelled", "closed", "io", "resource", "connect", "tls", "protocol",
  "too_large", "malformed", "busy", "circuit_open", "shed", "queue_wait", "rate_limited",
  "auth", "unavailable", "rejected", "tool_error", "rpc_error", "redis", "error", NULL};

int lbt_is_kind(const char *kind) {
  for (int i = 0; kind != NULL && lbt_kinds[i] != NULL; i++)
    if (strcmp(kind, lbt_kinds[i]) == 0) return 1;
  return 0;
}

const char *lbt_kind_of(int err) {
  switch (err) {
  case BT_ETIMEDOUT: case UV_ETIMEDOUT: return "timeout";
  case BT_ECANCELED: case UV_ECANCELED: return "cancelled";
  case BT_ECLOSED: case UV_EOF: case UV_EPIPE: case UV_ENOTCONN: return "closed";
  case BT_ENOMEM: case UV_ENOMEM: case UV_EMFILE: case UV_ENFILE: case UV_EAGAIN:
  case UV_ENOBUFS: case UV_ENOSPC: return "resource";
  case UV_ECONNREFUSED: case UV_EHOSTUNREACH: case UV_ENETUNREACH:
  case UV_EAI_NONAME: case UV_EAI_AGAIN: case UV_EAI_FAIL: case UV_EADDRNOTAVAIL:
    return "connect";
  case BT_EBUSY: return "busy";
  default: return "io";
  }
}

/* ---- failures of the world ---------------------------------------------------------- */

static void push_message(lua_State *L, const char *fname, const char *fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  lua_pushfstring(L, "%s: %s", fname, buf);
}

int lbt_fail(lua_State *L, const char *fname, const char *msg, const char *kind) {
  assert(lbt_is_kind(kind) && "lbt_fail: a kind that is not in lbt_kinds");
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", fname, msg);
  lua_pushstring(L, kind);
  return 3;
}

int lbt_fail_detail(lua_State *L, const char *fname, const char *kind, int detail_idx,
                    const char *fmt, ...) {
  assert(lbt_is_kind(kind) && "lbt_fail_detail: a kind that is not in lbt_kinds");
  if (detail_idx != 0) detail_idx = lua_absindex(L, detail_idx);
  lua_pushnil(L);
  va_list ap;
  va_start(ap, fmt);
  push_message(L, fname, fmt, ap);
  va_end(ap);
  lua_pushstring(L, kind);
  if (detail_idx == 0) return 3;
  lua_pushvalue(L, detail_idx);
  return 4;
}

int lbt_fail_status(lua_State *L, const char *fname, int status) {
  return lbt_fail(L, fname, bt_strerror(status), lbt_kind_of(status));
}

int lbt_fail_timeout(lua_State *L, const char *fname, lua_Number ms) {
  lua_createtable(L, 0, 1);
  if (ms == floor(ms)) lua_pushinteger(L, (lua_Integer)ms);
  else lua_pushnumber(L, ms);
  lua_setfield(L, -2, "timeout_ms");
  return lbt_fail_detail(L, fname, "timeout", -1, "timed out after %.15g ms", ms);
}

void lbt_push_error_detail(lua_State *L, const char *kind, const char *msg, int detail_idx) {
  if (detail_idx != 0) detail_idx = lua_absindex(L, detail_idx);
  lbt_push_error(L, kind, msg);
  if (detail_idx != 0) {
    lua_pushvalue(L, detail_idx);
    lua_setfield(L, -2, "detail");
  }
}

/* ---- misuse ------------------------------------------------------------------------- */

/* Methods' fnames have a colon ("baton.group:spawn"): self is argument #0. */
int lbt_argn(const char *fname, int idx) { return strchr(fname, ':') != NULL ? idx - 1 : idx; }

const char *lbt_push_got(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
  case LUA_TNUMBER: {
    lua_Number x = lua_tonumber(L, idx);
    if (x != x) return lua_pushliteral(L, "NaN");
    if (lua_isinteger(L, idx)) return lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
    char buf[64];
    snprintf(buf, sizeof buf, "%.14g", (double)x);
    return lua_pushstring(L, buf);
  }
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (len <= 40 && strlen(s) == len) return lua_pushfstring(L, "'%s'", s);
    return lua_pushfstring(L, "a string of %I bytes", (LUAI_UACINT)len);
  }
  case LUA_TBOOLEAN: return lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
  case LUA_TNONE: return lua_pushliteral(L, "no value");
  default: {
    int t = luaL_getmetafield(L, idx, "__name");
    if (t == LUA_TSTRING) return lua_tostring(L, -1);
    if (t != LUA_TNIL) lua_pop(L, 1);
    return lua_pushstring(L, luaL_typename(L, idx));
  }
  }
}

int lbt_argerror_got(lua_State *L, const char *fname, int n, const char *name,
                     const char *expected, const char *got) {
  return luaL_error(L, "%s: bad argument #%d '%s' (expected %s, got %s)", fname, n, name,
                    expected, got);
}

int lbt_argerror(lua_State *L, const char *fname, int idx, const char *name,
                 const char *expected) {
  const char *got = lbt_push_got(L, idx);
  return lbt_argerror_got(L, fname, lbt_argn(fname, idx), name, expected, got);
}

/* The field `key` of the option table at tidx is on top of the stack. */
static int field_error(lua_State *L, const char *fname, int tidx, const char *key,
                       const char *expected) {
  const char *got = lbt_push_got(L, -1);
  return lbt_argerror_got(L, fname, lbt_argn(fname, tidx), key, expected, got);
}

int lbt_field_error(lua_State *L, const char *fname, int tidx, const char *key,
                    const char *expected) {
  lua_getfield(L, tidx, key);
  return field_error(L, fname, tidx, key, expected);
}

/* Raises unless every key of the table at idx is a string in `known` (or, after
 * LBT_POSITIONAL, an integer). `name` NULL: the old wording of lbt_check_fields. */
static void check_keys(lua_State *L, const char *fname, int idx, const char *name,
                       const char *const known[]) {
  int positional = known[0] != NULL && strcmp(known[0], LBT_POSITIONAL) == 0;
  int n = lbt_argn(fname, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -1);
      int ok = 0;
      for (int i = positional; known[i] != NULL && !ok; i++) ok = strcmp(k, known[i]) == 0;
      if (ok) continue;
      if (name == NULL) luaL_error(L, "%s: unknown option '%s'", fname, k);
      luaL_error(L, "%s: bad argument #%d '%s' (unknown option)", fname, n, k);
    } else if (!positional || !lua_isinteger(L, -1)) {
      if (name == NULL)
        luaL_error(L, "%s: unexpected %s key in the options table", fname, luaL_typename(L, -1));
      lbt_argerror_got(L, fname, n, name, "string keys", lbt_push_got(L, -1));
    }
  }
}

void lbt_check_fields(lua_State *L, int idx, const char *fname, const char *const known[]) {
  check_keys(L, fname, lua_absindex(L, idx), NULL, known);
}

void lbt_check_opts(lua_State *L, const char *fname, int idx, const char *name,
                    const char *const known[]) {
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) lbt_argerror(L, fname, idx, name, "table");
  check_keys(L, fname, idx, name, known);
}

/* Integers in [min, 2^53] (exact as floats too): what every count and size accepts. */
static int count_ok(lua_State *L, int idx, lua_Integer min, lua_Integer *v) {
  int isint = 0;
  *v = lua_tointegerx(L, idx, &isint);
  return lua_type(L, idx) == LUA_TNUMBER && isint && *v >= min && *v <= ((lua_Integer)1 << 53);
}

/* What a count must be; the upper bound named when the value at idx passed it. */
static const char *count_expected(lua_State *L, int idx, lua_Integer min) {
  if (lua_isinteger(L, idx) && lua_tointeger(L, idx) > ((lua_Integer)1 << 53))
    return lua_pushliteral(L, "integer <= 2^53");
  return lua_pushfstring(L, "integer >= %I", (LUAI_UACINT)min);
}

lua_Integer lbt_opt_count(lua_State *L, const char *fname, int tidx, const char *key,
                          lua_Integer min, lua_Integer def) {
  lua_getfield(L, tidx, key);
  lua_Integer v = def;
  if (!(lua_isnil(L, -1) && def >= 0) && !count_ok(L, -1, min, &v)) {
    const char *x = count_expected(L, -1, min);
    lua_pushvalue(L, -2);
    field_error(L, fname, tidx, key, x);
  }
  lua_pop(L, 1);
  return v;
}

lua_Integer lbt_arg_count(lua_State *L, const char *fname, int idx, const char *name,
                          lua_Integer min, lua_Integer def) {
  lua_Integer v = def;
  if (lua_isnoneornil(L, idx) && def >= 0) return def;
  if (!count_ok(L, idx, min, &v)) {
    int none = lua_isnone(L, idx);  /* before the push below moves the top past idx */
    const char *expected = count_expected(L, idx, min);
    if (none) lbt_argerror_got(L, fname, lbt_argn(fname, idx), name, expected, "no value");
    lbt_argerror(L, fname, idx, name, expected);
  }
  return v;
}

static int ms_ok(lua_State *L, int idx, lua_Number *ms) {
  int isnum = 0;
  *ms = lua_tonumberx(L, idx, &isnum);
  return lua_type(L, idx) == LUA_TNUMBER && *ms >= 0 && *ms < 1e15;  /* NaN fails */
}

lua_Number lbt_opt_ms(lua_State *L, const char *fname, int tidx, const char *key,
                      lua_Number def) {
  lua_getfield(L, tidx, key);
  lua_Number ms = def;
  if (!lua_isnil(L, -1) && !ms_ok(L, -1, &ms))
    field_error(L, fname, tidx, key, "milliseconds >= 0");
  lua_pop(L, 1);
  return ms;
}

lua_Number lbt_arg_ms(lua_State *L, const char *fname, int idx, const char *name,
                      lua_Number def) {
  lua_Number ms = def;
  if (lua_isnoneornil(L, idx) && def >= 0) return def;
  if (!ms_ok(L, idx, &ms)) lbt_argerror(L, fname, idx, name, "milliseconds >= 0");
  return ms;
}

uint64_t lbt_arg_due(lua_State *L, lbt_rt *R, const char *fname, int idx) {
  if (lua_isnoneornil(L, idx)) return UINT64_MAX;
  return bt_due(R->rt, (uint64_t)ceil(lbt_arg_ms(L, fname, idx, "timeout_ms", -1)));
}

int lbt_opt_bool(lua_State *L, const char *fname, int tidx, const char *key, int def) {
  int t = lua_getfield(L, tidx, key);
  int v = def;
  if (t == LUA_TBOOLEAN) v = lua_toboolean(L, -1);
  else if (t != LUA_TNIL) field_error(L, fname, tidx, key, "boolean");
  lua_pop(L, 1);
  return v;
}

int lbt_opt_function(lua_State *L, const char *fname, int tidx, const char *key) {
  int t = lua_getfield(L, tidx, key);
  if (t != LUA_TNIL && t != LUA_TFUNCTION) field_error(L, fname, tidx, key, "function");
  return t == LUA_TFUNCTION;
}

const char *lbt_opt_string(lua_State *L, const char *fname, int tidx, const char *key,
                           const char *def, size_t *len) {
  int t = lua_getfield(L, tidx, key);
  const char *s = def;
  if (len != NULL) *len = def != NULL ? strlen(def) : 0;
  if (t == LUA_TSTRING) s = lua_tolstring(L, -1, len);  /* a raw field: the table keeps it */
  else if (t != LUA_TNIL || def == NULL) field_error(L, fname, tidx, key, "string");
  lua_pop(L, 1);
  return s;
}

const char *lbt_arg_string(lua_State *L, const char *fname, int idx, const char *name,
                           size_t *len) {
  if (lua_type(L, idx) != LUA_TSTRING) lbt_argerror(L, fname, idx, name, "string");
  return lua_tolstring(L, idx, len);
}

/* "one of 'a', 'b', 'c'" for an enum's message. */
static const char *enum_expected(lua_State *L, const char *const names[]) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "one of ");
  for (int i = 0; names[i] != NULL; i++) {
    if (i > 0) luaL_addstring(&b, ", ");
    luaL_addchar(&b, '\'');
    luaL_addstring(&b, names[i]);
    luaL_addchar(&b, '\'');
  }
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

int lbt_opt_enum(lua_State *L, const char *fname, int tidx, const char *key,
                 const char *const names[], int def) {
  int t = lua_getfield(L, tidx, key);
  if (t == LUA_TNIL && def >= 0) {
    lua_pop(L, 1);
    return def;
  }
  if (t == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    for (int i = 0; names[i] != NULL; i++)
      if (strcmp(s, names[i]) == 0) {
        lua_pop(L, 1);
        return i;
      }
  }
  const char *x = enum_expected(L, names);
  lua_pushvalue(L, -2);
  return field_error(L, fname, tidx, key, x);
}

void *lbt_check_udata(lua_State *L, const char *fname, int idx, const char *name,
                      lbt_class cls) {
  void *p = lbt_test_type(L, idx, cls);
  if (p == NULL) lbt_argerror(L, fname, idx, name, lbt_class_name(cls));
  return p;
}

/* ---- the end of a wait -------------------------------------------------------------- */

void lbt_cancel_point(lua_State *L, void (*undo)(void *arg), void *arg) {
  if (!lbt_cancelled(lbt_R(L))) return;
  if (undo != NULL) undo(arg);
  lbt_raise_cancelled(L);
}

void lbt_sole_waiter(lua_State *L, const char *fname, int busy, const char *what) {
  if (busy) luaL_error(L, "%s: another task is already waiting on this %s", fname, what);
  lbt_cancel_point(L, NULL, NULL);
}

void lbt_insert_due(lua_State *L, int idx, uint64_t due) {
  lua_pushinteger(L, due == UINT64_MAX ? -1 : (lua_Integer)due);
  lua_insert(L, idx);
}

_Noreturn void lbt_resumed_cancelled(lua_State *L, int status, void (*undo)(void *arg),
                                     void *arg) {
  if (status == 0 && undo != NULL) undo(arg);  /* granted, but aborted meanwhile */
  lbt_raise_cancelled(L);
  abort();  /* lua_error does not return */
}

int lbt_resumed_free(lua_State *L, lbt_task **Tp, void (*release)(void *arg), void *arg) {
  lbt_task *T = (lbt_task *)bt_rt_current(lbt_R(L)->rt);
  if (lbt_fib(T)->status == BT_ECANCELED || (T->t.flags & BT_TASK_F_CANCEL)) release(arg);
  return lbt_resumed(L, Tp, NULL, NULL);
}

/* ---- outcomes of user functions ----------------------------------------------------- */

static int tostring_k(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* luaL_tolstring in a protected call: a __tostring that raises, yields or returns no string
 * gives "a <type> whose __tostring failed" instead of an error thrown into the runtime's C
 * code. */
const char *lbt_push_tostring(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  int t = lua_type(L, idx);
  if (t == LUA_TSTRING || t == LUA_TNUMBER) {
    lua_pushvalue(L, idx);
    return lua_tostring(L, -1);
  }
  lua_pushcfunction(L, tostring_k);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return lua_pushfstring(L, "a %s whose __tostring failed", luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}

/* What a failure value says, for a report: a string or number as it is, a table's raw
 * `message` (a baton.Error's), else its tostring, protected. Pushed. */
const char *lbt_push_failure_text(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TTABLE) {
    lua_pushliteral(L, "message");
    if (lua_rawget(L, idx) == LUA_TSTRING) return lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  return lbt_push_tostring(L, idx);
}

/* t[k] without metamethods: a failure's fields are data, read without running its code. */
static int rawfield(lua_State *L, int idx, const char *k) {
  lua_pushstring(L, k);
  return lua_rawget(L, idx);
}

/* The failure carried by the value at idx (a returned message, or a raised value): pushes
 * message, kind, detail. A table with a string kind gives its fields (message, kind,
 * detail; read raw); a string or number is the message, with kind `kind` ("error" when
 * NULL); anything else its tostring. */
static void push_fields(lua_State *L, int idx, const char *kind, int detail_idx) {
  idx = lua_absindex(L, idx);
  int t = lua_type(L, idx);
  if (t == LUA_TTABLE) {
    rawfield(L, idx, "kind");
    if (lua_type(L, -1) == LUA_TSTRING) {
      rawfield(L, idx, "message");
      if (!lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
      }
      lua_insert(L, -2);  /* message, kind */
      rawfield(L, idx, "detail");
      if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L);
      }
      return;
    }
    lua_pop(L, 1);
  }
  lbt_push_tostring(L, idx);
  lua_pushstring(L, kind != NULL ? kind : "error");
  if (detail_idx != 0 && lua_istable(L, detail_idx)) {
    lua_pushvalue(L, detail_idx);
  } else if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TNIL) {
    lua_createtable(L, 0, 1);  /* a foreign value: keep it */
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, "value");
  } else {
    lua_pushnil(L);
  }
}

int lbt_outcome(lua_State *L, int status, int base) {
  int top = lua_gettop(L);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!(top > base && lua_isnil(L, base) && !lua_isnil(L, base + 1))) return 1;
    const char *kind = top >= base + 2 && lua_type(L, base + 2) == LUA_TSTRING
                     ? lua_tostring(L, base + 2) : NULL;
    push_fields(L, base + 1, kind, top >= base + 3 ? base + 3 : 0);
  } else {
    if (status != LUA_ERRRUN || lbt_is_cancel_error(L, -1) || lbt_cancelled(lbt_R(L)))
      lua_error(L);  /* the cancellation (or a memory error) is never a failure */
    push_fields(L, -1, NULL, 0);
  }
  for (int i = 0; i < 3; i++) lua_copy(L, -3 + i, base + i);
  lua_settop(L, base + 2);
  return 0;
}

/* ---- baton.error, baton.kinds ------------------------------------------------------- */

/* baton.error(kind, message [, detail]): a baton.Error, for policy code and dispatchers to
 * raise (or to return as data). */
static int lbaton_error(lua_State *L) {
  size_t len;
  const char *kind = lbt_arg_string(L, "baton.error", 1, "kind", &len);
  if (len == 0) lbt_argerror(L, "baton.error", 1, "kind", "a non-empty string");
  if (lua_type(L, 2) != LUA_TSTRING && lua_type(L, 2) != LUA_TNUMBER)
    lbt_argerror(L, "baton.error", 2, "message", "string");
  if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
    lbt_argerror(L, "baton.error", 3, "detail", "table or nil");
  lbt_push_error_detail(L, kind, lua_tostring(L, 2), lua_istable(L, 3) ? 3 : 0);
  return 1;
}

/* baton._got(v): how a misuse message shows v (lbt_push_got), for the Lua parts of baton
 * (store.lua, router.lua, concurrency.lua, queue.lua), so that they word it as C does. */
static int lbaton_got(lua_State *L) {
  lbt_push_got(L, 1);
  return 1;
}

void lbt_open_errors(lua_State *L, int rt_idx) {
  static const luaL_Reg funcs[] = {{"error", lbaton_error}, {"_got", lbaton_got}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
  lua_newtable(L);
  for (int i = 0; lbt_kinds[i] != NULL; i++) {
    lua_pushstring(L, lbt_kinds[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "kinds");
}
