/* lpipeline.c — placeholder: baton.pipeline is being written (issue 4). */
#include "lbaton.h"

void lbt_open_pipeline(lua_State *L, int rt_idx) {
  (void)L;
  (void)rt_idx;
}
