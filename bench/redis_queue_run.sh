#!/usr/bin/env bash
# Work-queue benchmark: baton.redis.queue + baton.runner{ queue = } beside BullMQ (npm,
# bench/redis/package.json) on the same private redis-server (a free port, a temp dir, no
# persistence), started and stopped here. Jobs/s through the queue: add, process, ack, from
# the first add to the last ack, one worker process each, interleaved, medians of REPS.
# usage: bench/redis_queue_run.sh [n] [reps]     (npm ci in bench/redis first, or it is run)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-20000}; reps=${2:-3}
BATON=${BATON_EXE:-$top/build/baton}
[ -d "$top/bench/redis/node_modules/bullmq" ] || (cd "$top/bench/redis" && npm ci --no-audit --no-fund >/dev/null)
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
redis=$!
trap 'kill $redis 2>/dev/null; wait $redis 2>/dev/null; rm -rf "$dir"' EXIT
i=0; until redis-cli -p "$port" ping >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.01; done
results="$dir/results"
for conc in 16 64; do
  for _ in $(seq "$reps"); do
    "$BATON" "$top/bench/redis_queue_bench.lua" "redis://127.0.0.1:$port" "$n" "$conc" >> "$results"
    node "$top/bench/redis/bullmq_bench.js" "$port" "$n" "$conc" >> "$results"
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for conc in (16, 64):
    med = {p: statistics.median(r["jobs_per_s"] for r in rows if r["peer"] == p and r["conc"] == conc)
           for p in ("baton", "bullmq")}
    print(f"queue add+process+ack conc={conc:2d}: baton {med['baton']:8.0f} jobs/s  "
          f"bullmq {med['bullmq']:8.0f} jobs/s  ratio {med['baton'] / med['bullmq']:.2f}x (target >= 1.5x)")
PY
