#!/usr/bin/env bash
# Runs the MCP client benchmark: baton.mcp (bench/mcp_bench.lua) and the bare Node client
# (bench/mcp_node_client.js) against server-everything, interleaved, REPS times each
# (default 3), and prints the medians. usage: bench/mcp_run.sh [n] [reps]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
n="${1:-1000}"; reps="${2:-3}"
out=$(mktemp)
for _ in $(seq "$reps"); do
  "$top/build/baton" bench/mcp_bench.lua "$n" >>"$out"
  node bench/mcp_node_client.js "$n" >>"$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs, cpu = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault((r["workload"], r["impl"]), []).append(r["ms"])
    cpu.setdefault((r["workload"], r["impl"]), []).append(r["cpu_ms"])
for w in ("echo_sequential", "echo_16_in_flight"):
    b, nd = runs.get((w, "baton"), []), runs.get((w, "node"), [])
    mb, mn = statistics.median(b), statistics.median(nd)
    print(json.dumps({"workload": w, "baton_ms": round(mb, 1), "node_ms": round(mn, 1),
                      "baton_runs": [round(x, 1) for x in b], "node_runs": [round(x, 1) for x in nd],
                      "baton_vs_node": round(mb / mn, 2),
                      "client_cpu_ms": {"baton": round(statistics.median(cpu[(w, "baton")]), 1),
                                        "node": round(statistics.median(cpu[(w, "node")]), 1)}}))
PY
rm -f "$out"
