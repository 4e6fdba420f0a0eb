#!/usr/bin/env bash
# Cross-node messaging beside NATS (JetStream for the durable comparison,
# core NATS for reference), in one run, on this machine:
#
#   client/benches/messages/run.sh [MESSAGES] [WINDOW]   (default 20000 and 1; ~1 min)
#
# dsf: the local cluster of scripts/cluster (3 app servers, a balancer, a
# collector, MariaDB), started if it is not running. `msg_bench` sends
# through one app server to 16 recipients whose subscriptions are on the
# others: stored (MariaDB), then peer.notify, then pushed. NATS: three
# nats-server nodes with JetStream (nats_cluster.sh), senders on node 1,
# recipients on node 2, a file-stored stream of one replica and a durable
# pull consumer per recipient. Both: 16 senders, each send awaited (stored)
# before the next, or with WINDOW > 1 that many in flight per sender (dsf:
# messages::send_many on one connection; NATS: that many PubAcks
# outstanding); 64-byte padding, 1,000 warm-up messages first; latency is
# send to receipt on one clock; at most 100 unacknowledged messages per
# recipient on both sides.
#
# The JetStream figure is the Rust client (nats-rs/, async-nats), its
# recipients acknowledging every 25th message (AckAll) as dsf's do: the
# peer as fast as it goes here. nats-py's figure (nats_bench.py, each
# message acked) follows for reference: one Python process is its limit.
#
# Needs nats-server (Debian) and nats-py (pip); installs them as root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$ROOT"
N=${1:-20000}
WINDOW=${2:-1}
HERE=$ROOT/client/benches/messages

python3 -c 'import nats' 2>/dev/null || pip install -q nats-py
cargo build --release -q -p dsf-client --example msg_bench
cargo build --release -q --manifest-path "$HERE/nats-rs/Cargo.toml" --target-dir "$ROOT/target/nats-rs"
scripts/cluster status >/dev/null 2>&1 || scripts/cluster up >/dev/null
BENCH="$ROOT/target/release/examples/msg_bench"

NATS_DIR=$(mktemp -d /tmp/dsf-nats-bench.XXXXXX)
trap '"$HERE/nats_cluster.sh" stop "$NATS_DIR"; rm -rf "$NATS_DIR"' EXIT
mapfile -t URLS < <("$HERE/nats_cluster.sh" start "$NATS_DIR")
NATS=(--send-url "${URLS[0]}" --recv-url "${URLS[1]}" --messages "$N" --warmup 1000 --window "$WINDOW")

echo "# $(date -u '+%F %T') UTC, $(nproc) cores shared by servers and load, $N messages, 16 senders, 16 recipients, window $WINDOW;"
echo "# nats-server $(nats-server --version | awk '{print $2}'), async-nats $(awk '/^name = "async-nats"/ {getline; gsub(/version = |"/, ""); print}' "$HERE/nats-rs/Cargo.lock"), nats-py $(python3 -c 'import importlib.metadata as m; print(m.version("nats-py"))'), $(mariadbd --version 2>/dev/null | awk '{print $3}' || echo mariadb)"
echo "dsf:            $("$BENCH" --lb 127.0.0.1:6300 --app cli --secret-file "$ROOT/.dsf/app.secret" --messages "$N" --warmup 1000 --window "$WINDOW")"
echo "nats jetstream: $("$ROOT/target/nats-rs/release/nats-bench" "${NATS[@]}" --ack all 2>/dev/null)"
echo "nats jetstream (nats-py): $(python3 "$HERE/nats_bench.py" "${NATS[@]}" --mode jetstream 2>/dev/null)"
echo "nats core:      $(python3 "$HERE/nats_bench.py" "${NATS[@]}" --mode core 2>/dev/null)"
