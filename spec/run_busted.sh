#!/usr/bin/env bash
# Runs one busted spec file on the stock lua5.4 (busted's own launcher may point at another
# Lua). Under ASan the module is loaded into an uninstrumented interpreter, so the sanitizer
# runtime is preloaded for the interpreter process only.
set -euo pipefail
spec="$1"
src="${BATON_SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
export LUA_CPATH="${BATON_BUILD:-$src/build}/?.so;;"
export LUA_PATH="$src/lua/?.lua;$src/lua/?/init.lua;$src/?.lua;;"
runner=$(command -v busted)
if [ -n "${BATON_ASAN_PRELOAD:-}" ]; then
  export LD_PRELOAD="$BATON_ASAN_PRELOAD"
fi
exec lua5.4 "$runner" -o utfTerminal "$spec"
