/*
 * lrunner.c — baton.runner{ handler =, poll_ms = }: the queued-work runner.
 *
 * The decisions — what to drive, what to suppress, when to poll — are the core's
 * (runner.c). This binding supplies the driver: one task, spawned by start(), that loops
 * "take the next request, call handler(request), report the outcome", and parks on the
 * core (a wait whose wake is the core's callback) when there is nothing to do. So the
 * handler runs in a task and may await, drives are serial, and the poll timer is armed
 * only while the driver is parked.
 *
 * Lifetime. The driver task holds the runner userdata, so a started runner is not
 * collected while it runs. stop() stops the core (timer off, queue and in-flight set
 * dropped) and aborts the driver; called from another task it also waits for the driver
 * to unwind, so nothing is left running when it returns. <close> and __gc do the same
 * without waiting (they cannot). baton.run aborts the driver with every other task when
 * its main task ends; a runner whose driver is gone counts as stopped.
 *
 * Handler outcomes: "idle" or nil (nothing to do), { submitted = id } (session id in
 * flight until complete_session). A failure — raised, or returned as
 * `nil, msg[, kind[, detail]]`, both read by lbt_outcome (the one rule) — is reported
 * through baton.on_warning (with the reason, the kind, and a raise's traceback) and the
 * runner goes on; anything else is reported and taken as idle. Cancellation is not a
 * handler error: it ends the driver.
 *
 * Errors (docs/errors.md). Raise: misuse (bad options, naming the key; a second start();
 * a session id or reason that is not a string). Return failures: the pokes
 * (poke, poke_session, complete_session) return true, or
 * `nil, "baton.runner:poke: the runner is stopped", "closed"` once the runner is stopped
 * or closed (the poke is dropped), or kind "resource" when it cannot be queued (memory).
 *
 * Driver stack: 1 runner; during a drive 2 message handler, 3 request, 4.. handler results
 * (four).
 */
#include <string.h>

#include "lbaton.h"
#include "runner.h"

#define BT_RUNNER_MT "baton.Runner"

typedef struct lrunner {
  bt_runner_t *r;      /* NULL once closed */
  lbt_task *driver;    /* the driver task (kept alive by user value 2), or NULL */
} lrunner;

/* A closed runner (r NULL) is a stopped one: its methods answer as for a runner whose
 * driver is gone (pokes return false), so they check the type only. */
static lrunner *check_runner(lua_State *L, int idx) {
  return lbt_check_type(L, idx, LBT_RUNNER);
}

static int driver_alive(const lrunner *U) {
  return U->driver != NULL && !bt_task_finished(&U->driver->t);
}

static const char *state_name(const lrunner *U) {
  if (U->r == NULL || bt__runner_state(U->r) == BT_RUNNER_STOPPED) return "stopped";
  if (bt__runner_state(U->r) == BT_RUNNER_NEW) return "new";
  return driver_alive(U) ? "running" : "stopped";
}

static int lrunner_new(lua_State *L) {
  static const char *const F = "baton.runner";
  lbt_rt *R = lbt_R(L);
  static const char *const known[] = {"handler", "poll_ms", NULL};
  lbt_check_opts(L, F, 1, "options", known);
  lua_settop(L, 1);
  lua_Integer poll = lbt_opt_count(L, F, 1, "poll_ms", 1, 400);
  if (poll > 1000000000) lbt_field_error(L, F, 1, "poll_ms", "integer <= 1000000000");
  if (!lbt_opt_function(L, F, 1, "handler")) lbt_field_error(L, F, 1, "handler", "function");
  lrunner *U = lua_newuserdatauv(L, sizeof *U, 2);
  U->r = NULL;
  U->driver = NULL;
  luaL_setmetatable(L, BT_RUNNER_MT);
  lua_insert(L, -2);
  lua_setiuservalue(L, -2, 1);
  U->r = bt__runner_new(R->rt, (uint64_t)poll);
  if (U->r == NULL) return luaL_error(L, "%s: out of memory", F);
  return 1;
}

/* ---- the driver --------------------------------------------------------------------- */

static int driver_loop(lua_State *L);

/* The driver ends by cancellation: the runner is stopped for good, then the error goes on. */
static int driver_unwind(lua_State *L, lrunner *U) {
  if (U->r != NULL) bt__runner_stop(U->r);
  return lua_error(L);
}

static int raise_cancelled(lua_State *L, lrunner *U) {
  lbt_push_error(L, "cancelled", "task cancelled");
  return driver_unwind(L, U);
}

static int msgh(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING) luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

/* The handler returned (status LUA_OK/LUA_YIELD, its four results from 4) or raised (the
 * error at 4, a string with its traceback). */
