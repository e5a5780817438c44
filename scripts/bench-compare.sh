#!/usr/bin/env bash
# Runs the standard comparison matrix of `levee bench` against RabbitMQ (quorum / classic) and NATS
# JetStream on this machine, prints a side-by-side table with Levee / peer ratios, and writes it
# (with the machine, versions and exact commands) into docs/BENCHMARKS.md, section
# "## Broker vs RabbitMQ and NATS JetStream".
#
#   1. 1 producer / 1 consumer, 1 KiB, unthrottled, fsync always (RabbitMQ quorum, JetStream default)
#   2. 4P / 4C, 256 B, unthrottled, fsync always
#   3. the same two with relaxed fsync (Levee interval:1000; RabbitMQ classic queue)
#   4. 1P/1C 1 KiB at 5,000 msg/s: latency percentiles (Levee at fsync always and interval:1000)
#   5. overload: producer unthrottled, one consumer acking 1,000 msg/s, queue limited to 64 MiB,
#      server RSS over 60 s
#
# usage: scripts/bench-compare.sh [--no-docs]   (env: DURATION=10s WARMUP=2s OVERLOAD=60s)
# Starts the peers with scripts/peers.sh and stops them again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
OVERLOAD="${OVERLOAD:-60s}"
WRITE_DOCS=1
export LEVEE_LOG="${LEVEE_LOG:-warn}"
[ "${1:-}" = "--no-docs" ] && WRITE_DOCS=0

cargo build --release -p levee --features peers
BIN="${CARGO_TARGET_DIR:-target}/release/levee"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/levee-bench-compare.XXXXXX")"
RESULTS="$OUT/results.jsonl"
COMMANDS="$OUT/commands.txt"
: > "$RESULTS"
: > "$COMMANDS"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
trap 'scripts/peers.sh stop' EXIT
scripts/peers.sh start
STATE="${LEVEE_PEERS_DIR:-${TMPDIR:-/tmp}/levee-peers}"
RABBIT_PID="$(cat "$STATE/rabbitmq.pid")"
NATS_PID="$(cat "$STATE/nats.pid")"

run() { # label, then bench flags
    local label="$1"; shift
    local cmd=(levee bench --label "$label" "$@" --json)
    echo "${cmd[*]}" | sed -e 's/ --server-pid [0-9]*//' >> "$COMMANDS"
    echo "== $label: ${cmd[*]}" >&2
    if ! "$BIN" bench --label "$label" "$@" --json >> "$RESULTS"; then
        echo "!! $label failed" >&2
    fi
}

T=(--duration "$DURATION" --warmup "$WARMUP")
RQ=(--target rabbitmq --server-pid "$RABBIT_PID")
NJ=(--target nats --server-pid "$NATS_PID")

for shape in "1p1c-1KiB --producers 1 --consumers 1 --size 1KiB" \
             "4p4c-256B --producers 4 --consumers 4 --size 256"; do
    set -- $shape; name="$1"; shift
    run "$name-always" --target levee "$@" "${T[@]}" --fsync always
    run "$name-always" "${RQ[@]}" "$@" "${T[@]}" --rabbit-queue quorum
    run "$name-always" "${NJ[@]}" "$@" "${T[@]}"
    run "$name-relaxed" --target levee "$@" "${T[@]}" --fsync interval:1000
    run "$name-relaxed" "${RQ[@]}" "$@" "${T[@]}" --rabbit-queue classic
done
run "rate5000-always" --target levee --size 1KiB --rate 5000 "${T[@]}" --fsync always
run "rate5000-always" "${RQ[@]}" --size 1KiB --rate 5000 "${T[@]}" --rabbit-queue quorum
run "rate5000-always" "${NJ[@]}" --size 1KiB --rate 5000 "${T[@]}"
run "rate5000-relaxed" --target levee --size 1KiB --rate 5000 "${T[@]}" --fsync interval:1000
OV=(--size 1KiB --consumer-rate 1000 --max-bytes 64MiB --duration "$OVERLOAD" --warmup 0s)
run "overload" --target levee "${OV[@]}" --overflow block
run "overload" "${RQ[@]}" "${OV[@]}" --overflow reject --rabbit-queue quorum
run "overload" "${NJ[@]}" "${OV[@]}" --overflow reject

