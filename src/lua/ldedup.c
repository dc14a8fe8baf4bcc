/* ldedup.c — placeholder: baton.dedup is being written (issue 4). */
#include "lbaton.h"

void lbt_open_dedup(lua_State *L, int rt_idx) {
  (void)L;
  (void)rt_idx;
}
