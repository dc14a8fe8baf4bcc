#!/bin/sh
# fleet.sh — runs examples/fleet.lua as 3 processes against a private redis-server (a free
# port, a temp dir, no persistence), prints each process's share of the shared limit and
# the fleet's total, then stops the server.   examples/fleet.sh   (from the repository's root)
set -e
BATON=${BATON_EXE:-build/baton}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
redis=$!
trap 'kill $redis 2>/dev/null; wait $redis 2>/dev/null; rm -rf "$dir"' EXIT
i=0; until redis-cli -p "$port" ping >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.01; done
pids=
for n in 1 2 3; do "$BATON" examples/fleet.lua "redis://127.0.0.1:$port" "worker-$n" >"$dir/out$n" & pids="$pids $!"; done
for p in $pids; do wait "$p"; done
cat "$dir/out1" "$dir/out2" "$dir/out3"
awk '{ s += $2 } END { print "fleet: " s " requests in 3 s (at most about 5 + 20 x 3 = 65)" }' "$dir/out1" "$dir/out2" "$dir/out3"