VERSIONS="$(scripts/peers.sh versions)"
LOAD="before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo '+dirty')"
python3 - "$RESULTS" "$COMMANDS" "$VERSIONS" "$COMMIT" "$LOAD" > "$OUT/section.md" <<'PY'
import json, sys, platform, subprocess, os
results, commands, versions, commit, load = sys.argv[1:6]
runs = [json.loads(l) for l in open(results) if l.strip()]
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return "?"
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
fs = sh("df -T ${TMPDIR:-/tmp} | awk 'NR==2 {print $2}'")
ms = lambda us: f"{us/1000:.2f}" if us < 10000 else f"{us/1000:.1f}" if us < 100000 else f"{us/1000:.0f}"
name = lambda r: {"levee": "Levee", "rabbitmq": "RabbitMQ", "nats": "NATS JetStream"}[r["target"]] + f" ({r['variant']})"
def rss(r): return "-" if r.get("peak_rss_bytes") is None else f"{r['peak_rss_bytes']/1048576:.0f}"
out = []
w = out.append
w("## Broker vs RabbitMQ and NATS JetStream\n")
w(f"Measured with `scripts/bench-compare.sh` (`levee bench`, release build, levee commit `{commit}`) on "
  f"{os.cpu_count()} cores ({cpu}), {mem} RAM, Linux {platform.release()}, data directories on {fs}. "
  f"Peers: {versions.replace(chr(10), '; ')}, started by `scripts/peers.sh` on loopback with fresh data directories. "
  f"Load average (1/5/15 min) {load}: other work on the machine shares its 2 cores, so absolute figures vary between runs; the ratios come from one run of the matrix.\n")
w("Same semantics for every system: a fresh durable queue per run, persistent messages, publisher confirms "
  "with a window of 1000 unconfirmed messages per producer, manual acks with a prefetch / credit of 1000 per consumer, "
  "one connection per producer and per consumer. msgs/s is the sustained end-to-end rate (messages consumed and acked "
  "per second in the measured window, after the warm-up); latency is from the send time stamped in each message to its receipt.\n")
w("**Durability is not equal.** RabbitMQ quorum queues fsync before confirming; Levee at `fsync=always` too. "
  "Debian's nats-server 2.9 has no `sync_interval` setting: it acknowledges after write(2) and fsyncs in the background "
  "on a timer (every 60 s per the issue; NATS documents 2 minutes as the default of the `sync_interval` added in 2.10), so a JetStream confirm means \"in the page cache\". Levee is compared with it both at the same kind of "
  "durability (`fsync=1000ms`, still far stronger) and at the stronger `fsync=always`. RabbitMQ classic queues (relaxed cases) "
  "confirm persistent messages after a batched fsync.\n")
cases = [("1p1c-1KiB-always", "1. 1P/1C, 1 KiB, unthrottled, fsync always"),
         ("4p4c-256B-always", "2. 4P/4C, 256 B, unthrottled, fsync always"),
         ("1p1c-1KiB-relaxed", "3a. 1P/1C, 1 KiB, unthrottled, relaxed fsync"),
         ("4p4c-256B-relaxed", "3b. 4P/4C, 256 B, unthrottled, relaxed fsync"),
         ("rate5000-always", "4a. 1P/1C, 1 KiB, fixed 5,000 msg/s, fsync always"),
         ("rate5000-relaxed", "4b. 1P/1C, 1 KiB, fixed 5,000 msg/s, relaxed fsync")]
