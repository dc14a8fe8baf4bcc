/* llimiter.c — placeholder: baton.limiter is being written (issue 3). */
#include "lbaton.h"

void lbt_open_limiter(lua_State *L, int rt_idx) {
  (void)L;
  (void)rt_idx;
}
