/*
 * lbackpressure.c — baton.backpressure{ capacity =, soft = }: a load-shedding guard whose
 * slots are permits.
 *
 * try_acquire() never waits: it returns a permit, or, when the guard is full, the failure
 * `nil, "baton.backpressure:try_acquire: at capacity (N of N in use)", "shed",
 * { depth =, capacity =, soft = }` (an outcome for the policy, not an error). Everything
 * else that goes wrong raises: a bad configuration (baton.backpressure, naming the key),
 * a bad self. A permit is a closable userdata, as in lsem.c: release() (idempotent),
 * <close> — so an error or an abort between acquire and release cannot leak depth — or,
 * with a warning, the collector gives the slot back. Its user value keeps the guard alive
 * while it exists. The guard itself owns no memory but its userdata (the core struct is
 * embedded), so it needs no __gc.
 *
 * Reaching the soft limit is reported through baton.on_warning once per crossing: the
 * acquire that brings depth up to `soft` warns, and the next warning needs depth to have
 * fallen below `soft` first.
 */
#include <string.h>

#include "backpressure.h"
#include "lbaton.h"

#define BT_BP_MT        "baton.Backpressure"
#define BT_BP_PERMIT_MT "baton.Backpressure.Permit"

typedef struct lbp_permit {
  bt_backpressure_t *bp;
  int held;
} lbp_permit;

static bt_backpressure_t *check_bp(lua_State *L, int idx) { return lbt_check_type(L, idx, LBT_BP); }

static int lbp_new(lua_State *L) {
  static const char *const F = "baton.backpressure";
  static const char *const known[] = {"capacity", "soft", NULL};
  lbt_check_opts(L, F, 1, "options", known);
  lua_settop(L, 1);
  size_t cap = (size_t)lbt_opt_count(L, F, 1, "capacity", 1, -1);
  size_t soft = (size_t)lbt_opt_count(L, F, 1, "soft", 1, 0);  /* 0: none */
  if (soft >= cap)
    lbt_field_error(L, F, 1, "soft",
                    lua_pushfstring(L, "integer below the capacity %I", (LUAI_UACINT)cap));
  bt_backpressure_t *bp = lua_newuserdatauv(L, sizeof *bp, 0);
  bt__backpressure_init(bp, cap, soft);
  luaL_setmetatable(L, BT_BP_MT);
  return 1;
}

static int lbp_try_acquire(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  bt_backpressure_t *bp = check_bp(L, 1);
  lua_settop(L, 1);
  if (bp->depth >= bp->capacity) {  /* shed: an outcome, returned */
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)bp->depth);
    lua_setfield(L, -2, "depth");
    lua_pushinteger(L, (lua_Integer)bp->capacity);
    lua_setfield(L, -2, "capacity");
    if (bp->soft != 0) {
      lua_pushinteger(L, (lua_Integer)bp->soft);
      lua_setfield(L, -2, "soft");
    }
    return lbt_fail_detail(L, "baton.backpressure:try_acquire", "shed", -1,
                           "at capacity (%d of %d in use)", (int)bp->depth, (int)bp->capacity);
  }
  /* The permit exists (released) before the slot is taken: if allocating it fails, no
   * depth has leaked. */
  lbp_permit *p = lua_newuserdatauv(L, sizeof *p, 1);
  p->bp = bp;
  p->held = 0;
  luaL_setmetatable(L, BT_BP_PERMIT_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  int crossed = 0;
  bt__backpressure_try_acquire(bp, &crossed);  /* cannot shed: depth < capacity was checked above */
  p->held = 1;
  if (crossed)
    lbt_warn(R, "baton.backpressure: depth %d reached the soft limit %d (capacity %d)",
             (int)bp->depth, (int)bp->soft, (int)bp->capacity);
  return 1;
}

static int lbp_depth(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_bp(L, 1)->depth);
  return 1;
}

static int lbp_capacity(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_bp(L, 1)->capacity);
  return 1;
}

/* The soft limit, or nil when none was set. */
static int lbp_soft(lua_State *L) {
  bt_backpressure_t *bp = check_bp(L, 1);
  if (bp->soft == 0) return 0;
  lua_pushinteger(L, (lua_Integer)bp->soft);
  return 1;
}

static int lbp_soft_ratio(lua_State *L) {
  lua_pushnumber(L, (lua_Number)bt__backpressure_soft_ratio(check_bp(L, 1)));
  return 1;
}

static int lbp_tostring(lua_State *L) {
  bt_backpressure_t *bp = check_bp(L, 1);
  if (bp->soft) lua_pushfstring(L, "baton.Backpressure (depth %I, soft %I, capacity %I)",
                                (LUAI_UACINT)bp->depth, (LUAI_UACINT)bp->soft,
                                (LUAI_UACINT)bp->capacity);
  else lua_pushfstring(L, "baton.Backpressure (depth %I, capacity %I)",
                       (LUAI_UACINT)bp->depth, (LUAI_UACINT)bp->capacity);
  return 1;
}

/* ---- permits ------------------------------------------------------------------------ */

static void permit_release(lbp_permit *p) {
  if (!p->held) return;
  p->held = 0;
  bt__backpressure_release(p->bp);
}

static int lpermit_release(lua_State *L) {
  permit_release(lbt_check_type(L, 1, LBT_BP_PERMIT));
  return 0;
}

static int lpermit_held(lua_State *L) {
  lua_pushboolean(L, ((lbp_permit *)lbt_check_type(L, 1, LBT_BP_PERMIT))->held);
  return 1;
}

static int lpermit_gc(lua_State *L) {
  lbt_rt *R = lbt_R(L);
  lbp_permit *p = lbt_check_type(L, 1, LBT_BP_PERMIT);
  if (p->held && !R->closed)
    lbt_warn(R, "a backpressure permit was collected while still held; release it, or hold "
                "it in a <close> variable (released now)");
  permit_release(p);
  return 0;
}

static int lpermit_tostring(lua_State *L) {
  lbp_permit *p = lbt_check_type(L, 1, LBT_BP_PERMIT);
  lua_pushfstring(L, "baton.Backpressure.Permit (%s)", p->held ? "held" : "released");
  return 1;
}

void lbt_open_backpressure(lua_State *L, int rt_idx) {
  static const luaL_Reg methods[] = {
    {"try_acquire", lbp_try_acquire}, {"depth", lbp_depth}, {"capacity", lbp_capacity},
    {"soft", lbp_soft}, {"soft_ratio", lbp_soft_ratio}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__tostring", lbp_tostring}, {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_BP_MT, methods, meta);
  static const luaL_Reg permit_methods[] = {
    {"release", lpermit_release}, {"held", lpermit_held}, {NULL, NULL}};
  static const luaL_Reg permit_meta[] = {
    {"__close", lpermit_release}, {"__gc", lpermit_gc}, {"__tostring", lpermit_tostring},
    {NULL, NULL}};
  lbt_new_class(L, rt_idx, BT_BP_PERMIT_MT, permit_methods, permit_meta);
  static const luaL_Reg funcs[] = {{"backpressure", lbp_new}, {NULL, NULL}};
  lbt_set_funcs(L, rt_idx, funcs);
}
