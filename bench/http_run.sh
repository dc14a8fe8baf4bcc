#!/usr/bin/env bash
# HTTP client benchmark: baton.http beside Node's http client against the same local Node
# server, interleaved, medians of REPS. usage: bench/http_run.sh [n] [reps]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-20000}; reps=${2:-3}
out=$(mktemp); node "$top/bench/http_server.js" > "$out" & srv=$!
trap 'kill $srv 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 50); do grep -q PORT "$out" && break; sleep 0.1; done
port=$(awk '/PORT/ {print $2}' "$out")
results=$(mktemp)
for conc in 1 16; do
  for _ in $(seq "$reps"); do
    "$top/build/baton" "$top/bench/http_bench.lua" "$port" "$n" "$conc" >> "$results"
    node "$top/bench/http_node_client.js" "$port" "$n" "$conc" >> "$results"
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for conc in (1, 16):
    med = {p: statistics.median(r["ops_per_s"] for r in rows if r["peer"] == p and r["conc"] == conc)
           for p in ("baton", "node")}
    print(f"http_get conc={conc:2d}: baton {med['baton']:8.0f}/s  node {med['node']:8.0f}/s  "
          f"ratio {med['baton'] / med['node']:.2f}x")
PY
rm -f "$results"
