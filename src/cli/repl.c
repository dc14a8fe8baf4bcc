/*
 * repl.c — the interactive REPL of the baton executable: the last step of the main task,
 * so the event loop runs while the prompt waits and tasks spawned at the prompt keep running.
 *
 * How it runs. The loop itself is Lua (repl_lua below), running in the main task. It awaits
 * `read` for each line; a complete chunk runs as a foreground task (a child in baton.spawn's
 * group) that the main task awaits with `run`, so a line may await (baton.sleep) and Ctrl-C
 * aborts just that task. Between lines the main task waits and the loop keeps running.
 *
 * Input. On a terminal, GNU readline's callback interface is fed by a uv_poll_t on stdin:
 * the handler is installed (the prompt shown) only while the main task waits in `read`, and
 * removed as soon as a line is accepted, so a running line sees the terminal in its normal
 * mode and Ctrl-C there raises SIGINT. readline never handles signals (rl_catch_signals = 0):
 * SIGINT reaches bt_repl_sigint() through baton.run's libuv watcher (lbt_cli_take_sigint,
 * set by main.c; and, when Lua code holds the loop, a signal handler of ours hooks that
 * code; see SIGINT below), SIGWINCH a watcher of our own. Not on a terminal, lines are read
 * plainly (polled when stdin is a pipe, read at once when it is a file) and nothing but
 * results and errors is printed.
 *
 * Output above the prompt. While the prompt is shown, Lua's print, io.write and writes to
 * io.stdout/io.stderr first clear the prompt's lines (bt_repl_before_output); a prepare
 * handle draws the prompt and the typed line again before the loop next blocks (or after
 * 50 ms of continuous output), so background output never mixes with the line being typed.
 *
 * Tasks. The REPL sees the bindings only through baton_cli.h: `read` waits with
 * lbt_cli_await (woken by lbt_cli_wake when a line is in), `run` is lbt_cli_foreground, and
 * Ctrl-C goes to lbt_cli_interrupt.
 *
 * Invariants: one REPL per process (readline is process-global), so its state is static.
 * `prompt_on` iff readline's handler is installed; `hidden` only while prompt_on; input is
 * watched only while the main task waits in `read` (reader_end stops it however the wait
 * ends). Handles are started in `start` and closed in `stop` (the to-be-closed guard of the
 * Lua loop), so they are closed on every way out of the loop, errors included.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <lauxlib.h>
#include <lualib.h>

#include "repl.h"

#define HISTORY_MAX 1000
#define REDRAW_MS 50         /* longest a busy loop keeps the prompt hidden */
#define STUCK_NS 100000000u  /* the loop has not turned for this long: Lua code holds it */

enum { GOT_NONE, GOT_LINE, GOT_EOF, GOT_INTERRUPT };

typedef struct repl {
  lbt_cli *cli;            /* the bindings' handle (baton_cli.h) */
  lua_State *main;         /* the state's main thread: completion runs Lua on it */
  uv_loop_t *loop;
  int active;              /* between start and stop */
  int tty;                 /* stdin is a terminal: readline, prompts, banner */
  int show_version;
  int at_exit;             /* the atexit handler is registered */
  /* input */
  uv_poll_t poll;          /* stdin; initialised iff poll_ok */
  int poll_ok, polling;
  int in_flags;            /* stdin's file status flags before, put back by stop; or -1 */
  int got;                 /* GOT_*: what the terminal delivered for `read` */
  char *line;              /* owned: the accepted line (from readline's malloc) */
  char *buf;               /* owned: plain input not yet returned */
  size_t len, cap;
  int eof;
  /* the prompt */
  int prompt_on, hidden, at_bol;
  uint64_t hidden_at;
  uv_prepare_t prepare;    /* redraws the prompt, notes the loop turns; see start */
  uint64_t last_tick;      /* when the loop last turned (monotonic ns) */
  uv_signal_t winch;
  char *histfile;          /* owned; NULL: no history file */
} repl;

static repl S;

/* ---- the prompt ----------------------------------------------------------------------- */

static void redraw(void) {
  if (!S.hidden) return;
  S.hidden = 0;
  if (!S.at_bol) fputc('\n', rl_outstream);
  rl_forced_update_display();
  fflush(rl_outstream);
}

