/*
 * module.c — the entry point of baton.so for a stock Lua 5.4 interpreter:
 * `require "baton"` calls luaopen_baton. Everything else lives in the static binding
 * library shared with the `baton` executable.
 */
#include "lbaton.h"

__attribute__((visibility("default"))) int luaopen_baton(lua_State *L);

int luaopen_baton(lua_State *L) { return lbt_open(L); }
