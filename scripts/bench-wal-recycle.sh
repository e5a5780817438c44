#!/usr/bin/env bash
# WAL file recycling A/B (issue 13, the p99.9 stall at WAL rotations): one binary, alternated
# rounds, [wal] recycle_files = 0 (full WAL files deleted, as before) against the default 1.
# Each round starts a fresh broker and runs the fixed-rate latency case:
#   levee bench --size 1KiB --rate 5000 --fsync always --duration $DUR --warmup 2s
# usage: scripts/bench-wal-recycle.sh [LEVEE_BIN] [ROUNDS] [DURATION]
set -euo pipefail
BIN=${1:-target/release/levee}
ROUNDS=${2:-3}
DUR=${3:-30s}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '[wal]\nrecycle_files = 0\n' > "$work/delete.toml"
printf '[wal]\nrecycle_files = 1\n' > "$work/recycle.toml"
for r in $(seq 1 "$ROUNDS"); do
  for v in delete recycle; do
    d="$work/data-$v-$r"
    "$BIN" serve --listen 127.0.0.1:7801 --http 127.0.0.1:7802 --amqp off --data-dir "$d" \
      --config "$work/$v.toml" > "$work/serve.log" 2>&1 &
    pid=$!
    sleep 1.5
    "$BIN" bench --target levee --server 127.0.0.1:7801 --server-pid "$pid" --size 1KiB \
      --rate 5000 --fsync always --duration "$DUR" --warmup 2s --json > "$work/out.json"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c '
import json, sys
l = json.load(open(sys.argv[1]))["latency_us"]
ms = lambda k: "%.2f ms" % (l[k] / 1000)
print("round", sys.argv[2], sys.argv[3].ljust(8), "p50", ms("p50"), " p99", ms("p99"),
      " p99.9", ms("p999"), " max", ms("max"))
' "$work/out.json" "$r" "$v"
    rm -rf "$d"
  done
done
