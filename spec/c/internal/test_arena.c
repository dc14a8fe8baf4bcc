/* baton's Lua allocator (src/cli/arena.c), alone and under a Lua state, with a backing
 * allocator that keeps a ledger of its blocks: every block the arena forwards must be one
 * the backing allocator handed out, with the size it has, and when the state is closed the
 * ledger is empty. Covers the executable's use (a state created on the arena), the module's
 * (the arena adopted by a state that already holds blocks: they go back to the allocator
 * that made them, even when Lua resizes them), a used-up reservation (small blocks then come
 * from the backing allocator and go back to it) and random churn with contents checked. */
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "test.h"

#include "arena.h"

/* ---- the ledger: an open-addressing set of (block, size) ------------------------------ */

#define LEDGER_CAP (1u << 20)
static struct { void *p; size_t n; } ledger[LEDGER_CAP];
static size_t ledger_live, ledger_allocs, ledger_reallocs;

static size_t slot_of(void *p) {
  size_t h = ((size_t)(uintptr_t)p >> 4) * 0x9E3779B97F4A7C15u;
  return h & (LEDGER_CAP - 1);
}

static void ledger_add(void *p, size_t n) {
  size_t i = slot_of(p);
  while (ledger[i].p != NULL) i = (i + 1) & (LEDGER_CAP - 1);
  ledger[i].p = p;
  ledger[i].n = n;
  ledger_live++;
}

/* Removes p, checking it is there with size n (backward-shift deletion). */
static void ledger_del(void *p, size_t n) {
  size_t i = slot_of(p);
  while (ledger[i].p != p) {
    CHECK(ledger[i].p != NULL);   /* a block the backing allocator never handed out */
    i = (i + 1) & (LEDGER_CAP - 1);
  }
  CHECK(ledger[i].n == n);
  ledger[i].p = NULL;
  ledger_live--;
  for (size_t j = (i + 1) & (LEDGER_CAP - 1); ledger[j].p != NULL; j = (j + 1) & (LEDGER_CAP - 1)) {
    size_t k = slot_of(ledger[j].p);
    /* move j back to i unless its home k lies cyclically in (i, j] */
    if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
      ledger[i] = ledger[j];
      ledger[j].p = NULL;
      i = j;
    }
  }
}

static void *back(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (ptr != NULL) ledger_del(ptr, osize);
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (ptr != NULL) ledger_reallocs++;
  else ledger_allocs++;
  void *p = realloc(ptr, nsize);
  CHECK(p != NULL);
  ledger_add(p, nsize);
  return p;
}

static int unmapped(const void *p) {
  uintptr_t page = (uintptr_t)p & ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);
  return msync((void *)page, 1, MS_ASYNC) == -1 && errno == ENOMEM;
}

static void run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    CHECK(0);
  }
}

/* ---- the allocator alone ---------------------------------------------------------------- */

static void test_blocks(void) {
  bt_arena *a = bt_arena_new(back, NULL);
  CHECK(a != NULL);
  char *p = bt_arena_lalloc(a, NULL, LUA_TSTRING, 20);
  CHECK(bt_arena_owns(a, p) && ledger_live == 0);
  memset(p, 'a', 20);
  CHECK(bt_arena_lalloc(a, p, 20, 24) == p);            /* same class: stays */
  char *q = bt_arena_lalloc(a, p, 24, 100);             /* another class: moves */
  CHECK(q != p && bt_arena_owns(a, q) && memcmp(q, "aaaaaaaaaaaaaaaaaaaa", 20) == 0);
  CHECK(bt_arena_lalloc(a, NULL, 0, 24) == p);          /* p's block was freed to its class */
  char *big = bt_arena_lalloc(a, q, 100, 5000);         /* grows out of the arena */
  CHECK(!bt_arena_owns(a, big) && ledger_live == 1 && memcmp(big, "aaaa", 4) == 0);
  char *small = bt_arena_lalloc(a, big, 5000, 10);      /* the backing allocator's: stays there */
  CHECK(!bt_arena_owns(a, small) && ledger_live == 1 && memcmp(small, "aaaa", 4) == 0);
  CHECK(bt_arena_lalloc(a, small, 10, 0) == NULL && ledger_live == 0);
  CHECK(bt_arena_lalloc(a, p, 24, 0) == NULL);
  CHECK(bt_arena_lalloc(a, NULL, 0, 0) == NULL);
  CHECK(bt_arena_committed(a) == (size_t)2 << 20);
  bt_arena_free(a);
}

/* Random allocations, resizes and frees of 1..3000 bytes, each block filled with its own
 * byte and checked before every resize and free. */
