/*
 * main.c — the `baton` executable: a Lua 5.4 interpreter with the baton module preloaded,
 * following the stock `lua` interpreter's habits (options, the `arg` table, LUA_INIT, exit
 * statuses), except that everything it runs runs inside baton.run.
 *
 * How a run goes. The options are parsed into a list of steps, in command-line order:
 * LUA_INIT (unless -E), each -e / -l / -W, then the script (a file, or stdin for `-` or a
 * piped stdin), then the REPL (repl.c) for -i or a terminal with nothing else to run. One
 * C function runs the steps in order as the main task of a single baton.run, calling each
 * chunk with lua_callk so that a chunk may await at top level and a task spawned by -e is
 * still alive while the script (or the REPL) runs. A chunk is loaded only when
 * its turn comes, so an -e before a script with a syntax error has already run, as in lua.
 *
 * Signals and exit statuses. baton.run watches SIGINT, SIGTERM and SIGHUP while it runs
 * (lsignal.c): the first aborts the main task (its <close> handlers run, then every other
 * task, and child processes are released), and once the state is closed the process kills
 * itself with that signal, its default action restored (the shell reports 128 + the signal,
 * and knows the signal ended it: a loop in a script stops on Ctrl-C); a second
 * ends the process at once. While the REPL runs, SIGINT goes to the REPL first (it aborts
 * the line that runs). os.exit is baton.exit here: from a task it ends the run the same way,
 * with the status given. --strict (or BATON_STRICT=1) makes a run that would exit 0 exit 1
 * when a failed task was never joined (each is reported as a warning either way).
 *
 * The bindings. The executable reaches them only through baton_cli.h (lbt_cli_open opens
 * the module its way, lbt_cli_exit_status reads how a run ended, lbt_cli_take_sigint hands
 * SIGINT to the REPL) and the module's Lua API; never lbaton.h or the core's internals.
 *
 * Invariants: one Lua state; the state is closed before exit on every path (os.exit called
 * from a task included), so finalisers run and the runtime closes its loop.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "arena.h"
#include "baton_cli.h"
#include "repl.h"

#define PROGNAME "baton"

enum {
  OPT_EXEC = 1 << 0,     /* -e seen */
  OPT_INTERACT = 1 << 1, /* -i */
  OPT_VERSION = 1 << 2,  /* -v */
  OPT_NOENV = 1 << 3,    /* -E */
  OPT_HELP = 1 << 4,     /* -h, --help */
  OPT_STRICT = 1 << 5    /* --strict, or BATON_STRICT set to anything but "" and "0" */
};

typedef enum { STEP_INIT, STEP_EXEC, STEP_LIB, STEP_WARN, STEP_SCRIPT, STEP_REPL } step_kind;

typedef struct {
  step_kind kind;
  const char *text;  /* borrowed from argv or the environment; NULL: the script is stdin */
} cli_step;

typedef struct cli {
  int argc;
  char **argv;
  int script;        /* argv index of the script ("-" included), 0 when there is none */
  unsigned opts;
  const char *bad;   /* the offending option when parsing failed */
  int bad_missing;   /* 1: it lacks its argument; 0: it is unknown */
  cli_step *steps;   /* argc + 2 slots, owned, freed by main */
  int nsteps, next;  /* steps to run, and the next one */
  lbt_cli *cli;      /* the bindings' handle, owned by the Lua state */
  size_t unjoined;   /* failed tasks reported as never joined (counted by the bindings) */
  int status;        /* the exit status */
  int signum;        /* the signal whose default action ended the run, or 0 */
} cli;

/* ---- options ---------------------------------------------------------------------------- */

static void print_usage(FILE *out) {
  fputs("usage: " PROGNAME " [options] [script [args]]\n"
        "Available options are:\n"
        "  -e stat   execute string 'stat'\n"
        "  -i        enter interactive mode after executing 'script'\n"
        "  -l mod    require library 'mod' into global 'mod'\n"
        "  -l g=mod  require library 'mod' into global 'g'\n"
        "  -v        show version information\n"
        "  -E        ignore environment variables (LUA_INIT, LUA_PATH, LUA_CPATH)\n"
        "  -W        turn warnings on\n"
        "  -h        show this help\n"
        "  --strict  exit 1 if a task failed and nobody joined it (or BATON_STRICT=1)\n"
        "  --        stop handling options\n"
        "  -         stop handling options and execute stdin\n"
        "The -e chunks and the script run in order as the main task of one baton.run, so\n"
        "they may await at top level (baton.sleep, task:join, ...). The baton module is\n"
        "preloaded: require \"baton\", or use the global 'baton'. Without a script on a\n"
        "terminal (or with -i) the REPL follows, in the same main task: the event loop runs\n"
        "while it waits for a line, and each line runs as a task of its own.\n"
        "SIGINT, SIGTERM and SIGHUP abort the main task, run its <close> handlers, release\n"
        "child processes and exit 128 + the signal; os.exit(code) from a task does the same\n"
        "with its code. baton.on_signal(name, fn) replaces a signal's default action.\n",
        out);
}

