#!/usr/bin/env bash
# Issue 13 before/after: run in a directory holding ./levee-new (this commit's release binary)
# and, optionally, ./levee-base (the base commit's). The new harness drives every variant,
# alternated, fsync always:
#   base  ./levee-base serve                      (if present)
#   new   ./levee-new serve                       (disk queues on the shared WAL, the default)
#   nowal ./levee-new serve with [wal] enabled = false (standalone per-queue logs)
#   wb0   ./levee-new serve with [wal] write_behind_bytes = 0 (the default: segments written at once)
#   wb4   ./levee-new serve with [wal] write_behind_bytes = "4MiB" (write-behind on)
# Only some variants: VARIANTS="new nowal" scripts/bench-wal-ba.sh
declare -A BIN=([base]=./levee-base [new]=./levee-new [nowal]=./levee-new [wb0]=./levee-new [wb4]=./levee-new)
printf '[wal]\nenabled = false\n' > nowal.toml
printf '[wal]\nwrite_behind_bytes = 0\n' > wb0.toml
printf '[wal]\nwrite_behind_bytes = "4MiB"\n' > wb4.toml
declare -A EXTRA=([base]="" [new]="" [nowal]="--config nowal.toml" [wb0]="--config wb0.toml" [wb4]="--config wb4.toml")
variants=${VARIANTS:-"base new nowal"}
[ -x ./levee-base ] || variants=${variants//base/}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in 1 2; do
  for which in $variants; do
    for case in rate 1p1c 4p4c; do
      d=$(mktemp -d -p .); port=$((20000 + RANDOM % 20000))
      ${BIN[$which]} serve --listen 127.0.0.1:$port --http 127.0.0.1:0 --amqp off --data-dir $d/data ${EXTRA[$which]} > $d/out 2>/dev/null &
      pid=$!; sleep 1
      case $case in
        1p1c) args="--producers 1 --consumers 1 --size 1KiB";;
        4p4c) args="--producers 4 --consumers 4 --size 256";;
        rate) args="--producers 1 --consumers 1 --size 1KiB --rate 5000";;
      esac
      ./levee-new bench --target levee --server 127.0.0.1:$port --server-pid $pid $args --duration 4s --warmup 1s --fsync always --json > $which-$case-$rep.json 2>/dev/null
      kill $pid; wait $pid 2>/dev/null; rm -rf $d
      python3 -c "
import json;d=json.load(open('$which-$case-$rep.json'));print('$which $case $rep', round(d['msgs_per_sec']), d['latency_actual_us']['p50'], d['latency_actual_us']['p99'], d.get('peak_rss_bytes',0)//1048576)"
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
