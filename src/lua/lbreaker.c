/* lbreaker.c — placeholder: baton.breaker is being written (issue 4). */
#include "lbaton.h"

void lbt_open_breaker(lua_State *L, int rt_idx) {
  (void)L;
  (void)rt_idx;
}
