/*
 * llimiter.c — baton.limiter (callable, with .from_json), baton.parse_key, baton.parse_chain.
 *
 * The core limiter (src/core/limiter.c) holds the keys, the counts, the fallback search and
 * the queue; this binding checks the configuration, resolves each key's profile and limit
 * the first time the key is seen, and turns the queue wait into an await.
 *
 * A key's profile comes from `profiles` (a table by model name, or a function called with
 * the model and the provider), else the default profile: standard tier, no tools. Its
 * limit is models["provider/model"], else models["model"], else default_concurrency of its
 * tier. Both are fixed from then on (a profiles function is called once per key). Provider
 * models are resolved when the limiter is built, other keys on first use.
 *
 * Errors (docs/errors.md). Raise: a bad configuration, a bad argument or a bad profile,
 * naming the field (`baton.limiter: bad argument #1 'providers[1].models[2]' (expected
 * model name, got '')`; unknown keys first), a queue wait outside a task, use after the
 * limiter was finalized, and the cancellation error. Return failures: acquire —
 * `nil, "baton.limiter:acquire: 'p/m' is at its limit (2 of 2 in use)", "queue_wait",
 * { key =, capacity =, in_use =, waiting =, reason = "models" | "max_agents" }` when nothing
 * is free and the caller does not wait (or the limit is 0), the standard timeout (`timed out after N ms`, "timeout",
 * { timeout_ms =, key = }), "resource" when the wait cannot be armed (memory), "closed"
 * when the limiter is finalized under a waiter (only as the state closes); from_json —
 * "io" for a file it cannot read and "malformed" for one that is not JSON (detail
 * { path = }, and the byte); a bad configuration in the file raises, naming the file and
 * the field. parse_key's nil is an answer ("not a key"), not a failure.
 *
 * Permits: a closable userdata whose user value keeps the limiter alive; release() is
 * idempotent, <close> and GC (with a warning) release too. A queued acquire creates its
 * permit not held and links the waiter record embedded in it, so waiting allocates nothing
 * more than the permit the grant needs anyway; the grant marks it held before the task
 * resumes, so a task aborted in between gives it straight back.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "lbaton.h"
#include "trace.h"
#include "limiter.h"

#define BT_LIMITER_MT    "baton.Limiter"
#define BT_LIM_PERMIT_MT "baton.Limiter.Permit"
#define BT_LIM_GRANT_MT  "baton.Limiter.Grant"
#define CHAIN_ON_STACK   16

static const char *const F_ACQUIRE = "baton.limiter:acquire";
static const char *const F_FROM_JSON = "baton.limiter.from_json";

static const char *const tier_names[] = {"premium", "standard", "cheap", NULL};
static const char *const via_names[] = {"primary", "chain", "capability", "cli", "queue"};

/* User values: 1 the limits (normalised key or bare model → limit), 2 the profiles. */
typedef struct llim {
  bt_limiter_t *lim;       /* NULL until built, and once finalized */
  size_t defcap[3];        /* default_concurrency by tier */
} llim;
LBT_HANDLE_FIRST(llim, lim);

typedef struct lperm {
  llim *M;                 /* kept alive by user value 1 */
  bt_limiter_key_t *key;
  lbt_fiber *fib;          /* the waiting task's fiber, while queued */
  bt_limiter_waiter_t w;
  int held;
} lperm;

/* ---- keys --------------------------------------------------------------------------- */

static int is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static void trim(const char **s, size_t *n) {
  while (*n > 0 && is_space(**s)) (*s)++, (*n)--;
  while (*n > 0 && is_space((*s)[*n - 1])) (*n)--;
}

/* Splits s at its first '/' and trims both parts; 1 if both are non-empty. */
static int split_key(const char *s, size_t len, const char **p, size_t *pn, const char **m,
                     size_t *mn) {
  const char *slash = memchr(s, '/', len);
  if (slash == NULL) return 0;
  *p = s;
  *pn = (size_t)(slash - s);
  *m = slash + 1;
  *mn = len - *pn - 1;
  trim(p, pn);
  trim(m, mn);
  return *pn > 0 && *mn > 0;
}

static void push_pair(lua_State *L, const char *p, size_t pn, const char *m, size_t mn) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, p, pn);
  luaL_addchar(&b, '/');
  luaL_addlstring(&b, m, mn);
  luaL_pushresult(&b);
}

/* Pushes the normalised "provider/model" of the string at idx and returns 1, or returns 0
 * (nothing pushed) if it is not a string or not a key. */
