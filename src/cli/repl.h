/* repl.h — the baton executable's interactive REPL (see repl.c). */
#ifndef BATON_REPL_H
#define BATON_REPL_H

#include <lua.h>

#include "baton_cli.h"

/* Pushes the REPL's main function and its arguments onto L (a state with the baton module
 * open by lbt_cli_open, which gave `cli`), for the main task to call with lua_callk;
 * returns the number of arguments.
 * show_version: the banner starts with `baton -v`'s line (0 when -v already printed it).
 * Raises on allocation failure. */
int bt_repl_push(lua_State *L, lbt_cli *cli, int show_version);

/* Called on SIGINT. Returns 1 if the REPL handled it (cleared the prompt, or aborted the
 * line that runs), 0 if the caller should treat it as for a script. */
int bt_repl_sigint(void);

/* Hides the prompt before something other than Lua's print and io.write writes to the
 * terminal (the warning function); the prompt comes back when the loop next idles. */
void bt_repl_before_output(void);

#endif
