#!/usr/bin/env bash
# Copies the peers' workloads from PEERS_DIR (default: ../shared/peers beside the
# checkout) into a scratch directory, builds them (Tokio offline from Debian's crate
# registry) and runs bench/compare.py: baton beside them, medians and ratios from the same go. usage: bench/run.sh [--reps N] [--only baton,tokio-ct]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
peers_src="${PEERS_DIR:-$top/../shared/peers}"
work="$top/build/peers"
if [ ! -d "$work" ]; then
  cp -r "$peers_src" "$work"
  chmod -R u+w "$work"
fi
cp -r "$top/bench/peers_extra/." "$work/"  # the Tokio peer with the channel workload (W5)
if command -v cargo >/dev/null; then
  (cd "$work/rust_tokio" && cargo build --release --offline -q) || echo "tokio peer not built" >&2
fi
python3 "$top/bench/compare.py" "$top/build/baton" "$work" "$@"