w("| case | system | msgs/s | MB/s | backlog growth msg/s | p50 ms | p99 ms | p99.9 ms | max ms | peak RSS MiB | Levee / peer |")
w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, title in cases:
    rows = [r for r in runs if r.get("label") == label]
    if label.endswith("-relaxed"):
        # JetStream's default durability is already relaxed: its row from the fsync-always case.
        rows += [r for r in runs if r.get("label") == label.replace("relaxed", "always") and r["target"] == "nats"]
    lev = next((r for r in rows if r["target"] == "levee"), None)
    for r in sorted(rows, key=lambda r: r["target"] != "levee"):
        if r["target"] == "levee" or lev is None:
            ratio = ""
        elif label.startswith("rate5000"):
            ratio = f"p99 {r['latency_us']['p99']/max(lev['latency_us']['p99'],1):.2f}x lower" if lev["latency_us"]["p99"] <= r["latency_us"]["p99"] else f"p99 {lev['latency_us']['p99']/max(r['latency_us']['p99'],1):.2f}x higher"
        else:
            ratio = f"{lev['msgs_per_sec']/max(r['msgs_per_sec'],1e-9):.2f}x"
        l = r["latency_us"]
        w(f"| {title} | {name(r)} | {r['msgs_per_sec']:.0f} | {r['mb_per_sec']:.1f} | {max(r['backlog_growth_per_sec'],0):.0f} | "
          f"{ms(l['p50'])} | {ms(l['p99'])} | {ms(l['p999'])} | {ms(l['max'])} | {rss(r)} | {ratio} |")
w("")
ov = [r for r in runs if r.get("label") == "overload"]
if ov:
    w("### Overload: one consumer acking 1,000 msg/s, producer unthrottled, queue limited to 64 MiB\n")
    n = max(len(r["timeline"]["rss_bytes"]) for r in ov)
    secs = [s for s in range(0, n, 10)] + ([n - 1] if (n - 1) % 10 else [])
    w("| system | limit behaviour | confirmed | refused | consumed | " + " | ".join(f"RSS {s}s MiB" for s in secs) + " | peak RSS MiB |")
    w("|---|---|---:|---:|---:|" + "---:|" * len(secs) + "---:|")
    beh = {"levee": "overflow=block: producer waits for publish credit",
           "rabbitmq": "x-overflow=reject-publish: publishes nacked",
           "nats": "discard=new: publishes refused"}
    for r in ov:
        t = r["timeline"]["rss_bytes"]
        cells = " | ".join(f"{t[s]/1048576:.0f}" if s < len(t) and t[s] else "-" for s in secs)
        w(f"| {name(r)} | {beh[r['target']]} | {r['confirmed']} | {r['rejected']} | {r['consumed']} | {cells} | {rss(r)} |")
    w("")
w("Commands (each run also gets `--server-pid PID` of the peer for RSS sampling; Levee is started by the tool):\n")
w("```")
w(open(commands).read().rstrip())
w("```")
print("\n".join(out))
PY
cat "$OUT/section.md"
echo "results: $RESULTS" >&2
if [ "$WRITE_DOCS" = 1 ]; then
    python3 - "$OUT/section.md" docs/BENCHMARKS.md <<'PY'
# Replaces the generated part of the section (between the bench-compare markers) and keeps any
# hand-written text around it; without markers, replaces (or appends) the whole section.
import sys
generated = open(sys.argv[1]).read().rstrip() + "\n"
path = sys.argv[2]
doc = open(path).read()
head = "## Broker vs RabbitMQ and NATS JetStream"
begin, end = "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->"
body = generated.split("\n", 1)[1].lstrip("\n")
block = begin + "\n" + body + end + "\n"
start = doc.find(head)
if start < 0:
    doc = doc.rstrip() + "\n\n" + head + "\n\n" + block
elif begin in doc[start:] and end in doc[start:]:
    b = doc.index(begin, start)
    e = doc.index(end, b) + len(end) + 1
    doc = doc[:b] + block + doc[e:]
else:
    nxt = doc.find("\n## ", start + len(head))
    doc = doc[:start] + head + "\n\n" + block + ("\n" + doc[nxt + 1:] if nxt >= 0 else "")
open(path, "w").write(doc)
PY
    echo "wrote docs/BENCHMARKS.md" >&2
fi
