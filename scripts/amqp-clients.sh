#!/bin/sh
# Installs the AMQP client libraries the tests drive against the real levee binary, into target/:
#   target/amqp-venv/          a Python venv with pika, celery and kombu
#   target/amqp-node/          npm's amqplib
# Idempotent: a stamp file per client records the pinned versions; an up-to-date install is left
# alone. Called by the tests themselves (crates/levee/tests/amqp_*.rs), so `cargo test` on a fresh
# machine with python3 and node works. Usage: scripts/amqp-clients.sh [python|node]...
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target"
PY_PKGS="pika==1.3.2 celery==5.5.3 kombu==5.5.4"
NODE_PKGS="amqplib@0.10.9"
what=${*:-python node}
# One installer at a time (tests run in parallel).
exec 9>"$target/.amqp-clients.lock"
flock 9
for w in $what; do
  case $w in
    python)
      venv=$target/amqp-venv
      if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$PY_PKGS" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check $PY_PKGS
        echo "$PY_PKGS" > "$venv/.stamp"
      fi
      echo "$venv/bin/python"
      ;;
    node)
      dir=$target/amqp-node
      if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$NODE_PKGS" ]; then
        mkdir -p "$dir"
        (cd "$dir" && npm install --silent --no-audit --no-fund --prefix "$dir" $NODE_PKGS >/dev/null)
        echo "$NODE_PKGS" > "$dir/.stamp"
      fi
      echo "$dir/node_modules"
      ;;
    *) echo "unknown client $w" >&2; exit 2 ;;
  esac
done
