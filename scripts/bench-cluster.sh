#!/usr/bin/env bash
# A replicated queue against one node and against RabbitMQ quorum queues (issue 18), in one run
# on this machine, the three alternated round by round, each on fresh data:
#   single  one `levee serve`                      levee bench --server ADDR
#   r3      3 nodes on loopback (scripts/cluster.sh) levee bench --server N1,N2,N3 --replicas 3
#   rabbit  RabbitMQ, quorum queue (scripts/peers.sh) levee bench --target rabbitmq --rabbit-queue quorum
# Every case: 1 producer, 1 consumer, 1 KiB, confirms and acks, fsync before confirm (a
# replicated queue confirms once a majority of nodes fsynced it; one 2-core machine and one disk
# hold all three nodes, so every fsync happens three times on one device).
#
# usage: scripts/bench-cluster.sh [ROUNDS] [DURATION]     (defaults 2 and 8s; 2 s warm-up)
# needs: cargo build --release -p levee --features peers  (or LEVEE_BIN=...)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
DURATION=${2:-8s}
BIN=$(realpath "${LEVEE_BIN:-${CARGO_TARGET_DIR:-target}/release/levee}")
OUT=$(mktemp -d "${TMPDIR:-/tmp}/levee-bench-cluster.XXXXXX")
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
export LEVEE_BIN=$BIN LEVEE_CLUSTER_DIR=$OUT/cluster LEVEE_CLUSTER_BASE=${LEVEE_CLUSTER_BASE:-5780}
B=$LEVEE_CLUSTER_BASE
SHAPE=(--producers 1 --consumers 1 --size 1KiB --duration "$DURATION" --warmup 2s --json)

cleanup() {
    scripts/cluster.sh stop >/dev/null 2>&1 || true
    scripts/peers.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/peers.sh start >&2
RABBIT_PID=$(cat "${LEVEE_PEERS_DIR:-${TMPDIR:-/tmp}/levee-peers}/rabbitmq.pid")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

label() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['label']='$1'; d['round']=$2; print(json.dumps(d))"; }

for round in $(seq "$ROUNDS"); do
    # single node
    d=$(mktemp -d "$OUT/single.XXXX")
    "$BIN" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 --amqp off --data-dir "$d/data" > "$d/out" 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do grep -q "wire listening" "$d/out" 2>/dev/null && break; sleep 0.1; done
    addr=$(sed -n 's/^levee: wire listening on //p' "$d/out")
    echo "== round $round single ($addr)" >&2
    "$BIN" bench --target levee --server "$addr" --server-pid "$pid" --fsync always "${SHAPE[@]}" | label single "$round" >> "$RESULTS"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$d"
    # three nodes, replicas = 3
    echo "== round $round r3" >&2
    scripts/cluster.sh start >&2
    "$BIN" bench --target levee --server "127.0.0.1:$((B + 1)),127.0.0.1:$((B + 2)),127.0.0.1:$((B + 3))" \
        --replicas 3 "${SHAPE[@]}" | label r3 "$round" >> "$RESULTS"
    scripts/cluster.sh stop >&2
    rm -rf "$LEVEE_CLUSTER_DIR"
    # RabbitMQ quorum
    echo "== round $round rabbitmq quorum" >&2
    "$BIN" bench --target rabbitmq --server-pid "$RABBIT_PID" --rabbit-queue quorum "${SHAPE[@]}" | label rabbit "$round" >> "$RESULTS"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["label"]] = r
print("| round | single msg/s (p50 / p99 ms) | R3 msg/s (p50 / p99 ms) | RabbitMQ quorum msg/s (p50 / p99 ms) | R3 / single | R3 / RabbitMQ |")
print("|---|---|---|---|---:|---:|")
def cell(r):
    l = r["latency_us"]
    return f"{r['msgs_per_sec']:,.0f} ({l['p50'] / 1000:.2f} / {l['p99'] / 1000:.2f})"
for rnd in sorted(by):
    c = by[rnd]
    if not all(k in c for k in ("single", "r3", "rabbit")):
        print(f"| {rnd} | incomplete: {sorted(c)} |")
        continue
    s, r3, rb = c["single"], c["r3"], c["rabbit"]
    print(f"| {rnd} | {cell(s)} | {cell(r3)} | {cell(rb)} | {r3['msgs_per_sec'] / s['msgs_per_sec']:.2f} | {r3['msgs_per_sec'] / rb['msgs_per_sec']:.2f} |")
EOF
echo "raw results: $RESULTS" >&2
