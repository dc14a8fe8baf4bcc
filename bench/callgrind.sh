#!/bin/bash
# Instructions per operation of a bench/bench.lua workload, counted by callgrind.
#
# usage: bench/callgrind.sh <baton executable> <workload> [n1 [n2]]
#   e.g. bench/callgrind.sh build/baton deadline_fanout
# Runs the workload at two sizes (default 2000 and 4000) under valgrind --tool=callgrind
# and prints (instructions(n2) - instructions(n1)) / (n2 - n1): startup, module loading
# and the final collection cancel out, what is left is the cost of one task (W1, W2') or
# one round (W4). Lua randomizes its string hashes from the clock, so when the collector runs
# moves a little from run to run (W4: +-2%): the pair is measured CG_RUNS times (default
# 3) and the median is printed, the range after it. Build RelWithDebInfo (bench/README.md's
# figures are from such a build). CG_ARGS passes more options to callgrind; CG_OUT=file
# keeps the last n2 run's profile (then: callgrind_annotate --inclusive=yes file, or
# --auto=yes for per-line counts).
set -eu
if [ $# -lt 2 ]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
exe=$1; w=$2; a=${3:-2000}; b=${4:-4000}; runs=${CG_RUNS:-3}
bench=$(cd "$(dirname "$0")" && pwd)/bench.lua
ir() {
  valgrind --tool=callgrind --callgrind-out-file="$2" ${CG_ARGS:-} "$exe" "$bench" "$w" "$1" 2>&1 |
    grep -o "refs: *[0-9,]*" | tr -d ', refs:'
}
per=()
for _ in $(seq "$runs"); do
  x=$(ir "$a" /dev/null)
  y=$(ir "$b" "${CG_OUT:-/dev/null}")
  per+=($(( (y - x) / (b - a) )))
done
sorted=($(printf '%s\n' "${per[@]}" | sort -n))
echo "$w ${sorted[$(( runs / 2 ))]} instr/op (${sorted[0]}..${sorted[$(( runs - 1 ))]})"
