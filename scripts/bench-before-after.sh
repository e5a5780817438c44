#!/usr/bin/env bash
# Before/after of a broker change: the same `levee bench` harness (this checkout's) drives two
# broker binaries, alternated round by round, each on a fresh data directory, fsync always.
# usage: scripts/bench-before-after.sh OLD_LEVEE_BINARY [NEW_LEVEE_BINARY] (results in ./bench-ba/)
#   e.g. build the old commit in a git worktree (cargo build --release -p levee) and pass its binary.
set -u
OLD=${1:?usage: bench-before-after.sh OLD_LEVEE_BINARY [NEW_LEVEE_BINARY]}
NEW=${2:-${CARGO_TARGET_DIR:-target}/release/levee}
OLD=$(realpath "$OLD"); NEW=$(realpath "$NEW"); BENCH=$NEW
declare -A BIN=([base]=$OLD [new]=$NEW)
mkdir -p bench-ba && cd bench-ba
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in 1 2 3; do
  for which in base new; do
    for case in 1p1c 4p4c rate; do
      d=$(mktemp -d); port=$((20000 + RANDOM % 20000))
      ${BIN[$which]} serve --listen 127.0.0.1:$port --http 127.0.0.1:0 --data-dir $d/data > $d/out 2>/dev/null &
      pid=$!; sleep 1
      case $case in
        1p1c) args="--producers 1 --consumers 1 --size 1KiB";;
        4p4c) args="--producers 4 --consumers 4 --size 256";;
        rate) args="--producers 1 --consumers 1 --size 1KiB --rate 5000";;
      esac
      $BENCH bench --target levee --server 127.0.0.1:$port --server-pid $pid $args --duration 5s --warmup 1s --fsync always --json > $which-$case-$rep.json 2>$which-$case-$rep.err
      kill $pid; wait $pid 2>/dev/null; rm -rf $d
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
