/* lbackpressure.c — placeholder: baton.backpressure is being written (issue 4). */
#include "lbaton.h"

void lbt_open_backpressure(lua_State *L, int rt_idx) {
  (void)L;
  (void)rt_idx;
}