static void after_handler(lua_State *L, lrunner *U, int status) {
  lbt_rt *R = lbt_R(L);
  const char *sid = NULL;
  size_t len = 0;
  if (status != LUA_OK && status != LUA_YIELD &&
      (status != LUA_ERRRUN || lbt_is_cancel_error(L, -1) || lbt_cancelled(R))) {
    if (U->r != NULL) bt__runner_done(U->r, NULL, 0);
    driver_unwind(L, U);  /* the cancellation ends the driver */
  }
  if (!lbt_outcome(L, status, 4)) {  /* failed: message, kind, detail at 4..6 */
    lua_getfield(L, 3, "reason");
    lbt_warn(R, "baton.runner: the handler failed (reason '%s', kind '%s'): %s",
             lua_tostring(L, -1), lua_tostring(L, 5), lua_tostring(L, 4));
  } else if (lua_istable(L, 4)) {
    lua_pushliteral(L, "submitted");  /* raw: a result is data, its metamethods not run */
    lua_rawget(L, 4);
    if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
      sid = lua_tolstring(L, -1, &len);  /* converts a number in place: it is a copy */
    } else {
      lbt_warn(R, "baton.runner: the handler returned a table without a string 'submitted'; "
                  "expected \"idle\" or { submitted = session_id } (taken as idle)");
    }
  } else if (!lua_isnil(L, 4) && !(lua_type(L, 4) == LUA_TSTRING &&
                                   strcmp(lua_tostring(L, 4), "idle") == 0)) {
    lbt_warn(R, "baton.runner: the handler returned %s; expected \"idle\" or "
                "{ submitted = session_id } (taken as idle)", lbt_push_got(L, 4));
  }
  if (U->r != NULL && bt__runner_done(U->r, sid, len) != 0)
    lbt_warn(R, "baton.runner: out of memory recording session '%s' in flight", sid);
  lua_settop(L, 1);
}

static int handler_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  after_handler(L, lua_touserdata(L, 1), status);
  return driver_loop(L);
}

static void on_wake(bt_runner_t *r, void *data) {
  (void)r;
  bt_wait_t *w = data;
  bt_task_wake(w->rt, w->task, w->token, 0);
}

static void park_cancel(bt_wait_t *w) { bt__runner_unpark(w->src); }

static int park_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lbt_rt *R = lbt_R(L);
  if (lbt_fib((lbt_task *)bt_rt_current(R->rt))->status == BT_ECANCELED || lbt_cancelled(R))
    return raise_cancelled(L, lua_touserdata(L, 1));  /* stops the runner, then raises */
  return driver_loop(L);
}

static void push_request(lua_State *L, const bt_runner_req *q) {
  lua_createtable(L, 0, 3);
  if (q->session_id != NULL) {
    lua_pushlstring(L, q->session_id, q->session_len);
    lua_setfield(L, -2, "session_id");
  }
  lua_pushlstring(L, q->reason, q->reason_len);
  lua_setfield(L, -2, "reason");
  lua_pushboolean(L, q->trace_idle);
  lua_setfield(L, -2, "trace_idle");
}

static int driver_loop(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lrunner *U = lua_touserdata(L, 1);
  lua_settop(L, 1);
  for (;;) {
    if (lbt_cancelled(R)) return raise_cancelled(L, U);
    if (U->r == NULL) return 0;
    bt_runner_req q;
    if (bt__runner_next(U->r, &q)) {
      lua_pushcfunction(L, msgh);
      push_request(L, &q);
      lua_getiuservalue(L, 1, 1);
      lua_pushvalue(L, 3);
      after_handler(L, U, lua_pcallk(L, 1, 4, 2, 0, handler_k));
      continue;
    }
    lbt_task *T = lbt_await_begin(L, R, "baton.runner");
    lbt_fiber *f = lbt_fib(T);
    int rc = bt__runner_park(U->r, on_wake, &f->wait);
    if (rc == 1) continue;
    if (rc == BT_ECLOSED) return 0;
    if (rc != 0) return luaL_error(L, "baton.runner: %s", bt_strerror(rc));
    f->wait.src = U->r;
    bt_task_wait(R->rt, &T->t, &f->wait, park_cancel, UINT64_MAX);
    return lbt_suspend(L, 0, park_k);
  }
}

static int driver_main(lua_State *L) { return driver_loop(L); }

/* ---- methods ------------------------------------------------------------------------ */

static int lrunner_start(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lrunner *U = check_runner(L, 1);
  lua_settop(L, 1);
  if (U->r == NULL || bt__runner_state(U->r) != BT_RUNNER_NEW)
    return luaL_error(L, "baton.runner:start: the runner is %s (start it once)", state_name(U));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, driver_main, 1);
  lua_pushvalue(L, 1);
  U->driver = lbt_task_new(L, R, 2, 1, R->root, NULL, 0);
  lua_setiuservalue(L, 1, 2);
  if (bt__runner_start(U->r) != 0) {
    bt_task_abort(R->rt, &U->driver->t);
    return luaL_error(L, "baton.runner:start: out of memory");
  }
  lua_settop(L, 1);
  return 1;
}