void bt_repl_before_output(void) {
  if (!S.prompt_on || S.hidden) return;
  fflush(stdout);
  rl_clear_visible_line();  /* the cursor ends at column 0 of the prompt's first row */
  fflush(rl_outstream);
  S.hidden = 1;
  S.at_bol = 1;
  S.hidden_at = uv_now(S.loop);
}

/* Notes where the cursor is after a write of s (when the prompt is hidden). */
static void wrote(const char *s, size_t n) {
  if (S.hidden && n > 0) S.at_bol = s[n - 1] == '\n';
}

static uint64_t mono_ns(void) {  /* async-signal-safe */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_prepare(uv_prepare_t *h) {
  (void)h;
  S.last_tick = mono_ns();
  if (!S.hidden) return;
  if (uv_backend_timeout(S.loop) == 0 && uv_now(S.loop) - S.hidden_at < REDRAW_MS) return;
  redraw();
}

static void on_winch(uv_signal_t *h, int signum) {
  (void)h;
  (void)signum;
  if (!S.prompt_on) {
    rl_reset_screen_size();  /* for the next prompt */
    return;
  }
  redraw();
  rl_resize_terminal();
}

/* Removes readline's handler (the terminal goes back to its normal mode) and stops reading
 * stdin. Idempotent. */
static void stop_input(void) {
  if (S.prompt_on) {
    S.prompt_on = 0;
    S.hidden = 0;
    rl_callback_handler_remove();
  }
  if (S.polling) {
    S.polling = 0;
    uv_poll_stop(&S.poll);
  }
}

/* Wakes the main task waiting in `read`. */
static void deliver(void) { lbt_cli_wake(S.cli, 0); /* runs reader_end */ }

static void on_line(char *line) {  /* readline: a line accepted, or NULL at end of input */
  /* At the end of input, leave the shell a clean line: readline ends it itself when it
   * had bracketed paste on (it writes "\n" after turning it off). */
  const char *paste = rl_variable_value("enable-bracketed-paste");
  int newline = line == NULL && !(paste != NULL && strcmp(paste, "on") == 0);
  stop_input();
  free(S.line);
  S.line = line;
  S.got = line != NULL ? GOT_LINE : GOT_EOF;
  if (newline) fputc('\n', rl_outstream);
  fflush(rl_outstream);
  deliver();
}

/* ---- plain input (not a terminal) ------------------------------------------------------- */

/* Reads what stdin has into S.buf. Returns 0, or -1 when a read would block. */
static int plain_fill(void) {
  if (S.cap - S.len < 4096) {
    size_t cap = S.cap ? S.cap * 2 : 8192;
    char *b = realloc(S.buf, cap);
    if (b == NULL) {
      S.eof = 1;  /* out of memory: end the input rather than spin */
      return 0;
    }
    S.buf = b;
    S.cap = cap;
  }
  for (;;) {
    ssize_t n = read(STDIN_FILENO, S.buf + S.len, S.cap - S.len);
    if (n > 0) S.len += (size_t)n;
    else if (n == 0) S.eof = 1;
    else if (errno == EINTR) continue;
    else if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    else S.eof = 1;
    return 0;
  }
}

/* Pushes the next line (without its end of line), nil at the end of input, and returns 1;
 * returns 0 when the caller must wait for stdin. */
static int plain_take(lua_State *L) {
  for (;;) {
    char *nl = S.len > 0 ? memchr(S.buf, '\n', S.len) : NULL;
    if (nl != NULL || (S.eof && S.len > 0)) {
      size_t n = nl != NULL ? (size_t)(nl - S.buf) : S.len;
      size_t m = n > 0 && S.buf[n - 1] == '\r' ? n - 1 : n;
      lua_pushlstring(L, S.buf, m);
      size_t used = nl != NULL ? n + 1 : n;
      memmove(S.buf, S.buf + used, S.len - used);
      S.len -= used;
      return 1;
    }
    if (S.eof) {
      lua_pushnil(L);
      return 1;
    }
    if (S.poll_ok) return 0;
    plain_fill();  /* a file: reading does not wait for anyone */
  }
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)h;
  (void)events;
  if (S.tty) {
    redraw();
    if (status < 0) {
      on_line(NULL);
      return;
    }
    rl_callback_read_char();
    return;
  }
  if (status < 0) S.eof = 1;
  else if (plain_fill() < 0) return;
  if (S.eof || memchr(S.buf, '\n', S.len) != NULL) {
    stop_input();
    deliver();
  }
}

