#!/usr/bin/env bash
# Installs what baton needs to build and test on Debian/Ubuntu. Idempotent: packages
# already present are skipped, so a second run does no network work.
set -euo pipefail
PKGS=(build-essential cmake pkg-config lua5.4 liblua5.4-dev libuv1-dev
      uthash-dev libreadline-dev libcurl4-openssl-dev lua-busted lua-check python3 openssl
      libhiredis-dev redis-server locales)
PKGS+=(luarocks lua-cjson)  # install_spec builds the rock (lua is reset below); json_spec: cjson.null
# `make bench` (BATON_BENCH=1) also needs the peers' toolchains: GNU time for peak RSS,
# taskset (util-linux), lua-luv for the Lua+luv peer, Rust and Debian's Tokio crates for the
# Tokio peer (built offline), Node.js for the Node peer (below).
if [ "${BATON_BENCH:-0}" = 1 ]; then
  PKGS+=(time util-linux lua-luv librust-tokio-dev librust-libc-dev)
  command -v cargo >/dev/null || PKGS+=(cargo)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# busted's launcher runs on /usr/bin/lua; keep that on 5.4 even if luarocks or lua-check
# (luacheck runs on its own lua5.1) pulled in 5.1.
if [ -x /usr/bin/lua5.4 ] && command -v update-alternatives >/dev/null; then
  cur=$(readlink -f /usr/bin/lua 2>/dev/null || true)
  if [ "$cur" != "/usr/bin/lua5.4" ]; then
    ${SUDO:-} update-alternatives --set lua-interpreter /usr/bin/lua5.4 >/dev/null 2>&1 || true
  fi
fi
# Node.js runs the real MCP servers the MCP specs talk to (Debian's nodejs + npm, unless a
# node is already installed); their versions are pinned in spec/fixtures/mcp/package-lock.json.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm || echo "deps.sh: node not installed; MCP specs will be skipped" >&2
fi
mcp="$(cd "$(dirname "$0")/.." && pwd)/spec/fixtures/mcp"
if [ -f "$mcp/package-lock.json" ] && command -v npm >/dev/null && [ ! -d "$mcp/node_modules" ]; then
  (cd "$mcp" && npm ci --no-audit --no-fund --loglevel=error) || echo "deps.sh: npm ci failed in $mcp" >&2
fi
