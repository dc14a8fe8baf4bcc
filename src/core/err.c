/*
 * err.c — names and messages for error codes: baton's own (BT_ERRNO_MAP) and libuv's,
 * which pass through the core unchanged.
 */
#include "baton.h"

const char *bt_err_name(int err) {
  switch (err) {
#define XX(name, code, kind, msg) case code: return kind;
    BT_ERRNO_MAP(XX)
#undef XX
  default: return err < 0 ? uv_err_name(err) : "ok";
  }
}

const char *bt_strerror(int err) {
  switch (err) {
#define XX(name, code, kind, msg) case code: return msg;
    BT_ERRNO_MAP(XX)
#undef XX
  default: return err < 0 ? uv_strerror(err) : "success";
  }
}