static int push_key(lua_State *L, int idx) {
  const char *p, *m;
  size_t len, pn, mn;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  const char *s = lua_tolstring(L, idx, &len);
  if (!split_key(s, len, &p, &pn, &m, &mn)) return 0;
  if (p == s && pn + 1 + mn == len) lua_pushvalue(L, idx);  /* already normal */
  else push_pair(L, p, pn, m, mn);
  return 1;
}

/* parse_key(s) -> provider, model | nil */
static int lparse_key(lua_State *L) {
  const char *p, *m;
  size_t len, pn, mn;
  const char *s = lbt_arg_string(L, "baton.parse_key", 1, "s", &len);
  if (!split_key(s, len, &p, &pn, &m, &mn)) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, p, pn);
  lua_pushlstring(L, m, mn);
  return 2;
}

/* Pushes the list of normalised keys in the comma-separated s; bad entries are skipped. */
static void push_chain(lua_State *L, const char *s, size_t len) {
  const char *p, *m, *end = s + len;
  size_t pn, mn;
  lua_Integer n = 0;
  lua_newtable(L);
  while (s <= end) {
    const char *comma = memchr(s, ',', (size_t)(end - s));
    if (comma == NULL) comma = end;
    if (split_key(s, (size_t)(comma - s), &p, &pn, &m, &mn)) {
      push_pair(L, p, pn, m, mn);
      lua_rawseti(L, -2, ++n);
    }
    s = comma + 1;
  }
}

static int lparse_chain(lua_State *L) {
  size_t len;
  const char *s = lbt_arg_string(L, "baton.parse_chain", 1, "s", &len);
  push_chain(L, s, len);
  return 1;
}

/* ---- configuration ------------------------------------------------------------------ */

/* Where a configuration error is blamed: "<fname>: bad argument #n '<field>' (...)" — the
 * configuration table of baton.limiter, the file of from_json (fname names it), or self
 * (#0) for a profile that a profiles function returns when a key is first used. */
typedef struct lwhere {
  const char *fname;
  int n;
} lwhere;

/* Raises "<fname>: bad argument #n '<field>' (expected <expect>, got <the value at idx>)". */
static int bad(lua_State *L, const lwhere *w, const char *field, const char *expect, int idx) {
  const char *got = lbt_push_got(L, idx);
  return lbt_argerror_got(L, w->fname, w->n, field, expect, got);
}

/* Raises "... '<path>.<key>' (unknown option)" for the first key of the table at idx not in
 * `known` (path NULL: the key alone), before anything in the table is read. */
static void check_keys(lua_State *L, int idx, const lwhere *w, const char *path,
                       const char *const known[]) {
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    int i = 0;
    while (k != NULL && known[i] != NULL && strcmp(k, known[i]) != 0) i++;
    if (k == NULL) bad(L, w, path ? path : "config", "string keys", -1);
    if (known[i] == NULL)
      luaL_error(L, "%s: bad argument #%d '%s%s%s' (unknown option)", w->fname, w->n,
                 path ? path : "", path ? "." : "", k);
  }
}

/* The length of the list at idx; raises unless its keys are exactly 1..n. */
static lua_Integer check_list(lua_State *L, int idx, const lwhere *w, const char *field) {
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) bad(L, w, field, "list", idx);
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n)
      lbt_argerror_got(L, w->fname, w->n, field, "list",
                       lua_pushfstring(L, "a table with a key %s", lbt_push_got(L, -1)));
  }
  if (count != n) lbt_argerror_got(L, w->fname, w->n, field, "list", "a list with holes");
  return n;
}

static size_t check_count(lua_State *L, int idx, lua_Integer min, const lwhere *w,
                          const char *field) {
  int ok = 0;
  lua_Integer n = lua_type(L, idx) == LUA_TNUMBER ? lua_tointegerx(L, idx, &ok) : 0;
  if (!ok || n < min) bad(L, w, field, min ? "integer >= 1" : "integer >= 0", idx);
  return (size_t)n;
}

