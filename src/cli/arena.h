/* arena.h — baton's Lua allocator (see arena.c), used by the executable for its state and
 * adopted by the module in a state a stock interpreter made. */
#ifndef BATON_ARENA_H
#define BATON_ARENA_H
#include <stddef.h>

#include <lua.h>

typedef struct bt_arena bt_arena;
/* A lua_Alloc: every block the arena does not own goes to it. */
typedef void *(*bt_arena_back)(void *ud, void *ptr, size_t osize, size_t nsize);

/* 0 under AddressSanitizer or when BATON_ALLOC=system: use the system allocator. */
int bt_arena_enabled(void);
/* An arena whose large blocks (and small ones past its reservation) come from back(ud, ...).
 * NULL when no memory or address space could be had. */
bt_arena *bt_arena_new(bt_arena_back back, void *back_ud);
/* The same with a reservation of at most `reservation` bytes (a multiple of 2 MiB; the
 * default is 64 GiB of address space), for the tests of what happens when it is used up. */
bt_arena *bt_arena_new_reserving(bt_arena_back back, void *back_ud, size_t reservation);
/* Unmaps everything the arena owns; after lua_close of the state using it. Accepts NULL. */
void bt_arena_free(bt_arena *a);
/* A lua_Alloc whose ud is the arena. */
void *bt_arena_lalloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* Bytes of the reservation made usable so far; whether p is a block the arena owns. */
size_t bt_arena_committed(const bt_arena *a);
int bt_arena_owns(const bt_arena *a, const void *p);
/* Makes L's allocator an arena backed by L's current allocator, which keeps every block it
 * handed out before (freed and resized by it, as Lua asks). The arena frees itself when
 * lua_close frees the state's own block, its last call. Returns 0 (nothing changed) when
 * no arena could be made. Not for a state whose allocator is already an arena. */
int bt_arena_adopt(lua_State *L);

#endif
