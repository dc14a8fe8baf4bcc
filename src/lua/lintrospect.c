/*
 * lintrospect.c — what a task is doing, in words: the wait descriptions of baton.tasks()
 * and of the deadlock error, baton.activity (a label a library puts on what the running
 * task does, which also becomes a span of the trace), task:traceback(), and the option
 * form of spawn (spawn{ name =, fn, args... }).
 *
 * Nothing here runs on a hot path: a description is computed when asked (baton.tasks, a
 * deadlock, a trace's wait span), from what the waiting fiber already holds: the await's
 * function name (f->what), its wait record (deadline, source) and the frame of the C
 * function it is suspended in (a yielded coroutine's stack is readable: lua_pushvalue and
 * lua_xmove on a suspended thread). A description never raises, and falls back to the
 * await's function name when the wait is not one it knows (or the task waits inside
 * baton.coroutine.wrap, whose frame is the wrapper's).
 *
 * Activity labels live in a registry table with weak keys (task userdata -> label), made
 * on first use; baton.activity restores the previous label however fn ends.
 */
#include <string.h>

#include "lbaton.h"
#include "trace.h"

static const char ACTIVITY_KEY[] = "baton.task.activity";

/* The value at index idx of the suspended coroutine co, moved onto L (nil if absent). */
static int co_value(lua_State *L, lua_State *co, int idx) {
  if (lua_status(co) != LUA_YIELD || lua_gettop(co) < idx || !lua_checkstack(co, 1)) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  lua_pushvalue(co, idx);
  lua_xmove(co, L, 1);
  return lua_type(L, -1);
}

static const char *ordinal(size_t n) {
  if (n % 100 >= 11 && n % 100 <= 13) return "th";
  switch (n % 10) {
  case 1: return "st";
  case 2: return "nd";
  case 3: return "rd";
  default: return "th";
  }
}

/* "http GET host/path" from the options table of baton.http.request on top of L, which it
 * replaces. The query string is left out: it may carry credentials. */
static void describe_http(lua_State *L) {
  int t = lua_gettop(L);
  const char *method = "GET";
  lua_pushliteral(L, "method");
  if (lua_rawget(L, t) == LUA_TSTRING) {
    method = lua_tostring(L, -1);
  } else {
    lua_pushliteral(L, "body");
    if (lua_rawget(L, t) != LUA_TNIL) method = "POST";
  }
  lua_pushliteral(L, "url");
  const char *url = lua_rawget(L, t) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
  const char *p = strstr(url, "://");
  p = p ? p + 3 : url;
  lua_pushfstring(L, "http %s ", method);
  lua_pushlstring(L, p, strcspn(p, "?#"));
  lua_concat(L, 2);
  lua_copy(L, -1, t);
  lua_settop(L, t);
}

