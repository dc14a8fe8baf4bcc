/* lengine.c — placeholder: baton.engine is being written (issue 3). */
#include "lbaton.h"

void lbt_open_engine(lua_State *L, int rt_idx) {
  (void)L;
  (void)rt_idx;
}
