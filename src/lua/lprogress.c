/*
 * lprogress.c — baton.progress{ total =, label = }: a progress line on stderr for long
 * fan-outs. p:advance(n) counts n items done, p:fail(n) n items failed, p:done() draws the
 * last state and ends the line.
 *
 * On a terminal (stderr is a tty, or tty = true) it is one line redrawn in place ("\r",
 * then erase to the end of the line): label, a bar when the total is known, done/total,
 * failed, rate and ETA. It is redrawn at most every REDRAW_MS, from advance/fail when that
 * long has passed, and from a timer (so the rate and ETA stay current while nothing
 * advances) when something changed or a second passed. Not on a terminal, it prints a
 * plain line every `interval_ms` (default 2000) if something changed, and a last one at
 * done(): a log gets a line every few seconds, never a carriage return.
 *
 * The timer never keeps the loop alive (uv_unref), exists only inside baton.run (created
 * on first use in a run, closed when the run ends: lbt_close_progress) and lives in a
 * malloc'd block freed by its close callback (libuv's rule), which outlives the userdata
 * if need be: the userdata and the block point at each other, and whichever goes first
 * clears the other's pointer.
 *
 * Errors: misuse raises (bad options, a negative count, advance after done).
 *
 * Hostile input: the label is stored with its control characters (C0, DEL) as '?', so it
 * cannot move the cursor or break the line, and cut to fit between UTF-8 characters; the
 * counts saturate at COUNT_MAX (their sum cannot overflow); a duration shown is capped at
 * MAX_SECS (an ETA of 10^12 s reads 99999h59m, not an overflowed int).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lbaton.h"

#define REDRAW_MS 100u
#define COUNT_MAX ((lua_Integer)1 << 60)
#define MAX_SECS 359999999.0  /* 99999h59m59s */
#define PROGRESS_KEY "baton.progress.open"  /* weak set: progress userdata with a timer */

typedef struct lprogress lprogress;

typedef struct ptimer {
  uv_timer_t h;
  lprogress *P;             /* NULL once the userdata let go */
} ptimer;

struct lprogress {
  lbt_rt *R;
  ptimer *tm;               /* the redraw timer while one runs, else NULL */
  lua_Integer total;        /* -1: unknown */
  lua_Integer done, failed;
  lua_Integer shown;        /* done + failed at the last draw (-1: never drawn) */
  uint64_t t0, last;        /* uv_hrtime ns: created, last drawn */
  uint64_t interval_ms;     /* not a terminal: a line at most this often */
  int tty, finished;
  char label[128];
};

/* The label as shown: control characters as '?', cut between UTF-8 characters (a byte
 * 10xxxxxx continues one) to fit with its NUL. */
static void set_label(lprogress *P, const char *label) {
  size_t n = strlen(label);
  if (n >= sizeof P->label) {
    n = sizeof P->label - 1;
    while (n > 0 && ((unsigned char)label[n] & 0xC0) == 0x80) n--;
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)label[i];
    P->label[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
  }
  P->label[n] = '\0';
}

/* n more items, saturating at COUNT_MAX */
static void count_add(lua_Integer *c, lua_Integer n) {
  *c = n > COUNT_MAX - *c ? COUNT_MAX : *c + n;
}

static lprogress *check_progress(lua_State *L, int idx) {
  return lbt_check_type(L, idx, LBT_PROGRESS);
}

static int term_cols(void) {
  struct winsize ws;
  if (ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20) return ws.ws_col;
  return 80;
}

/* "1m05s", "42s", "3.4s" */
static void fmt_secs(char *buf, size_t n, double s) {
  if (!(s >= 0)) s = 0;
  if (s > MAX_SECS) s = MAX_SECS;
  if (s >= 3600) snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
  else if (s >= 60) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
  else if (s >= 10) snprintf(buf, n, "%ds", (int)s);
  else snprintf(buf, n, "%.1fs", s);
}

/* Writes the current state: the in-place line (tty) or a plain line. `final`: done(). */
/* Whether the bar is drawn in place now: on a terminal with no REPL prompt on it. */
static int in_place(const lprogress *P) {
  return P->tty && !(lbt_console_shown != NULL && lbt_console_shown());
}