int lbt_describe_wait(lua_State *L, lbt_rt *R, lbt_fiber *f) {
  luaL_checkstack(L, 8, "baton.tasks");
  int top = lua_gettop(L);
  const char *what = f->what ? f->what : "?";
  lbt_task *T = f->task;
  /* an activity label set by baton.activity wins */
  if (T != NULL && T->ref != LUA_NOREF &&
      lua_getfield(L, LUA_REGISTRYINDEX, ACTIVITY_KEY) == LUA_TTABLE) {
    lbt_push_task(L, R, T);
    if (lua_rawget(L, -2) == LUA_TSTRING) {
      lua_copy(L, -1, top + 1);
      lua_settop(L, top + 1);
      return 1;
    }
  }
  lua_settop(L, top);
  if (strcmp(what, "baton.sleep") == 0) {
    if (f->wait.timer.slot != 0) {
      uint64_t now = bt_now(R->rt), due = f->wait.timer.due;
      lua_pushfstring(L, "sleep until +%I ms", (LUAI_UACINT)(due > now ? due - now : 0));
    } else {
      lua_pushliteral(L, "sleep");
    }
  } else if (strcmp(what, "baton.semaphore:acquire") == 0 && f->semw.sem != NULL) {
    bt_sem_t *s = f->semw.sem;
    size_t pos = 1;
    bt_sem_waiter_t *w;
    TAILQ_FOREACH(w, &s->waiters, link) {
      if (w == &f->semw) break;
      pos++;
    }
    const lsem *S = bt_container_of(s, lsem, storage);
    if (S->name != NULL)
      lua_pushfstring(L, "semaphore \"%s\" (%I%s in line)", S->name, (LUAI_UACINT)pos,
                      ordinal(pos));
    else
      lua_pushfstring(L, "semaphore (%I%s in line)", (LUAI_UACINT)pos, ordinal(pos));
  } else if (strncmp(what, "baton.process", 13) == 0 && strcmp(what, "baton.process:write") != 0
             && f->wait.src != NULL) {
    int pid = lbt_proc_wait_pid(&f->wait);
    const char *op = strchr(what, ':');
    if (pid > 0 && op != NULL && strcmp(op, ":wait") != 0)
      lua_pushfstring(L, "process %d (%s)", pid, op + 1);
    else if (pid > 0) lua_pushfstring(L, "process %d", pid);
    else lua_pushstring(L, what);
  } else if (strcmp(what, "baton.http.request") == 0 || strcmp(what, "baton.http.json") == 0) {
    if (co_value(L, f->co, 1) == LUA_TTABLE) describe_http(L);
    else {
      lua_pop(L, 1);
      lua_pushliteral(L, "http");
    }
  } else if (strcmp(what, "baton.channel:recv") == 0 || strcmp(what, "baton.channel:iter") == 0) {
    lua_pushliteral(L, "channel recv");
  } else if (strcmp(what, "baton.channel:send") == 0) {
    lua_pushliteral(L, "channel send");
  } else if (strcmp(what, "baton.task:join") == 0) {
    co_value(L, f->co, 1);
    lbt_task *J = lua_touserdata(L, -1);
    if (J != NULL && (lbt_test_type(L, -1, LBT_TASK) || lbt_test_type(L, -1, LBT_TASK_GC)))
      lua_pushfstring(L, "join task %I", (LUAI_UACINT)J->t.id);
    else
      lua_pushliteral(L, "join");
  } else if (strncmp(what, "baton.group:", 12) == 0) {
    co_value(L, f->co, 1);
    struct lgroup *G = lbt_test_type(L, -1, LBT_GROUP);
    if (G != NULL && G->name != NULL)
      lua_pushfstring(L, "group \"%s\" %s", G->name, what + 12);
    else
      lua_pushfstring(L, "group %s", what + 12);
  } else {
    lua_pushstring(L, what);
  }
  lua_copy(L, -1, top + 1);
  lua_settop(L, top + 1);
  return 0;
}

/* ---- task:traceback ----------------------------------------------------------------- */

/* The stack of a started, unfinished task as luaL_traceback writes it: where a parked task
 * waits, or where the running one is. nil for a task that has not started or has ended. */
int lbt_task_traceback(lua_State *L) {
  lbt_task *T = lbt_check_task(L, 1);
  lbt_rt *R = lbt_R(L);
  lbt_fiber *f = lbt_fib(T);
  if (f == NULL || bt_task_finished(&T->t) || f->co == NULL) {
    lua_pushnil(L);
    return 1;
  }
  if (T == lbt_current(R)) {
    luaL_traceback(L, f->co == L ? L : f->co, NULL, f->co == L ? 1 : 0);
    return 1;
  }
  lua_pushfstring(L, "task %I", (LUAI_UACINT)T->t.id);
  if (T->t.state == BT_TASK_WAITING) {
    lbt_describe_wait(L, R, f);
    lua_pushfstring(L, " waiting on %s", lua_tostring(L, -1));
    lua_remove(L, -2);
    lua_concat(L, 2);
  }
  luaL_traceback(L, f->co, lua_tostring(L, -1), 0);
  return 1;
}

/* ---- spawn{ name =, fn, ... } ------------------------------------------------------- */