/* ---- `read`: the main task awaits a line ---------------------------------------------- */

static void reader_end(void *ud) {  /* the wait ended: delivered, or the task aborted */
  (void)ud;
  if (S.prompt_on && !S.hidden) {  /* aborted (a signal, os.exit) with a line being typed: */
    S.prompt_on = 0;               /* what follows starts on a line of its own */
    rl_callback_handler_remove();
    fputs("\r\n", rl_outstream);
    fflush(rl_outstream);
  }
  stop_input();
}

static int lread_k(lua_State *L, int st, lua_KContext ctx) {
  (void)st;
  (void)ctx;
  lbt_cli_resumed(L, S.cli);  /* raises if the main task was aborted */
  if (!S.tty) {
    if (plain_take(L)) return 1;
    lua_pushnil(L);  /* woken without a line: only at the end of input */
    return 1;
  }
  int got = S.got;
  S.got = GOT_NONE;
  switch (got) {
  case GOT_LINE:
    lua_pushstring(L, S.line);
    free(S.line);
    S.line = NULL;
    return 1;
  case GOT_INTERRUPT:
    lua_pushboolean(L, 0);
    return 1;
  default:
    lua_pushnil(L);
    return 1;
  }
}

/* read(prompt) -> the next line | false (Ctrl-C at the prompt) | nil (end of input).
 * Awaits; raises the cancellation error if the main task is aborted meanwhile. */
static int lread(lua_State *L) {
  const char *prompt = luaL_checkstring(L, 1);
  if (!S.active) return luaL_error(L, "repl: not started");
  if (!S.tty && plain_take(L)) return 1;
  S.got = GOT_NONE;
  if (S.tty) {
    rl_callback_handler_install(prompt, on_line);
    S.prompt_on = 1;
    S.hidden = 0;
    fflush(rl_outstream);
  }
  if (S.poll_ok && !S.polling && uv_poll_start(&S.poll, UV_READABLE, on_readable) == 0)
    S.polling = 1;
  if (!S.polling) {  /* cannot watch stdin: nothing could ever deliver a line */
    stop_input();
    lua_pushnil(L);
    return 1;
  }
  return lbt_cli_await(L, S.cli, "repl.read", reader_end, NULL, lread_k);
}

/* ---- `run`: the main task runs a chunk as the foreground task and awaits it ------------- */

/* run(fn) -> true, results... | false, error | nil, task (left running by a second Ctrl-C).
 * An error string carries its traceback; a Ctrl-C abort gives the error "interrupted". */
static int lrun(lua_State *L) { return lbt_cli_foreground(L, S.cli, "repl.run"); }

/* ---- SIGINT --------------------------------------------------------------------------- */

/* Lua code that never yields (`while true do end`) holds the loop, so the libuv watcher that
 * calls bt_repl_sigint never runs. Like lua.c, a signal handler of our own then has the
 * task that runs aborted from a hook on its coroutine (lbt_cli_interrupt_running); it is
 * installed over libuv's handler while the REPL runs, and passes every signal on to it.
 * `sig_taken` tells bt_repl_sigint that the handler already acted on the signal it is
 * called for. */
static struct sigaction libuv_sigint;
static int sigint_installed;
static volatile sig_atomic_t sig_taken;

/* A signal handler: touches only what lua_sethook and plain loads allow. S.last_tick is
 * an aligned 64-bit word written by this thread only, so it is never seen torn. */
static void on_sigint_signal(int signum, siginfo_t *info, void *uctx) {
  int saved = errno;
  if (S.active && S.cli != NULL && mono_ns() - S.last_tick > STUCK_NS &&
      lbt_cli_interrupt_running(S.cli)) {
    sig_taken = 1;
    if (S.tty && !S.prompt_on && write(STDOUT_FILENO, "\n", 1) < 0) {
      /* after the ^C the terminal echoed; nothing to do if it cannot be written */
    }
  }
  if (libuv_sigint.sa_flags & SA_SIGINFO) libuv_sigint.sa_sigaction(signum, info, uctx);
  else libuv_sigint.sa_handler(signum);
  errno = saved;
}