static void draw(lprogress *P, int final) {
  uint64_t now = uv_hrtime();
  double el = (double)(now - P->t0) / 1e9;
  lua_Integer pos = P->done + P->failed;
  double rate = el > 0 ? (double)pos / el : 0;
  char counts[64], failed[48] = "", tail[64], t[24];
  if (P->total >= 0) snprintf(counts, sizeof counts, "%lld/%lld", (long long)pos, (long long)P->total);
  else snprintf(counts, sizeof counts, "%lld", (long long)pos);
  if (P->failed > 0) snprintf(failed, sizeof failed, " (%lld failed)", (long long)P->failed);
  if (final || (P->total >= 0 && pos >= P->total)) {
    fmt_secs(t, sizeof t, el);
    snprintf(tail, sizeof tail, "%.1f/s, in %s", rate, t);
  } else if (P->total >= 0 && rate > 0) {
    fmt_secs(t, sizeof t, (double)(P->total - pos) / rate);
    snprintf(tail, sizeof tail, "%.1f/s, ETA %s", rate, t);
  } else {
    fmt_secs(t, sizeof t, el);
    snprintf(tail, sizeof tail, "%.1f/s, %s", rate, t);
  }
  char line[512];
  int bar_mode = in_place(P);
  if (!bar_mode && P->tty && lbt_console_clear != NULL) lbt_console_clear();  /* the prompt */
  if (bar_mode) {
    char bar[64] = "";
    if (P->total > 0) {
      int cols = term_cols();
      int used = (int)(strlen(P->label) + strlen(counts) + strlen(failed) + strlen(tail)) + 8;
      int w = cols - used - 1;
      if (w > 40) w = 40;
      if (w >= 8) {
        int fill = (int)((double)w * (double)(pos > P->total ? P->total : pos) / (double)P->total);
        bar[0] = '[';
        for (int i = 0; i < w; i++) bar[1 + i] = i < fill ? '#' : '-';
        bar[w + 1] = ']';
        bar[w + 2] = ' ';
        bar[w + 3] = '\0';
      }
    }
    snprintf(line, sizeof line, "\r%s %s%s%s  %s\x1b[K%s", P->label, bar, counts, failed, tail,
             final ? "\n" : "");
  } else {
    snprintf(line, sizeof line, "%s: %s%s, %s\n", P->label, counts, failed, tail);
  }
  fputs(line, stderr);
  fflush(stderr);
  P->last = now;
  P->shown = pos;
}

static void timer_closed(uv_handle_t *h) { free(h->data); }

static void timer_stop(lprogress *P) {
  ptimer *tm = P->tm;
  if (tm == NULL) return;
  P->tm = NULL;
  tm->P = NULL;
  uv_close((uv_handle_t *)&tm->h, timer_closed);
}

static void on_tick(uv_timer_t *h) {
  ptimer *tm = h->data;
  lprogress *P = tm->P;
  if (P == NULL || P->finished) return;
  uint64_t since = (uv_hrtime() - P->last) / 1000000u;
  int changed = P->done + P->failed != P->shown;
  if (in_place(P) ? (changed || since >= 1000) : (changed && since >= P->interval_ms)) draw(P, 0);
}

/* Inside baton.run: the redraw timer (unref'd), made on first use. */
static void timer_ensure(lua_State *L, lprogress *P, int idx) {
  lbt_rt *R = P->R;
  if (P->tm != NULL || !R->running || P->finished) return;
  ptimer *tm = malloc(sizeof *tm);
  if (tm == NULL) return;  /* no redraws from the timer: advance still draws */
  uv_timer_init(bt_rt_loop(R->rt), &tm->h);
  tm->h.data = tm;
  tm->P = P;
  uv_unref((uv_handle_t *)&tm->h);
  uint64_t every = P->tty ? REDRAW_MS : (P->interval_ms < 1000 ? P->interval_ms : 1000);
  uv_timer_start(&tm->h, on_tick, every, every);
  P->tm = tm;
  lbt_weak_set_add(L, PROGRESS_KEY, idx);
}

