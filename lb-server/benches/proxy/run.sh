#!/usr/bin/env bash
# lb-server's MQTT proxy beside HAProxy 2.6 in TCP mode, in one run, in
# front of the same three mosquitto brokers:
#
#   lb-server/benches/proxy/run.sh [ROUNDS]     (default 3 rounds, ~2 min)
#
# - connect: CONNECT -> CONNACK per second, 16 threads, a fresh client id
#   per connection (each proxy parses the CONNECT and hashes the client id:
#   lb-server by its ring and pins, HAProxy by `balance hash` over
#   mqtt_field_value(connect,client_identifier) with consistent hashing);
# - publish: QoS 0 PUBLISH, 1 KiB payloads, 4 connections, MB/s the path
#   takes (the proxy's backpressure bounds it).
#
# Both proxies run one thread (lb-server's reactor is one thread; HAProxy
# nbthread 1). Each round runs direct-to-broker, lb-server and HAProxy in
# turn, so drift hits all three alike; medians are printed with the ratio
# lb-server / HAProxy. Needs mosquitto and haproxy (scripts/need mqtt haproxy).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
DUR=${DSF_BENCH_SECONDS:-5}
"$ROOT/scripts/need" mqtt haproxy
# HAProxy wants 2 descriptors per connection of its maxconn.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q -p lb-server --bin lb-server --example mqtt_load
LB=$ROOT/target/release/lb-server
LOAD=$ROOT/target/release/examples/mqtt_load
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

BROKERS=(21884 21885 21886)
for p in "${BROKERS[@]}"; do
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n' "$p" >"$WORK/m$p.conf"
    /usr/sbin/mosquitto -c "$WORK/m$p.conf" >/dev/null 2>&1 &
    pids+=($!)
done

printf 'cli = "bench"\n' >"$WORK/keys.toml"
chmod 600 "$WORK/keys.toml"
DSF_CLUSTER_SECRET=bench RUST_LOG=warn "$LB" --app-keys "$WORK/keys.toml" \
    --listen 127.0.0.1:26300 --cluster-listen 127.0.0.1:26200 \
    --backend b1=127.0.0.1:21884 --backend b2=127.0.0.1:21885 --backend b3=127.0.0.1:21886 \
    --proxy-listen 127.0.0.1:21883 --proxy-protocol mqtt --max-conns 9000 2>"$WORK/lb.log" &
pids+=($!)

cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend mqtt
    bind 127.0.0.1:21893
    tcp-request inspect-delay 10s
    tcp-request content reject unless { req.payload(0,0),mqtt_is_valid }
    default_backend brokers
backend brokers
    balance hash req.payload(0,0),mqtt_field_value(connect,client_identifier)
    hash-type consistent
    server b1 127.0.0.1:21884
    server b2 127.0.0.1:21885
    server b3 127.0.0.1:21886
CFG
haproxy -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
pids+=($!)

for port in 21884 21885 21886 21883 21893; do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done

echo "# $(date -u '+%F %T') UTC, $(nproc) cores, ${DUR}s per run, $ROUNDS rounds"
echo "# mosquitto $(/usr/sbin/mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'), $(haproxy -v | head -1)"
declare -A connect publish
for r in $(seq 1 "$ROUNDS"); do
    for path in direct:21884 lb-server:21883 haproxy:21893; do
        name=${path%%:*} port=${path##*:}
        c=$("$LOAD" connect --target "127.0.0.1:$port" --threads 16 --duration "$DUR")
        p=$("$LOAD" publish --target "127.0.0.1:$port" --conns 4 --size 1024 --duration "$DUR")
        echo "round $r $name: $c $p"
        connect[$name]+="$(sed -E 's/.*"connects_per_s":([0-9.]+).*/\1/' <<<"$c") "
        publish[$name]+="$(sed -E 's/.*"mb_per_s":([0-9.]+).*/\1/' <<<"$p") "
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
printf '%-10s %18s %14s\n' path "connect/s (median)" "publish MB/s"
for name in direct lb-server haproxy; do
    printf '%-10s %18s %14s\n' "$name" "$(median <<<"${connect[$name]}")" "$(median <<<"${publish[$name]}")"
done
cl=$(median <<<"${connect[lb-server]}"); ch=$(median <<<"${connect[haproxy]}")
pl=$(median <<<"${publish[lb-server]}"); ph=$(median <<<"${publish[haproxy]}")
echo
echo "lb-server / HAProxy: connect $(awk -v a="$cl" -v b="$ch" 'BEGIN {printf "%.2f", a/b}')x, publish $(awk -v a="$pl" -v b="$ph" 'BEGIN {printf "%.2f", a/b}')x"