static void print_version(void) {
  printf(PROGNAME " %s (%s, libuv %s)\n", BATON_VERSION, LUA_RELEASE, uv_version_string());
  fflush(stdout);
}

static int parse_fail(cli *C, const char *opt, int missing) {
  C->bad = opt;
  C->bad_missing = missing;
  return -1;
}

/* Fills C->opts, C->script and the steps for -e, -l and -W. Returns 0, or -1 with C->bad
 * set. Like lua: options end at the first argument that does not start with '-', at "--",
 * or at "-" (stdin as the script). */
static int parse_args(cli *C) {
  int i;
  C->script = 0;
  for (i = 1; i < C->argc; i++) {
    const char *a = C->argv[i];
    if (a[0] != '-') break;             /* the script */
    if (a[1] == '\0') break;            /* "-": stdin is the script */
    if (a[1] == '-') {
      if (strcmp(a, "--help") == 0) {
        C->opts |= OPT_HELP;
        continue;
      }
      if (strcmp(a, "--strict") == 0) {
        C->opts |= OPT_STRICT;
        continue;
      }
      if (a[2] != '\0') return parse_fail(C, a, 0);
      i++;                              /* "--": what follows is the script */
      break;
    }
    if (a[1] == 'e' || a[1] == 'l') {  /* "-e stat" or "-estat" */
      const char *val = a + 2;
      if (*val == '\0') {
        if (i + 1 >= C->argc) return parse_fail(C, a, 1);
        val = C->argv[++i];
      }
      if (a[1] == 'e') C->opts |= OPT_EXEC;
      C->steps[C->nsteps].kind = a[1] == 'e' ? STEP_EXEC : STEP_LIB;
      C->steps[C->nsteps++].text = val;
      continue;
    }
    if (a[2] != '\0') return parse_fail(C, a, 0);
    switch (a[1]) {
    case 'E': C->opts |= OPT_NOENV; break;
    case 'i': C->opts |= OPT_INTERACT; break;
    case 'v': C->opts |= OPT_VERSION; break;
    case 'h': C->opts |= OPT_HELP; break;
    case 'W':  /* in order: a warning from an earlier -e stays off */
      C->steps[C->nsteps].kind = STEP_WARN;
      C->steps[C->nsteps++].text = NULL;
      break;
    default:
      return parse_fail(C, a, 0);
    }
  }
  if (i < C->argc) C->script = i;
  return 0;
}

/* ---- the Lua state -------------------------------------------------------------------- */

static void *system_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

static int on_panic(lua_State *L) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                   : "error object is not a string";
  fprintf(stderr, PROGNAME ": PANIC: unprotected error in call to Lua API (%s)\n", msg);
  return 0;  /* Lua aborts */
}

/* Lua's warning system, as luaL_newstate sets it up: off until "@on" (-W or warn("@on")),
 * messages may come in pieces (tocont), control messages start with '@'. */
typedef struct { int on, cont; } warn_state;

static void on_warning(void *ud, const char *msg, int tocont) {
  warn_state *w = ud;
  if (!w->cont && !tocont && msg[0] == '@') {
    if (strcmp(msg, "@on") == 0) w->on = 1;
    else if (strcmp(msg, "@off") == 0) w->on = 0;
    return;
  }
  if (w->on) {
    bt_repl_before_output();
    if (!w->cont) fputs("Lua warning: ", stderr);
    fputs(msg, stderr);
    if (!tocont) fputc('\n', stderr);
    fflush(stderr);
  }
  w->cont = tocont;
}

/* Where `require "baton.x"` finds the pure-Lua parts (lua/baton/). An installed baton
 * (cmake --install, a LuaRocks tree, a copy of either moved elsewhere) searches the Lua
 * directory beside its own bin/ (`<exe>/../share/lua/5.4`), then the one it was configured
 * to install into; only the executable in its own build tree searches the checkout's lua/,
 * so an installed copy never picks up a checkout's files. The directories go after what
 * LUA_PATH_5_4 / LUA_PATH set (the user's path wins), and ahead of Lua's compiled-in default
 * path when neither is set (so a stale copy in /usr/local does not shadow the install's). */