static int lprogress_new(lua_State *L) {
  static const char fname[] = "baton.progress";
  static const char *const known[] = {"total", "label", "tty", "interval_ms", NULL};
  lbt_rt *R = lbt_R(L);
  lua_Integer total = -1;
  const char *label = "progress";
  int tty = isatty(2);
  lua_Number every = 2000;
  if (!lua_isnoneornil(L, 1)) {
    lbt_check_opts(L, fname, 1, "opts", known);
    if (lua_getfield(L, 1, "total") != LUA_TNIL) total = lbt_opt_count(L, fname, 1, "total", 0, 0);
    lua_pop(L, 1);
    label = lbt_opt_string(L, fname, 1, "label", "progress", NULL);
    tty = lbt_opt_bool(L, fname, 1, "tty", tty);
    every = lbt_opt_ms(L, fname, 1, "interval_ms", 2000);
  }
  lprogress *P = lua_newuserdatauv(L, sizeof *P, 0);
  memset(P, 0, sizeof *P);
  P->R = R;
  P->total = total;
  P->shown = -1;
  P->tty = tty;
  P->interval_ms = every < 1 ? 1 : (uint64_t)every;
  P->t0 = P->last = uv_hrtime();
  set_label(P, label);
  lbt_set_class(L, LBT_PROGRESS);
  timer_ensure(L, P, lua_gettop(L));
  return 1;
}

static lua_Integer arg_n(lua_State *L, lprogress *P, const char *fname) {
  lua_Integer n = lbt_arg_count(L, fname, 2, "n", 0, 1);
  if (P->finished) luaL_error(L, "%s: the progress is done", fname);
  return n;
}

/* After a change: draw now if the line is due (a terminal's every REDRAW_MS). */
static void changed(lua_State *L, lprogress *P) {
  timer_ensure(L, P, 1);
  if (in_place(P) && (uv_hrtime() - P->last) / 1000000u >= REDRAW_MS) draw(P, 0);
}

static int lprogress_advance(lua_State *L) {
  lprogress *P = check_progress(L, 1);
  count_add(&P->done, arg_n(L, P, "baton.progress:advance"));
  changed(L, P);
  lua_settop(L, 1);
  return 1;
}

static int lprogress_fail(lua_State *L) {
  lprogress *P = check_progress(L, 1);
  count_add(&P->failed, arg_n(L, P, "baton.progress:fail"));
  changed(L, P);
  lua_settop(L, 1);
  return 1;
}

/* done(): the last draw, the line ended; idempotent. Returns done, failed. */
static int lprogress_done(lua_State *L) {
  lprogress *P = check_progress(L, 1);
  if (!P->finished) {
    P->finished = 1;
    timer_stop(P);
    /* the last line already said it all (the total reached, nothing since): not twice; on
     * a terminal the line is only ended */
    lua_Integer pos = P->done + P->failed;
    if (!(P->total >= 0 && pos >= P->total && P->shown == pos && P->last != P->t0)) {
      draw(P, 1);
    } else if (in_place(P)) {
      fputs("\n", stderr);
      fflush(stderr);
    }
  }
  lua_pushinteger(L, P->done);
  lua_pushinteger(L, P->failed);
  return 2;
}

/* counts() -> done, failed, total (nil when unknown) */
static int lprogress_counts(lua_State *L) {
  lprogress *P = check_progress(L, 1);
  lua_pushinteger(L, P->done);
  lua_pushinteger(L, P->failed);
  if (P->total >= 0) lua_pushinteger(L, P->total);
  else lua_pushnil(L);
  return 3;
}

/* A progress left unfinished (collected, or open at the run's end) ends as done() ends it:
 * its final line, and on a terminal the line ended (else the next output, an error or the
 * shell's prompt, lands on the bar). */
static void finish_left(lprogress *P) {
  timer_stop(P);
  if (!P->finished) {
    P->finished = 1;
    draw(P, 1);
  }
}

static int lprogress_gc(lua_State *L) {
  finish_left(check_progress(L, 1));
  return 0;
}

static int lprogress_tostring(lua_State *L) {
  lprogress *P = check_progress(L, 1);
  lua_pushfstring(L, "baton.Progress (%s: %I done, %I failed%s)", P->label, (LUAI_UACINT)P->done,
                  (LUAI_UACINT)P->failed, P->finished ? ", finished" : "");
  return 1;
}

static void stop_one(void *ud) { finish_left(ud); }

void lbt_close_progress(lua_State *L) { lbt_weak_set_each(L, PROGRESS_KEY, stop_one); }

void lbt_open_progress(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {{"advance", lprogress_advance}, {"fail", lprogress_fail},
                                     {"done", lprogress_done}, {"counts", lprogress_counts},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", lprogress_gc}, {"__close", lprogress_done},
                                  {"__tostring", lprogress_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, "baton.Progress", methods, meta);
  lbt_weak_set_new(L, PROGRESS_KEY);
  static const luaL_Reg funcs[] = {{"progress", lprogress_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
