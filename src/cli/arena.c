/*
 * arena.c — baton's Lua allocator: size classes for small blocks, bump-allocated from one
 * reserved range of address space; everything else goes to a backing allocator. The `baton`
 * executable creates its state with it; the module (baton.so) adopts it in a state that a
 * stock interpreter made (bt_arena_adopt), so both run task-heavy scripts alike.
 *
 * Why: a million pending tasks are a million small userdata, and a first touch of a fresh
 * page costs microseconds, so a task-heavy script's time is set by bytes and page faults
 * as much as by instructions. Lua passes every block's size on free and realloc, so small
 * blocks need no header (malloc adds 8-16 bytes to each) and a free is a push on a list.
 *
 * Invariants:
 *  - The arena owns exactly the blocks inside [base, limit), its reservation; it tells them
 *    from the backing allocator's by address alone. A block it owns that Lua says is n bytes
 *    (n <= MAX_SMALL) is at least class_of(n) * GRAIN bytes long (exactly that, unless a
 *    shrink found no memory and kept the block in place); a free block's first word links
 *    it into its class's free list.
 *  - Every other block (large ones, small ones when the reservation is used up, and in the
 *    module every block the state held before the arena was adopted) belongs to the backing
 *    allocator and is freed or resized by it, never moved into the arena.
 *  - The reservation is address space only (PROT_NONE); it is made readable and writable
 *    CHUNK by CHUNK as the bump pointer needs, every chunk after the first faulted in at
 *    once (MADV_POPULATE_WRITE). Memory is never returned to the system while the arena
 *    lives; freed blocks are reused by their class.
 *  - Huge pages: none asked for by default (the kernel's THP policy applies as to any
 *    mapping). BATON_HUGEPAGES=1 advises MADV_HUGEPAGE on each chunk, =0 MADV_NOHUGEPAGE.
 *    Measured on a 2-vCPU KVM guest, a huge-page fault cost 0.23 ms to 8 ms (the host
 *    reclaims freed huge pages) against ~1.5 ms for the 512 small faults it replaces, so
 *    asking for them was the main cost of a million-task run; a probe at startup would pay
 *    the same unpredictable fault to learn it.
 *  - Not thread-safe: one arena serves one Lua state.
 *  - Disabled (bt_arena_enabled) under AddressSanitizer, which must see every block, and by
 *    BATON_ALLOC=system.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <lua.h>

#include "arena.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23   /* Linux 5.14 */
#endif

#define GRAIN 8u
#define MAX_SMALL 1024u
#define NCLASS (MAX_SMALL / GRAIN + 1)
#define CHUNK ((size_t)2 << 20)              /* commit step, and alignment of the range */
#define RESERVE_MAX ((size_t)64 << 30)
#define RESERVE_MIN ((size_t)64 << 20)

typedef struct block { struct block *next; } block;

struct bt_arena {
  block *free[NCLASS];
  char *cur, *end;          /* the bump region: committed, not yet handed out */
  char *base, *limit;       /* the reservation */
  char *map;                /* what mmap returned (base is aligned up from it) */
  size_t map_len;
  bt_arena_back back;       /* every block outside [base, limit) */
  void *back_ud;
  const void *last;         /* its free by the backing allocator ends the state */
  int huge;                 /* -1 no huge pages, 0 the kernel's policy, 1 ask for them */
};

int bt_arena_enabled(void) {
#if defined(__SANITIZE_ADDRESS__)
  return 0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return 0;
#endif
#endif
  const char *alloc = getenv("BATON_ALLOC");
  return !(alloc != NULL && strcmp(alloc, "system") == 0);
}

static int owns(const bt_arena *a, const void *p) {
  return (uintptr_t)p - (uintptr_t)a->base < (uintptr_t)(a->limit - a->base);
}

/* Reserves address space: `want`, or less when RLIMIT_AS is set (a quarter of it) or the
 * kernel refuses, halving down to RESERVE_MIN (or `want`, if smaller). Aligned to CHUNK. */
static int reserve(bt_arena *a, size_t want) {
  want &= ~(CHUNK - 1);
  size_t least = want < RESERVE_MIN ? want : RESERVE_MIN;
  struct rlimit rl;
  if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur / 4 < want)
    want = (size_t)(rl.rlim_cur / 4) & ~(CHUNK - 1);
  for (; want >= least && want > 0; want /= 2) {
    size_t len = want + CHUNK;
    char *raw = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) continue;
    a->map = raw;
    a->map_len = len;
    a->base = (char *)(((uintptr_t)raw + CHUNK - 1) & ~(uintptr_t)(CHUNK - 1));
    a->limit = a->base + want;
    a->cur = a->end = a->base;
    return 1;
  }
  return 0;
}