static void add_dir(lua_State *L, luaL_Buffer *b, const char *dir, int *n) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;", dir);
  int seen = strstr(lua_tostring(L, -2), lua_tostring(L, -1)) != NULL;
  lua_pop(L, 3);
  if (seen) return;
  lua_pushfstring(L, "%s%s/?.lua;%s/?/init.lua", *n > 0 ? ";" : "", dir, dir);
  luaL_addvalue(b);
  (*n)++;
}

static void set_path(lua_State *L, int noenv) {
  char exe[4096], dir[4200];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  exe[len > 0 ? len : 0] = '\0';
  char *slash = strrchr(exe, '/');
  if (slash != NULL) *slash = '\0';
  int n = 0;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  char build[4096];
  if (len > 0 && realpath(BATON_BUILD_DIR, build) != NULL && strcmp(exe, build) == 0) {
    add_dir(L, &b, BATON_SRC_LUA_DIR, &n);
  } else {
    if (len > 0) {
      size_t el = strlen(exe);
      if (el >= 4 && strcmp(exe + el - 4, "/bin") == 0) exe[el - 4] = '\0';  /* <prefix>/bin */
      else if (el + 4 < sizeof exe) strcat(exe, "/..");
      snprintf(dir, sizeof dir, "%s/share/lua/5.4", exe);
      add_dir(L, &b, dir, &n);
    }
    add_dir(L, &b, BATON_LUA_DIR, &n);
  }
  luaL_pushresult(&b);
  if (n == 0) {
    lua_pop(L, 1);
    return;
  }
  int from_env = !noenv && (getenv("LUA_PATH_5_4") != NULL || getenv("LUA_PATH") != NULL);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  if (from_env)
    lua_pushfstring(L, "%s;%s", lua_tostring(L, -1), lua_tostring(L, -3));
  else
    lua_pushfstring(L, "%s;%s", lua_tostring(L, -3), lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 3);
}

/* arg[0] is the script, its arguments are 1..n, the interpreter and the options are at
 * negative indices. Without a script, argv lands at 0..argc-1, as in lua. */
static void set_arg_table(lua_State *L, const cli *C) {
  lua_createtable(L, C->argc - C->script - 1 > 0 ? C->argc - C->script - 1 : 0,
                  C->script + 1);
  for (int i = 0; i < C->argc; i++) {
    lua_pushstring(L, C->argv[i]);
    lua_rawseti(L, -2, (lua_Integer)i - C->script);
  }
  lua_setglobal(L, "arg");
}

/* LUA_INIT_5_4, else LUA_INIT: "@file" runs a file, anything else is a chunk. */
static void add_init_step(cli *C) {
  const char *init = getenv("LUA_INIT" LUA_VERSUFFIX);
  if (init == NULL) init = getenv("LUA_INIT");
  if (init == NULL) return;
  memmove(C->steps + 1, C->steps, (size_t)C->nsteps * sizeof *C->steps);
  C->steps[0].kind = STEP_INIT;
  C->steps[0].text = init;
  C->nsteps++;
}

/* Replaces the error value at the top with a printable message and returns it: a string
 * as is (a task's string error already carries its traceback), else its __tostring, else
 * its type; a table error from a task has its traceback in field `traceback`. May raise
 * (in a __tostring). */
