#!/usr/bin/env bash
# Many durable queues (issue 13, goal 3), Levee and RabbitMQ quorum queues in one run: aggregate
# throughput over 1 queue and over N queues (one producer and one consumer per queue), 1 KiB,
# confirms and acks, fsync before confirm, each case on a fresh broker (Levee) or fresh queues
# (RabbitMQ, started by scripts/peers.sh), cases alternated.
#
# usage: scripts/bench-many-queues.sh [N] [WINDOW] [DURATION]   (defaults 1000, 10, 8s; 2 s warm-up)
#        WINDOW is each producer's in-flight limit and each consumer's credit / prefetch.
# needs: cargo build --release -p levee --features peers  (or LEVEE_BIN=...)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
WINDOW=${2:-10}
DURATION=${3:-8s}
BIN=$(realpath "${LEVEE_BIN:-${CARGO_TARGET_DIR:-target}/release/levee}")
OUT=$(mktemp -d "${TMPDIR:-/tmp}/levee-bench-queues.XXXXXX")
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
trap 'scripts/peers.sh stop >/dev/null 2>&1 || true' EXIT
scripts/peers.sh start >&2
RABBIT_PID=$(cat "${LEVEE_PEERS_DIR:-${TMPDIR:-/tmp}/levee-peers}/rabbitmq.pid")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

for q in 1 "$N"; do
    shape=(--queues "$q" --producers "$q" --consumers "$q" --inflight "$WINDOW" --credit "$WINDOW"
           --size 1KiB --duration "$DURATION" --warmup 2s --json)
    d=$(mktemp -d "$OUT/levee.XXXX")
    "$BIN" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 --amqp off --max-connections 10000 \
        --data-dir "$d/data" > "$d/out" 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do grep -q "wire listening" "$d/out" 2>/dev/null && break; sleep 0.1; done
    addr=$(sed -n 's/^levee: wire listening on //p' "$d/out")
    echo "== levee, $q queues" >&2
    "$BIN" bench --target levee --server "$addr" --server-pid "$pid" --fsync always "${shape[@]}" \
        --label "levee-$q" >> "$RESULTS" || echo "!! levee $q failed" >&2
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$d"
    echo "== rabbitmq quorum, $q queues" >&2
    "$BIN" bench --target rabbitmq --server-pid "$RABBIT_PID" --rabbit-queue quorum "${shape[@]}" \
        --label "rabbit-$q" >> "$RESULTS" || echo "!! rabbitmq $q failed" >&2
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$RESULTS" "$N" <<'EOF'
import json, sys
rows = {r["label"]: r for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip())}
n = sys.argv[2]
print("| broker | queues | msgs/s | p50 ms | p99 ms | peak server RSS MiB | N queues / 1 queue |")
print("|---|---:|---:|---:|---:|---:|---:|")
for b, name in (("levee", "Levee"), ("rabbit", "RabbitMQ quorum")):
    one = rows.get(f"{b}-1")
    for q in ("1", n):
        r = rows.get(f"{b}-{q}")
        if r is None:
            print(f"| {name} | {q} | failed | | | | |")
            continue
        l = r["latency_us"]
        rss = r.get("peak_rss_bytes") or 0
        ratio = f"{r['msgs_per_sec'] / one['msgs_per_sec']:.2f}" if one else ""
        print(f"| {name} | {q} | {r['msgs_per_sec']:,.0f} | {l['p50'] / 1000:.2f} | {l['p99'] / 1000:.2f} | {rss / 1048576:.0f} | {ratio} |")
EOF
echo "raw results: $RESULTS" >&2
