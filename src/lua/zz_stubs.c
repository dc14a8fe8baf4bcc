/* temporary weak stubs while the json/process bindings are written */
#include "lbaton.h"
__attribute__((weak)) void lbt_open_json(lua_State *L, int rt_idx) { (void)L; (void)rt_idx; }
__attribute__((weak)) void lbt_open_proc(lua_State *L, int rt_idx) { (void)L; (void)rt_idx; }
