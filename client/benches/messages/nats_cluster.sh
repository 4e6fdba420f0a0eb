#!/usr/bin/env bash
# A 3-node NATS cluster with JetStream on 127.0.0.1, the peer of dsf's
# messaging in client/benches/messages:
#
#   nats_cluster.sh start DIR    prints the three client URLs once all answer
#   nats_cluster.sh stop DIR
#
# Node n (1..3) takes client port BASE+n-1, cluster port BASE+100+n-1 and
# monitoring port BASE+200+n-1, BASE being $NATS_BASE_PORT (default 14222);
# its config, log, pid file and JetStream store are DIR/n*. Needs the Debian
# package nats-server (2.9.x), installed here when run as root.
set -euo pipefail
usage() { echo "usage: $0 start|stop DIR   (env NATS_BASE_PORT, default 14222)" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD=$1 DIR=$2 BASE=${NATS_BASE_PORT:-14222}

stop() {
  for n in 1 2 3; do
    [ -f "$DIR/n$n.pid" ] || continue
    pid=$(cat "$DIR/n$n.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/n$n.pid"
  done
}

case $CMD in
start)
  if ! command -v nats-server >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq nats-server >/dev/null
    else echo "nats-server is missing: apt-get install -y nats-server (as root)" >&2; exit 1; fi
  fi
  mkdir -p "$DIR"
  for n in 1 2 3; do
    [ -f "$DIR/n$n.pid" ] && kill -0 "$(cat "$DIR/n$n.pid")" 2>/dev/null && { echo "node $n already runs in $DIR; stop it first" >&2; exit 1; }
  done
  routes="nats-route://127.0.0.1:$((BASE+100)), nats-route://127.0.0.1:$((BASE+101)), nats-route://127.0.0.1:$((BASE+102))"
  for n in 1 2 3; do
    mkdir -p "$DIR/n$n.js"
    cat >"$DIR/n$n.conf" <<EOF
server_name: n$n
host: 127.0.0.1
port: $((BASE+n-1))
http: "127.0.0.1:$((BASE+200+n-1))"
jetstream { store_dir: "$DIR/n$n.js" }
cluster { name: bench, listen: "127.0.0.1:$((BASE+100+n-1))", routes: [ $routes ] }
EOF
    nohup nats-server -c "$DIR/n$n.conf" >"$DIR/n$n.log" 2>&1 &
    echo $! >"$DIR/n$n.pid"
  done
  # /healthz turns ok once the node serves JetStream and knows the meta leader.
  deadline=$((SECONDS+30))
  for n in 1 2 3; do
    until curl -fs "http://127.0.0.1:$((BASE+200+n-1))/healthz" >/dev/null; do
      if ! kill -0 "$(cat "$DIR/n$n.pid")" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
        echo "node $n did not come up; tail of $DIR/n$n.log:" >&2; tail -5 "$DIR/n$n.log" >&2; stop; exit 1
      fi
      sleep 0.2
    done
  done
  for n in 1 2 3; do echo "nats://127.0.0.1:$((BASE+n-1))"; done
  ;;
stop) stop ;;
*) usage ;;
esac