static void test_churn(size_t reservation) {
  bt_arena *a = bt_arena_new_reserving(back, NULL, reservation);
  CHECK(a != NULL);
  enum { N = 20000 };
  static unsigned char *blk[N];
  static size_t len[N];
  uint64_t x = 42;
  size_t owned = 0, foreign = 0;
  for (int step = 0; step < 400000; step++) {
    x = x * 6364136223846793005u + 1442695040888963407u;
    size_t i = (size_t)(x >> 33) % N;
    size_t n = (size_t)(x >> 13) % 8 == 0 ? 1 + (size_t)(x >> 20) % 3000 : 1 + (size_t)(x >> 20) % 300;
    if (blk[i] != NULL) {
      for (size_t k = 0; k < len[i]; k++) CHECK(blk[i][k] == (unsigned char)i);
    }
    if (blk[i] != NULL && (x >> 40) % 3 == 0) {
      bt_arena_lalloc(a, blk[i], len[i], 0);
      blk[i] = NULL;
      continue;
    }
    unsigned char *p = bt_arena_lalloc(a, blk[i], blk[i] ? len[i] : 0, n);
    CHECK(p != NULL);
    memset(p, (int)(unsigned char)i, n);
    blk[i] = p;
    len[i] = n;
    if (bt_arena_owns(a, p)) owned++;
    else foreign++;
  }
  for (size_t i = 0; i < N; i++)
    if (blk[i] != NULL) {
      for (size_t k = 0; k < len[i]; k++) CHECK(blk[i][k] == (unsigned char)i);
      bt_arena_lalloc(a, blk[i], len[i], 0);
      blk[i] = NULL;
    }
  CHECK(ledger_live == 0 && owned > 0 && foreign > 0);
  bt_arena_free(a);
}

/* ---- under Lua ---------------------------------------------------------------------------- */

static const char *WORK =
    "local t = {}\n"
    "for i = 1, 20000 do t[i] = { i, tostring(i), string.rep('x', i % 2000) } end\n"
    "for i = 1, 20000, 2 do t[i] = nil end\n"
    "local co = coroutine.wrap(function(...) local s = 0 for _, v in ipairs({...}) do s = s + v end"
    " coroutine.yield(s) end)\n"
    "assert(co(1, 2, 3) == 6)\n"
    "collectgarbage()\n"
    "keep = t\n";

/* The executable's way: the state is made on the arena. */
static void test_state_on_arena(void) {
  bt_arena *a = bt_arena_new(back, NULL);
  CHECK(a != NULL);
  lua_State *L = lua_newstate(bt_arena_lalloc, a);
  CHECK(L != NULL);
  luaL_openlibs(L);
  run(L, WORK);
  lua_close(L);
  CHECK(ledger_live == 0);
  bt_arena_free(a);
}

/* The module's way: a state that already holds blocks of its allocator adopts the arena.
 * The old blocks are resized (a table that keeps growing, a string buffer) and freed by the
 * allocator that made them; the arena ends with the state. */
static void test_adopt(void) {
  lua_State *L = lua_newstate(back, NULL);
  CHECK(L != NULL);
  luaL_openlibs(L);
  run(L, "old = {} for i = 1, 300 do old[i] = i end  olds = {} for i = 1, 50 do olds[i] = "
         "string.rep('o', i * 40) end");
  size_t before = ledger_live, reallocs = ledger_reallocs, allocs = ledger_allocs;
  CHECK(bt_arena_adopt(L));
  void *ud = NULL;
  CHECK(lua_getallocf(L, &ud) == bt_arena_lalloc);
  bt_arena *a = ud;
  void *ud_block = lua_newuserdatauv(L, 64, 1);
  CHECK(bt_arena_owns(a, ud_block));
  lua_setglobal(L, "u");
  CHECK(ledger_allocs == allocs);                     /* a small block: the arena's */
  run(L, "for i = 301, 5000 do old[i] = i end");      /* the old array part is resized */
  CHECK(ledger_reallocs > reallocs || ledger_allocs > allocs);
  run(L, "olds = nil collectgarbage()");              /* the old strings go back */
  CHECK(ledger_live < before);
  run(L, WORK);
  run(L, "big = string.rep('b', 100000)");            /* a large block: the backing allocator's */
  CHECK(ledger_allocs > allocs);
  lua_close(L);
  CHECK(ledger_live == 0);
  CHECK(unmapped(ud_block));                          /* the arena ended with the state */
}

/* A reservation of one chunk: the small blocks that do not fit come from the backing
 * allocator and are freed by it. */
static void test_used_up(void) {
  bt_arena *a = bt_arena_new_reserving(back, NULL, (size_t)2 << 20);
  CHECK(a != NULL);
  lua_State *L = lua_newstate(bt_arena_lalloc, a);
  CHECK(L != NULL);
  luaL_openlibs(L);
  size_t allocs = ledger_allocs;
  run(L, WORK);
  CHECK(bt_arena_committed(a) == (size_t)2 << 20);
  CHECK(ledger_allocs - allocs > 20000);              /* small ones too, past the reservation */
  lua_close(L);
  CHECK(ledger_live == 0);
  bt_arena_free(a);
}

int main(void) {
  RUN(test_blocks);
  RUN(test_state_on_arena);
  RUN(test_adopt);
  RUN(test_used_up);
  test_churn((size_t)64 << 30);
  printf("ok - test_churn\n");
  test_churn((size_t)2 << 20);
  printf("ok - test_churn (reservation used up)\n");
  return 0;
}