/* Reads the profile at idx; raises naming w and what. */
static void read_profile(lua_State *L, int idx, const lwhere *w, const char *what,
                         bt_limiter_tier_t *tier, int *tools) {
  static const char *const known[] = {"cost_tier", "tools", NULL};
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) bad(L, w, what, "table { cost_tier =, tools = }", idx);
  check_keys(L, idx, w, what, known);
  *tier = BT_LIMITER_TIER_STANDARD;
  *tools = 0;
  lua_getfield(L, idx, "cost_tier");
  if (!lua_isnil(L, -1)) {
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    int i = 0;
    while (tier_names[i] != NULL && strcmp(s, tier_names[i]) != 0) i++;
    if (tier_names[i] == NULL)
      bad(L, w, lua_pushfstring(L, "%s.cost_tier", what),
          "one of 'premium', 'standard', 'cheap'", -2);
    *tier = (bt_limiter_tier_t)i;
  }
  lua_getfield(L, idx, "tools");
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
    bad(L, w, lua_pushfstring(L, "%s.tools", what), "boolean", -2);
  *tools = lua_toboolean(L, -1);
  lua_pop(L, 2);
}

/* The core key for the normalised name at name_idx, added on first use (see the header
 * comment). May call the profiles function; raises naming the field, as w says. */
static bt_limiter_key_t *get_key(lua_State *L, int ud, llim *M, int name_idx, const lwhere *w) {
  size_t len;
  const char *name = lua_tolstring(L, name_idx, &len);
  bt_limiter_key_t *k = bt__limiter_key(M->lim, name, len);
  if (k != NULL) return k;
  const char *model = (const char *)memchr(name, '/', len) + 1;
  bt_limiter_tier_t tier = BT_LIMITER_TIER_STANDARD;
  int tools = 0, top = lua_gettop(L);
  if (lua_getiuservalue(L, ud, 2) == LUA_TFUNCTION) {
    lua_pushstring(L, model);
    lua_pushlstring(L, name, (size_t)(model - 1 - name));
    lua_call(L, 2, 1);
    int res = lua_gettop(L);
    if (!lua_isnil(L, res))
      read_profile(L, res, w, lua_pushfstring(L, "profiles(\"%s\") result", model), &tier,
                   &tools);
  } else if (lua_istable(L, -1)) {  /* checked when the limiter was built */
    lua_pushstring(L, model);
    if (lua_rawget(L, -2) != LUA_TNIL) read_profile(L, -1, w, model, &tier, &tools);
  }
  lua_settop(L, top);
  if (M->lim == NULL) lbt_closed_error(L, LBT_LIMITER);  /* by the profiles function */
  size_t cap = M->defcap[tier];
  lua_getiuservalue(L, ud, 1);
  lua_pushvalue(L, name_idx);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushstring(L, model);
    lua_rawget(L, -2);
  }
  if (lua_isinteger(L, -1)) cap = (size_t)lua_tointeger(L, -1);
  lua_settop(L, top);
  k = bt__limiter_add_key(M->lim, name, len, cap, tier, tools);
  if (k == NULL) luaL_error(L, "%s: out of memory", w->fname);
  return k;
}

static void configure_models(lua_State *L, int cfg, int ud, const lwhere *w) {
  char field[256];
  lua_newtable(L);
  int limits = lua_gettop(L);
  if (lua_getfield(L, cfg, "models") != LUA_TNIL) {
    if (!lua_istable(L, -1)) bad(L, w, "models", "table of limits", -1);
    lua_pushnil(L);
    while (lua_next(L, limits + 1)) {
      if (lua_type(L, -2) != LUA_TSTRING) bad(L, w, "models", "string keys", -2);
      snprintf(field, sizeof field, "models[\"%s\"]", lua_tostring(L, -2));
      size_t len;
      const char *s = lua_tolstring(L, -2, &len);
      if (memchr(s, '/', len) != NULL) {
        if (!push_key(L, -2))
          bad(L, w, field, "'provider/model' key, both parts non-empty", -2);
      } else {
        trim(&s, &len);
        if (len == 0) bad(L, w, field, "non-empty model name", -2);
        lua_pushlstring(L, s, len);
      }
      lua_pushinteger(L, (lua_Integer)check_count(L, -2, 0, w, field));
      lua_pushvalue(L, -2);
      if (lua_rawget(L, limits) != LUA_TNIL)
        lbt_argerror_got(L, w->fname, w->n, field, "each key once", "the same key twice");
      lua_pop(L, 1);
      lua_rawset(L, limits);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_setiuservalue(L, ud, 1);
}

static void configure_profiles(lua_State *L, int cfg, int ud, const lwhere *w) {
  char field[256];
  bt_limiter_tier_t tier;
  int tools;
  int t = lua_getfield(L, cfg, "profiles");
  if (t == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) != LUA_TSTRING) bad(L, w, "profiles", "string keys", -2);
      snprintf(field, sizeof field, "profiles[\"%s\"]", lua_tostring(L, -2));
      read_profile(L, -1, w, field, &tier, &tools);
      lua_pop(L, 1);
    }
  } else if (t != LUA_TNIL && t != LUA_TFUNCTION) {
    bad(L, w, "profiles", "table or function", -1);
  }
  lua_setiuservalue(L, ud, 2);
}

