#!/bin/sh
# work_queue.sh — runs examples/work_queue.lua as a producer of 300 jobs and 3 workers
# against a private redis-server (a free port, a temp dir, no persistence), prints each
# worker's share and what the queue holds at the end, then stops the server.
#   examples/work_queue.sh   (from the repository's root)
set -e
BATON=${BATON_EXE:-build/baton}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
redis=$!
trap 'kill $redis 2>/dev/null; wait $redis 2>/dev/null; rm -rf "$dir"' EXIT
i=0; until redis-cli -p "$port" ping >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.01; done
url="redis://127.0.0.1:$port"
"$BATON" examples/work_queue.lua "$url" producer 300
pids=
for n in 1 2 3; do "$BATON" examples/work_queue.lua "$url" "worker-$n" >"$dir/out$n" & pids="$pids $!"; done
for p in $pids; do wait "$p"; done
cat "$dir/out1" "$dir/out2" "$dir/out3"
shares=$(awk '{ s += $2 } END { print s }' "$dir/out1" "$dir/out2" "$dir/out3")
echo "fleet: $shares jobs done by 3 workers, counted $(redis-cli -p "$port" GET work_queue:done)," \
     "left in the stream $(redis-cli -p "$port" XLEN work_queue:jobs)," \
     "dead-lettered $(redis-cli -p "$port" XLEN work_queue:jobs:dead)"
