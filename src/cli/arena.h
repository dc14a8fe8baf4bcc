/* arena.h — the baton executable's Lua allocator (see arena.c). */
#ifndef BATON_ARENA_H
#define BATON_ARENA_H
#include <stddef.h>

typedef struct bt_arena bt_arena;

bt_arena *bt_arena_new(void);        /* NULL on allocation failure */
void bt_arena_free(bt_arena *a);     /* after lua_close; accepts NULL */
void *bt_arena_lalloc(void *ud, void *ptr, size_t osize, size_t nsize);  /* a lua_Alloc */

#endif