/* Adds one provider model as a candidate; the key's parts are trimmed strings. */
static void add_candidate(lua_State *L, int ud, llim *M, const char *name, size_t nn,
                          const char *model, size_t mn, int cli, const lwhere *w) {
  push_pair(L, name, nn, model, mn);
  bt_limiter_key_t *k = get_key(L, ud, M, lua_gettop(L), w);
  if (bt__limiter_add_candidate(M->lim, k, cli) != 0)
    luaL_error(L, "%s: out of memory", w->fname);
  lua_pop(L, 1);
}

static void configure_providers(lua_State *L, int cfg, int ud, llim *M, const lwhere *w) {
  static const char *const known[] = {"name", "models", "cli", NULL};
  char field[128];
  if (lua_getfield(L, cfg, "providers") == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  int list = lua_gettop(L);
  lua_Integer n = check_list(L, list, w, "providers");
  for (lua_Integer i = 1; i <= n; i++) {
    snprintf(field, sizeof field, "providers[%d]", (int)i);
    int e = lua_rawgeti(L, list, i) == LUA_TTABLE ? lua_gettop(L) : 0;
    if (e == 0) bad(L, w, field, "table { name =, models =, cli = }", -1);
    check_keys(L, e, w, field, known);
    size_t nn = 0, mn;
    const char *name = lua_getfield(L, e, "name") == LUA_TSTRING ? lua_tolstring(L, -1, &nn) : "";
    trim(&name, &nn);
    if (nn == 0 || memchr(name, '/', nn) != NULL)
      bad(L, w, lua_pushfstring(L, "%s.name", field), "non-empty string without '/'", -2);
    lua_getfield(L, e, "cli");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
      bad(L, w, lua_pushfstring(L, "%s.cli", field), "boolean", -2);
    int cli = lua_toboolean(L, -1);
    lua_Integer nm = 0;
    if (lua_getfield(L, e, "models") != LUA_TNIL) {
      size_t fl = strlen(field);
      snprintf(field + fl, sizeof field - fl, ".models");
      nm = check_list(L, -1, w, field);
      field[fl] = '\0';
    }
    int models = lua_gettop(L);
    for (lua_Integer j = 1; j <= nm; j++) {
      const char *model = "";
      mn = 0;
      if (lua_rawgeti(L, models, j) == LUA_TSTRING) model = lua_tolstring(L, -1, &mn);
      trim(&model, &mn);
      if (mn == 0)
        bad(L, w, lua_pushfstring(L, "%s.models[%d]", field, (int)j), "model name", -2);
      if (!cli || j == 1) add_candidate(L, ud, M, name, nn, model, mn, cli, w);
      lua_pop(L, 1);
    }
    if (cli && nm == 0) add_candidate(L, ud, M, name, nn, name, nn, cli, w);  /* implicit */
    lua_settop(L, list);
  }
  lua_pop(L, 1);
}

/* Builds the limiter userdata at ud from the configuration table at cfg. */
static void configure(lua_State *L, int cfg, int ud, llim *M, const lwhere *w) {
  static const char *const known[] = {"max_agents", "models", "providers", "profiles",
                                      "default_concurrency", NULL};
  check_keys(L, cfg, w, NULL, known);
  size_t max = SIZE_MAX;
  if (lua_getfield(L, cfg, "max_agents") != LUA_TNIL) max = check_count(L, -1, 1, w, "max_agents");
  lua_pop(L, 1);
  if (lua_getfield(L, cfg, "default_concurrency") != LUA_TNIL) {
    char field[64];
    if (!lua_istable(L, -1)) bad(L, w, "default_concurrency", "table", -1);
    check_keys(L, -1, w, "default_concurrency", tier_names);
    for (int i = 0; tier_names[i] != NULL; i++) {
      if (lua_getfield(L, -1, tier_names[i]) != LUA_TNIL) {
        snprintf(field, sizeof field, "default_concurrency.%s", tier_names[i]);
        M->defcap[i] = check_count(L, -1, 0, w, field);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  configure_models(L, cfg, ud, w);
  configure_profiles(L, cfg, ud, w);
  M->lim = bt__limiter_new(max);
  if (M->lim == NULL) luaL_error(L, "%s: out of memory", w->fname);
  configure_providers(L, cfg, ud, M, w);
}

static int construct(lua_State *L, int cfg, const lwhere *w) {
  llim *M = lua_newuserdatauv(L, sizeof *M, 2);
  M->lim = NULL;
  M->defcap[BT_LIMITER_TIER_PREMIUM] = 3;
  M->defcap[BT_LIMITER_TIER_STANDARD] = 5;
  M->defcap[BT_LIMITER_TIER_CHEAP] = 8;
  luaL_setmetatable(L, BT_LIMITER_MT);
  int ud = lua_gettop(L);
  configure(L, cfg, ud, M, w);
  lua_settop(L, ud);
  return 1;
}

/* baton.limiter{...}: __call of the baton.limiter table, so argument 2 is the config. */
static int llim_call(lua_State *L) {
  static const lwhere w = {"baton.limiter", 1};
  if (!lua_istable(L, 2)) bad(L, &w, "config", "table", 2);
  lua_settop(L, 2);
  return construct(L, 2, &w);
}

/* nil, "baton.limiter.from_json: cannot read 'path': why", "io", { path = } (path at 1). */
static int io_fail(lua_State *L, const char *why) {
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "path");
  return lbt_fail_detail(L, F_FROM_JSON, "io", -1, "cannot read '%s': %s", lua_tostring(L, 1),
                         why);
}

/* from_json(path) -> limiter | nil, message, "io" | "malformed", { path = }. Upvalue 2:
 * json.decode. */
static int llim_from_json(lua_State *L) {
  const char *path = lbt_arg_string(L, F_FROM_JSON, 1, "path", NULL);
  lua_settop(L, 1);
  struct stat st;
  if (stat(path, &st) != 0) return io_fail(L, strerror(errno));
  if (!S_ISREG(st.st_mode)) return io_fail(L, "not a regular file");
  size_t size = (size_t)st.st_size;
  char *buf = lua_newuserdatauv(L, size + 1, 0);  /* before the file is open: no leak */
  FILE *f = fopen(path, "rb");
  if (f == NULL) return io_fail(L, strerror(errno));
  size_t n = fread(buf, 1, size, f);
  int err = ferror(f) ? errno : 0;
  fclose(f);
  if (err != 0) return io_fail(L, strerror(err));
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushlstring(L, buf, n);
  lua_call(L, 1, 4);                           /* 2 value | nil, 3 msg, 4 kind, 5 detail */
  if (lua_isnil(L, 2)) {                       /* decode's detail (the byte), with the path */
    if (!lua_istable(L, 5)) {
      lua_newtable(L);
      lua_replace(L, 5);
    }
    lua_pushvalue(L, 1);
    lua_setfield(L, 5, "path");
    const char *msg = lua_tostring(L, 3);
    const char *tail = strstr(msg, "malformed");
    return lbt_fail_detail(L, F_FROM_JSON, "malformed", 5, "%s: %s", path, tail ? tail : msg);
  }
  lua_settop(L, 2);
  lwhere w = {lua_pushfstring(L, "%s: %s", F_FROM_JSON, path), 1};
  if (!lua_istable(L, 2) || lua_rawlen(L, 2) > 0)
    bad(L, &w, "path", "a file holding a JSON object", 2);
  return construct(L, 2, &w);
}

/* ---- permits and grants ------------------------------------------------------------- */

static lperm *push_permit(lua_State *L, int lim_idx, llim *M, bt_limiter_key_t *k, int held) {
  lperm *p = lua_newuserdatauv(L, sizeof *p, 1);
  memset(p, 0, sizeof *p);
  luaL_setmetatable(L, BT_LIM_PERMIT_MT);
  lua_pushvalue(L, lim_idx);
  lua_setiuservalue(L, -2, 1);
  p->M = M;
  p->key = k;
  p->held = held;
  return p;
}

/* Pushes { key =, via =, permit = } with the permit at perm_idx. */
static void push_grant(lua_State *L, bt_limiter_key_t *k, bt_limiter_via_t via, int perm_idx) {
  lua_createtable(L, 0, 3);
  lua_pushlstring(L, k->name, k->len);
  lua_setfield(L, -2, "key");
  lua_pushstring(L, via_names[via]);
  lua_setfield(L, -2, "via");
  lua_pushvalue(L, perm_idx);
  lua_setfield(L, -2, "permit");
  luaL_setmetatable(L, BT_LIM_GRANT_MT);
}

/* The permit's key name; "?" once its limiter is gone (finalized). */
static const char *perm_key(const lperm *p) { return p->M->lim ? p->key->name : "?"; }

static void perm_release(lperm *p) {
  if (!p->held) return;
  p->held = 0;
  if (p->M->lim != NULL) bt__limiter_release(p->M->lim, p->key);
}

static int lperm_release(lua_State *L) {
  perm_release(lbt_check_type(L, 1, LBT_LIM_PERMIT));
  return 0;
}

static int lperm_held(lua_State *L) {
  lua_pushboolean(L, ((lperm *)lbt_check_type(L, 1, LBT_LIM_PERMIT))->held);
  return 1;
}

static void on_granted(bt_limiter_waiter_t *w, int status) {
  lperm *p = bt_container_of(w, lperm, w);
  if (status == 0) p->held = 1;
  bt_task_wake(p->fib->wait.rt, p->fib->wait.task, p->fib->wait.token, status);
}

static int lperm_gc(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lperm *p = lbt_check_type(L, 1, LBT_LIM_PERMIT);
  if (p->w.key != NULL) {  /* still queued: only when the state closes under the waiter */
    bt__limiter_cancel(&p->w);
    on_granted(&p->w, BT_ECLOSED);
  }
  if (p->held && !R->closed)
    lbt_warn(R, "a limiter permit (%s) was collected while still held; release it, or hold "
                "it in a <close> variable (released now)", perm_key(p));
  perm_release(p);
  return 0;
}

static int lperm_tostring(lua_State *L) {
  lperm *p = lbt_check_type(L, 1, LBT_LIM_PERMIT);
  lua_pushfstring(L, "baton.Limiter.Permit (%s, %s)", perm_key(p),
                  p->held ? "held" : "released");
  return 1;
}

/* grant:release() and <close> on a grant release its permit. */
static int lgrant_release(lua_State *L) {
  lbt_check_type(L, 1, LBT_LIM_GRANT);
  lua_getfield(L, 1, "permit");
  lperm *p = lbt_test_type(L, -1, LBT_LIM_PERMIT);
  if (p != NULL) perm_release(p);
  return 0;
}

/* ---- the limiter -------------------------------------------------------------------- */

static llim *check_lim(lua_State *L, int idx) { return lbt_check_handle(L, idx, LBT_LIMITER); }

static void push_counts(lua_State *L, size_t cap, size_t in_use, size_t waiting) {
  lua_createtable(L, 0, 4);
  if (cap != SIZE_MAX) {
    lua_pushinteger(L, (lua_Integer)cap);
    lua_setfield(L, -2, "capacity");
  }
  lua_pushinteger(L, (lua_Integer)in_use);
  lua_setfield(L, -2, "in_use");
  lua_pushinteger(L, (lua_Integer)waiting);
  lua_setfield(L, -2, "waiting");
}

/* Pushes the normalised key at idx, or raises naming the function and the argument `name`
 * (argument #n). */
static void check_key(lua_State *L, int idx, const char *fname, int n, const char *name) {
  if (push_key(L, idx)) return;
  const char *got = lbt_push_got(L, idx);
  lbt_argerror_got(L, fname, n, name, "'provider/model' key", got);
}

static void wait_cancel(bt_wait_t *w) { bt__limiter_cancel(w->src); }

/* Nothing free for `primary` and the caller does not wait: nil, msg, "queue_wait", detail. */
static int saturated(lua_State *L, llim *M, bt_limiter_key_t *k) {
  push_counts(L, k->cap, k->in_use, k->nwaiting);
  lua_pushlstring(L, k->name, k->len);
  lua_setfield(L, -2, "key");
  /* which limit is full: the key's own ("models"), or the global cap ("max_agents") */
  lua_pushstring(L, k->cap != 0 && k->in_use < k->cap ? "max_agents" : "models");
  lua_setfield(L, -2, "reason");
  if (k->cap == 0)
    return lbt_fail_detail(L, F_ACQUIRE, "queue_wait", -1, "'%s' is disabled (its limit is 0)",
                           k->name);
  if (k->in_use < k->cap)  /* the global cap is what is full */
    return lbt_fail_detail(L, F_ACQUIRE, "queue_wait", -1,
                           "no slot for '%s': max_agents is reached (%d in use)", k->name,
                           (int)M->lim->in_use);
  return lbt_fail_detail(L, F_ACQUIRE, "queue_wait", -1, "'%s' is at its limit (%d of %d in use)",
                         k->name, (int)k->in_use, (int)k->cap);
}

static void undo_grant(void *p) { perm_release(p); }

/* The queued wait ended (ctx: the timeout in ms, or -1). */
static int acquire_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  lperm *p = lua_touserdata(L, 2);
  p->fib = NULL;
  int status = lbt_resumed(L, NULL, undo_grant, p);  /* granted but aborted: given back */
  switch (status) {
  case 0:
    push_grant(L, p->key, BT_LIMITER_VIA_QUEUE, 2);
    return 1;
  case BT_ETIMEDOUT:
    lbt_fail_timeout(L, F_ACQUIRE, (lua_Number)ctx);
    lua_pushlstring(L, perm_key(p), strlen(perm_key(p)));
    lua_setfield(L, -2, "key");
    return 4;
  case BT_ECLOSED:
    return lbt_fail(L, F_ACQUIRE, "the limiter was finalized while waiting", "closed");
  default:
    return lbt_fail_status(L, F_ACQUIRE, status);
  }
}

/* acquire(primary, { chain =, wait =, timeout_ms = }) -> grant | nil, msg, "queue_wait" |
 * "timeout", detail (see docs/limiter.md). */
/* Tracing: the decision on a key as an instant event (ltrace.c). */
static void trace_decision(lbt_rt *R, const char *what, const bt_limiter_key_t *k) {
  char key[256], args[300];
  size_t kl = k->len < sizeof key - 1 ? k->len : sizeof key - 1, n = 7;
  memcpy(key, k->name, kl);
  key[kl] = '\0';
  memcpy(args, "{\"key\":", 7);
  bt__trace_json_str(args, sizeof args - 2, &n, key);
  args[n++] = '}';
  args[n] = '\0';
  lbt_trace_instant(R, what, "limiter", args);
}

static int llim_acquire(lua_State *L) {
  static const char *const known[] = {"chain", "wait", "timeout_ms", NULL};
  lbt_rt *R = lbt_R(L);
  llim *M = check_lim(L, 1);
  bt_limiter_key_t *on_stack[CHAIN_ON_STACK], **chain = on_stack, *primary;
  size_t n = 0;
  int wait = 0;
  lua_Number ms = -1;
  lua_settop(L, 3);
  check_key(L, 2, F_ACQUIRE, 1, "primary");
  primary = get_key(L, 1, M, 4, &(lwhere){F_ACQUIRE, 0});
  if (!lua_isnil(L, 3)) {
    lbt_check_opts(L, F_ACQUIRE, 3, "options", known);
    wait = lbt_opt_bool(L, F_ACQUIRE, 3, "wait", 0);
    ms = lbt_opt_ms(L, F_ACQUIRE, 3, "timeout_ms", -1);
    int t = lua_getfield(L, 3, "chain");
    if (t == LUA_TSTRING) {  /* parse_chain's rules: bad entries are skipped */
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      push_chain(L, s, len);
    } else if (t == LUA_TTABLE) {
      check_list(L, -1, &(lwhere){F_ACQUIRE, 2}, "chain");
    } else if (t != LUA_TNIL) {
      lbt_field_error(L, F_ACQUIRE, 3, "chain", "list of keys or string \"a/b, c/d\"");
    }
    int list = lua_gettop(L);
    n = t == LUA_TNIL ? 0 : lua_rawlen(L, list);
    if (n > CHAIN_ON_STACK) chain = lua_newuserdatauv(L, n * sizeof *chain, 0);
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, list, (lua_Integer)i + 1);
      int e = lua_gettop(L);
      check_key(L, e, F_ACQUIRE, 2, lua_pushfstring(L, "chain[%d]", (int)i + 1));
      chain[i] = get_key(L, 1, M, e + 2, &(lwhere){F_ACQUIRE, 0});
      lua_pop(L, 3);
    }
  }
  if (M->lim == NULL) return lbt_closed_error(L, LBT_LIMITER);  /* by an options metamethod */
  /* The permit exists (released) before a slot is taken: if allocating it fails, nothing
   * has leaked. */
  lperm *p = push_permit(L, 1, M, primary, 0);
  int pi = lua_gettop(L);
  bt_limiter_via_t via;
  bt_limiter_key_t *k = bt__limiter_try(M->lim, primary, chain, n, &via);
  if (R->trace != NULL) trace_decision(R, k != NULL ? "limiter grant" : wait ? "limiter queue"
                                       : "limiter saturated", k != NULL ? k : primary);
  if (k != NULL) {
    p->key = k;
    p->held = 1;
    lbt_cancel_point(L, undo_grant, p);  /* still a cancellation point */
    push_grant(L, k, via, pi);
    return 1;
  }
  if (!wait || primary->cap == 0) return saturated(L, M, primary);
  lbt_task *T = lbt_await_begin(L, R, F_ACQUIRE);
  lua_copy(L, pi, 2);  /* the permit, for acquire_k */
  lua_settop(L, 2);
  if (bt__limiter_wait(M->lim, primary, &p->w, on_granted) == 1) {  /* not after a failed try */
    p->held = 1;
    push_grant(L, primary, BT_LIMITER_VIA_QUEUE, 2);
    return 1;
  }
  p->fib = lbt_fib(T);
  p->fib->wait.src = &p->w;
  uint64_t due = ms < 0 ? UINT64_MAX : bt_due(R->rt, (uint64_t)ceil(ms));
  bt_task_wait(R->rt, &T->t, &p->fib->wait, wait_cancel, due);
  return lbt_suspend(L, ms < 0 ? -1 : (lua_KContext)ceil(ms), acquire_k);
}