static const char *error_text(lua_State *L) {
  int err = lua_gettop(L);
  int t = lua_type(L, err);
  if (t == LUA_TSTRING || t == LUA_TNUMBER) return lua_tostring(L, err);
  if (!luaL_callmeta(L, err, "__tostring") || lua_type(L, -1) != LUA_TSTRING) {
    lua_settop(L, err);
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, err));
  }
  if (t == LUA_TTABLE) {
    lua_pushliteral(L, "traceback");
    if (lua_rawget(L, err) == LUA_TSTRING) {
      lua_pushliteral(L, "\n");
      lua_insert(L, -2);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_replace(L, err);
  return lua_tostring(L, err);
}

static void report(const char *msg) {
  fprintf(stderr, PROGNAME ": %s\n", msg);
  fflush(stderr);
}

/* ---- the main task ---------------------------------------------------------------------- */

static int lib_step(lua_State *L) {  /* (global name, module name) */
  lua_getglobal(L, "require");
  lua_pushvalue(L, 2);
  lua_call(L, 1, 1);
  lua_setglobal(L, lua_tostring(L, 1));
  return 0;
}

static int warn_step(lua_State *L) {
  lua_warning(L, "@on", 0);
  return 0;
}

/* Pushes the step's function and arguments; returns how many arguments, or -1 with the
 * load error message pushed. */
static int push_step(lua_State *L, const cli *C, const cli_step *s) {
  int rc = LUA_OK;
  switch (s->kind) {
  case STEP_INIT:
    if (s->text[0] == '@') rc = luaL_loadfile(L, s->text + 1);
    else rc = luaL_loadbuffer(L, s->text, strlen(s->text), "=LUA_INIT");
    break;
  case STEP_EXEC:
    rc = luaL_loadbuffer(L, s->text, strlen(s->text), "=(command line)");
    break;
  case STEP_LIB: {
    /* "g=mod" requires mod into global g; otherwise the global is the name up to a '-'
     * (lua's LUA_IGMARK: -l mod-v2 sets global mod). */
    const char *eq = strchr(s->text, '=');
    lua_pushcfunction(L, lib_step);
    if (eq != NULL) {
      lua_pushlstring(L, s->text, (size_t)(eq - s->text));
      lua_pushstring(L, eq + 1);
    } else {
      const char *mark = strchr(s->text, '-');
      lua_pushlstring(L, s->text, mark ? (size_t)(mark - s->text) : strlen(s->text));
      lua_pushstring(L, s->text);
    }
    return 2;
  }
  case STEP_WARN:
    lua_pushcfunction(L, warn_step);
    return 0;
  case STEP_REPL:
    lbt_cli_take_sigint(C->cli, bt_repl_sigint);  /* SIGINT goes to the REPL first now */
    return bt_repl_push(L, C->cli, !(C->opts & OPT_VERSION));
  case STEP_SCRIPT: {
    rc = luaL_loadfile(L, s->text);
    if (rc != LUA_OK) break;
    if (s->text == NULL && C->script == 0) return 0;  /* piped stdin: no arguments */
    if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
    int n = (int)luaL_len(L, -1);
    luaL_checkstack(L, n + 3, "too many arguments to script");
    for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
    lua_remove(L, -n - 1);
    return n;
  }
  }
  return rc == LUA_OK ? 0 : -1;
}

/* The main task: runs the steps in order. Returns nothing, or a load error message (not
 * raised, so that it is reported without a traceback, as lua does). */
static int run_steps_k(lua_State *L, int status, lua_KContext ctx) {
  cli *C = (cli *)ctx;
  (void)status;
  while (C->next < C->nsteps) {
    lua_settop(L, 0);
    int n = push_step(L, C, &C->steps[C->next++]);
    if (n < 0) return 1;
    lua_callk(L, n, 0, ctx, run_steps_k);
  }
  return 0;
}

static int run_steps(lua_State *L) {
  cli *C = lua_touserdata(L, lua_upvalueindex(1));
  return run_steps_k(L, LUA_OK, (lua_KContext)C);
}

/* What the executable reports for a run a signal ended. */
static const char *signal_text(int signum) {
  switch (signum) {
  case SIGINT: return "interrupted";
  case SIGTERM: return "terminated by SIGTERM";
  case SIGHUP: return "terminated by SIGHUP";
  default: return "terminated by a signal";
  }
}

/* Runs the steps as the main task of baton.run (the module table at index mod) and sets
 * C->status. */
static void run_main(lua_State *L, cli *C, int mod) {
  int base = lua_gettop(L);
  lua_getfield(L, mod, "run");
  lua_pushlightuserdata(L, C);
  lua_pushcclosure(L, run_steps, 1);
  int rc = lua_pcall(L, 1, LUA_MULTRET, 0);
  lbt_cli_take_sigint(C->cli, NULL);
  int signum, exit_status = lbt_cli_exit_status(C->cli, &signum);
  if (exit_status >= 0) {  /* a signal's default action, or baton.exit (os.exit) */
    if (signum != 0) report(signal_text(signum));
    C->status = exit_status;
    C->signum = signum;
  } else if (rc != LUA_OK || lua_gettop(L) > base) {
    report(error_text(L));  /* a runtime error, or a chunk that did not load */
    C->status = EXIT_FAILURE;
  }
  lua_settop(L, base);
}

/* Everything that touches Lua, under lua_pcall. */
static int pmain(lua_State *L) {
  cli *C = lua_touserdata(L, 1);
  luaL_checkversion(L);
  if (C->opts & OPT_NOENV) {  /* the package library reads this */
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  luaL_openlibs(L);
  C->cli = lbt_cli_open(L, &C->unjoined);  /* package.loaded.baton and global baton */
  int mod = lua_gettop(L);
  /* os.exit from a task leaves as a signal does: closers run, children released */
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_getfield(L, mod, "exit");
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);
  set_path(L, C->opts & OPT_NOENV);
  set_arg_table(L, C);
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);

  if (C->opts & OPT_VERSION) print_version();
  if (!(C->opts & OPT_NOENV)) add_init_step(C);
  int plain = !(C->opts & (OPT_EXEC | OPT_VERSION | OPT_INTERACT));
  int repl = (C->opts & OPT_INTERACT) || (C->script == 0 && plain && isatty(STDIN_FILENO));
  if (C->script > 0) {
    const char *name = C->argv[C->script];
    int is_stdin = strcmp(name, "-") == 0 && strcmp(C->argv[C->script - 1], "--") != 0;
    C->steps[C->nsteps].kind = STEP_SCRIPT;
    C->steps[C->nsteps++].text = is_stdin ? NULL : name;
  } else if (plain && !repl) {  /* `baton < file`: stdin is the script */
    C->steps[C->nsteps].kind = STEP_SCRIPT;
    C->steps[C->nsteps++].text = NULL;
  }
  if (repl) {  /* last, in the same main task: what the script spawned is still running */
    C->steps[C->nsteps].kind = STEP_REPL;
    C->steps[C->nsteps++].text = NULL;
  }
  if (C->nsteps > 0) run_main(L, C, mod);
  return 0;
}