/* One more chunk of the reservation made usable, right after the previous one (so the bump
 * region stays contiguous); 0 when the reservation is used up or the kernel refuses (the
 * caller then falls back to the backing allocator). */
static int grow(bt_arena *a) {
  if ((size_t)(a->limit - a->end) < CHUNK) return 0;
  if (mprotect(a->end, CHUNK, PROT_READ | PROT_WRITE) != 0) return 0;
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
  if (a->huge != 0) madvise(a->end, CHUNK, a->huge > 0 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
  /* Past the first chunk the state is allocating in earnest: fault the next chunk in with
   * one call (8% off a million-task run here) rather than a trap per page. A kernel
   * without MADV_POPULATE_WRITE (before 5.14) refuses, and pages fault in as touched. */
  if (a->end != a->base) madvise(a->end, CHUNK, MADV_POPULATE_WRITE);
  a->end += CHUNK;
  return 1;
}

static size_t class_of(size_t n) { return (n + GRAIN - 1) / GRAIN; }

static void *small_alloc(bt_arena *a, size_t c) {
  block *b = a->free[c];
  if (b != NULL) {
    a->free[c] = b->next;
    return b;
  }
  size_t sz = c * GRAIN;
  if ((size_t)(a->end - a->cur) < sz && !grow(a)) return NULL;
  void *p = a->cur;
  a->cur += sz;
  return p;
}

static void small_free(bt_arena *a, void *p, size_t c) {
  block *b = p;
  b->next = a->free[c];
  a->free[c] = b;
}

/* lua_Alloc: osize is the block's size when ptr is not NULL (Lua guarantees it). */
void *bt_arena_lalloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  bt_arena *a = ud;
  if (ptr != NULL && !owns(a, ptr)) {
    /* The backing allocator's block: it frees and resizes it. */
    void *r = a->back(a->back_ud, ptr, osize, nsize);
    if (nsize == 0 && ptr == a->last) bt_arena_free(a);   /* lua_close's last call */
    return r;
  }
  if (nsize == 0) {
    if (ptr != NULL) small_free(a, ptr, class_of(osize));
    return NULL;
  }
  if (nsize <= MAX_SMALL) {
    size_t nc = class_of(nsize);
    if (ptr != NULL && class_of(osize) == nc) return ptr;
    void *p = small_alloc(a, nc);
    if (p == NULL) {
      if (ptr != NULL && nsize < osize) return ptr;   /* shrink in place: still big enough */
      p = a->back(a->back_ud, NULL, ptr != NULL ? 0 : osize, nsize);
      if (p == NULL) return NULL;
    }
    if (ptr != NULL) {
      memcpy(p, ptr, osize < nsize ? osize : nsize);
      small_free(a, ptr, class_of(osize));
    }
    return p;
  }
  /* Large: the backing allocator's, copied out of the arena if it grew from a small block. */
  void *p = a->back(a->back_ud, NULL, ptr != NULL ? 0 : osize, nsize);
  if (p != NULL && ptr != NULL) {
    memcpy(p, ptr, osize);
    small_free(a, ptr, class_of(osize));
  }
  return p;
}

bt_arena *bt_arena_new(bt_arena_back back, void *back_ud) {
  return bt_arena_new_reserving(back, back_ud, RESERVE_MAX);
}

bt_arena *bt_arena_new_reserving(bt_arena_back back, void *back_ud, size_t reservation) {
  bt_arena *a = calloc(1, sizeof *a);
  if (a == NULL) return NULL;
  if (!reserve(a, reservation)) {
    free(a);
    return NULL;
  }
  a->back = back;
  a->back_ud = back_ud;
  const char *h = getenv("BATON_HUGEPAGES");
  a->huge = h == NULL || h[0] == '\0' ? 0 : strcmp(h, "0") == 0 ? -1 : 1;
  return a;
}

void bt_arena_free(bt_arena *a) {
  if (a == NULL) return;
  munmap(a->map, a->map_len);
  free(a);
}

size_t bt_arena_committed(const bt_arena *a) { return (size_t)(a->end - a->base); }
int bt_arena_owns(const bt_arena *a, const void *p) { return owns(a, p); }

/* ---- adopting the arena in a state someone else made ----------------------------------- */

int bt_arena_adopt(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  bt_arena *a = bt_arena_new(f, ud);
  if (a == NULL) return 0;
  /* lua_close frees the main thread's block last of all, through the allocator in force:
   * that block begins with the main thread's extra space (Lua 5.4's layout: the state is
   * allocated as one block whose first field is the extra space followed by the thread).
   * It came from the previous allocator, so the arena sees it go by, and ends there. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  a->last = lua_getextraspace(lua_tothread(L, -1));
  lua_pop(L, 1);
  lua_setallocf(L, bt_arena_lalloc, a);
  return 1;
}
