#!/usr/bin/env bash
# A 3-node Levee cluster on loopback, for tests and for trying it (docs/cluster.md).
#
#   scripts/cluster.sh start          start nodes 1-3; returns once the metadata group has a leader
#   scripts/cluster.sh stop           SIGTERM every node (clean shutdown)
#   scripts/cluster.sh kill N         SIGKILL node N
#   scripts/cluster.sh restart N      start node N again on its data
#   scripts/cluster.sh join N         start node N (4-9) with join = true, and add it
#                                     (levee cluster add-node); remove one with
#                                     levee cluster remove-node --id N, then kill N
#   scripts/cluster.sh status         levee cluster status --json
#
# With LEVEE_CLUSTER_BASE = B (default 5780), node N (1-9) listens on wire B+N, HTTP B+10+N,
# cluster (Raft) B+20+N and AMQP B+30+N. Data in $LEVEE_CLUSTER_DIR/nodeN (default
# ./levee-cluster); its config, log and pid file beside it (nodeN.toml, nodeN.log, nodeN.pid).
# The binary: $LEVEE_BIN, else target/debug/levee (or target/release/levee), else levee on PATH.
# A secured cluster (users, TLS; docs/cluster.md "Security"): $LEVEE_CLUSTER_EXTRA is TOML put
# in every node's file before its [cluster] section (e.g. [tls] and [[users]] tables),
# $LEVEE_CLUSTER_SECTION keys put in [cluster] (user, password_file, tls_ca), and
# $LEVEE_CLUSTER_CLI_ARGS options given to `levee` for the script's own `levee cluster`
# calls (e.g. --tls-ca FILE; LEVEE_USER / LEVEE_PASSWORD come from the environment).
set -euo pipefail

B=${LEVEE_CLUSTER_BASE:-5780}
DIR=${LEVEE_CLUSTER_DIR:-./levee-cluster}
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n ${LEVEE_BIN:-} ]]; then
  BIN=$LEVEE_BIN
elif [[ -x $HERE/target/debug/levee ]]; then
  BIN=$HERE/target/debug/levee
elif [[ -x $HERE/target/release/levee ]]; then
  BIN=$HERE/target/release/levee
else
  BIN=levee
fi
NODES="127.0.0.1:$((B + 21)),127.0.0.1:$((B + 22)),127.0.0.1:$((B + 23))"

config() {
  local n=$1
  cat <<EOF
listen = "127.0.0.1:$((B + n))"
http = "127.0.0.1:$((B + 10 + n))"
amqp = "127.0.0.1:$((B + 30 + n))"
data_dir = "$DIR/node$n"
${LEVEE_CLUSTER_EXTRA:-}

[cluster]
node_id = $n
listen = "127.0.0.1:$((B + 20 + n))"
${LEVEE_CLUSTER_SECTION:-}
EOF
  # Nodes 1-3 form the cluster; a later node joins it and knows them (they learn its
  # addresses when it is added).
  local members="1 2 3"
  if ((n > 3)); then
    echo "join = true"
    members="1 2 3 $n"
  fi
  for m in $members; do
    cat <<EOF

[[cluster.nodes]]
id = $m
cluster = "127.0.0.1:$((B + 20 + m))"
wire = "127.0.0.1:$((B + m))"
EOF
  done
}

start_node() {
  local n=$1
  mkdir -p "$DIR"
  config "$n" >"$DIR/node$n.toml"
  if [[ -f $DIR/node$n.pid ]] && kill -0 "$(cat "$DIR/node$n.pid")" 2>/dev/null; then
    echo "node $n already running (pid $(cat "$DIR/node$n.pid"))"
    return
  fi
  "$BIN" serve --config "$DIR/node$n.toml" >>"$DIR/node$n.log" 2>&1 &
  echo $! >"$DIR/node$n.pid"
  echo "node $n: pid $! wire 127.0.0.1:$((B + n)) cluster 127.0.0.1:$((B + 20 + n))"
}

signal_node() {
  local sig=$1 n=$2
  if [[ -f $DIR/node$n.pid ]]; then
    kill "-$sig" "$(cat "$DIR/node$n.pid")" 2>/dev/null || true
    if [[ $sig == KILL ]]; then
      # Reaped by the shell that started it, or gone already: wait until the port is free.
      while kill -0 "$(cat "$DIR/node$n.pid")" 2>/dev/null; do sleep 0.05; done
    fi
    rm -f "$DIR/node$n.pid"
  fi
}

case ${1:-} in
  start)
    for n in 1 2 3; do start_node "$n"; done
    # shellcheck disable=SC2086 # options, split on purpose
    "$BIN" ${LEVEE_CLUSTER_CLI_ARGS:-} cluster --nodes "$NODES" wait --timeout 60s >/dev/null
    echo "metadata group has a leader"
    ;;
  stop)
    for n in 1 2 3 4 5 6 7 8 9; do
      if [[ -f $DIR/node$n.pid ]]; then
        pid=$(cat "$DIR/node$n.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$DIR/node$n.pid"
      fi
    done
    ;;
  kill) signal_node KILL "${2:?node number}" ;;
  restart) start_node "${2:?node number}" ;;
  join)
    n=${2:?node number}
    ((n > 3 && n <= 9)) || { echo "join: a node number in 4-9"; exit 2; }
    start_node "$n"
    # shellcheck disable=SC2086
    "$BIN" ${LEVEE_CLUSTER_CLI_ARGS:-} cluster --nodes "$NODES" add-node --id "$n" \
      --cluster "127.0.0.1:$((B + 20 + n))" --wire "127.0.0.1:$((B + n))"
    ;;
  # shellcheck disable=SC2086
  status) "$BIN" ${LEVEE_CLUSTER_CLI_ARGS:-} cluster --nodes "$NODES" status --json ;;
  *)
    sed -n '2,21p' "$0"
    exit 2
    ;;
esac