int main(int argc, char **argv) {
  static char *no_argv[] = {PROGNAME, NULL};
  if (argc < 1 || argv[0] == NULL) {
    argc = 1;
    argv = no_argv;
  }
  cli C;
  memset(&C, 0, sizeof C);
  C.argc = argc;
  C.argv = argv;
  C.steps = calloc((size_t)argc + 2, sizeof *C.steps);
  if (C.steps == NULL) {
    report("not enough memory");
    return EXIT_FAILURE;
  }
  if (parse_args(&C) != 0) {
    if (C.bad_missing) fprintf(stderr, PROGNAME ": '%s' needs an argument\n", C.bad);
    else fprintf(stderr, PROGNAME ": unrecognized option '%s'\n", C.bad);
    print_usage(stderr);
    free(C.steps);
    return EXIT_FAILURE;
  }
  if (C.opts & OPT_HELP) {
    print_usage(stdout);
    free(C.steps);
    return EXIT_SUCCESS;
  }

  /* The arena allocator, unless ASan must see every block or BATON_ALLOC=system. */
  bt_arena *arena = bt_arena_enabled() ? bt_arena_new(system_alloc, NULL) : NULL;
  warn_state warn = {0, 0};
  lua_State *L = arena ? lua_newstate(bt_arena_lalloc, arena)
                       : lua_newstate(system_alloc, NULL);
  if (L == NULL) {
    report("cannot create the Lua state: not enough memory");
    bt_arena_free(arena);
    free(C.steps);
    return EXIT_FAILURE;
  }
  lua_atpanic(L, on_panic);
  lua_setwarnf(L, on_warning, &warn);
  lua_gc(L, LUA_GCSTOP);  /* no collections while the libraries load */

  lua_pushcfunction(L, pmain);
  lua_pushlightuserdata(L, &C);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    report(msg ? msg : "(error object is not a string)");
    C.status = EXIT_FAILURE;
  }
  lua_close(L);  /* failed tasks never joined are reported by now */
  const char *strict = getenv("BATON_STRICT");
  if (strict != NULL && strict[0] != '\0' && strcmp(strict, "0") != 0) C.opts |= OPT_STRICT;
  if ((C.opts & OPT_STRICT) && C.unjoined > 0 && C.status == EXIT_SUCCESS) {
    fprintf(stderr, PROGNAME ": --strict: %zu failed task%s never joined\n", C.unjoined,
            C.unjoined == 1 ? " was" : "s were");
    C.status = EXIT_FAILURE;
  }
  bt_arena_free(arena);
  free(C.steps);
  if (C.signum != 0) {
    /* Ended by a signal: die of it once everything is cleaned up, so that the parent sees
     * a process the signal killed (a shell loop stops on Ctrl-C), not a plain exit. */
    fflush(NULL);
    signal(C.signum, SIG_DFL);
    raise(C.signum);
  }
  return C.status;
}
