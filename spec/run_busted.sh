#!/usr/bin/env bash
# Runs one busted spec file on the stock lua5.4 (busted's own launcher may point at another
# Lua). The sanitizer build sets BATON_LUA to an instrumented minimal interpreter.
set -euo pipefail
spec="$1"
src="${BATON_SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
export LUA_CPATH="${BATON_BUILD:-$src/build}/?.so;;"
export LUA_PATH="$src/lua/?.lua;$src/lua/?/init.lua;$src/?.lua;;"
runner=$(command -v busted)
exec "${BATON_LUA:-lua5.4}" "$runner" -o utfTerminal "$spec"
