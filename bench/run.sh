#!/usr/bin/env bash
# Copies the peers' workloads from the directory PEERS_DIR names (not part of this
# repository; once copied, build/peers is reused) into a scratch directory, builds them
# (Tokio offline from Debian's crate registry, the page-fault calibration in c_floor) and
# runs bench/compare.py: the baton executable and baton.so in a stock lua5.4 beside them,
# every process pinned to one core, medians of 5 and ratios from the same go, under a line
# saying which machine it was.
# usage: bench/run.sh [--reps N] [--cpu N] [--only baton,baton.so,tokio-ct,node,lua54-luv,
#        python-asyncio] [--json FILE]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work="$top/build/peers"
if [ ! -d "$work" ]; then
  [ -n "${PEERS_DIR:-}" ] && [ -d "$PEERS_DIR" ] \
    || { echo "bench/run.sh: set PEERS_DIR to the peers' workloads (Tokio, Node, asyncio, Lua+luv)" >&2; exit 1; }
  cp -r "$PEERS_DIR" "$work"
  chmod -R u+w "$work"
fi
cp -r "$top/bench/peers_extra/." "$work/"  # the Tokio peer with the channel workload (W5)
if command -v cargo >/dev/null; then
  (cd "$work/rust_tokio" && cargo build --release --offline -q) || echo "tokio peer not built" >&2
fi
if [ ! -x "$work/c_floor/pagefault_cost" ]; then
  make -s -C "$work/c_floor" pagefault_cost || echo "page-fault calibration not built" >&2
fi
for need in taskset /usr/bin/time lua5.4; do
  command -v "$need" >/dev/null || { echo "bench/run.sh: $need is missing" >&2; exit 1; }
done
[ -x "$top/build/baton" ] && [ -f "$top/build/baton.so" ] \
  || { echo "bench/run.sh: build first (make build)" >&2; exit 1; }
python3 "$top/bench/compare.py" "$top/build/baton" "$work" "$@"
