#!/usr/bin/env bash
# blacklist.add and gate.check sent straight to one app server (16 workers),
# for each build directory given, alternating, ROUNDS times: the cost of
# writes that run once, against a build without them, in the same run.
#
#   app-server/benches/writes.sh CLIENT BIN_DIR [BIN_DIR...]
#   e.g. git worktree add ../base 14e53a4 && (cd ../base && cargo build --release -p app-server)
#        app-server/benches/writes.sh target/release/client ../base/target/release target/release
#
# Uses the MariaDB of scripts/mariadb (started if needed), a fresh database
# per server; DUR=5s per run, ROUNDS=2. Prints one line per run.
#
# PIN places the processes on a 2-core machine (taskset): PIN=db puts
# MariaDB alone on CPU 1 and the app server and client on CPU 0 (the
# database as if on its own machine: round trips are what a write waits
# for); PIN=servers puts MariaDB and the app server on CPU 0 and the client
# on CPU 1 (scripts/bench's split: the servers' CPU is what a write costs);
# PIN=0 (the default) lets the scheduler place everything.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLIENT=$1
shift
ROUNDS=${ROUNDS:-2}
DUR=${DUR:-5s}
W=$(mktemp -d "${TMPDIR:-/tmp}/dsf-writes.XXXXXX")
export DSF_APP_SECRET=bench-secret DSF_CLUSTER_SECRET=bench-cluster-secret
printf 'cli = "%s"\n' "$DSF_APP_SECRET" >"$W/keys.toml"
chmod 600 "$W/keys.toml"
"$ROOT/scripts/mariadb" start >&2
BASE=$("$ROOT/scripts/mariadb" url)
PIN=${PIN:-0}
case "$PIN" in
    db) DB_CPU=1 APP=(taskset -c 0) LOAD=(taskset -c 0) ;;
    servers) DB_CPU=0 APP=(taskset -c 0) LOAD=(taskset -c 1) ;;
    0) DB_CPU= APP=() LOAD=() ;;
    *) echo "PIN=$PIN: give db, servers or 0" >&2; exit 2 ;;
esac
if [ -n "$DB_CPU" ]; then
    dir=${DSF_MARIADB_DIR:-$ROOT/target/mariadb}
    case "$dir" in /*) ;; *) dir="$ROOT/$dir" ;; esac
    mariadbd=$(cat "$dir/mariadb.pid")
    taskset -a -c -p "$DB_CPU" "$mariadbd" >/dev/null
    trap 'taskset -a -c -p 0-$(($(nproc) - 1)) "$mariadbd" >/dev/null; rm -rf "$W"' EXIT
fi
tag=$RANDOM
n=0
for r in $(seq 1 "$ROUNDS"); do
    for bin in "$@"; do
        n=$((n + 1))
        db="${BASE%/}/dsf_writes_${tag}_$n"
        port=$((17400 + n))
        "$bin/app-server" migrate --db "$db" >"$W/migrate-$n.log" 2>&1
        printf 'op-pass-123\n' | "$bin/app-server" create-admin --db "$db" --name op >/dev/null 2>&1
        RUST_LOG=warn "${APP[@]}" "$bin/app-server" --listen "127.0.0.1:$port" --db "$db" \
            --app-keys "$W/keys.toml" --workers 16 2>"$W/app-$n.log" &
        pid=$!
        for _ in $(seq 1 100); do
            (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
        export DSF_SESSION_FILE=$W/session-$n
        printf 'op-pass-123\n' | "$CLIENT" --node "127.0.0.1:$port" login op --password-stdin >/dev/null
        for c in 1 16; do
            for op in add check; do
                j=$("${LOAD[@]}" "$CLIENT" --node "127.0.0.1:$port" bench --op "$op" --target "127.0.0.1:$port" \
                    --conns "$c" --duration "$DUR" --threads 1 --json)
                printf 'round %s %s pin=%s op=%s conns=%s %s\n' "$r" "$bin" "$PIN" "$op" "$c" "$(printf '%s' "$j" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("rps=%.0f p50=%.3f p99=%.3f ok=%d errors=%s" % (d["rps"], d["latency_ms"]["p50"], d["latency_ms"]["p99"], d["ok"], d["errors"]))')"
            done
        done
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
rm -rf "$W"