/* limit(key) -> the key's limit (resolving it, as acquire would). */
static int llim_limit(lua_State *L) {
  llim *M = check_lim(L, 1);
  lua_settop(L, 2);
  check_key(L, 2, "baton.limiter:limit", 1, "key");
  lua_pushinteger(L, (lua_Integer)get_key(L, 1, M, 3, &(lwhere){"baton.limiter:limit", 0})->cap);
  return 1;
}

/* snapshot() -> { keys = { [key] = counts }, global = counts } */
static int llim_snapshot(lua_State *L) {
  llim *M = check_lim(L, 1);
  lua_createtable(L, 0, 2);
  lua_newtable(L);
  for (bt_limiter_key_t *k = bt__limiter_next(M->lim, NULL); k; k = bt__limiter_next(M->lim, k)) {
    lua_pushlstring(L, k->name, k->len);
    push_counts(L, k->cap, k->in_use, k->nwaiting);
    lua_rawset(L, -3);
  }
  lua_setfield(L, -2, "keys");
  push_counts(L, M->lim->cap, M->lim->in_use, M->lim->nwaiting);
  lua_setfield(L, -2, "global");
  return 1;
}

/* Fails queued waiters (their acquire returns "closed") and frees the keys: permits still held
 * know it through p->M->lim. */
