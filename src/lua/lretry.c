/* lretry.c — placeholder: baton.retry is being written (issue 4). */
#include "lbaton.h"

void lbt_open_retry(lua_State *L, int rt_idx) {
  (void)L;
  (void)rt_idx;
}