static void install_sigint(void) {
  struct sigaction sa;
  if (sigaction(SIGINT, NULL, &libuv_sigint) != 0) return;
  if (!(libuv_sigint.sa_flags & SA_SIGINFO) &&
      (libuv_sigint.sa_handler == SIG_DFL || libuv_sigint.sa_handler == SIG_IGN))
    return;  /* no watcher to pass signals to: leave SIGINT as it is */
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigint_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&sa.sa_mask);
  sigint_installed = sigaction(SIGINT, &sa, NULL) == 0;
}

static void uninstall_sigint(void) {
  if (sigint_installed) sigaction(SIGINT, &libuv_sigint, NULL);
  sigint_installed = 0;
  sig_taken = 0;
}

/* Ctrl-C for the foreground task (lbt_cli_interrupt): the first aborts it (its <close>
 * handlers run; the prompt comes back when it ends), the next stops waiting for it and
 * leaves it to finish. */
int bt_repl_sigint(void) {
  if (!S.active) return 0;
  if (sig_taken) {  /* the handler interrupted code that held the loop */
    sig_taken = 0;
    lbt_cli_interrupt(S.cli, 0);  /* the foreground too, if that code was not its own */
    return 1;
  }
  if (S.prompt_on) {  /* drop the line (and any unfinished chunk) for a fresh prompt */
    redraw();
    rl_free_line_state();
    rl_callback_sigcleanup();
    rl_point = rl_end;
    rl_redisplay();
    fputs("^C\n", rl_outstream);
    stop_input();
    using_history();  /* recall starts again from the newest entry */
    S.got = GOT_INTERRUPT;
    deliver();
    return 1;
  }
  int done = lbt_cli_interrupt(S.cli, 1);
  if (done == LBT_CLI_ABORTED && S.tty) {
    fputc('\n', stdout);  /* after the ^C the terminal echoed */
    fflush(stdout);
  }
  if (done != LBT_CLI_NO_TASK) return 1;
  return S.tty;  /* between lines on a terminal: nothing to abort */
}

/* ---- output while the prompt is shown --------------------------------------------------- */

static int is_std_stream(lua_State *L, int idx) {
  luaL_Stream *p = luaL_testudata(L, idx, LUA_FILEHANDLE);
  return p != NULL && p->closef != NULL && (p->f == stdout || p->f == stderr);
}

/* Notes the last piece written among the arguments from `first` on. */
static void note_written(lua_State *L, int first) {
  for (int i = lua_gettop(L); i >= first; i--) {
    size_t n;
    if (lua_type(L, i) == LUA_TSTRING || lua_type(L, i) == LUA_TNUMBER) {
      const char *s = lua_tolstring(L, i, &n);
      if (n == 0) continue;
      wrote(s, n);
      return;
    }
  }
}

/* Calls upvalue 1 (the original function) with this call's arguments; returns its results. */
static int call_original(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

static int lprint(lua_State *L) {
  bt_repl_before_output();
  call_original(L);
  if (S.hidden) S.at_bol = 1;
  return 0;
}

static int lio_write(lua_State *L) {
  bt_repl_before_output();
  note_written(L, 1);
  return call_original(L);
}

static int lfile_write(lua_State *L) {
  if (is_std_stream(L, 1)) {
    bt_repl_before_output();
    note_written(L, 2);
  }
  return call_original(L);
}

/* t[name] = wrapper(t[name]), if t[name] is a function; t at idx. */
static void wrap_field(lua_State *L, int idx, const char *name, lua_CFunction wrapper) {
  idx = lua_absindex(L, idx);
  if (lua_getfield(L, idx, name) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return;
  }
  lua_pushcclosure(L, wrapper, 1);
  lua_setfield(L, idx, name);
}

/* baton's warnings (a task that failed and nobody joined, ...) unless a handler is set. */
static int lwarning(lua_State *L) {
  bt_repl_before_output();
  fprintf(stderr, "baton: warning: %s\n", luaL_tolstring(L, 1, NULL));
  fflush(stderr);
  return 0;
}

static void wrap_output(lua_State *L) {
  int top = lua_gettop(L);
  lua_pushglobaltable(L);
  wrap_field(L, -1, "print", lprint);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_IOLIBNAME) == LUA_TTABLE) wrap_field(L, -1, "write", lio_write);
  if (luaL_getmetatable(L, LUA_FILEHANDLE) == LUA_TTABLE &&
      lua_getfield(L, -1, "__index") == LUA_TTABLE)
    wrap_field(L, -1, "write", lfile_write);
  lbt_cli_default_warning(L, lwarning);
  lua_settop(L, top);
}

