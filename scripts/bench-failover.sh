#!/usr/bin/env bash
# Failover time of a replicated queue (issue 18: leader killed -> confirms resume, goal <= 5 s):
# per round, a fresh 3-node cluster on loopback (scripts/cluster.sh), one producer publishing
# 1 KiB messages with confirms at RATE msg/s to a replicas = 3 queue, SIGKILL of the queue's
# leader after 5 s, 15 s in all (crates/levee/examples/failover.rs measures). Prints a markdown
# table row per round.
#
# usage: scripts/bench-failover.sh [ROUNDS] [RATE]     (defaults 3 and 500)
# needs: cargo build --release -p levee --example failover  (or LEVEE_BIN=... FAILOVER_BIN=...)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
RATE=${2:-500}
T=${CARGO_TARGET_DIR:-target}/release
BIN=$(realpath "${LEVEE_BIN:-$T/levee}")
FAILOVER=$(realpath "${FAILOVER_BIN:-$T/examples/failover}")
OUT=$(mktemp -d "${TMPDIR:-/tmp}/levee-bench-failover.XXXXXX")
export LEVEE_BIN=$BIN LEVEE_CLUSTER_DIR=$OUT/cluster LEVEE_CLUSTER_BASE=${LEVEE_CLUSTER_BASE:-5780}
B=$LEVEE_CLUSTER_BASE
trap 'scripts/cluster.sh stop >/dev/null 2>&1 || true' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "| round | killed | new leader | failover ms (last confirm before the kill -> first after) | longest confirm gap ms | p50 / p99 ms before | p50 / p99 ms after | confirmed | sent again |"
echo "|---|---|---|---:|---:|---|---|---:|---:|"
for round in $(seq "$ROUNDS"); do
    scripts/cluster.sh start >&2
    json=$("$FAILOVER" "127.0.0.1:$((B + 1)),127.0.0.1:$((B + 2)),127.0.0.1:$((B + 3))" \
        "127.0.0.1:$((B + 21)),127.0.0.1:$((B + 22)),127.0.0.1:$((B + 23))" \
        "scripts/cluster.sh kill {node} >&2" "$RATE" 5 15)
    echo "$json" >> "$OUT/results.jsonl"
    python3 -c "
import json,sys
d=json.loads(sys.argv[1])
print(f\"| {sys.argv[2]} | {d['killed_leader']} | {d['new_leader']} | {d['failover_ms']:,.0f} | {d['longest_gap_ms']:,.0f} | {d['before_p50_ms']:.2f} / {d['before_p99_ms']:.2f} | {d['after_p50_ms']:.2f} / {d['after_p99_ms']:.2f} | {d['confirmed']:,} | {d['resent']} |\")
" "$json" "$round"
    scripts/cluster.sh stop >&2
    rm -rf "$LEVEE_CLUSTER_DIR"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "raw results: $OUT/results.jsonl" >&2