/* Not closed, and either not started yet or its driver is still there. */
static int usable(lrunner *U) {
  return U->r != NULL && (bt__runner_state(U->r) == BT_RUNNER_NEW || driver_alive(U));
}

/* The pokes: poke(reason) is a global request, poke_session(sid, reason) one for a session,
 * complete_session(sid, reason) takes the session out of flight first. They return true
 * when queued, or a failure: "closed" when the runner is stopped (the poke is dropped: a
 * worker completing a session during shutdown must not crash), "resource" when memory
 * runs out. */
static int poke(lua_State *L, const char *fname, int session, int complete) {
  lrunner *U = check_runner(L, 1);
  size_t sl = 0, rl;
  const char *sid = !session ? NULL  /* a session id may be a number, as in { submitted = } */
                  : lua_type(L, 2) == LUA_TNUMBER ? lua_tolstring(L, 2, &sl)
                  : lbt_arg_string(L, fname, 2, "session_id", &sl);
  const char *reason = lbt_arg_string(L, fname, session ? 3 : 2, "reason", &rl);
  int rc = !usable(U) ? BT_ECLOSED
         : complete  ? bt__runner_complete(U->r, sid, sl, reason, rl)
                     : bt__runner_poke(U->r, sid, sl, reason, rl);
  if (rc == BT_ECLOSED) return lbt_fail(L, fname, "the runner is stopped", "closed");
  if (rc != 0) return lbt_fail_status(L, fname, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int lrunner_poke(lua_State *L) { return poke(L, "baton.runner:poke", 0, 0); }

static int lrunner_poke_session(lua_State *L) {
  return poke(L, "baton.runner:poke_session", 1, 0);
}

static int lrunner_complete_session(lua_State *L) {
  return poke(L, "baton.runner:complete_session", 1, 1);
}

/* Stops the core and aborts the driver; never waits. */
static void stop_now(lbt_rt *R, lrunner *U) {
  if (U->r != NULL) bt__runner_stop(U->r);
  if (driver_alive(U) && !R->closed) bt_task_abort(R->rt, &U->driver->t);
}

static int stop_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 0;
}

static int lrunner_stop(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lrunner *U = check_runner(L, 1);
  lua_settop(L, 1);
  stop_now(R, U);
  bt_task_t *cur = bt_rt_current(R->rt);
  if (!driver_alive(U) || cur == NULL || cur == &U->driver->t || !lua_isyieldable(L) ||
      (lbt_fib((lbt_task *)cur)->co != L && !lbt_is_wrapped(L)))
    return 0;
  lua_getiuservalue(L, 1, 2);  /* wait for the driver to unwind: driver:join() */
  lua_getfield(L, -1, "join");
  lua_insert(L, -2);
  lua_callk(L, 1, 0, 0, stop_k);
  return 0;
}

static int lrunner_close(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lrunner *U = check_runner(L, 1);
  stop_now(R, U);
  bt__runner_free(U->r);
  U->r = NULL;
  return 0;
}

static int lrunner_status(lua_State *L) {
  lua_pushstring(L, state_name(check_runner(L, 1)));
  return 1;
}

static void push_id(void *ud, const char *id, size_t len) {
  lua_State *L = ud;
  lua_pushlstring(L, id, len);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

static int lrunner_inflight(lua_State *L) {
  lrunner *U = check_runner(L, 1);
  lua_newtable(L);
  if (U->r != NULL) bt__runner_foreach_inflight(U->r, push_id, L);
  return 1;
}

static int lrunner_pending(lua_State *L) {
  lrunner *U = check_runner(L, 1);
  lua_pushinteger(L, U->r ? (lua_Integer)bt__runner_pending(U->r) : 0);
  return 1;
}

static int lrunner_tostring(lua_State *L) {
  lrunner *U = check_runner(L, 1);
  lua_pushfstring(L, "baton.Runner (%s, %I in flight, %I pending)", state_name(U),
                  (LUAI_UACINT)(U->r ? bt__runner_inflight(U->r) : 0),
                  (LUAI_UACINT)(U->r ? bt__runner_pending(U->r) : 0));
  return 1;
}

void lbt_open_runner(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"start", lrunner_start}, {"poke", lrunner_poke}, {"poke_session", lrunner_poke_session},
    {"complete_session", lrunner_complete_session}, {"stop", lrunner_stop},
    {"status", lrunner_status}, {"inflight", lrunner_inflight}, {"pending", lrunner_pending},
    {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__close", lrunner_close}, {"__gc", lrunner_close}, {"__tostring", lrunner_tostring},
    {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_RUNNER_MT, methods, meta);
  static const luaL_Reg funcs[] = {{"runner", lrunner_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