/* ---- completion ----------------------------------------------------------------------- */

static char **cands;       /* owned until handed to readline one by one */
static size_t ncands, next_cand;

static void free_cands(void) {
  for (size_t i = next_cand; i < ncands; i++) free(cands[i]);
  free(cands);
  cands = NULL;
  ncands = next_cand = 0;
}

static char *next_candidate(const char *text, int state) {
  (void)text;
  (void)state;
  if (next_cand < ncands) return cands[next_cand++];  /* readline frees it */
  return NULL;
}

/* The Lua collector (registry "baton.repl.complete") on `text`, under lua_pcall; fills
 * cands. A collector error just means no candidates. */
static int collect(lua_State *L) {
  const char *text = lua_touserdata(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, "baton.repl.complete");
  lua_pushstring(L, text);
  lua_call(L, 1, 1);
  luaL_checktype(L, -1, LUA_TTABLE);
  size_t n = (size_t)luaL_len(L, -1);
  cands = calloc(n + 1, sizeof *cands);
  if (cands == NULL) return 0;
  for (size_t i = 1; i <= n; i++) {
    const char *s = (lua_rawgeti(L, -1, (lua_Integer)i), lua_tostring(L, -1));
    if (s != NULL && (cands[ncands] = strdup(s)) != NULL) ncands++;
    lua_pop(L, 1);
  }
  return 0;
}

static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1;  /* no file names */
  rl_completion_append_character = '\0';
  lua_State *L = S.main;
  int top = lua_gettop(L);
  free_cands();
  if (lua_checkstack(L, 4)) {
    lua_pushcfunction(L, collect);
    lua_pushlightuserdata(L, (void *)text);
    lua_pcall(L, 1, 0, 0);
  }
  lua_settop(L, top);
  char **matches = ncands > 0 ? rl_completion_matches(text, next_candidate) : NULL;
  free_cands();
  return matches;
}

/* ---- start and stop ------------------------------------------------------------------- */

/* os.exit from a task while the prompt is shown: give the terminal back. */
static void repl_atexit(void) {
  if (S.prompt_on) {
    S.prompt_on = 0;
    rl_callback_handler_remove();
    if (!S.hidden) fputs("\r\n", rl_outstream);  /* the shell's prompt on a line of its own */
    fflush(rl_outstream);
  }
}

static void open_history(void) {
  const char *env = getenv("BATON_HISTORY");
  const char *home = getenv("HOME");
  if (env != NULL) {
    if (env[0] != '\0') S.histfile = strdup(env);
  } else if (home != NULL && home[0] != '\0') {
    size_t n = strlen(home) + sizeof "/.baton_history";
    S.histfile = malloc(n);
    if (S.histfile != NULL) snprintf(S.histfile, n, "%s/.baton_history", home);
  }
  using_history();
  stifle_history(HISTORY_MAX);
  /* Entries may span lines (a function typed over several): written with a timestamp line
   * before each, read back whole. */
  history_write_timestamps = 1;
  history_multiline_entries = 1;
  history_comment_char = '#';
  if (S.histfile != NULL) read_history(S.histfile);
}

/* history(chunk): a complete chunk as typed, for recall and for the history file. */
static int lhistory(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (!S.tty || n == 0 || strspn(s, " \t\n") == n) return 0;
  HIST_ENTRY *last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
  if (last != NULL && strcmp(last->line, s) == 0) return 0;
  add_history(s);
  if (S.histfile != NULL && append_history(1, S.histfile) != 0)
    write_history(S.histfile);  /* the file does not exist yet */
  return 0;
}

static void print_banner(void) {
  if (S.show_version)
    printf("baton %s (%s, libuv %s)\n", BATON_VERSION, LUA_RELEASE, uv_version_string());
  fputs("Lua with the event loop running: tasks spawned here keep running while you type.\n"
        "Each line runs as a task (it may await); `local` names do not persist between lines.\n"
        "`_` is the last result, `.tasks` lists the live tasks. Ctrl-C aborts the running\n"
        "line, Ctrl-D exits.\n", stdout);
  fflush(stdout);
}

/* start(complete) -> a to-be-closed guard whose closing calls stop. `complete` is the Lua
 * completion collector: text -> sorted list of candidates. */
