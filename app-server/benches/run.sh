#!/usr/bin/env bash
# app-server benchmark: sys.ping and gate.check at 1, 16 and 64 connections
# (no pipelining) with `client bench --target`, side by side in the same run
# with redis-benchmark -t ping_mbulk and with the gate check's two
# statements issued through the raw mysql crate (examples/raw_gate.rs).
#
#   app-server/benches/run.sh            # release build, 5 s per run
#   DUR=10 CONNS="1 16 64" WORKERS=16 app-server/benches/run.sh
#
# Starts (and stops) its own app server and redis-server on free loopback
# ports, and uses the private MariaDB of scripts/mariadb (database dsf_bench).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
T=$CARGO_TARGET_DIR/release
DUR=${DUR:-5}
CONNS=${CONNS:-"1 16 64"}
WORKERS=${WORKERS:-16}
KEYS=1000
THREADS=$(nproc)

cargo build --release -q -p app-server -p dsf-client --bins --example raw_gate

scripts/mariadb start >/dev/null
BASE=$(scripts/mariadb url)
URL="${BASE%/}/dsf_bench"
"$T/app-server" migrate --db "$URL" >/dev/null

# Connection details for the mariadb client, from mysql://USER:PASS@HOST:PORT/.
creds=${BASE#mysql://}; creds=${creds%/}
DB_USER=${creds%%:*}; rest=${creds#*:}; DB_PASS=${rest%%@*}; hostport=${rest#*@}
DB_HOST=${hostport%%:*}; DB_PORT=${hostport##*:}
sql() { mariadb -h "$DB_HOST" -P "$DB_PORT" -u "$DB_USER" -p"$DB_PASS" dsf_bench -e "$1"; }
# One id card in ten is listed, so about 10 % of checks are hits.
values=$(for k in $(seq 0 10 $((KEYS - 1))); do printf "('%018d','bench-%d','bench','bench',0,'bench',0)," "$k" "$k"; done)
sql "DELETE FROM gate_checks; INSERT IGNORE INTO blacklist (id_card,name,reason,created_by,created_at,updated_by,updated_at) VALUES ${values%,};"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
APP_PID=; REDIS_PID=
cleanup() {
    [ -n "$APP_PID" ] && kill -TERM "$APP_PID" 2>/dev/null && wait "$APP_PID" 2>/dev/null || true
    [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

export DSF_APP_SECRET=bench-secret
printf 'cli = "%s"\n' "$DSF_APP_SECRET" > "$WORK/keys.toml"
chmod 600 "$WORK/keys.toml"
APORT=$(free_port)
RUST_LOG=warn DSF_CLUSTER_SECRET=bench-cluster "$T/app-server" --listen "127.0.0.1:$APORT" \
    --db "$URL" --app-keys "$WORK/keys.toml" --workers "$WORKERS" 2>"$WORK/app-server.log" &
APP_PID=$!
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!

deadline=$((SECONDS + 60))
until "$T/client" bench --op ping --target "127.0.0.1:$APORT" --conns 1 --requests 1 >/dev/null 2>&1 \
    && redis-cli -p "$RPORT" ping >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "servers did not come up" >&2; cat "$WORK"/*.log >&2; exit 1; }
    sleep 0.2
done

dsf() { # op conns -> "rps p50 p99"
    "$T/client" bench --op "$1" --target "127.0.0.1:$APORT" --conns "$2" --pipeline 1 \
        --duration "${DUR}s" --keys "$KEYS" --json |
        python3 -c 'import json,sys; r=json.load(sys.stdin); e=sum(r["errors"].values()); l=r["latency_ms"]; print("%.0f %.3f %.3f %d" % (r["rps"], l["p50"], l["p99"], e))'
}
redis() { # conns -> "rps p50 p99"
    local n=$(( $1 == 1 ? 50000 : 300000 ))
    redis-benchmark -p "$RPORT" -t ping_mbulk -c "$1" -n "$n" --threads "$THREADS" --csv |
        python3 -c 'import csv,sys; r=list(csv.reader(sys.stdin))[1]; print("%.0f %.3f %.3f" % (float(r[1]), float(r[4]), float(r[6])))'
}
raw() { # conns -> "rps p50 p99"
    "$T/examples/raw_gate" "$URL" "$1" "$DUR" "$KEYS" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.3f %.3f" % (r["rps"], r["p50_ms"], r["p99_ms"]))'
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

echo "| conns | sys.ping rps | p50 ms | p99 ms | Redis PING rps | p50 ms | p99 ms | ping ratio | gate.check rps | p50 ms | p99 ms | raw mysql rps | p50 ms | p99 ms | check ratio |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $CONNS; do
    read -r prps pp50 pp99 perr < <(dsf ping "$c")
    read -r rrps rp50 rp99 < <(redis "$c")
    read -r crps cp50 cp99 cerr < <(dsf check "$c")
    read -r mrps mp50 mp99 < <(raw "$c")
    [ "$perr" = 0 ] && [ "$cerr" = 0 ] || echo "WARNING: errors at $c conns: ping $perr, check $cerr" >&2
    echo "| $c | $prps | $pp50 | $pp99 | $rrps | $rp50 | $rp99 | $(ratio "$prps" "$rrps") | $crps | $cp50 | $cp99 | $mrps | $mp50 | $mp99 | $(ratio "$crps" "$mrps") |"
done
echo
echo "app-server: $WORKERS workers; client bench and redis-benchmark: $THREADS threads; ${DUR} s per dsf/raw run; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
