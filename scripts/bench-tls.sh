#!/usr/bin/env bash
# TLS against plaintext (issue 11): `levee bench` 1P/1C 1 KiB, fsync always, against two brokers of
# the same binary: one plaintext, one with [tls] and a user (the bench logs in with --tls-ca,
# --user, --password). Alternated round by round, each on a fresh data directory.
# usage: scripts/bench-tls.sh [LEVEE_BINARY] [ROUNDS] (results in ./bench-tls/)
set -u
BIN=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/levee}")
ROUNDS=${2:-3}
mkdir -p bench-tls && cd bench-tls
# A CA and a server certificate for localhost / 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout server-key.pem -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
  -extfile san.ext -out server.pem 2>/dev/null
HASH=$(printf 'bench-pw' | "$BIN" passwd)
cat > tls.toml <<TOML
[[users]]
name = "bench"
password_hash = "$HASH"
permissions = [ { actions = ["admin"] } ]
[tls]
cert = "$PWD/server.pem"
key = "$PWD/server-key.pem"
TOML
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq 1 "$ROUNDS"); do
  for which in plain tls; do
    d=$(mktemp -d); port=$((20000 + RANDOM % 20000))
    cfg=(); client=()
    if [ $which = tls ]; then
      cfg=(--config "$PWD/tls.toml")
      client=(--tls-ca "$PWD/ca.pem" --user bench --password bench-pw)
    fi
    "$BIN" serve --listen 127.0.0.1:$port --http 127.0.0.1:0 --data-dir $d/data "${cfg[@]}" > $d/out 2>/dev/null &
    pid=$!; sleep 1
    "$BIN" "${client[@]}" bench --target levee --server 127.0.0.1:$port --server-pid $pid \
      --producers 1 --consumers 1 --size 1KiB --duration 5s --warmup 1s --fsync always --json \
      > $which-$rep.json 2>$which-$rep.err
    kill $pid; wait $pid 2>/dev/null; rm -rf $d
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$ROUNDS" <<'PY'
import json, sys
rounds = int(sys.argv[1])
for which in ("plain", "tls"):
    rates = []
    for r in range(1, rounds + 1):
        try:
            j = json.load(open(f"{which}-{r}.json"))
        except Exception as e:
            print(which, r, "no result:", e); continue
        rates.append((j["msgs_per_sec"], j["latency_actual_us"]["p50"], j["latency_actual_us"]["p99"], j["peak_rss_bytes"] >> 20))
    med = sorted(r[0] for r in rates)[len(rates) // 2] if rates else 0
    print(which, "msgs/s, p50 us, p99 us, peak RSS MiB per round:", rates, "median msgs/s:", med)
PY
