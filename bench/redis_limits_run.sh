#!/usr/bin/env bash
# Fleet limits on Redis: baton's Redis store beside Bottleneck (clustering mode) and
# rate-limiter-flexible (RateLimiterRedis), all on one private redis-server this script
# starts (a free port, a temp dir, no persistence) and stops. Workloads, at 1 and 64 in
# flight on one connection each: "lease" — acquire + release of a lease semaphore
# (baton: store:lease_acquire/lease_release; Bottleneck: a scheduled job, maxConcurrent =
# in flight); "rate" — rate-limit takes that never run dry (baton: store:gcra_take;
# rate-limiter-flexible: consume; Bottleneck: a job under a reservoir). Interleaved, medians
# of REPS. Prints ops/s and baton's ratio to each peer (the target is >= 2x).
# usage: bench/redis_limits_run.sh [n] [reps]     (npm install in bench/peers_redis first:
# the script runs it when node_modules is missing)
# BENCH_CPU=N (default 1) pins the server and every client to CPU N, as bench/run.sh pins
# each runtime: a round trip is then two context switches on one core, and what a client
# costs per op shows. BENCH_CPU=none leaves them unpinned: on a VM a round trip between
# two CPUs also pays the host's cross-CPU wake-up (~100 us here), the same for every peer.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-20000}; reps=${2:-3}
peers="$top/bench/peers_redis"
[ -d "$peers/node_modules" ] || (cd "$peers" && npm install --no-audit --no-fund >/dev/null)
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cpu=${BENCH_CPU-1}
pin=()
if [ "$cpu" != none ] && command -v taskset >/dev/null; then pin=(taskset -c "$cpu"); else cpu=none; fi
"${pin[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --loglevel warning --dir "$dir" > "$dir/log" 2>&1 & srv=$!
trap 'kill $srv 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
results="$dir/results"
bn=$((n / 20))  # Bottleneck runs a job in milliseconds: fewer of them
for conc in 1 64; do
  for _ in $(seq "$reps"); do
    for w in lease rate; do
      "${pin[@]}" "$top/build/baton" "$top/bench/redis_limits.lua" "redis://127.0.0.1:$port" "$w" "$n" "$conc" >> "$results"
      "${pin[@]}" node "$peers/limits.js" "$port" bottleneck "$w" "$bn" "$conc" >> "$results"
    done
    "${pin[@]}" node "$peers/limits.js" "$port" rlf rate "$n" "$conc" >> "$results"
    redis-cli -p "$port" flushall >/dev/null
  done
done
# Where the time goes on the server: each peer alone, 64 in flight, statistics reset
# before; from INFO commandstats, the top-level requests (scripts, and plain commands not
# run by a script) per op and the server's microseconds per op.
profile="$dir/profile"
for run in "baton lease" "baton rate" "bottleneck lease" "bottleneck rate" "rlf rate"; do
  set -- $run
  redis-cli -p "$port" config resetstat >/dev/null
  m=$n; [ "$1" = bottleneck ] && m=$bn
  if [ "$1" = baton ]; then
    "$top/build/baton" "$top/bench/redis_limits.lua" "redis://127.0.0.1:$port" "$2" "$m" 64 >/dev/null
  else
    node "$peers/limits.js" "$port" "$1" "$2" "$m" 64 >/dev/null
  fi
  echo "== $1 $2 $((2 * m))" >> "$profile"   # the runs do a warm-up round and a timed one
  redis-cli -p "$port" info commandstats | tr -d '\r' >> "$profile"
  redis-cli -p "$port" flushall >/dev/null
done
# The round trip's floor at 1 in flight: redis-benchmark's PING from one client
floor=""
if command -v redis-benchmark >/dev/null; then
  floor=$("${pin[@]}" redis-benchmark -p "$port" -c 1 -n 20000 -t ping -q 2>/dev/null | tr '\r' '\n' |
          awk '/PING_MBULK: [0-9.]+ requests/ {print $2}')
fi
echo "machine: $(nproc) CPUs, $(uname -r); server and clients pinned to CPU: $cpu; redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2); node $(node --version)"
[ -n "$floor" ] && echo "round-trip floor at 1 in flight (redis-benchmark, PING, 1 client): $floor requests/s"
python3 - "$results" "$reps" "$profile" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(peer, w, c):
    v = [r["ops_per_s"] for r in rows if r["peer"] == peer and r["workload"] == w and r["conc"] == c]
    return statistics.median(v) if v else None
print(f"medians of {sys.argv[2]}, ops/s (lease: acquire + release pairs; rate: takes)")
print(f"{'workload':<10}{'in flight':>10}{'baton':>12}{'bottleneck':>12}{'rlf':>12}{'/bottleneck':>13}{'/rlf':>8}")
for w in ("lease", "rate"):
    for c in (1, 64):
        b, bn, rl = med("baton", w, c), med("bottleneck", w, c), med("rlf", w, c)
        f = lambda x: f"{x:12.0f}" if x else f"{'-':>12}"
        r = lambda x: f"{b / x:.1f}x" if x else "-"
        print(f"{w:<10}{c:>10}{f(b)}{f(bn)}{f(rl)}{r(bn):>13}{r(rl):>8}")
print("\nper op on the server (64 in flight): requests (round trips; scripts and the commands"
      " not run by a script), server us")
cur = None
stats = {}
for line in open(sys.argv[3]):
    line = line.strip()
    if line.startswith("=="):
        _, peer, w, ops = line.split()
        cur = (peer, w, int(ops)); stats[cur] = {}
    elif line.startswith("cmdstat_") and cur:
        name, rest = line[8:].split(":", 1)
        f = dict(kv.split("=") for kv in rest.split(","))
        stats[cur][name] = (int(f["calls"]), int(f["usec"]))
for (peer, w, ops), st in stats.items():
    scripts = {k: v for k, v in st.items() if k in ("evalsha", "eval", "script|load")}
    # commands a client sent itself: anything not nested in a script can't be told apart
    # from nested ones, so count the scripts, and add the plain commands of a peer that
    # runs no script at all
    req = sum(c for c, _ in scripts.values()) or sum(c for c, _ in st.values())
    us = sum(u for _, u in scripts.values()) or sum(u for _, u in st.values())
    inner = ", ".join(f"{k} {c / ops:.1f}" for k, (c, _) in sorted(st.items(), key=lambda kv: -kv[1][0])
                      if k not in ("evalsha", "eval", "script|load", "config|resetstat", "info", "flushall", "ping"))
    print(f"  {peer:<11}{w:<6} {req / ops:4.1f} requests, {us / ops:5.1f} us   (inside: {inner})")
PY