static int prompt_shown(void) { return S.prompt_on; }

static int lstart(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (S.active) return luaL_error(L, "repl: already running");
  lbt_cli_set_console(prompt_shown, bt_repl_before_output);
  lua_pushvalue(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "baton.repl.complete");
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  S.main = lua_tothread(L, -1);
  lua_pop(L, 1);
  S.loop = lbt_cli_loop(S.cli);
  S.active = 1;
  S.got = GOT_NONE;
  S.eof = 0;
  S.len = 0;
  /* uv_poll_init makes the descriptor non-blocking. A terminal's file status is shared with
   * the shell, and readline wants blocking reads: put it back at once (polling works the
   * same on a blocking descriptor, and each callback reads only what poll reported). A pipe
   * stays non-blocking until stop. */
  S.in_flags = fcntl(STDIN_FILENO, F_GETFL);
  S.poll_ok = uv_poll_init(S.loop, &S.poll, STDIN_FILENO) == 0;
  if (S.poll_ok && S.in_flags != -1 && S.tty) fcntl(STDIN_FILENO, F_SETFL, S.in_flags);
  /* The prepare handle notes each turn of the loop. On a terminal it stays referenced: a
   * line that waits for something nothing can deliver then waits for Ctrl-C instead of
   * being declared a deadlock (with piped input, the deadlock ends the run, as for a
   * script). */
  S.last_tick = mono_ns();
  uv_prepare_init(S.loop, &S.prepare);
  uv_prepare_start(&S.prepare, on_prepare);
  if (!S.tty) uv_unref((uv_handle_t *)&S.prepare);
  install_sigint();
  if (S.tty) {
    rl_instream = stdin;
    rl_outstream = stdout;
    rl_readline_name = "baton";
    rl_catch_signals = 0;
    rl_catch_sigwinch = 0;
    rl_attempted_completion_function = complete;
    rl_completer_word_break_characters = " \t\n\"'`@$><=;|&{(,+-*/%^~#[]})";
    open_history();
    uv_signal_init(S.loop, &S.winch);
    uv_signal_start(&S.winch, on_winch, SIGWINCH);
    uv_unref((uv_handle_t *)&S.winch);
    wrap_output(L);
    if (!S.at_exit) S.at_exit = atexit(repl_atexit) == 0;
    print_banner();
  }
  lua_getfield(L, lua_upvalueindex(1), "guard");
  return 1;
}

/* stop(): idempotent. The handles close asynchronously, in static storage. */
static int lstop(lua_State *L) {
  (void)L;
  if (!S.active) return 0;
  lbt_cli_set_console(NULL, NULL);
  if (S.prompt_on && !S.hidden) {  /* left with a prompt shown (a signal, os.exit): a new line */
    S.prompt_on = 0;
    rl_callback_handler_remove();
    fputs("\r\n", rl_outstream);
    fflush(rl_outstream);
  }
  stop_input();
  if (S.poll_ok) {
    uv_close((uv_handle_t *)&S.poll, NULL);
    if (S.in_flags != -1) fcntl(STDIN_FILENO, F_SETFL, S.in_flags);
  }
  uninstall_sigint();
  uv_close((uv_handle_t *)&S.prepare, NULL);
  if (S.tty) {
    uv_close((uv_handle_t *)&S.winch, NULL);
    if (S.histfile != NULL) history_truncate_file(S.histfile, HISTORY_MAX);
    clear_history();
  }
  S.poll_ok = 0;
  S.active = 0;
  free(S.histfile);
  free(S.line);
  free(S.buf);
  S.histfile = S.line = S.buf = NULL;
  S.len = S.cap = 0;
  fflush(stdout);
  return 0;
}

/* ---- the loop ------------------------------------------------------------------------- */