static int llim_gc(lua_State *L) {
  llim *M = lbt_check_type(L, 1, LBT_LIMITER);
  bt_limiter_t *lim = M->lim;
  M->lim = NULL;
  bt__limiter_free(lim);
  return 0;
}

static int llim_tostring(lua_State *L) {
  llim *M = lbt_check_type(L, 1, LBT_LIMITER);
  if (M->lim == NULL) {
    lua_pushliteral(L, "baton.Limiter (finalized)");
    return 1;
  }
  lua_pushfstring(L, "baton.Limiter (%I in use, %I waiting)", (LUAI_UACINT)M->lim->in_use,
                  (LUAI_UACINT)M->lim->nwaiting);
  return 1;
}

void lbt_open_limiter(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"acquire", llim_acquire}, {"snapshot", llim_snapshot}, {"limit", llim_limit}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__gc", llim_gc}, {"__tostring", llim_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_LIMITER_MT, methods, meta);
  static const luaL_Reg perm_methods[] = {
    {"release", lperm_release}, {"held", lperm_held}, {NULL, NULL}};
  static const luaL_Reg perm_meta[] = {
    {"__close", lperm_release}, {"__gc", lperm_gc}, {"__tostring", lperm_tostring},
    {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_LIM_PERMIT_MT, perm_methods, perm_meta);
  static const luaL_Reg grant_methods[] = {{"release", lgrant_release}, {NULL, NULL}};
  static const luaL_Reg grant_meta[] = {{"__close", lgrant_release}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_LIM_GRANT_MT, grant_methods, grant_meta);

  lua_newtable(L);  /* baton.limiter: callable, with from_json */
  lua_pushvalue(L, rt_idx);
  lua_getfield(L, -3, "json");
  lua_getfield(L, -1, "decode");
  lua_remove(L, -2);
  lua_pushcclosure(L, llim_from_json, 2);
  lua_setfield(L, -2, "from_json");
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, rt_idx);
  lua_pushcclosure(L, llim_call, 1);
  lua_setfield(L, -2, "__call");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "limiter");
  static const luaL_Reg funcs[] = {
    {"parse_key", lparse_key}, {"parse_chain", lparse_chain}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