int lbt_spawn_opts(lua_State *L, int idx, const char *fname, lua_CFunction spawn) {
  static const char *const known[] = {LBT_POSITIONAL, "name", NULL};
  lbt_check_opts(L, fname, idx, "opts", known);
  if (lua_gettop(L) > idx)
    return luaL_error(L, "%s: with an options table, the function and its arguments go in "
                      "the table: %s{ name = ..., fn, arg1, ... }", fname, fname);
  int nt = lua_getfield(L, idx, "name");
  if (nt != LUA_TNIL && nt != LUA_TSTRING) lbt_field_error(L, fname, idx, "name", "string");
  int name = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  if (lua_rawgeti(L, idx, 1) != LUA_TFUNCTION)
    lbt_field_error(L, fname, idx, "[1]", "function (the task's body)");
  lua_pop(L, 1);
  if (n > 250) luaL_error(L, "%s: too many arguments (%I, at most 250)", fname, (LUAI_UACINT)(n - 1));
  luaL_checkstack(L, (int)n + idx + 4, fname);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, spawn, 1);
  for (int i = 1; i < idx; i++) lua_pushvalue(L, i);
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, idx, i);
  lua_call(L, idx - 1 + (int)n, 1);
  if (nt == LUA_TSTRING) lbt_task_set_name(L, -1, name);
  return 1;
}

/* ---- baton.activity ----------------------------------------------------------------- */

/* Upvalue 2 of baton.activity: the weak table task -> label (also in the registry at
 * ACTIVITY_KEY, for lbt_describe_wait). Stack: 1 label, 2 the task's previous label (nil:
 * none, or not in a task), then fn's results or its error. ctx: when fn started on the
 * trace clock, 0 when no trace was being written. The task is the running one, before and
 * after (an activity never leaves its task). */
static int activity_k(lua_State *L, int status, lua_KContext ctx) {
  lbt_rt *R = lbt_R(L);
  lbt_task *T = lbt_current(R);
  if (T != NULL) {
    lua_pushvalue(L, lua_upvalueindex(2));
    lbt_push_task(L, R, T);
    lua_pushvalue(L, 2);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  uint64_t t0 = (uint64_t)ctx;
  if (t0 != 0 && R->trace != NULL && T != NULL) {
    const char *label = lua_tostring(L, 1);
    char cat[32];
    size_t c = strcspn(label, " ");
    if (c >= sizeof cat) c = sizeof cat - 1;
    memcpy(cat, label, c);
    cat[c] = '\0';
    const char *args = status == LUA_OK || status == LUA_YIELD ? NULL : "{\"error\":true}";
    bt__trace_span(R->trace, T->t.id, label, cat, t0, bt__trace_now(), args);
  }
  if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);
  return lua_gettop(L) - 2;
}

static int lactivity(lua_State *L) {
  static const char fname[] = "baton.activity";
  lbt_rt *R = lbt_R(L);
  lbt_arg_string(L, fname, 1, "label", NULL);
  lbt_arg_function(L, fname, 2, "fn");
  int nargs = lua_gettop(L) - 2;
  luaL_checkstack(L, 4, fname);
  lbt_task *T = lbt_current(R);
  if (T != NULL) {  /* label[task]: the previous one pushed, the new one set */
    int top = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(2));
    lbt_push_task(L, R, T);
    lua_pushvalue(L, -1);
    lua_rawget(L, top + 1);
    lua_insert(L, top + 2);  /* weak table, previous label, task */
    lua_pushvalue(L, 1);
    lua_rawset(L, top + 1);
    lua_replace(L, top + 1);  /* the previous label alone above the arguments */
  } else {
    lua_pushnil(L);
  }
  lua_rotate(L, 2, 1);  /* ... to slot 2, under fn and its arguments */
  lua_KContext t0 = R->trace != NULL ? (lua_KContext)bt__trace_now() : 0;
  int status = lua_pcallk(L, nargs, LUA_MULTRET, 0, t0, activity_k);
  return activity_k(L, status, t0);
}

void lbt_open_introspect(lua_State *L, int rt_idx) {
  lua_pushvalue(L, rt_idx);
  lbt_push_weak_table(L, ACTIVITY_KEY);
  lua_pushcclosure(L, lactivity, 2);
  lua_setfield(L, -2, "activity");
}
