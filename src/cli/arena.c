/*
 * arena.c — the `baton` executable's Lua allocator: size classes for small blocks, carved
 * from 2 MiB huge-page arenas; larger blocks go to malloc.
 *
 * Why: a million pending tasks are a million small userdata, and on the machines baton
 * runs on a first touch of a fresh 4 KiB page costs microseconds, so a task-heavy script's
 * time is set by bytes and page faults, not by instructions. Lua passes every block's size
 * on free and realloc, so small blocks need no header (malloc adds 8-16 bytes to each), and
 * arenas advised MADV_HUGEPAGE fault in 2 MiB at a time.
 *
 * Invariants: a block of n <= MAX_SMALL bytes lives in class (n + 7) / 8 and is exactly
 * that class's size; a free block's first word links it into its class's free list.
 * Arenas are never returned to the system (freed blocks are reused by the same class);
 * large blocks are malloc'd and freed normally. Not thread-safe: one Lua state.
 * Disabled under AddressSanitizer (it must see every block) and by BATON_ALLOC=system.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "arena.h"

#define GRAIN 8u
#define MAX_SMALL 1024u
#define NCLASS (MAX_SMALL / GRAIN + 1)
#define ARENA_SIZE ((size_t)2 << 20)

typedef struct block { struct block *next; } block;

struct bt_arena {
  block *free[NCLASS];
  char *cur, *end;          /* bump region of the newest arena */
  void **arenas;            /* every arena, to unmap at the end */
  size_t narenas, cap;
};

static int grow(bt_arena *a) {
  if (a->narenas == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 16;
    void **v = realloc(a->arenas, cap * sizeof *v);
    if (v == NULL) return 0;
    a->arenas = v;
    a->cap = cap;
  }
  /* Over-map by one arena to align to 2 MiB, so the kernel can back it with huge pages. */
  char *raw = mmap(NULL, 2 * ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  if (raw == MAP_FAILED) return 0;
  uintptr_t base = ((uintptr_t)raw + ARENA_SIZE - 1) & ~(uintptr_t)(ARENA_SIZE - 1);
  size_t head = base - (uintptr_t)raw;
  if (head) munmap(raw, head);
  munmap((char *)base + ARENA_SIZE, ARENA_SIZE - head);
#ifdef MADV_HUGEPAGE
  madvise((void *)base, ARENA_SIZE, MADV_HUGEPAGE);
#endif
  a->arenas[a->narenas++] = (void *)base;
  a->cur = (char *)base;
  a->end = (char *)base + ARENA_SIZE;
  return 1;
}

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

static size_t class_of(size_t n) { return (n + GRAIN - 1) / GRAIN; }

/* lua_Alloc: osize is the block's size when ptr is not NULL (Lua guarantees it). */
void *bt_arena_lalloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  bt_arena *a = ud;
  int old_small = ptr != NULL && osize <= MAX_SMALL;
  if (nsize == 0) {
    if (ptr == NULL) return NULL;
    if (old_small) small_free(a, ptr, class_of(osize));
    else free(ptr);
    return NULL;
  }
  if (nsize <= MAX_SMALL) {
    size_t nc = class_of(nsize);
    if (old_small && class_of(osize) == nc) return ptr;
    void *p = small_alloc(a, nc);
    if (p == NULL) return NULL;
    if (ptr != NULL) {
      memcpy(p, ptr, osize < nsize ? osize : nsize);
      if (old_small) small_free(a, ptr, class_of(osize));
      else free(ptr);
    }
    return p;
  }
  if (ptr == NULL || !old_small) return realloc(ptr, nsize);
  void *p = malloc(nsize);
  if (p == NULL) return NULL;
  memcpy(p, ptr, osize);
  small_free(a, ptr, class_of(osize));
  return p;
}

bt_arena *bt_arena_new(void) { return calloc(1, sizeof(bt_arena)); }

void bt_arena_free(bt_arena *a) {
  if (a == NULL) return;
  for (size_t i = 0; i < a->narenas; i++) munmap(a->arenas[i], ARENA_SIZE);
  free(a->arenas);
  free(a);
}