static const char repl_lua[] =
  "local C = ...\n"
  "local ok_pretty, pretty = pcall(require, 'baton.pretty')\n"
  "local format = ok_pretty and pretty.format or function(v)\n"
  "  return type(v) == 'string' and string.format('%q', v) or tostring(v)\n"
  "end\n"
  "local stdout, stderr = io.stdout, io.stderr\n"
  "\n"
  "local KEYWORDS = {}\n"
  "for w in ([[and break do else elseif end false for function goto if in local nil not or\n"
  "  repeat return then true until while]]):gmatch('%a+') do KEYWORDS[#KEYWORDS + 1] = w end\n"
  "\n"
  "-- Completion: 'name', 'a.b.partial' or 'a.b:partial' -> sorted full candidates.\n"
  "local function complete(text)\n"
  "  local path, sep, partial = text:match('^(.-)([.:]?)([%w_]*)$')\n"
  "  if not path or (sep == '' and path ~= '') then return {} end\n"
  "  local obj = _G\n"
  "  if sep ~= '' then\n"
  "    for name in (path .. '.'):gmatch('(.-)%.') do\n"
  "      local t = type(obj)\n"
  "      if not name:match('^[%a_][%w_]*$') or (t ~= 'table' and t ~= 'userdata' and\n"
  "         t ~= 'string') then return {} end\n"
  "      local ok, v = pcall(function() return obj[name] end)\n"
  "      if not ok or v == nil then return {} end\n"
  "      obj = v\n"
  "    end\n"
  "  end\n"
  "  local seen, names = {}, {}\n"
  "  local function add(k)\n"
  "    if type(k) == 'string' and not seen[k] and k:sub(1, #partial) == partial and\n"
  "       k:match('^[%a_][%w_]*$') then\n"
  "      seen[k] = true\n"
  "      names[#names + 1] = k\n"
  "    end\n"
  "  end\n"
  "  local function scan(o, depth)\n"
  "    if type(o) == 'table' then for k in next, o do add(k) end end\n"
  "    local mt = getmetatable(o)\n"
  "    if type(mt) == 'table' and depth < 4 then\n"
  "      local idx, methods = rawget(mt, '__index'), rawget(mt, '__methods')\n"
  "      if type(idx) == 'table' then scan(idx, depth + 1) end\n"
  "      if type(methods) == 'table' then scan(methods, depth + 1) end\n"
  "    end\n"
  "  end\n"
  "  scan(obj, 0)\n"
  "  if sep == '' then for _, w in ipairs(KEYWORDS) do add(w) end end\n"
  "  table.sort(names)\n"
  "  for i, n in ipairs(names) do names[i] = path .. sep .. n end\n"
  "  return names\n"
  "end\n"
  "\n"
  "local function error_text(e)\n"
  "  local t = type(e)\n"
  "  if t == 'string' or t == 'number' then return tostring(e) end\n"
  "  local mt = getmetatable(e)\n"
  "  local ok, s = false, nil\n"
  "  if type(mt) == 'table' and rawget(mt, '__tostring') then ok, s = pcall(tostring, e) end\n"
  "  if not ok or type(s) ~= 'string' then s = '(error object is a ' .. t .. ' value)' end\n"
  "  if t == 'table' and type(rawget(e, 'traceback')) == 'string' then\n"
  "    s = s .. '\\n' .. rawget(e, 'traceback')\n"
  "  end\n"
  "  return s\n"
  "end\n"
  "\n"
  "local function show(...)\n"
  "  local n = select('#', ...)\n"
  "  if n == 0 then return end\n"
  "  local out = {}\n"
  "  for i = 1, n do\n"
  "    local ok, s = pcall(format, (select(i, ...)))\n"
  "    out[i] = ok and s or ('<cannot format: ' .. tostring(s) .. '>')\n"
  "  end\n"
  "  stdout:write(table.concat(out, '\\t'), '\\n')\n"
  "  stdout:flush()\n"
  "end\n"
  "\n"
  "-- .tasks: baton.tasks() as a table, by id.\n"
  "local function tasks_table()\n"
  "  local list = require('baton').tasks()\n"
  "  table.sort(list, function(a, b) return a.id < b.id end)\n"
  "  local function age(ms)\n"
  "    if ms < 1000 then return ms .. ' ms' end\n"
  "    if ms < 60000 then return string.format('%.1f s', ms / 1000) end\n"
  "    return string.format('%dm%02ds', ms // 60000, ms // 1000 % 60)\n"
  "  end\n"
  "  local rows = { { 'ID', 'NAME', 'STATUS', 'AGE', 'PARENT', 'WAITS ON' } }\n"
  "  for _, t in ipairs(list) do\n"
  "    local name = (t.name or ''):gsub('[%c\\127]', '?')  -- no terminal escapes\n"
  "    if #name > 32 then name = '...' .. name:sub(-29) end\n"
  "    local parent = t.parent and ('task ' .. t.parent) or ''\n"
  "    if t.group then parent = parent .. (parent ~= '' and ' ' or '') .. 'group ' .. t.group end\n"
  "    rows[#rows + 1] = { tostring(t.id), name, t.status, age(t.age_ms or 0), parent,\n"
  "                        t.waits or '' }\n"
  "  end\n"
  "  local width = {}\n"
  "  for _, r in ipairs(rows) do\n"
  "    for i, c in ipairs(r) do width[i] = math.max(width[i] or 0, #c) end\n"
  "  end\n"
  "  for _, r in ipairs(rows) do\n"
  "    local cells = {}\n"
  "    for i, c in ipairs(r) do\n"
  "      cells[i] = i == #r and c or (i == 1 and string.rep(' ', width[i] - #c) .. c\n"
  "                                          or c .. string.rep(' ', width[i] - #c))\n"
  "    end\n"
  "    stdout:write((table.concat(cells, '  '):gsub('%s+$', '')), '\\n')\n"
  "  end\n"
  "  stdout:write(#list, #list == 1 and ' task\\n' or ' tasks\\n')\n"
  "  stdout:flush()\n"
  "end\n"
  "\n"
  "local function report(ok, ...)\n"
  "  if ok then\n"
  "    if select('#', ...) > 0 and (...) ~= nil then _G._ = (...) end  -- _: the last result\n"
  "    return show(...)\n"
  "  end\n"
  "  if ok == nil then\n"
  "    stderr:write('left running in the background: ', tostring((...)), '\\n')\n"
  "  else\n"
  "    stderr:write(error_text((...)), '\\n')\n"
  "  end\n"
  "end\n"
  "\n"
  "local guard <close> = C.start(complete)\n"
  "local chunk\n"
  "while true do\n"
  "  local line = C.read(chunk and '>> ' or '> ')\n"
  "  if line == nil then\n"
  "    if chunk then  -- input ended inside a statement: say why it never ran\n"
  "      local _, err = load(chunk, '=stdin')\n"
  "      if err then io.stderr:write(err, '\\n') end\n"
  "    end\n"
  "    break\n"
  "  end\n"
  "  if line == false then\n"
  "    chunk = nil\n"
  "  elseif not chunk and line:match('^%s*%.tasks%s*$') then\n"
  "    C.history(line)\n"
  "    tasks_table()\n"
  "  elseif chunk or line:find('%S') then\n"
  "    local src = chunk and (chunk .. '\\n' .. line) or line\n"
  "    local fn, err\n"
  "    if not chunk then\n"
  "      local expr = line:match('^%s*=(.*)$')\n"
  "      if expr then\n"
  "        fn, err = load('return ' .. expr, '=stdin', 't')\n"
  "      else\n"
  "        fn = load('return ' .. line .. ';', '=stdin', 't')\n"
  "      end\n"
  "    end\n"
  "    if not fn and not err then fn, err = load(src, '=stdin', 't') end\n"
  "    if not fn and err:sub(-5) == '<eof>' then\n"
  "      chunk = src\n"
  "    else\n"
  "      chunk = nil\n"
  "      C.history(src)\n"
  "      if fn then report(C.run(fn)) else stderr:write(err, '\\n') end\n"
  "    end\n"
  "  end\n"
  "end\n";

int bt_repl_push(lua_State *L, lbt_cli *cli, int show_version) {
  S.cli = cli;
  S.tty = isatty(STDIN_FILENO);
  S.show_version = show_version;
  if (luaL_loadbuffer(L, repl_lua, sizeof repl_lua - 1, "=repl") != LUA_OK) lua_error(L);
  lua_createtable(L, 0, 6);
  int C = lua_gettop(L);
  /* guard: a table whose closing stops the REPL */
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, lstop);
  lua_setfield(L, -2, "__close");
  lua_setmetatable(L, -2);
  lua_setfield(L, C, "guard");
  static const luaL_Reg fns[] = {
    {"read", lread}, {"run", lrun}, {"history", lhistory}, {"start", lstart},
    {"stop", lstop}, {NULL, NULL}};
  for (const luaL_Reg *f = fns; f->name != NULL; f++) {
    lua_pushvalue(L, C);
    lua_pushcclosure(L, f->func, 1);  /* upvalue: this table */
    lua_setfield(L, C, f->name);
  }
  return 1;
}
